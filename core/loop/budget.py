"""``train.time_budget_minutes``: how many optimiser steps fit in the time given, re-planned as the
speed changes.

The loop measures its speed over a moving window of steps and, at every window's end, plans the
steps that fit the budget left at that speed. A slow stretch (a busy neighbour, cold caches) then
costs only the time it took, not the whole run's plan; a run that slows down later plans fewer
steps so it still ends in time.
"""

from __future__ import annotations

import math


class TimeBudget:
    """Plans the optimiser steps that fit in ``seconds`` of training (optimiser steps only).

    Every ``interval(planned)`` steps (one length group of the sampler: 50 steps, or a quarter of a
    shorter plan) the loop calls :meth:`plan` with the seconds of the steps since the last call (the
    window). Why length groups and not evaluations: within a group the sampler puts the longest
    batches first, so a window of whole groups' worth of consecutive steps (50) holds every length
    rank once and measures the speed the rest of the run will see; a window that ends at an
    evaluation (anywhere in a group) over-weights one end. The first step of a process (warm-up:
    allocation, kernel selection) is left out of its window.

    The plan is the steps done plus the budget left (``seconds`` - seconds so far) at the window's
    speed, never above ``ceiling`` (what the recipe asked: epochs / max_steps) and never below the
    steps done + 1. Hysteresis: it changes only when it differs from the current plan by more than
    ``tolerance`` of the steps the current plan still has to go (the window's speed is more than
    about 5% off the speed the plan assumed), so noise does not move it at every window.

    ``unit``: steps are taken in whole units of this many (an :class:`~omnitune.core.base.task.InnerLoop`
    task's inner steps per batch), so the window ends and the chosen counts are multiples of it.

    >>> budget = TimeBudget(60.0, measure_steps=10)
    >>> budget.plan(done=10, seconds_so_far=20.0, window_steps=9, window_seconds=18.0, current=100, ceiling=100)
    30
    """

    def __init__(self, seconds: float, measure_steps: int = 50, unit: int = 1, tolerance: float = 0.05) -> None:
        self.seconds, self.measure_steps, self.unit, self.tolerance = seconds, measure_steps, unit, tolerance
        self.per_step: float | None = None  # the speed of the last window

    def _whole(self, steps: int) -> int:
        return math.ceil(steps / self.unit) * self.unit

    def interval(self, planned: int) -> int:
        """Steps between two re-plans (a window), for a run that plans ``planned`` steps."""
        return self._whole(max(2, min(self.measure_steps, planned // 4)))

    def plan(self, done: int, seconds_so_far: float, window_steps: int, window_seconds: float, current: int,
             ceiling: int) -> int | None:
        """The new number of steps in all, or None when ``current`` stays (within the hysteresis)."""
        if done >= current or window_steps <= 0:
            return None
        per_step = window_seconds / window_steps
        self.per_step = per_step
        if per_step > 0:
            affordable = done + int(max(0.0, self.seconds - seconds_so_far) / per_step)
        else:
            affordable = ceiling
        steps = min(self._whole(max(affordable, done + 1)), ceiling)
        if steps == current or abs(steps - current) <= self.tolerance * (current - done):
            return None
        return steps
