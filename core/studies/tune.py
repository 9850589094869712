"""Hyper-parameter search with Optuna: ``omnitune tune RECIPE``.

The recipe's ``tune.space`` maps dotted recipe fields to search dimensions; every trial is an
ordinary run of the recipe with those fields overridden (so each sampled value goes through recipe
validation) and is scored by its best validation value of the run's selection metric. Intermediate
validation metrics go to Optuna after every evaluation, so a median pruner can stop poor trials.

The study lives in ``<output.dir>/<name>-tune/study.db`` (SQLite) unless ``tune.storage`` names another
database; running the same command again resumes it: finished and pruned trials are kept, and only
the rest of the trial budget runs. A trial that was interrupted (Ctrl-C, SIGTERM, the trainer's
stop request) stays in the study as FAIL, and the resumed study runs its parameters again first,
as a new trial (user attribute ``retry_of`` = the interrupted trial's number); finished trials are
never re-run. A trial whose process was killed hard stops sending heartbeats (``tune.heartbeat_s``);
the next process working on the study fails it and re-runs its parameters the same way.

Several processes (on one machine or many) can work on one study: give each the same recipe and
the same ``tune.storage`` (``--storage postgresql://...``). ``n_trials`` is the budget of the study,
not of each process: the processes stop when the study holds that many trials that are finished
(complete or pruned) or running (see ``TrialBudget``). Every trial draws its random samples from
(recipe seed, trial number), so processes started with the same seed sample different points
while one process alone still reproduces its study. ``timeout_s`` is per process.
"""

from __future__ import annotations

import math
import os
import random
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..base.errors import OmnituneError, RecipeError
from ..base.recipe import BaseRecipe, SearchParam, TuneConfig, apply_overrides, dump_recipe, validate_recipe

STUDY_FILE = "study.db"
INTERRUPTED = "interrupted"  # user attribute set on a trial whose run was interrupted
RETRY_OF = "retry_of"  # user attribute of a trial re-running an interrupted trial's parameters
SURPLUS = "surplus"  # user attribute of a trial started after other processes had taken the whole budget
WORKER = "worker"  # user attribute: host:pid of the process that ran the trial


@dataclass
class StudyResult:
    study_dir: Path
    best_params: dict[str, Any]
    best_value: float
    metric: str
    direction: str
    trials: list[dict[str, Any]]


def grid_values(param: SearchParam) -> list[Any]:
    """The values a grid search tries for one dimension."""
    if param.type == "categorical":
        return list(param.choices)
    if param.step is None:
        raise RecipeError("tune.sampler 'grid': float/int search parameters need a step (or use choices)")
    values = np.arange(param.low, param.high + param.step / 2, param.step)
    return [int(v) if param.type == "int" else float(v) for v in values]


def suggest(trial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """Sample one value per dimension; the keys are the dotted recipe fields."""
    out = {}
    for key, p in space.items():
        if p.type == "categorical":
            out[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            out[key] = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
    return out


def make_sampler(tune: TuneConfig, seed: int):
    import optuna

    if tune.sampler == "grid":
        # Optuna runs grid point k (of the seeded shuffle) as trial k: distinct across processes as is.
        return optuna.samplers.GridSampler({k: grid_values(p) for k, p in tune.space.items()}, seed=seed)
    if tune.sampler == "random":
        return seed_per_trial(optuna.samplers.RandomSampler(seed=seed), seed)
    # TPE's constant_liar (on by default in Optuna 5) treats other processes' running trials as bad
    # results, so concurrent trials spread out once the startup trials are done.
    return seed_per_trial(optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, tune.n_trials or 5),
                                                     constant_liar=True), seed)


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def seed_per_trial(sampler, seed: int):
    """Reseed the sampler's random state from (seed, trial number) before each trial.

    An Optuna sampler draws from one random stream per process, so two processes started with the
    same seed sample the same points, one for one. Trial numbers are unique within a study, so
    reseeding by trial number gives every trial its own draws and keeps a single-process study
    reproducible. (RandomSampler and TPESampler keep their stream in ``_rng``; TPE's startup trials
    come from its inner RandomSampler; tests/core/test_tune_postgres.py fails if that changes.)"""
    streams = [sampler._rng] + ([sampler._random_sampler._rng] if hasattr(sampler, "_random_sampler") else [])
    plain_before_trial = sampler.before_trial

    def before_trial(study, trial) -> None:
        for stream in streams:
            stream.rng.seed(trial_seed(seed, trial.number))
        plain_before_trial(study, trial)

    sampler.before_trial = before_trial
    return sampler


