"""WER/CER against hand-counted examples, and the declared normaliser."""

from __future__ import annotations

import pytest

from omnitune.speech.metrics import (char_error_rate, get_normalizer, utterance_errors, word_error_rate,
                                     worst_utterances)


def test_wer_hand_counted():
    # "the cat sat on the mat" vs "the cat sit on mat": 1 substitution (sat->sit), 1 deletion (the)
    # = 2 errors / 6 reference words.
    assert word_error_rate(["the cat sat on the mat"], ["the cat sit on mat"]) == pytest.approx(100 * 2 / 6)
    # Corpus WER sums errors and words over utterances: (1 insertion + 0) / (2 + 3) words.
    assert word_error_rate(["hello world", "press one now"], ["hello big world", "press one now"]) == \
        pytest.approx(100 * 1 / 5)
    # Every hypothesis word wrong plus one inserted: 3 errors / 2 words = 150 %.
    assert word_error_rate(["good bye"], ["a b c"]) == pytest.approx(150.0)


def test_cer_hand_counted():
    # "abcd" -> "abxd": 1 substitution / 4 characters.
    assert char_error_rate(["abcd"], ["abxd"]) == pytest.approx(25.0)
    # "pound key" (9 characters with the space) -> "pound ke": 1 deletion.
    assert char_error_rate(["pound key"], ["pound ke"]) == pytest.approx(100 / 9)


def test_utterance_errors_breakdown():
    # Unambiguous alignments: one substitution (two->to) and one insertion (now).
    e = utterance_errors("press two for sales", "press to for sales now")
    assert (e["substitutions"], e["deletions"], e["insertions"], e["words"]) == (1, 0, 1, 4)
    # One deletion (the).
    e = utterance_errors("followed by the pound key", "followed by pound key")
    assert (e["substitutions"], e["deletions"], e["insertions"], e["errors"]) == (0, 1, 0, 1)
    # Ties between alignments do not change the count: 4 edits either way.
    assert utterance_errors("please enter your password", "please your pass word now")["errors"] == 4


def test_worst_utterances_order():
    rows = worst_utterances(["a", "b", "c"], ["one two", "one two three", "x"], ["one two", "one", "y"])
    assert [r["name"] for r in rows] == ["b", "c"]  # 2 errors, then 1; the perfect one is left out
    assert rows[0]["errors"] == 2


def test_whisper_english_normaliser():
    norm = get_normalizer("whisper_english")
    assert norm("Please enter your password, followed by the pound key.") == \
        "please enter your password followed by the pound key"
    assert norm("Seven.") == norm(" 7.") == "7"  # numbers are written as digits on both sides
    assert norm("[ascending tones]") == ""  # bracketed non-speech is dropped
    assert norm("You can't go.") == "you can not go"
    assert get_normalizer("none")("Hello,  World") == "Hello, World"
    with pytest.raises(ValueError):
        get_normalizer("klingon")
