"""Frozen-trunk feature cache: compute the frozen bottom of the model once, train the rest from it.

With ``finetune.strategy: feature_extraction`` (or ``partial`` with the bottom layer groups frozen)
the frozen part computes the same outputs for a sample every epoch, as long as nothing random
happens before the first trained group: no active dropout, drop-path or batch-norm batch statistics
in the frozen groups, and no train-time augmentation or mixing of the input. Then its outputs are
computed once per sample, kept (in memory, or in a memory-mapped ``.npy`` file in the OS temp folder
for large sets), and every epoch trains the top groups from them: one pass of the trunk instead of
one per epoch. Extraction batches samples of similar length together (when the dataset knows its
lengths), each padded only to its longest; values with a sequence dimension come as :class:`Ragged`
and are stored per sample without padding, so the cache holds the same per-sample values however the
extraction batches were padded.

``train.cache_features`` picks the behaviour: ``auto`` caches when the above holds (the results
equal an uncached run's up to float rounding), ``true`` also caches when it does not, turning that
randomness off (the trunk runs in eval mode, the training images get the evaluation transform) and
saying so in the run log and ``metrics.json``, ``false`` never caches.

The task opts in by satisfying :class:`~omnitune.core.base.task.FeatureCacheable`: ``frozen_features``
(the outputs of the first ``depth`` groups for a collated batch, plus what the loss needs),
``forward_features`` (the task's ``forward`` from those) and ``feature_cache_eval`` (whether the
validation set is cached too), and optionally :class:`~omnitune.core.base.task.FeatureCacheTrainSet`
(the training set without input randomness, and what was turned off).

The cache is wired in after the trainer is built (:func:`maybe_cache_features`): the trainer's task
becomes a :class:`FeatureCacheTask` that runs cached batches through ``forward_features`` and any
other batch through the task's own ``forward`` (the final test evaluation, predictions), and its
training and validation sets become :class:`CachedFeatures` of the same length and order, so batch
order, schedule and checkpoints are unchanged.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

from ..base.task import DataBundle, FeatureCacheable, FeatureCacheTrainSet, InnerLoop, LayerGroup, MetricInputs

CACHED = "cached_features"  # marks a batch collated from the cache
# Above this many bytes the features go to a memory-mapped file instead of RAM.
DEFAULT_MAX_RAM_BYTES = 1 << 30


# ----------------------------------------------------------------------------------- the store
class Ragged(NamedTuple):
    """A frozen_features value with a sequence dimension: sample ``i`` is ``values[i, :lengths[i]]``.
    The store keeps each row without its padding (so the cache does not depend on how the extraction
    batches were padded, and a short text costs its own length, not ``max_length``); a gathered batch
    is padded with zeros to its longest row."""

    values: torch.Tensor  # (batch, padded length, *shape)
    lengths: torch.Tensor  # (batch,)


class _RaggedArray:
    """Rows ``(length, *shape)`` of different lengths, written in any order: one array per sample in
    RAM or, once spilled, appended to one flat ``(tokens, *shape)`` file read back memory-mapped."""

    def __init__(self, n: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.dtype, self.shape = dtype, shape
        self.rows: list[np.ndarray | None] = [None] * n
        self.offsets = np.zeros(n, dtype=np.int64)
        self.lengths = np.zeros(n, dtype=np.int64)
        self.nbytes, self.tokens = 0, 0
        self.path: Path | None = None
        self._file: Any = None
        self._flat: np.ndarray | None = None

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    def write(self, positions: Sequence[int], values: np.ndarray, lengths: np.ndarray) -> None:
        for i, row, n in zip(positions, values, lengths):
            row = np.ascontiguousarray(row[:n], dtype=self.dtype)
            self.lengths[i] = n
            self.nbytes += row.nbytes
            if self._file is None:
                self.rows[i] = row.copy()  # not a view: the padded batch is freed
            else:
                self.offsets[i], self.tokens = self.tokens, self.tokens + int(n)
                self._file.write(row.tobytes())

    def spill(self, path: Path) -> None:
        """Move the rows so far to ``path`` and append every later one there."""
        self.path, self._file = path, open(path, "wb")  # closed in finish()
        rows, self.rows = self.rows, [None] * len(self.rows)
        self.nbytes = 0
        self.write([i for i, r in enumerate(rows) if r is not None], [r for r in rows if r is not None],
                   [len(r) for r in rows if r is not None])

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._flat = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.tokens, *self.shape)) \
                if self.tokens else np.empty((0, *self.shape), dtype=self.dtype)

    def gather(self, idx: np.ndarray) -> torch.Tensor:
        lengths = self.lengths[idx]
        out = np.zeros((len(idx), int(lengths.max(initial=0)), *self.shape), dtype=self.dtype)
        for j, (i, n) in enumerate(zip(idx, lengths)):
            out[j, :n] = self.rows[i] if self._flat is None else self._flat[self.offsets[i]:self.offsets[i] + n]
        return torch.from_numpy(out)


class FeatureStore:
    """Per-sample arrays by name, each ``(n, *shape)``: in RAM, or memory-mapped ``.npy`` files in a
    temporary folder deleted with the store; :class:`Ragged` values are kept per sample without their
    padding (in RAM until the store passes ``max_ram_bytes``, then in a memory-mapped file)."""

    def __init__(self, n: int, first: dict[str, torch.Tensor | Ragged], max_ram_bytes: int,
                 folder: Path | None = None):
        self.n, self.max_ram_bytes, self.parent = n, max_ram_bytes, folder
        fixed = {k: t for k, t in first.items() if not isinstance(t, Ragged)}
        self.ragged = {k: _RaggedArray(n, _np_dtype(t.values), tuple(t.values.shape[2:]))
                       for k, t in first.items() if isinstance(t, Ragged)}
        per_sample = sum(_np_dtype(t).itemsize * int(np.prod(t.shape[1:], dtype=np.int64)) for t in fixed.values())
        self.fixed_nbytes = per_sample * n
        self.fixed_on_disk = self.fixed_nbytes > max_ram_bytes
        self.folder: Path | None = None
        self.arrays: dict[str, np.ndarray] = {}
        if self.fixed_on_disk:
            self._make_folder()
        for name, t in fixed.items():
            shape = (n, *t.shape[1:])
            if self.fixed_on_disk:
                self.arrays[name] = np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+",
                                                              dtype=_np_dtype(t), shape=shape)
            else:
                self.arrays[name] = np.empty(shape, dtype=_np_dtype(t))

    def _make_folder(self) -> Path:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="omnitune-features-", dir=self.parent))
            weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        return self.folder

    @property
    def nbytes(self) -> int:
        return self.fixed_nbytes + sum(r.nbytes for r in self.ragged.values())

    @property
    def on_disk(self) -> bool:
        return self.fixed_on_disk or any(r.on_disk for r in self.ragged.values())

    def write(self, start: int | Sequence[int], values: dict[str, torch.Tensor | Ragged]) -> None:
        """Rows for the samples ``start, start + 1, ...`` (an int) or at the given positions."""
        for name in (*self.arrays, *self.ragged):
            t = values.get(name)
            want = self.arrays[name].shape[1:] if name in self.arrays else self.ragged[name].shape
            got = None if t is None or isinstance(t, Ragged) != (name in self.ragged) else \
                tuple((t.values.shape[2:] if isinstance(t, Ragged) else t.shape[1:]))
            if got != want:
                raise ValueError(f"frozen_features: {name!r} is {got} per sample here, {want} before "
                                 "(every sample must give the same shapes)")
        first = next(iter(values.values()))
        batch = (first.values if isinstance(first, Ragged) else first).shape[0]
        rows = np.arange(start, start + batch) if isinstance(start, int) else np.asarray(start)
        for name, array in self.arrays.items():
            array[rows] = _numpy(values[name])
        for name, ragged in self.ragged.items():
            v = values[name]
            ragged.write(rows, _numpy(v.values), v.lengths.cpu().numpy())
        if self.ragged and not self.on_disk and self.nbytes > self.max_ram_bytes:
            for name, ragged in self.ragged.items():
                ragged.spill(self._make_folder() / f"{name}.ragged")

    def finish(self) -> None:
        """After the last write: ragged rows on disk are read back memory-mapped."""
        for ragged in self.ragged.values():
            ragged.finish()

    def gather(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices)
        out = {name: torch.from_numpy(np.ascontiguousarray(array[idx])) for name, array in self.arrays.items()}
        return out | {name: ragged.gather(idx) for name, ragged in self.ragged.items()}


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _np_dtype(t: torch.Tensor) -> np.dtype:
    return np.dtype(np.float32) if t.dtype == torch.bfloat16 else torch.empty(0, dtype=t.dtype).numpy().dtype


class _Row:
    __slots__ = ("store", "index")

    def __init__(self, store: FeatureStore, index: int) -> None:
        self.store, self.index = store, index


class CachedFeatures(torch.utils.data.Dataset):
    """A dataset of cached rows, same length and order as the one it was computed from."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return self.store.n

    def __getitem__(self, i: int) -> _Row:
        return _Row(self.store, i)


