"""A task that drives an inner loop (InnerLoop: several optimiser steps per collated batch, as PPO).

The tiny task below splits each batch of 4 into 2 minibatches x 2 epochs (a fresh permutation per
epoch, drawn from the global RNG) and adds a term against predictions "rolled out" without gradients
from the weights at the start of the batch, as PPO's old policy. The trainer must take 4 optimiser
steps per batch, land on the weights of a hand-written loop, and resume exactly after a kill.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from omnitune.core.base.data import BatchOrder
from omnitune.core.base.errors import OmnituneError, RecipeError
from omnitune.core.base.task import DataBundle, DataReport, InnerLoop, LayerGroup
from omnitune.core.loop.budget import TimeBudget
from omnitune.core.loop.optim import LRSchedule
from omnitune.core.loop.trainer import Interrupted, LoopSettings, Trainer

SEED, LR, BATCH, EPOCHS, N_TRAIN = 3, 0.05, 4, 2, 16
INNER = 4  # 2 minibatches x 2 epochs


class Samples(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class SplitTask:
    name = "tiny-inner-loop"
    main_metric, main_metric_mode = "mse", "min"

    def __init__(self, steps: int = INNER) -> None:
        self.inner_steps_per_batch = steps

    def collate(self, samples):
        return {"x": torch.stack([s[0] for s in samples]), "y": torch.stack([s[1] for s in samples])}

    def inner_batches(self, model, batch):
        return split(model, batch, self.inner_steps_per_batch // 2)

    def forward(self, model, batch, train):
        pred = model(batch["x"]).squeeze(-1)
        loss = (pred - batch["y"]).square().sum()
        if "old" in batch:
            loss = loss + 0.5 * (pred - batch["old"]).square().sum()
        return {"loss_sum": loss, "num_items": len(batch["y"]), "outputs": pred.detach()}

    def predict_batch(self, model, batch, outputs):
        return outputs["outputs"].tolist(), batch["y"].tolist()

    def compute_metrics(self, predictions, references):
        return {"mse": sum((p - r) ** 2 for p, r in zip(predictions, references)) / len(references)}


def split(model, batch, epochs: int) -> list[dict]:
    """PPO's shape: roll out once without gradients, then ``epochs`` shuffled passes of 2 halves."""
    with torch.no_grad():
        old = model(batch["x"]).squeeze(-1) + 0.1 * torch.randn(len(batch["y"]))  # a sampled rollout
    out = []
    for _ in range(epochs):
        perm = torch.randperm(len(batch["y"]))
        for half in perm.chunk(2):
            out.append({"x": batch["x"][half], "y": batch["y"][half], "old": old[half]})
    return out


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def make_trainer(run_dir: Path, task=None, callbacks=(), **loop) -> Trainer:
    task = task or SplitTask()
    model = make_model()
    groups = [{"params": list(model.parameters()), "base_lr": LR, "lr_scale": 1.0, "lr": LR}]
    optimizer = torch.optim.SGD(groups, lr=LR)
    bundle = DataBundle(train=Samples(N_TRAIN, 1), validation=Samples(8, 2), test=None, report=DataReport("tiny"))
    settings = LoopSettings(**{"epochs": EPOCHS, "batch_size": BATCH, "max_grad_norm": None, "precision": "fp32",
                               "log_every": 1, **loop})
    return Trainer(task, model, bundle, run_dir, seed=SEED, optimizer=optimizer,
                   make_schedule=lambda opt, total: LRSchedule(opt, "linear", total, 0),
                   loop=settings, groups=[LayerGroup("all", [model])], select_metric="mse", select_mode="min",
                   callbacks=list(callbacks))


def fit(trainer: Trainer, resume: bool = False):
    if not resume:
        torch.manual_seed(1234)  # the rollouts' draws; a resume restores them from the checkpoint
    return trainer.fit(resume=resume)


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def reference() -> tuple[list[torch.Tensor], int]:
    """The same training written out by hand: for each batch, the inner batches, and on each a mean
    loss, backward and an SGD step at the linearly decaying LR of that step."""
    task, model, data = SplitTask(), make_model(), Samples(N_TRAIN, 1)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    order = BatchOrder(N_TRAIN, BATCH, SEED, None, group_size=BATCH * 50)
    total = EPOCHS * len(order.batches(0)) * INNER
    torch.manual_seed(1234)
    step = 0
    for epoch in range(EPOCHS):
        for indices in order.batches(epoch):
            batch = task.collate([data[i] for i in indices])
            for inner in task.inner_batches(model, batch):
                for g in opt.param_groups:
                    g["lr"] = LR * (1 - step / total)
                out = task.forward(model, inner, train=True)
                (out["loss_sum"] / out["num_items"]).backward()
                opt.step()
                opt.zero_grad()
                step += 1
    return params(model), step


