"""Text classification with BERT-style encoders: single texts or pairs, multi-label, regression."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from omnitune.core.base import assets
from omnitune.core.base.data import Storage, cap_splits, check_classes, drop_overlap, require_rows, split_off
from omnitune.core.base.errors import DataError, OmnituneError
from omnitune.core.base.exporting import BATCH, ExportSpec, text_graph
from omnitune.core.base.metrics import compute as compute_metric
from omnitune.core.base.recipe import DataConfig, ModelConfig, RegularizationConfig
from omnitune.core.evaluation.report import confusion_matrix_png, per_class_table
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup
from omnitune.core.loop.feature_cache import Ragged

from . import data as tdata
from . import long_text, pipeline
from .first_token import first_token_only
from .layers import encoder_layer_groups  # noqa: F401  (re-exported: its home is text/layers.py)

LABELS_FILE = "omnitune_labels.json"


class TextModelConfig(ModelConfig):
    max_length: int = Field(default=128, gt=0)
    """Longer texts are handled as data.long_text says (and counted in the data report); batches are
    padded only to their longest text (dynamic padding)."""


class TextDataConfig(DataConfig):
    text_column: str = "text"
    """The column with the text."""
    text_pair_column: str | None = None
    """Second text of a pair (e.g. premise/hypothesis, question/answer); None for single texts."""
    problem_type: Literal["single_label", "multi_label", "regression"] = "single_label"
    """single_label: one class per text (softmax). multi_label: any number (sigmoid per label). regression:
    one number (MSE)."""
    label_separator: str = "|"
    """Multi-label rows hold labels joined by this separator ("drama|comedy"), or a list in JSON."""
    long_text: Literal["truncate", "head_tail", "chunks"] = "truncate"
    """Texts longer than model.max_length tokens. truncate: keep the start. head_tail: keep the start
    and the end (Sun et al. 2019 found head 128 + tail 382 of 510 tokens best on long reviews).
    chunks: classify overlapping windows of the whole text and pool their logits, in training and
    prediction (each window costs a forward pass). head_tail and chunks take single texts."""
    head_share: float = Field(default=0.25, ge=0, le=1)
    """head_tail: the share of the token budget kept from the start (the rest comes from the end)."""
    chunk_stride: int = Field(default=32, ge=0)
    """long_text chunks: tokens two consecutive windows share."""
    chunk_pooling: Literal["mean", "max"] = "mean"
    """long_text chunks: how the windows' logits pool into the text's (mean or max)."""
    storage: Storage = "auto"
    """memory: the tables and token ids in RAM. disk: cleaned rows and token ids in memory-mapped
    Arrow files in the cache folder, read row by row (flat RSS as the data grows; the same batches
    and losses). auto: disk above core.data.AUTO_DISK_BYTES of source files."""

    @model_validator(mode="after")
    def _long_pairs(self) -> "TextDataConfig":
        if self.long_text != "truncate" and self.text_pair_column:
            raise ValueError(f"long_text {self.long_text!r} takes single texts: with text_pair_column, use truncate")
        return self


class _TextDataset(torch.utils.data.Dataset):
    """One encoded text per sample; with ``chunked``, each sample's ``input_ids`` (and
    ``token_type_ids``) are a list of windows."""

    def __init__(self, encodings: dict[str, list], labels: list[Any], texts: list[str], chunked: bool = False) -> None:
        self.encodings, self.labels, self.texts, self.chunked = encodings, labels, texts, chunked

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = self.labels[i]
        item["index"] = i
        return item

    def lengths(self) -> list[int]:
        if self.chunked:
            return [sum(len(w) for w in x) for x in self.encodings["input_ids"]]
        return [len(x) for x in self.encodings["input_ids"]]


class TextClassificationTask:
    name: ClassVar[str] = "text-classification"
    # The fields only some tasks read (core.base.recipe.TASK_IMPLEMENTED) that this one reads.
    implemented_fields: ClassVar[frozenset[str]] = frozenset(
        {"regularization.label_smoothing", "data.label_column", "data.labels", "data.unknown_labels"})
    ModelConfig: ClassVar[type] = TextModelConfig
    DataConfig: ClassVar[type] = TextDataConfig
    main_metric: ClassVar[str] = "accuracy"
    main_metric_mode: ClassVar[str] = "max"
    pipeline_tag: ClassVar[str] = "text-classification"  # Hub model-card metadata (ModelCardInfo)
    card_library: ClassVar[str] = "transformers"

    def export_spec(self) -> ExportSpec:
        """ONNX export (Exportable): the sequence classifier's logits."""
        return ExportSpec("named", (text_graph(("logits",), BATCH),), "sequence classifier: logits [batch, labels]")

    def __init__(self, *, model: TextModelConfig, data: TextDataConfig,
                 regularization: RegularizationConfig, seed: int) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.label_smoothing = regularization.label_smoothing
        self.problem_type = data.problem_type
        if self.problem_type == "regression":
            self.main_metric, self.main_metric_mode = "mse", "min"
        elif self.problem_type == "multi_label":
            self.main_metric = "f1_micro"
        self.label_names: list[str] | None = data.labels
        self._tokenizer = None
        self._storage: str | None = None

    # ------------------------------------------------------------------ model
    @property
    def model_path(self) -> str:
        return assets.resolve(self.model_cfg.name)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = tdata.load_tokenizer(self.model_cfg.name, self.model_path, self.model_cfg.revision)
        return self._tokenizer

    def _num_labels(self) -> int:
        return 1 if self.problem_type == "regression" else len(self.label_names or [])

    def resolve_labels(self) -> list[str] | None:
        """The label set the head is sized for: ``data.labels``, the set :meth:`restore` read back
        from a saved model, or else the sorted labels of the training source (read, not cleaned,
        as build_datasets reads them). build_model and build_datasets both go through it, so
        either may run first. None for regression."""
        if self.label_names is None and self.problem_type != "regression":
            d = self.data_cfg
            if self.storage() == "disk":
                sep = d.label_separator if self.problem_type == "multi_label" else None
                train = tdata.iter_sources(assets.resolve(d.source), None, None)["train"]
                self.label_names = tdata.labels_seen_streamed(train, d.label_column, sep)
            else:
                splits = tdata.load_splits(assets.resolve(d.source), None, None)
                self.label_names = self._labels_seen(splits["train"])
        return self.label_names

    def storage(self, report: DataReport | None = None) -> str:
        """``memory`` or ``disk``: ``data.storage``, with ``auto`` decided by the source's size (noted
        in ``report`` when given)."""
        if self._storage is None or report is not None:
            self._storage = pipeline.storage(self.data_cfg, report)
        return self._storage

    def _labels_seen(self, train) -> list[str]:
        d = self.data_cfg
        values = train[d.label_column].dropna() if d.label_column in train else []
        if self.problem_type == "multi_label":
            values = [x.strip() for v in values for x in str(v).split(d.label_separator)]
        return sorted({str(v) for v in values if str(v).strip()})

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        from .data import load_with_head

        self.resolve_labels()
        kwargs: dict[str, Any] = {"num_labels": self._num_labels(),
                                  "problem_type": {"single_label": "single_label_classification",
                                                   "multi_label": "multi_label_classification",
                                                   "regression": "regression"}[self.problem_type]}
        if self.problem_type != "regression":
            kwargs["id2label"] = dict(enumerate(self.label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(self.label_names)}
        return load_with_head(AutoModelForSequenceClassification, self.model_path, self.model_cfg, **kwargs)

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """Embeddings, each encoder block, then the head (pooler, classifier, final norms)."""
        return encoder_layer_groups(model)

    # ------------------------------------------------------------------ data
    def _text_columns(self) -> list[str]:
        cols = [self.data_cfg.text_column]
        if self.data_cfg.text_pair_column:
            cols.append(self.data_cfg.text_pair_column)
        return cols

    def _encode_labels(self, values) -> list[Any]:
        if self.problem_type == "regression":
            try:
                return [float(v) for v in values]
            except ValueError as exc:
                raise DataError(f"{self.data_cfg.label_column}: regression labels must be numbers ({exc})") from None
        index = {n: i for i, n in enumerate(self.label_names)}
        if self.problem_type == "multi_label":
            out = []
            for v in values:
                items = v if isinstance(v, (list, tuple)) else str(v).split(self.data_cfg.label_separator)
                vec = [0.0] * len(index)
                for x in items:
                    if str(x).strip():
                        vec[index[str(x).strip()]] = 1.0
                out.append(vec)
            return out
        return [index[str(v)] for v in values]

    def _encode_texts(self, texts: list[str], pairs: list[str] | None, report: DataReport | None,
                      split: str, cache: bool = True) -> dict[str, list]:
        """Token ids per text, cut as ``data.long_text`` says (windows per text for chunks); the
        report gets the share of texts over max_length and their length distribution."""
        enc, lengths = self._encode_measured(texts, pairs, cache)
        if report is not None:
            self._note_lengths(report, split, lengths)
        return enc

    def _note_lengths(self, report: DataReport, split: str, lengths) -> None:
        d = self.data_cfg
        handling = {"truncate": "truncated to the first max_length tokens",
                    "head_tail": f"cut to their first {d.head_share:.0%} and last {1 - d.head_share:.0%} tokens (head_tail)",
                    "chunks": f"read in windows sharing {d.chunk_stride} tokens, logits pooled by {d.chunk_pooling}"}
        long_text.note_lengths(report, split, lengths, self.model_cfg.max_length, what="texts",
                               handling=handling[d.long_text], cut=d.long_text != "chunks")

    def _tokenizer_key(self) -> str:
        tok = self.tokenizer
        return f"{self.model_cfg.name}@{self.model_cfg.revision}|{type(tok).__name__}|{len(tok)}"

    def _encode_measured(self, texts: list[str], pairs: list[str] | None,
                         cache: bool = True) -> tuple[dict[str, list], list[int]]:
        """(token ids cut as ``data.long_text`` says, each text's whole length in tokens)."""
        d, tok, limit = self.data_cfg, self.tokenizer, self.model_cfg.max_length
        key = self._tokenizer_key()

        def encode(max_length, specials):
            return tdata.tokenize_cached(tok, texts, pairs, max_length, key, add_special_tokens=specials, cache=cache)

        if pairs is not None:  # pairs: the tokenizer's own longest-first truncation
            enc = encode(limit, True)
            lengths = [len(x) for x in encode(None, True)["input_ids"]]
        else:
            prefix, suffix = long_text.special_layout(tok)
            budget = long_text.window_budget(tok, limit, d.chunk_stride if d.long_text == "chunks" else None,
                                             field="data.chunk_stride")
            bare = encode(None, False)["input_ids"]
            lengths = [len(b) + len(prefix) + len(suffix) for b in bare]
            if d.long_text == "chunks":
                ids = [[prefix + b[s:e] + suffix for s, e in long_text.windows(len(b), budget, d.chunk_stride)]
                       for b in bare]
            elif d.long_text == "head_tail":
                ids = [prefix + long_text.head_tail(b, budget, round(d.head_share * budget)) + suffix for b in bare]
            else:
                ids = [prefix + b[:budget] + suffix for b in bare]
            enc = {"input_ids": ids}
            if "token_type_ids" in tok.model_input_names:
                zeros = (lambda x: [[0] * len(w) for w in x]) if d.long_text == "chunks" else (lambda x: [0] * len(x))
                enc["token_type_ids"] = [zeros(x) for x in ids]
        return enc, lengths

    def _prepare_disk(self, rows: tdata.DiskRows, split: str, report: DataReport) -> tdata.DiskTextDataset:
        """:meth:`_prepare` for rows on disk: encoded 2,000 at a time into an Arrow file in the cache
        folder (text/pipeline.py), keyed by the texts, labels and every tokenisation setting."""
        d = self.data_cfg
        cols, chunked = self._text_columns(), d.long_text == "chunks"
        settings = [self._tokenizer_key(), self.model_cfg.max_length, d.long_text, d.head_share, d.chunk_stride,
                    self.problem_type, self.label_names, d.label_separator]

        def encode(texts, *rest):
            pairs, labels = (rest[0], rest[1]) if len(cols) > 1 else (None, rest[0])
            enc, lengths = self._encode_measured(texts, pairs, cache=False)
            return {**enc, "labels": self._encode_labels(labels),
                    "text": texts if pairs is None else [f"{a} ||| {b}" for a, b in zip(texts, pairs)],
                    "whole_length": lengths,
                    "length": [sum(len(w) for w in x) if chunked else len(x) for x in enc["input_ids"]]}

        dataset = pipeline.encode_to_disk(rows, [*cols, d.label_column], settings, encode, chunked=chunked)
        self._note_lengths(report, split, dataset.table.column("whole_length").to_pylist())
        return dataset

    def _prepare(self, df, split: str, report: DataReport | None = None) -> _TextDataset:
        if isinstance(df, tdata.DiskRows):
            return self._prepare_disk(df, split, report)
        texts = df[self.data_cfg.text_column].astype(str).tolist()
        pairs = df[self.data_cfg.text_pair_column].astype(str).tolist() if self.data_cfg.text_pair_column else None
        enc = self._encode_texts(texts, pairs, report, split)
        labels = self._encode_labels(df[self.data_cfg.label_column].tolist())
        return _TextDataset(enc, labels, texts if pairs is None else [f"{a} ||| {b}" for a, b in zip(texts, pairs)],
                            chunked=self.data_cfg.long_text == "chunks")

    def _clean(self, df, split: str, where: str, report: DataReport):
        d = self.data_cfg
        return tdata.clean_frame(
            df, split, where, self._text_columns(), d.label_column,
            None if self.problem_type == "regression" else self.label_names, d.unknown_labels,
            d.drop_duplicates, d.label_separator if self.problem_type == "multi_label" else None, report)

    def _row_keys(self, df) -> list:
        """What makes two rows the same example, whatever their labels: the text (and its pair)."""
        return list(zip(*(df[c].astype(str) for c in self._text_columns())))

    def build_datasets(self) -> DataBundle:
        d = self.data_cfg
        source = assets.resolve(d.source)
        report = DataReport(source=d.source)
        where = {"train": d.source, "validation": d.validation_source or d.source, "test": d.test_source or d.source}
        disk = self.storage(report) == "disk"
        splits = self._disk_splits(where, report) if disk else self._memory_splits(where, report)
        stratify = self.problem_type == "single_label"
        column = (lambda items, c: items.column(c)) if disk else (lambda items, c: items[c].astype(str).tolist())
        by_label = (lambda items: column(items, d.label_column)) if stratify else None
        splits = split_off(splits, val_size=d.val_size, test_size=d.test_size, seed=self.seed, report=report,
                           labels=by_label)
        splits = cap_splits(splits, max_samples=d.max_samples, max_eval_samples=d.max_eval_samples,
                            seed=self.seed, report=report, labels=by_label)
        if d.drop_duplicates and disk:  # 64-bit hashes of the texts, not a set of them
            describe = lambda rows, i: str(tuple(rows.column(c, i, i + 1)[0] for c in self._text_columns()))  # noqa: E731
            splits = drop_overlap(splits, lambda rows: rows.array(tdata.KEY_COLUMN), report, "same text", describe)
        elif d.drop_duplicates:
            splits = drop_overlap(splits, self._row_keys, report, "same text")
        require_rows(splits, where, report)
        if self.problem_type != "regression":
            seen = column(splits["train"], d.label_column)
            if self.problem_type == "multi_label":
                seen = [x.strip() for v in seen for x in v.split(d.label_separator) if x.strip()]
            check_classes(seen, where["train"])
        if stratify:
            for s, items in splits.items():
                report.label_counts[s] = tdata.label_counts(column(items, d.label_column))
        train = self._prepare(splits["train"], "train", report)
        return DataBundle(train=train, validation=self._prepare(splits["validation"], "validation", report),
                          test=self._prepare(splits["test"], "test", report) if "test" in splits else None,
                          report=report, label_names=self.label_names, train_lengths=train.lengths())

    def _memory_splits(self, where: dict[str, str], report: DataReport) -> dict[str, Any]:
        d = self.data_cfg
        splits = tdata.load_splits(assets.resolve(d.source), d.validation_source and assets.resolve(d.validation_source),
                                   d.test_source and assets.resolve(d.test_source))
        if self.label_names is None and self.problem_type != "regression":
            self.label_names = self._labels_seen(splits["train"])
            report.notes.append(f"labels not declared: using the {len(self.label_names)} seen in training data")
        return {s: self._clean(df, s, where[s], report) for s, df in splits.items()}

    def _disk_splits(self, where: dict[str, str], report: DataReport) -> dict[str, tdata.DiskRows]:
        """:meth:`_memory_splits` in flat memory: each source read in chunks, cleaned into an Arrow file."""
        d = self.data_cfg
        paths = pipeline.source_paths(d)
        sources = tdata.iter_sources(*paths)
        if self.label_names is None and self.problem_type != "regression":
            self.resolve_labels()
            report.notes.append(f"labels not declared: using the {len(self.label_names)} seen in training data")
        digest = tdata.source_digest(*paths)
        labels = None if self.problem_type == "regression" else self.label_names
        sep = d.label_separator if self.problem_type == "multi_label" else None
        return {s: tdata.clean_to_disk(chunks, s, where[s], self._text_columns(), d.label_column, labels,
                                       d.unknown_labels, d.drop_duplicates, sep, report, digest)
                for s, chunks in sources.items()}

    def load_eval_dataset(self, source: str, label_names: list[str] | None) -> tuple[Any, DataReport]:
        if label_names is not None:  # the trained model's labels, whatever the new file holds
            self.label_names = list(label_names)
        self.resolve_labels()
        report = DataReport(source=source)
        path = assets.resolve(source)
        splits = tdata.load_splits(path, None, None)
        frame = splits.get("test", splits["train"])
        df = self._clean(frame, "eval", source, report)
        if len(df) == 0:
            raise DataError(f"{source}: no usable rows after cleaning (dropped: {report.dropped.get('eval', {})})")
        return self._prepare(df, "eval", report), report

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Padded ids; under ``long_text: chunks`` one row per window and ``chunk_of`` (the sample of
        each window), with ``labels`` still one per sample."""
        chunk_of = None
        if self.data_cfg.long_text == "chunks":
            chunk_of = torch.tensor([i for i, s in enumerate(samples) for _ in s["input_ids"]])
            samples = [{**s, "input_ids": w, **({"token_type_ids": t} if "token_type_ids" in s else {})}
                       for s in samples
                       for w, t in zip(s["input_ids"], s.get("token_type_ids", s["input_ids"]))]
        pad = self.tokenizer.pad_token_id or 0
        width = max(len(s["input_ids"]) for s in samples)
        ids = torch.full((len(samples), width), pad, dtype=torch.long)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        types = torch.zeros((len(samples), width), dtype=torch.long) if "token_type_ids" in samples[0] else None
        for i, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[i, :n] = torch.tensor(s["input_ids"])
            mask[i, :n] = 1
            if types is not None:
                types[i, :n] = torch.tensor(s["token_type_ids"])
        batch = {"input_ids": ids, "attention_mask": mask,
                 "labels": torch.tensor([s["labels"] for s in samples],
                                        dtype=torch.long if self.problem_type == "single_label" else torch.float),
                 "index": torch.tensor([s["index"] for s in samples])}
        if types is not None:
            batch["token_type_ids"] = types
        if chunk_of is not None:  # labels and indices: one per sample, not per window
            first = torch.ones(len(chunk_of), dtype=torch.bool)
            first[1:] = chunk_of[1:] != chunk_of[:-1]
            batch["labels"], batch["index"] = batch["labels"][first], batch["index"][first]
            batch["chunk_of"] = chunk_of
            batch = {"labels": batch.pop("labels"), **batch}  # first: the core counts samples by it
        return batch

    def _logits(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """One row of logits per sample: under chunks, the windows' logits pooled (mean or max)."""
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with first_token_only(model):  # the head reads token 0 only: the last layer computes just that
            logits = model(**inputs).logits.float()
        chunk_of = batch.get("chunk_of")
        if chunk_of is None:
            return logits
        n = int(chunk_of.max()) + 1
        index = chunk_of.to(logits.device).unsqueeze(-1).expand_as(logits)
        reduce = {"mean": "mean", "max": "amax"}[self.data_cfg.chunk_pooling]
        return logits.new_zeros((n, logits.shape[-1])).scatter_reduce(0, index, logits, reduce=reduce,
                                                                      include_self=False)

    # ------------------------------------------------------------------ step
    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        logits = self._logits(model, batch)
        labels = batch["labels"]
        # Summed over the batch's samples; the trainer divides by the samples of the whole step.
        if self.problem_type == "single_label":
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing if train else 0.0,
                                   reduction="sum")
        elif self.problem_type == "multi_label":
            target = labels
            if train and self.label_smoothing:
                target = labels * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            # Each sample's loss is the mean over its labels, as in transformers' multi-label head.
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.shape[-1]
        else:
            loss = F.mse_loss(logits.squeeze(-1), labels, reduction="sum")
        return {"loss_sum": loss, "num_items": labels.shape[0], "outputs": logits}

    # ------------------------------------------------------------------ frozen-trunk feature cache
    # The feature cache (core/loop/feature_cache.py) holds validation too: metrics need only the logits.
    feature_cache_eval: ClassVar[bool] = True

    def frozen_features(self, model: nn.Module, batch: dict[str, Any], depth: int) -> dict[str, Any] | None:
        """Outputs of the frozen bottom (core/loop/feature_cache.py) of a BERT-style model (a pooler reading
        the first token): with only the head training, the first token's hidden state (the last layer
        computes that position only); with the embeddings and the first ``depth - 1`` blocks frozen, each
        text's hidden states and attention mask without their padding (Ragged). None for other models
        or long texts in chunks."""
        base = model.base_model
        if "chunk_of" in batch or getattr(base, "pooler", None) is None or not hasattr(model, "classifier"):
            return None
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if depth == len(self.layer_groups(model)) - 1:
            with first_token_only(model):
                first = base(**inputs).last_hidden_state[:, 0]
            return {"first_token": first, "labels": batch["labels"], "index": batch["index"]}
        if not (hasattr(base, "_create_attention_masks") and hasattr(base.encoder, "layer")):
            return None
        mask = batch["attention_mask"]
        hidden = base.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
        full = base._create_attention_masks(mask, None, hidden, None, None)[0]
        for layer in base.encoder.layer[:depth - 1]:
            hidden = layer(hidden, full)
        lengths = mask.sum(1)  # right-padded: a text is its first `length` positions
        return {"hidden": Ragged(hidden, lengths), "attention_mask": Ragged(mask, lengths),
                "labels": batch["labels"], "index": batch["index"]}

    def forward_features(self, model: nn.Module, batch: dict[str, Any], depth: int, train: bool) -> dict[str, Any]:
        """:meth:`forward` from :meth:`frozen_features`: the trained blocks (the batch padded to its
        longest text, the last block computing the first token only, as in :meth:`_logits`), pooler,
        dropout and classifier as the model runs them."""
        from types import SimpleNamespace

        base = model.base_model
        if "first_token" in batch:
            hidden = batch["first_token"][:, None, :]
        else:
            hidden, mask = batch["hidden"], batch["attention_mask"]
            full = base._create_attention_masks(mask, None, hidden, None, None)[0]
            with first_token_only(model):
                for layer in base.encoder.layer[depth - 1:]:
                    hidden = layer(hidden, full)
        pooled = base.pooler(hidden)
        logits = model.classifier(model.dropout(pooled) if hasattr(model, "dropout") else pooled)
        return self.forward(lambda **_: SimpleNamespace(logits=logits), {"labels": batch["labels"]}, train)

    def predict_batch(self, model, batch, outputs) -> tuple[list[Any], list[Any]]:
        logits = outputs["outputs"].detach().float().cpu()
        refs = batch["labels"].cpu().tolist()
        if self.problem_type == "single_label":
            probs = logits.softmax(-1)
            conf, pred = probs.max(-1)
            idx = batch["index"].cpu().tolist()
            return ([{"label": int(p), "score": float(c), "index": i} for p, c, i in zip(pred, conf, idx)], refs)
        if self.problem_type == "multi_label":
            return ((logits.sigmoid() > 0.5).int().tolist(), [[int(x) for x in r] for r in refs])
        return logits.squeeze(-1).tolist(), refs

    def metric_inputs(self, predictions: list[Any], references: list[Any]) -> tuple[list, list]:
        """Plain values for a user's metric (``eval.extra_metrics``): label indices for single-label
        classification; indicator rows (multi-label) and numbers (regression) are plain already."""
        if self.problem_type == "single_label":
            return [p["label"] for p in predictions], list(references)
        return list(predictions), list(references)

    def compute_metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        if self.problem_type == "regression":
            return {name: compute_metric(name, predictions, references) for name in ("mse", "mae")}
        if self.problem_type == "multi_label":  # indicator rows, one column per label
            p, r = np.asarray(predictions), np.asarray(references)
            return {name: compute_metric(name, p, r) for name in ("f1_micro", "f1_macro", "subset_accuracy")}
        preds = [p["label"] for p in predictions]
        out = {"accuracy": compute_metric("accuracy", preds, references)}
        labels = list(range(len(self.label_names)))  # every class counts, even one absent from this split
        for name in ("precision", "recall", "f1"):
            for avg in ("macro", "micro", "weighted"):
                out[f"{name}_{avg}"] = compute_metric(f"{name}_{avg}", preds, references, labels=labels)
        return out

    def report_extras(self, out_dir: Path, split: str, predictions, references, dataset) -> list[str]:
        if self.problem_type != "single_label":
            return []
        preds = [p["label"] for p in predictions]
        png = confusion_matrix_png(references, preds, self.label_names, out_dir / f"confusion_matrix_{split}.png",
                                   title=f"Confusion matrix ({split})")
        blocks = [f"![confusion matrix]({png.name})", per_class_table(references, preds, self.label_names)]
        wrong = sorted((p for p, r in zip(predictions, references) if p["label"] != r), key=lambda p: -p["score"])[:5]
        if wrong:
            rows = ["| text | true | predicted | confidence |", "|---|---|---|---|"]
            for p in wrong:
                text = dataset.texts[p["index"]].replace("|", "\\|")[:120]
                rows.append(f"| {text} | {self.label_names[dataset.labels[p['index']]]} | "
                            f"{self.label_names[p['label']]} | {p['score']:.2f} |")
            blocks.append("Most confidently wrong:\n\n" + "\n".join(rows))
        return blocks

    # ------------------------------------------------------------------ save / load / predict
    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        (Path(out_dir) / LABELS_FILE).write_text(json.dumps(
            {"label_names": self.label_names, "problem_type": self.problem_type}, indent=1))

    def restore(self, model_dir: Path) -> None:
        """Read back what training learnt from the data (the label names) and the tokenizer from a
        folder written by save_pretrained: a saved run needs no training data to be rebuilt."""
        from transformers import AutoTokenizer

        path = Path(model_dir) / LABELS_FILE
        if not path.is_file():
            raise OmnituneError(f"{model_dir}: no {LABELS_FILE} (not a text-classification model folder)")
        meta = json.loads(path.read_text())
        if meta.get("problem_type", self.problem_type) != self.problem_type:
            raise OmnituneError(f"{model_dir}: saved for problem_type {meta['problem_type']!r}, the recipe "
                                f"says {self.problem_type!r}")
        self.label_names = meta["label_names"]
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        self.restore(model_dir)
        return AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        texts, pairs = inputs, None
        if self.data_cfg.text_pair_column:
            split = [t.split(" ||| ", 1) for t in inputs]
            if any(len(s) != 2 for s in split):
                raise OmnituneError("this model takes text pairs: give each input as 'first ||| second'")
            texts, pairs = [s[0] for s in split], [s[1] for s in split]
        if pairs is not None:
            enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.model_cfg.max_length,
                                 padding=True, return_tensors="pt")
            logits = model(**enc).logits.float()
        else:  # the long-text handling of training (truncate, head_tail or chunks)
            enc = self._encode_texts(list(texts), None, None, "predict", cache=False)
            dummy = 0.0 if self.problem_type == "regression" else (
                [0.0] * len(self.label_names) if self.problem_type == "multi_label" else 0)
            dataset = _TextDataset(enc, [dummy] * len(texts), list(texts), chunked=self.data_cfg.long_text == "chunks")
            batch = self.collate([dataset[i] for i in range(len(dataset))])
            device = next(model.parameters()).device
            logits = self._logits(model, {k: v.to(device) if isinstance(v, torch.Tensor) else v
                                          for k, v in batch.items()})
        if self.problem_type == "regression":
            return [{"input": t, "value": float(v)} for t, v in zip(inputs, logits.squeeze(-1))]
        if self.problem_type == "multi_label":
            probs = logits.sigmoid()
            return [{"input": t, "labels": [self.label_names[j] for j in range(len(p)) if p[j] > 0.5],
                     "scores": {n: round(float(x), 4) for n, x in zip(self.label_names, p)}}
                    for t, p in zip(inputs, probs)]
        probs = logits.softmax(-1)
        return [{"input": t, "label": self.label_names[int(p.argmax())], "score": round(float(p.max()), 4),
                 "scores": {n: round(float(x), 4) for n, x in zip(self.label_names, p)}}
                for t, p in zip(inputs, probs)]
