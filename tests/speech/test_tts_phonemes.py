"""The text front end: espeak-ng IPA clause by clause, and Piper's id layout (^ _ (p _)* $)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def espeak():
    if shutil.which("espeak-ng") is None:
        subprocess.run(["bash", str(ROOT / "scripts" / "espeak.sh")], check=True)
    return shutil.which("espeak-ng")


def test_ids_interleave_pads_between_bos_and_eos():
    from omnitune.speech.phonemes import PhonemeIds

    ids = PhonemeIds({"^": [1], "$": [2], "_": [0], "a": [7], " ": [3], "b": [9]})
    assert ids.ids("ab a") == ([1, 0, 7, 0, 9, 0, 3, 0, 7, 0, 2], [])
    assert ids.ids("aXb") == ([1, 0, 7, 0, 9, 0, 2], ["X"])  # unknown symbols are reported, not kept


def test_missing_bos_in_the_map_is_an_error():
    from omnitune.core.base.errors import OmnituneError
    from omnitune.speech.phonemes import PhonemeIds

    with pytest.raises(OmnituneError, match="'\\^'"):
        PhonemeIds({"$": [2], "_": [0]})


def test_espeak_phonemes_keep_clause_punctuation(espeak):
    from omnitune.speech.phonemes import phonemize

    # espeak-ng's en-us IPA for these words (stress marks included), the clause marks kept.
    assert phonemize("Hello, world.") == "həlˈoʊ, wˈɜːld."
    assert phonemize("Goodbye!").endswith("!")
