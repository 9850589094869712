"""Image sources -> labelled records -> torch datasets.

Sources: an ImageFolder directory (``root/<class>/*.jpg``, optionally with ``train/``, ``val/``,
``test/`` split folders), a CSV/TSV/JSONL/Parquet manifest (path, label; relative paths are taken
from the manifest's folder), ``hub:NAME[/CONFIG]`` (Hugging Face image datasets) and a folder of
IDX gzip files (MNIST layout; ``asset:fashion-mnist``).

Every image is read as uint8 RGB: greyscale, palette and RGBA images become 3 channels here, so
every backbone gets the input it was trained on. Files that cannot be decoded are found up front
(``verify_images``), skipped and listed by path in the data report.
"""

from __future__ import annotations

import gzip
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from omnitune.core.base.data import SPLIT_ALIASES, is_hub, read_table, require_columns, table_suffix
from omnitune.core.base.errors import DataError
from omnitune.core.base.mmap_store import ArrayStore, ContentKey, build_store, cache_root
from omnitune.core.base.seeding import item_seed

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLIT_DIRS = SPLIT_ALIASES  # split folders: train/, val/ (or validation/, valid/, dev/), test/
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


# ----------------------------------------------------------------------------- image stores
def to_rgb_array(image) -> np.ndarray:
    """A PIL image or HxW / HxWx1/3/4 array -> contiguous uint8 HxWx3."""
    if not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB"))
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image, dtype=np.uint8)


def decode_path(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # full decode: a truncated file fails here, not halfway through training
        return to_rgb_array(img)


@dataclass
class Records:
    """One split: how to read an item, a name for reports, the items' keys and labels.

    Labels are class names while loading and class ids once the label set is fixed.
    """

    load: Callable[[Any], np.ndarray]
    describe: Callable[[Any], str]
    keys: list[Any]  # what `load` takes: a file path, or a row of an array / Hub dataset
    labels: list[Any]
    from_files: bool = False  # files can be verified (and be corrupt) before training

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, keep: Sequence[int]) -> "Records":
        return Records(self.load, self.describe, [self.keys[i] for i in keep], [self.labels[i] for i in keep],
                       self.from_files)

    def with_labels(self, labels: list[Any]) -> "Records":
        return Records(self.load, self.describe, self.keys, labels, self.from_files)

    def concat(self, other: "Records") -> "Records":
        return Records(self.load, self.describe, self.keys + other.keys, self.labels + other.labels,
                       self.from_files)


def path_records(paths: list[str], labels: list[Any]) -> Records:
    return Records(load=decode_path, describe=str, keys=list(paths), labels=list(labels), from_files=True)


class ArrayLoader:
    """A picklable loader (DataLoader workers may be spawned) for rows of an image array."""

    def __init__(self, images: np.ndarray, name: str) -> None:
        self.images, self.name = images, name

    def __call__(self, i: int) -> np.ndarray:
        return to_rgb_array(self.images[i])

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"


def array_records(images: np.ndarray | ArrayStore, labels: list[Any], name: str) -> Records:
    """Rows of an in-memory array or of a disk store (``data.storage: disk``): both index by row."""
    loader = ArrayLoader(images, name)
    return Records(load=loader, describe=loader.describe, keys=list(range(len(labels))), labels=list(labels))


# ----------------------------------------------------------------------------- data.storage: disk
class _StoredFiles:
    """Decoded images of files, read back from a disk store; reports still name the files."""

    def __init__(self, store: ArrayStore, paths: list[str]) -> None:
        self.store, self.paths = store, paths

    def __call__(self, i: int) -> np.ndarray:
        return self.store[i]

    def describe(self, i: int) -> str:
        return self.paths[i]


def _decode_or_none(path: str) -> np.ndarray | None:
    try:
        return decode_path(path)
    except Exception:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return None


