"""Several `omnitune tune` processes on one study in a real PostgreSQL server (tests/pg.py).

The workers are real subprocesses of the CLI; what they did is read back from the Optuna storage
itself (trial numbers, states, parameters, user attributes), not from omnitune's report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from omnitune.core.base.recipe import load_recipe

from ..conftest import text_recipe, write_recipe
from ..pg import pg_url, postgres_server  # noqa: F401  (fixtures)

STUDY = "tiny-text"
LR = {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}
S = optuna.trial.TrialState


def _recipe(tmp_path: Path, tiny_bert, reviews_csv, epochs: int, heartbeat_s: int) -> Path:
    # 192 training rows, 12 steps an epoch; a continuous space, so any repeated value is a bug.
    recipe = text_recipe(tiny_bert, reviews_csv, tmp_path, train={"epochs": epochs, "eval_every": 12,
                                                                  "save_checkpoints": False},
                         eval={"metric": "loss", "mode": "min"},
                         tune={"space": LR, "sampler": "tpe", "pruner": "none", "heartbeat_s": heartbeat_s})
    return write_recipe(tmp_path / "r.yaml", recipe)


def _tune(recipe: Path, log: Path, *args: str) -> subprocess.Popen:
    """`omnitune tune RECIPE ARGS` as its own process (one thread: the two cores are shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "omnitune.core.cli", "tune", str(recipe), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=True)


def _trained_lr(trial: optuna.trial.FrozenTrial) -> float:
    """The learning rate the trial's run really trained with, from its own run folder."""
    run_dir = Path(trial.user_attrs["run_dir"])
    assert (run_dir / "metrics.json").is_file(), run_dir
    return load_recipe(run_dir / "recipe.yaml").train.lr


# --- The pieces, on one shared storage with a Study object per "process" (no server needed) ---

def _tune_config(sampler: str):
    from omnitune.core.base.recipe import TuneConfig

    return TuneConfig(space=LR, sampler=sampler, n_trials=4)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_processes_with_one_seed_sample_different_points(sampler):
    """Two processes built from the same recipe (same seed) must not sample the same values; one
    process alone still gets the same values for the same trial numbers."""
    from omnitune.core.studies.tune import make_sampler, suggest

    def lrs(studies, n):
        out = []
        for i in range(n):
            study = studies[i % len(studies)]
            trial = study.ask()
            out.append(suggest(trial, _tune_config(sampler).space)["train.lr"])
            study.tell(trial, 1.0)
        return out

    shared = optuna.storages.InMemoryStorage()
    a = optuna.create_study(study_name="s", storage=shared, sampler=make_sampler(_tune_config(sampler), 0))
    b = optuna.load_study(study_name="s", storage=shared, sampler=make_sampler(_tune_config(sampler), 0))
    together = lrs([a, b], 4)  # a, b, a, b: each process's first draw, then its second
    assert len(set(together)) == 4
    alone = lrs([optuna.create_study(sampler=make_sampler(_tune_config(sampler), 0))], 4)
    assert alone == together


def _holders(storage, n_running: int) -> optuna.Study:
    """Another process's study object, with ``n_running`` trials running."""
    other = optuna.load_study(study_name="s", storage=storage)
    for _ in range(n_running):
        other.ask()
    return other


def test_budget_counts_the_trials_other_processes_are_running():
    from omnitune.core.studies.tune import SurplusTrial, TrialBudget

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage)
    _holders(storage, 2)
    budget = TrialBudget(3)
    assert not budget.full(study)
    ran = []

    def objective(trial):
        budget.claim(study, trial)
        ran.append(trial.number)
        return 1.0

    # Optuna's MaxTrialsCallback(3) would run 3 trials here (it counts finished ones only).
    study.optimize(objective, callbacks=[budget], catch=(SurplusTrial,))
    assert ran == [2] and budget.full(study)


