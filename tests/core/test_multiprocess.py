"""Multi-process runs, as subprocesses (Accelerate's own style): N processes at global batch B train
like one process at B, write one run folder, shard evaluation without counting a sample twice, and
resume after a kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from ..conftest import make_reviews, text_recipe, write_recipe

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


def _omnitune(*args, cwd, check=True, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "omnitune.core.cli", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, **popen)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def _events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def _assert_same_run(a: Path, b: Path) -> None:
    train_a, train_b = _events(a, "train"), _events(b, "train")
    assert [e["step"] for e in train_a] == [e["step"] for e in train_b]
    for x, y in zip(train_a, train_b):
        assert x["loss"] == pytest.approx(y["loss"], abs=TOL), x["step"]
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    for split in ("validation", "test"):
        for key, value in ma[split].items():
            assert mb[split][key] == pytest.approx(value, abs=TOL), (split, key)
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    for key in wa:
        assert (wa[key] - wb[key]).abs().max().item() < TOL, key


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


def _wait_for_checkpoint(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    state = run_dir / "checkpoints" / "last" / "trainer_state.json"
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, "training ended before it could be killed"
        try:
            if json.loads(state.read_text())["step"] >= step:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step} after {timeout} s")


@pytest.mark.slow
def test_two_process_run_killed_hard_resumes_exactly(tmp_path, tiny_bert, reviews_csv):
    # Dropout on: each process's RNG state must come back for the resumed run to agree.
    full = _recipe(tmp_path, tiny_bert, reviews_csv, "full", batch_size=4, dropout=0.1, eval_every=3)
    killed = _recipe(tmp_path, tiny_bert, reviews_csv, "killed", batch_size=4, dropout=0.1, eval_every=3)
    _omnitune("train", str(full), "--nproc", "2", cwd=tmp_path)
    run_dir = tmp_path / "runs-killed" / "run"
    proc = _omnitune("train", str(killed), "--nproc", "2", cwd=tmp_path, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_checkpoint(run_dir, 6, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, no chance to save
        proc.wait()
    assert not (run_dir / "metrics.json").exists()
    _omnitune("train", "--resume", str(run_dir), "--nproc", "2", cwd=tmp_path)
    assert _events(run_dir, "resume")
    _assert_same_run(tmp_path / "runs-full" / "run", run_dir)
