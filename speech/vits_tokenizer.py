"""The text front end of transformers VITS checkpoints (``facebook/mms-tts-*``,
``kakao-enterprise/vits-*``, or a local folder with ``config.json`` of ``model_type: vits``): the
checkpoint's own ``VitsTokenizer`` (a character vocabulary, ``vocab.json``).

The tokenizer's flags decide what it does with the text: ``normalize`` lower-cases it and (without
phonemes) drops characters outside the vocabulary; ``phonemize`` (kakao's English VITS) turns it into
espeak IPA through the ``phonemizer`` package; ``add_blank`` puts id 0 between the symbols;
``is_uroman`` romanises non-Latin scripts with the ``uroman`` package. Without ``phonemizer``
installed, the phonemes come from the espeak-ng binary instead (speech/phonemes.py: the same
espeak-ng IPA with stress marks that the ``phonemizer`` package gives with ``with_stress=True``;
punctuation is kept a little differently).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TOKENIZER = "vits-tokenizer"  # the front end's name in the saved omnitune_tts.json
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def checkpoint_kind(src: str | Path) -> str | None:
    """"transformers" for a transformers VITS checkpoint (a local folder whose config.json says
    ``model_type: vits``, or a Hub id, which transformers downloads), None for anything else; a folder
    holding another model type is an error naming it."""
    from omnitune.core.base.errors import OmnituneError

    path = Path(src)
    config = path / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type != "vits":
            raise OmnituneError(f"model.name: {path} holds a {model_type!r} model, not a VITS (config.json "
                                f"model_type 'vits') or a Piper voice")
        return "transformers"
    if not path.exists() and _HUB_ID.fullmatch(str(src)):
        return "transformers"
    return None


def load_tokenizer(where: str | Path, revision: str | None = None):
    from transformers import VitsTokenizer

    return VitsTokenizer.from_pretrained(str(where), revision=revision)


def text_ids(tokenizer, text: str) -> tuple[list[int], list[str]]:
    """(ids, symbols the vocabulary does not have); ids are [] when the text has no symbol the
    vocabulary knows (blanks alone are not speech)."""
    from transformers.utils import is_phonemizer_available

    normalize, phonemize = tokenizer.normalize, tokenizer.phonemize
    if phonemize and not is_phonemizer_available():
        from .phonemes import phonemize as espeak_ipa

        prepared = tokenizer.normalize_text(text) if normalize else text
        text = re.sub(r"\s+", " ", espeak_ipa(prepared, "en-us")).strip()
        tokenizer.normalize = tokenizer.phonemize = False  # the text is phonemes already
    try:
        tokens = tokenizer.tokenize(text)
        # Normalising without phonemes drops what the vocabulary lacks before tokenising: count it here.
        dropped = [c for c in tokenizer.normalize_text(text) if c not in tokenizer.encoder] \
            if tokenizer.normalize and not tokenizer.phonemize else []
    finally:
        tokenizer.normalize, tokenizer.phonemize = normalize, phonemize
    symbols = tokens[1::2] if tokenizer.add_blank else tokens
    missing = dropped + [t for t in symbols if t not in tokenizer.encoder]
    if not any(t in tokenizer.encoder for t in symbols):
        return [], missing
    ids = [tokenizer.encoder[t] if t in tokenizer.encoder else tokenizer.unk_token_id for t in tokens]
    return [i for i in ids if i is not None], missing
