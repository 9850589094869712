"""Data helpers every domain shares: reading tables, ``hub:`` references and split names, seeded
splits and subsets, the checks every task runs on its splits, batch order.

Every domain keeps its splits in its own container (a pandas DataFrame of rows, a list of
utterances, vision's Records); the helpers here take one via :func:`take` and work on indices, so a
split, a cap or a drop means the same thing in every domain and is counted in the same report.

Batch order is a pure function of (seed, epoch), so a resumed run replays exactly the batches an
uninterrupted one would see: the checkpoint stores only the epoch and the position in it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Literal, Mapping, Sequence

import numpy as np

from ..base.errors import DataError

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


def iter_table(path: str | Path, chunk_rows: int = 20_000, as_text: bool = False) -> Iterator[Any]:
    """:func:`read_table`'s file as pandas DataFrames of at most ``chunk_rows`` rows, numbered on
    from one chunk to the next (a row keeps the index it has in the whole table), so a file larger
    than memory is read in flat memory. ``as_text`` reads CSV/TSV cells as strings (empty cells
    missing): per-chunk type inference could read one column as int in a chunk and float in the
    next. A .json file (one array or object) cannot be streamed and is read whole; use .jsonl."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    kind = table_suffix(path)
    if kind not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type (use one of {', '.join(TABLE_SUFFIXES)})")
    try:
        if kind in (".csv", ".tsv"):
            yield from pd.read_csv(path, sep="\t" if kind == ".tsv" else ",", keep_default_na=False, na_values=[""],
                                   chunksize=chunk_rows, dtype=str if as_text else None)
        elif kind == ".parquet":
            import pyarrow.parquet as pq

            start = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                frame = batch.to_pandas()
                frame.index = pd.RangeIndex(start, start + len(frame))
                start += len(frame)
                yield frame
        elif kind == ".jsonl":
            yield from pd.read_json(path, lines=True, chunksize=chunk_rows)
        else:
            yield read_table(path)
    except DataError:
        raise
    except Exception as exc:  # pandas raises many types for malformed files
        raise DataError(f"{path}: cannot read as {kind.lstrip('.')} ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------- storage (memory / disk)
# data.storage in every domain: memory holds the splits in RAM; disk keeps rows in memory-mapped
# files under the cache folder and reads them on demand (flat RSS as the data grows); auto picks
# disk above AUTO_DISK_BYTES of source files. Disk and memory give the same samples in the same order.
Storage = Literal["memory", "disk", "auto"]
# Below this the whole source fits comfortably in RAM next to a model, and memory skips the disk pass.
AUTO_DISK_BYTES = 256 * 2**20


def source_bytes(paths: Sequence[str | Path | None]) -> int:
    """Bytes of the local files (or every file under the folders) in ``paths``; a ``hub:`` source or a
    missing path counts 0 (its size is not known before it is read)."""
    total = 0
    for p in paths:
        if not p or is_hub(str(p)):
            continue
        path = Path(p)
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return total


def choose_storage(storage: str, nbytes: int, report=None, threshold: int = AUTO_DISK_BYTES) -> str:
    """``memory`` or ``disk`` for ``data.storage``: ``auto`` is disk when the source holds more than
    ``threshold`` bytes. The choice goes into ``report``'s notes (and so metrics.json).

    >>> choose_storage("auto", 10 * 2**20), choose_storage("auto", 2**30), choose_storage("disk", 0)
    ('memory', 'disk', 'disk')
    """
    chosen = storage if storage != "auto" else ("disk" if nbytes > threshold else "memory")
    if report is not None:
        why = (f" (source {nbytes / 2**20:.1f} MiB, threshold {threshold / 2**20:.0f} MiB)"
               if storage == "auto" else "")
        report.notes.append(f"data.storage {storage}: {chosen}{why}")
    return chosen


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


def group_split(groups: Sequence, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Like :func:`stratified_split`, but whole groups (speakers, patients, documents) go to one
    part: no group value is in two parts. Groups are shuffled with the seed and given to each
    fractional part until it holds at least ``round(fraction * n)`` items (at least one group
    while more than one is left), the rest to the remainder (first part).

    >>> [p.tolist() for p in group_split(["a", "a", "b", "c", "c", "c"], [0.3], seed=0)]
    [[0, 1, 2], [3, 4, 5]]
    """
    rng = np.random.default_rng(seed)
    keys = np.asarray([str(g) for g in groups])
    order = list(rng.permutation(sorted(set(keys.tolist()))))
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for i, f in enumerate(fractions):
        want = int(round(f * len(keys)))
        while order and len(order) > 1 and want > 0 and len(parts[i + 1]) < want:
            parts[i + 1].extend(np.flatnonzero(keys == order.pop(0)).tolist())
    for g in order:
        parts[0].extend(np.flatnonzero(keys == g).tolist())
    return [np.sort(np.asarray(p, dtype=int)) for p in parts]


def stratified_subsample(labels: Sequence, n: int, seed: int) -> np.ndarray:
    """n indices keeping the class mix (seeded), or all when n >= len(labels)."""
    if n >= len(labels):
        return np.arange(len(labels))
    rest, keep = stratified_split(labels, [n / len(labels)], seed)
    return keep


# ----------------------------------------------------------------------------- split names, hub: sources
# What sources call their splits -> the name omnitune uses. Any other name a source gives a split
# (LibriSpeech's "train.100") is kept as it is.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test",),
}
HUB_PREFIX = "hub:"


def canonical_split(name: str) -> str:
    """``"dev"`` -> ``"validation"``; a name outside :data:`SPLIT_ALIASES` is returned unchanged."""
    for split, aliases in SPLIT_ALIASES.items():
        if name.lower() in aliases:
            return split
    return name


def canonical_splits(found: Mapping[str, Any]) -> dict[str, Any]:
    """``found`` keyed by canonical split names. Where a source has two names for one split (``dev``
    and ``validation``), the one listed first in :data:`SPLIT_ALIASES` wins.

    >>> list(canonical_splits({"dev": 1, "train": 2, "train.100": 3}))
    ['train', 'validation', 'train.100']
    """
    out: dict[str, Any] = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            match = next((k for k in found if k.lower() == alias), None)
            if match is not None:
                out[split] = found[match]
                break
    for name, value in found.items():
        if canonical_split(name) == name and name not in out:
            out[name] = value
    return out


@dataclass(frozen=True)
class HubRef:
    """A ``hub:NAME[/CONFIG][:SPLIT]`` data source: a Hugging Face dataset (or a local dataset
    folder), optionally one split in datasets' slicing syntax (``train[:2000]``, ``train.100``).

    >>> parse_hub("hub:glue/sst2:validation[:100]")
    HubRef(spec='glue/sst2', split='validation[:100]')
    >>> parse_hub("hub:glue/sst2").candidates()
    [('glue', 'sst2'), ('glue/sst2', None)]
    """

    spec: str  # NAME[/CONFIG] as written
    split: str | None = None

    @property
    def ref(self) -> str:
        return f"{HUB_PREFIX}{self.spec}" + (f":{self.split}" if self.split else "")

    def candidates(self) -> list[tuple[str, str | None]]:
        """(dataset, config) readings of ``spec`` to try in order. ``a/b`` is dataset ``a`` with
        config ``b`` or the dataset ``owner/name`` (both are common); ``owner/name/config`` has a
        config; a local folder or a single name has none."""
        parts = self.spec.split("/")
        if Path(self.spec).exists() or len(parts) == 1:
            return [(self.spec, None)]
        if len(parts) == 2:
            return [(parts[0], parts[1]), (self.spec, None)]
        if len(parts) == 3:
            return [("/".join(parts[:2]), parts[2])]
        return [(self.spec, None)]


def is_hub(source: str) -> bool:
    return source.startswith(HUB_PREFIX)


def parse_hub(ref: str) -> HubRef:
    """``hub:NAME[/CONFIG][:SPLIT]`` -> :class:`HubRef` (dataset names never contain ``:``)."""
    if not is_hub(ref):
        raise DataError(f"{ref}: not a hub: source (expected hub:NAME[/CONFIG][:SPLIT])")
    spec, _, split = ref[len(HUB_PREFIX):].partition(":")
    if not spec:
        raise DataError(f"{ref}: no dataset name (expected hub:NAME[/CONFIG][:SPLIT])")
    return HubRef(spec, split or None)


def load_hub(ref: str | HubRef, split: str | None = None) -> dict[str, Any]:
    """A Hub dataset's splits as ``{split name: datasets.Dataset}`` with canonical names. With a
    split (in ``ref`` or here) only that one is read, which large corpora need, and it is keyed by
    its name without the slice (``"train[:2000]"`` -> ``"train"``)."""
    import datasets

    hub = parse_hub(ref) if isinstance(ref, str) else ref
    split = split or hub.split
    errors = []
    for name, config in hub.candidates():
        try:
            ds = datasets.load_dataset(name, config, split=split)
            break
        except Exception as exc:  # datasets raises many types (not found, no such config, offline)
            first_line = (str(exc).strip().splitlines() or [""])[0]
            errors.append(f"{name}{'/' + config if config else ''}: {type(exc).__name__}: {first_line}")
    else:
        raise DataError(f"{hub.ref}: cannot load dataset ({'; '.join(errors)})")
    found = {split.split("[")[0]: ds} if isinstance(ds, datasets.Dataset) else dict(ds)
    return canonical_splits(found)


# ----------------------------------------------------------------------------- splitting, subsets, checks
def take(items: Any, index: Sequence[int]) -> Any:
    """The items at ``index`` of one split, whatever holds them: a pandas DataFrame (rows,
    renumbered), an object with ``subset(indices)`` (vision's Records) or a list."""
    idx = [int(i) for i in index]
    if hasattr(items, "iloc"):
        return items.iloc[idx].reset_index(drop=True)
    if hasattr(items, "subset"):
        return items.subset(idx)
    return [items[i] for i in idx]


def _label_keys(items: Any, labels: Callable[[Any], Sequence] | None) -> list:
    # Unstratified: one class for all, so the same seeded code path cuts at the same sizes.
    return list(labels(items)) if labels is not None else ["all"] * len(items)


def split_off(splits: dict[str, Any], *, val_size: float, test_size: float, seed: int, report,
              labels: Callable[[Any], Sequence] | None = None,
              make: Sequence[str] = ("validation", "test"),
              groups: Callable[[Any], Sequence] | None = None) -> dict[str, Any]:
    """Make the splits of ``make`` the source lacks from its training split: a seeded split,
    stratified by ``labels(items)`` when given (single-label classification), or grouped by
    ``groups(items)`` (no group in two splits: :func:`group_split`), noted in ``report``."""
    need = [s for s in make if s not in splits]
    if not need:
        return dict(splits)
    train = splits["train"]
    fractions = [val_size if s == "validation" else test_size for s in need]
    parts = (group_split(groups(train), fractions, seed) if groups is not None
             else stratified_split(_label_keys(train, labels), fractions, seed))
    out = dict(splits)
    out["train"] = take(train, parts[0])
    for split, idx in zip(need, parts[1:]):
        out[split] = take(train, idx)
    report.notes.append(
        f"source has no {' / '.join(need)} split: made by a seeded (seed {seed}) "
        f"{'grouped ' if groups is not None else 'stratified ' if labels is not None else ''}split of the training data "
        f"({', '.join(f'{s} {f:.0%}' for s, f in zip(need, fractions))})")
    return out


def cap_splits(splits: dict[str, Any], *, max_samples: int | None, max_eval_samples: int | None, seed: int,
               report, labels: Callable[[Any], Sequence] | None = None) -> dict[str, Any]:
    """At most ``max_samples`` training and ``max_eval_samples`` validation/test items: a seeded
    subset (stratified by ``labels`` when given), noted in ``report``."""
    out = dict(splits)
    for split, items in splits.items():
        n = max_samples if split == "train" else max_eval_samples
        if n is None or len(items) <= n:
            continue
        out[split] = take(items, stratified_subsample(_label_keys(items, labels), n, seed))
        report.notes.append(f"{split}: {'stratified ' if labels is not None else ''}subset of {n} of "
                            f"{len(items)} items (seed {seed})")
    return out


def drop_overlap(splits: dict[str, Any], keys: Callable[[Any], Sequence[Hashable]], report,
                 what: str, describe: Callable[[Any, int], str] | None = None) -> dict[str, Any]:
    """Drop validation/test items that are exact duplicates of a training item (equal ``keys``)
    and count them in ``report`` as "also in train (what)": a model scored on items it trained on
    looks better than it is. Run it after the caps, on the training items the run really uses.
    ``keys`` may return a numpy array (e.g. 64-bit hashes of rows kept on disk: compared without a
    Python set of every training text); then ``describe(items, i)`` names item i in the examples."""
    if "train" not in splits:
        return dict(splits)
    train_keys = keys(splits["train"])
    seen = train_keys if isinstance(train_keys, np.ndarray) else set(train_keys)
    out = dict(splits)
    for split in ("validation", "test"):
        if split not in splits:
            continue
        split_keys = keys(splits[split])
        if isinstance(seen, np.ndarray):
            dup = np.flatnonzero(np.isin(split_keys, seen)).tolist()
        else:
            split_keys = list(split_keys)
            dup = [i for i, k in enumerate(split_keys) if k in seen]
        if dup:
            name = (lambda i: describe(splits[split], i)) if describe is not None else (lambda i: str(split_keys[i]))
            report.drop(split, f"also in train ({what})", len(dup), [name(i)[:80] for i in dup[:5]])
            dup_set = set(dup)
            out[split] = take(splits[split], [i for i in range(len(split_keys)) if i not in dup_set])
    return out


def require_rows(splits: dict[str, Any], where: str | Mapping[str, str], report) -> None:
    """Every split has items left after cleaning (else a DataError naming the split and what was
    dropped); the kept counts go into ``report``."""
    for split, items in splits.items():
        source = where.get(split, "") if isinstance(where, Mapping) else where
        if len(items) == 0:
            raise DataError(f"{source}: the {split} split is empty after cleaning "
                            f"(dropped: {report.dropped.get(split, {})})")
        report.rows_kept[split] = len(items)


def check_classes(found: Sequence[Any], where: str) -> None:
    """A classification dataset needs two classes or more: with one, every prediction is right and
    nothing is learnt; the error names the classes found."""
    names = sorted({str(v) for v in found})
    if len(names) < 2:
        listed = ", ".join(repr(n) for n in names) or "none"
        raise DataError(f"{where}: classification needs at least two classes in the training data; "
                        f"found {len(names)}: {listed}")


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
