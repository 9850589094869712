"""The text tasks' data pipeline: read the source (and the optional validation/test sources), clean
each split with a report, make the missing splits, cap them, drop train/eval overlap, require rows;
then tokenise. Every text task that reads tables goes through :func:`prepared_splits`.

``data.storage`` picks where the rows live (:func:`storage`): ``memory`` (pandas frames, token
lists) or ``disk`` (chunked cleaning into memory-mapped Arrow files, token ids in Arrow, read row by
row: text/data.py's disk section). ``auto`` is disk above core.data.AUTO_DISK_BYTES of source files.
Both give the same rows in the same order, the same report, batches and losses. A task whose rows
cannot live in table columns (conversations, tagged sentences, QA examples, preference pairs) does
not declare the field, so the recipe schema refuses ``data.storage`` there with one line.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from omnitune.core.base import assets
from omnitune.core.base.data import (cap_splits, choose_storage, drop_overlap, require_rows, source_bytes,
                                     split_off)
from omnitune.core.base.task import DataReport

from . import data as tdata


def source_paths(d) -> list[str | None]:
    """The resolved source, validation and test sources of a ``data`` section (None where unset)."""
    return [d.source and assets.resolve(d.source), d.validation_source and assets.resolve(d.validation_source),
            d.test_source and assets.resolve(d.test_source)]


def where_of(d) -> dict[str, str]:
    """The source each split is read from, as the recipe names it (for error messages)."""
    return {"train": d.source, "validation": d.validation_source or d.source, "test": d.test_source or d.source}


def storage(d, report: DataReport | None = None) -> str:
    """``memory`` or ``disk`` for a ``data`` section with a ``storage`` field: ``auto`` decided by
    the size of the source files (noted in ``report`` when given)."""
    nbytes = source_bytes(source_paths(d)) if d.storage == "auto" else 0
    return choose_storage(d.storage, nbytes, report)


def prepared_splits(d, seed: int, report: DataReport, clean, overlap_key, overlap_reason: str, *,
                    disk_columns: list[str] | None = None) -> dict[str, Any]:
    """The text tasks' common data path, from a ``data`` section ``d``: read the source (and the
    optional validation/test sources), ``clean(frame, split, where, report)`` each split, make the
    missing splits (seeded), cap them, drop evaluation items whose ``overlap_key`` also occurs in
    training (with ``data.drop_duplicates``), and require rows in every split. Every drop is counted
    in ``report``.

    ``disk_columns``: the text columns a task reads, for a section with ``data.storage``; when the
    storage is disk, each split is cleaned in chunks into an Arrow file (missing/blank texts and
    exact duplicates dropped and counted as ``clean`` does) and the splits are
    :class:`~omnitune.text.data.DiskRows`; overlap is found on 64-bit hashes of those columns."""
    where = where_of(d)
    if disk_columns is not None and storage(d, report) == "disk":
        paths = source_paths(d)
        digest = tdata.source_digest(*paths)
        splits = {s: tdata.clean_to_disk(chunks, s, where[s], disk_columns, None, None, d.unknown_labels,
                                         d.drop_duplicates, None, report, digest)
                  for s, chunks in tdata.iter_sources(*paths).items()}
        overlap_key = lambda rows: rows.array(tdata.KEY_COLUMN)  # noqa: E731
        describe = lambda rows, i: str(tuple(rows.column(c, i, i + 1)[0] for c in disk_columns))  # noqa: E731
    else:
        raw = tdata.load_splits(*source_paths(d))
        splits = {s: clean(df, s, where[s], report) for s, df in raw.items()}
        describe = None
    splits = split_off(splits, val_size=d.val_size, test_size=d.test_size, seed=seed, report=report)
    splits = cap_splits(splits, max_samples=d.max_samples, max_eval_samples=d.max_eval_samples, seed=seed,
                        report=report)
    if d.drop_duplicates:  # the same item on both sides would score memorisation
        splits = drop_overlap(splits, overlap_key, report, overlap_reason, describe)
    require_rows(splits, where, report)
    return splits


def columns_of(rows, columns: list[str], start: int = 0, stop: int | None = None) -> list[list[str]]:
    """The values (as text) of ``columns`` for rows ``start:stop`` of a split: a DataFrame in memory,
    :class:`~omnitune.text.data.DiskRows` on disk."""
    if isinstance(rows, tdata.DiskRows):
        return [rows.column(c, start, stop) for c in columns]
    return [rows[c].iloc[start:stop].astype(str).tolist() for c in columns]


def encode_to_disk(rows: "tdata.DiskRows", columns: list[str], settings: list, encode: Callable,
                   chunk: int = 2_000, chunked: bool = False) -> "tdata.DiskTextDataset":
    """Token ids of the rows on disk, ``chunk`` rows at a time, into an Arrow file in the cache folder
    (reused by a later run): ``encode(*column_values)`` returns a dict of equal-length lists (e.g.
    ``input_ids``, ``labels``, ``text``, ``length``) for one chunk. The file is keyed by a hash of
    ``settings`` (every tokenisation setting) and the values of ``columns``. ``chunked``: each row's
    ``input_ids`` are a list of windows (long texts read in chunks)."""
    import pyarrow as pa

    h = hashlib.sha256(json.dumps(settings).encode())
    for col in columns:
        for values in rows.chunks(col):
            for v in values:
                h.update(v.encode())
                h.update(b"\0")
        h.update(b"\1")

    def batches():
        for start in range(0, len(rows), chunk):
            yield pa.table(encode(*columns_of(rows, columns, start, start + chunk)))

    return tdata.DiskTextDataset(tdata.tokens_to_disk(batches, h.hexdigest()[:32]), chunked=chunked)
