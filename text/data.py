"""Text data: load tables (local files or the Hub), clean with a report, split, tokenise once.

Cleaning never drops silently: every removed row is counted in the DataReport by reason
(missing text, empty text, missing label, unknown label, exact duplicate), with a few examples.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from omnitune.core.data import SPLIT_ALIASES, is_hub, load_hub, read_table, require_columns
from omnitune.core.errors import DataError, OmnituneError
from omnitune.core.task import DataReport


def load_splits(source: str, validation_source: str | None, test_source: str | None) -> dict[str, Any]:
    """{"train": DataFrame, and "validation"/"test" where the source has them}."""
    if is_hub(source):
        return _load_hub(source)
    path = Path(source)
    if path.is_dir():
        return _load_folder(path)
    splits = {"train": read_table(path)}
    if validation_source:
        splits["validation"] = read_table(validation_source)
    if test_source:
        splits["test"] = read_table(test_source)
    return splits


def _load_folder(folder: Path) -> dict[str, Any]:
    """A folder with train.* and optionally validation.* / test.* tables (or dev.*, val.*...)."""
    found = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            matches = sorted(p for p in folder.glob(f"{alias}.*") if p.is_file())
            if matches:
                found[split] = read_table(matches[0])
                break
    if "train" not in found:
        raise DataError(f"{folder}: folder has no train.csv/.jsonl/.json/.parquet file")
    return found


def _load_hub(ref: str) -> dict[str, Any]:
    """``hub:glue/sst2`` -> the dataset's train/validation/test splits as DataFrames, class ids
    turned into their names."""
    out = {}
    for split, ds in load_hub(ref).items():
        if split not in SPLIT_ALIASES:
            continue
        frame = ds.to_pandas()
        # GLUE test splits carry label -1 (hidden): treat them as having no test labels.
        if "label" in frame and len(frame) and (frame["label"] == -1).all():
            continue
        names = ds.features.get("label")
        if names is not None and hasattr(names, "names"):
            frame["label"] = [names.names[i] for i in frame["label"]]
        out[split] = frame
    if "train" not in out:
        raise DataError(f"{ref}: the dataset has no train split (splits: {', '.join(out) or 'none'})")
    return out


def clean_frame(
    df, split: str, where: str, text_columns: list[str], label_column: str | None,
    labels: list[str] | None, unknown_labels: str, drop_duplicates: bool, multi_label_sep: str | None,
    report: DataReport,
):
    """Drop unusable rows, counting each reason in ``report``; returns the cleaned frame."""
    require_columns(df, [*text_columns, label_column], where)
    report.rows_read[split] = len(df)
    for col in text_columns:
        missing = df[col].isna()
        report.drop(split, f"missing text ({col})", int(missing.sum()), [f"row {i}" for i in df.index[missing][:5]])
        df = df[~missing]
        empty = df[col].astype(str).str.strip() == ""
        report.drop(split, f"empty text ({col})", int(empty.sum()), [f"row {i}" for i in df.index[empty][:5]])
        df = df[~empty]
    if label_column is not None:
        missing = df[label_column].isna()
        report.drop(split, "missing label", int(missing.sum()), [f"row {i}" for i in df.index[missing][:5]])
        df = df[~missing]
        if labels is not None:
            allowed = set(labels)
            if multi_label_sep is not None:
                bad = df[label_column].astype(str).map(
                    lambda v: any(x.strip() not in allowed for x in v.split(multi_label_sep) if x.strip()))
            else:
                bad = ~df[label_column].astype(str).isin(allowed)
            if bad.any():
                values = sorted(set(df.loc[bad, label_column].astype(str)))
                rows = [int(i) for i in df.index[bad][:5]]
                if unknown_labels == "error":
                    raise DataError(
                        f"{where}: {int(bad.sum())} rows have labels not in the declared set {labels}: "
                        f"{values[:5]} (first rows {rows}); set data.unknown_labels: drop to skip them")
                report.drop(split, "label not in declared set", int(bad.sum()), [f"{v!r}" for v in values])
                df = df[~bad]
    if drop_duplicates:
        key = text_columns + ([label_column] if label_column else [])
        dup = df.duplicated(subset=key, keep="first")
        report.drop(split, "exact duplicate", int(dup.sum()), [f"row {i}" for i in df.index[dup][:5]])
        df = df[~dup]
    report.rows_kept[split] = len(df)
    return df.reset_index(drop=True)


def load_tokenizer(name: str, path: str, revision: str | None):
    """The tokenizer of model ``name`` (resolved to ``path``), with a one-line error naming it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as exc:
        raise OmnituneError(f"model.name: cannot load tokenizer for {name!r} ({exc})") from None


def tokenize_cached(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int | None,
                    cache_key: str, add_special_tokens: bool = True, cache: bool = True) -> dict[str, list[list[int]]]:
    """Tokenise once; later runs with the same tokenizer, texts and max_length load the result.
    ``max_length`` None keeps whole texts (to measure them, or to cut them another way); ``cache``
    False neither reads nor writes the cache (raw inputs at prediction)."""
    h = hashlib.sha256()
    h.update(cache_key.encode())
    h.update(f"{max_length}|{add_special_tokens}".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    for t in pairs or []:
        h.update(t.encode())
        h.update(b"\1")
    cache_dir = Path(os.environ.get("OMNITUNE_CACHE", Path.home() / ".cache" / "omnitune")) / "tokenized"
    path = cache_dir / f"{h.hexdigest()[:32]}.json"
    if cache and path.exists():
        return json.loads(path.read_text())
    if max_length is None:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "longer than the model's maximum": measured, then cut by the caller
        try:
            enc = tokenizer(texts, pairs, truncation=False, add_special_tokens=add_special_tokens)
        finally:
            hf_logging.set_verbosity(verbosity)
    else:
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, add_special_tokens=add_special_tokens)
    keep = {k: [list(map(int, x)) for x in v] for k, v in enc.items() if k in ("input_ids", "token_type_ids")}
    if not cache:
        return keep
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(keep))
    os.replace(tmp, path)
    return keep


def label_counts(values) -> dict[str, int]:
    uniq, counts = np.unique(np.asarray([str(v) for v in values]), return_counts=True)
    return {str(u): int(c) for u, c in zip(uniq, counts)}


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


def prepared_splits(d, seed: int, report: DataReport, clean, overlap_key, overlap_reason: str) -> dict[str, Any]:
    """The text tasks' common data path, from a ``data`` section ``d``: read the source (and the
    optional validation/test sources), ``clean(frame, split, where, report)`` each split, make the
    missing splits (seeded), cap them, drop evaluation items whose ``overlap_key`` also occurs in
    training (with ``data.drop_duplicates``), and require rows in every split. Every drop is counted
    in ``report``."""
    from omnitune.core import assets
    from omnitune.core.data import cap_splits, drop_overlap, require_rows, split_off

    raw = load_splits(assets.resolve(d.source), d.validation_source and assets.resolve(d.validation_source),
                      d.test_source and assets.resolve(d.test_source))
    where = {"train": d.source, "validation": d.validation_source or d.source, "test": d.test_source or d.source}
    splits = {s: clean(df, s, where[s], report) for s, df in raw.items()}
    splits = split_off(splits, val_size=d.val_size, test_size=d.test_size, seed=seed, report=report)
    splits = cap_splits(splits, max_samples=d.max_samples, max_eval_samples=d.max_eval_samples, seed=seed,
                        report=report)
    if d.drop_duplicates:  # the same item on both sides would score memorisation
        splits = drop_overlap(splits, overlap_key, report, overlap_reason)
    require_rows(splits, where, report)
    return splits
