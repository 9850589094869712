"""omnitune versus transformers' Trainer, ungrouped and length-grouped: same model, data, job and machine.

All configurations fine-tune the bundled all-MiniLM-L6-v2 on the same Rotten Tomatoes splits and are
scored by the same evaluation code on the same test split, from the weights each one saved:

- ``omnitune``: ``omnitune.train("text/minilm-rotten-tomatoes", ...)`` (length grouping is its default).
- ``hf``: transformers' ``Trainer`` as its text-classification guide sets it up: ``datasets`` +
  ``DataCollatorWithPadding`` (dynamic padding), default (random) sampling.
- ``hf-grouped``: the same plus ``train_sampling_strategy="group_by_length"``, the Trainer's documented
  way to cut padding (transformers 5.x; 4.x called it ``group_by_length=True``).

Same job for all: batch size, epochs, lr, warmup share, linear decay, AdamW weight decay, gradient
clipping and evaluation batch size come from the recipe (or the flags); early stopping off; same
precision (bf16 autocast or fp32) and same torch threads; 0 data-loader workers; the validation split is evaluated
after every epoch, a checkpoint saved, the best one reloaded at the end, validation and test
evaluated, and the final model saved. The Trainer's per-epoch evaluation uses its own
``compute_metrics``; ``load_best_model_at_end`` mirrors omnitune's best-checkpoint selection.

Measured for each run:

- training samples/s = samples trained / time inside optimiser steps, the same interval for both:
  from fetching a step's batch to the end of the optimiser/scheduler step, without evaluation,
  checkpointing and logging (omnitune: ``metrics.timing.train_seconds``; Trainer: a callback that
  sums ``on_step_end`` minus the previous step-end/log/evaluate/save/epoch-begin event);
- end-to-end seconds of the job, started after the libraries are imported (both import the same set):
  data loading and tokenisation, model loading, training, evaluation, saving. omnitune reads the raw
  CSV, cleans, splits and tokenises; the Trainer reads the same splits already written as JSON lines
  (``datasets.load_dataset("json")``) and tokenises with ``Dataset.map``: this favours the Trainer a
  little. Caches start cold for both (a fresh omnitune tokenisation cache and a fresh
  ``HF_DATASETS_CACHE`` per run; the unpacked bundled assets are shared);
- useful training GFLOP/s (6 x non-embedding parameters per real token plus attention, padding not
  counted; the same for every configuration) and its share of the matmul peak.

Fairness between runs: every run is its own Python process (nothing warms another in memory); the
parent builds the splits once first, which also warms the page cache of the model and data files for
everyone. ``--rounds N`` repeats the set N times, rotating the order each round (round r starts at
configuration r mod the number of configurations), so drift and position effects show in the
per-run table; the summary takes medians. The machine is recorded: CPU model and flags, native bf16
(avx512_bf16 / amx_bf16 and oneDNN's own check), the precision used, the matmul peak of that
precision measured before and after the runs (2048 x 2048, the threads used), and the 1-minute load
average around each run.

    .venv/bin/python bench/text_vs_hf_trainer.py                         # full train split, 1 epoch, 1 round
    .venv/bin/python bench/text_vs_hf_trainer.py --rounds 3              # drift and order visible
    .venv/bin/python bench/text_vs_hf_trainer.py --seeds 5 --configs omnitune,hf-grouped   # accuracy parity
    .venv/bin/python bench/text_vs_hf_trainer.py --train-samples 64 --eval-samples 32 --out /tmp/b  # smoke
    .venv/bin/python bench/text_vs_hf_trainer.py --precision fp32        # fp32 on any CPU (issue 13's setting)

Time to accuracy (``--mode time-to-accuracy``): omnitune's shipped recipe as it is (its lr, epochs, batch
and early stopping) against the Trainer's documented text-classification recipe (lr 2e-5, 3 epochs,
``group_by_length``; batch from --batch-size), each scoring the test split every --curve-every optimiser
steps (that evaluation's time is taken out of the clock, which otherwise runs from the job's start:
loading, tokenisation, training, the recipes' own evaluations). The target is the Trainer's final test
accuracy (shared evaluation of its saved model); the figure is the wall time omnitune's curve first
reaches it, as a share of the Trainer's whole job (target <= 0.6x). Writes time_to_accuracy.{json,md,png}.

    .venv/bin/python bench/text_vs_hf_trainer.py --mode time-to-accuracy --precision fp32 --batch-size 16
    .venv/bin/python bench/text_vs_hf_trainer.py --mode time-to-accuracy --train-samples 64 --eval-samples 32 \
        --curve-every 1 --out /tmp/tta   # smoke

Writes text_vs_hf_trainer.json and text_vs_hf_trainer.md to --out (default bench/results/, committed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RECIPE = "text/minilm-rotten-tomatoes"
CONFIGS = ("omnitune", "hf", "hf-grouped")
LABELS = {"omnitune": "omnitune", "hf": "transformers `Trainer`",
          "hf-grouped": "transformers `Trainer`, `group_by_length`",
          "omnitune-shipped": "omnitune, shipped recipe", "hf-documented": "transformers `Trainer`, documented recipe"}
# --mode time-to-accuracy: omnitune's shipped recipe as it is, against the Trainer's documented
# text-classification recipe (lr 2e-5, 3 epochs) with its length-grouped sampler.
TTA_CONFIGS = ("omnitune-shipped", "hf-documented")
HF_DOCUMENTED = {"lr": 2e-5, "epochs": 3}


# ---------------------------------------------------------------- machine and compute ceilings

def machine_info() -> dict:
    """CPU model, the flags that decide the bf16 path, and software versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                      if line.startswith("flags")), []))
    if not model and shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    import accelerate
    import datasets
    import transformers

    commit = subprocess.run(["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return {
        "cpu_model": model or platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}),
        "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "datasets": datasets.__version__, "accelerate": accelerate.__version__, "omnitune_commit": commit,
    }


