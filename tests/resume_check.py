"""Kill -9 and resume, as a user would: training runs as `omnitune train` in a subprocess.

Used by the exact-resume tests of every domain (tests/*/test_exact_resume.py). The interrupted
run is killed with SIGKILL once its last checkpoint has reached a step, so nothing in the process
gets a chance to save or clean up; `omnitune train --resume` must then end exactly where an
uninterrupted run of the same recipe ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

CLI = [sys.executable, "-m", "omnitune.core.cli", "train"]


def _env() -> dict[str, str]:
    # One thread per process: the tiny models gain nothing from more, and DataLoader workers add up.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli(args: list[str], log: Path, timeout: float = 300) -> None:
    with open(log, "ab") as out:
        code = subprocess.run([*CLI, *args], stdout=out, stderr=subprocess.STDOUT, env=_env(),
                              timeout=timeout).returncode
    assert code == 0, f"omnitune train {' '.join(args)} exited {code}:\n{log.read_text()[-3000:]}"


def _step(state_file: Path) -> int | None:
    try:
        return json.loads(state_file.read_text())["step"]
    except (OSError, ValueError, KeyError):  # not written yet, or caught mid-swap
        return None


class Background:
    """An uninterrupted run of ``recipe`` through the CLI, in the background (it overlaps the
    interrupted one: most of each run's time is starting Python and importing torch)."""

    def __init__(self, recipe: Path) -> None:
        self.log = recipe.with_suffix(".log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*CLI, str(recipe)], stdout=out, stderr=subprocess.STDOUT, env=_env())

    def wait(self, timeout: float = 300) -> None:
        code = self.proc.wait(timeout)
        assert code == 0, f"the uninterrupted run exited {code}:\n{self.log.read_text()[-3000:]}"

    def __enter__(self) -> "Background":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:  # the test failed before waiting: do not leave it running
            self.proc.kill()
            self.proc.wait()


def kill_then_resume(recipe: Path, run_dir: Path, kill_at: int, timeout: float = 300, mid_swap: bool = False) -> dict:
    """Start ``recipe``, SIGKILL it once checkpoints/last has reached step ``kill_at``, then resume
    it with ``omnitune train --resume``. Returns the trainer state the kill left behind.

    ``mid_swap``: leave the checkpoint folders as a kill between the two renames of a checkpoint
    swap does (``last.old`` and a complete ``last.tmp``, no ``last``); the resume must cope."""
    log = recipe.with_suffix(".log")
    state_file = run_dir / "checkpoints" / "last" / "trainer_state.json"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*CLI, str(recipe)], stdout=out, stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + timeout
        try:
            while (_step(state_file) or 0) < kill_at:
                assert proc.poll() is None, f"the run ended before step {kill_at}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no checkpoint at step {kill_at} after {timeout} s"
                time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    from omnitune.core.checkpoint import recover_checkpoint

    recover_checkpoint(state_file.parent)  # what the resume does itself if the kill fell mid-swap
    killed = json.loads(state_file.read_text())
    assert not killed["finished"] and not (run_dir / "metrics.json").exists(), "the kill came too late"
    if mid_swap:
        last = state_file.parent
        shutil.copytree(last, last.with_name("last.tmp"))
        last.rename(last.with_name("last.old"))
    _cli(["--resume", str(run_dir)], log)
    return killed


def assert_same_run(full: Path, resumed: Path, metric_tol: float = 1e-6, weight_tol: float = 1e-6) -> None:
    """Same final weights (last and best checkpoints) and the same validation/test metrics."""
    for ckpt in ("last", "best"):
        a = load_file(str(full / "checkpoints" / ckpt / "model.safetensors"))
        b = load_file(str(resumed / "checkpoints" / ckpt / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=weight_tol, rtol=0, msg=f"{ckpt}: {k}")
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, resumed))
    assert ma["steps"] == mb["steps"]
    for split in ("validation", "test"):
        assert ma[split].keys() == mb[split].keys()
        for name, value in ma[split].items():
            assert abs(mb[split][name] - value) <= metric_tol, (split, name, mb[split][name], value)