class SurplusTrial(Exception):
    """A trial started after other processes had taken the study's whole trial budget."""


class TrialBudget:
    """``n_trials`` for the whole study, however many processes work on it.

    A trial holds a place from the moment it runs, and keeps it once complete or pruned; a failed
    trial gives its place back (its parameters are re-queued when it was interrupted or lost).
    A process starts a trial only while places are free (``full`` before its first trial, the
    callback after each). Two processes can still both find one free place: Optuna numbers new
    trials one at a time under a lock on the study, so ``claim`` lets a new trial run only if the
    trials numbered before it leave a place; the other is failed before it samples anything,
    flagged ``surplus``, and its process stops. A queued trial (a re-run) keeps the number it got
    when queued, so it counts every other trial holding a place. (Optuna's ``MaxTrialsCallback``
    counts finished trials only: k processes can overshoot by k - 1 trials.)"""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    @staticmethod
    def _holding(study) -> list:
        import optuna

        S = optuna.trial.TrialState
        return study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING))

    def full(self, study) -> bool:
        return len(self._holding(study)) >= self.n_trials

    def __call__(self, study, trial) -> None:  # an Optuna callback, after each trial of this process
        if self.full(study):
            study.stop()

    def claim(self, study, trial) -> None:
        """Raise SurplusTrial (after stopping this process's loop) when ``trial`` has no place."""
        holding = self._holding(study)
        me = next(t for t in holding if t.number == trial.number)
        queued = "fixed_params" in me.system_attrs
        ahead = [t for t in holding if t.number < trial.number or (queued and t.number != trial.number)]
        if len(ahead) < self.n_trials:
            return
        trial.set_user_attr(SURPLUS, True)
        if queued:  # keep the queued parameters for a later process (e.g. if a running trial is lost)
            study.enqueue_trial(me.system_attrs["fixed_params"],
                                user_attrs={k: v for k, v in me.user_attrs.items() if k == RETRY_OF})
        study.stop()
        raise SurplusTrial(f"trial {trial.number}: the study's {self.n_trials} trials are taken by other processes")


def make_pruner(tune: TuneConfig):
    import optuna

    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=0)


class PruningCallback:
    """A trainer callback (called after every optimiser step) that reports each new validation
    evaluation to the Optuna trial and stops the run when the pruner says so."""

    def __init__(self, trial, metric: str) -> None:
        self.trial, self.metric, self.reported = trial, metric, 0

    def __call__(self, trainer) -> None:
        import optuna

        evals = [h for h in trainer.state.history if f"val_{self.metric}" in h]
        for h in evals[self.reported:]:
            self.trial.report(float(h[f"val_{self.metric}"]), step=int(h["step"]))
        self.reported = len(evals)
        if evals and self.trial.should_prune():
            trainer.log.event("pruned", step=trainer.state.step, trial=self.trial.number)
            raise optuna.TrialPruned(f"pruned at step {trainer.state.step}")


def check_space(recipe: BaseRecipe, space: dict[str, SearchParam], where: str) -> None:
    """Every dimension names a real recipe field and each of its bounds/choices validates."""
    if not space:
        raise RecipeError(f"{where}: tune.space is empty: name at least one dotted field to search")
    for key, p in space.items():
        probes = p.choices if p.type == "categorical" else [p.low, p.high]
        for value in probes:
            value = int(value) if p.type == "int" else value
            raw = apply_overrides(recipe.model_dump(mode="json"), {key: value})
            validate_recipe(raw, where=f"{where}: tune.space.{key}={value!r}")


