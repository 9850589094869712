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

from omnitune.core.base.data import SPLIT_ALIASES, is_hub, load_hub, read_table, require_columns
from omnitune.core.base.errors import DataError
from omnitune.core.base.task import DataReport

from .backbone import load_tokenizer, load_with_head  # noqa: F401  (their home moved: text/backbone.py)


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


def split_files(folder: Path, what: str = "train.csv/.jsonl/.json/.parquet file") -> dict[str, Path]:
    """A folder's train.* and optionally validation.* / test.* files (or dev.*, val.*...), by split;
    a folder without a train file is a one-line error naming it."""
    found = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            matches = sorted(p for p in folder.glob(f"{alias}.*") if p.is_file())
            if matches:
                found[split] = matches[0]
                break
    if "train" not in found:
        raise DataError(f"{folder}: folder has no {what}")
    return found


def _load_folder(folder: Path) -> dict[str, Any]:
    """A folder with train.* and optionally validation.* / test.* tables (or dev.*, val.*...)."""
    return {split: read_table(path) for split, path in split_files(folder).items()}


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


def unknown_labels_mask(values, allowed: set[str], multi_label_sep: str | None):
    """True where a label cell (a pandas Series) holds a value outside ``allowed``; a multi-label
    cell is split on ``multi_label_sep`` and fails when any of its labels does."""
    if multi_label_sep is not None:
        return values.astype(str).map(
            lambda v: any(x.strip() not in allowed for x in v.split(multi_label_sep) if x.strip()))
    return ~values.astype(str).isin(allowed)


def drop_missing(df, text_columns: list[str], label_column: str | None, drop):
    """``df`` without rows whose text is missing or blank or whose label is missing; each reason is
    passed to ``drop(reason, count, examples)`` (also when the count is 0)."""
    for col in text_columns:
        missing = df[col].isna()
        drop(f"missing text ({col})", int(missing.sum()), [f"row {i}" for i in df.index[missing][:5]])
        df = df[~missing]
        empty = df[col].astype(str).str.strip() == ""
        drop(f"empty text ({col})", int(empty.sum()), [f"row {i}" for i in df.index[empty][:5]])
        df = df[~empty]
    if label_column is not None:
        missing = df[label_column].isna()
        drop("missing label", int(missing.sum()), [f"row {i}" for i in df.index[missing][:5]])
        df = df[~missing]
    return df


def clean_frame(
    df, split: str, where: str, text_columns: list[str], label_column: str | None,
    labels: list[str] | None, unknown_labels: str, drop_duplicates: bool, multi_label_sep: str | None,
    report: DataReport,
):
    """Drop unusable rows, counting each reason in ``report``; returns the cleaned frame."""
    require_columns(df, [*text_columns, label_column], where)
    report.rows_read[split] = len(df)
    df = drop_missing(df, text_columns, label_column, lambda *a: report.drop(split, *a))
    if label_column is not None and labels is not None:
        bad = unknown_labels_mask(df[label_column], set(labels), multi_label_sep)
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


def prepared_splits(*args, **kwargs) -> dict[str, Any]:
    """Moved to :func:`omnitune.text.pipeline.prepared_splits` (this name stays for old imports)."""
    from .pipeline import prepared_splits as moved

    return moved(*args, **kwargs)


# ----------------------------------------------------------------------------- data.storage: disk
# Rows stay in Arrow IPC files under the cache folder, memory-mapped: the process maps the file and
# the OS pages rows in on demand, so RSS does not grow with the data. The files are keyed by a
# content hash (of the source bytes and the cleaning settings; of the texts and the tokenisation
# settings), written to a temporary name and renamed, so a run killed mid-write leaves nothing that a
# later run would reuse. The memory path (pandas frames, token lists) stays as it was; both give the
# same rows in the same order, hence the same batches and losses.
CHUNK_ROWS = 20_000  # rows per pandas chunk while reading and cleaning: ~10 MB of short texts
KEY_COLUMN, DUP_COLUMN, ROW_COLUMN = "_key", "_dup", "_row"


def cache_root() -> Path:
    return Path(os.environ.get("OMNITUNE_CACHE", Path.home() / ".cache" / "omnitune"))


