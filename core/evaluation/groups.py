"""Per-group evaluation (``eval.groups``): every metric per group value, so a bias does not hide in
the average; for binary classification also fairlearn's MetricFrame view.

How the group of each evaluated sample is known, for every task and with no change to any task:
the core reads the evaluation *table* itself (CSV/TSV/JSONL/JSON/Parquet: ``eval.group_source``,
else ``data.test_source``, else the test table of a source folder, or ``omnitune eval --data``),
splits its rows into cells by the values of the group columns (sex x race...), writes each cell as
a table of the same format into a temporary folder, and reads each cell back through the task's own
``load_eval_dataset(cell, label_names)``. Each cell is scored by the run's evaluation
(:func:`omnitune.core.loop.trainer.evaluate_model`), and the metrics of a group value are the task's
``compute_metrics`` over the predictions of its cells together; so a group's metrics are exactly
what ``omnitune eval --data`` would report on that group's rows alone. The task's cleaning applies
per cell (a row it drops is counted in the merged data report). Columns whose values are relative
paths to files beside the table (image/audio manifests) are made absolute in the cells. The loss
of a group is the sample-weighted mean of its cells' losses (exact for tasks whose loss averages
over samples; for token-level tasks it weights by samples, not tokens).

Groups with fewer samples than ``eval.group_min_count`` are kept and flagged.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..base import assets
from ..base.data import SPLIT_ALIASES, read_table, require_columns, table_suffix
from ..base.errors import DataError, RecipeError
from ..base.task import DataReport

MISSING = "(missing)"
FAIRNESS_RATES = ("selection_rate", "tpr", "fpr")


# ----------------------------------------------------------------------------- the table and its cells
def group_source(group_source: str | None, data_source: str, test_source: str | None) -> str:
    """The table group metrics read in a training run: eval.group_source, else data.test_source,
    else the test table of a source folder."""
    if group_source:
        return group_source
    if test_source:
        return test_source
    path = Path(assets.resolve(data_source))
    if path.is_dir():
        for alias in SPLIT_ALIASES["test"]:
            found = sorted(p for p in path.glob(f"{alias}.*") if p.is_file())
            if found:
                return str(found[0])
    raise RecipeError("eval.groups: the group columns are read from a test table; set data.test_source, "
                      f"eval.group_source, or use a source folder with a test table (data.source is {data_source})")


def read_group_table(source: str, columns: Sequence[str], max_rows: int | None = None, seed: int = 0):
    """The evaluation table with its group columns checked (an error names the file and column);
    ``max_rows`` keeps a seeded random subset."""
    path = Path(assets.resolve(source))
    if path.is_dir():
        raise DataError(f"{source}: eval.groups needs a table file (CSV/TSV/JSONL/JSON/Parquet), not a folder")
    frame = read_table(path)
    require_columns(frame, list(columns), f"{source} (eval.groups)")
    if max_rows is not None and len(frame) > max_rows:
        keep = np.sort(np.random.default_rng(seed).permutation(len(frame))[:max_rows])
        frame = frame.iloc[keep]
    return frame.reset_index(drop=True), path


def group_values(frame, columns: Sequence[str]) -> list[tuple[str, ...]]:
    """Each row's group values as strings; empty or missing values are the group "(missing)"."""
    def text(v) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
            return MISSING
        return str(v).strip()

    return [tuple(text(v) for v in row) for row in frame[list(columns)].itertuples(index=False)]


def _absolutise_paths(frame, base: Path):
    """Columns whose values are all relative paths of files beside the table, made absolute, so the
    cells (written elsewhere) still point at the files."""
    frame = frame.copy()
    for col in frame.columns:
        values = frame[col]
        if values.dtype != object or len(values) == 0:
            continue
        first = values.iloc[0]
        if not (isinstance(first, str) and first and not Path(first).is_absolute() and (base / first).exists()):
            continue
        if all(isinstance(v, str) and (Path(v).is_absolute() or (base / v).exists()) for v in values):
            frame[col] = [v if Path(v).is_absolute() else str(base / v) for v in values]
    return frame


def _write_table(frame, path: Path) -> None:
    kind = path.suffix
    if kind == ".csv":
        frame.to_csv(path, index=False)
    elif kind == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif kind == ".parquet":
        frame.to_parquet(path, index=False)
    else:  # .json / .jsonl: JSON lines, which read_table reads for both
        frame.to_json(path, orient="records", lines=True, force_ascii=False)