def study_dir_for(recipe: BaseRecipe) -> Path:
    return Path(recipe.output.dir) / f"{recipe.name}-tune"


def open_storage(url: str, heartbeat_s: int | None):
    """Optuna's RDBStorage for ``url``, with the heartbeat when ``heartbeat_s`` is set.

    Optuna creates its tables in a new database on first use, without a lock: processes started
    together on an empty PostgreSQL database race, and the loser's CREATE fails on a duplicate.
    Opening again finds the tables made."""
    import optuna
    import sqlalchemy.exc

    kw = {"heartbeat_interval": heartbeat_s, "heartbeat_stale_trial_callback": requeue_trial} if heartbeat_s else {}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # optuna calls the heartbeat experimental; we rely on it as is
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kw)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())


def run_study(recipe: BaseRecipe, *, study_dir: Path, storage: str | None, n_trials: int | None,
              timeout_s: float | None, train_fn: Callable, selection: tuple[str, str],
              callbacks: list[Callable] = (), enqueue: list[dict[str, Any]] = ()) -> StudyResult:
    """Run (or resume) the study; ``train_fn(recipe, overrides, callbacks=...)`` runs one trial and
    returns a RunResult. ``selection`` is (metric, "max"|"min") from the task."""
    import optuna

    from ..loop.trainer import Interrupted

    tune = recipe.tune
    metric, mode = selection
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    url = storage or f"sqlite:///{(study_dir / STUDY_FILE).resolve()}"
    study = optuna.create_study(study_name=recipe.name, storage=open_storage(url, tune.heartbeat_s),
                                load_if_exists=True, direction="maximize" if mode == "max" else "minimize",
                                sampler=make_sampler(tune, recipe.seed), pruner=make_pruner(tune))
    if tune.heartbeat_s:
        # Before the budget is counted: a trial whose process died is failed (and re-queued) now
        # instead of holding a place.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    requeue_interrupted(study)
    for params in enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    budget = None if n_trials is None else TrialBudget(n_trials)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial) -> float:
        if budget is not None:
            budget.claim(study, trial)
        trial.set_user_attr(WORKER, worker)
        overrides = suggest(trial, tune.space)
        overrides.update({"output.dir": str(study_dir / "trials"), "output.run_name": f"trial-{trial.number:03d}"})
        trial.set_user_attr("run_dir", str(study_dir / "trials" / f"trial-{trial.number:03d}"))
        t0 = time.perf_counter()
        try:
            result = train_fn(recipe, overrides, callbacks=[PruningCallback(trial, metric), *callbacks])
        except (KeyboardInterrupt, Interrupted):
            # Optuna marks the trial FAIL. Its parameters are queued again here, by the process that
            # was interrupted, so that two processes resuming the study at once cannot both queue them.
            trial.set_user_attr(INTERRUPTED, True)
            study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number})
            raise
        trial.set_user_attr("train_seconds", round(time.perf_counter() - t0, 2))
        value = float(result.metrics["validation"][metric])
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"{metric} is {value}")
        return value

    if budget is None or not budget.full(study):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(objective, timeout=timeout_s, catch=(SurplusTrial,),
                       callbacks=[budget] if budget is not None else [])
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if running:
            raise OmnituneError(f"{study_dir}: no trial completed yet; the trial budget is taken by "
                                f"{len(running)} trial(s) running in other processes")
        raise OmnituneError(f"{study_dir}: no trial completed (all pruned or failed)")
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs[RETRY_OF]: t.number for t in trials if RETRY_OF in t.user_attrs}
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, **t.params,
             "steps": (max(t.intermediate_values) if t.intermediate_values else None),
             "seconds": t.user_attrs.get("train_seconds"), "note": _trial_note(t, retried)} for t in trials]
    result = StudyResult(study_dir=study_dir, best_params=dict(study.best_params), best_value=float(study.best_value),
                         metric=metric, direction=mode, trials=rows)
    best = validate_recipe(apply_overrides(recipe.model_dump(mode="json"), result.best_params),
                           where="best trial")
    (study_dir / "best_recipe.yaml").write_text(dump_recipe(best))
    write_tune_report(study, result)
    return result