def _open_arrow(path: Path):
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _write_arrow(path: Path, batches, schema=None) -> None:
    """Record batches (an iterator of pyarrow tables/batches) into ``path`` atomically."""
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    writer = None
    try:
        for batch in batches:
            if writer is None:
                writer = pa.ipc.new_file(str(tmp), schema or batch.schema)
            writer.write(batch)
        if writer is None:  # no rows at all: an empty file with the schema
            writer = pa.ipc.new_file(str(tmp), schema)
        writer.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _row_hashes(frame, columns: list[str]) -> np.ndarray:
    """A 64-bit hash per row of ``columns`` (as text): duplicates and train/eval overlap are found on
    these, in numpy, instead of in a Python set of every text."""
    import pandas as pd

    return pd.util.hash_pandas_object(frame[columns].astype(str), index=False).to_numpy(np.uint64)


class DiskRows:
    """The cleaned rows of one split, kept on disk: a memory-mapped Arrow file and the positions of
    this split's rows in it. The core's split/cap/overlap helpers take it like a DataFrame (through
    ``subset``); columns are read for the rows of the split only when asked."""

    def __init__(self, path: Path, positions: np.ndarray) -> None:
        self.path, self.positions = Path(path), np.asarray(positions, dtype=np.int64)
        self._table = None

    @property
    def table(self):
        if self._table is None:
            self._table = _open_arrow(self.path)
        return self._table

    def __getstate__(self):  # DataLoader workers re-map the file
        return {"path": self.path, "positions": self.positions, "_table": None}

    def __len__(self) -> int:
        return len(self.positions)

    def subset(self, index) -> "DiskRows":
        return DiskRows(self.path, self.positions[np.asarray(index, dtype=np.int64)])

    def column(self, name: str, start: int = 0, stop: int | None = None) -> list:
        """The values of column ``name`` for rows ``start:stop`` of this split, as Python objects."""
        return self.table.column(name).take(self.positions[start:stop]).to_pylist()

    def array(self, name: str) -> np.ndarray:
        return self.table.column(name).take(self.positions).to_numpy()

    def chunks(self, name: str, size: int = 2_000):
        for start in range(0, len(self), size):
            yield self.column(name, start, start + size)


def iter_sources(source: str, validation_source: str | None, test_source: str | None) -> dict[str, Any]:
    """:func:`load_splits` for flat memory: ``{split: function returning an iterator of pandas
    chunks}`` (row numbers running on across chunks), read again on each call."""
    from omnitune.core.base.data import iter_table

    if is_hub(source):
        return _iter_hub(source)
    path = Path(source)
    if path.is_dir():
        found = split_files(path)
    else:
        found = {"train": path, "validation": validation_source, "test": test_source}
    return {s: (lambda p=p: iter_table(p, CHUNK_ROWS, as_text=True)) for s, p in found.items() if p}


def _iter_hub(ref: str) -> dict[str, Any]:
    import pandas as pd

    out = {}
    for split, ds in load_hub(ref).items():
        if split not in SPLIT_ALIASES:
            continue
        if "label" in ds.column_names and len(ds) and ds.unique("label") == [-1]:
            continue  # GLUE's hidden test labels, as in _load_hub
        names = ds.features.get("label")

        def chunks(ds=ds, names=names):
            start = 0
            for frame in ds.to_pandas(batch_size=CHUNK_ROWS, batched=True):
                frame.index = pd.RangeIndex(start, start + len(frame))
                start += len(frame)
                if names is not None and hasattr(names, "names"):
                    frame["label"] = [names.names[i] for i in frame["label"]]
                yield frame
        out[split] = chunks
    if "train" not in out:
        raise DataError(f"{ref}: the dataset has no train split (splits: {', '.join(out) or 'none'})")
    return out


