"""Data helpers every domain shares: reading tables, seeded stratified splits, batch order.

Batch order is a pure function of (seed, epoch), so a resumed run replays exactly the batches an
uninterrupted one would see: the checkpoint stores only the epoch and the position in it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


def table_suffix(path: Path) -> str:
    """The table format of a file name, ignoring a compression suffix (.gz, .bz2, .xz, .zip)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zip", ".zst"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def read_table(path: str | Path):
    """A CSV/TSV/JSON/JSONL/Parquet file (optionally compressed) as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    kind = table_suffix(path)
    try:
        if kind == ".csv":
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
        if kind == ".tsv":
            return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])
        if kind == ".jsonl":
            return pd.read_json(path, lines=True)
        if kind == ".json":
            try:
                return pd.read_json(path)
            except ValueError:
                return pd.read_json(path, lines=True)
        if kind == ".parquet":
            return pd.read_parquet(path)
    except DataError:
        raise
    except Exception as exc:  # pandas raises many types for malformed files
        raise DataError(f"{path}: cannot read as {kind.lstrip('.')} ({type(exc).__name__}: {exc})") from None
    raise DataError(f"{path}: unsupported file type (use one of {', '.join(TABLE_SUFFIXES)})")


def require_columns(df, columns: Sequence[str | None], where: str) -> None:
    missing = [c for c in columns if c is not None and c not in df.columns]
    if missing:
        raise DataError(f"{where}: no column {', '.join(map(repr, missing))} (columns: {', '.join(map(str, df.columns))})")


def stratified_split(
    labels: Sequence, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split indices 0..n-1 into len(fractions)+1 parts (the remainder first), stratified by label.

    Each class is shuffled with the seed and cut by the fractions, so every part keeps the class
    mix; unstratifiable (e.g. multi-label or continuous) labels may be passed as all-equal.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray([str(x) for x in labels])
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for cls in sorted(set(labels)):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        start = 0
        cuts = []
        for f in fractions:
            k = int(round(f * len(idx)))
            cuts.append(idx[start:start + k])
            start += k
        parts[0].extend(idx[start:])
        for i, c in enumerate(cuts):
            parts[i + 1].extend(c)
    return [np.sort(np.asarray(p, dtype=int)) for p in parts]


def stratified_subsample(labels: Sequence, n: int, seed: int) -> np.ndarray:
    """n indices keeping the class mix (seeded), or all when n >= len(labels)."""
    if n >= len(labels):
        return np.arange(len(labels))
    rest, keep = stratified_split(labels, [n / len(labels)], seed)
    return keep


class BatchOrder:
    """The micro-batches of one epoch, as lists of sample indices, from (seed, epoch) alone.

    With ``lengths``, samples are shuffled, cut into groups of ``group_size`` and sorted by length
    inside each group, so batches hold similar lengths (little padding) while the order stays
    random. ``group_size`` should be a multiple of the effective batch (batch x accumulation): then
    accumulating 2 x 4 sees exactly the samples of one batch of 8.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, lengths: Sequence[int] | None = None,
        group_size: int | None = None, shuffle: bool = True,
    ) -> None:
        if num_samples == 0:
            raise DataError("the training set is empty")
        self.n, self.batch_size, self.seed, self.shuffle = num_samples, batch_size, seed, shuffle
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_size = group_size or batch_size * 50

    def indices(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
        if self.lengths is not None:
            grouped = []
            for start in range(0, self.n, self.group_size):
                chunk = order[start:start + self.group_size]
                # Stable sort, longest first: the first batch is the largest, so memory
                # problems show up at once rather than late in the epoch.
                grouped.extend(sorted(chunk, key=lambda i: -self.lengths[i]))
            order = grouped
        return order

    def batches(self, epoch: int) -> list[list[int]]:
        order = self.indices(epoch)
        return [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
