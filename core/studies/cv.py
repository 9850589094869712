"""Stratified K-fold cross-validation: ``omnitune cv RECIPE --folds K``.

The recipe's data is read once, exact duplicates are dropped (a duplicate on both sides of a fold
boundary would leak), and the rows are dealt into K folds, stratified by class when there is one.
Fold i is a full, ordinary run on data written for it: ``train.csv`` (the other K-1 folds; the
task carves its validation split from it, as it does for any source without one) and ``test.csv``
(fold i, never seen in training or checkpoint selection). Nothing in the task or the trainer
knows about folds.

Where the rows come from:

- Tabular tasks (text): the source table, a folder of split tables or an asset resolving to them;
  fold i runs with ``data.source=fold_i/`` (a folder of split tables every tabular task reads).
- Tasks whose data are files (images, audio) list their source as *manifest rows* through an
  optional task method ``cv_rows()``. It returns ``(frame, stratify_column)``: a pandas DataFrame
  the same task reads back from a CSV manifest (absolute file paths plus the label / transcript
  column) and the column to stratify by, or None for unstratified folds. It raises DataError for sources that have no files to list (IDX
  arrays, ``hub:`` datasets). Fold i then runs with ``data.source=fold_i/train.csv`` and
  ``data.test_source=fold_i/test.csv``; with a stratify column and no declared ``data.labels``,
  every fold is given the full sorted class list, so all folds train the same head even when a
  rare class is missing from one fold's training rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..base import assets
from ..base.data import SPLIT_ALIASES, is_hub, read_table
from ..base.errors import DataError, OmnituneError
from ..base.recipe import BaseRecipe


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
    if is_hub(source):
        raise OmnituneError(f"data.source {source}: cross-validation needs a local table or folder "
                            "(save the Hub dataset to a file first)")
    if path.is_dir():
        split_names = {alias for aliases in SPLIT_ALIASES.values() for alias in aliases}
        tables = [read_table(p) for p in sorted(path.iterdir()) if p.is_file() and p.stem.split(".")[0]
                  in split_names]
        if not tables:
            raise DataError(f"{path}: no train/validation/test tables to cross-validate on")
        return pd.concat(tables, ignore_index=True)
    return read_table(path)


@dataclass
class Folds:
    """The fold folders written for a recipe and how each fold's run reads them."""

    dirs: list[Path]
    stratify: str | None  # the column the folds are stratified by, or None
    manifests: bool  # True: the task's own manifests (train.csv as data.source, test.csv as test_source)
    labels: list[str] | None = None  # the class list given to every fold (manifests, labels undeclared)

    def overrides(self, i: int) -> dict[str, Any]:
        fold_dir = self.dirs[i]
        if not self.manifests:
            return {"data.source": str(fold_dir), "data.validation_source": None, "data.test_source": None}
        out = {"data.source": str(fold_dir / "train.csv"), "data.validation_source": None,
               "data.test_source": str(fold_dir / "test.csv")}
        if self.labels is not None:
            out["data.labels"] = list(self.labels)
        return out


def table_rows(recipe: BaseRecipe):
    """A table source's rows (its separate validation/test files included) and the label column to
    stratify by (None when the table has none)."""
    d = recipe.data
    frame = _read_source(d.source)
    if d.validation_source or d.test_source:  # separate split files: cross-validate over all of them
        import pandas as pd

        frame = pd.concat([frame] + [_read_source(s) for s in (d.validation_source, d.test_source) if s],
                          ignore_index=True)
    return frame, (d.label_column if d.label_column in frame.columns else None)