# ----------------------------------------------------------------------------- evaluation
def evaluate_cells(task: Any, label_names: list[str] | None, frame, table_path: Path, columns: Sequence[str],
                   evaluate: Callable[[Any], tuple[dict, list, list]]) -> tuple[dict, DataReport]:
    """{cell key: (metrics, predictions, references)} for every combination of group values present,
    each cell read by the task's ``load_eval_dataset`` and scored by ``evaluate``; plus the merged
    data report of the cells."""
    keys = group_values(frame, columns)
    frame = _absolutise_paths(frame, table_path.parent)
    suffix = table_suffix(table_path)
    report = DataReport(source=str(table_path))
    report.rows_read["eval"] = len(frame)
    out: dict[tuple[str, ...], tuple[dict, list, list]] = {}
    with tempfile.TemporaryDirectory(prefix="omnitune-groups-") as tmp:
        for i, key in enumerate(sorted(set(keys))):
            rows = frame[[k == key for k in keys]]
            cell = Path(tmp) / f"cell_{i}{suffix if suffix in ('.csv', '.tsv', '.parquet') else '.jsonl'}"
            _write_table(rows, cell)
            try:
                dataset, cell_report = task.load_eval_dataset(str(cell), label_names)
            except DataError as exc:
                if "no usable rows" not in str(exc):
                    raise
                report.drop("eval", f"group {'/'.join(key)}: no usable rows", len(rows))
                continue
            for split, reasons in cell_report.dropped.items():
                for reason, n in reasons.items():
                    report.drop("eval", reason, n, cell_report.examples.get(reason, []))
            out[key] = evaluate(dataset)
    report.rows_kept["eval"] = sum(len(p) for _, p, _ in out.values())
    return out, report


def group_metrics(task: Any, cells: dict, columns: Sequence[str], min_count: int) -> dict[str, Any]:
    """Per column, per value: count, flagged (count < min_count) and the task's metrics over the
    value's cells; with several columns also every intersection (cell) of them."""
    def combine(parts: list[tuple[dict, list, list]]) -> dict[str, Any]:
        preds = [p for _, ps, _ in parts for p in ps]
        refs = [r for _, _, rs in parts for r in rs]
        metrics = {k: float(v) for k, v in task.compute_metrics(preds, refs).items()}
        n = len(preds)
        metrics["loss"] = sum(m["loss"] * len(ps) for m, ps, _ in parts) / max(n, 1)
        return {"count": n, "flagged": n < min_count, **metrics}

    out: dict[str, Any] = {"columns": {}, "overall": combine(list(cells.values())), "min_count": min_count}
    for j, col in enumerate(columns):
        values = sorted({key[j] for key in cells})
        out["columns"][col] = {v: combine([c for key, c in cells.items() if key[j] == v]) for v in values}
    if len(columns) > 1:
        out["intersection"] = {" & ".join(key): combine([c]) for key, c in sorted(cells.items())}
    for col, groups in out["columns"].items():  # the spread across groups large enough to trust
        solid = [g for g in groups.values() if not g["flagged"]]
        out.setdefault("gaps", {})[col] = {
            k: max(g[k] for g in solid) - min(g[k] for g in solid)
            for k in out["overall"] if k not in ("count", "flagged") and len(solid) > 1}
    return out


def fairness_view(task: Any, cells: dict, columns: Sequence[str], positive: int) -> dict[str, Any] | None:
    """fairlearn's MetricFrame view for binary classification (class index ``positive`` is the
    selected outcome): selection rate, TPR, FPR per group; demographic-parity difference and ratio
    and equalised-odds difference per column. None when the predictions are not binary class indices."""
    from fairlearn.metrics import (MetricFrame, count, demographic_parity_difference, demographic_parity_ratio,
                                   equalized_odds_difference, false_positive_rate, selection_rate,
                                   true_positive_rate)

    from ..loop.trainer import metric_inputs

    y_true, y_pred, sensitive = [], [], []
    for key, (_, preds, refs) in cells.items():
        p, r = metric_inputs(task, preds, refs)
        if not all(isinstance(x, (int, np.integer)) for x in list(p) + list(r)):
            return None
        y_true += [int(x == positive) for x in r]
        y_pred += [int(x == positive) for x in p]
        sensitive += [key] * len(p)
    if not y_true:
        return None
    import pandas as pd

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out: dict[str, Any] = {}
    for j, col in enumerate(columns):
        feature = pd.Series([k[j] for k in sensitive], name=col)
        frame = MetricFrame(metrics={"count": count, "selection_rate": selection_rate, "tpr": true_positive_rate,
                                     "fpr": false_positive_rate},
                            y_true=y_true, y_pred=y_pred, sensitive_features=feature)
        by_group = {str(g): {k: float(v) for k, v in row.items()} for g, row in frame.by_group.iterrows()}
        out[col] = {"by_group": by_group,
                    "demographic_parity_difference": float(demographic_parity_difference(
                        y_true, y_pred, sensitive_features=feature)),
                    "demographic_parity_ratio": float(demographic_parity_ratio(
                        y_true, y_pred, sensitive_features=feature)),
                    "equalized_odds_difference": float(equalized_odds_difference(
                        y_true, y_pred, sensitive_features=feature))}
    return out


