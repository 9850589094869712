"""Data-size curves: ``omnitune curve RECIPE --sizes 100,300,1000,3000 [--repeats 3] [--compare scratch,lora]``.

When does pretraining pay off? The recipe is trained at each training-set size, from pretrained
weights and from scratch (``model.pretrained: false``: the same architecture, random weights), and
with any other strategies listed; the test metric is plotted against the size on a log axis.

The data, like cross-validation's (core/studies/cv.py): the recipe's rows are read once (every split of the
source, or the task's manifest rows for file tasks), exact duplicates dropped, and a **fixed** test
and validation split carved off (``data.test_size`` / ``data.val_size``, stratified, ``seed``): every
point of the curve is scored on the same test rows. The rest is the pool. For repeat ``r`` (seed
``seed + r``) the pool is put in one stratified order (each class shuffled, then the classes
interleaved by rank so every prefix keeps the class mix within one row per class); the subset of
size ``n`` is its first ``n`` rows, so the subsets of one repeat are **nested** (the 300 rows
include the 100) and stratified. The run for (variant, size, repeat) is an ordinary run on
``train.csv`` (the subset), ``validation.csv`` and ``test.csv`` with seed ``seed + r`` (so a
from-scratch model's initial weights differ per repeat too). Every run gets the full sorted class
list (``data.labels``) so a small subset trains the same head.

Variants: ``pretrained`` (the recipe as written) always; ``scratch``; ``full`` / ``feature_extraction``
(``finetune.strategy``); ``lora`` / ``ia3`` / ``bottleneck`` (``finetune.peft.method``).

The crossover: the smallest size at which a variant's mean reaches the pretrained mean after being
below it (or falls below after being above), interpolated linearly in log(size) between the two
measured sizes around the change. The outputs: curve.csv (every run), curve.json (mean, std, min,
max per variant and size, crossovers), curve.md and curve.png.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..base.errors import DataError, OmnituneError
from ..base.recipe import BaseRecipe

VARIANTS: dict[str, dict[str, Any]] = {
    "pretrained": {},
    "scratch": {"model.pretrained": False},
    "full": {"finetune.strategy": "full"},
    "feature_extraction": {"finetune.strategy": "feature_extraction"},
    "lora": {"finetune.peft": {"method": "lora"}},
    "ia3": {"finetune.peft": {"method": "ia3"}},
    "bottleneck": {"finetune.peft": {"method": "bottleneck"}},
}


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in str(text).split(",") if s.strip()})
    except ValueError:
        raise OmnituneError(f"--sizes {text!r}: expected comma-separated integers, e.g. 100,300,1000") from None
    if not sizes or sizes[0] <= 0:
        raise OmnituneError(f"--sizes {text!r}: sizes must be positive")
    return sizes


def parse_variants(text: str | Sequence[str] | None) -> list[str]:
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else (text or [])) if s.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise OmnituneError(f"--compare: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    return ["pretrained"] + [n for n in dict.fromkeys(names) if n != "pretrained"]


# ----------------------------------------------------------------------------- nested, stratified subsets
def stratified_order(labels: Sequence[Any] | None, n: int, seed: int) -> np.ndarray:
    """A seeded order of 0..n-1 whose every prefix keeps the class mix: each class is shuffled and
    item k of a class with m items gets the key (k + u) / m (u uniform in [0, 1)); sorting by the key
    interleaves the classes in proportion, so a prefix of any length holds each class's share
    within one item. Without labels, a plain seeded permutation."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return rng.permutation(n)
    keys = np.asarray([str(x) for x in labels])
    position = np.empty(n, dtype=float)
    for cls in sorted(set(keys)):
        idx = np.flatnonzero(keys == cls)
        rng.shuffle(idx)
        position[idx] = (np.arange(len(idx)) + rng.random(len(idx))) / len(idx)
    return np.argsort(position, kind="stable")


def nested_subsets(labels: Sequence[Any] | None, n: int, sizes: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    """{size: row indices}: prefixes of one stratified order, so each subset contains the smaller ones."""
    if max(sizes) > n:
        raise DataError(f"--sizes: the largest size {max(sizes)} is more than the {n} training rows available "
                        "(after the fixed validation and test rows are set aside)")
    order = stratified_order(labels, n, seed)
    return {s: np.sort(order[:s]) for s in sizes}


# ----------------------------------------------------------------------------- data
def _rows(recipe: BaseRecipe, task):
    """The recipe's rows (as cross-validation reads them) and the column to stratify by."""
    from ..base.task import CrossValidatable
    from .cv import table_rows

    frame, stratify = task.cv_rows() if isinstance(task, CrossValidatable) else table_rows(recipe)
    if stratify is not None and stratify not in frame.columns:
        raise OmnituneError(f"task {recipe.task}: rows have no stratify column {stratify!r}")
    frame = frame.drop_duplicates().reset_index(drop=True)
    declared = recipe.data.labels
    if declared and stratify == recipe.data.label_column:
        # Rows the task would drop as unknown labels (data.unknown_labels: drop) must not take places
        # in a subset: a subset of n rows trains on n rows.
        frame = frame[frame[stratify].astype(str).isin([str(x) for x in declared])].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"data.source {recipe.data.source}: no rows")
    return frame, stratify