def matmul_peak(dtype: torch.dtype, threads: int, n: int = 2048, repeats: int = 5, trials: int = 3) -> float:
    """GFLOP/s of an n x n matmul in `dtype` (best of `trials`): the ceiling a training step could reach."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9)
    return best


def useful_train_flops(config, lengths: list[int], epochs: int) -> float:
    """6 x (non-embedding parameters) per real token for forward + backward (Kaplan et al. 2020), plus
    attention's QK^T and AV (2 matmuls x 2 FLOPs x s^2 x h per layer forward, x3 with backward)."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_token = 6.0 * layers * (4 * h * h + 2 * h * inter)  # q, k, v, o and the two FFN matrices
    attention = sum(3 * 2 * 2 * layers * s * s * h for s in lengths)
    return epochs * (per_token * sum(lengths) + attention)


# ---------------------------------------------------------------- evaluation shared by every configuration

@torch.no_grad()
def accuracy(model_dir: Path, texts: list[str], labels: list[int], precision: str, max_length: int,
             batch_size: int = 128) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    correct = 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(**enc).logits
        correct += int((logits.argmax(-1) == torch.tensor(labels[i:i + batch_size])).sum())
    return correct / len(texts)


# ---------------------------------------------------------------- one configuration, in its own process

def _import_all() -> None:
    """Both configurations import the same libraries before their clock starts."""
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import transformers  # noqa: F401
    from transformers import Trainer  # noqa: F401

    import omnitune.core.api  # noqa: F401
    import omnitune.core.loop.trainer  # noqa: F401
    import omnitune.text.classification  # noqa: F401


def overrides_for(job: dict) -> dict:
    out = {"train.epochs": job["epochs"], "train.batch_size": job["batch_size"], "train.lr": job["lr"],
           "train.threads": job["threads"], "train.precision": job["precision"], "seed": job["seed"],
           "early_stopping.enabled": False, "train.time_budget_minutes": None}
    if job["train_samples"]:
        out["data.max_samples"] = job["train_samples"]
    if job["eval_samples"]:
        out["data.max_eval_samples"] = job["eval_samples"]
    return out


