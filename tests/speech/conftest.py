"""Shared fixtures: a tiny random Whisper built from a config, tiny generated audio data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Polite on a shared 2-core machine; the tiny models do not need more.
torch.set_num_threads(1)

# The builders live in the package's testing module, beside the task's registered fixture
# (omnitune.fixtures), which uses them too; production code never imports it.
from omnitune.speech.testing import SPECIALS, make_audio_folder, make_tiny_whisper, tone  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    return make_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture()
def audio_folder(tmp_path) -> Path:
    return make_audio_folder(tmp_path / "audio")
