"""``train.time_budget_minutes`` re-plans as the speed changes, on a fake clock.

The trainer times its optimiser steps with an injected clock; here each step "takes" what the test
says (multiples of 1/64 s, so every sum of seconds is exact in floating point). A tiny regression
trains 2,000 planned steps (4 epochs of 500) in a budget that holds 1,600 steps at the steady speed.
Speed windows are 50 steps; the first step of a process is left out of its window.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from omnitune.core.base.task import DataBundle, DataReport, LayerGroup
from omnitune.core.loop.optim import LRSchedule
from omnitune.core.loop.trainer import Interrupted, LoopSettings, Trainer

D = 1 / 64  # seconds of one step at the steady speed
STEADY = 1600  # steps the budget holds at that speed
N_TRAIN, BATCH, EPOCHS = 2000, 4, 4  # 500 steps per epoch, 2,000 planned
LR, WARMUP = 0.01, 100


class Samples(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class Regression:
    name = "tiny-regression"
    main_metric, main_metric_mode = "mse", "min"

    def collate(self, samples):
        return {"x": torch.stack([s[0] for s in samples]), "y": torch.stack([s[1] for s in samples])}

    def forward(self, model, batch, train):
        pred = model(batch["x"]).squeeze(-1)
        return {"loss_sum": (pred - batch["y"]).square().sum(), "num_items": len(batch["y"]), "outputs": pred.detach()}

    def predict_batch(self, model, batch, outputs):
        return outputs["outputs"].tolist(), batch["y"].tolist()

    def compute_metrics(self, predictions, references):
        return {"mse": sum((p - r) ** 2 for p, r in zip(predictions, references)) / len(references)}


class FakeClock:
    """Time as the test says: optimiser step ``i`` (1-based) takes ``duration(i)`` seconds. The loop
    reads the clock before a step (``state.step`` is i - 1) and after it (``state.step`` is i)."""

    def __init__(self, duration) -> None:
        self.duration, self.now, self.trainer = duration, 0.0, None

    def __call__(self) -> float:
        now = self.now
        self.now += self.duration(self.trainer.state.step + 1)
        return now


def make_trainer(run_dir: Path, duration, callbacks=(), save: bool = False) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    groups = [{"params": list(model.parameters()), "base_lr": LR, "lr_scale": 1.0, "lr": LR}]
    bundle = DataBundle(train=Samples(N_TRAIN, 1), validation=Samples(8, 2), test=None, report=DataReport("tiny"))
    settings = LoopSettings(epochs=EPOCHS, batch_size=BATCH, max_grad_norm=None, precision="fp32", log_every=10_000,
                            save_checkpoints=save, time_budget=STEADY * D)
    lrs: dict[int, float] = {}

    def record_lr(trainer: Trainer) -> None:
        lrs[trainer.state.step] = trainer.optimizer.param_groups[0]["lr"]

    clock = FakeClock(duration)
    trainer = Trainer(Regression(), model, bundle, run_dir, seed=3, optimizer=torch.optim.SGD(groups, lr=LR),
                      make_schedule=lambda opt, total: LRSchedule(opt, "linear", total, WARMUP), loop=settings,
                      groups=[LayerGroup("all", [model])], select_metric="mse", select_mode="min",
                      callbacks=[record_lr, *callbacks], clock=clock)
    clock.trainer, trainer.lrs = trainer, lrs
    return trainer


def steady(step: int) -> float:
    return D


def slow_start(step: int) -> float:  # a busy neighbour for the first 40 steps: 4x the time per step
    return 4 * D if step <= 40 else D


def slower_later(step: int) -> float:  # half the speed from step 621 on
    return D if step <= 620 else 2 * D


def plans(state) -> list[tuple[int, int]]:
    return [(h["step"], h["planned_steps"]) for h in state.budget_history]


def assert_lr_continuous(lrs: dict[int, float], state) -> None:
    """The LR the trainer set after each step (for the next update), linear schedule: warmup as
    planned at the start; then straight lines that meet at each re-plan, the line after a re-plan at
    step s reaching 0 at the new plan's last step; 0 after the last step."""
    assert all(lrs[t] == pytest.approx(LR * (t + 1) / WARMUP, abs=1e-12) for t in range(1, WARMUP))
    for s, total in plans(state):
        if s - 2 <= WARMUP:  # during warmup only the end of the decay moves (checked below)
            continue
        # Continuity: the LR at s is on the old line (the same slope as the two steps before it) ...
        assert lrs[s] - lrs[s - 1] == pytest.approx(lrs[s - 1] - lrs[s - 2], abs=1e-9)
        # ... and from there the new line reaches 0 at the new total.
        assert lrs[s + 1] - lrs[s] == pytest.approx(-lrs[s] / (total - s), abs=1e-9)
    last = state.step
    assert lrs[last] == pytest.approx(0.0, abs=1e-12) and lrs[last - 1] > 0
    steps = sorted(lrs)
    jumps = [abs(lrs[b] - lrs[a]) for a, b in zip(steps, steps[1:])]
    assert max(jumps) <= LR / min(WARMUP, *(total - s for s, total in plans(state))) + 1e-12


