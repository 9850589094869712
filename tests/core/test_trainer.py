"""The training loop: accumulation, resume, interruption, early stopping, divergence."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from omnitune.core.api import train
from omnitune.core.base.errors import TrainingDiverged
from omnitune.core.loop.trainer import Interrupted

from ..conftest import text_recipe, write_recipe


def _weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def _run(tmp_path, tiny_bert, reviews_csv, name="run", callbacks=(), **sections):
    recipe = text_recipe(tiny_bert, reviews_csv, tmp_path, **sections)
    recipe["output"]["run_name"] = name
    path = write_recipe(tmp_path / f"{name}.yaml", recipe)
    return train(path, callbacks=list(callbacks))


def _assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-5, msg=k)


def test_grad_accumulation_2x4_matches_batch_8(tmp_path, tiny_bert, reviews_csv):
    common = {"data": {"max_samples": 64}, "regularization": {"dropout": 0.0}}
    r8 = _run(tmp_path, tiny_bert, reviews_csv, "b8", train={"batch_size": 8, "grad_accum": 1, "epochs": 1}, **common)
    r44 = _run(tmp_path, tiny_bert, reviews_csv, "b4x2", train={"batch_size": 4, "grad_accum": 2, "epochs": 1},
               **common)
    assert r8.metrics["steps"] == r44.metrics["steps"] == 8
    _assert_same(_weights(r8.run_dir), _weights(r44.run_dir), atol=1e-5)
    # And it is not trivially equal: a batch of 4 without accumulation trains differently.
    r4 = _run(tmp_path, tiny_bert, reviews_csv, "b4", train={"batch_size": 4, "grad_accum": 1, "epochs": 1}, **common)
    w4, w8 = _weights(r4.run_dir), _weights(r8.run_dir)
    assert any(not torch.allclose(w4[k], w8[k], atol=1e-5) for k in w8)


def test_resumed_run_matches_uninterrupted(tmp_path, tiny_bert, reviews_csv):
    # Dropout on, so the RNG state must be restored for the runs to agree.
    sections = {"regularization": {"dropout": 0.1}, "train": {"epochs": 2, "eval_every": 5},
                "data": {"max_samples": 96}}
    full = _run(tmp_path, tiny_bert, reviews_csv, "full", **sections)

    def stop_at_7(trainer):
        if trainer.state.step == 7:
            trainer.request_stop()

    with pytest.raises(Interrupted) as err:
        _run(tmp_path, tiny_bert, reviews_csv, "cut", callbacks=[stop_at_7], **sections)
    cut_dir = tmp_path / "cut"
    assert f"omnitune train --resume {cut_dir}" in str(err.value)
    assert json.loads((cut_dir / "checkpoints" / "last" / "trainer_state.json").read_text())["step"] == 7
    resumed = train(None, resume=cut_dir)
    _assert_same(_weights(full.run_dir), _weights(resumed.run_dir), atol=1e-6)
    for split in ("validation", "test"):
        assert resumed.metrics[split]["loss"] == pytest.approx(full.metrics[split]["loss"], abs=1e-5)
    assert resumed.metrics["steps"] == full.metrics["steps"]


def test_sigterm_saves_checkpoint_and_resumes(tmp_path, tiny_bert, reviews_csv):
    def send_sigterm(trainer):
        if trainer.state.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted):
        _run(tmp_path, tiny_bert, reviews_csv, "term", callbacks=[send_sigterm], train={"epochs": 1},
             data={"max_samples": 96})
    state = json.loads((tmp_path / "term" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 3 and not state["finished"]
    result = train(None, resume=tmp_path / "term")
    assert result.metrics["steps"] == 6 and (result.run_dir / "model" / "config.json").exists()


def test_early_stopping_stops_after_patience(tmp_path, tiny_bert, reviews_csv):
    # With a zero-ish LR nothing improves after the first evaluation: stop after `patience` more.
    result = _run(tmp_path, tiny_bert, reviews_csv, "es", train={"epochs": 10, "lr": 1e-12},
                  early_stopping={"enabled": True, "metric": "loss", "patience": 2, "min_delta": 0.01})
    assert result.metrics["stop_reason"] == "early stopping"
    assert result.metrics["epochs_completed"] == 3  # first eval sets the best, then 2 without improvement
    evals = [json.loads(l) for l in (result.run_dir / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "eval" for e in evals) == 3


def test_training_learns_and_writes_the_run_folder(tmp_path, tiny_bert, reviews_csv):
    result = _run(tmp_path, tiny_bert, reviews_csv, "learn", train={"epochs": 8})
    assert result.metrics["test"]["accuracy"] >= 0.9, result.metrics["test"]
    for name in ("recipe.yaml", "metrics.json", "events.jsonl", "report.md", "learning_curves.png",
                 "confusion_matrix_test.png", "data_report.json", "model/README.md", "model/config.json",
                 "model/model.safetensors", "checkpoints/best/model.safetensors",
                 "checkpoints/last/state.safetensors", "checkpoints/last/state.json"):
        assert (result.run_dir / name).exists(), name
    assert any((result.run_dir / "tensorboard").iterdir())
    report = (result.run_dir / "report.md").read_text()
    assert "accuracy" in report and "learning_curves.png" in report


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_bert, reviews_csv):
    def poison(trainer):
        if trainer.state.epoch == 1 and trainer.state.micro_in_epoch >= 2:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"loss is nan at step \d+ \(epoch 1\)"):
        _run(tmp_path, tiny_bert, reviews_csv, "nan", callbacks=[poison], train={"epochs": 3})
    last = tmp_path / "nan" / "checkpoints" / "last"
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["epoch"] == 1  # saved at the end of epoch 0, before the poisoning
    assert all(torch.isfinite(t).all() for t in load_file(str(last / "model.safetensors")).values())


def test_time_budget_plans_fewer_steps_by_hand():
    from omnitune.core.loop.trainer import TimeBudget

    budget = TimeBudget(60.0, measure_steps=10)
    assert budget.interval(100) == 10 and budget.interval(24) == 6 and budget.interval(4) == 2

    def plan(done, so_far, window_steps, window_seconds, current=100, ceiling=100):
        return budget.plan(done, so_far, window_steps, window_seconds, current, ceiling)

    assert plan(10, 20.0, 9, 18.0) == 30       # 2 s per step: the 40 s left buy 20 more steps
    assert plan(10, 1.0, 9, 0.9) is None       # 0.1 s per step: all 100 fit
    assert plan(10, 1e6, 9, 9e5) == 11         # at least one more step than already done
    assert plan(10, 20.0, 9, 9.0) == 50        # a slow first step (warm-up) left out of the window: 1 s per step
    assert budget.per_step == 1.0
    # Later windows: up when the speed recovers (never above what the recipe asked), down when it drops.
    assert plan(60, 50.0, 10, 2.0, current=80, ceiling=90) == 90   # 0.2 s per step: 10 s buy 50 more, capped
    assert plan(60, 50.0, 10, 10.0, current=80) == 70              # 1 s per step: 10 more
    # Hysteresis: no change within 5% of the steps the current plan still has to go.
    assert plan(10, 10.0, 10, 10.0, current=62) is None            # 60 fit: 2 off, of 52 to go
    assert plan(10, 10.0, 10, 10.0, current=64) == 60              # 4 off, of 54 to go
def test_time_budget_cuts_the_schedule_and_resumes_with_the_same_plan(tmp_path, tiny_bert, reviews_csv):
    # 96 samples, batch 4, 1 epoch = 24 planned steps; a budget of 6 ms cannot hold them, so after a
    # quarter of the plan (6 steps) the loop plans 7, and the linear schedule reaches 0 at step 7.
    sections = {"train": {"epochs": 1, "batch_size": 4, "log_every": 1, "time_budget_minutes": 1e-4},
                "sched": {"name": "linear"}, "regularization": {"dropout": 0.1}, "data": {"max_samples": 96}}
    full = _run(tmp_path, tiny_bert, reviews_csv, "budget", **sections)
    assert full.metrics["steps"] == 7
    assert full.metrics["time_budget"]["chosen_steps"] == 7
    assert "time_budget_minutes" in full.metrics["stop_reason"]
    events = [json.loads(l) for l in (full.run_dir / "events.jsonl").read_text().splitlines()]
    budget = [e for e in events if e["event"] == "time_budget"]
    assert len(budget) == 1 and budget[0]["planned_steps"] == 24 and budget[0]["chosen_steps"] == 7
    lrs = [e["lr"] for e in events if e["event"] == "train" and "lr" in e]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[5] > 0, lrs

    def stop_at_6(trainer):
        if trainer.state.step == 6:
            trainer.request_stop()

    with pytest.raises(Interrupted):
        _run(tmp_path, tiny_bert, reviews_csv, "budget-cut", callbacks=[stop_at_6], **sections)
    resumed = train(None, resume=tmp_path / "budget-cut")
    assert resumed.metrics["steps"] == 7
    _assert_same(_weights(full.run_dir), _weights(resumed.run_dir), atol=1e-6)