def store_files(records: Records, mode: str, threads: int = 2, chunk: int = 256) -> tuple[Records, list[str]]:
    """File-backed records -> records read from a disk store of their decoded RGB images, and the
    paths that did not decode (dropped). One decode per file, on the first run only: the store is
    keyed by the files (path, size, mtime) and ``mode``, and a later run with the same files reuses
    it, unreadable list included. ``mode`` is data.verify_images: with "full" a file that does not
    decode is dropped (as :func:`find_unreadable` would); with "header" only files whose header PIL
    rejects are dropped, and with "none" nothing is: then a file that does not decode stops the run,
    named (the memory path would stop on it later, in training)."""
    paths = [str(p) for p in records.keys]
    key = ContentKey("images-rgb-u8").add(mode).add_files(paths).hexdigest()

    def fill(writer) -> None:
        header_bad = set(find_unreadable(paths, "header", threads)) if mode == "header" else set()
        bad: list[str] = []
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for start in range(0, len(paths), chunk):  # bounded: a chunk of images in flight at a time
                part = paths[start:start + chunk]
                for path, image in zip(part, pool.map(_decode_or_none, part)):
                    if path in header_bad or (image is None and mode == "full"):
                        bad.append(path)
                    elif image is None:
                        raise DataError(f"{path}: cannot read image (data.verify_images: {mode} let it through)")
                    else:
                        writer.append(image)
        writer.meta["bad"] = bad

    store = build_store(cache_root() / key, np.uint8, fill, ndim=3)
    bad = set(store.meta.get("bad", []))
    keep = [i for i, p in enumerate(paths) if p not in bad]
    kept_paths = [paths[i] for i in keep]
    loader = _StoredFiles(store, kept_paths)
    return Records(load=loader, describe=loader.describe, keys=list(range(len(keep))),
                   labels=[records.labels[i] for i in keep]), sorted(bad)


# ----------------------------------------------------------------------------- the dataset
class ImageDataset(torch.utils.data.Dataset):
    """Items are {"pixel_values": float32 3xSxS, "label": int, "index": int}.

    ``augment(image, seed)`` is an :class:`~omnitune.vision.augment.Augmenter`. A training item's
    seed is a pure function of (``seed``, epoch, index) (:func:`omnitune.core.base.seeding.item_seed`),
    so it is the same in any DataLoader worker and after a resume; the trainer calls
    :meth:`set_epoch` before each epoch. Evaluation uses the index alone, so it is the same every
    time. No item consumes a global RNG.
    """

    def __init__(self, records: Records, augment: Callable[[np.ndarray, int], np.ndarray], train: bool,
                 seed: int = 0) -> None:
        self.records, self.augment, self.train, self.seed = records, augment, train, seed
        self.labels = records.labels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records.keys)

    def raw_image(self, i: int) -> np.ndarray:
        key = self.records.keys[i]
        try:
            return self.records.load(key)
        except Exception as exc:  # only reachable with verify_images: none
            raise DataError(f"{self.records.describe(key)}: cannot read image ({exc})") from None

    def describe(self, i: int) -> str:
        return self.records.describe(self.records.keys[i])

    def __getitem__(self, i: int) -> dict[str, Any]:
        seed = item_seed(self.seed, self.epoch, i) if self.train else i
        return {"pixel_values": self.augment(self.raw_image(i), seed), "label": self.labels[i], "index": i}


# ----------------------------------------------------------------------------- verification
def find_unreadable(paths: Sequence[str], mode: str, threads: int = 2) -> list[str]:
    """Paths PIL cannot open ("header") or fully decode ("full"); "none" checks nothing."""
    if mode == "none":
        return []
    from PIL import Image

    def bad(path: str) -> bool:
        try:
            if mode == "header":
                with Image.open(path) as img:
                    img.verify()
            else:
                decode_path(path)
            return False
        except Exception:  # PIL raises OSError, SyntaxError, ValueError... for broken files
            return True

    # PIL releases the GIL while decoding, so threads overlap the work.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        flags = list(pool.map(bad, paths, chunksize=64))
    return [p for p, f in zip(paths, flags) if f]


# ----------------------------------------------------------------------------- sources
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def split_dirs(root: Path) -> dict[str, Path] | None:
    """{"train": root/train, ...} when root holds split folders rather than class folders."""
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    found = {split: subdirs[n] for split, names in SPLIT_DIRS.items() for n in names if n in subdirs}
    return found if "train" in found and len(found) == len(subdirs) else None


