"""A disk store of variable-length arrays (decoded images, resampled audio, token ids), written
once and read item by item: what ``data.storage: disk`` keeps instead of holding every decoded
item in RAM.

Layout of one store, a folder named by a content key::

    data.bin     every item's bytes, one after the other
    offsets.npy  int64, N+1 byte offsets into data.bin (item i is data.bin[off[i]:off[i+1]])
    shapes.npy   int64, N x ndim: each item's shape
    meta.json    dtype, ndim, count, format version (written last)

A writer fills ``<key>.tmp-<pid>-<random>/`` and renames it to ``<key>/`` only when complete
(``os.replace`` is atomic on one file system), so a run killed halfway leaves a temp folder that
is never opened as a store; the next build starts over and removes temp folders of dead writers.

Items are read with ``os.pread`` into a fresh array rather than through a memory map: the bytes
come from the kernel's page cache, which is shared and evictable, and are not charged to the
process's resident set the way touched pages of a mapping are. A pass over a store larger than
RAM therefore keeps the process's peak RSS flat (the benchmark in bench/scaling_media.py measures
exactly that). The small index arrays are memory-mapped.

>>> import tempfile, numpy as np
>>> root = Path(tempfile.mkdtemp())
>>> store = build_store(root / "demo", np.float32, lambda w: [w.append(np.ones(n)) for n in (3, 1)])
>>> len(store), store[0].tolist(), store.length(1)
(2, [1.0, 1.0, 1.0], 1)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from array import array
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

FORMAT = 1


def cache_root() -> Path:
    """Where content-keyed stores live: ``$OMNITUNE_CACHE/arrays`` (default ~/.cache/omnitune)."""
    return Path(os.environ.get("OMNITUNE_CACHE", Path.home() / ".cache" / "omnitune")) / "arrays"


class ContentKey:
    """A sha256 over everything that decides a store's contents: decoding settings, and the files
    read (real path, size and modification time: a changed file gets a new store without reading
    every file's bytes to find out)."""

    def __init__(self, kind: str) -> None:
        self._h = hashlib.sha256(f"omnitune-store-v{FORMAT}|{kind}\0".encode())

    def add(self, *parts: Any) -> "ContentKey":
        for part in parts:
            self._h.update(repr(part).encode())
            self._h.update(b"\0")
        return self

    def add_files(self, paths: Iterable[str | os.PathLike]) -> "ContentKey":
        for p in paths:
            st = os.stat(p)
            self.add(os.path.realpath(p), st.st_size, st.st_mtime_ns)
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()[:32]


class StoreWriter:
    """Append arrays of one dtype and rank; :meth:`finalise` publishes the store atomically.

    Only the index (two small int64 arrays) is held in memory while writing. ``meta`` takes small
    JSON values saved with the store (e.g. the files found unreadable while filling it)."""

    def __init__(self, path: Path, dtype: Any, ndim: int | None = None) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.ndim = ndim
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.tmp.mkdir()
        self._data = open(self.tmp / "data.bin", "wb")
        self._offsets = array("q", [0])
        self._shapes = array("q")
        self.meta: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def append(self, item: np.ndarray) -> int:
        """Store ``item`` (cast to the store's dtype); returns its index."""
        item = np.ascontiguousarray(item, dtype=self.dtype)
        if self.ndim is None:
            self.ndim = item.ndim
        if item.ndim != self.ndim:
            raise ValueError(f"{self.path.name}: item of rank {item.ndim} in a store of rank {self.ndim}")
        self._data.write(item.tobytes())
        self._offsets.append(self._offsets[-1] + item.nbytes)
        self._shapes.extend(item.shape)
        return len(self) - 1

    def finalise(self) -> "ArrayStore":
        self._data.close()
        n, ndim = len(self), self.ndim if self.ndim is not None else 1
        np.save(self.tmp / "offsets.npy", np.frombuffer(self._offsets, dtype=np.int64))
        np.save(self.tmp / "shapes.npy", np.frombuffer(self._shapes, dtype=np.int64).reshape(n, ndim))
        (self.tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "dtype": self.dtype.str, "ndim": ndim,
                                                        "count": n, "bytes": self._offsets[-1],
                                                        "extra": self.meta}))
        try:
            os.replace(self.tmp, self.path)
        except OSError:  # another process published the same key first: same content, use theirs
            shutil.rmtree(self.tmp, ignore_errors=True)
        return ArrayStore(self.path)

    def abort(self) -> None:
        self._data.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self.abort()


class ArrayStore:
    """A finished store, read-only. ``store[i]`` is a fresh array (a copy from the page cache).

    Picklable (DataLoader workers reopen the file): only the path travels."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path}: not a finished store (no meta.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT:
            raise FileNotFoundError(f"{self.path}: store format {meta.get('format')}, expected {FORMAT}")
        self.dtype, self.count = np.dtype(meta["dtype"]), int(meta["count"])
        self.meta: dict[str, Any] = meta.get("extra", {})
        mode = "r" if self.count else None  # numpy cannot map an empty array
        self.offsets = np.load(self.path / "offsets.npy", mmap_mode=mode)
        self.shapes = np.load(self.path / "shapes.npy", mmap_mode=mode)
        data_size = (self.path / "data.bin").stat().st_size
        if len(self.offsets) != self.count + 1 or int(self.offsets[-1]) != data_size or data_size != meta["bytes"]:
            raise FileNotFoundError(f"{self.path}: index and data.bin disagree (a damaged store)")
        self._fd: int | None = None

    @classmethod
    def open(cls, path: Path) -> "ArrayStore | None":
        """The finished store at ``path``, or None when there is none (or only a damaged one)."""
        try:
            return cls(path)
        except (FileNotFoundError, ValueError, json.JSONDecodeError):
            return None

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    def shape(self, i: int) -> tuple[int, ...]:
        return tuple(int(s) for s in self.shapes[i])

    def length(self, i: int) -> int:
        """Size of item ``i`` along its first axis (samples of a clip, rows of an image), no read."""
        return int(self.shapes[i][0])

    def __getitem__(self, i: int) -> np.ndarray:
        if not -self.count <= i < self.count:
            raise IndexError(f"{self.path.name}: item {i} of {self.count}")
        i %= self.count
        if self._fd is None:
            self._fd = os.open(self.path / "data.bin", os.O_RDONLY)
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        buf = bytearray(end - start)
        view, done = memoryview(buf), 0
        while done < len(buf):  # pread may return fewer bytes than asked
            got = os.preadv(self._fd, [view[done:]], start + done)
            if got <= 0:
                raise OSError(f"{self.path}/data.bin: short read at item {i}")
            done += got
        return np.frombuffer(buf, dtype=self.dtype).reshape(self.shape(i))

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


def _remove_dead_temps(path: Path) -> None:
    """Temp folders of writers that died (kill -9, OOM) before finalising."""
    for tmp in path.parent.glob(f"{path.name}.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError, IndexError):
            continue


def build_store(path: Path, dtype: Any, fill: Callable[[StoreWriter], Any], ndim: int | None = None
                ) -> ArrayStore:
    """The finished store at ``path``; built by ``fill(writer)`` first when there is none.

    ``fill`` appends the items; an exception in it leaves no store behind."""
    path = Path(path)
    found = ArrayStore.open(path)
    if found is not None:
        return found
    if path.exists():  # a damaged store under the final name: rebuild it
        shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(path)
    with StoreWriter(path, dtype, ndim) as writer:
        fill(writer)
        return writer.finalise()