class Curve:
    """Test accuracy against wall time (from the job's start, the curve's own evaluations taken out),
    each time another ``every`` training samples have gone by (so runs with different batch sizes are
    sampled at the same data points), and the job's final accuracy at its end."""

    def __init__(self, every: int | None, batch_size: int) -> None:
        self.every, self.batch = every, batch_size
        self.t0, self.excluded, self.points = time.perf_counter(), 0.0, []

    def due(self, step: int) -> bool:
        return bool(self.every) and (step * self.batch) // self.every > ((step - 1) * self.batch) // self.every

    def add(self, step: int, evaluate) -> None:
        t = time.perf_counter()
        acc = evaluate()
        self.points.append({"seconds": t - self.t0 - self.excluded, "step": step, "accuracy": acc})
        self.excluded += time.perf_counter() - t

    def final(self, step: int, accuracy: float) -> None:
        """The finished job's own test accuracy (best checkpoint reloaded), at the job's end."""
        if self.every:
            self.points.append({"seconds": self.wall(), "step": step, "accuracy": accuracy, "final": True})

    def wall(self) -> float:
        return time.perf_counter() - self.t0 - self.excluded


def worker_omnitune(job: dict, work: Path, shipped: bool = False) -> dict:
    """The benchmark's job; ``shipped``: the shipped recipe's own lr, epochs, batch and early stopping."""
    from omnitune.core.api import MODEL_DIR, train

    from omnitune.core.base.recipe import load_recipe

    batch = job["batch_size"] if not shipped else load_recipe(RECIPE).train.batch_size
    curve = Curve(job.get("curve_every"), batch)

    def point(trainer) -> None:
        if curve.due(trainer.state.step):
            curve.add(trainer.state.step, lambda: trainer.evaluate(trainer.bundle.test)[0]["accuracy"])

    overrides = overrides_for(job)
    if shipped:
        overrides = {k: v for k, v in overrides.items() if k.startswith(("train.threads", "train.precision", "seed",
                                                                         "data."))}
    t = time.perf_counter()
    result = train(RECIPE, {**overrides, "output.dir": str(work), "output.run_name": "omnitune"}, callbacks=[point])
    end_to_end = time.perf_counter() - t
    curve.final(result.metrics["steps"], result.metrics["test"]["accuracy"])
    timing = result.metrics["timing"]
    return {"train_seconds": timing["train_seconds"], "samples_trained": timing["samples_seen"],
            "end_to_end_seconds": end_to_end, "own_test_accuracy": result.metrics["test"].get("accuracy"),
            "model_dir": str(result.run_dir / MODEL_DIR), "curve": curve.points, "curve_wall_seconds": curve.wall()}