def scan_image_folder(root: Path, declared: list[str] | None) -> dict[str, list[str]]:
    """class name -> image paths. Missing or empty class folders are errors that
    name them; folders outside ``declared`` are returned too (the caller applies the policy)."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    classes = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class name>/<image files>)")
    missing = [c for c in (declared or []) if c not in classes]
    if missing:
        raise DataError(f"{root}: missing class folder(s) for declared label(s): {', '.join(missing)}")
    files = {name: [str(p) for p in _image_files(folder)] for name, folder in classes.items()}
    empty = [str(classes[n]) for n, f in files.items() if not f]
    if empty:
        raise DataError(f"{root}: empty class folder(s), no image files: {', '.join(empty)}")
    return files


def read_manifest(path: Path, path_column: str, label_column: str,
                  drop_duplicates: bool = True) -> tuple[list[str], list[str], int]:
    """(absolute paths, labels, duplicate rows dropped) from a CSV/JSONL/... manifest; a path
    listed twice would otherwise count twice (and may land in two splits)."""
    df = read_table(path)
    require_columns(df, [path_column, label_column], str(path))
    df = df.dropna(subset=[path_column, label_column])
    before = len(df)
    if drop_duplicates:
        df = df.drop_duplicates(subset=[path_column])
    base = path.parent
    paths = [str(p if Path(p).is_absolute() else base / p) for p in df[path_column].astype(str)]
    return paths, [str(v) for v in df[label_column]], before - len(df)


def _idx_header(f, path: Path) -> list[int]:
    head = f.read(4)
    magic = int.from_bytes(head, "big")
    if len(head) < 4 or magic >> 8 != 0x08:  # 0x08 = unsigned byte data, the only type MNIST-style files use
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    return [int.from_bytes(f.read(4), "big") for _ in range(magic & 0xFF)]


def _stored_idx(path: Path, chunk_rows: int = 1024) -> ArrayStore:
    """An IDX image file decompressed once into a disk store, row by row (flat memory)."""
    key = ContentKey("idx-images").add_files([path]).hexdigest()

    def fill(writer) -> None:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            dims = _idx_header(f, path)
            row = int(np.prod(dims[1:], dtype=np.int64))
            for start in range(0, dims[0], chunk_rows):
                n = min(chunk_rows, dims[0] - start)
                data = f.read(n * row)
                if len(data) != n * row:
                    raise DataError(f"{path}: truncated IDX file ({start + len(data) // max(row, 1)} of "
                                    f"{dims[0]} images)")
                for image in np.frombuffer(data, dtype=np.uint8).reshape(n, *dims[1:]):
                    writer.append(image)

    return build_store(cache_root() / key, np.uint8, fill)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        dims = _idx_header(f, path)
        data = f.read()
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def is_idx_folder(root: Path) -> bool:
    return root.is_dir() and any(root.glob(IDX_FILES["train"][0] + "*"))


def idx_files(root: Path) -> list[Path]:
    """The IDX files of a folder (what data.storage: auto sizes)."""
    return [p for names in IDX_FILES.values() for n in names for p in sorted(root.glob(n + "*"))[:1]]


def read_idx_folder(root: Path, storage: str = "memory"
                    ) -> tuple[dict[str, tuple[np.ndarray | ArrayStore, np.ndarray]], list[str] | None]:
    """{"train": (images, labels), "test": ...} and the class names from labels.txt if present.
    ``storage`` "disk": images come from a disk store (decompressed once), not a whole array in RAM."""
    out = {}
    for split, (img_name, lbl_name) in IDX_FILES.items():
        found = [next(iter(sorted(root.glob(n + "*"))), None) for n in (img_name, lbl_name)]
        if all(found):
            labels = _read_idx(found[1])
            images = _stored_idx(found[0]) if storage == "disk" else _read_idx(found[0])
            if len(images) != len(labels):
                raise DataError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
            out[split] = (images, labels)
    names_file = root / "labels.txt"
    names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()] \
        if names_file.is_file() else None
    return out, names


class HubLoader:
    def __init__(self, split_ds, image_column: str, name: str) -> None:
        self.ds, self.column, self.name = split_ds, image_column, name

    def __call__(self, i: int) -> np.ndarray:
        return to_rgb_array(self.ds[i][self.column])

    def describe(self, i: int) -> str:
        return f"hub:{self.name}[{i}]"


def hub_records(split_ds, image_column: str, labels: list[Any], name: str) -> Records:
    loader = HubLoader(split_ds, image_column, name)
    return Records(load=loader, describe=loader.describe, keys=list(range(len(labels))), labels=list(labels))


def source_kind(source: str) -> str:
    """"hub", "idx", "folder" or "manifest" for a resolved source string."""
    if is_hub(source):
        return "hub"
    path = Path(source)
    if is_idx_folder(path):
        return "idx"
    if path.is_dir():
        return "folder"
    if path.is_file() and table_suffix(path) in (".csv", ".tsv", ".json", ".jsonl", ".parquet"):
        return "manifest"
    if not path.exists():
        raise DataError(f"{source}: data source not found")
    raise DataError(f"{source}: not an image folder, IDX folder, manifest (.csv/.jsonl/...) or hub:NAME")
