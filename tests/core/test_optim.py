"""Schedules at known steps (values worked out by hand from the formulas in the docstrings)."""

from __future__ import annotations

import math

import pytest
import torch

from omnitune.core.loop.optim import LRSchedule, build_optimizer, lr_factor


@pytest.mark.parametrize("step,expected", [(0, 0.1), (4, 0.5), (9, 1.0), (10, 1.0), (60, 0.5), (110, 0.0), (200, 0.0)])
def test_linear_with_warmup(step, expected):
    assert lr_factor(step, total_steps=110, warmup_steps=10, kind="linear") == pytest.approx(expected)


@pytest.mark.parametrize("step,expected", [(10, 1.0), (35, 0.5 * (1 + math.cos(math.pi / 4))), (60, 0.5), (110, 0.0)])
def test_cosine(step, expected):
    assert lr_factor(step, 110, 10, "cosine") == pytest.approx(expected)


def test_polynomial_min_ratio_and_constant():
    assert lr_factor(60, 110, 10, "polynomial", power=2.0) == pytest.approx(0.25)
    # min_ratio 0.1: halfway through a linear decay is 0.1 + 0.9 * 0.5
    assert lr_factor(60, 110, 10, "linear", min_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(110, 110, 10, "cosine", min_ratio=0.2) == pytest.approx(0.2)
    assert lr_factor(5, 110, 0, "constant") == 1.0


def _optimizer(scales):
    params = [torch.nn.Parameter(torch.zeros(2, 2)) for _ in scales]
    groups = [{"params": [p], "weight_decay": 0.0, "lr_scale": s} for p, s in zip(params, scales)]
    return build_optimizer(groups, "adamw", lr=1e-3)


def test_schedule_applies_group_scales():
    opt = _optimizer([0.25, 1.0])
    sched = LRSchedule(opt, "linear", total_steps=110, warmup_steps=10)
    sched.step_update(60)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25 * 0.5e-3, 0.5e-3])


def test_reduce_on_plateau_after_patience():
    opt = _optimizer([1.0])
    sched = LRSchedule(opt, "plateau", total_steps=100, warmup_steps=0, plateau_factor=0.5, plateau_patience=1,
                       mode="max")
    reductions = [sched.step_metric(v) for v in (0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7)]
    # 0.6 (no gain, bad=1), 0.55 (bad=2 > patience -> halve); 0.7 new best; two more non-gains -> halve
    assert reductions == [False, False, False, True, False, False, True]
    sched.step_update(50)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)
    state = sched.state_dict()
    other = LRSchedule(_optimizer([1.0]), "plateau", 100, 0)
    other.load_state_dict(state)
    assert other.plateau_scale == 0.25


def test_sgd_momentum():
    opt = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": 0, "lr_scale": 1}],
                          "sgd", lr=0.1, momentum=0.9)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9


# ---- re-planning (train.time_budget_minutes) -------------------------------------------------
END = {"linear": 0.1, "cosine": 0.1, "polynomial": 0.1, "constant": 1.0, "plateau": 1.0}


@pytest.mark.parametrize("kind", sorted(END))
@pytest.mark.parametrize("replans", [[(40, 70)], [(40, 200)], [(5, 60)], [(10, 30)], [(30, 90), (60, 65), (64, 120)]])
def test_replan_continues_without_a_jump_and_ends_at_the_end_value(kind, replans):
    sched = LRSchedule(_optimizer([1.0]), kind, total_steps=110, warmup_steps=10, min_ratio=0.1, power=2.0)
    used = {}  # the factor of each update, as the run would use it
    step = 0
    for at, total in replans:
        used.update({t: sched.factor(t) for t in range(step, at)})
        before = sched.factor(at)
        sched.replan(at, total)
        assert sched.factor(at) == pytest.approx(before, abs=1e-9)  # right before and right after the re-plan
        step = at
    used.update({t: sched.factor(t) for t in range(step, total + 1)})
    assert sched.factor(total) == pytest.approx(END[kind], abs=1e-12)  # the last step reaches the end value
    assert sched.factor(total - 1) > END[kind] or kind in ("constant", "plateau")
    assert all(used[t] == pytest.approx((t + 1) / 10) for t in range(10))  # warmup as first planned
    decay = [used[t] for t in range(10, total + 1)]
    assert all(a >= b - 1e-12 for a, b in zip(decay, decay[1:]))  # never back up


def test_replan_by_hand():
    # linear, warmup 10, 110 planned: at update 60 the decay is halfway (0.5). Re-planned to 85 there,
    # the other half runs over 25 updates: progress 0.5 + 0.5 * 10 / 25 = 0.7 at update 70.
    sched = LRSchedule(_optimizer([1.0]), "linear", total_steps=110, warmup_steps=10)
    sched.replan(60, 85)
    assert [sched.factor(t) for t in (60, 70, 85)] == pytest.approx([0.5, 0.3, 0.0])
    cos = LRSchedule(_optimizer([1.0]), "cosine", total_steps=110, warmup_steps=10)
    cos.replan(60, 85)
    assert cos.factor(70) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.7)))
    # During warmup: warmup stays 10 updates; the decay then runs from update 10 to the new total.
    early = LRSchedule(_optimizer([1.0]), "linear", total_steps=110, warmup_steps=10)
    early.replan(5, 60)
    assert [early.factor(t) for t in (4, 9, 10, 35, 60)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])


def test_replans_come_back_with_the_state():
    sched = LRSchedule(_optimizer([1.0]), "cosine", total_steps=110, warmup_steps=10)
    sched.replan(30, 90)
    sched.replan(60, 70)
    state = sched.state_dict()
    assert state["replans"] == [[30, 90], [60, 70]]
    other = LRSchedule(_optimizer([1.0]), "cosine", total_steps=110, warmup_steps=10)
    other.load_state_dict(state)
    other.load_state_dict(state)  # loading twice replays once
    assert other.total_steps == 70 and [other.factor(t) for t in range(71)] == [sched.factor(t) for t in range(71)]
    fresh = LRSchedule(_optimizer([1.0]), "cosine", total_steps=110, warmup_steps=10)
    fresh.load_state_dict({k: v for k, v in state.items() if k != "replans"})  # a checkpoint from before re-plans
    assert fresh.total_steps == 110 and fresh.factor(60) == pytest.approx(0.5)
