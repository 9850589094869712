"""Full fine-tuning versus LoRA on MiniLM-L6 (classification) and SmolLM2-135M (instruction LM),
plus bottleneck adapters on MiniLM, and SmolLM2 full/LoRA with gradient checkpointing.

Each configuration trains in its own process (core.suite.run_entry_in_subprocess), so the peak
memory (max RSS) is that configuration's alone. Prints and writes a side-by-side table:
trainable parameter share, peak RSS, training samples/s and the final test metric.

    .venv/bin/python bench/peft_vs_full.py            # ~10 minutes on 2 idle CPU cores
    .venv/bin/python bench/peft_vs_full.py --quick    # a smoke run (a few steps each)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omnitune.core.studies.suite import run_entry_in_subprocess

COMMON = {"train.threads": 2, "train.save_checkpoints": False}
MINILM = {"data.max_samples": 1000, "data.max_eval_samples": 500, "train.epochs": 1, "model.max_length": 64,
          # batch 16: 62 updates; at batch 32 (31 updates) full fine-tuning stays at the majority class
          "train.batch_size": 16,
          "early_stopping.enabled": False}
SMOLLM = {"data.max_samples": 256, "data.max_eval_samples": 64, "train.max_steps": 16, "train.batch_size": 8}
LORA = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05}
BOTTLENECK = {"method": "bottleneck", "r": 64, "dropout": 0.05}

CONFIGS = [
    ("minilm-full", "text/minilm-rotten-tomatoes", {**MINILM}),
    ("minilm-lora", "text/minilm-rotten-tomatoes", {**MINILM, "finetune.peft": LORA, "train.lr": 1e-3}),
    ("minilm-bottleneck", "text/minilm-rotten-tomatoes", {**MINILM, "finetune.peft": BOTTLENECK, "train.lr": 1e-3}),
    ("smollm2-full", "text/smollm2-rotten-tomatoes-lora", {**SMOLLM, "finetune.peft": None, "train.lr": 5e-5}),
    ("smollm2-lora", "text/smollm2-rotten-tomatoes-lora", {**SMOLLM, "finetune.peft": LORA, "train.lr": 1e-3}),
    # The same two at the same batch with train.gradient_checkpointing: memory against samples/s.
    ("smollm2-full-ckpt", "text/smollm2-rotten-tomatoes-lora",
     {**SMOLLM, "finetune.peft": None, "train.lr": 5e-5, "train.gradient_checkpointing": True}),
    ("smollm2-lora-ckpt", "text/smollm2-rotten-tomatoes-lora",
     {**SMOLLM, "finetune.peft": LORA, "train.lr": 1e-3, "train.gradient_checkpointing": True}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/peft_vs_full")
    parser.add_argument("--quick", action="store_true", help="4 steps each: checks the script, measures little")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    rows = []
    for name, recipe, overrides in CONFIGS:
        if args.only and name not in args.only:
            continue
        overrides = {**COMMON, **overrides, "output.dir": str(out / "runs"), "output.run_name": name}
        if args.quick:
            overrides.update({"train.max_steps": 4, "data.max_eval_samples": 32})
        print(f"[peft_vs_full] {name}", flush=True)
        rows.append({"name": name, **run_entry_in_subprocess(recipe, overrides, out / "results" / f"{name}.json")})
        (out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["| config | trainable params | share | peak RSS MB | train samples/s | train s | test metric |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error'][:80]} | | | | | |")
            continue
        p, key = r["parameters"], r["selected_by"]
        lines.append(f"| {r['name']} | {p['trainable']:,} of {p['total']:,} | {p['trainable_share']:.2%} | "
                     f"{r['peak_rss_mb']:.0f} | {r['samples_per_s']:.1f} | {r['train_seconds']:.0f} | "
                     f"{key} {r['metrics'][key]:.4f} |")
    table = "\n".join(lines)
    (out / "peft_vs_full.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