def positive_index(label_names: list[str] | None, positive_label: str | None) -> int | None:
    """The class index of the selected outcome for a binary label set (None otherwise)."""
    if not label_names or len(label_names) != 2:
        return None
    if positive_label is None:
        return 1
    if positive_label not in label_names:
        raise RecipeError(f"eval.positive_label: {positive_label!r} is not one of the labels {label_names}")
    return label_names.index(positive_label)


def evaluate_groups(task: Any, label_names: list[str] | None, source: str, columns: Sequence[str],
                    evaluate: Callable[[Any], tuple[dict, list, list]], *, min_count: int = 30,
                    positive_label: str | None = None, max_rows: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Everything ``metrics.json["groups"]`` holds: per-group metrics, intersections, gaps, the
    fairness view (binary classification) and the merged data report of the cells."""
    if not columns:
        raise RecipeError("eval.groups: name at least one column")
    frame, path = read_group_table(source, columns, max_rows, seed)
    cells, report = evaluate_cells(task, label_names, frame, path, columns, evaluate)
    if not cells:
        raise DataError(f"{source}: no group has usable rows (dropped: {report.dropped.get('eval', {})})")
    out = {"source": source, "group_columns": list(columns), **group_metrics(task, cells, columns, min_count)}
    pos = positive_index(label_names, positive_label)
    if pos is not None:
        view = fairness_view(task, cells, columns, pos)
        if view is not None:
            out["fairness"] = {"positive_label": label_names[pos], "columns": view}
    out["data_report"] = report.to_dict()
    return out


# ----------------------------------------------------------------------------- report
def _f(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def groups_md(result: dict[str, Any], chart: str | None = None) -> str:
    """Markdown: one table per group column (every metric, count, flag), gaps, the fairness view."""
    # Micro and weighted averages repeat accuracy or the macro view; metrics.json keeps them all.
    metrics = [k for k in result["overall"] if k not in ("count", "flagged")
               and not k.endswith(("_micro", "_weighted"))]
    lines = [f"Evaluation table `{result['source']}`; groups with fewer than {result['min_count']} samples are "
             "flagged ⚠ (kept, but their metrics are noisy). Micro/weighted averages are in metrics.json.", ""]

    def table(title: str, groups: dict[str, dict]) -> list[str]:
        rows = [f"**{title}**", "", "| group | count | " + " | ".join(metrics) + " |",
                "|---|---|" + "---|" * len(metrics)]
        for name, g in groups.items():
            flag = " ⚠" if g["flagged"] else ""
            rows.append(f"| {name}{flag} | {g['count']} | " + " | ".join(_f(g.get(k, "")) for k in metrics) + " |")
        return rows + [""]

    lines += table("all", {"all": result["overall"]})
    for col, groups in result["columns"].items():
        lines += table(col, groups)
        gap = result.get("gaps", {}).get(col)
        if gap:
            lines += ["Largest gap between unflagged groups: " + ", ".join(f"{k} {v:.4f}" for k, v in gap.items()
                                                                        if k in metrics[:3] + ["loss"]), ""]
    if "intersection" in result:
        lines += table(" x ".join(result["group_columns"]), result["intersection"])
    fair = result.get("fairness")
    if fair:
        lines += [f"**Fairness view (fairlearn MetricFrame; selected outcome: `{fair['positive_label']}`)**", "",
                  "| column | group | count | selection rate | TPR | FPR |", "|---|---|---|---|---|---|"]
        for col, v in fair["columns"].items():
            for g, r in v["by_group"].items():
                lines.append(f"| {col} | {g} | {int(r['count'])} | {r['selection_rate']:.4f} | {r['tpr']:.4f} | "
                             f"{r['fpr']:.4f} |")
        lines += ["", "| column | demographic parity difference | demographic parity ratio | "
                  "equalised odds difference |", "|---|---|---|---|"]
        for col, v in fair["columns"].items():
            lines.append(f"| {col} | {v['demographic_parity_difference']:.4f} | {v['demographic_parity_ratio']:.4f} | "
                         f"{v['equalized_odds_difference']:.4f} |")
        lines.append("")
        if chart:
            lines += [f"![group rates]({chart})", ""]
    return "\n".join(lines)


def fairness_png(result: dict[str, Any], path: Path) -> Path | None:
    """Bar chart: selection rate, TPR and FPR per group, one panel per group column."""
    fair = result.get("fairness")
    if not fair:
        return None
    from .plotting import pyplot

    plt = pyplot()
    cols = list(fair["columns"])
    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 3.8), squeeze=False)
    for ax, col in zip(axes[0], cols):
        groups = fair["columns"][col]["by_group"]
        names = list(groups)
        x = np.arange(len(names))
        for i, rate in enumerate(FAIRNESS_RATES):
            ax.bar(x + (i - 1) * 0.27, [groups[g][rate] for g in names], width=0.27, label=rate)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"{col} (DP diff {fair['columns'][col]['demographic_parity_difference']:.3f})")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
