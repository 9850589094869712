"""The time budget against a busy neighbour: `make demo`'s recipe (text/minilm-rotten-tomatoes,
``train.time_budget_minutes: 4``) trained twice, each in a fresh process: once on an idle machine,
once with CPU-bound neighbours (``python -c 'while True: pass'``, one per ``--neighbours``) running
during the first ``--neighbour-seconds`` of training. Training is taken to start when the run prints
its "run folder: ... steps)" line (after loading and tokenising). With the re-planning budget the busy
run should lose only the steps its slow stretch cost, not most of its plan.

    .venv/bin/python bench/busy_neighbour.py                      # about 11 min on 2 CPU cores; keep the machine quiet
    .venv/bin/python bench/busy_neighbour.py --dry-run            # print the commands, run nothing
    .venv/bin/python bench/busy_neighbour.py data.max_samples=200 --neighbour-seconds 5 --out /tmp/bn.json  # smoke test

Flags:
  overrides             recipe overrides (``key=value``) passed to both runs, after the recipe
  --recipe NAME         the recipe (default text/minilm-rotten-tomatoes, what `make demo` runs)
  --neighbours N        CPU-bound neighbour processes in the busy run (default 2: one per core here)
  --neighbour-seconds S how long they run once training has started (default 60)
  --runs-dir DIR        where the two run folders go (default: a temporary folder, removed after)
  --out PATH            the results (default bench/results/busy_neighbour.json)
  --dry-run             print the commands and the machine, run nothing, write nothing

Writes, per run (idle, busy): steps trained, the recipe's plan and each re-plan (metrics.json
``time_budget``), test accuracy, training seconds, wall seconds of the whole command, the neighbours'
start (seconds after the command started) and run time; and the CPU model (/proc/cpuinfo), core count
and the commands. Only the two runs of one invocation compare: the same machine, minutes apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "busy_neighbour.json"
NEIGHBOUR = [sys.executable, "-c", "while True: pass"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def train_command(recipe: str, overrides: list[str], runs_dir: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "omnitune.core.cli", "train", recipe, *overrides,
            f"output.dir={runs_dir}", f"output.run_name={name}"]


def run(command: list[str], neighbours: int, neighbour_seconds: float, log: Path) -> dict:
    """Run ``command``; once it prints its run-folder line, start ``neighbours`` CPU-bound processes
    for ``neighbour_seconds`` (or until the command ends)."""
    started = time.perf_counter()
    busy: list[subprocess.Popen] = []
    neighbour = {"count": neighbours, "seconds": neighbour_seconds, "started_after_s": None, "ran_s": None}

    def stop_neighbours() -> None:
        for proc in busy:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if busy and neighbour["ran_s"] is None:
            neighbour["ran_s"] = round(time.perf_counter() - started - neighbour["started_after_s"], 1)

    timer = None
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        try:
            for line in proc.stdout:
                out.write(line)
                if neighbours and not busy and line.startswith("run folder:") and "steps)" in line:
                    neighbour["started_after_s"] = round(time.perf_counter() - started, 1)
                    busy.extend(subprocess.Popen(NEIGHBOUR) for _ in range(neighbours))
                    timer = threading.Timer(neighbour_seconds, stop_neighbours)
                    timer.start()
            code = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            stop_neighbours()
            if proc.poll() is None:
                proc.kill()
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited {code}; see {log}")
    return {"wall_seconds": round(wall, 1), "neighbour": neighbour if neighbours else None}


def summary(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"steps": metrics["steps"], "epochs_completed": metrics["epochs_completed"],
            "stop_reason": metrics["stop_reason"], "time_budget": metrics.get("time_budget"),
            "test_accuracy": metrics.get("test", {}).get("accuracy"),
            "train_seconds": metrics["timing"]["train_seconds"], "precision": metrics["timing"]["precision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="recipe overrides key=value, for both runs")
    parser.add_argument("--recipe", default="text/minilm-rotten-tomatoes")
    parser.add_argument("--neighbours", type=int, default=2)
    parser.add_argument("--neighbour-seconds", type=float, default=60.0)
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()

    machine = {"cpu_model": cpu_model(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="busy-neighbour-") as tmp:
        runs_dir = (args.runs_dir or Path(tmp)).resolve()
        cases = {"idle": 0, "busy": args.neighbours}
        commands = {name: train_command(args.recipe, args.overrides, runs_dir, name) for name in cases}
        print(json.dumps({**machine, "commands": {n: " ".join(c) for n, c in commands.items()},
                          "neighbour": " ".join(NEIGHBOUR), "neighbours": args.neighbours,
                          "neighbour_seconds": args.neighbour_seconds}, indent=1), flush=True)
        if args.dry_run:
            return
        runs_dir.mkdir(parents=True, exist_ok=True)
        results = {}
        for name, neighbours in cases.items():
            print(f"--- {name}: {' '.join(commands[name])}", flush=True)
            outcome = run(commands[name], neighbours, args.neighbour_seconds, runs_dir / f"{name}.log")
            results[name] = {**summary(runs_dir / name), **outcome}
            print(json.dumps(results[name]), flush=True)
    out = {**machine, "recipe": args.recipe, "overrides": args.overrides,
           "commands": {n: " ".join(c) for n, c in commands.items()}, "neighbour_command": " ".join(NEIGHBOUR),
           "runs": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