def worker_hf(job: dict, work: Path, grouped: bool) -> dict:
    import numpy as np
    from datasets import load_dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)

    class StepClock(TrainerCallback):
        """Sums the time from the previous step's end (or the log/eval/save/epoch start after it) to each
        step's end: batch fetch, forward, backward, clipping, optimiser and scheduler step."""

        def __init__(self) -> None:
            self.seconds, self.mark = 0.0, time.perf_counter()

        def _reset(self, *_, **__) -> None:
            self.mark = time.perf_counter()

        on_train_begin = on_epoch_begin = on_log = on_evaluate = on_save = _reset

        def on_step_end(self, *_, **__) -> None:
            now = time.perf_counter()
            self.seconds += now - self.mark
            self.mark = now

    t = time.perf_counter()
    data = job["data_files"]
    ds = load_dataset("json", data_files=data)
    tokenizer = AutoTokenizer.from_pretrained(job["model_path"])
    ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=job["max_length"]), batched=True,
                remove_columns=["text"])
    labels = job["label_names"]
    model = AutoModelForSequenceClassification.from_pretrained(
        job["model_path"], num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)})

    def compute_metrics(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(work / "hf"), use_cpu=True, bf16=job["precision"] == "bf16", seed=job["seed"],
        data_seed=job["seed"], per_device_train_batch_size=job["batch_size"],
        per_device_eval_batch_size=job["eval_batch_size"], num_train_epochs=job["epochs"], learning_rate=job["lr"],
        weight_decay=job["weight_decay"], warmup_steps=job["warmup_ratio"], lr_scheduler_type=job["schedule"],
        max_grad_norm=job["max_grad_norm"] or 0.0, eval_strategy="epoch", save_strategy="epoch",
        save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="accuracy",
        greater_is_better=True, logging_steps=job["log_every"], report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False,
        train_sampling_strategy="group_by_length" if grouped else "random")
    clock = StepClock()
    curve = Curve(job.get("curve_every"), job["batch_size"])
    curve.t0 = t
    collator = DataCollatorWithPadding(tokenizer)

    @torch.no_grad()
    def test_accuracy(net) -> float:
        was, correct = net.training, 0
        net.eval()
        rows = ds["test"]
        for i in range(0, len(rows), job["eval_batch_size"]):
            batch = collator([rows[j] for j in range(i, min(i + job["eval_batch_size"], len(rows)))])
            labels = batch.pop("labels")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=job["precision"] == "bf16"):
                correct += int((net(**batch).logits.argmax(-1) == labels).sum())
        net.train(was)
        return correct / len(rows)

    class CurvePoints(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **__) -> None:
            if curve.due(state.global_step):
                curve.add(state.global_step, lambda: test_accuracy(model))
                clock.mark = time.perf_counter()  # the curve's evaluation is not training time

    trainer = Trainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["validation"],
                      data_collator=collator, processing_class=tokenizer,
                      compute_metrics=compute_metrics, callbacks=[clock, CurvePoints()])
    out = trainer.train()
    trainer.evaluate(ds["validation"])
    test = trainer.evaluate(ds["test"], metric_key_prefix="test")
    model_dir = work / "hf-model"
    trainer.save_model(str(model_dir))
    end_to_end = time.perf_counter() - t
    curve.final(out.global_step, test["test_accuracy"])
    return {"train_seconds": clock.seconds, "samples_trained": len(ds["train"]) * job["epochs"],
            "end_to_end_seconds": end_to_end, "own_test_accuracy": test["test_accuracy"],
            "trainer_train_runtime": out.metrics["train_runtime"], "model_dir": str(model_dir),
            "curve": curve.points, "curve_wall_seconds": curve.wall()}


def run_worker(config: str, job_file: Path, result_file: Path) -> None:
    job = json.loads(job_file.read_text())
    torch.set_num_threads(job["threads"])
    _import_all()
    work = Path(job["work_dir"]) / f"{config}-{os.getpid()}"
    work.mkdir(parents=True)
    if config == "omnitune":
        res = worker_omnitune(job, work)
    elif config == "omnitune-shipped":
        res = worker_omnitune(job, work, shipped=True)
    elif config == "hf-documented":
        res = worker_hf({**job, **HF_DOCUMENTED}, work, grouped=True)
    else:
        res = worker_hf(job, work, config == "hf-grouped")
    test = [json.loads(line) for line in Path(job["data_files"]["test"]).read_text().splitlines()]
    res["test_accuracy"] = accuracy(Path(res["model_dir"]), [r["text"] for r in test], [r["label"] for r in test],
                                    job["precision"], job["max_length"])
    res["samples_per_s"] = res["samples_trained"] / res["train_seconds"]
    shutil.rmtree(work, ignore_errors=True)
    result_file.write_text(json.dumps(res))


# ---------------------------------------------------------------- parent: data once, runs in turn, report

