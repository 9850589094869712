"""Cost as the data grows: peak RSS and samples/s at 1x, 4x, 16x a base dataset, per domain,
with the data held in memory or on disk.

The recipe field (the same name and values in every domain's ``data`` section):

    data.storage: memory | disk | auto      # default: auto
      memory  the splits are read whole (pandas frames / lists / decoded arrays in RAM), as before
      disk    rows live in memory-mapped files under the cache folder ($OMNITUNE_CACHE, default
              ~/.cache/omnitune), keyed by a content hash of the source and the preparation
              settings; __getitem__ reads a row on demand, so RSS does not grow with the data
      auto    disk when the source files hold more than omnitune.core.base.data.AUTO_DISK_BYTES
              (256 MiB), else memory; the choice is written to the DataReport notes
              ("data.storage auto: disk (...)") and so to metrics.json and the console
    The helpers are in omnitune.core.base.data: ``Storage`` (the Literal type for a DataConfig field),
    ``AUTO_DISK_BYTES``, ``source_bytes(paths)``, ``choose_storage(storage, nbytes, report)``.

Result rows (one per domain x size x storage), the same keys in every domain:
    domain, size, storage, rows, peak_rss_mb, samples_per_s, prepare_s, steps

    python bench/data_scaling.py --domain text --sizes 1,4,16
    python bench/data_scaling.py --domain all --out bench/results/
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROW_KEYS = ("domain", "size", "storage", "rows", "peak_rss_mb", "samples_per_s", "prepare_s", "steps")
STEPS = 40  # fixed optimiser steps: the run measures data cost, not epochs
TEXT_BATCH = 32


# ----------------------------------------------------------------------------- machine
def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


# ----------------------------------------------------------------------------- text
def text_corpus(size: int, folder: Path) -> tuple[Path, int]:
    """The bundled Rotten Tomatoes table (reviews and plot summaries) repeated ``size`` times; copy k > 0
    of a row ends in " (k)" so that no copy is an exact duplicate the cleaning would drop. Written as
    an uncompressed CSV, as a user's file would be."""
    import pandas as pd

    from omnitune.core.base import assets

    base = pd.read_csv(assets.fetch("rotten-tomatoes"), keep_default_na=False,
                       na_values=[""])
    path = folder / f"rotten_tomatoes_x{size}.csv"
    for k in range(size):
        part = base.copy()
        if k:
            part["text"] = part["text"].astype(str) + f" ({k})"
        part.to_csv(path, mode="a" if k else "w", header=not k, index=False)
    return path, len(base) * size


def tiny_text_model(folder: Path) -> Path:
    """A random 2-block BERT (hidden 64) over the bundled MiniLM-L6 tokenizer: the real vocabulary and
    token counts at a fraction of the compute, so the run's cost is the data's. Scaling, not accuracy."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from omnitune.core.base import assets

    if (folder / "config.json").exists():
        return folder
    tok = AutoTokenizer.from_pretrained(str(assets.fetch("minilm-l6")))
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def text_recipe(source: Path, model: Path, storage: str, run_dir: Path) -> dict:
    return {
        "name": "data-scaling-text", "task": "text-classification", "seed": 0,
        "model": {"name": str(model), "max_length": 64},
        "data": {"source": str(source), "text_column": "text", "label_column": "category",
                 "labels": ["rotten", "fresh"], "unknown_labels": "drop", "storage": storage,
                 # Evaluation on a fixed number of rows: preparation still reads, cleans and splits all.
                 "max_eval_samples": 256},
        "train": {"epochs": 1000, "max_steps": STEPS, "batch_size": TEXT_BATCH, "eval_batch_size": 128,
                  "precision": "fp32", "log_every": 10, "save_checkpoints": False},
        "output": {"dir": str(run_dir), "run_name": "run"},
    }


# Runs in a fresh interpreter: the recipe, then its figures as one JSON line. The task's data
# preparation is timed around build_datasets; the peak RSS is VmHWM, the high-water mark of this
# process alone (ru_maxrss would carry the parent's peak over exec).
_CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from omnitune.core.api import train
from omnitune.text.classification import TextClassificationTask

def vm(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return round(int(line.split()[1]) / 1024, 1)

timing, marks = {}, []
build = TextClassificationTask.build_datasets
def timed(self):
    t0, c0 = time.perf_counter(), time.process_time()
    bundle = build(self)
    timing["prepare_s"] = time.perf_counter() - t0
    timing["prepare_cpu_s"] = time.process_time() - c0
    timing["prepare_peak_rss_mb"] = vm("VmHWM")
    timing["rss_after_prepare_mb"] = vm("VmRSS")
    return bundle
TextClassificationTask.build_datasets = timed
def mark(trainer):  # CPU seconds at each step's end: the machine may be shared or paused
    marks.append((trainer.state.samples_seen, time.process_time()))
res = train(sys.argv[1], callbacks=[mark])
metrics = json.loads((Path(res.run_dir) / "metrics.json").read_text())
(n0, c0), (n1, c1) = marks[0], marks[-1]
print("RESULT " + json.dumps({**timing, "peak_rss_mb": vm("VmHWM"), "samples_per_cpu_s": (n1 - n0) / (c1 - c0),
      "samples_per_s": metrics["timing"]["train_samples_per_s"], "steps": metrics["timing"]["samples_seen"] // %d,
      "report_notes": [n for n in json.loads((Path(res.run_dir) / "data_report.json").read_text())["notes"]
                       if n.startswith("data.storage")]}))
""" % TEXT_BATCH