def write_curve_data(recipe: BaseRecipe, task, sizes: Sequence[int], repeats: int, out: Path) -> dict[str, Any]:
    """Write validation.csv, test.csv (fixed) and r{r}/n{size}.csv subsets; returns what the runs need."""
    from ..base.data import stratified_split

    frame, stratify = _rows(recipe, task)
    labels = frame[stratify].tolist() if stratify else ["_"] * len(frame)
    pool, val, test = stratified_split(labels, [recipe.data.val_size, recipe.data.test_size], recipe.seed)
    out.mkdir(parents=True, exist_ok=True)
    frame.iloc[val].to_csv(out / "validation.csv", index=False)
    frame.iloc[test].to_csv(out / "test.csv", index=False)
    rest = frame.iloc[pool].reset_index(drop=True)
    rest_labels = rest[stratify].tolist() if stratify else None
    files: dict[tuple[int, int], Path] = {}
    for r in range(repeats):
        subsets = nested_subsets(rest_labels, len(rest), sizes, recipe.seed + r)
        (out / f"r{r}").mkdir(exist_ok=True)
        for size, idx in subsets.items():
            files[(r, size)] = out / f"r{r}" / f"n{size}.csv"
            rest.iloc[idx].to_csv(files[(r, size)], index=False)
    classes = sorted({str(v) for v in labels}) if stratify and not recipe.data.labels else None
    return {"files": files, "validation": out / "validation.csv", "test": out / "test.csv", "labels": classes,
            "pool": len(rest), "validation_rows": len(val), "test_rows": len(test), "stratify": stratify}


# ----------------------------------------------------------------------------- summary
def summarise(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[int, dict[str, float]]]:
    out: dict[str, dict[int, dict[str, float]]] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        out[variant] = {}
        for size in sorted({r["size"] for r in rows if r["variant"] == variant}):
            v = np.asarray([r[metric] for r in rows if r["variant"] == variant and r["size"] == size], dtype=float)
            out[variant][size] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                                  "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}
    return out


def crossover(sizes: Sequence[int], base: Sequence[float], other: Sequence[float]) -> float | None:
    """The size (log-interpolated) where ``other - base`` first changes sign, or None.

    >>> round(crossover([100, 1000], [0.8, 0.85], [0.6, 0.95]), 1)  # diff -0.2 -> +0.1: 2/3 of the way in log
    464.2
    """
    diff = [o - b for b, o in zip(base, other)]
    prev = None  # the last size where the two differed; a tie alone is no crossing
    for i, d in enumerate(diff):
        if d == 0:
            continue
        if prev is not None and (diff[prev] > 0) != (d > 0):
            t = diff[prev] / (diff[prev] - d)
            return float(math.exp(math.log(sizes[prev]) + t * (math.log(sizes[i]) - math.log(sizes[prev]))))
        prev = i
    return None


def crossovers(summary: dict, mode: str) -> dict[str, Any]:
    base = summary["pretrained"]
    out = {}
    for variant, points in summary.items():
        if variant == "pretrained":
            continue
        sizes = [s for s in base if s in points]
        b, o = [base[s]["mean"] for s in sizes], [points[s]["mean"] for s in sizes]
        at = crossover(sizes, b, o)
        better = [(x > y) if mode == "max" else (x < y) for x, y in zip(b, o)]
        out[variant] = {"crossover_size": at,
                        "pretrained_better_at": [s for s, w in zip(sizes, better) if w]}
    return out