def test_inner_loop_steps_match_a_hand_written_loop(tmp_path):
    assert isinstance(SplitTask(), InnerLoop)
    trainer = make_trainer(tmp_path / "run")
    assert trainer.total_steps == EPOCHS * (N_TRAIN // BATCH) * INNER == 32
    state = fit(trainer)
    expected, steps = reference()
    assert state.step == steps == 32
    assert state.samples_seen == EPOCHS * N_TRAIN  # each sample counted once per epoch, not per inner step
    for a, b in zip(params(trainer._unwrapped), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # And it is not trivially equal: one step per batch (the inner batches not used) trains differently.
    plain = make_trainer(tmp_path / "plain", task=PlainTask())
    fit(plain)
    assert plain.state.step == 8
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(params(plain._unwrapped), expected))


class PlainTask(SplitTask):
    """The same task without the inner loop (InnerLoop is checked by its methods)."""

    inner_batches = None  # type: ignore[assignment]


def _checkpoint_step(run_dir: Path) -> int:
    return json.loads((run_dir / "checkpoints" / "last" / "trainer_state.json").read_text())["step"]


def test_kill_mid_batch_resumes_at_the_batch_start_and_matches(tmp_path):
    full = make_trainer(tmp_path / "full", eval_every=3)
    fit(full)

    class Killed(Exception):
        pass

    def kill_at_6(trainer):  # step 6 is inside the second batch (steps 5-8): like kill -9, nothing saved
        if trainer.state.step == 6:
            raise Killed

    with pytest.raises(Killed):
        fit(make_trainer(tmp_path / "cut", callbacks=[kill_at_6], eval_every=3))
    assert _checkpoint_step(tmp_path / "cut") == 4  # saved at the first batch's end (eval_every crossed)
    resumed = make_trainer(tmp_path / "cut", eval_every=3)
    state = fit(resumed, resume=True)
    assert state.step == full.state.step == 32
    for a, b in zip(params(resumed._unwrapped), params(full._unwrapped)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert [h for h in state.history if "val_mse" in h] == [h for h in full.state.history if "val_mse" in h]


def test_stop_request_mid_batch_stops_at_the_batch_end(tmp_path):
    full = make_trainer(tmp_path / "full")
    fit(full)

    def stop_at_6(trainer):
        if trainer.state.step == 6:
            trainer.request_stop()

    with pytest.raises(Interrupted):
        fit(make_trainer(tmp_path / "cut", callbacks=[stop_at_6]))
    assert _checkpoint_step(tmp_path / "cut") == 8
    resumed = make_trainer(tmp_path / "cut")
    fit(resumed, resume=True)
    for a, b in zip(params(resumed._unwrapped), params(full._unwrapped)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_step_counts_are_whole_batches(tmp_path):
    assert make_trainer(tmp_path / "a", max_steps=5).total_steps == 8  # rounds up to a batch's end
    budget = TimeBudget(60.0, measure_steps=50, unit=4)
    assert budget.interval(32) == 8 and budget.interval(100) == 28
    assert budget.plan(8, 8.0, 7, 7.0, 32, 32) is None  # 1 s per step: 60 steps fit in the 32 planned
    budget = TimeBudget(10.0, unit=4)
    assert budget.plan(8, 8.0, 7, 7.0, 32, 32) == 12  # 8 done + 2 affordable, rounded up to whole batches


def test_inner_loop_refuses_what_it_cannot_combine_with(tmp_path):
    with pytest.raises(RecipeError, match="train.grad_accum"):
        make_trainer(tmp_path / "a", grad_accum=2)

    class Wrong(SplitTask):
        def inner_batches(self, model, batch):
            return super().inner_batches(model, batch)[:3]

    with pytest.raises(OmnituneError, match="inner_batches gave 3 batches"):
        fit(make_trainer(tmp_path / "b", task=Wrong()))
