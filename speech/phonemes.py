"""Text -> phoneme ids for Piper voices: espeak-ng's IPA phonemes and the voice's phoneme-id map.

Piper voices were trained on espeak-ng IPA, one clause at a time, each clause followed by its
punctuation, as Unicode code points (NFD) looked up in the ``phoneme_id_map`` of the voice's
``.onnx.json``; ids are ``^ _ (phoneme _)* $`` (BOS, then a pad after every symbol, then EOS).
espeak-ng is Debian's ``espeak-ng`` package (``scripts/espeak.sh`` installs it).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import unicodedata

from omnitune.core.base.errors import OmnituneError

BOS, EOS, PAD = "^", "$", "_"
_CLAUSE = re.compile(r"([^,.;:!?]+)([,.;:!?]*)")


def espeak_binary() -> str:
    found = shutil.which("espeak-ng")
    if not found:
        raise OmnituneError("text-to-speech needs espeak-ng for phonemes: run scripts/espeak.sh "
                            "(or apt-get install espeak-ng)")
    return found


@functools.lru_cache(maxsize=4096)
def _espeak(clause: str, voice: str) -> str:
    out = subprocess.run([espeak_binary(), "-q", "-v", voice, "--ipa"], input=clause, capture_output=True,
                         text=True, check=True)
    return " ".join(line.strip() for line in out.stdout.splitlines() if line.strip())


def phonemize(text: str, voice: str = "en-us") -> str:
    """espeak-ng IPA for ``text``, clause by clause, each followed by its punctuation."""
    parts = []
    for words, punct in _CLAUSE.findall(text):
        if not words.strip():
            continue
        phones = _espeak(words.strip(), voice)
        parts.append(phones + punct[:1])
    return unicodedata.normalize("NFD", " ".join(parts))


class PhonemeIds:
    """A voice's phoneme-id map (``.onnx.json``'s ``phoneme_id_map``): phonemes -> ids."""

    def __init__(self, id_map: dict[str, list[int]], voice: str = "en-us") -> None:
        for sym in (BOS, EOS, PAD):
            if sym not in id_map:
                raise OmnituneError(f"phoneme_id_map has no {sym!r} symbol")
        self.id_map, self.voice = id_map, voice

    @classmethod
    def from_meta(cls, meta: dict) -> "PhonemeIds":
        return cls(meta["phoneme_id_map"], meta.get("espeak", {}).get("voice", "en-us"))

    def ids(self, phonemes: str) -> tuple[list[int], list[str]]:
        """(ids, phonemes the map does not have: dropped)."""
        out = list(self.id_map[BOS]) + list(self.id_map[PAD])
        missing = []
        for ph in phonemes:
            if ph not in self.id_map:
                missing.append(ph)
                continue
            out += list(self.id_map[ph]) + list(self.id_map[PAD])
        return out + list(self.id_map[EOS]), missing

    def __call__(self, text: str) -> list[int]:
        return self.ids(phonemize(text, self.voice))[0]
