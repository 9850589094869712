"""Multi-process runs, as subprocesses (Accelerate's own style): N processes at global batch B train
like one process at B, write one run folder, shard evaluation without counting a sample twice, and
resume after a kill -9; and every registered task that trains under DDP does the same on its tiny
fixture (token-level losses with unequal token counts per process, generation in evaluation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from ..conftest import make_reviews, text_recipe, write_recipe
from ..fixtures import tiny_recipe
from ..resume_check import Background, assert_same_run, full_and_killed_runs_agree

# fp32 and one thread per process: the two set-ups then differ only in the order of float sums
# (gradients all-reduced over two processes instead of summed in one), far below this tolerance.
TOL = 1e-4


def _recipe(tmp_path, tiny_bert, reviews_csv, name, batch_size, dropout=0.0, **train):
    # An odd number of validation rows, so the two evaluation shards are uneven.
    validation = tmp_path / "validation.csv"
    pd.DataFrame(make_reviews(23, seed=7)).to_csv(validation, index=False)
    recipe = text_recipe(
        tiny_bert, reviews_csv, tmp_path / f"runs-{name}",
        # 96 training rows: 12 steps of a global batch of 8 per epoch, no partial batch.
        data={"max_samples": 96, "validation_source": str(validation)},
        train={"epochs": 2, "batch_size": batch_size, "eval_every": 6, "threads": 1, "lr": 3e-3, **train},
        regularization={"dropout": dropout})
    return write_recipe(tmp_path / f"{name}.yaml", recipe)


def _omnitune(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-m", "omnitune.core.cli", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def _assert_same_run(a: Path, b: Path, weight_tol: float = TOL) -> None:
    """The same training-loss curve, and (resume_check) the same last/best weights and metrics."""
    train_a, train_b = _events(a, "train"), _events(b, "train")
    assert [e["step"] for e in train_a] == [e["step"] for e in train_b]
    for x, y in zip(train_a, train_b):
        assert x["loss"] == pytest.approx(y["loss"], abs=TOL), x["step"]
    assert_same_run(a, b, metric_tol=TOL, weight_tol=weight_tol)


def test_two_processes_match_one_at_the_same_global_batch(tmp_path, tiny_bert, reviews_csv):
    one = _recipe(tmp_path, tiny_bert, reviews_csv, "one", batch_size=8)
    two = _recipe(tmp_path, tiny_bert, reviews_csv, "two", batch_size=4)
    with Background(one) as background:  # side by side: much of each run is starting Python, importing torch
        out = _omnitune("train", str(two), "--nproc", "2", cwd=tmp_path)
        background.wait()
    run_one, run_two = tmp_path / "runs-one" / "run", tmp_path / "runs-two" / "run"
    # One run folder, written once: one summary printed, one "finished" event, one model.
    assert [p.name for p in (tmp_path / "runs-two").iterdir()] == ["run"]
    assert out.stdout.count("run folder:") == 2  # the start line and the summary, main process only
    assert len(_events(run_two, "finished")) == 1
    metrics = json.loads((run_two / "metrics.json").read_text())
    assert metrics["timing"]["processes"] == 2 and metrics["steps"] == 24
    # The loss moves by far more than the tolerance, so agreeing within it is not trivial.
    losses = [e["loss"] for e in _events(run_two, "train")]
    assert max(losses) - min(losses) > 100 * TOL
    _assert_same_run(run_one, run_two)
    # The shards were uneven, and every validation sample counted once (the metrics match).
    report = json.loads((run_two / "data_report.json").read_text())
    assert report["rows_kept"]["validation"] % 2 == 1


@pytest.mark.slow
def test_torchrun_launch_matches_one_process(tmp_path, tiny_bert, reviews_csv):
    one = _recipe(tmp_path, tiny_bert, reviews_csv, "one", batch_size=8)
    two = _recipe(tmp_path, tiny_bert, reviews_csv, "two", batch_size=4)
    _omnitune("train", str(one), cwd=tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "omnitune.core.cli", "train", str(two)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs-two").iterdir()] == ["run"]
    _assert_same_run(tmp_path / "runs-one" / "run", tmp_path / "runs-two" / "run")


@pytest.mark.slow
def test_two_process_run_killed_hard_resumes_exactly(tmp_path, tiny_bert, reviews_csv):
    # Dropout on: each process's RNG state must come back for the resumed run to agree. The kill
    # reaches the launcher and both workers; nothing gets a chance to save.
    recipe = yaml.safe_load(_recipe(tmp_path, tiny_bert, reviews_csv, "r", batch_size=4, dropout=0.1,
                                    eval_every=3).read_text())
    killed = full_and_killed_runs_agree(recipe, tmp_path / "runs", kill_at=6, cli_args=["--nproc", "2"])
    assert not killed["finished"]
    assert _events(tmp_path / "runs" / "killed", "resume")


# ------------------------------------------------------------------------- every registered task
# Two processes x batch 2 against one process x batch 4 (no accumulation) for every registered task
# that trains under DDP, on the tiny model and data of the task's own fixture; fp32, gloo, dropout
# off (each process draws its own masks, so dropout would differ by design). What stays different is
# where float sums happen: one backward over 4 samples, or two over 2 then all-reduced, and the
# gathered evaluation's sums in another order. Seen over every task here: losses differ by at most
# 1.3e-6 and metrics by 1.1e-5 (a perplexity near 80), within TOL (1e-4); every run's loss moves by
# more than 10 x TOL (checked; by 0.012 to 2.2). Weights differ by at most 6e-8 while SGD moves them
# by 9e-5 (seq2seq) to 5e-3 in these 4 steps: WEIGHT_TOL (1e-6) sits between, so a gradient off by
# any factor fails it.
STEPS = 4
WEIGHT_TOL = 1e-6
# Recipe settings per task beyond the common ones below.
# causal-lm: replies that repeat reviews of 3 to 9 words, so their token counts vary, and batches in
# random order (length-grouped batches of such short texts hold equal lengths): the two processes'
# token counts then differ (checked below).
# image-classification: batch norm normalises by the statistics of each process's own micro-batch under
# DDP, so 2 x 2 cannot equal 4 while it trains; the head trains over the trunk with its statistics fixed.
SETTINGS = {"causal-lm": {"data.response_template": " {answer} because {review}", "model.max_length": 64,
                          "train.group_by_length": False},
            "image-classification": {"finetune.strategy": "feature_extraction", "finetune.freeze_norm_stats": True}}
# In `make test` (about 20 s each): causal-lm, token-level with replies of deliberately unequal length,
# and seq2seq, token-level too and with generation in evaluation (model.generation.eval_samples)
# sharded over the ranks and gathered. The other tasks run in `make test-slow`.
FAST = {"causal-lm", "seq2seq"}
# Token-level losses: the two processes' token counts must differ in some step (checked).
TOKEN_LEVEL = {"causal-lm", "seq2seq", "token-classification"}
# Generation in evaluation: the sample field that marks the fixed subset generated for the metrics.
GENERATED = {"seq2seq": "gen", "chat": "generate"}


def ddp_refusal(task, model) -> str | None:
    """Why the trainer refuses ``task`` in several processes, or None. Read from the task's own
    declarations, as the trainer reads them: several optimisers (MultiOptimizer, e.g. TTS's
    discriminator and generator) and an inner loop (InnerLoop, PPO) run in one process only."""
    from omnitune.core.base import task as contract

    if isinstance(task, contract.MultiOptimizer) and task.optimizer_parts(model):
        return "several optimisers (optimizer_parts) train in one process only"
    inner_loop = getattr(contract, "InnerLoop", None)
    if inner_loop is not None and isinstance(task, inner_loop):
        return "an inner loop (inner_batches) trains in one process only"
    return None


def _task_params() -> list:
    from omnitune.core.base.registry import list_tasks

    return [pytest.param(name, id=name, marks=() if name in FAST else pytest.mark.slow) for name in list_tasks()]


def _set(raw: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = raw
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value


def _task_recipe(task_name: str, folder: Path) -> dict:
    raw = tiny_recipe(task_name, folder / "fixture")
    if task_name == "causal-lm":
        rows = [{"review": r["text"], "answer": "yes" if r["label"] == "pos" else "no"} for r in make_reviews(200)]
        pd.DataFrame(rows).to_csv(folder / "reviews-qa.csv", index=False)
        raw["data"]["source"] = str(folder / "reviews-qa.csv")
    # Epochs enough for STEPS steps of the smallest training set (ASR's has 2 steps an epoch). SGD, not
    # AdamW: Adam divides each gradient by its own running size, so a normalisation off by a constant
    # factor (e.g. DDP's average not undone) would hardly move its weights; SGD's move with it.
    settings = {"seed": 3, "train.epochs": STEPS, "train.max_steps": STEPS, "train.grad_accum": 1,
                "train.log_every": 1, "train.eval_every": STEPS // 2, "train.threads": 1, "train.precision": "fp32",
                "optim.name": "sgd", "regularization.dropout": 0.0, "output.dir": str(folder / "runs"),
                **SETTINGS.get(task_name, {})}
    for key, value in settings.items():
        _set(raw, key, value)
    return raw


def _items_per_rank(task, model, bundle, recipe) -> list[tuple[int, int]]:
    """The two processes' item counts (the loss's denominator: samples, or tokens) in each step, their
    micro-batches taken as the trainer shards them: rank r takes every 2nd batch of 2 from the epoch's
    order (length-grouped with train.group_by_length)."""
    from omnitune.core.base.data import BatchOrder

    lengths = bundle.train_lengths if recipe.train.group_by_length else None
    order = BatchOrder(len(bundle.train), 2, recipe.seed, lengths, group_size=4 * 50).batches(0)
    with torch.no_grad():
        items = [int(task.forward(model, task.collate([bundle.train[i] for i in b]), train=False)["num_items"])
                 for b in order[:2 * STEPS]]
    return list(zip(items[0::2], items[1::2]))


def _train_one_and_two(raw: dict, folder: Path) -> tuple[Path, Path]:
    """The recipe at global batch 4 in one process and in two (2 each), run side by side."""
    paths = {}
    for name, batch in (("one", 4), ("two", 2)):
        paths[name] = write_recipe(folder / f"{name}.yaml", {**raw, "train": {**raw["train"], "batch_size": batch},
                                                             "output": {**raw["output"], "run_name": name}})
    with Background(paths["one"]) as one, Background(paths["two"], ["--nproc", "2"]) as two:
        one.wait()
        two.wait()
    return folder / "runs" / "one", folder / "runs" / "two"


@pytest.mark.parametrize("task_name", _task_params())
def test_every_task_trains_alike_in_two_processes(task_name, tmp_path):
    from torch import nn

    from omnitune.core.api import build_task
    from omnitune.core.base.recipe import validate_recipe

    raw = _task_recipe(task_name, tmp_path)
    recipe = validate_recipe(raw, where=f"{task_name} tiny recipe")
    task = build_task(recipe)
    bundle = task.build_datasets()
    model = task.build_model()
    reason = ddp_refusal(task, model)
    if reason:
        pytest.skip(f"{task_name}: {reason}")
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if batch_norm and not recipe.finetune.freeze_norm_stats:
        pytest.skip("batch norm statistics are per process under DDP, so 2 x 2 cannot equal 4")
    items = _items_per_rank(task, model, bundle, recipe)
    if task_name in TOKEN_LEVEL:  # the ranks' token counts differ: the normalisation across them matters
        assert any(a != b for a, b in items), items
    flag = GENERATED.get(task_name)
    if flag:  # both processes generate a share of the subset, so the metrics need the gathered replies
        generated = [i for i in range(len(bundle.validation)) if bundle.validation[i][flag]]
        assert {i % 2 for i in generated} == {0, 1}, generated
    one, two = _train_one_and_two(raw, tmp_path)
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["timing"]["processes"] == 2 and metrics["steps"] == STEPS
    if flag and "gen_samples" in metrics["validation"]:  # every generated sample scored once
        assert metrics["validation"]["gen_samples"] == len(generated)
    losses = [e["loss"] for e in _events(two, "train")]
    assert len(losses) == STEPS and max(losses) - min(losses) > 10 * TOL, losses
    _assert_same_run(one, two, weight_tol=WEIGHT_TOL)
