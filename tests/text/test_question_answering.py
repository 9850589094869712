"""Extractive question answering: windows over long contexts, answer spans to tokens and back, bad
answer starts, SQuAD EM/F1 on hand-worked answers, QuAC conversion, splits by passage, predict,
and a tiny run that learns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from omnitune.core.api import build_task, predict, train
from omnitune.core.base.errors import DataError
from omnitune.core.base.metrics import compute
from omnitune.core.base.recipe import validate_recipe
from omnitune.text.quac import read_quac, split_spans
from omnitune.text.question_answering import best_answers, make_windows, parse_answers
from omnitune.text.testing_qa import make_qa_tokenizer_and_model, tiny_qa_recipe, write_jsonl

QUESTION = "which word is positive ?"  # 5 tokens: a window of 16 = [CLS] 5 [SEP] 8 context [SEP]


@pytest.fixture(scope="module")
def qa_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("qa")


@pytest.fixture(scope="module")
def tokenizer(qa_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_qa_tokenizer_and_model(qa_folder / "tiny-qa-bert"))


def _context(n_words: int, answers: dict[int, str]) -> str:
    filler = ["the", "film", "plot", "was", "a", "story"]
    return " ".join(answers.get(i, filler[i % len(filler)]) for i in range(n_words))


def test_windows_of_a_long_context_cover_it_with_the_stride(tokenizer):
    # 22 context words, 8 per window, 4 shared by neighbours: windows start at words 0, 4, 8, 12, 16
    # (the last one holds words 16..21).
    context = _context(22, {})
    (windows,) = make_windows(tokenizer, [QUESTION], [context], [None], max_length=16, doc_stride=4)
    word_starts = [i for i, ch in enumerate(context) if ch != " " and (i == 0 or context[i - 1] == " ")]
    firsts = [word_starts.index(next(a for a, _ in w.offsets if a >= 0)) for w in windows]
    assert firsts == [0, 4, 8, 12, 16]
    assert all(len(w.input_ids) <= 16 for w in windows)
    covered = {a for w in windows for a, _ in w.offsets if a >= 0}
    assert covered == set(word_starts)  # every word is in some window: nothing truncated


@pytest.mark.parametrize("answer_words", [(3,), (5, 6), (10,), (15, 16, 17), (21,)])
def test_answer_span_to_tokens_and_back_across_windows(tokenizer, answer_words):
    words = {i: "good" if k == 0 else "great" for k, i in enumerate(answer_words)}
    context = _context(22, words)
    spans = context.split(" ")
    start = len(" ".join(spans[:answer_words[0]])) + (1 if answer_words[0] else 0)
    text = " ".join(spans[answer_words[0]:answer_words[-1] + 1])
    assert context[start:start + len(text)] == text
    (windows,) = make_windows(tokenizer, [QUESTION], [context], [(start, start + len(text))], 16, 4)
    # Windows hold words [0,8) [4,12) [8,16) [12,20) [16,22): the answer is labelled in exactly
    # the windows that hold all of it, and points at [CLS] in the others.
    expected = [k for k, first in enumerate([0, 4, 8, 12, 16])
                if first <= answer_words[0] and answer_words[-1] < min(first + 8, 22)]
    labelled = [k for k, w in enumerate(windows) if w.has_answer]
    assert labelled == expected and labelled
    for k, w in enumerate(windows):
        if k in labelled:
            assert context[w.offsets[w.start][0]:w.offsets[w.end][1]] == text
        else:
            assert w.start == w.end == w.cls_index == 0
    # Logits peaked at the labelled tokens of one window pick the same characters back out.
    k = labelled[-1]
    width = max(len(w.input_ids) for w in windows)
    start_logits = torch.zeros(len(windows), width)
    end_logits = torch.zeros(len(windows), width)
    start_logits[k, windows[k].start] = end_logits[k, windows[k].end] = 10.0
    offsets = torch.full((len(windows), width, 2), -1)
    for r, w in enumerate(windows):
        offsets[r, :len(w.offsets)] = torch.tensor(w.offsets)
    ranked, null = best_answers(start_logits, end_logits, offsets, torch.zeros(len(windows), dtype=torch.long),
                                n_best=5, max_answer_length=4)
    score, a, b = ranked[0]
    assert context[a:b] == text and score == 20.0 and null == 0.0


def test_answers_longer_than_the_limit_are_not_picked(tokenizer):
    context = _context(6, {1: "good", 2: "great", 3: "fun"})
    (windows,) = make_windows(tokenizer, [QUESTION], [context], [None], 16, 4)
    w = windows[0]
    start, end = torch.zeros(1, len(w.input_ids)), torch.zeros(1, len(w.input_ids))
    start[0, 8], end[0, 10] = 5.0, 5.0  # context words 1..3 ([CLS], 5 question tokens, [SEP] come first)
    offsets = torch.tensor([w.offsets])
    ranked, _ = best_answers(start, end, offsets, torch.tensor([0]), n_best=3, max_answer_length=2)
    assert all(b - a < len("good great fun") for _, a, b in ranked)
    ranked, _ = best_answers(start, end, offsets, torch.tensor([0]), n_best=3, max_answer_length=3)
    assert context[ranked[0][1]:ranked[0][2]] == "good great fun"


def test_parse_answers_layouts():
    hub = {"text": np.array(["Denver Broncos", "Broncos"]), "answer_start": np.array([177, 184])}
    assert parse_answers(hub, "row 0") == (["Denver Broncos", "Broncos"], [177, 184])
    assert parse_answers('{"text": ["a"], "answer_start": [3]}', "row 1") == (["a"], [3])
    assert parse_answers([{"text": "a", "answer_start": 3}], "row 2") == (["a"], [3])
    assert parse_answers(None, "row 3") == ([], [])
    with pytest.raises(DataError, match="row 4.*2 texts but 1"):
        parse_answers({"text": ["a", "b"], "answer_start": [1]}, "row 4")
    with pytest.raises(DataError, match="row 5: answers is not JSON"):
        parse_answers("a at 3", "row 5")


def _recipe(folder: Path, source: Path, **data) -> dict:
    raw = tiny_qa_recipe(folder)
    raw["data"].update(source=str(source), **data)
    return raw


def test_a_bad_answer_start_is_counted_and_dropped(qa_folder):
    context = "the film was good but the plot was dull"
    rows = [
        {"id": "ok", "context": context, "question": QUESTION, "answers": {"text": ["good"], "answer_start": [13]}},
        {"id": "off", "context": context, "question": "which word is negative ?",
         "answers": {"text": ["dull"], "answer_start": [34]}},  # "dull" starts at 35
        {"id": "one-of-two", "context": context + " .", "question": QUESTION,
         "answers": {"text": ["good", "good"], "answer_start": [13, 12]}},
        {"id": "none", "context": context + " !", "question": QUESTION, "answers": {"text": [], "answer_start": []}},
    ]
    source = write_jsonl(qa_folder / "bad.jsonl", rows)
    task = build_task(validate_recipe(_recipe(qa_folder, source)))
    dataset, report = task.load_eval_dataset(str(source), None)
    dropped = report.dropped["eval"]
    assert dropped["answer_start does not match the answer text (answer dropped)"] == 2
    assert dropped["no valid answer left (all answers had a wrong answer_start)"] == 1
    assert dropped["no answer (data.unanswerable is false)"] == 1
    examples = report.examples["answer_start does not match the answer text (answer dropped)"]
    assert "(off): answer 'dull' at 34, context there reads ' dul'" in examples[0]
    assert dataset.ids == ["ok", "one-of-two"] and dataset.references == [["good"], ["good"]]
    # SQuAD 2.0: with unanswerable questions on, the one without answers stays (no references).
    task2 = build_task(validate_recipe(_recipe(qa_folder, source, unanswerable=True)))
    dataset2, _ = task2.load_eval_dataset(str(source), None)
    assert dataset2.ids == ["ok", "one-of-two", "none"] and dataset2.references[-1] == []
    assert not any(w.has_answer for w in dataset2.windows[-1])


def test_flat_answer_columns_from_csv(qa_folder):
    import pandas as pd

    context = "a boring story with great actors"
    path = qa_folder / "flat.csv"
    pd.DataFrame([{"context": context, "question": QUESTION, "answer": "great", "start": 20},
                  {"context": context, "question": "which word is negative ?", "answer": "boring", "start": 3}]
                 ).to_csv(path, index=False)
    task = build_task(validate_recipe(_recipe(qa_folder, path, answer_text_column="answer",
                                              answer_start_column="start")))
    dataset, report = task.load_eval_dataset(str(path), None)
    assert dataset.references == [["great"]]
    assert report.dropped["eval"]["answer_start does not match the answer text (answer dropped)"] == 1
    with pytest.raises(Exception, match="answer_text_column and answer_start_column go together"):
        validate_recipe(_recipe(qa_folder, path, answer_text_column="answer"))


def test_squad_exact_match_and_f1_on_hand_worked_answers():
    predictions = ["The Eiffel Tower", "in Paris, France", "", "blue"]
    references = [["Eiffel tower"], ["Paris"], [], ["red", "blue sky"]]
    # EM: 1 (case and article), 0, 1 (no answer, and none given), 0.
    # F1: 1; {in, paris, france} vs {paris}: P 1/3, R 1 -> 0.5; 1; best of 0 and P 1, R 1/2 -> 2/3.
    assert compute("squad_exact_match", predictions, references) == pytest.approx(50.0)
    assert compute("squad_f1", predictions, references) == pytest.approx(100 * (1 + 0.5 + 1 + 2 / 3) / 4, abs=1e-4)
    assert compute("squad_f1", ["no"], [[]]) == 0.0  # an answer where there is none scores nothing


QUAC_LINE = {
    "passage": "In 1983 she married Nikos, a composer. She had a daughter. She sang in Athens.",
    "question": "question1: what happened in 1983?\nquestion2: any children?\nquestion3: where?\nquestion4: when?",
    "answer": ("possible answers for question1:\nshe married Nikos, In 1983 she married Nikos, a composer.\n"
               "possible answers for question2:\nShe had a daughter. She had a son.\n"
               "possible answers for question3:\nCANNOTANSWER in Athens.\n"
               "possible answers for question4:\nCANNOTANSWER CANNOTANSWER"),
}


def test_quac_answers_split_back_into_passage_spans(tmp_path):
    p = QUAC_LINE["passage"]
    assert split_spans("she married Nikos, In 1983 she married Nikos, a composer.", p) == [
        "she married Nikos,", "In 1983 she married Nikos, a composer."]
    assert split_spans("She had a daughter. She had a son.", p) is None  # "a son." is nowhere
    path = write_jsonl(tmp_path / "quac.jsonl", [QUAC_LINE])
    frame, stats = read_quac(path, keep_unanswerable=False)
    assert (stats.passages, stats.questions, stats.kept, stats.unanswerable) == (1, 4, 1, 2)
    assert stats.not_recovered == ["p1-q2"]
    row = frame.iloc[0]
    assert row["answers"] == {"text": ["she married Nikos,", "In 1983 she married Nikos, a composer."],
                              "answer_start": [8, 0]}
    frame, stats = read_quac(path, keep_unanswerable=True)
    assert frame["id"].tolist() == ["p1-q1", "p1-q3", "p1-q4"]
    assert frame.iloc[1]["answers"] == {"text": [], "answer_start": []}  # the first annotator could not answer


def test_quac_source_report_and_split_by_passage(qa_folder, tmp_path):
    lines = []
    for i in range(20):  # 20 passages x 2 questions, one of them unanswerable
        lines.append({"passage": f"the film {i} was good and the plot was dull",
                      "question": "question1: which word is positive ?\nquestion2: which word is negative ?",
                      "answer": ("possible answers for question1:\ngood good\n"
                                 "possible answers for question2:\nCANNOTANSWER")})
    path = write_jsonl(tmp_path / "quac.jsonl", lines)
    raw = _recipe(qa_folder, path, format="quac")
    raw["data"].update(val_size=0.2, test_size=0.2)
    bundle = build_task(validate_recipe(raw)).build_datasets()
    report = bundle.report
    assert report.dropped["train"]["QuAC first answer CANNOTANSWER (data.unanswerable is false)"] == 20
    assert any("first answer found verbatim in the passage for 20 (50.0%)" in n for n in report.notes)
    splits = [bundle.train, bundle.validation, bundle.test]
    assert [len(s) for s in splits] == [12, 4, 4]
    contexts = [set(s.contexts) for s in splits]
    assert not (contexts[0] & contexts[1] or contexts[0] & contexts[2] or contexts[1] & contexts[2])


def test_predict_takes_both_input_formats_and_returns_offsets(qa_folder, tmp_path):
    raw = tiny_qa_recipe(qa_folder)
    raw["output"] = {"dir": str(tmp_path / "runs"), "run_name": "run"}
    raw["train"].update(epochs=4, lr=1e-2, threads=1)
    result = train(validate_recipe(raw))
    assert result.metrics["test"]["squad_f1"] > 90, result.metrics["test"]
    long_context = " ".join(["the story was quite a film"] * 4 + ["but the actors were superb"])  # 2 windows
    inputs = [json.dumps({"question": QUESTION, "context": long_context}),
              "which word is negative ? ||| a very boring story with actors"]
    out = predict(result.run_dir, inputs)
    assert [o["answer"] for o in out] == ["superb", "boring"]
    for o, context in zip(out, [long_context, "a very boring story with actors"]):
        assert context[o["start"]:o["end"]] == o["answer"] and 0 < o["score"] <= 1
    with pytest.raises(DataError, match="input 0: give a question and a context"):
        predict(result.run_dir, ["which word is positive ?"])


def test_untrained_head_scores_low_on_the_same_split(qa_folder, tmp_path):
    """The learning test above means something: the same split scored before training is poor."""
    raw = tiny_qa_recipe(qa_folder)
    task = build_task(validate_recipe(raw))
    bundle = task.build_datasets()
    from omnitune.core.api import seed_everything
    from omnitune.core.loop.trainer import evaluate_model

    seed_everything(0)
    metrics = evaluate_model(task, task.build_model(), bundle.test, 8, torch.device("cpu"))[0]
    assert metrics["squad_f1"] < 50