def _fresh_env(root: Path, name: str, assets_dir: Path, threads: int) -> dict:
    """A fresh omnitune cache (sharing the unpacked assets) and datasets cache for one run."""
    cache = root / f"cache-{name}"
    cache.mkdir(parents=True)
    (cache / "assets").symlink_to(assets_dir, target_is_directory=True)
    return {**os.environ, "OMNITUNE_CACHE": str(cache), "HF_DATASETS_CACHE": str(cache / "hf-datasets"),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1"}


def prepare(args, root: Path, assets_dir: Path, seed: int) -> tuple[dict, list[int], object]:
    """Builds the splits of ``seed`` once with omnitune's text task and writes them as JSON lines for the
    Trainer, so every configuration of that seed trains and is tested on the same reviews."""
    os.environ.update({k: v for k, v in _fresh_env(root, f"parent-{seed}", assets_dir, args.threads).items()
                       if k in ("OMNITUNE_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")})
    from transformers import AutoConfig

    from omnitune.core.api import as_recipe, build_task

    job = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
           "precision": args.precision, "seed": seed, "train_samples": args.train_samples,
           "eval_samples": args.eval_samples}
    recipe = as_recipe(RECIPE, overrides_for(job))
    task = build_task(recipe)
    bundle = task.build_datasets()
    data_files = {}
    for split in ("train", "validation", "test"):
        d = getattr(bundle, split)
        path = root / f"{split}-{seed}.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in zip(d.texts, d.labels)))
        data_files[split] = str(path)
    job.update(data_files=data_files, model_path=str(Path(task.model_path).resolve()),
               label_names=list(bundle.label_names), max_length=recipe.model.max_length,
               eval_batch_size=recipe.train.eval_batch_size or args.batch_size,
               weight_decay=recipe.optim.weight_decay, warmup_ratio=recipe.sched.warmup_ratio,
               schedule=recipe.sched.name, max_grad_norm=recipe.train.max_grad_norm,
               log_every=recipe.train.log_every, work_dir=str(root / "runs"),
               sizes={s: len(getattr(bundle, s)) for s in ("train", "validation", "test")})
    if recipe.sched.warmup_steps is not None or recipe.sched.name != "linear" or recipe.sched.min_lr_ratio:
        raise SystemExit("the Trainer side mirrors a linear schedule with warmup_ratio only; adjust the benchmark")
    return job, bundle.train.lengths(), AutoConfig.from_pretrained(task.model_path)


def time_to(curve: list[dict], target: float) -> float | None:
    """Seconds at the first curve point at or above ``target`` (None: never reached)."""
    return next((p["seconds"] for p in curve if p["accuracy"] >= target), None)


def summarise_tta(runs: list[dict]) -> dict:
    """Time to accuracy: the Trainer's final test accuracy (from the shared evaluation of its saved
    model) is the target; how long omnitune's shipped recipe took to first reach it on its curve."""
    ok = [r for r in runs if "error" not in r]
    hf = [r for r in ok if r["config"] == "hf-documented"]
    om = [r for r in ok if r["config"] == "omnitune-shipped"]
    if not hf or not om:
        return {}
    target = statistics.median(r["test_accuracy"] for r in hf)
    hf_seconds = statistics.median(r["curve_wall_seconds"] for r in hf)
    reached = [time_to(r["curve"], target) for r in om]
    times = [t for t in reached if t is not None]
    out = {"target_accuracy": target, "hf_seconds": hf_seconds,
           "omnitune_final_accuracy": statistics.median(r["test_accuracy"] for r in om),
           "omnitune_seconds": statistics.median(r["curve_wall_seconds"] for r in om),
           "omnitune_reached_in": f"{len(times)}/{len(reached)} runs",
           "omnitune_seconds_to_target": statistics.median(times) if times else None}
    out["ratio"] = out["omnitune_seconds_to_target"] / hf_seconds if times else None
    return out