def write_folds(recipe: BaseRecipe, k: int, out_dir: Path, task) -> Folds:
    """Write fold_i/train.csv and fold_i/test.csv for every fold. Nothing is written (and no run
    starts) when the source cannot be listed or split. ``task`` is the recipe's task (built by the
    caller: this module never imports the API that runs it)."""
    from ..base.task import CrossValidatable

    lists_files = isinstance(task, CrossValidatable)  # tasks whose data are files list them; tables are read here
    if not lists_files:
        frame, stratify = table_rows(recipe)
    else:
        frame, stratify = task.cv_rows()
        if stratify is not None and stratify not in frame.columns:
            raise OmnituneError(f"task {recipe.task}: cv rows have no stratify column {stratify!r}")
    frame = frame.drop_duplicates().reset_index(drop=True)
    if frame.empty:
        raise DataError(f"data.source {recipe.data.source}: no rows to cross-validate on")
    labels = frame[stratify].tolist() if stratify is not None else None
    folds = stratified_folds(labels, len(frame), k, recipe.seed)
    classes = None
    if lists_files and stratify is not None and not recipe.data.labels:
        classes = sorted({str(v) for v in labels})
    dirs = []
    for i, held_out in enumerate(folds):
        fold_dir = Path(out_dir) / f"fold_{i}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        mask = np.zeros(len(frame), dtype=bool)
        mask[held_out] = True
        frame[~mask].to_csv(fold_dir / "train.csv", index=False)
        frame[mask].to_csv(fold_dir / "test.csv", index=False)
        dirs.append(fold_dir)
    return Folds(dirs=dirs, stratify=stratify, manifests=lists_files, labels=classes)


def summarise(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and (sample) standard deviation of every numeric metric across folds."""
    keys = [k for k in per_fold[0] if all(isinstance(f.get(k), (int, float)) for f in per_fold)]
    out = {}
    for key in keys:
        values = np.asarray([f[key] for f in per_fold], dtype=float)
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def run_cv(recipe: BaseRecipe, k: int, out_dir: Path, train_fn: Callable, main_metric: str,
           task) -> dict[str, Any]:
    """Run every fold with ``train_fn(recipe, overrides)``; write cv_report.md / cv_metrics.json / cv_folds.csv."""
    out_dir = Path(out_dir)
    folds = write_folds(recipe, k, out_dir / "data", task=task)
    per_fold = []
    for i in range(len(folds.dirs)):
        result = train_fn(recipe, {**folds.overrides(i), "output.dir": str(out_dir / "runs"),
                                   "output.run_name": f"fold-{i}"})
        metrics = dict(result.metrics["test"])
        metrics["train_seconds"] = result.metrics["timing"]["train_seconds"]
        per_fold.append(metrics)
    summary = summarise(per_fold)
    (out_dir / "cv_metrics.json").write_text(json.dumps({"folds": per_fold, "summary": summary}, indent=1))
    keys = list(summary)
    lines = ["fold," + ",".join(keys)] + [f"{i}," + ",".join(f"{f[k]:.6g}" for k in keys) for i, f in enumerate(per_fold)]
    (out_dir / "cv_folds.csv").write_text("\n".join(lines) + "\n")
    how = (f"Stratified by `{folds.stratify}`" if folds.stratify else "Unstratified (no class label to stratify by)")
    md = [f"# {k}-fold cross-validation: {recipe.name}", "",
          f"{how}, seed {recipe.seed}; each fold's metrics are on its "
          "held-out rows (its test split), never used for training or checkpoint selection.", "",
          f"**{main_metric}: {summary[main_metric]['mean']:.4f} ± {summary[main_metric]['std']:.4f}** "
          "(mean ± sample std over folds)" if main_metric in summary else "", "",
          "| metric | mean | std |", "|---|---|---|"]
    md += [f"| {key} | {v['mean']:.4f} | {v['std']:.4f} |" for key, v in summary.items()]
    md += ["", "## Per fold", "", "| fold | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    md += [f"| {i} | " + " | ".join(f"{f[key]:.4f}" for key in keys) + " |" for i, f in enumerate(per_fold)]
    (out_dir / "cv_report.md").write_text("\n".join(md) + "\n")
    return {"folds": per_fold, "summary": summary, "cv_dir": out_dir}
