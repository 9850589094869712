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
import yaml
from safetensors.torch import load_file

CLI = [sys.executable, "-m", "omnitune.core.cli", "train"]


def _env() -> dict[str, str]:
    # One thread per process: the tiny models gain nothing from more, and DataLoader workers add up.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli(args: list[str], log: Path, timeout: float = 600) -> None:
    with open(log, "ab") as out:
        code = subprocess.run([*CLI, *args], stdout=out, stderr=subprocess.STDOUT, env=_env(),
                              timeout=timeout).returncode
    assert code == 0, f"omnitune train {' '.join(args)} exited {code}:\n{log.read_text()[-3000:]}"


def _step(state_file: Path) -> int | None:
    try:
        return json.loads(state_file.read_text())["step"]
    except (OSError, ValueError, KeyError):  # not written yet, or caught mid-swap
        return None


def _start(args: list[str], out) -> subprocess.Popen:
    # A session of its own, so a kill reaches every process of the run (the launcher and the
    # workers of `--nproc N`), not only the first.
    return subprocess.Popen([*CLI, *args], stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Background:
    """An uninterrupted run of ``recipe`` through the CLI, in the background (it overlaps the
    interrupted one: most of each run's time is starting Python and importing torch)."""

    def __init__(self, recipe: Path, cli_args: list[str] = ()) -> None:
        self.log = recipe.with_suffix(".log")
        with open(self.log, "wb") as out:
            self.proc = _start([str(recipe), *cli_args], out)

    def wait(self, timeout: float = 600) -> None:
        code = self.proc.wait(timeout)
        assert code == 0, f"the uninterrupted run exited {code}:\n{self.log.read_text()[-3000:]}"

    def __enter__(self) -> "Background":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:  # the test failed before waiting: do not leave it running
            _kill(self.proc)


def kill_then_resume(recipe: Path, run_dir: Path, kill_at: int, timeout: float = 300, mid_swap: bool = False,
                     cli_args: list[str] = ()) -> dict:
    """Start ``recipe``, SIGKILL it (every process of the run) once checkpoints/last has reached
    step ``kill_at``, then resume it with ``omnitune train --resume``. Returns the trainer state the
    kill left behind. ``cli_args`` go to both commands (e.g. ``["--nproc", "2"]``).

    ``mid_swap``: leave the checkpoint folders as a kill between the two renames of a checkpoint
    swap does (``last.old`` and a complete ``last.tmp``, no ``last``); the resume must cope."""
    log = recipe.with_suffix(".log")
    state_file = run_dir / "checkpoints" / "last" / "trainer_state.json"
    with open(log, "wb") as out:
        proc = _start([str(recipe), *cli_args], out)
        deadline = time.monotonic() + timeout
        try:
            while (_step(state_file) or 0) < kill_at:
                assert proc.poll() is None, f"the run ended before step {kill_at}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no checkpoint at step {kill_at} after {timeout} s"
                time.sleep(0.01)
        finally:
            _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    from omnitune.core.loop.checkpoint import recover_checkpoint

    recover_checkpoint(state_file.parent)  # what the resume does itself if the kill fell mid-swap
    killed = json.loads(state_file.read_text())
    assert not killed["finished"] and not (run_dir / "metrics.json").exists(), "the kill came too late"
    if mid_swap:
        last = state_file.parent
        shutil.copytree(last, last.with_name("last.tmp"))
        last.rename(last.with_name("last.old"))
    _cli(["--resume", str(run_dir), *cli_args], log)
    return killed


def full_and_killed_runs_agree(recipe: dict, folder: Path, kill_at: int, mid_swap: bool = False,
                               cli_args: list[str] = ()) -> dict:
    """Write ``recipe`` as two runs in ``folder``, "full" and "killed"; run "full" uninterrupted in
    the background while "killed" is SIGKILLed at step ``kill_at`` and resumed; assert both end
    the same (:func:`assert_same_run`). Returns the trainer state the kill left behind."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("full", "killed"):
        run = {**recipe, "output": {**recipe.get("output", {}), "dir": str(folder), "run_name": name}}
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(run))
    with Background(paths["full"], cli_args) as full:
        killed = kill_then_resume(paths["killed"], folder / "killed", kill_at, mid_swap=mid_swap, cli_args=cli_args)
        full.wait()
    assert_same_run(folder / "full", folder / "killed")
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
