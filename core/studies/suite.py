"""Benchmark suites: ``omnitune bench SUITE`` runs a list of recipes and writes a leaderboard.

A suite is a YAML file::

    name: offline
    description: what it compares
    defaults: {train.threads: 2}          # dotted overrides for every entry
    entries:
      - name: minilm-lora
        recipe: text/minilm-rotten-tomatoes
        overrides: {finetune.peft: {method: lora}, train.lr: 1.0e-3}

Every entry runs in its own Python process (``python -m omnitune.core.studies.suite RUN_SPEC``), so its peak
memory (max RSS) is its own and one entry's failure does not stop the others. The leaderboard
(markdown, CSV and a bar chart of each entry's main metric) lists the test metrics, training time,
samples/s, the trainable parameter share and the peak RSS. Entries whose task is not installed
(e.g. a domain that has not landed) are listed as skipped.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from ..base.errors import OmnituneError, RecipeError


class SuiteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    recipe: str
    overrides: dict[str, Any] = {}


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    defaults: dict[str, Any] = {}
    entries: list[SuiteEntry]


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    if not path.is_file():
        raise OmnituneError(f"{path}: suite file not found")
    try:
        return Suite.model_validate(yaml.safe_load(path.read_text()))
    except Exception as exc:  # pydantic ValidationError or YAML error: name the file
        raise RecipeError(f"{path}: invalid suite ({exc})") from None


def entry_overrides(suite: Suite, entry: SuiteEntry, runs_dir: Path) -> dict[str, Any]:
    return {**suite.defaults, **entry.overrides, "output.dir": str(runs_dir), "output.run_name": entry.name}


def validate_suite(suite: Suite) -> dict[str, str]:
    """entry name -> "ok", "skipped: ..." or the recipe error; runs nothing."""
    from ..base.registry import TASKS
    from ..components import as_recipe

    status = {}
    for entry in suite.entries:
        try:
            rec = as_recipe(entry.recipe, entry_overrides(suite, entry, Path("runs")))
            TASKS.get(rec.task)
            status[entry.name] = "ok"
        except (OmnituneError, ImportError) as exc:
            status[entry.name] = f"skipped: {exc}" if "unknown task" in str(exc) or isinstance(exc, ImportError) \
                else f"error: {exc}"
    return status


def run_entry_in_subprocess(recipe: str, overrides: dict[str, Any], result_file: Path, timeout_s: float | None = None
                            ) -> dict[str, Any]:
    """Train one recipe in a fresh process; returns its row (metrics, timing, peak RSS) or an error."""
    spec = result_file.with_suffix(".spec.json")
    spec.write_text(json.dumps({"recipe": recipe, "overrides": overrides, "result": str(result_file)}))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "omnitune.core.studies.suite", str(spec)], capture_output=True, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0 or not result_file.is_file():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}",
                "wall_seconds": round(time.perf_counter() - t0, 1)}
    row = json.loads(result_file.read_text())
    row["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _child(spec_file: str) -> None:
    """Runs inside the entry's own process: train, then write the row with this process's peak RSS."""
    from ..pipeline import train

    spec = json.loads(Path(spec_file).read_text())
    result = train(spec["recipe"], spec["overrides"])
    m = result.metrics
    split = "test" if "test" in m else "validation"
    row = {"run_dir": str(result.run_dir), "split": split, "selected_by": m["selected_by"],
           "metrics": {k: v for k, v in m[split].items() if isinstance(v, (int, float))},
           "train_seconds": m["timing"]["train_seconds"], "samples_per_s": m["timing"]["train_samples_per_s"],
           "parameters": m.get("parameters", {}),
           # ru_maxrss is in KiB on Linux
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    Path(spec["result"]).write_text(json.dumps(row, indent=1))


def run_suite(path: str | Path, out_dir: str | Path | None = None, only: list[str] | None = None,
              validate_only: bool = False) -> Path:
    """Run the suite (or only the named entries); returns the leaderboard markdown path."""
    suite = load_suite(path)
    status = validate_suite(suite)
    bad = {n: s for n, s in status.items() if s.startswith("error")}
    if bad:
        raise RecipeError("; ".join(f"suite entry {n}: {s[len('error: '):]}" for n, s in bad.items()))
    if validate_only:
        return Path(path)
    out = Path(out_dir) if out_dir else Path("runs") / f"bench-{suite.name}-{datetime.now():%Y%m%d-%H%M%S}"
    (out / "results").mkdir(parents=True, exist_ok=True)
    rows = []
    for entry in suite.entries:
        if only and entry.name not in only:
            continue
        if status[entry.name] != "ok":
            rows.append({"name": entry.name, "recipe": entry.recipe, "error": status[entry.name]})
            continue
        print(f"[bench] {entry.name}: {entry.recipe}", flush=True)
        row = run_entry_in_subprocess(entry.recipe, entry_overrides(suite, entry, out / "runs"),
                                      out / "results" / f"{entry.name}.json")
        rows.append({"name": entry.name, "recipe": entry.recipe, **row})
        (out / "results.json").write_text(json.dumps(rows, indent=1))  # partial results survive a crash
    return write_leaderboard(suite, rows, out)


def write_leaderboard(suite: Suite, rows: list[dict[str, Any]], out: Path) -> Path:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric_keys = sorted({k for r in rows for k in r.get("metrics", {})})
    with open(out / "leaderboard.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "recipe", "selected_by", "main_value", *metric_keys, "train_seconds", "samples_per_s",
                    "trainable_share", "peak_rss_mb", "error"])
        for r in rows:
            m = r.get("metrics", {})
            w.writerow([r["name"], r["recipe"], r.get("selected_by", ""), m.get(r.get("selected_by"), ""),
                        *[m.get(k, "") for k in metric_keys], r.get("train_seconds", ""), r.get("samples_per_s", ""),
                        r.get("parameters", {}).get("trainable_share", ""), r.get("peak_rss_mb", ""), r.get("error", "")])
    lines = [f"# Benchmark suite: {suite.name}", "", suite.description, "",
             "| entry | recipe | main metric (test) | train s | samples/s | trainable share | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    done = [r for r in rows if "metrics" in r]
    for r in rows:
        if "metrics" not in r:
            lines.append(f"| {r['name']} | {r['recipe']} | {r.get('error', '')[:100]} | | | | |")
            continue
        key = r["selected_by"]
        share = r.get("parameters", {}).get("trainable_share")
        lines.append(f"| {r['name']} | {r['recipe']} | {key} {r['metrics'].get(key, float('nan')):.4f} | "
                     f"{r['train_seconds']:.1f} | {r['samples_per_s']:.1f} | "
                     f"{'' if share is None else f'{share:.2%}'} | {r['peak_rss_mb']:.0f} |")
    if done:
        fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(done)), 3.6))
        values = [r["metrics"].get(r["selected_by"], 0.0) for r in done]
        ax.bar(range(len(done)), values, color="tab:blue")
        ax.set_xticks(range(len(done)), [f"{r['name']}\n({r['selected_by']})" for r in done], rotation=30, ha="right",
                      fontsize=8)
        ax.set_ylabel("test main metric")
        ax.set_title(f"suite {suite.name}")
        fig.tight_layout()
        fig.savefig(out / "leaderboard.png", dpi=110)
        plt.close(fig)
        lines += ["", "![leaderboard](leaderboard.png)"]
    lines += ["", "All test metrics: `leaderboard.csv`; runs: `runs/`."]
    path = out / "leaderboard.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    _child(sys.argv[1])
