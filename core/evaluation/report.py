"""Run reports: learning curves, confusion matrix, per-class table, report.md and a model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .plotting import pyplot


def learning_curves_png(history: list[dict[str, Any]], main_metric: str, path: Path) -> Path | None:
    """Train and validation loss, and the validation main metric, against optimiser steps."""
    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    val = [(h["step"], h["val_loss"], h.get(f"val_{main_metric}")) for h in history if "val_loss" in h]
    if not train and not val:
        return None
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if train:
        ax1.plot(*zip(*train), label="train loss", alpha=0.8)
    if val:
        ax1.plot([v[0] for v in val], [v[1] for v in val], "o-", label="validation loss")
        ax2.plot([v[0] for v in val], [v[2] for v in val], "o-", color="tab:green")
    ax1.set_xlabel("optimiser step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.set_xlabel("optimiser step")
    ax2.set_ylabel(f"validation {main_metric}")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix_png(refs: Sequence[int], preds: Sequence[int], names: Sequence[str], path: Path,
                         title: str = "Confusion matrix") -> Path:
    n = len(names)
    cm = np.zeros((n, n), dtype=int)
    for r, p in zip(refs, preds):
        cm[r, p] += 1
    plt = pyplot()
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_class_table(refs: Sequence[int], preds: Sequence[int], names: Sequence[str]) -> str:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(refs, preds, labels=list(range(len(names))), zero_division=0)
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    rows += [f"| {n} | {a:.3f} | {b:.3f} | {c:.3f} | {d} |" for n, a, b, c, d in zip(names, p, r, f, s)]
    return "\n".join(rows)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def metrics_table(columns: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per metric, one column per split."""
    keys = sorted({k for m in columns.values() for k, v in m.items() if isinstance(v, (int, float))})
    rows = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for k in keys:
        rows.append(f"| {k} | " + " | ".join(_fmt(m.get(k, "")) for m in columns.values()) + " |")
    return "\n".join(rows)