# ----------------------------------------------------------------------------------- the task
class FeatureCacheTask:
    """The task, with cached batches going through ``forward_features``; everything else (and any
    batch not from the cache) is the task's own."""

    def __init__(self, task: Any, depth: int) -> None:
        self.task, self.depth = task, depth

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        if samples and isinstance(samples[0], _Row):
            batch: dict[str, Any] = samples[0].store.gather([s.index for s in samples])
            batch[CACHED] = True
            return batch
        return self.task.collate(samples)

    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool, **kw: Any) -> dict[str, Any]:
        if batch.get(CACHED):
            return self.task.forward_features(model, batch, self.depth, train)
        return self.task.forward(model, batch, train=train, **kw)

    def metric_inputs(self, predictions: list, references: list) -> tuple[list, list]:
        # Spelt out, not left to __getattr__: evaluation asks isinstance(task, MetricInputs).
        if isinstance(self.task, MetricInputs):
            return self.task.metric_inputs(predictions, references)
        return predictions, references


# ----------------------------------------------------------------------------------- planning
def frozen_depth(groups: list[LayerGroup]) -> int:
    """How many groups from the input are entirely frozen (the head never counts)."""
    depth = 0
    for g in groups[:-1]:
        params = list(g.parameters())
        if params and all(not p.requires_grad for p in params):
            depth += 1
        else:
            break
    return depth