def test_the_loser_of_a_race_for_the_last_place_runs_nothing():
    from omnitune.core.studies.tune import SURPLUS, SurplusTrial, TrialBudget

    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="s", storage=storage)
    winner = _holders(storage, 1)  # trial 0 runs in a third process
    budget = TrialBudget(2)
    # Both processes saw one free place; the winner's trial (1) was created first ...
    first = winner.ask()
    budget.claim(winner, first)  # ... and keeps it
    loser = optuna.load_study(study_name="s", storage=storage)

    def objective(trial):
        budget.claim(loser, trial)
        return suggest_and_score(trial)

    loser.optimize(objective, catch=(SurplusTrial,))  # trial 2: failed before sampling, loop stopped
    t = loser.trials[2]
    assert t.state == S.FAIL and t.user_attrs[SURPLUS] and t.params == {}
    assert len(loser.trials) == 3

    # A queued trial (a re-run) that finds no place is failed too, and its parameters queued again.
    winner.tell(first, 1.0)
    loser.enqueue_trial({"x": 0.5}, user_attrs={"retry_of": 0})
    loser.optimize(objective, catch=(SurplusTrial,))
    failed, queued = loser.trials[3], loser.trials[4]
    assert failed.state == S.FAIL and failed.user_attrs[SURPLUS]
    assert queued.state == S.WAITING and queued.system_attrs["fixed_params"] == {"x": 0.5}
    assert queued.user_attrs == {"retry_of": 0}


def suggest_and_score(trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


# --- Real processes on a real server ---

def test_two_processes_share_one_study(tmp_path, tiny_bert, reviews_csv, pg_url):  # noqa: F811
    n_trials = 4
    recipe = _recipe(tmp_path, tiny_bert, reviews_csv, epochs=1, heartbeat_s=5)
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [_tune(recipe, log, "--storage", pg_url, "--n-trials", str(n_trials)) for log in logs]
    codes = [w.wait(timeout=600) for w in workers]
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    trials = _trials(pg_url)
    assert [t.number for t in trials] == list(range(len(trials)))
    complete = [t for t in trials if t.state == S.COMPLETE]
    # The budget is the study's: n_trials in total across both processes, not n_trials each.
    assert len(complete) == n_trials
    # Nothing else in the study but, at most, a trial that lost the race for the last place: it is
    # failed before sampling anything (see TrialBudget), so no parameter set was lost with it.
    for t in trials:
        if t.state != S.COMPLETE:
            assert t.state == S.FAIL and t.user_attrs.get("surplus") and not t.params, t
    # Both processes worked on the study, and no parameter set ran twice.
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    lrs = [t.params["train.lr"] for t in complete]
    assert len(set(lrs)) == n_trials
    # Each trial trained in its own run folder with its own value.
    for t in complete:
        assert _trained_lr(t) == pytest.approx(t.params["train.lr"])
        assert t.value == pytest.approx(json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
                                        ["validation"]["loss"])


@pytest.mark.slow
def test_killed_worker_trial_is_requeued(tmp_path, tiny_bert, reviews_csv, pg_url):  # noqa: F811
    heartbeat_s = 1
    # A trial far longer than the test waits: it is surely killed in the middle.
    recipe = _recipe(tmp_path, tiny_bert, reviews_csv, epochs=200, heartbeat_s=heartbeat_s)
    doomed = _tune(recipe, tmp_path / "doomed.log", "--storage", pg_url, "--n-trials", "1")
    trial_dir = tmp_path / "tiny-text-tune" / "trials" / "trial-000"
    deadline = time.monotonic() + 300
    while not (trial_dir / "events.jsonl").is_file() or '"step"' not in (trial_dir / "events.jsonl").read_text():
        assert doomed.poll() is None, (tmp_path / "doomed.log").read_text()
        assert time.monotonic() < deadline, "the first worker's trial never started training"
        time.sleep(0.5)
    os.kill(doomed.pid, signal.SIGKILL)
    assert doomed.wait(timeout=60) == -signal.SIGKILL
    [lost] = _trials(pg_url)
    assert lost.state == S.RUNNING and set(lost.params) == set(LR)  # nobody told the study

    time.sleep(2 * heartbeat_s + 2)  # its heartbeat is now older than Optuna's grace period (2 beats)
    # The next worker (1 epoch: the search parameter, not the length, is what must be repeated).
    survivor = _tune(recipe, tmp_path / "survivor.log", "--storage", pg_url, "--n-trials", "1", "train.epochs=1")
    assert survivor.wait(timeout=600) == 0, (tmp_path / "survivor.log").read_text()[-3000:]

    trials = _trials(pg_url)
    assert [(t.number, t.state) for t in trials] == [(0, S.FAIL), (1, S.COMPLETE)]
    rerun = trials[1]
    assert rerun.user_attrs["retry_of"] == 0
    assert rerun.params == lost.params
    assert rerun.user_attrs["worker"] != lost.user_attrs["worker"]
    assert _trained_lr(rerun) == pytest.approx(lost.params["train.lr"])
    report = (tmp_path / "tiny-text-tune" / "tune_report.md").read_text()
    assert "lost (no heartbeat), re-run as #1" in report
