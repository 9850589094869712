"""``train.time_budget_minutes``: how many optimiser steps fit in the time given."""

from __future__ import annotations

import math


class TimeBudget:
    """Once, after a representative stretch of steps, the number of steps that fits in ``seconds`` of
    training at the speed seen. The stretch is one length group of the sampler (``measure_steps``, its
    longest batches come first) or a quarter of a shorter plan; the first step (warm-up: allocation,
    kernel selection) is left out of the speed.

    ``unit``: steps are taken in whole units of this many (an :class:`~omnitune.core.base.task.InnerLoop`
    task's inner steps per batch), so the measuring point and the chosen count are multiples of it.
    """

    def __init__(self, seconds: float, measure_steps: int = 50, unit: int = 1) -> None:
        self.seconds, self.measure_steps, self.unit = seconds, measure_steps, unit
        self.first_step_seconds: float | None = None
        self.per_step: float | None = None  # the speed the decision used

    def _whole(self, steps: int) -> int:
        return math.ceil(steps / self.unit) * self.unit

    def measure_at(self, planned: int) -> int:
        return self._whole(max(2, min(self.measure_steps, planned // 4)))

    def steps(self, done: int, seconds_so_far: float, planned: int) -> int | None:
        """None when the plan fits (or it is not the step to decide)."""
        if done != self.measure_at(planned) or done >= planned:
            return None
        if self.first_step_seconds is not None:
            per_step = (seconds_so_far - self.first_step_seconds) / (done - 1)
        else:  # resumed between the first step and this one
            per_step = seconds_so_far / done
        self.per_step = per_step
        affordable = int(self.seconds / per_step) if per_step > 0 else planned
        return min(self._whole(max(affordable, done + 1)), planned) if affordable < planned else None