def requeue_interrupted(study) -> list[int]:
    """Enqueue the parameters of every interrupted (FAIL) trial that has not been re-queued yet
    (the interrupted process queues them itself; this catches a study where that failed), so
    the resumed search runs that configuration instead of dropping it. Returns their numbers.
    Trials that failed for another reason (an error, divergence) are not re-run: they would fail
    the same way."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    done = {t.user_attrs.get(RETRY_OF) for t in trials}
    requeued = []
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(INTERRUPTED) and t.number not in done:
            if requeue_trial(study, t):
                requeued.append(t.number)
    return requeued


def requeue_trial(study, trial) -> bool:
    """Queue a failed trial's parameters again as a new trial tagged ``retry_of``; also Optuna's
    callback for a trial failed because its heartbeat stopped (its process was killed hard).
    Returns False for a trial that ended before sampling anything (nothing to repeat)."""
    params = dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))
    if not params:
        return False
    # Not skip_if_exists: the failed trial itself holds these parameters.
    study.enqueue_trial(params, user_attrs={RETRY_OF: trial.number})
    return True


def _trial_note(t, retried: dict[int, int]) -> str:
    notes = []
    if t.user_attrs.get(INTERRUPTED):
        notes.append("interrupted" + (f", re-run as #{retried[t.number]}" if t.number in retried else ""))
    elif t.number in retried:  # failed by the heartbeat check: its process died without a word
        notes.append(f"lost (no heartbeat), re-run as #{retried[t.number]}")
    if t.user_attrs.get(SURPLUS):
        notes.append("not run: the trial budget was taken by other processes")
    if RETRY_OF in t.user_attrs:
        queued = "queued " if t.state.name == "WAITING" else ""
        notes.append(f"{queued}re-run of #{t.user_attrs[RETRY_OF]}")
    return "; ".join(notes)


def write_tune_report(study, result: StudyResult) -> Path:
    """tune_report.md with the best settings, a trials table and the Optuna plots."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = result.study_dir
    plots = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, fn in (("optimization_history", ovm.plot_optimization_history),
                         ("param_importances", ovm.plot_param_importances)):
            try:
                ax = fn(study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances need 2+ completed trials
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=100)
            plt.close(fig)
            plots.append(name)
    keys = [k for k in result.trials[0] if k not in ("number", "state", "value", "steps", "seconds", "note")] \
        if result.trials else []
    lines = [f"# Hyper-parameter search: {study.study_name}", "",
             f"Best validation `{result.metric}` ({'higher' if result.direction == 'max' else 'lower'} is better): "
             f"**{result.best_value:.4f}**", "", "Best settings (also in `best_recipe.yaml`):", ""]
    lines += [f"- `{k}` = {v!r}" for k, v in result.best_params.items()]
    lines += ["", "## Trials", "", "| # | state | " + " | ".join(keys) + f" | {result.metric} | last reported step | s |",
              "|---|---|" + "---|" * len(keys) + "---|---|---|"]
    for t in result.trials:
        value = "" if t["value"] is None else f"{t['value']:.4f}"
        params = " | ".join(f"{t.get(k):.4g}" if isinstance(t.get(k), float) else str(t.get(k)) for k in keys)
        state = f"{t['state']} ({t['note']})" if t.get("note") else t["state"]
        lines.append(f"| {t['number']} | {state} | {params} | {value} | {t['steps'] or ''} | "
                     f"{t['seconds'] or ''} |")
    lines += [""] + [f"![{p}]({p}.png)" for p in plots]
    path = out / "tune_report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