def trunk_randomness(groups: list[LayerGroup], depth: int) -> list[str]:
    """What makes the frozen groups' outputs vary from epoch to epoch in the model's current mode."""
    found: dict[str, float] = {}
    for g in groups[:depth]:
        for module in g.modules:
            for m in module.modules():
                if not m.training:
                    continue
                if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
                    found[f"dropout (p={m.p:g})"] = 1
                elif type(m).__name__ == "DropPath" and getattr(m, "drop_prob", 0) > 0:
                    found[f"drop-path (p={m.drop_prob:g})"] = 1
                elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                    found["batch-norm batch statistics (finetune.freeze_norm_stats: true keeps them fixed)"] = 1
    return [f"{what} in the frozen layers" for what in found]


def plan(rec: Any, task: Any, trainer: Any) -> tuple[int, list[str], str | None]:
    """(depth, randomness that caching would turn off, reason not to cache or None)."""
    mode = rec.train.cache_features
    ft = rec.finetune
    if mode is False:
        return 0, [], "train.cache_features is false"
    if ft.strategy not in ("feature_extraction", "partial"):
        return 0, [], f"strategy {ft.strategy!r} trains the bottom layers"
    if ft.peft is not None:
        return 0, [], "adapters train inside the frozen layers"
    if not isinstance(task, FeatureCacheable):
        return 0, [], f"task {task.name} does not implement FeatureCacheable (frozen_features/forward_features)"
    if isinstance(task, InnerLoop):
        return 0, [], f"task {task.name} makes its training batches in an inner loop"
    if trainer.world > 1:
        return 0, [], "several processes (the cache is per process; not implemented)"
    if trainer.loss_fn is not None:
        return 0, [], "train.loss sees the batch, which the cache replaces"
    depth = frozen_depth(trainer.groups)
    if depth == 0:
        return 0, [], "the bottom layer group trains"
    trainer._train_mode()
    turned_off = trunk_randomness(trainer.groups, depth)
    if isinstance(task, FeatureCacheTrainSet):
        turned_off += task.feature_cache_train_set(trainer.bundle)[1]
    if turned_off and mode == "auto":
        return depth, turned_off, ("random before the first trained group: " + "; ".join(turned_off)
                                   + " (train.cache_features: true caches with them off)")
    return depth, turned_off, None


# ----------------------------------------------------------------------------------- extraction
@runtime_checkable
class HasLengths(Protocol):
    """A dataset that knows each sample's length (tokens, audio duration): extraction batches
    samples of similar length together, so a batch padded to its longest wastes little."""

    def lengths(self) -> Sequence[int]: ...


