"""From a recipe's data section to cleaned, split, subsampled records with a data report.

Order matters for cost: split and subsample first, then decode-check only the images kept, so a
quick run on a big folder does not read every file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from omnitune.core.base.assets import resolve as resolve_asset
from omnitune.core.base.data import cap_splits, choose_storage, drop_overlap, load_hub, parse_hub, source_bytes, split_off
from omnitune.core.base.errors import DataError
from omnitune.core.base.task import DataReport

from .data import (ArrayLoader, HubLoader, Records, array_records, find_unreadable, hub_records, path_records,
                   read_idx_folder, read_manifest, scan_image_folder, source_kind, split_dirs, store_files)

MAX_LISTED_BAD = 200  # unreadable paths listed in the report's notes, per split


def resolve_storage(storage: str, sources: list[str | None], path_column: str, label_column: str,
                    report: DataReport) -> str:
    """data.storage -> "memory" or "disk" (noted in the report). auto sizes the source files: the
    IDX files or every image of a folder, a manifest and the images it lists; a Hub dataset counts 0
    (its Arrow files are memory-mapped by datasets whatever the choice)."""
    paths: list[str] = []
    for source in sources:
        if not source or storage != "auto":
            continue
        resolved = resolve_asset(source)
        kind = source_kind(resolved)
        if kind == "manifest":
            listed, _, _ = read_manifest(Path(resolved), path_column, label_column)
            paths += [resolved, *listed]
        elif kind != "hub":
            paths.append(resolved)
    return choose_storage(storage, source_bytes(paths) if storage == "auto" else 0, report)


def load_raw_splits(source: str, *, declared: list[str] | None, path_column: str, image_column: str,
                    label_column: str, report: DataReport, drop_duplicates: bool = True, storage: str = "memory",
                    ) -> tuple[dict[str, Records], list[str] | None]:
    """{split: Records with class-name labels} as the source provides them, and the source's own
    ordered class names when it has them (IDX labels.txt, a Hub ClassLabel). ``storage`` "disk"
    reads IDX images from a disk store instead of whole arrays (files are stored after splitting,
    in :func:`drop_unreadable`)."""
    resolved = resolve_asset(source)
    kind = source_kind(resolved)
    if kind == "hub":
        hub = parse_hub(resolved)
        dd = load_hub(hub)
        first = next(iter(dd.values()))
        for col in (image_column, label_column):
            if col not in first.column_names:
                raise DataError(f"{hub.ref}: no column {col!r} (columns: {', '.join(first.column_names)})")
        feature = first.features[label_column]
        names = list(feature.names) if hasattr(feature, "names") else None
        out = {}
        for split, ds in dd.items():
            raw = list(ds[label_column])
            labels = [names[int(v)] if names else str(v) for v in raw]
            out[split] = hub_records(ds, image_column, labels, f"{hub.spec}/{split}")
        if "train" not in out:
            raise DataError(f"{hub.ref}: no 'train' split (splits: {', '.join(dd)})")
        return out, names
    path = Path(resolved)
    if kind == "idx":
        splits, names = read_idx_folder(path, storage)
        if "train" not in splits:
            raise DataError(f"{path}: IDX folder without train-images/train-labels files")
        names = declared or names
        out = {}
        for split, (images, ids) in splits.items():
            n_classes = int(ids.max()) + 1
            if names is not None and len(names) < n_classes:
                raise DataError(f"{path}: {split} has {n_classes} label ids but {len(names)} class names")
            out[split] = array_records(images, [names[i] if names else str(i) for i in ids.tolist()],
                                       f"{path.name}/{split}")
        return out, names
    if kind == "manifest":
        paths, labels, dups = read_manifest(path, path_column, label_column, drop_duplicates)
        report.drop("train", "duplicate path", dups)
        return {"train": path_records(paths, labels)}, None
    dirs = split_dirs(path) or {"train": path}
    out = {}
    for split, folder in dirs.items():
        files = scan_image_folder(folder, declared if split == "train" else None)
        paths = [p for cls in sorted(files) for p in files[cls]]
        labels = [cls for cls in sorted(files) for _ in files[cls]]
        out[split] = path_records(paths, labels)
    return out, None


def label_set(declared: list[str] | None, native: list[str] | None, train: Records, report: DataReport) -> list[str]:
    if declared:
        return list(declared)
    if native:
        return list(native)
    names = sorted({str(v) for v in train.labels})
    report.notes.append(f"labels not declared: using the {len(names)} classes seen in the training data")
    return names


def encode_labels(records: Records, names: list[str], policy: str, split: str, where: str,
                  report: DataReport) -> Records:
    """Class names -> ids; labels outside ``names`` stop the run ("error") or are dropped ("drop")."""
    index = {n: i for i, n in enumerate(names)}
    unknown = [i for i, v in enumerate(records.labels) if str(v) not in index]
    if unknown and policy == "error":
        seen = sorted({str(records.labels[i]) for i in unknown})
        raise DataError(f"{where} ({split}): {len(unknown)} item(s) with label(s) outside data.labels: "
                        f"{', '.join(seen[:10])} (set data.unknown_labels: drop to skip them)")
    if unknown:
        report.drop(split, "unknown label", len(unknown), [records.describe(records.keys[i]) for i in unknown])
        keep = sorted(set(range(len(records.keys))) - set(unknown))
        records = records.subset(keep)
    return records.with_labels([index[str(v)] for v in records.labels])


def drop_unreadable(records: Records, split: str, mode: str, report: DataReport, storage: str = "memory"
                    ) -> tuple[Records, int]:
    """Decode-check file-backed records; drop and list the bad ones. Returns (kept, bad count).
    ``storage`` "disk": the kept images are decoded once into a disk store in the same pass, and
    the records read them from there (same images, same drops, same report)."""
    if not records.from_files:
        return records, 0
    if storage == "disk":
        records, listed = store_files(records, mode)
        bad = set(listed)
    elif mode == "none":
        return records, 0
    else:
        bad = set(find_unreadable(records.keys, mode))
        records = records.subset([i for i, k in enumerate(records.keys) if k not in bad]) if bad else records
    if not bad:
        return records, 0
    listed = sorted(bad)
    report.drop(split, "unreadable image", len(bad), listed)
    more = f" (and {len(listed) - MAX_LISTED_BAD} more)" if len(listed) > MAX_LISTED_BAD else ""
    report.notes.append(f"{split}: skipped {len(bad)} unreadable image(s): "
                        f"{', '.join(listed[:MAX_LISTED_BAD])}{more}")
    return records, len(bad)


def check_bad_share(bad: int, total: int, limit: float, report: DataReport) -> None:
    if total and bad / total > limit:
        examples = report.examples.get("unreadable image", [])
        raise DataError(f"{bad} of {total} images ({bad / total:.1%}) are unreadable, above "
                        f"data.max_unreadable_share={limit:.1%}; e.g. {', '.join(examples[:5])}")


def split_and_subsample(splits: dict[str, Records], *, val_size: float, test_size: float,
                        max_samples: int | None, max_eval_samples: int | None, seed: int,
                        report: DataReport, drop_duplicates: bool = True) -> dict[str, Records]:
    """Fill in missing splits from train (seeded, stratified), apply the caps, then drop the
    validation/test images that are also training images (same file, or same pixels for arrays
    and Hub rows). A source with neither validation nor test gets both; one with a test split but
    no validation gets a validation split; one with a validation split only keeps no test split."""
    by_label = lambda records: records.labels  # noqa: E731 (stratify every split by class)
    make = ("validation", "test") if "validation" not in splits and "test" not in splits else ("validation",)
    out = split_off(splits, val_size=val_size, test_size=test_size, seed=seed, report=report, labels=by_label,
                    make=make)
    out = cap_splits(out, max_samples=max_samples, max_eval_samples=max_eval_samples, seed=seed, report=report,
                     labels=by_label)
    if drop_duplicates:
        out = drop_overlap(out, identities, report, "same image")
    return out


def identities(records: Records) -> list[str]:
    """What makes two items the same image: the file's absolute path for files, a hash of the
    pixels (arrays) or of the encoded bytes (Hub rows) otherwise."""
    if records.from_files:
        return [os.path.realpath(k) for k in records.keys]
    if isinstance(records.load, ArrayLoader):
        images = records.load.images
        return [hashlib.sha1(np.ascontiguousarray(images[k]).tobytes()).hexdigest() for k in records.keys]
    if isinstance(records.load, HubLoader):
        import datasets

        column = records.load.column
        if isinstance(records.load.ds.features.get(column), datasets.Image):  # hash the file bytes, no decoding
            ds = records.load.ds.cast_column(column, datasets.Image(decode=False)).select(records.keys)
            out = []
            for batch in ds.iter(batch_size=1000):  # a batch of encoded images in RAM at a time, not the column
                out += [hashlib.sha1(c["bytes"]).hexdigest() if c.get("bytes") else f"path:{c.get('path')}"
                        for c in batch[column]]
            return out
    return [hashlib.sha1(records.load(k).tobytes()).hexdigest() for k in records.keys]


def label_counts(records: Records, names: list[str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(records.labels, dtype=int), minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts)}


def merge_for_eval(splits: dict[str, Records]) -> Records:
    """One evaluation set from a source: its test split when it has one, else everything."""
    if "test" in splits:
        return splits["test"]
    if not all(r.from_files for r in splits.values()):  # arrays / Hub splits have separate loaders
        return splits.get("validation") or splits["train"]
    merged = None
    for records in splits.values():
        merged = records if merged is None else merged.concat(records)
    return merged


# ----------------------------------------------------------------------------- cross-validation
def cv_rows(task) -> tuple[Any, str]:
    """``omnitune cv``: the recipe's images as manifest rows (absolute path, class name), one per
    file, over every split of an ImageFolder directory or manifest (and data.validation_source /
    data.test_source); folds are stratified by class. IDX arrays and Hub datasets have no image
    files to list in a fold manifest and are refused, naming what to do instead."""
    import pandas as pd

    d = task.data_cfg
    paths: list[str] = []
    labels: list[str] = []
    for field, source in (("source", d.source), ("validation_source", d.validation_source),
                          ("test_source", d.test_source)):
        if not source:
            continue
        kind = source_kind(resolve_asset(source))
        if kind in ("idx", "hub"):
            what = "an IDX array folder" if kind == "idx" else "a Hub dataset"
            raise DataError(
                f"data.{field} {source}: cross-validation writes each fold as a manifest of image files, and "
                f"{what} has no files to list. Export the images to an ImageFolder directory "
                f"(<root>/<class>/<image>.png) or a CSV manifest ({d.path_column},{d.label_column}) and "
                f"set data.{field} to it; or use `omnitune train` with the source's own test split.")
        raw, _ = load_raw_splits(source, declared=d.labels if field == "source" else None,
                                 path_column=d.path_column, image_column=d.image_column,
                                 label_column=d.label_column, report=DataReport(source=source))
        for records in raw.values():
            paths += [os.path.abspath(k) for k in records.keys]
            labels += [str(v) for v in records.labels]
    frame = pd.DataFrame({d.path_column: paths, d.label_column: labels})
    # A file listed twice (two splits, or a manifest) must not land on both sides of a fold.
    return frame.drop_duplicates(subset=[d.path_column]).reset_index(drop=True), d.label_column
