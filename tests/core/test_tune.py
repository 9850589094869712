"""Hyper-parameter search: picks the better LR, prunes a poor trial, resumes an interrupted study."""

from __future__ import annotations

import optuna
import pytest

from omnitune.core.api import tune
from omnitune.core.base.errors import RecipeError
from omnitune.core.base.recipe import load_recipe
from omnitune.core.loop.trainer import Interrupted

from ..conftest import text_recipe, write_recipe


def _recipe(tmp_path, tiny_bert, reviews_csv, space, epochs=5, **tune_cfg):
    # 192 training rows, 12 steps an epoch: the tiny BERT needs ~5 epochs at a good LR to learn.
    recipe = text_recipe(tiny_bert, reviews_csv, tmp_path,
                         train={"epochs": epochs, "eval_every": 6, "save_checkpoints": False},
                         # the validation loss is a smooth objective on this tiny model
                         eval={"metric": "loss", "mode": "min"},
                         tune={"space": space, **tune_cfg})
    return load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


LR_CHOICES = {"train.lr": {"type": "categorical", "choices": [1.0e-5, 3.0e-3]}}


def test_study_finds_the_better_learning_rate(tmp_path, tiny_bert, reviews_csv):
    rec = _recipe(tmp_path, tiny_bert, reviews_csv, LR_CHOICES, sampler="grid", pruner="none", n_trials=2)
    result = tune(rec)
    assert result.best_params == {"train.lr": 3.0e-3}
    assert [t["state"] for t in result.trials] == ["COMPLETE", "COMPLETE"]
    report = (result.study_dir / "tune_report.md").read_text()
    assert "train.lr" in report and (result.study_dir / "optimization_history.png").is_file()
    assert load_recipe(result.study_dir / "best_recipe.yaml").train.lr == 3.0e-3


def test_pruning_stops_a_poor_trial(tmp_path, tiny_bert, reviews_csv):
    space = {"train.lr": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True}}
    rec = _recipe(tmp_path, tiny_bert, reviews_csv, space, sampler="random", pruner="median",
                  pruner_startup_trials=1, n_trials=2)
    # A good trial first, then a hopeless one: its first validation loss is above the first's.
    result = tune(rec, enqueue=[{"train.lr": 1.0e-2}, {"train.lr": 1.0e-6}])
    states = {t["train.lr"]: t["state"] for t in result.trials}
    assert states == {1.0e-2: "COMPLETE", 1.0e-6: "PRUNED"}
    pruned = next(t for t in result.trials if t["state"] == "PRUNED")
    total_steps = 5 * 192 // 16
    assert pruned["steps"] < total_steps  # it stopped before the end


def test_interrupted_study_resumes_without_losing_trials(tmp_path, tiny_bert, reviews_csv):
    space = {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
             "train.batch_size": {"type": "categorical", "choices": [8, 16]}}
    rec = _recipe(tmp_path, tiny_bert, reviews_csv, space, epochs=1, sampler="tpe", pruner="none", n_trials=3)

    def stop_third_trial(trainer):
        if trainer.run_dir.name == "trial-002" and trainer.state.step == 2:
            trainer.request_stop()

    with pytest.raises(Interrupted):
        tune(rec, callbacks=[stop_third_trial])
    study_db = f"sqlite:///{(tmp_path / 'tiny-text-tune' / 'study.db').resolve()}"
    trials = optuna.load_study(study_name="tiny-text", storage=study_db).get_trials()
    before = {t.number: (t.params, t.value) for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert sorted(before) == [0, 1]
    interrupted = trials[2].params
    assert trials[2].state == optuna.trial.TrialState.FAIL and set(interrupted) == set(space)
    result = tune(rec)
    complete = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert len(complete) == 3  # only one more trial ran: the two finished ones count
    for t in complete:
        if t["number"] in before:
            assert t["value"] == before[t["number"]][1]
    assert [t["state"] for t in result.trials if t["number"] == 2] == ["FAIL"]
    # That one trial re-ran the interrupted parameters (not a fresh sample), as a new trial with
    # its own run folder; the finished trials were not run again.
    assert [t["number"] for t in result.trials] == [0, 1, 2, 3]
    rerun = result.trials[3]
    assert rerun["state"] == "COMPLETE" and {k: rerun[k] for k in space} == interrupted
    assert (tmp_path / "tiny-text-tune" / "trials" / "trial-003" / "metrics.json").is_file()
    params = [tuple(t[k] for k in sorted(space)) for t in result.trials]
    assert params[0] != params[1] and params[3] == params[2] and params[3] not in params[:2]
    study = optuna.load_study(study_name="tiny-text", storage=study_db)
    assert study.trials[3].user_attrs["retry_of"] == 2
    assert "re-run of #2" in (result.study_dir / "tune_report.md").read_text()
    # Resuming a finished study runs nothing and does not queue the interrupted trial again.
    again = tune(rec)
    assert [t["number"] for t in again.trials] == [0, 1, 2, 3]


def test_search_space_goes_through_recipe_validation(tmp_path, tiny_bert, reviews_csv):
    rec = _recipe(tmp_path, tiny_bert, reviews_csv, {"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    with pytest.raises(RecipeError, match="train.lrr"):
        tune(rec)
    rec = _recipe(tmp_path, tiny_bert, reviews_csv, {"train.batch_size": {"type": "int", "low": -4, "high": 8}})
    with pytest.raises(RecipeError, match="batch_size"):
        tune(rec)


def test_trial_of_a_killed_process_is_failed_and_rerun(tmp_path, tiny_bert, reviews_csv):
    """A process killed hard (kill -9) leaves its trial RUNNING with a heartbeat that stops; the next
    process on the study fails that trial and runs its parameters again."""
    import time

    from omnitune.core.studies.tune import suggest

    space = {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}
    rec = _recipe(tmp_path, tiny_bert, reviews_csv, space, epochs=1, sampler="random", pruner="none",
                  n_trials=1, heartbeat_s=1)
    study_dir = tmp_path / "tiny-text-tune"
    study_dir.mkdir()
    storage = optuna.storages.RDBStorage(f"sqlite:///{(study_dir / 'study.db').resolve()}", heartbeat_interval=1)
    dead = optuna.create_study(study_name="tiny-text", storage=storage, direction="minimize")
    lost = dead.ask()
    lost_params = suggest(lost, rec.tune.space)
    storage.record_heartbeat(lost._trial_id)  # ... and then the process "dies": no more heartbeats
    time.sleep(3.2)  # past the grace period (two heartbeats; SQLite keeps whole seconds)
    result = tune(rec)
    assert [t["state"] for t in result.trials] == ["FAIL", "COMPLETE"]
    assert result.trials[1]["train.lr"] == pytest.approx(lost_params["train.lr"])
    assert "lost (no heartbeat), re-run as #1" in (result.study_dir / "tune_report.md").read_text()
