"""Multi-process runs, as subprocesses (Accelerate's own style): N processes at global batch B train
like one process at B, write one run folder, shard evaluation without counting a sample twice, and
resume after a kill -9."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ..conftest import make_reviews, text_recipe, write_recipe
from ..resume_check import assert_same_run, full_and_killed_runs_agree

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


def _assert_same_run(a: Path, b: Path) -> None:
    """The same training-loss curve, and (resume_check) the same last/best weights and metrics."""
    train_a, train_b = _events(a, "train"), _events(b, "train")
    assert [e["step"] for e in train_a] == [e["step"] for e in train_b]
    for x, y in zip(train_a, train_b):
        assert x["loss"] == pytest.approx(y["loss"], abs=TOL), x["step"]
    assert_same_run(a, b, metric_tol=TOL, weight_tol=TOL)


def test_two_processes_match_one_at_the_same_global_batch(tmp_path, tiny_bert, reviews_csv):
    one = _recipe(tmp_path, tiny_bert, reviews_csv, "one", batch_size=8)
    two = _recipe(tmp_path, tiny_bert, reviews_csv, "two", batch_size=4)
    _omnitune("train", str(one), cwd=tmp_path)
    out = _omnitune("train", str(two), "--nproc", "2", cwd=tmp_path)
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
