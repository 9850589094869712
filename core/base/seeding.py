"""Per-item randomness as a pure function of (seed, epoch, index).

Data augmentation draws from a generator made from the run's seed, the epoch and the item's
index, never from a worker's or the dataset's state: the same item of the same epoch is augmented
the same way in the main process, in any DataLoader worker, in any process of a multi-process
run, and after a resume. Datasets that augment expose ``set_epoch(epoch)``, which the trainer
calls before each epoch's DataLoader is built.

>>> a, b = item_rng(42, 0, 7).random(), item_rng(42, 0, 7).random()
>>> a == b, a == item_rng(42, 1, 7).random()
(True, False)
"""

from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1  # SeedSequence takes non-negative words; a recipe's seed may be negative


def _sequence(seed: int, epoch: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed) & _MASK, int(epoch) & _MASK, int(index) & _MASK])


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A numpy generator for one item of one epoch."""
    return np.random.default_rng(_sequence(seed, epoch, index))


def item_seed(seed: int, epoch: int, index: int) -> int:
    """An integer seed for one item of one epoch (for libraries that take an int, e.g. albumentations)."""
    return int(_sequence(seed, epoch, index).generate_state(1, np.uint32)[0])
