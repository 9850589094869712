"""The pretrained backbone of every text task: its tokenizer (and pad token), the model with or
without a task head, and saving and reloading both. Plain functions with explicit arguments; each
task composes the ones it needs (no task inherits another's loading).

>>> from omnitune.text.backbone import Backbone  # doctest: +SKIP
>>> bb = Backbone(model_cfg, pad_with_eos=True)  # doctest: +SKIP
>>> tok, model = bb.tokenizer, bb.load(AutoModelForCausalLM)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from omnitune.core.base import assets
from omnitune.core.base.errors import OmnituneError


def load_tokenizer(name: str, path: str, revision: str | None):
    """The tokenizer of model ``name`` (resolved to ``path``), with a one-line error naming it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as exc:
        raise OmnituneError(f"model.name: cannot load tokenizer for {name!r} ({exc})") from None


def pad_with_eos(tok):
    """``tok`` with the end-of-sequence token as its pad token when it has none (causal LMs: the
    padding positions are masked out of the loss and attention anyway)."""
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_with_head(auto_cls, model_path: str, model_cfg, *, what: str = "", dtype=None, **config_kwargs):
    """A transformers model with a task head (``auto_cls``, e.g. AutoModelForTokenClassification):
    the checkpoint's weights, or only its config with ``model.pretrained: false``. ``config_kwargs``
    size and name the head (num_labels, id2label, pad_token_id ...). transformers' "newly initialised
    head" notice is silenced, since a new head is the point; a checkpoint that does not load is one
    line naming ``model.name``."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    extra = {} if dtype is None else {"dtype": dtype}
    try:
        config = AutoConfig.from_pretrained(model_path, revision=model_cfg.revision, **config_kwargs)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            if model_cfg.pretrained:
                return auto_cls.from_pretrained(model_path, config=config, revision=model_cfg.revision, **extra)
            return auto_cls.from_config(config, **extra)
        finally:
            hf_logging.set_verbosity(verbosity)
    except (OSError, ValueError) as exc:
        raise OmnituneError(f"model.name: cannot load {model_cfg.name!r}{what} ({exc})") from None


def load_lm(auto_cls, path: str, model_cfg, pretrained: bool = True) -> nn.Module:
    """A language model (``auto_cls``: AutoModelForCausalLM or AutoModelForSeq2SeqLM) in fp32 master
    weights (bf16 autocast handles speed, AdamW updates stay exact): the checkpoint at ``path``, or
    only its config when ``pretrained`` is false; one line naming ``model.name`` when it does not load."""
    from transformers import AutoConfig

    try:
        if pretrained:
            return auto_cls.from_pretrained(path, revision=model_cfg.revision, dtype=torch.float32)
        config = AutoConfig.from_pretrained(path, revision=model_cfg.revision)
        return auto_cls.from_config(config, dtype=torch.float32)
    except OSError as exc:
        raise OmnituneError(f"model.name: cannot load {model_cfg.name!r} ({exc})") from None


def save_pretrained(model: nn.Module, tokenizer, out_dir: Path) -> None:
    """The model and its tokenizer in Hugging Face ``save_pretrained`` layout."""
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def saved_tokenizer(model_dir: Path, pad_eos: bool = False):
    """The tokenizer saved with a model (``pad_eos``: given the end-of-sequence token as its pad)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return pad_with_eos(tok) if pad_eos else tok


class Backbone:
    """The pretrained model of a recipe's ``model`` section and its tokenizer, loaded once.

    ``pad_with_eos``: give a tokenizer without a pad token the end-of-sequence token (causal LMs);
    ``prepare``: a last step on a freshly loaded tokenizer (a chat template, a fast-tokenizer check).
    :meth:`restore` replaces the tokenizer with the one saved beside a model."""

    def __init__(self, model_cfg, *, pad_with_eos: bool = False, prepare: Callable | None = None) -> None:
        self.cfg, self.pad_eos, self.prepare = model_cfg, pad_with_eos, prepare
        self._tokenizer = None

    @property
    def path(self) -> str:
        return assets.resolve(self.cfg.name)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            tok = load_tokenizer(self.cfg.name, self.path, self.cfg.revision)
            if self.pad_eos:
                pad_with_eos(tok)
            if self.prepare is not None:
                self.prepare(tok)
            self._tokenizer = tok
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tok) -> None:
        self._tokenizer = tok

    def restore(self, model_dir: Path) -> None:
        """The tokenizer saved with the model (already prepared when it was saved)."""
        self._tokenizer = saved_tokenizer(model_dir, self.pad_eos)

    def load_lm(self, auto_cls, pretrained: bool | None = None) -> nn.Module:
        return load_lm(auto_cls, self.path, self.cfg, self.cfg.pretrained if pretrained is None else pretrained)

    def save(self, model: nn.Module, out_dir: Path) -> None:
        save_pretrained(model, self.tokenizer, out_dir)
