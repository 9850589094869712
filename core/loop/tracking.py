"""Run logging: JSON-lines events, TensorBoard scalars, and a metric history for the report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class RunLog:
    """``enabled=False`` (every process but the main one of a multi-process run) writes nothing."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.events_path = Path(run_dir) / "events.jsonl"
        self.enabled = enabled
        self._tb = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard is a dependency; tolerate its absence in slim envs
                self._tb = None

    def event(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "event": kind, **fields}
        with open(self.events_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self._tb is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
