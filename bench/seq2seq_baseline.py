"""Zero-shot against fine-tuned ROUGE on the bundled XSum articles, for the two XSum recipes.

Each recipe runs once through ``omnitune.train`` with ``eval.baseline: true`` (the starting model
scored on the same fixed test subset before any update), on a subsample so each run stays under
~10 minutes on a 2-core CPU; the subsample sizes are printed and written with the results.

    nice -n 5 .venv/bin/python bench/seq2seq_baseline.py --out /tmp/seq2seq-bench.json
    nice -n 5 .venv/bin/python bench/seq2seq_baseline.py --only minilm2minilm-xsum --train-samples 400

Prints a markdown table (recipe, subsample, zero-shot and fine-tuned ROUGE-1/2/L, train time,
samples/s) and writes the raw metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

RECIPES = ("smollm2-xsum-lora", "minilm2minilm-xsum")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def run(recipe: str, train_samples: int, eval_samples: int, gen_samples: int, epochs: int, max_source: int,
        threads: int | None, out_dir: Path) -> dict:
    import omnitune

    overrides = {"data.max_samples": train_samples, "data.max_eval_samples": eval_samples,
                 "model.max_source_length": max_source,
                 "model.generation.eval_samples": gen_samples, "train.epochs": epochs,
                 "train.save_checkpoints": False, "train.threads": threads,
                 "output.dir": str(out_dir), "output.run_name": recipe}
    t0 = time.perf_counter()
    result = omnitune.train(f"text/{recipe}", overrides)
    m = result.metrics
    return {"recipe": recipe, "overrides": overrides, "wall_s": round(time.perf_counter() - t0, 1),
            "zero_shot": m["baseline_test"], "fine_tuned": m["test"], "timing": m["timing"],
            "parameters": m["parameters"], "run_dir": str(result.run_dir)}


def table(rows: list[dict]) -> str:
    lines = ["| recipe | train / test samples (generated) | model | ROUGE-1 | ROUGE-2 | ROUGE-L | gen len | "
             "train s | train samples/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o = r["overrides"]
        for label, m in (("zero-shot", r["zero_shot"]), ("fine-tuned", r["fine_tuned"])):
            timing = r["timing"] if label == "fine-tuned" else {}
            lines.append(f"| {r['recipe']} | {o['data.max_samples']} / {o['data.max_eval_samples']} "
                         f"({int(m['gen_samples'])}) | {label} | {m['rouge1']:.3f} | {m['rouge2']:.3f} | "
                         f"{m['rougeL']:.3f} | {m['gen_len']:.1f} | {timing.get('train_seconds', '')} | "
                         f"{timing.get('train_samples_per_s', '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=RECIPES, action="append")
    parser.add_argument("--train-samples", type=int, default=240)
    parser.add_argument("--eval-samples", type=int, default=48, help="validation/test rows (loss on all)")
    parser.add_argument("--gen-samples", type=int, default=32, help="rows generated for ROUGE per evaluation")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-source-length", type=int, default=192, help="article tokens kept (CPU budget)")
    parser.add_argument("--threads", type=int, help="torch threads (1 avoids spin-waiting on a shared CPU)")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/omnitune-seq2seq-bench"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/seq2seq-bench.json"))
    args = parser.parse_args()
    rows = [run(name, args.train_samples, args.eval_samples, args.gen_samples, args.epochs, args.max_source_length,
                args.threads, args.runs / f"{time.time():.0f}") for name in (args.only or RECIPES)]
    import torch

    machine = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "note": "shared with other jobs"}
    args.out.write_text(json.dumps({"machine": machine, "runs": rows}, indent=1))
    print(f"machine: {machine}\n\n{table(rows)}")


if __name__ == "__main__":
    main()
