"""Token classification (NER, POS, chunking: any BIO / IOB2 / IOBES tagging) with BERT-style encoders.

Data: CoNLL-style files (token and tag columns, a blank line between sentences; see conll.py),
JSON/JSONL/Parquet rows with a token list and a tag list, or ``hub:`` datasets (tag ids are turned
into their names). A sample is one sentence of words with one tag each.

Words are split into sub-word tokens; ``data.label_subtokens`` says which carry the word's tag:
``first`` (the first sub-token; the rest are ignored, -100) or ``all`` (continuations of a ``B-X``
word are labelled ``I-X``). A word is always predicted from its first sub-token.

A sentence longer than ``model.max_length`` sub-tokens is never truncated: it is cut into windows
that share ``data.stride`` tokens (at word boundaries where possible), all windows of a sentence go
into the same batch, and each word is labelled and predicted in exactly one of them, the one where
it lies farthest from a window edge. So the windows' predictions rejoin to one tag per original
word, and the loss counts each labelled token once. The data report counts the split sentences.

The loss is token-level: summed over labelled sub-tokens, ``num_items`` = their count. Metrics are
seqeval's entity precision / recall / F1 (micro, and F1 per entity type) and the token accuracy;
the main metric is entity F1.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from omnitune.core.base import assets
from omnitune.core.base.data import (SPLIT_ALIASES, cap_splits, drop_overlap, is_hub, load_hub, read_table,
                                require_columns, require_rows, split_off, table_suffix)
from omnitune.core.base.errors import DataError, OmnituneError, RecipeError
from omnitune.core.base.exporting import BATCH_SEQ, ExportSpec, text_graph
from omnitune.core.base.metrics import compute as compute_metric
from omnitune.core.base.recipe import DataConfig, ModelConfig, RegularizationConfig
from omnitune.core.evaluation.report import confusion_matrix_png
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup

from . import data as tdata
from .layers import encoder_layer_groups
from .conll import Sentence, read_conll
from .long_text import note_lengths, special_layout, window_budget

LABELS_FILE = "omnitune_labels.json"
IGNORE = -100  # label value cross entropy skips: continuation sub-tokens, special tokens, padding
TABLE_KINDS = (".json", ".jsonl", ".parquet")  # any other file is read as CoNLL
# Raw text for predict: URLs, @mentions and #hashtags whole (as tweet corpora tokenise them), words
# with inner apostrophes/hyphens kept, and each other punctuation mark on its own.
WORD_RE = re.compile(r"https?://\S+|[@#]\w+|\w+(?:['’-]\w+)*|[^\w\s]")


class TokenModelConfig(ModelConfig):
    max_length: int = Field(default=128, gt=0)
    """Sub-word tokens per window, special tokens included; longer sentences are split into
    windows (never truncated)."""


class TokenDataConfig(DataConfig):
    tokens_column: str = "tokens"
    """JSON/JSONL/Parquet and hub: the column with each sentence's word list."""
    label_column: str = "tags"
    """JSON/JSONL/Parquet and hub: the column with each sentence's tag list."""
    conll_token_column: int = 0
    """CoNLL files: which whitespace-separated column is the word (negative counts from the end)."""
    conll_tag_column: int = -1
    """CoNLL files: which whitespace-separated column is the tag (negative counts from the end:
    CoNLL-2003's "token POS chunk NER" keeps NER last)."""
    label_subtokens: Literal["first", "all"] = "first"
    """first: only a word's first sub-token is labelled (the rest -100), as in transformers' run_ner.py;
    all: every sub-token is (B-X continuations as I-X). Words are predicted from their first sub-token."""
    stride: int = Field(default=32, ge=0)
    """Sub-word tokens two consecutive windows of a long sentence share."""
    tag_map: dict[str, str] = {}
    """Entity types renamed on reading, e.g. {PER: person}; a type mapped to "O" is untagged. Lets a
    model trained on one tag set be evaluated on data with another (CoNLL-2003 against WNUT-16)."""
    tag_scheme: Literal["IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU"] | None = None
    """seqeval scoring: None counts entities as conlleval does (lenient about I- without B-); a scheme
    (IOB2, IOBES, ...) scores in seqeval's strict mode, where an ill-formed entity counts as wrong."""