def curve_png(summary: dict, metric: str, path: Path, title: str) -> Path:
    from ..evaluation.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for variant, points in summary.items():
        sizes = sorted(points)
        mean = np.array([points[s]["mean"] for s in sizes])
        std = np.array([points[s]["std"] for s in sizes])
        ax.plot(sizes, mean, "o-", label=variant)
        if any(points[s]["n"] > 1 for s in sizes):
            ax.fill_between(sizes, mean - std, mean + std, alpha=0.2)
    ax.set_xscale("log")
    measured = sorted({s for points in summary.values() for s in points})
    ax.set_xticks(measured, [str(s) for s in measured])  # the measured sizes, not powers of ten
    ax.minorticks_off()
    ax.set_xlabel("training samples (log scale)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curve_md(recipe_name: str, metric: str, summary: dict, cross: dict, data: dict, repeats: int,
             seconds: float, eval_cap: int | None = None) -> str:
    sizes = sorted({s for p in summary.values() for s in p})
    spread = "mean ± sample std over repeats" if repeats > 1 else "one repeat"
    lines = [f"# Data-size curve: {recipe_name}", "",
             f"Test `{metric}` ({spread}) against the number of training samples. Fixed test set of "
             f"{data['test_rows']} rows and validation set of {data['validation_rows']} rows"
             f"{f' (each run scores a seeded stratified {eval_cap} of each: data.max_eval_samples)' if eval_cap else ''}; nested "
             f"{'stratified' if data['stratify'] else 'unstratified'} subsets of a pool of {data['pool']} rows; "
             f"{repeats} repeat(s) (seeds differ per repeat). Total time {seconds:.0f} s.", "",
             "| variant | " + " | ".join(str(s) for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for variant, points in summary.items():
        cells = [f"{points[s]['mean']:.4f}" + (f" ± {points[s]['std']:.4f}" if points[s]["n"] > 1 else "")
                 if s in points else "" for s in sizes]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "![curve](curve.png)", ""]
    for variant, c in cross.items():
        if c["crossover_size"] is not None:
            lines.append(f"- **{variant}** crosses pretrained at about **{c['crossover_size']:.0f}** samples "
                         "(log-interpolated between the measured sizes).")
        else:
            where = "every" if len(c["pretrained_better_at"]) == len(sizes) else (
                "no" if not c["pretrained_better_at"] else "some")
            lines.append(f"- **{variant}**: no crossover within these sizes (pretrained better at {where} size).")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the run
def run_curve(recipe: BaseRecipe, task, sizes: Sequence[int], repeats: int, variants: Sequence[str], out_dir: Path,
              train_fn: Callable, metric: str, mode: str) -> dict[str, Any]:
    """Train every (variant, size, repeat) with ``train_fn(recipe, overrides)``; write the outputs."""
    if repeats < 1:
        raise OmnituneError(f"--repeats must be at least 1 (got {repeats})")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    data = write_curve_data(recipe, task, sizes, repeats, out_dir / "data")
    rows = []
    for variant in variants:
        for size in sizes:
            for r in range(repeats):
                overrides = {**VARIANTS[variant], "data.source": str(data["files"][(r, size)]),
                             "data.validation_source": str(data["validation"]), "data.test_source": str(data["test"]),
                             "data.max_samples": None, "seed": recipe.seed + r,
                             "output.dir": str(out_dir / "runs"), "output.run_name": f"{variant}-n{size}-r{r}"}
                if data["labels"] is not None:
                    overrides["data.labels"] = data["labels"]
                result = train_fn(recipe, overrides)
                test = result.metrics.get("test") or {}
                if metric not in test:
                    raise OmnituneError(f"{result.run_dir}: no test {metric} to plot")
                kept = json.loads((Path(result.run_dir) / "data_report.json").read_text())["rows_kept"]
                rows.append({"variant": variant, "size": size, "repeat": r, metric: float(test[metric]),
                             # rows the run trained on: the subset less any row the task's cleaning dropped
                             "train_rows": kept.get("train"),
                             "train_seconds": result.metrics["timing"]["train_seconds"],
                             "steps": result.metrics.get("steps"), "run_dir": str(result.run_dir)})
                _write_rows(rows, metric, out_dir / "curve.csv")  # partial results survive an interruption
    seconds = time.perf_counter() - t0
    summary = summarise(rows, metric)
    cross = crossovers(summary, mode)
    curve_png(summary, metric, out_dir / "curve.png", f"{recipe.name}: test {metric} vs data size")
    (out_dir / "curve.md").write_text(curve_md(recipe.name, metric, summary, cross, data, repeats, seconds,
                                               recipe.data.max_eval_samples))
    result = {"recipe": recipe.name, "metric": metric, "mode": mode, "sizes": list(sizes), "repeats": repeats,
              "variants": list(variants), "summary": {v: {str(s): p for s, p in pts.items()} for v, pts in summary.items()},
              "crossovers": cross, "seconds": round(seconds, 1), "pool": data["pool"],
              "test_rows": data["test_rows"], "validation_rows": data["validation_rows"]}
    (out_dir / "curve.json").write_text(json.dumps(result, indent=1))
    return {**result, "rows": rows, "curve_dir": out_dir}


def _write_rows(rows: list[dict], metric: str, path: Path) -> None:
    keys = ["variant", "size", "repeat", metric, "train_rows", "train_seconds", "steps", "run_dir"]
    lines = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]
    path.write_text("\n".join(lines) + "\n")