def source_digest(source: str, validation_source: str | None, test_source: str | None) -> str:
    """A content hash of the local source files (a ``hub:`` source: datasets' own fingerprints)."""
    h = hashlib.sha256()
    for src in (source, validation_source, test_source):
        if not src:
            continue
        h.update(f"|{Path(src).name if not is_hub(src) else src}|".encode())
        if is_hub(src):
            for split, ds in sorted(load_hub(src).items()):
                h.update(f"{split}:{ds._fingerprint}".encode())
            continue
        path = Path(src)
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(f"{f.relative_to(path) if path.is_dir() else ''}\0".encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def labels_seen_streamed(chunks, label_column: str, sep: str | None) -> list[str]:
    """The sorted labels of a split read in chunks (the classification task's ``_labels_seen``)."""
    seen: set[str] = set()
    for df in chunks():
        if label_column not in df:
            return []
        values = df[label_column].dropna()
        if sep is not None:
            seen.update(x.strip() for v in values for x in str(v).split(sep))
        else:
            seen.update(str(v) for v in values)
    return sorted(v for v in seen if v.strip())


class _Drops:
    """Drops counted across chunks, given to the report at the end in :func:`clean_frame`'s order
    with the same examples (first rows in file order), so the report reads the same either way."""

    def __init__(self, reasons: list[str]) -> None:
        self.counts = {r: 0 for r in reasons}
        self.examples: dict[str, list[str]] = {r: [] for r in reasons}

    def add(self, reason: str, count: int, examples) -> None:
        self.counts[reason] += count
        self.examples[reason].extend(list(examples)[: max(0, 5 - len(self.examples[reason]))])

    def to_report(self, report: DataReport, split: str) -> None:
        for reason, count in self.counts.items():
            report.drop(split, reason, count, self.examples[reason])


def clean_to_disk(chunks, split: str, where: str, text_columns: list[str], label_column: str | None,
                  labels: list[str] | None, unknown_labels: str, drop_duplicates: bool,
                  multi_label_sep: str | None, report: DataReport, settings: str) -> DiskRows:
    """:func:`clean_frame` in flat memory: the chunks are cleaned one at a time (the same checks in
    the same order), their kept rows written to an Arrow file in the cache folder, and exact
    duplicates found at the end on 64-bit row hashes (8 bytes a row held in RAM, not the texts).
    ``settings`` (the source's content hash and the cleaning settings) keys the file: a later run with
    the same source and settings maps it and reads the counts back instead of reading the source."""
    import pyarrow as pa

    key = hashlib.sha256(json.dumps([settings, split, text_columns, label_column, labels, unknown_labels,
                                     drop_duplicates, multi_label_sep]).encode()).hexdigest()[:32]
    folder = cache_root() / "tables"
    path, meta_path = folder / f"{key}.arrow", folder / f"{key}.json"
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        meta = _clean_chunks(chunks, where, text_columns, label_column, labels, unknown_labels,
                             multi_label_sep, path)
        tmp = meta_path.with_name(f"{meta_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)  # after the table: a meta file means a complete table
    drops = _Drops([*meta["counts"], "exact duplicate"])
    for reason, count in meta["counts"].items():
        drops.add(reason, count, meta["examples"][reason])
    report.rows_read[split] = meta["rows_read"]
    rows = DiskRows(path, np.arange(meta["rows_written"], dtype=np.int64))
    if drop_duplicates and len(rows):
        hashes = rows.array(DUP_COLUMN)
        first = np.zeros(len(hashes), dtype=bool)
        first[np.unique(hashes, return_index=True)[1]] = True
        dup = np.flatnonzero(~first)
        drops.add("exact duplicate", len(dup), [f"row {i}" for i in rows.subset(dup[:5]).column(ROW_COLUMN)])
        rows = rows.subset(np.flatnonzero(first))
    drops.to_report(report, split)
    report.rows_kept[split] = len(rows)
    return rows


def _clean_chunks(chunks, where, text_columns, label_column, labels, unknown_labels, multi_label_sep,
                  path: Path) -> dict:
    import pyarrow as pa

    from omnitune.core.base.data import require_columns

    reasons = [r for c in text_columns for r in (f"missing text ({c})", f"empty text ({c})")]
    if label_column is not None:
        reasons += ["missing label", "label not in declared set"]
    reasons.append("exact duplicate")
    drops = _Drops(reasons)
    state = {"rows_read": 0, "rows_written": 0, "bad": 0, "bad_values": set(), "bad_rows": []}
    allowed = set(labels) if labels is not None else None
    columns = text_columns + ([label_column] if label_column else [])

    def batches():
        for df in chunks():
            require_columns(df, columns, where)
            state["rows_read"] += len(df)
            df = drop_missing(df, text_columns, label_column, drops.add)
            if label_column is not None and allowed is not None:
                bad = unknown_labels_mask(df[label_column], allowed, multi_label_sep)
                if bad.any():
                    state["bad"] += int(bad.sum())
                    state["bad_values"].update(df.loc[bad, label_column].astype(str))
                    state["bad_rows"].extend(int(i) for i in df.index[bad][:5 - len(state["bad_rows"])])
                    if unknown_labels != "error":
                        df = df[~bad]
            if state["bad"] and unknown_labels == "error":
                continue  # counted to the end of the file, so the error names every bad label
            out = {c: df[c].astype(str).tolist() for c in columns}
            out[KEY_COLUMN] = _row_hashes(df, text_columns)
            out[DUP_COLUMN] = _row_hashes(df, columns)
            out[ROW_COLUMN] = df.index.to_numpy(np.int64)
            state["rows_written"] += len(df)
            yield pa.table(out)

    schema = pa.schema([*(pa.field(c, pa.string()) for c in columns), pa.field(KEY_COLUMN, pa.uint64()),
                        pa.field(DUP_COLUMN, pa.uint64()), pa.field(ROW_COLUMN, pa.int64())])
    _write_arrow(path, (t.cast(schema) for t in batches()), schema)
    if state["bad"]:
        if unknown_labels == "error":
            path.unlink(missing_ok=True)
            values = sorted(state["bad_values"])
            raise DataError(
                f"{where}: {state['bad']} rows have labels not in the declared set {labels}: "
                f"{values[:5]} (first rows {state['bad_rows']}); set data.unknown_labels: drop to skip them")
        drops.add("label not in declared set", state["bad"], [f"{v!r}" for v in sorted(state["bad_values"])])
    return {"rows_read": state["rows_read"], "rows_written": state["rows_written"],
            "counts": {r: c for r, c in drops.counts.items() if r != "exact duplicate"},
            "examples": {r: e for r, e in drops.examples.items() if r != "exact duplicate"}}


class DiskTextDataset:
    """Encoded texts kept on disk (a memory-mapped Arrow file with ``input_ids``, optional
    ``token_type_ids``, ``labels``, ``text`` and ``length`` columns): ``__getitem__`` reads one row, so
    the dataset's RSS does not grow with its size. Items match the in-memory dataset's."""

    def __init__(self, path: Path, chunked: bool = False) -> None:
        self.path, self.chunked, self._table, self._readers = Path(path), chunked, None, None

    @property
    def table(self):
        if self._table is None:
            self._table = _open_arrow(self.path)
        return self._table

    def __getstate__(self):
        return {"path": self.path, "chunked": self.chunked, "_table": None, "_readers": None}

    def __len__(self) -> int:
        return self.table.num_rows

    def _reader(self):
        """(first row of each record batch, {column: per-batch readers}): a row is found by a binary
        search over the batches and read from numpy views of the mapped buffers (pyarrow's own
        ``column[i]`` walks the chunks and builds a scalar, ~20x slower per item)."""
        if self._readers is None:
            import pyarrow as pa

            t = self.table
            names = [k for k in ("input_ids", "token_type_ids", "labels") if k in t.column_names]
            starts = np.cumsum([0] + [len(c) for c in t.column(names[0]).chunks])
            readers = {}
            for k in names:
                parts = []
                for chunk in t.column(k).chunks:
                    if pa.types.is_list(chunk.type) and not pa.types.is_list(chunk.type.value_type):
                        parts.append((chunk.offsets.to_numpy(), chunk.values.to_numpy()))
                    elif pa.types.is_list(chunk.type) or chunk.null_count:
                        parts.append(chunk)  # windows (lists of lists): pyarrow's scalar, within one batch
                    else:
                        parts.append(chunk.to_numpy())
                readers[k] = parts
            self._readers = (starts, readers)
        return self._readers

    def __getitem__(self, i: int) -> dict[str, Any]:
        starts, readers = self._reader()
        j = int(np.searchsorted(starts, i, side="right")) - 1
        r = i - int(starts[j])
        item = {}
        for k, parts in readers.items():
            part = parts[j]
            if isinstance(part, tuple):
                offsets, values = part
                item[k] = values[offsets[r]:offsets[r + 1]].tolist()
            elif isinstance(part, np.ndarray):
                item[k] = part[r].item()
            else:
                item[k] = part[r].as_py()
        item["index"] = i
        return item

    def lengths(self) -> np.ndarray:
        return self.table.column("length").to_numpy()

    @property
    def texts(self) -> "_ColumnView":
        return _ColumnView(self, "text")

    @property
    def labels(self) -> "_ColumnView":
        return _ColumnView(self, "labels")


class _ColumnView:
    """``dataset.texts[i]`` / ``dataset.labels[i]`` of a disk dataset, one row read at a time."""

    def __init__(self, dataset: DiskTextDataset, column: str) -> None:
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset.table.column(self.column)[i].as_py()


def tokens_to_disk(batches, key: str) -> Path:
    """The Arrow file of encoded rows keyed by ``key`` (a hash of the texts, labels and every
    tokenisation setting) in the cache folder; ``batches()`` (pyarrow tables) is only read when the
    file is not there yet."""
    path = cache_root() / "tokenized" / f"{key}.arrow"
    if not path.exists():
        _write_arrow(path, batches())
    return path