@dataclass
class _Sample:
    """One sentence ready for the model: its windows and where each word is read."""

    windows: list[list[int]]  # token ids per window, special tokens included
    window_labels: list[list[int]]  # training labels per window position (IGNORE where unlabelled)
    picks: list[tuple[int, int]]  # per word: (window, position) of the sub-token it is predicted from
    tags: list[int] | None  # reference tag ids per word (None for raw text)


class _TokenDataset(torch.utils.data.Dataset):
    def __init__(self, samples: list[_Sample], sentences: list[Sentence]) -> None:
        self.samples, self.sentences = samples, sentences

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        return {"windows": s.windows, "window_labels": s.window_labels, "picks": s.picks, "tags": s.tags, "index": i}

    def lengths(self) -> list[int]:
        return [sum(len(w) for w in s.windows) for s in self.samples]


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-geo-loc"`` -> ``("B", "geo-loc")``; ``"O"`` -> ``("O", "")``; a bare ``"PER"`` -> ``("", "PER")``."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    return (prefix, kind) if sep and len(prefix) == 1 else ("", tag)


def continuation_tag(tag: str, label_names: list[str]) -> str:
    """The tag of a word's later sub-tokens under ``label_subtokens: all``: ``B-X`` -> ``I-X`` when
    the label set has it (a sub-token after the first continues the entity), else the tag itself."""
    prefix, kind = split_tag(tag)
    return f"I-{kind}" if prefix == "B" and f"I-{kind}" in label_names else tag


def sort_tags(tags) -> list[str]:
    """``O`` first, then by entity type and prefix: B-PER, I-PER, B-LOC... read together."""
    return sorted(set(tags), key=lambda t: (t != "O", split_tag(t)[1], split_tag(t)[0]))


def word_windows(word_ids: list[int], size: int, stride: int) -> list[tuple[int, int]]:
    """Spans ``[start, end)`` of at most ``size`` sub-tokens covering a sentence's ``word_ids`` (the
    word of each sub-token), sharing about ``stride`` sub-tokens, cut at word starts where a word
    fits (a word longer than a window is cut). One span when it all fits."""
    n = len(word_ids)
    if n <= size:
        return [(0, n)]

    def word_start(i: int) -> int:  # the start of the word at i
        while i > 0 and word_ids[i - 1] == word_ids[i]:
            i -= 1
        return i

    def next_word_start(i: int) -> int:  # the first word start at or after i
        while 0 < i < n and word_ids[i - 1] == word_ids[i]:
            i += 1
        return i

    spans, start = [], 0
    while True:
        end = min(start + size, n)
        if end < n:
            snapped = word_start(end)
            end = snapped if snapped > start else end
        spans.append((start, end))
        if end == n:
            return spans
        back = max(end - stride, start + 1)
        nxt = word_start(back)
        if nxt <= start:  # the word there began before this window: overlap from the next word on
            nxt = next_word_start(back)
        start = min(nxt, end)