def test_a_slow_start_costs_only_its_own_time(tmp_path):
    base = make_trainer(tmp_path / "steady", steady)
    base.fit()
    assert base.state.step == STEADY and plans(base.state) == [(50, STEADY)]

    slow = make_trainer(tmp_path / "slow", slow_start)
    slow.fit()
    # At step 50 the window (steps 2-50) is mostly slow: 472 steps planned; at step 100 (steps 51-100,
    # all steady) the budget left buys 1,380 more. Deciding once, at step 50, would keep 472 (30%).
    assert plans(slow.state) == [(50, 472), (100, 1480)]
    assert slow.state.step == 1480 >= 0.9 * base.state.step
    assert slow.state.train_seconds <= STEADY * D
    assert "time_budget_minutes" in slow.state.stop_reason
    # Both re-plans fall in warmup: warmup stays as first planned and the decay ends at the new total.
    lrs = slow.lrs
    assert all(lrs[t] == pytest.approx(LR * (1 - (t - WARMUP) / (1480 - WARMUP)), abs=1e-12)
               for t in range(WARMUP, 1481))
    assert_lr_continuous(lrs, slow.state)


def test_a_run_that_slows_down_plans_down_and_ends_in_its_budget(tmp_path):
    trainer = make_trainer(tmp_path / "run", slower_later)
    trainer.fit()
    # Step 650: steps 601-650 took 1.6 D each (20 at D, 30 at 2 D); step 700: 2 D each.
    assert plans(trainer.state) == [(50, STEADY), (650, 1225), (700, 1110)]
    assert trainer.state.step == 1110
    assert trainer.state.train_seconds <= STEADY * D  # deciding once at step 50: 2,580 D
    assert_lr_continuous(trainer.lrs, trainer.state)


@pytest.mark.parametrize("duration,stop_at", [(slow_start, 75), (slower_later, 675), (slower_later, 720)])
def test_resume_after_a_replan_matches_an_uninterrupted_run(tmp_path, duration, stop_at):
    # Stopped between re-plans or after the last; the resumed process leaves its first step out of
    # the window that was open at the checkpoint, and plans as the uninterrupted run did.
    full = make_trainer(tmp_path / "full", duration, save=True)
    full.fit()

    def stop(trainer):
        if trainer.state.step == stop_at:
            trainer.request_stop()

    with pytest.raises(Interrupted):
        make_trainer(tmp_path / "cut", duration, callbacks=[stop], save=True).fit()
    resumed = make_trainer(tmp_path / "cut", duration, save=True)
    resumed.fit(resume=True)
    assert resumed.state.budget_history == full.state.budget_history and len(full.state.budget_history) >= 2
    assert resumed.state.step == full.state.step and resumed.state.train_seconds == full.state.train_seconds
    assert resumed.lrs == {t: lr for t, lr in full.lrs.items() if t > stop_at}
    for a, b in zip(resumed._unwrapped.parameters(), full._unwrapped.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