def samples_md(samples: dict[str, dict[str, Any]]) -> str:
    """The scores of a task's samples (``metrics["samples"]``: stage -> metric -> value) as a table
    with one column per stage and, when both are there, the change from before to after."""
    stages = [s for s in ("before", "after") if isinstance(samples.get(s), dict)]
    keys = sorted({k for s in stages for k, v in samples[s].items() if isinstance(v, (int, float))})
    both = len(stages) == 2
    rows = ["| metric | " + " | ".join(stages) + (" | change |" if both else " |"),
            "|---|" + "---|" * (len(stages) + both)]
    for k in keys:
        values = [samples[s].get(k) for s in stages]
        cells = [_fmt(v) if v is not None else "" for v in values]
        if both:
            cells.append(_fmt(float(values[1]) - float(values[0]))
                         if all(isinstance(v, (int, float)) for v in values) else "")
        rows.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def data_report_md(report: dict[str, Any]) -> str:
    lines = [f"Source: `{report['source']}`", "", "| split | rows read | dropped | kept |", "|---|---|---|---|"]
    for split in report["rows_kept"]:
        dropped = report["dropped"].get(split, {})
        why = ", ".join(f"{n} {k}" for k, n in dropped.items()) or "none"
        lines.append(f"| {split} | {report['rows_read'].get(split, '')} | {why} | {report['rows_kept'][split]} |")
    if report.get("examples"):
        lines += ["", "Examples of dropped items:"]
        lines += [f"- {k}: {', '.join(v)}" for k, v in report["examples"].items()]
    if report.get("label_counts"):
        lines += ["", "Label counts: " + "; ".join(
            f"{s}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for s, c in report["label_counts"].items())]
    lines += [f"- {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


def write_report(run_dir: Path, *, recipe_name: str, task: str, model_name: str, metrics: dict[str, Any],
                 data_report: dict[str, Any], extras: list[str], curves: Path | None,
                 timing: dict[str, Any]) -> Path:
    columns = {k: metrics[k] for k in ("baseline_test", "validation", "test") if isinstance(metrics.get(k), dict)}
    parts = [f"# Run report: {recipe_name}", "",
             f"Task `{task}`, model `{model_name}`; best checkpoint at step {metrics.get('best_step')} "
             f"selected by validation `{metrics.get('selected_by')}`; stopped: {metrics.get('stop_reason')}.", "",
             "## Metrics", "", metrics_table(columns), ""]
    if "baseline_test" in columns:
        parts += ["`baseline_test` is the starting model on the test split before any training.", ""]
    if curves:
        parts += ["## Learning curves", "", f"![learning curves]({curves.name})", ""]
    if isinstance(metrics.get("samples"), dict):
        parts += ["## Samples before and after training", "", samples_md(metrics["samples"]), "",
                  "`before` is the starting model, `after` the trained one, on the same held-out samples.", ""]
    if extras:
        parts += ["## Error analysis (test split)", "", *[b + "\n" for b in extras]]
    if isinstance(metrics.get("groups"), dict):
        from ..evaluation.groups import groups_md

        chart = "group_rates.png" if (Path(run_dir) / "group_rates.png").is_file() else None
        parts += ["## Metrics by group", "", groups_md(metrics["groups"], chart), ""]
    if isinstance(metrics.get("retention"), dict):
        from ..evaluation.retention import retention_md

        parts += ["## Retention", "", retention_md(metrics["retention"]), ""]
    parts += ["## Data", "", data_report_md(data_report), "",
              "## Timing and throughput", "", "| quantity | value |", "|---|---|"]
    parts += [f"| {k} | {_fmt(v)} |" for k, v in timing.items()]
    if isinstance(metrics.get("diagnosis"), dict):  # the verdict ends every report
        from ..evaluation.diagnosis import diagnosis_md

        parts += ["", "## Diagnosis", "", diagnosis_md(metrics["diagnosis"])]
    path = Path(run_dir) / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


# The card's library when the task does not name one: only omnitune is known to load its models.
DEFAULT_CARD_LIBRARY = "omnitune"
# Licence names as the assets spell them -> Hub licence identifiers.
HUB_LICENCES = {"apache-2.0": "apache-2.0", "mit": "mit", "cc by 4.0": "cc-by-4.0", "cc-by-4.0": "cc-by-4.0",
                "cc-by-sa-3.0": "cc-by-sa-3.0", "cc by-sa 4.0": "cc-by-sa-4.0", "cc-by-sa-4.0": "cc-by-sa-4.0"}


def model_card_info(task: Any) -> dict[str, str | None]:
    """``pipeline_tag`` and ``library`` for :func:`write_model_card` from a task (instance or class)
    that declares them (:class:`~omnitune.core.base.task.ModelCardInfo`): its Hub pipeline tag
    (https://huggingface.co/docs/hub/model-cards#specifying-a-task--pipelinetag-) and the library that
    loads its saved model. Without: no pipeline tag, and the library "omnitune"."""
    from ..base.task import ModelCardInfo

    if isinstance(task, ModelCardInfo):
        return {"pipeline_tag": task.pipeline_tag, "library": task.card_library}
    return {"pipeline_tag": None, "library": DEFAULT_CARD_LIBRARY}


def hub_metadata(*, recipe_name: str, task: str, base_model: str, data_source: str,
                 metrics: dict[str, Any], pipeline_tag: str | None = None,
                 library: str | None = None) -> dict[str, Any]:
    """The card's YAML front matter: base_model, datasets, license, pipeline_tag and model-index with
    the test metrics. Hub ids only: a bundled asset gives its Hub id when its description starts with
    one ("sentence-transformers/all-MiniLM-L6-v2: ..."), a ``hub:`` dataset its id; local paths none.
    ``pipeline_tag`` and ``library`` are the task's (:func:`model_card_info`); without a pipeline tag
    the card has none, without a library it says "omnitune"."""
    import re

    from ..base import assets
    from ..base.data import is_hub, parse_hub

    meta: dict[str, Any] = {"library_name": library or DEFAULT_CARD_LIBRARY, "tags": ["omnitune", "fine-tuned", task]}
    licence = None
    if base_model.startswith(assets.ASSET_PREFIX):
        asset = assets.ASSETS.get(base_model[len(assets.ASSET_PREFIX):].split("/")[0])
        hub_id = re.match(r"^([\w.-]+/[\w.-]+):", asset.description)
        if hub_id:
            meta["base_model"] = hub_id.group(1)
        licence = asset.licence.split(";")[0].split("(")[0].strip().lower()
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", base_model) and not Path(base_model).exists():
        meta["base_model"] = base_model
    if is_hub(data_source):
        meta["datasets"] = [parse_hub(data_source).spec]
    meta["license"] = HUB_LICENCES.get(licence, "other") if licence else "other"
    if pipeline_tag:
        meta["pipeline_tag"] = pipeline_tag
    test = {k: v for k, v in (metrics.get("test") or {}).items() if isinstance(v, (int, float)) and k != "loss"}
    if test:
        meta["model-index"] = [{"name": recipe_name, "results": [{
            "task": {"type": pipeline_tag or task},
            "dataset": {"name": data_source, "type": meta["datasets"][0] if "datasets" in meta else data_source,
                        "split": "test"},
            "metrics": [{"type": k, "value": round(float(v), 6), "name": f"test {k}"} for k, v in sorted(test.items())],
        }]}]
    return meta


def export_md(run_dir: Path) -> str | None:
    """The table of an export report in the run folder (``export*/export_report.json``, written by
    ``omnitune export``), or None."""
    found = sorted(Path(run_dir).glob("export*/export_report.json"))
    if not found:
        return None
    rep = json.loads(found[0].read_text())
    metric, split = rep.get("main_metric", "metric"), rep.get("split", "test")
    lines = [f"From `{found[0].relative_to(run_dir)}` ({rep.get('samples', '?')} {split} samples):", "",
             f"| model | {split} {metric} | latency batch 1 (ms) | latency batch 32 (ms) | size (MB) |",
             "|---|---|---|---|---|"]
    for r in rep.get("rows", []):
        value = r.get("metrics", {}).get(metric)
        lines.append(f"| {r.get('model')} | {_fmt(value) if value is not None else ''} | "
                     f"{_fmt(r.get('latency_ms_batch1', ''))} | {_fmt(r.get('latency_ms_batch32', ''))} | "
                     f"{_fmt(r['size_bytes'] / 1e6) if 'size_bytes' in r else ''} |")
    return "\n".join(lines)


def write_model_card(model_dir: Path, *, recipe_name: str, task: str, base_model: str, base_origin: str,
                     data_source: str, data_origin: str, metrics: dict[str, Any], recipe_yaml: str,
                     pipeline_tag: str | None = None, library: str | None = None) -> None:
    """The model folder's README.md: Hub metadata front matter, sources and licences, test metrics,
    and where the run folder has them: metrics by group, retention, the ONNX export table.
    ``pipeline_tag`` and ``library``: the task's (``**model_card_info(task)``)."""
    import yaml

    meta = hub_metadata(recipe_name=recipe_name, task=task, base_model=base_model, data_source=data_source,
                        metrics=metrics, pipeline_tag=pipeline_tag, library=library)
    test = metrics.get("test") or {}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {recipe_name}", "",
             f"Fine-tuned with [omnitune] from `{base_model}` for `{task}`.", "",
             "## Sources and licences", "", f"- Base model: {base_origin}", f"- Training data: {data_origin}", "",
             "## Test metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(test.items())]
    if isinstance(metrics.get("groups"), dict):
        from ..evaluation.groups import groups_md

        lines += ["", "## Metrics by group", "", groups_md(metrics["groups"])]
    if isinstance(metrics.get("retention"), dict):
        from ..evaluation.retention import retention_md

        lines += ["", "## Retention", "", retention_md(metrics["retention"])]
    if isinstance(metrics.get("samples"), dict):
        lines += ["", "## Samples before and after training", "", samples_md(metrics["samples"])]
    exported = export_md(Path(model_dir).parent)
    if exported:
        lines += ["", "## ONNX export", "", exported]
    lines += ["", "## Recipe", "", "```yaml", recipe_yaml.rstrip(), "```", ""]
    (Path(model_dir) / "README.md").write_text("\n".join(lines))


def update_model_card(run_dir: Path, task: Any = None) -> Path:
    """Rewrite a finished run's model card from its folder (recipe.yaml, metrics.json, export report):
    ``omnitune export`` calls it after writing its report, so the card gains the export table.
    ``task``: the run's task (its card tags); None looks its class up in the task registry."""
    import yaml

    from ..base.errors import OmnituneError
    from ..base.registry import TASKS
    from ..runs import METRICS_FILE, MODEL_DIR, RECIPE_FILE, asset_origin

    run_dir = Path(run_dir)
    raw = yaml.safe_load((run_dir / RECIPE_FILE).read_text())
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    if task is None:
        try:
            task = TASKS.get(raw["task"])
        except OmnituneError:  # a plug-in task no longer installed: a card without its tags
            task = None
    write_model_card(run_dir / MODEL_DIR, recipe_name=raw["name"], task=raw["task"], base_model=raw["model"]["name"],
                     base_origin=asset_origin(raw["model"]["name"]), data_source=raw["data"]["source"],
                     data_origin=asset_origin(raw["data"]["source"]), metrics=metrics,
                     recipe_yaml=(run_dir / RECIPE_FILE).read_text(), **model_card_info(task))
    return run_dir / MODEL_DIR / "README.md"


def write_json(path: Path, obj: Any) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)