def curves_png(runs: list[dict], target: float | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in runs:
        if "error" in r or not r.get("curve"):
            continue
        xs = [p["seconds"] for p in r["curve"]]
        ys = [p["accuracy"] for p in r["curve"]]
        ax.plot(xs, ys, marker=".", label=f"{LABELS[r['config']]} (round {r['round']})")
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"Trainer's final accuracy {target:.4f}")
    ax.set_xlabel("wall seconds from the job's start (curve evaluations excluded)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Time to accuracy: MiniLM-L6, Rotten Tomatoes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_tta(report: dict) -> str:
    m, j, s = report["machine"], report["job"], report["summary"]
    lines = [f"Machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs; native bf16: "
             f"{'yes' if m['native_bf16'] else 'no'}; precision **{j['precision']}**, {j['threads']} threads.",
             f"Job: {j['sizes']['train']} train / {j['sizes']['test']} test reviews; omnitune's shipped recipe "
             f"({RECIPE}) against the Trainer's documented recipe (lr {HF_DOCUMENTED['lr']:g}, "
             f"{HF_DOCUMENTED['epochs']} epochs, batch {j['batch_size']}, group_by_length); test accuracy every "
             f"{j['curve_every']} training samples and at each job's end; {report['rounds']} round(s).", ""]
    if s:
        ratio = (f"omnitune needs **{s['ratio']:.2f}x** of the Trainer's time to reach its final accuracy"
                 if s["ratio"] is not None
                 else "omnitune's shipped recipe **did not reach** the Trainer's final accuracy")
        reached = f"{s['omnitune_seconds_to_target']:.0f}" if s["omnitune_seconds_to_target"] is not None else "-"
        lines += ["| | final test accuracy | wall s (whole job) | wall s to the Trainer's final accuracy |",
                  "|---|---|---|---|",
                  f"| {LABELS['hf-documented']} | {s['target_accuracy']:.4f} | {s['hf_seconds']:.0f} | "
                  f"{s['hf_seconds']:.0f} |",
                  f"| {LABELS['omnitune-shipped']} | {s['omnitune_final_accuracy']:.4f} | "
                  f"{s['omnitune_seconds']:.0f} | "
                  f"{reached} ({s['omnitune_reached_in']}) |", "",
                  f"{ratio} (target <= 0.6x).", ""]
    lines.append("![time to accuracy](time_to_accuracy.png)")
    return "\n".join(lines) + "\n"


def paired_interval(diffs: list[float], level: float = 0.95) -> dict:
    """Mean of seed-paired differences with its two-sided t interval (n - 1 degrees of freedom)."""
    from scipy import stats

    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "low": None, "high": None, "half_width": None}
    sd = statistics.stdev(diffs)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / n ** 0.5
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "half_width": half,
            "level": level}


def seed_paired(runs: list[dict], a: str, b: str) -> dict | None:
    """Test accuracy of ``a`` minus ``b`` in points, paired by seed (each seed's median over rounds)."""
    by = {}
    for r in runs:
        if "error" not in r and r["config"] in (a, b):
            by.setdefault(r.get("seed"), {}).setdefault(r["config"], []).append(r["test_accuracy"])
    diffs = {s: 100 * (statistics.median(v[a]) - statistics.median(v[b])) for s, v in by.items() if a in v and b in v}
    if not diffs:
        return None
    return {"per_seed_points": diffs, **paired_interval(list(diffs.values()))}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for config in CONFIGS:
        mine = [r for r in runs if r["config"] == config and "error" not in r]
        if mine:
            out[config] = {k: statistics.median(r[k] for r in mine) for k in
                           ("samples_per_s", "train_seconds", "end_to_end_seconds", "test_accuracy",
                            "own_test_accuracy", "useful_gflops")}
            out[config]["runs"] = len(mine)
    if "omnitune" in out:
        for other in ("hf", "hf-grouped"):
            if other in out:
                o, h = out["omnitune"], out[other]
                out[f"omnitune_vs_{other}"] = {
                    "samples_per_s_ratio": o["samples_per_s"] / h["samples_per_s"],
                    "end_to_end_ratio": h["end_to_end_seconds"] / o["end_to_end_seconds"],
                    "accuracy_gap_points": 100 * (o["test_accuracy"] - h["test_accuracy"]),
                    "accuracy_seed_paired": seed_paired(runs, "omnitune", other)}
    return out


