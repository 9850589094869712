"""Stratified K-fold cross-validation: ``omnitune cv RECIPE --folds K``.

The recipe's data (a local table, a folder of split tables, or an asset) is read once, exact
duplicate rows are dropped (a duplicate on both sides of a fold boundary would leak), and the rows
are dealt into K folds stratified by the label column. Fold i is a full, ordinary run whose data
is a folder written for it: ``train.csv`` (the other K-1 folds; the task carves its validation split
from it, as it does for any source without one) and ``test.csv`` (fold i, never seen in training or
checkpoint selection). Nothing in the task or the trainer knows about folds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import assets
from .data import read_table
from .errors import DataError, OmnituneError
from .recipe import BaseRecipe


def stratified_folds(labels: list[Any] | None, n_rows: int, k: int, seed: int) -> list[np.ndarray]:
    """Row indices of each of ``k`` folds: every class is shuffled (seeded) and dealt round-robin,
    so each fold holds ~1/k of every class; without labels the rows are dealt unstratified."""
    if k < 2:
        raise OmnituneError(f"--folds must be at least 2 (got {k})")
    if n_rows < k:
        raise DataError(f"{n_rows} rows cannot make {k} folds")
    rng = np.random.default_rng(seed)
    keys = np.asarray([str(x) for x in labels]) if labels is not None else np.zeros(n_rows, dtype=str)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for cls in sorted(set(keys)):
        idx = np.flatnonzero(keys == cls)
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            # Continue the round-robin across classes so small classes do not all start at fold 0.
            folds[(offset + j) % k].append(int(i))
        offset += len(idx)
    return [np.sort(np.asarray(f, dtype=int)) for f in folds]


def _read_source(source: str):
    import pandas as pd

    path = Path(assets.resolve(source))
    if source.startswith("hub:"):
        raise OmnituneError(f"data.source {source}: cross-validation needs a local table or folder "
                            "(save the Hub dataset to a file first)")
    if path.is_dir():
        tables = [read_table(p) for p in sorted(path.iterdir()) if p.is_file() and p.stem.split(".")[0]
                  in ("train", "validation", "valid", "dev", "val", "test")]
        if not tables:
            raise DataError(f"{path}: no train/validation/test tables to cross-validate on")
        return pd.concat(tables, ignore_index=True)
    return read_table(path)


def write_folds(recipe: BaseRecipe, k: int, out_dir: Path) -> list[Path]:
    """Write fold_i/train.csv and fold_i/test.csv for every fold; returns the fold folders."""
    d = recipe.data
    frame = _read_source(d.source)
    if d.validation_source or d.test_source:  # separate split files: cross-validate over all of them
        import pandas as pd

        frame = pd.concat([frame] + [_read_source(s) for s in (d.validation_source, d.test_source) if s],
                          ignore_index=True)
    frame = frame.drop_duplicates().reset_index(drop=True)
    labels = frame[d.label_column].tolist() if d.label_column in frame.columns else None
    folds = stratified_folds(labels, len(frame), k, recipe.seed)
    dirs = []
    for i, held_out in enumerate(folds):
        fold_dir = Path(out_dir) / f"fold_{i}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        mask = np.zeros(len(frame), dtype=bool)
        mask[held_out] = True
        frame[~mask].to_csv(fold_dir / "train.csv", index=False)
        frame[mask].to_csv(fold_dir / "test.csv", index=False)
        dirs.append(fold_dir)
    return dirs


def summarise(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and (sample) standard deviation of every numeric metric across folds."""
    keys = [k for k in per_fold[0] if all(isinstance(f.get(k), (int, float)) for f in per_fold)]
    out = {}
    for key in keys:
        values = np.asarray([f[key] for f in per_fold], dtype=float)
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def run_cv(recipe: BaseRecipe, k: int, out_dir: Path, train_fn: Callable, main_metric: str) -> dict[str, Any]:
    """Run every fold with ``train_fn(recipe, overrides)``; write cv_report.md / cv_metrics.json / cv_folds.csv."""
    out_dir = Path(out_dir)
    fold_dirs = write_folds(recipe, k, out_dir / "data")
    per_fold = []
    for i, fold_dir in enumerate(fold_dirs):
        result = train_fn(recipe, {"data.source": str(fold_dir), "data.validation_source": None,
                                   "data.test_source": None, "output.dir": str(out_dir / "runs"),
                                   "output.run_name": f"fold-{i}"})
        metrics = dict(result.metrics["test"])
        metrics["train_seconds"] = result.metrics["timing"]["train_seconds"]
        per_fold.append(metrics)
    summary = summarise(per_fold)
    (out_dir / "cv_metrics.json").write_text(json.dumps({"folds": per_fold, "summary": summary}, indent=1))
    keys = list(summary)
    lines = ["fold," + ",".join(keys)] + [f"{i}," + ",".join(f"{f[k]:.6g}" for k in keys) for i, f in enumerate(per_fold)]
    (out_dir / "cv_folds.csv").write_text("\n".join(lines) + "\n")
    md = [f"# {k}-fold cross-validation: {recipe.name}", "",
          f"Stratified by `{recipe.data.label_column}`, seed {recipe.seed}; each fold's metrics are on its "
          "held-out rows (its test split), never used for training or checkpoint selection.", "",
          f"**{main_metric}: {summary[main_metric]['mean']:.4f} ± {summary[main_metric]['std']:.4f}** "
          "(mean ± sample std over folds)" if main_metric in summary else "", "",
          "| metric | mean | std |", "|---|---|---|"]
    md += [f"| {key} | {v['mean']:.4f} | {v['std']:.4f} |" for key, v in summary.items()]
    md += ["", "## Per fold", "", "| fold | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    md += [f"| {i} | " + " | ".join(f"{f[key]:.4f}" for key in keys) + " |" for i, f in enumerate(per_fold)]
    (out_dir / "cv_report.md").write_text("\n".join(md) + "\n")
    return {"folds": per_fold, "summary": summary, "cv_dir": out_dir}
