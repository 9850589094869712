"""Sequence to sequence: summarisation and translation, scored with ROUGE, BLEU and chrF.

Three kinds of model do the job, chosen from the checkpoint (no recipe switch):

- any encoder-decoder transformers loads with ``AutoModelForSeq2SeqLM`` (T5, BART, Marian/opus-mt);
- a warm-started ``EncoderDecoderModel`` built from encoder checkpoints: ``model.name`` is the
  encoder, ``model.decoder`` the decoder (e.g. MiniLM to MiniLM). Its cross-attention (and, for a
  checkpoint without an MLM head, the LM head's transform) starts random; the report says so;
- a decoder-only LM (SmolLM2, Llama) through ``data.prompt_template``: the prompt holds the
  (truncated) source, the target follows, and the loss covers the target tokens only.

The loss is the token cross entropy summed over target tokens (``num_items`` = target tokens).
Evaluation computes the loss on the whole split and generates (``model.generation``, shared with
``predict``) for a fixed, seeded subset of ``generation.eval_samples`` samples, the same at every
evaluation, so the zero-shot baseline (``eval.baseline``) and every later evaluation score the same
samples. Source and target truncation are counted per split in the data report; rows with an empty
source or target are counted and dropped.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from omnitune.core.base import assets
from omnitune.core.base.errors import DataError, OmnituneError, RecipeError
from omnitune.core.base.generation import GenerationConfig, fixed_subset, side_by_side
from omnitune.core.base.metrics import compute as compute_metric
from omnitune.core.base.recipe import DataConfig, ModelConfig, RegularizationConfig
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup

from . import data as tdata
from . import pipeline
from .backbone import Backbone
from .layers import decoder_layer_groups, encoder_decoder_groups  # noqa: F401  (encoder_decoder_groups: re-exported)
from .lm import IGNORE

META_FILE = "omnitune_seq2seq.json"
DEFAULT_PROMPTS = {  # decoder-only models, when the recipe gives no prompt_template
    "summarization": "Summarize the following article in one sentence.\n\n{source}\n\nSummary:\n",
    "translation": "Translate into the target language.\n\n{source}\n\nTranslation:\n",
}
METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "gen_len")
WARM_START_NOTE = ("Warm-started encoder-decoder: the encoder and decoder weights come from `{enc}` and `{dec}`; "
                   "the decoder's cross-attention layers (and an LM-head transform the checkpoint lacks) "
                   "started from random weights, so the zero-shot model cannot summarise or translate.")


class Seq2SeqModelConfig(ModelConfig):
    decoder: str | None = None
    """A second encoder checkpoint warm-starts the decoder of an EncoderDecoderModel (model.name is the
    encoder): BERT-style to BERT-style. None: model.name is a seq2seq or decoder-only model itself."""
    max_source_length: int = Field(default=512, gt=0)
    """Tokens kept of each source (article, sentence); longer ones are cut at the end and counted."""
    max_target_length: int = Field(default=128, gt=0)
    """Tokens kept of each target (summary, translation), end of sequence included; counted too."""
    generation: GenerationConfig = GenerationConfig()
    """Decoding for evaluation and predict: beams, max_new_tokens, length penalty, eval_samples."""


class Seq2SeqDataConfig(DataConfig):
    source_column: str = "source"
    """The input column; "translation.en" reads key "en" of a column of dicts (the Hub's translation
    datasets, e.g. hub:wmt16/de-en, keep each pair as {"de": ..., "en": ...})."""
    target_column: str = "target"
    """The output column (summary, translation); dotted keys as for source_column."""
    kind: Literal["summarization", "translation"] = "summarization"
    """Picks the main metric: rougeL for summarization, bleu for translation (eval.metric overrides)."""
    source_prefix: str = ""
    """Encoder-decoders: text put before every source (T5 expects "summarize: " or
    "translate English to German: ")."""
    prompt_template: str | None = None
    """Decoder-only models: the prompt, with "{source}" where the truncated source goes; the target
    follows it directly, then the tokenizer's end-of-sequence token. None: a plain default per kind."""

    @model_validator(mode="after")
    def _one_source_field(self) -> "Seq2SeqDataConfig":
        if self.prompt_template is not None:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.prompt_template) if f is not None]
            if fields != ["source"]:
                raise ValueError('prompt_template must hold "{source}" exactly once and no other field '
                                 f"(found {fields}); double other braces: {{{{ }}}}")
        return self