def owner_windows(first: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """For each word (by the position of its first sub-token), the window that labels and predicts
    it: of the windows holding that sub-token, the one where it lies farthest from an edge."""
    owners = []
    for p in first:
        best, best_margin = -1, -1
        for k, (s, e) in enumerate(spans):
            if s <= p < e and min(p - s, e - 1 - p) > best_margin:
                best, best_margin = k, min(p - s, e - 1 - p)
        owners.append(best)
    return owners


class TokenClassificationTask:
    name: ClassVar[str] = "token-classification"
    # The fields only some tasks read (core.base.recipe.TASK_IMPLEMENTED) that this one reads.
    implemented_fields: ClassVar[frozenset[str]] = frozenset(
        {"regularization.label_smoothing", "data.label_column", "data.labels", "data.unknown_labels"})
    ModelConfig: ClassVar[type] = TokenModelConfig
    DataConfig: ClassVar[type] = TokenDataConfig
    main_metric: ClassVar[str] = "entity_f1"
    main_metric_mode: ClassVar[str] = "max"
    pipeline_tag: ClassVar[str] = "token-classification"  # Hub model-card metadata (ModelCardInfo)
    card_library: ClassVar[str] = "transformers"

    def export_spec(self) -> ExportSpec:
        """ONNX export (Exportable): the token classifier's logits."""
        return ExportSpec("named", (text_graph(("logits",), BATCH_SEQ),),
                          "token classifier: logits [batch, sequence, labels]")

    def __init__(self, *, model: TokenModelConfig, data: TokenDataConfig,
                 regularization: RegularizationConfig, seed: int) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.label_smoothing = regularization.label_smoothing
        self.label_names: list[str] | None = data.labels
        self._tokenizer = None
        self._layout: tuple[list[int], list[int]] | None = None

    # ------------------------------------------------------------------ model
    @property
    def model_path(self) -> str:
        return assets.resolve(self.model_cfg.name)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = tdata.load_tokenizer(self.model_cfg.name, self.model_path, self.model_cfg.revision)
        return self._tokenizer

    def resolve_labels(self) -> list[str] | None:
        """``data.labels``, the tags restore() read back, or else the tags of the training source."""
        if self.label_names is None:
            splits = self._read(assets.resolve(self.data_cfg.source), self.data_cfg.source)
            self.label_names = sort_tags(t for s in splits["train"] for t in s.tags)
        return self.label_names

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForTokenClassification

        from .data import load_with_head

        names = self.resolve_labels()
        kwargs = {"num_labels": len(names), "id2label": dict(enumerate(names)),
                  "label2id": {n: i for i, n in enumerate(names)}}
        return load_with_head(AutoModelForTokenClassification, self.model_path, self.model_cfg, **kwargs)

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """Embeddings, each encoder block, then the head (the token classifier)."""
        return encoder_layer_groups(model)

    # ------------------------------------------------------------------ reading
    def _map_tag(self, tag: str) -> str:
        prefix, kind = split_tag(tag)
        if kind not in self.data_cfg.tag_map:
            return tag
        new = self.data_cfg.tag_map[kind]
        if new == "O":
            return "O"
        return f"{prefix}-{new}" if prefix else new

    def _read_file(self, path: Path) -> list[Sentence]:
        d = self.data_cfg
        if table_suffix(path) not in TABLE_KINDS:
            sentences = read_conll(path, d.conll_token_column, d.conll_tag_column)
        else:
            df = read_table(path)
            require_columns(df, [d.tokens_column, d.label_column], str(path))
            sentences = []
            for i, (tokens, tags) in enumerate(zip(df[d.tokens_column], df[d.label_column])):
                sentences.append(self._row(tokens, tags, i, str(path)))
        if d.tag_map:
            for s in sentences:
                s.tags = [self._map_tag(t) for t in s.tags]
        return sentences

    def _row(self, tokens, tags, i: int, where: str, names: list[str] | None = None) -> Sentence:
        d = self.data_cfg
        if isinstance(tokens, str) or not hasattr(tokens, "__len__"):
            raise DataError(f"{where}: row {i}: {d.tokens_column!r} must be a list of words, got {type(tokens).__name__}")
        if isinstance(tags, str) or not hasattr(tags, "__len__"):
            raise DataError(f"{where}: row {i}: {d.label_column!r} must be a list of tags, got {type(tags).__name__}")
        if len(tokens) != len(tags):
            raise DataError(f"{where}: row {i}: {len(tokens)} words but {len(tags)} tags")
        tags = [names[int(t)] for t in tags] if names is not None else [str(t) for t in tags]
        return Sentence([str(t) for t in tokens], tags, i)

    def _read_hub(self, ref: str) -> dict[str, list[Sentence]]:
        d = self.data_cfg
        out = {}
        for split, ds in load_hub(ref).items():
            if split not in SPLIT_ALIASES:
                continue
            missing = [c for c in (d.tokens_column, d.label_column) if c not in ds.column_names]
            if missing:
                raise DataError(f"{ref}: no column {', '.join(map(repr, missing))} (columns: {', '.join(ds.column_names)})")
            inner = getattr(ds.features[d.label_column], "feature", None)
            names = getattr(inner, "names", None)  # e.g. conll2003's ner_tags are class ids
            sentences = [self._row(t, g, i, ref, names) for i, (t, g) in
                         enumerate(zip(ds[d.tokens_column], ds[d.label_column]))]
            if d.tag_map:
                for s in sentences:
                    s.tags = [self._map_tag(t) for t in s.tags]
            out[split] = sentences
        if "train" not in out:
            raise DataError(f"{ref}: the dataset has no train split (splits: {', '.join(out) or 'none'})")
        return out

    def _read(self, source: str, name: str, validation: str | None = None,
              test: str | None = None) -> dict[str, list[Sentence]]:
        """{"train": sentences, and "validation"/"test" where the source has them}."""
        if is_hub(source):
            return self._read_hub(source)
        path = Path(source)
        if path.is_dir():
            files = tdata.split_files(path, "train.* file (CoNLL, JSON, JSONL or Parquet)")
            found = {split: self._read_file(f) for split, f in files.items()}
            return found
        splits = {"train": self._read_file(path)}
        if validation:
            splits["validation"] = self._read_file(Path(validation))
        if test:
            splits["test"] = self._read_file(Path(test))
        return splits

    # ------------------------------------------------------------------ cleaning
    def _clean(self, sentences: list[Sentence], split: str, where: str, report: DataReport) -> list[Sentence]:
        d = self.data_cfg
        report.rows_read[split] = len(sentences)
        empty = [s for s in sentences if not s.tokens]
        report.drop(split, "empty sentence", len(empty), [f"line/row {s.line}" for s in empty])
        kept = [s for s in sentences if s.tokens]
        allowed = set(self.label_names or [])
        bad = [s for s in kept if any(t not in allowed for t in s.tags)]
        if bad:
            unknown = sorted({t for s in bad for t in s.tags if t not in allowed})
            if d.unknown_labels == "error":
                raise DataError(
                    f"{where}: {len(bad)} sentences have tags not in the declared set: {unknown[:8]} (first at "
                    f"line/row {bad[0].line}); declare them in data.labels, map their types with data.tag_map, "
                    f"or set data.unknown_labels: drop to skip those sentences")
            report.drop(split, "tag not in declared set", len(bad), [repr(t) for t in unknown])
            bad_ids = {id(s) for s in bad}
            kept = [s for s in kept if id(s) not in bad_ids]
        if d.drop_duplicates:
            seen, unique, dups = set(), [], []
            for s in kept:
                key = (tuple(s.tokens), tuple(s.tags))
                (dups if key in seen else unique).append(s)
                seen.add(key)
            report.drop(split, "exact duplicate", len(dups), [" ".join(s.tokens)[:80] for s in dups])
            kept = unique
        report.rows_kept[split] = len(kept)
        return kept

    # ------------------------------------------------------------------ encoding
    def _check_tokenizer(self) -> None:
        if not getattr(self.tokenizer, "is_fast", False):
            raise RecipeError(f"model.name: {self.model_cfg.name!r} has no fast tokenizer; token classification "
                              "needs one to map sub-tokens back to words")

    def _encode(self, sentences: list[list[str]], tags: list[list[str]] | None, report: DataReport | None,
                split: str) -> list[_Sample]:
        """Words -> windows of sub-token ids, training labels and where each word is read."""
        self._check_tokenizer()
        tok, d = self.tokenizer, self.data_cfg
        if self._layout is None:
            self._layout = special_layout(tok)
        prefix, suffix = self._layout
        budget = window_budget(tok, self.model_cfg.max_length, d.stride)
        enc = tok(sentences, is_split_into_words=True, add_special_tokens=False)
        index = {n: i for i, n in enumerate(self.label_names or [])}
        cont = {i: index[continuation_tag(n, self.label_names)] for n, i in index.items()} if index else {}
        samples, lengths, replaced = [], [], 0
        for k, words in enumerate(sentences):
            ids, wids = enc["input_ids"][k], enc.word_ids(k)
            if len({w for w in wids if w is not None}) < len(words):
                # A word the tokenizer turns into nothing (a zero-width or control character): read
                # it as the unknown token, so every word still gets a prediction.
                present = {w for w in wids if w is not None}
                unk = tok.unk_token or "[UNK]"
                fixed = [w if i in present else unk for i, w in enumerate(words)]
                replaced += len(words) - len(present)
                one = tok(fixed, is_split_into_words=True, add_special_tokens=False)
                ids, wids = one["input_ids"], one.word_ids()
            first: list[int] = []
            for pos, w in enumerate(wids):
                if w is not None and len(first) == w:
                    first.append(pos)
            spans = word_windows(list(wids), budget, d.stride)
            owners = owner_windows(first, spans)
            word_tags = [index[t] for t in tags[k]] if tags is not None else None
            windows, window_labels, picks = [], [], []
            for j, (s, e) in enumerate(spans):
                windows.append(prefix + list(ids[s:e]) + suffix)
                labels = [IGNORE] * len(prefix)
                for pos in range(s, e):
                    w = wids[pos]
                    if word_tags is None or owners[w] != j:
                        labels.append(IGNORE)
                    elif pos == first[w]:
                        labels.append(word_tags[w])
                    else:
                        labels.append(cont[word_tags[w]] if d.label_subtokens == "all" else IGNORE)
                window_labels.append(labels + [IGNORE] * len(suffix))
            for w, j in enumerate(owners):
                picks.append((j, len(prefix) + first[w] - spans[j][0]))
            samples.append(_Sample(windows, window_labels, picks, word_tags))
            lengths.append(len(ids) + len(prefix) + len(suffix))
        if report is not None:
            note_lengths(report, split, lengths, self.model_cfg.max_length, what="sentences", cut=False,
                         handling=f"split into windows sharing {d.stride} tokens (none truncated)")
            if replaced:
                report.notes.append(f"{split}: {replaced} words have no sub-token in this tokenizer "
                                    "(zero-width or control characters): read as the unknown token")
        return samples

    def _prepare(self, sentences: list[Sentence], split: str, report: DataReport | None) -> _TokenDataset:
        samples = self._encode([s.tokens for s in sentences], [s.tags for s in sentences], report, split)
        return _TokenDataset(samples, sentences)

    def build_datasets(self) -> DataBundle:
        d = self.data_cfg
        report = DataReport(source=d.source)
        splits = self._read(assets.resolve(d.source), d.source, d.validation_source and assets.resolve(d.validation_source),
                            d.test_source and assets.resolve(d.test_source))
        where = {"train": d.source, "validation": d.validation_source or d.source, "test": d.test_source or d.source}
        if self.label_names is None:
            self.label_names = sort_tags(t for s in splits["train"] for t in s.tags)
            report.notes.append(f"tags not declared: using the {len(self.label_names)} seen in training data")
        splits = {s: self._clean(items, s, where[s], report) for s, items in splits.items()}
        splits = split_off(splits, val_size=d.val_size, test_size=d.test_size, seed=self.seed, report=report)
        splits = cap_splits(splits, max_samples=d.max_samples, max_eval_samples=d.max_eval_samples,
                            seed=self.seed, report=report)
        if d.drop_duplicates:
            splits = drop_overlap(splits, lambda items: [tuple(s.tokens) for s in items], report, "same words")
        require_rows(splits, where, report)
        for split, items in splits.items():
            report.label_counts[split] = self._entity_counts(items)
        prepared = {s: self._prepare(items, s, report) for s, items in splits.items()}
        return DataBundle(train=prepared["train"], validation=prepared["validation"], test=prepared.get("test"),
                          report=report, label_names=self.label_names, train_lengths=prepared["train"].lengths())

    @staticmethod
    def _entity_counts(sentences: list[Sentence]) -> dict[str, int]:
        from seqeval.metrics.sequence_labeling import get_entities

        counts: dict[str, int] = {}
        for s in sentences:
            for kind, _, _ in get_entities(list(s.tags)):
                counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items()))

    def load_eval_dataset(self, source: str, label_names: list[str] | None) -> tuple[Any, DataReport]:
        if label_names is not None:  # the trained model's tags, whatever the new file holds
            self.label_names = list(label_names)
        self.resolve_labels()
        report = DataReport(source=source)
        splits = self._read(assets.resolve(source), source)
        sentences = self._clean(splits.get("test", splits["train"]), "eval", source, report)
        if not sentences:
            raise DataError(f"{source}: no usable sentences after cleaning (dropped: {report.dropped.get('eval', {})})")
        report.label_counts["eval"] = self._entity_counts(sentences)
        return self._prepare(sentences, "eval", report), report

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """All windows of the batch's sentences, padded to the longest; ``labels`` holds each
        sentence's reference tag ids (one list per sentence, so its length is the sample count)."""
        pad = self.tokenizer.pad_token_id or 0
        windows = [w for s in samples for w in s["windows"]]
        width = max(len(w) for w in windows)
        ids = torch.full((len(windows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(windows), width), dtype=torch.long)
        token_labels = torch.full((len(windows), width), IGNORE, dtype=torch.long)
        row = 0
        pick_window, pick_pos = [], []
        for s in samples:
            for j, (w, lab) in enumerate(zip(s["windows"], s["window_labels"])):
                ids[row + j, :len(w)] = torch.tensor(w)
                mask[row + j, :len(w)] = 1
                token_labels[row + j, :len(lab)] = torch.tensor(lab)
            pick_window += [row + j for j, _ in s["picks"]]
            pick_pos += [p for _, p in s["picks"]]
            row += len(s["windows"])
        return {"labels": [s["tags"] for s in samples], "input_ids": ids, "attention_mask": mask,
                "token_labels": token_labels, "pick_window": torch.tensor(pick_window, dtype=torch.long),
                "pick_pos": torch.tensor(pick_pos, dtype=torch.long),
                "words": [len(s["picks"]) for s in samples], "index": torch.tensor([s["index"] for s in samples])}

    # ------------------------------------------------------------------ step
    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["token_labels"]
        # Summed over labelled sub-tokens; the trainer divides by the labelled tokens of the whole step.
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                               reduction="sum", label_smoothing=self.label_smoothing if train else 0.0)
        return {"loss_sum": loss, "num_items": int((labels != IGNORE).sum()), "outputs": logits}

    @staticmethod
    def _word_probs(batch: dict[str, Any], logits: torch.Tensor) -> list[torch.Tensor]:
        """Per sentence: a (words, tags) matrix of probabilities, each word read where it was picked."""
        probs = logits.detach().float()[batch["pick_window"], batch["pick_pos"]].softmax(-1).cpu()
        return list(probs.split(list(batch["words"])))

    def predict_batch(self, model, batch, outputs) -> tuple[list[Any], list[Any]]:
        preds = [p.argmax(-1).tolist() for p in self._word_probs(batch, outputs["outputs"])]
        return preds, [list(r) for r in batch["labels"]]

    def _names(self, rows: list[list[int]]) -> list[list[str]]:
        return [[self.label_names[i] for i in r] for r in rows]

    def metric_inputs(self, predictions: list[Any], references: list[Any]) -> tuple[list, list]:
        """Tag names per word, as seqeval takes them."""
        return self._names(predictions), self._names(references)

    def _seqeval_kwargs(self) -> dict[str, Any]:
        scheme = self.data_cfg.tag_scheme
        return {"mode": "strict", "scheme": scheme} if scheme else {}

    def per_type(self, predictions: list[Any], references: list[Any]) -> dict[str, dict[str, float]]:
        """seqeval's per-type precision / recall / F1 / support (types found in either side)."""
        import seqeval.scheme
        from seqeval.metrics import classification_report

        kw = self._seqeval_kwargs()
        if kw:
            kw["scheme"] = getattr(seqeval.scheme, kw["scheme"])
        with warnings.catch_warnings():  # numpy's "mean of empty slice" when a split has no entity at all
            warnings.simplefilter("ignore", RuntimeWarning)
            table = classification_report(self._names(references), self._names(predictions), output_dict=True,
                                          zero_division=0, **kw)
        return {k: v for k, v in table.items() if not k.endswith(" avg")}

    def compute_metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        preds, refs = self._names(predictions), self._names(references)
        kw = self._seqeval_kwargs()
        out = {f"entity_{k}": compute_metric(f"entity_{k}", preds, refs, **kw) for k in ("precision", "recall", "f1")}
        out["token_accuracy"] = compute_metric("token_accuracy", preds, refs)
        for kind, row in self.per_type(predictions, references).items():
            out[f"entity_f1_{kind}"] = float(row["f1-score"])
        return out

    def report_extras(self, out_dir: Path, split: str, predictions, references, dataset) -> list[str]:
        rows = ["| entity type | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for kind, r in sorted(self.per_type(predictions, references).items()):
            rows.append(f"| {kind} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1-score']:.3f} | {int(r['support'])} |")
        flat_refs = [t for r in references for t in r]
        flat_preds = [t for p in predictions for t in p]
        png = confusion_matrix_png(flat_refs, flat_preds, self.label_names, out_dir / f"tag_confusion_{split}.png",
                                   title=f"Tag confusion, per word ({split})")
        blocks = [f"Entities per type ({split}, seqeval):\n\n" + "\n".join(rows), f"![tag confusion matrix]({png.name})"]
        split_count = sum(1 for s in dataset.samples if len(s.windows) > 1)
        if split_count:
            blocks.append(f"{split_count} of {len(dataset)} {split} sentences were longer than model.max_length "
                          f"and were read in windows; their predictions were rejoined per word.")
        return blocks

    # ------------------------------------------------------------------ save / load / predict
    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        (Path(out_dir) / LABELS_FILE).write_text(json.dumps(
            {"label_names": self.label_names, "task": self.name}, indent=1))

    def restore(self, model_dir: Path) -> None:
        """The tag set and tokenizer from a folder written by save_pretrained."""
        from transformers import AutoTokenizer

        path = Path(model_dir) / LABELS_FILE
        if not path.is_file():
            raise OmnituneError(f"{model_dir}: no {LABELS_FILE} (not a token-classification model folder)")
        meta = json.loads(path.read_text())
        if meta.get("task", self.name) != self.name:
            raise OmnituneError(f"{model_dir}: saved by a {meta['task']!r} run, not {self.name!r}")
        self.label_names = meta["label_names"]
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._layout = None

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        from transformers import AutoModelForTokenClassification

        self.restore(model_dir)
        return AutoModelForTokenClassification.from_pretrained(model_dir).eval()

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        """Entity spans with character offsets into each raw text (words split on spaces and
        punctuation), with the mean tag probability of their words as the score."""
        from seqeval.metrics.sequence_labeling import get_entities

        model.eval()
        out = []
        for text in inputs:
            spans = [(m.start(), m.end()) for m in WORD_RE.finditer(text)]
            if not spans:
                out.append({"input": text, "entities": [], "words": [], "tags": []})
                continue
            words = [text[s:e] for s, e in spans]
            sample = self._encode([words], None, None, "predict")[0]
            batch = self.collate([{"windows": sample.windows, "window_labels": sample.window_labels,
                                   "picks": sample.picks, "tags": None, "index": 0}])
            device = next(model.parameters()).device
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits.float()
            probs = self._word_probs(batch, logits)[0]
            conf, ids = probs.max(-1)
            tags = [self.label_names[i] for i in ids.tolist()]
            entities = []
            for kind, a, b in get_entities(tags):
                start, end = spans[a][0], spans[b][1]
                entities.append({"type": kind, "text": text[start:end], "start": start, "end": end,
                                 "score": round(float(conf[a:b + 1].mean()), 4)})
            out.append({"input": text, "entities": entities, "words": words, "tags": tags})
        return out
