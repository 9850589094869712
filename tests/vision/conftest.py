"""Tiny generated image data for the vision tests: nothing is downloaded.

Classes differ by colour so that a tiny model can learn something in a few steps, and images have
odd sizes so resizing and cropping are exercised.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The builders live in the package's testing module, beside the task's registered fixture
# (omnitune.fixtures), which uses them too; production code never imports it.
from omnitune.vision.testing import COLOURS, make_idx_folder, make_image_folder, write_idx  # noqa: E402,F401


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def idx_folder(tmp_path: Path) -> Path:
    return make_idx_folder(tmp_path / "idx")