def markdown(report: dict) -> str:
    m, j, s = report["machine"], report["job"], report["summary"]
    peak = report["matmul_peak_gflops"]
    lines = [
        f"Machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs ({', '.join(m['cpu_flags']) or 'no AVX2'}); "
        f"native bf16: {'yes' if m['native_bf16'] else 'no'} (oneDNN bf16: {m['mkldnn_bf16_supported']}); "
        f"precision **{j['precision']}**, {j['threads']} threads; {j['precision']} matmul peak "
        f"{peak['before']:.0f} GFLOP/s before and {peak['after']:.0f} after the runs.",
        f"Job: {j['sizes']['train']} train / {j['sizes']['validation']} validation / {j['sizes']['test']} test "
        f"reviews, {j['epochs']} epoch(s), batch {j['batch_size']}, lr {j['lr']:g}, {report['rounds']} round(s) "
        f"(medians).", "",
        "| | train samples/s | omnitune's ratio | train s | end-to-end s | test accuracy "
        "| useful GFLOP/s (share of peak) |",
        "|---|---|---|---|---|---|---|"]
    for config in CONFIGS:
        if config not in s:
            continue
        r = s[config]
        ratio = f"{s[f'omnitune_vs_{config}']['samples_per_s_ratio']:.2f}x" if f"omnitune_vs_{config}" in s else ""
        lines.append(f"| {LABELS[config]} | {r['samples_per_s']:.1f} | {ratio} | {r['train_seconds']:.1f} | "
                     f"{r['end_to_end_seconds']:.1f} | {r['test_accuracy']:.4f} | {r['useful_gflops']:.0f} "
                     f"({r['useful_gflops'] / max(peak.values()):.0%}) |")
    for other in ("hf", "hf-grouped"):
        if (c := s.get(f"omnitune_vs_{other}")) is not None:
            lines.append(f"\nAgainst the {LABELS[other]}: omnitune trains {c['samples_per_s_ratio']:.2f}x its "
                         f"samples/s and finishes the whole job {c['end_to_end_ratio']:.2f}x as fast "
                         f"({s['omnitune']['end_to_end_seconds']:.0f} s against {s[other]['end_to_end_seconds']:.0f} s "
                         f"end to end); test accuracy {c['accuracy_gap_points']:+.2f} points (medians).")
            if (sp := c.get("accuracy_seed_paired")) and sp["n"] >= 2:
                lines.append(f"Seed-paired test accuracy difference (omnitune minus {LABELS[other]}, {sp['n']} seeds): "
                             f"mean {sp['mean']:+.2f} points, sd {sp['sd']:.2f}, 95% interval "
                             f"[{sp['low']:+.2f}, {sp['high']:+.2f}] (half-width {sp['half_width']:.2f}).")
    lines += ["", "Every run, in order (load = 1-minute load average before / after):", "",
              "| seed | round | position | configuration | train samples/s | end-to-end s | test accuracy | load |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r.get('seed', '')} | {r['round']} | {r['position']} | {r['config']} | failed: {r['error']} | | | |")
        else:
            lines.append(f"| {r.get('seed', '')} | {r['round']} | {r['position']} | {r['config']} | {r['samples_per_s']:.1f} | "
                         f"{r['end_to_end_seconds']:.1f} | {r['test_accuracy']:.4f} | "
                         f"{r['load_before']:.2f} / {r['load_after']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-samples", type=int, default=None, help="subset of the train split (default: all)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="subset of the validation and of the test split (default: all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 where oneDNN has a native bf16 path (avx512_bf16/AMX), else fp32")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--rounds", type=int, default=1, help="repeat the three runs, rotating their order")
    p.add_argument("--seeds", type=int, default=1,
                   help="throughput mode: N seeds (--seed, --seed+1, ...), each with its own split and training "
                        "seed shared by every configuration; the summary adds the seed-paired accuracy difference")
    p.add_argument("--configs", default=None, help="subset of " + ",".join(CONFIGS) + " (throughput mode)")
    p.add_argument("--mode", choices=["throughput", "time-to-accuracy"], default="throughput",
                   help="time-to-accuracy: omnitune's shipped recipe against the Trainer's documented one "
                        "(lr 2e-5, 3 epochs, grouped), test accuracy against wall time, one PNG")
    p.add_argument("--curve-every", type=int, default=1600,
                   help="time-to-accuracy: training samples between test-accuracy points")
    p.add_argument("--out", default=None, help="folder for the JSON and markdown (default: bench/results)")
    p.add_argument("--worker", choices=CONFIGS + TTA_CONFIGS, help=argparse.SUPPRESS)
    p.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return run_worker(args.worker, args.job, args.result)

    tta = args.mode == "time-to-accuracy"
    configs = list(TTA_CONFIGS) if tta else [c.strip() for c in (args.configs or ",".join(CONFIGS)).split(",")
                                             if c.strip()]
    if unknown := set(configs) - set(CONFIGS) - (set(TTA_CONFIGS) if tta else set()):
        p.error(f"--configs: unknown {sorted(unknown)}; choose from {CONFIGS}")
    if args.precision == "auto":
        args.precision = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    from omnitune.core.base import assets

    assets_dir = assets.cache_root().resolve()  # unpacked once, shared by every run's fresh cache
    assets_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="omnitune-bench-"))
    t_all = time.perf_counter()
    try:
        machine = machine_info()
        if tta and args.seeds != 1:
            p.error("--seeds is for the throughput mode")
        seeds = [args.seed + i for i in range(args.seeds)]
        jobs = {}
        for seed in seeds:
            job, lengths, model_config = prepare(args, root, assets_dir, seed)
            if tta:
                job["curve_every"] = args.curve_every
            jobs[seed] = (job, root / f"job-{seed}.json")
            jobs[seed][1].write_text(json.dumps(job))
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        peak = {"before": matmul_peak(dtype, args.threads)}
        print(f"{machine['cpu_model']}; {args.precision} matmul peak {peak['before']:.0f} GFLOP/s "
              f"({args.threads} threads)", flush=True)
        flops_per_sample = useful_train_flops(model_config, lengths, 1) / max(len(lengths), 1)
        runs = []
        for seed, rnd in ((s, r) for s in seeds for r in range(args.rounds)):
            job_file = jobs[seed][1]
            order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
            for position, config in enumerate(order):
                result_file = root / f"result-{seed}-{rnd}-{config}.json"
                load_before, t = os.getloadavg()[0], time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--worker", config, "--job", str(job_file),
                                       "--result", str(result_file)],
                                      env=_fresh_env(root, f"{seed}-{rnd}-{config}", assets_dir, args.threads))
                run = {"seed": seed, "round": rnd, "position": position, "config": config, "load_before": load_before,
                       "load_after": os.getloadavg()[0], "process_seconds": time.perf_counter() - t}
                if proc.returncode != 0 or not result_file.exists():
                    run["error"] = f"exit code {proc.returncode}"
                else:
                    run.update(json.loads(result_file.read_text()))
                    run.pop("model_dir")
                    run["useful_gflops"] = flops_per_sample * run["samples_trained"] / run["train_seconds"] / 1e9
                    print(f"seed {seed} round {rnd} {config}: {run['samples_per_s']:.1f} samples/s, end-to-end "
                          f"{run['end_to_end_seconds']:.1f} s, test accuracy {run['test_accuracy']:.4f}", flush=True)
                runs.append(run)
        peak["after"] = matmul_peak(dtype, args.threads)
        report = {"machine": machine, "job": {k: v for k, v in job.items() if k not in ("data_files", "work_dir")},
                  "rounds": args.rounds, "seeds": seeds, "command": " ".join(["python", "bench/text_vs_hf_trainer.py", *sys.argv[1:]]), "matmul_peak_gflops": peak, "mode": args.mode,
                  "useful_train_gflop_per_epoch": flops_per_sample * len(lengths) / 1e9,
                  "runs": runs, "summary": summarise_tta(runs) if tta else summarise(runs),
                  "bench_seconds": time.perf_counter() - t_all}
        out_dir = Path(args.out or Path(__file__).parent / "results")
        out_dir.mkdir(parents=True, exist_ok=True)
        name = "time_to_accuracy" if tta else "text_vs_hf_trainer"
        if tta:
            curves_png(runs, report["summary"].get("target_accuracy"), out_dir / "time_to_accuracy.png")
        text = markdown_tta(report) if tta else markdown(report)
        (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1))
        (out_dir / f"{name}.md").write_text(text)
        print(text)
        print(f"written to {out_dir}", flush=True)
        if any("error" in r for r in runs):
            sys.exit(1)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