def text_case(size: int, storage: str, out_dir: Path) -> dict:
    """One text run at ``size`` x the base, in its own process, with a cold cache folder."""
    import yaml

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"text-x{size}-{storage}-", dir=out_dir))
    corpus_dir = out_dir / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    source, rows_file = corpus_dir / f"rotten_tomatoes_x{size}.csv", corpus_dir / f"rotten_tomatoes_x{size}.rows"
    if not rows_file.exists():
        source, rows = text_corpus(size, corpus_dir)
        rows_file.write_text(str(rows))
    rows = int(rows_file.read_text())
    model = tiny_text_model(out_dir / "tiny-bert-minilm-vocab")
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(text_recipe(source, model, storage, work / "runs")))
    # A cold cache folder: the table and token files are made in the run (the child needs no asset).
    env = {**os.environ, "OMNITUNE_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(recipe)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)  # the run's folder and its cold cache
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"text x{size} {storage} failed:\n{proc.stderr[-3000:]}")
    fig = json.loads(line[len("RESULT "):])
    return {"domain": "text", "size": size, "storage": storage, "rows": rows,
            "peak_rss_mb": fig["peak_rss_mb"], "samples_per_s": fig["samples_per_s"],
            "prepare_s": round(fig["prepare_s"], 2), "steps": fig["steps"],
            # The same, in this process's CPU seconds (steps 2..N for samples/s): unlike wall time,
            # not inflated when other work shares or pauses the machine.
            "samples_per_cpu_s": round(fig["samples_per_cpu_s"], 2), "prepare_cpu_s": round(fig["prepare_cpu_s"], 2),
            "prepare_peak_rss_mb": fig["prepare_peak_rss_mb"], "wall_s": round(wall, 1),
            "notes": fig["report_notes"]}


# ----------------------------------------------------------------------------- all domains
def cases(domain: str):
    """{domain: case(size, storage, out_dir) -> row}; vision and speech from bench/scaling_media.py
    when it is there."""
    out = {}
    if domain in ("text", "all"):
        out["text"] = text_case
    if domain in ("vision", "speech", "all"):
        media = HERE / "scaling_media.py"
        if media.exists():
            spec = importlib.util.spec_from_file_location("scaling_media", media)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            for name in ("vision", "speech"):
                if domain in (name, "all"):
                    out[name] = getattr(module, f"{name}_case")
        elif domain != "all":
            raise SystemExit(f"--domain {domain}: bench/scaling_media.py is not there")
    return out


def growth(rows: list[dict]) -> list[dict]:
    """Per domain and storage: peak RSS and samples/s at the largest size against the smallest."""
    out = []
    for domain in dict.fromkeys(r["domain"] for r in rows):
        for storage in dict.fromkeys(r["storage"] for r in rows if r["domain"] == domain):
            mine = sorted((r for r in rows if r["domain"] == domain and r["storage"] == storage), key=lambda r: r["size"])
            if len(mine) < 2:
                continue
            lo, hi = mine[0], mine[-1]
            # Throughput per CPU second where the case measures it: wall-clock rates on a shared
            # machine move with the neighbours' load.
            speed = "samples_per_cpu_s" if "samples_per_cpu_s" in lo and "samples_per_cpu_s" in hi else "samples_per_s"
            change = hi[speed] / lo[speed] - 1
            out.append({"domain": domain, "storage": storage, "from": lo["size"], "to": hi["size"],
                        "peak_rss_growth": round(hi["peak_rss_mb"] / lo["peak_rss_mb"] - 1, 4),
                        "speed": speed, "speed_change": round(change, 4),
                        "target_met": hi["peak_rss_mb"] < 1.1 * lo["peak_rss_mb"] and abs(change) <= 0.1})
    return out


def markdown(rows: list[dict], changes: list[dict], where: str) -> str:
    lines = [f"Machine: {where}. Each run: its own process, a cold cache folder, {STEPS} optimiser steps.", "",
             "| domain | size | storage | rows | peak RSS (MB) | samples/s | samples/CPU-s | prepare (s) "
             "| prepare (CPU s) | steps |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def opt(r, key):
        return f"{r[key]:.1f}" if key in r else "-"

    for r in rows:
        lines.append(f"| {r['domain']} | {r['size']}x | {r['storage']} | {r['rows']} | {r['peak_rss_mb']:.0f} | "
                     f"{r['samples_per_s']:.1f} | {opt(r, 'samples_per_cpu_s')} | {r['prepare_s']:.1f} | "
                     f"{opt(r, 'prepare_cpu_s')} | {r['steps']} |")
    if changes:
        lines += ["", "| domain | storage | sizes | peak RSS growth | throughput change | target (<10%, within 10%) |",
                  "|---|---|---|---|---|---|"]
        for c in changes:
            lines.append(f"| {c['domain']} | {c['storage']} | {c['from']}x -> {c['to']}x | "
                         f"{c['peak_rss_growth']:+.1%} | {c['speed_change']:+.1%} ({c['speed']}) | "
                         f"{'met' if c['target_met'] else 'missed'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", choices=["text", "vision", "speech", "all"], default="all")
    ap.add_argument("--sizes", default="1,4,16", help="multiples of the base dataset, comma-separated")
    ap.add_argument("--storages", default="memory,disk", help="data.storage values to run, comma-separated")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for data_scaling.json / .md")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    storages = [x.strip() for x in args.storages.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    where = machine()
    print(f"machine: {where}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="data-scaling-") as scratch:
        for domain, case in cases(args.domain).items():
            for size in sizes:
                for storage in storages:
                    row = case(size, storage, Path(scratch) / domain)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    changes = growth(rows)
    (out / "data_scaling.json").write_text(json.dumps({"machine": where, "steps": STEPS, "rows": rows,
                                                       "growth": changes}, indent=1))
    text = markdown(rows, changes, where)
    (out / "data_scaling.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