class _Seq2SeqDataset(torch.utils.data.Dataset):
    """Token ids per sample; ``generate`` marks the fixed subset that evaluation generates for."""

    def __init__(self, input_ids, labels, prompts, sources, targets, generate: set[int]) -> None:
        self.input_ids, self.labels, self.prompts = input_ids, labels, prompts
        self.sources, self.targets, self.generate = sources, targets, generate

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"input_ids": self.input_ids[i], "labels": self.labels[i], "index": i, "gen": i in self.generate,
                "target": self.targets[i]}
        if self.prompts is not None:
            item["prompt_ids"] = self.prompts[i]
        return item


def _pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if left:
                out[i, width - len(r):] = torch.tensor(r)
            else:
                out[i, :len(r)] = torch.tensor(r)
    return out


def _lengths_note(split: str, what: str, lengths: list[int], limit: int, cut: int) -> str:
    a = np.asarray(lengths or [0])
    return (f"{split}: {cut} of {len(lengths)} {what} truncated to {limit} tokens (length in tokens: median "
            f"{int(np.median(a))}, p95 {int(np.percentile(a, 95))}, max {int(a.max())})")


class Seq2SeqTask:
    name: ClassVar[str] = "seq2seq"
    # The fields only some tasks read (core.base.recipe.TASK_IMPLEMENTED) that this one reads.
    implemented_fields: ClassVar[frozenset[str]] = frozenset({"regularization.label_smoothing"})
    ModelConfig: ClassVar[type] = Seq2SeqModelConfig
    DataConfig: ClassVar[type] = Seq2SeqDataConfig
    main_metric: ClassVar[str] = "rougeL"
    main_metric_mode: ClassVar[str] = "max"
    pipeline_tag: ClassVar[str] = "text2text-generation"  # Hub model-card metadata (ModelCardInfo)
    card_library: ClassVar[str] = "transformers"

    def __init__(self, *, model: Seq2SeqModelConfig, data: Seq2SeqDataConfig,
                 regularization: RegularizationConfig, seed: int) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.label_smoothing = regularization.label_smoothing
        self.label_names = None
        self.main_metric = "rougeL" if data.kind == "summarization" else "bleu"
        self.backbone = Backbone(model, pad_with_eos=True)  # padding is masked out of the loss anyway
        self._encoder_decoder: bool | None = None
        self._saved_kind: dict | None = None  # what restore() read back
        self._generations: dict[int, list[list[str | None]]] = {}  # references hash -> texts per evaluation

    # ------------------------------------------------------------------ model
    @property
    def model_path(self) -> str:
        return self.backbone.path

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    @property
    def encoder_decoder(self) -> bool:
        """Encoder-decoder (native or warm-started) rather than a decoder-only LM."""
        if self._encoder_decoder is None:
            if self._saved_kind is not None:
                self._encoder_decoder = self._saved_kind["encoder_decoder"]
            elif self.model_cfg.decoder:
                self._encoder_decoder = True
            else:
                from transformers import AutoConfig

                try:
                    config = AutoConfig.from_pretrained(self.model_path, revision=self.model_cfg.revision)
                except OSError as exc:
                    raise OmnituneError(f"model.name: cannot load {self.model_cfg.name!r} ({exc})") from None
                self._encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        return self._encoder_decoder

    def _eos_id(self) -> int:
        tok = self.tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if eos is None:
            raise OmnituneError(f"model.name: the tokenizer of {self.model_cfg.name!r} has no end-of-sequence token")
        return eos

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        if self.model_cfg.decoder:
            try:
                return self._warm_start()
            except OSError as exc:
                raise OmnituneError(f"model.name: cannot load {self.model_cfg.name!r} ({exc})") from None
        auto = AutoModelForSeq2SeqLM if self.encoder_decoder else AutoModelForCausalLM
        return freeze_fixed(self.backbone.load_lm(auto))

    def _warm_start(self) -> nn.Module:
        """EncoderDecoderModel from two encoder checkpoints; the decoder gains causal masks and
        cross-attention (random), and decoding starts from the tokenizer's [CLS]/BOS."""
        from transformers import AutoConfig, EncoderDecoderConfig, EncoderDecoderModel
        from transformers.utils import logging as hf_logging

        enc_path, dec_path = self.model_path, assets.resolve(self.model_cfg.decoder)
        enc_cfg = AutoConfig.from_pretrained(enc_path)
        dec_cfg = AutoConfig.from_pretrained(dec_path)
        if enc_cfg.vocab_size != dec_cfg.vocab_size:
            raise RecipeError(f"model.decoder: {self.model_cfg.decoder!r} has a vocabulary of {dec_cfg.vocab_size}, "
                              f"the encoder {enc_cfg.vocab_size}; both halves share the encoder's tokenizer")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the long "newly initialised cross-attention" report is expected
        try:
            if self.model_cfg.pretrained:
                model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                    enc_path, dec_path, encoder_add_pooling_layer=False)  # the pooler feeds nothing here
            else:
                dec_cfg.update({"is_decoder": True, "add_cross_attention": True})
                model = EncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(enc_cfg, dec_cfg))
        finally:
            hf_logging.set_verbosity(verbosity)
        tok = self.tokenizer
        start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        for cfg in (model.config, model.generation_config):
            cfg.decoder_start_token_id = start
            cfg.pad_token_id = tok.pad_token_id
            cfg.eos_token_id = self._eos_id()
        model.config.vocab_size = model.config.decoder.vocab_size
        return model.float()

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """Decoder-only: as causal-lm (embeddings, blocks, head). Encoder-decoder: embeddings (token
        and position embeddings of both halves), each encoder block, each decoder block, head. The
        encoder's final norm goes with its last block, so freezing the encoder's groups freezes all
        of it; the head is what follows the last decoder block (final norm, an untied LM head and its
        transform). When only an LM head tied to the token embeddings follows the decoder (BART,
        Marian), that shared vocabulary matrix is the head group."""
        if not getattr(model.config, "is_encoder_decoder", False):
            return decoder_layer_groups(model)
        return encoder_decoder_groups(model)

    # ------------------------------------------------------------------ data
    def _prepare(self, df, split: str, report: DataReport) -> _Seq2SeqDataset:
        d, m, tok = self.data_cfg, self.model_cfg, self.tokenizer
        sources = df[d.source_column].astype(str).tolist()
        targets = df[d.target_column].astype(str).tolist()
        eos = self._eos_id()
        if self.encoder_decoder:
            src_full = tok([d.source_prefix + s for s in sources], add_special_tokens=True)["input_ids"]
            if self.model_cfg.decoder:  # BERT-style: [CLS] starts decoding, so targets hold text + [SEP]
                tgt_full = [ids + [eos] for ids in tok(targets, add_special_tokens=False)["input_ids"]]
            else:
                tgt_full = tok(text_target=targets, add_special_tokens=True)["input_ids"]
            src_cut = [i for i, ids in enumerate(src_full) if len(ids) > m.max_source_length]
            if src_cut:  # the tokenizer cuts (keeping its end-of-sequence token)
                again = tok([d.source_prefix + sources[i] for i in src_cut], truncation=True,
                            max_length=m.max_source_length)["input_ids"]
                src_ids = list(src_full)
                for i, ids in zip(src_cut, again):
                    src_ids[i] = ids
            else:
                src_ids = src_full
            tgt_ids = [ids if len(ids) <= m.max_target_length else ids[:m.max_target_length - 1] + [ids[-1]]
                       for ids in tgt_full]
            input_ids, labels, prompts = [list(x) for x in src_ids], [list(x) for x in tgt_ids], None
            src_lengths = [len(x) for x in src_full]
        else:
            template = d.prompt_template or DEFAULT_PROMPTS[d.kind]
            head, _, tail = template.partition("{source}")
            head_ids = tok(head, add_special_tokens=True)["input_ids"]  # BOS where the model adds one
            tail_ids = tok(tail, add_special_tokens=False)["input_ids"] if tail else []
            src_full = tok(sources, add_special_tokens=False)["input_ids"]
            tgt_full = [ids + [eos] for ids in tok(targets, add_special_tokens=False)["input_ids"]]
            src_cut = [i for i, ids in enumerate(src_full) if len(ids) > m.max_source_length]
            prompts = [list(head_ids) + list(ids[:m.max_source_length]) + list(tail_ids) for ids in src_full]
            tgt_ids = [ids[:m.max_target_length] for ids in tgt_full]
            input_ids = [p + t for p, t in zip(prompts, tgt_ids)]
            labels = [[IGNORE] * len(p) + t for p, t in zip(prompts, tgt_ids)]
            src_lengths = [len(x) for x in src_full]
        tgt_cut = sum(len(t) > m.max_target_length for t in tgt_full)
        report.notes.append(_lengths_note(split, "sources", src_lengths, m.max_source_length, len(src_cut)))
        report.notes.append(_lengths_note(split, "targets", [len(t) for t in tgt_full], m.max_target_length, tgt_cut))
        cut_share = len(src_cut) / max(1, len(sources))
        if cut_share > 0.05:
            report.warn(f"{split}: {len(src_cut)} of {len(sources)} sources ({cut_share:.0%}) are longer than "
                        f"model.max_source_length={m.max_source_length} tokens and were truncated")
        subset = set(fixed_subset(len(sources), m.generation.eval_samples, self.seed))
        return _Seq2SeqDataset(input_ids, labels, prompts, sources, targets, subset)

    def _clean(self, df, split: str, where: str, report: DataReport):
        d = self.data_cfg
        df = nested_columns(df, [d.source_column, d.target_column])
        # An empty source or target is counted ("empty text (<column>)") and dropped.
        return tdata.clean_frame(df, split, where, [d.source_column, d.target_column], None, None,
                                 d.unknown_labels, d.drop_duplicates, None, report)

    def build_datasets(self) -> DataBundle:
        d = self.data_cfg
        report = DataReport(source=d.source)
        splits = pipeline.prepared_splits(d, self.seed, report, self._clean,
                                          lambda df: df[d.source_column].astype(str).tolist(), "same source")
        if self.model_cfg.decoder:
            report.notes.append(WARM_START_NOTE.format(enc=self.model_cfg.name, dec=self.model_cfg.decoder))
        prepared = {s: self._prepare(df, s, report) for s, df in splits.items()}
        train = prepared["train"]
        return DataBundle(train=train, validation=prepared["validation"], test=prepared.get("test"), report=report,
                          train_lengths=[len(a) + (len(b) if self.encoder_decoder else 0)
                                         for a, b in zip(train.input_ids, train.labels)])

    def load_eval_dataset(self, source: str, label_names) -> tuple[Any, DataReport]:
        report = DataReport(source=source)
        splits = tdata.load_splits(assets.resolve(source), None, None)
        df = self._clean(splits.get("test", splits["train"]), "eval", source, report)
        if len(df) == 0:
            raise DataError(f"{source}: no usable rows after cleaning (dropped: {report.dropped.get('eval', {})})")
        return self._prepare(df, "eval", report), report

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        pad = self.tokenizer.pad_token_id
        ids = _pad([s["input_ids"] for s in samples], pad)
        batch = {"input_ids": ids, "attention_mask": _pad([[1] * len(s["input_ids"]) for s in samples], 0),
                 "labels": _pad([s["labels"] for s in samples], IGNORE),
                 "index": torch.tensor([s["index"] for s in samples]),
                 "gen": torch.tensor([s["gen"] for s in samples], dtype=torch.bool),
                 "targets": [s["target"] for s in samples]}  # as written, for the metrics
        if "prompt_ids" in samples[0]:  # decoder-only: prompts left-padded, for generation
            batch["prompt_ids"] = _pad([s["prompt_ids"] for s in samples], pad, left=True)
            batch["prompt_mask"] = _pad([[1] * len(s["prompt_ids"]) for s in samples], 0, left=True)
        return batch

    # ------------------------------------------------------------------ step
    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        labels = batch["labels"]
        if self.encoder_decoder:
            decoder_input_ids = shift_right(model, labels)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=decoder_input_ids).logits.float()
            target = labels
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            logits, target = logits[:, :-1], labels[:, 1:]  # token t predicts token t + 1
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE,
                              reduction="none", label_smoothing=self.label_smoothing if train else 0.0)
        nll = nll.view(target.shape)
        counted = (target != IGNORE).sum(-1)
        # Summed over target tokens; the trainer divides by the target tokens of the whole step.
        return {"loss_sum": nll.sum(), "num_items": counted.sum(),
                "outputs": {"nll_sum": nll.sum(-1).detach(), "tokens": counted}}

    @torch.no_grad()
    def generate(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
        """Generated token ids per row (prompt removed, special tokens kept), decoding as the recipe's
        model.generation says."""
        kwargs = self.model_cfg.generation.kwargs(self.tokenizer)
        if not self.encoder_decoder:
            kwargs["eos_token_id"] = self._eos_id()
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if not self.encoder_decoder:
            out = out[:, input_ids.shape[1]:]
        specials = set(self.tokenizer.all_special_ids)
        return [[int(t) for t in row if int(t) not in specials] for row in out]

    def predict_batch(self, model, batch, outputs) -> tuple[list[Any], list[Any]]:
        """Predictions: {"index", "text", "tokens"}, text None for a sample outside the generation
        subset; references: the target texts as written (not truncated)."""
        indices = batch["index"].cpu().tolist()
        chosen = [i for i, g in enumerate(batch["gen"].cpu().tolist()) if g]
        texts: dict[int, tuple[str, int]] = {}
        if chosen:
            rows = torch.tensor(chosen, device=batch["input_ids"].device)
            if self.encoder_decoder:
                ids, mask = batch["input_ids"][rows], batch["attention_mask"][rows]
                width = int(mask.sum(-1).max())
                ids, mask = ids[:, :width], mask[:, :width]
            else:
                ids, mask = batch["prompt_ids"][rows], batch["prompt_mask"][rows]
                width = int(mask.sum(-1).max())
                ids, mask = ids[:, ids.shape[1] - width:], mask[:, mask.shape[1] - width:]
            was_training = model.training
            model.eval()
            for row, gen in zip(chosen, self.generate(model, ids, mask)):
                texts[row] = (self.tokenizer.decode(gen, skip_special_tokens=True).strip(), len(gen))
            model.train(was_training)
        preds = [{"index": i, "text": texts.get(r, (None, 0))[0], "tokens": texts.get(r, (None, 0))[1]}
                 for r, i in enumerate(indices)]
        return preds, list(batch["targets"])

    def compute_metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        pairs = [(p, r) for p, r in zip(predictions, references) if p["text"] is not None]
        key = hash(tuple(references))
        self._generations.setdefault(key, []).append([p["text"] for p in predictions])
        if not pairs:  # nothing of this split is in the generation subset
            return {**{name: 0.0 for name in METRICS}, "gen_samples": 0.0}
        hyps, refs = [p["text"] for p, _ in pairs], [r for _, r in pairs]
        out = {name: compute_metric(name, hyps, refs) for name in METRICS if name != "gen_len"}
        out["gen_len"] = compute_metric("gen_len", [p["tokens"] for p, _ in pairs], refs)
        out["gen_samples"] = float(len(pairs))
        return out

    def report_extras(self, out_dir: Path, split: str, predictions, references, dataset) -> list[str]:
        blocks = []
        if self.model_cfg.decoder:
            blocks.append(WARM_START_NOTE.format(enc=self.model_cfg.name, dec=self.model_cfg.decoder))
        scored = [(p, r) for p, r in zip(predictions, references) if p["text"] is not None]
        if not scored:
            return blocks
        blocks.append(f"Generation metrics cover a fixed subset of {len(scored)} of the {len(predictions)} {split} "
                      f"samples (model.generation.eval_samples), the same at every evaluation; the loss covers all.")
        per = self._per_sample(scored)
        worst = sorted(range(len(scored)), key=lambda i: per[i])[:5]
        name = "ROUGE-L" if self.data_cfg.kind == "summarization" else "chrF"
        rows = [{"source": dataset.sources[scored[i][0]["index"]], "reference": scored[i][1],
                 "generated": scored[i][0]["text"], name: f"{per[i]:.3f}"} for i in worst]
        blocks.append(f"Worst generations (lowest sentence {name}):\n\n"
                      + side_by_side(rows, ["source", "reference", "generated", name], width=120))
        earlier = self._generations.get(hash(tuple(references)), [])
        if len(earlier) >= 2:  # the first evaluation of this split came before training: the baseline
            before = earlier[0]
            rows = [{"source": dataset.sources[p["index"]], "reference": r, "zero-shot": before[k],
                     "fine-tuned": p["text"]}
                    for k, (p, r) in enumerate(zip(predictions, references)) if p["text"] is not None][:8]
            blocks.append("Zero-shot (eval.baseline, before training) and fine-tuned generations:\n\n"
                          + side_by_side(rows, ["source", "reference", "zero-shot", "fine-tuned"], width=100))
        return blocks

    def _per_sample(self, scored) -> list[float]:
        if self.data_cfg.kind == "summarization":
            return [compute_metric("rougeL", [p["text"]], [r]) for p, r in scored]
        import sacrebleu

        return [sacrebleu.sentence_chrf(p["text"], [r]).score / 100 for p, r in scored]

    # ------------------------------------------------------------------ save / load / predict
    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        self.backbone.save(model, out_dir)
        (Path(out_dir) / META_FILE).write_text(json.dumps(
            {"encoder_decoder": self.encoder_decoder, "warm_start": bool(self.model_cfg.decoder)}, indent=1))

    def resolve_labels(self) -> None:
        return None

    def restore(self, model_dir: Path) -> None:
        """The tokenizer saved with the model and whether it is an encoder-decoder."""
        path = Path(model_dir) / META_FILE
        if not path.is_file():
            raise OmnituneError(f"{model_dir}: no {META_FILE} (not a seq2seq model folder)")
        self._saved_kind = json.loads(path.read_text())
        self._encoder_decoder = None
        self.backbone.restore(model_dir)

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        self.restore(model_dir)
        auto = AutoModelForSeq2SeqLM if self.encoder_decoder else AutoModelForCausalLM
        return freeze_fixed(auto.from_pretrained(model_dir, dtype=torch.float32)).eval()

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        """The generated summary or translation of each raw source text."""
        import pandas as pd

        d = self.data_cfg
        frame = pd.DataFrame({d.source_column: list(inputs), d.target_column: ["" for _ in inputs]})
        dataset = self._prepare(frame, "predict", DataReport(source="predict"))
        batch = self.collate([dataset[i] for i in range(len(dataset))])
        device = next(model.parameters()).device
        if self.encoder_decoder:
            ids, mask = batch["input_ids"], batch["attention_mask"]
        else:
            ids, mask = batch["prompt_ids"], batch["prompt_mask"]
        model.eval()
        out = self.generate(model, ids.to(device), mask.to(device))
        return [{"input": text, "generated": self.tokenizer.decode(gen, skip_special_tokens=True).strip()}
                for text, gen in zip(inputs, out)]


def nested_columns(df, columns: list[str]):
    """Add each ``"outer.key"`` column a table lacks from the dicts in its column ``outer``."""
    for name in columns:
        outer, dot, key = name.partition(".")
        if dot and name not in df.columns and outer in df.columns:
            df = df.copy()
            df[name] = [v.get(key) if isinstance(v, dict) else None for v in df[outer]]
    return df


def freeze_fixed(model: nn.Module) -> nn.Module:
    """Sinusoidal position tables (Marian, Pegasus) are computed, never trained (their forward runs
    under no_grad), yet they load as parameters with requires_grad set, which a strategy would then
    count as trainable. They become buffers: same values, same state-dict key, never trained."""
    for module in model.modules():
        if "Sinusoidal" in type(module).__name__ and isinstance(module.__dict__.get("_parameters", {}).get("weight"),
                                                                 nn.Parameter):
            weight = module.weight.detach()
            del module.weight
            module.register_buffer("weight", weight)
    return model


def shift_right(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Decoder inputs from labels (teacher forcing): the model's own rule where it has one (BART,
    T5, Marian, EncoderDecoderModel), else the decoder start token followed by the labels."""
    model = getattr(model, "module", model)  # DDP's wrapper has neither the rule nor the config
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if prepare is not None:
        return prepare(labels=labels)
    config = model.config
    start = config.decoder_start_token_id
    out = labels.new_full(labels.shape, config.pad_token_id)
    out[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE, config.pad_token_id)
    out[:, 0] = start
    return out