def extraction_batches(n: int, batch_size: int, lengths: Sequence[int] | None) -> list[list[int]]:
    """Sample positions per extraction batch: by increasing length when lengths are known (the
    cached values are per sample, so the order changes nothing but the padding), else in order."""
    order = np.argsort(np.asarray(lengths), kind="stable") if lengths is not None else np.arange(n)
    return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]


@torch.no_grad()
def extract(task: Any, model: nn.Module, dataset, depth: int, batch_size: int, device: torch.device,
            autocast: Callable = nullcontext, max_ram_bytes: int = DEFAULT_MAX_RAM_BYTES,
            lengths: Sequence[int] | None = None) -> FeatureStore | None:
    """The frozen part's outputs for every sample of ``dataset``, stored in its order (model in eval
    mode, the global RNG left as it was); None when the task cannot split the model at ``depth``.
    With ``lengths`` (default: the dataset's own, when it has them) the batches group samples of
    similar length, each padded only to its longest (the collate's dynamic padding)."""
    from accelerate.utils import send_to_device

    if lengths is None and isinstance(dataset, HasLengths):
        lengths = dataset.lengths()
    model.eval()
    store = None
    with torch.random.fork_rng(devices=[]):
        for positions in extraction_batches(len(dataset), batch_size, lengths):
            batch = send_to_device(task.collate([dataset[i] for i in positions]), device)
            with autocast():
                values = task.frozen_features(model, batch, depth)
            if values is None:
                return None
            if store is None:
                store = FeatureStore(len(dataset), values, max_ram_bytes)
            store.write(positions, values)
    if store is not None:
        store.finish()
    return store


def maybe_cache_features(rec: Any, task: Any, trainer: Any, max_ram_bytes: int = DEFAULT_MAX_RAM_BYTES
                         ) -> dict[str, Any]:
    """Cache the frozen trunk's outputs for the trainer's training and validation sets when the recipe
    and the task allow it (see the module docstring); returns what was done, for the log and metrics."""
    depth, turned_off, reason = plan(rec, task, trainer)
    note: dict[str, Any] = {"enabled": False, "setting": rec.train.cache_features}
    if reason is None:
        t0 = time.perf_counter()
        train_set = task.feature_cache_train_set(trainer.bundle)[0] if isinstance(task, FeatureCacheTrainSet) \
            else trainer.bundle.train
        model, device = trainer._unwrapped, trainer.accelerator.device
        batch = trainer.cfg.eval_batch
        train_store = extract(task, model, train_set, depth, batch, device, trainer.accelerator.autocast,
                              max_ram_bytes)
        # A task whose evaluation needs more than the cached values (texts to decode) opts out.
        cache_eval = task.feature_cache_eval
        val_store = None if train_store is None or not cache_eval else extract(
            task, model, trainer.bundle.validation, depth, batch, device, trainer.accelerator.autocast, max_ram_bytes)
        trainer._train_mode()
        if train_store is None or (cache_eval and val_store is None):
            reason = f"task {task.name} cannot split this model after layer group {depth}"
        else:
            b = trainer.bundle
            trainer.bundle = DataBundle(train=CachedFeatures(train_store),
                                        validation=CachedFeatures(val_store) if val_store else b.validation,
                                        test=b.test, report=b.report, label_names=b.label_names,
                                        train_lengths=b.train_lengths)
            trainer.task = FeatureCacheTask(task, depth)
            note.update(enabled=True, frozen_groups=[g.name for g in trainer.groups[:depth]], turned_off=turned_off,
                        storage="disk (memory-mapped)" if train_store.on_disk else "memory",
                        megabytes=round((train_store.nbytes + (val_store.nbytes if val_store else 0)) / 2**20, 1),
                        validation_cached=val_store is not None,
                        extract_seconds=round(time.perf_counter() - t0, 2))
    if reason is not None:
        note["reason"] = reason
    trainer.log.event("feature_cache", **note)
    return note


def describe(note: dict[str, Any]) -> str:
    """One line for the console."""
    if note.get("enabled"):
        off = f"; turned off: {', '.join(note['turned_off'])}" if note["turned_off"] else ""
        return (f"feature cache: {len(note['frozen_groups'])} frozen groups computed once "
                f"({note['megabytes']} MB in {note['storage']}, {note['extract_seconds']} s){off}")
    return f"feature cache: off ({note.get('reason')})"
