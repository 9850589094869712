"""The optional task hook ``sample_outputs``: the core calls it with the starting model (with
eval.baseline) and with the trained one, puts the scores in metrics.json and report.md, keeps the
starting model's scores for a resumed run, and leaves the training's random draws unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from omnitune.core.api import SAMPLES_BEFORE, train
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.base.registry import TASKS
from omnitune.core.evaluation.report import samples_md
from omnitune.text.classification import TextClassificationTask
from omnitune.text.testing import tiny_classification_recipe


def _first_weight(model) -> float:
    return float(next(model.parameters()).detach().double().sum())


def _hook(calls: list):
    def sample_outputs(self, model, dataset, out_dir, stage):
        calls.append(stage)
        torch.rand(1000)  # draws random numbers: the core must give the training its own state back
        (out_dir / f"sample-{stage}.txt").write_text(f"{len(dataset)} samples")
        return {"weight_sum": _first_weight(model), "samples": float(len(dataset))}

    return sample_outputs


def _register_hooked_task(monkeypatch, calls: list) -> None:
    """The text-classification task with the hook, registered under its name for this test only.
    A subclass, not a method patched onto the task class: ``isinstance(task, SampleOutputs)`` caches
    a class's positive answer, so a patched class would keep "having" the hook in later tests."""
    hooked = type("HookedTextClassificationTask", (TextClassificationTask,), {"sample_outputs": _hook(calls)})
    monkeypatch.setitem(TASKS._items, TextClassificationTask.name, hooked)


def _recipe(tmp_path, **train):
    raw = tiny_classification_recipe(tmp_path / "fixture")
    raw["train"].update({"max_steps": 3, "threads": 1, **train})
    raw["eval"] = {"baseline": True}
    return validate_recipe(raw)


def test_hook_sees_start_and_end_model_and_report_shows_both(tmp_path, monkeypatch):
    rec = _recipe(tmp_path)
    plain = train(rec, {"output.run_name": "plain"})  # the task without the hook
    calls: list[str] = []
    _register_hooked_task(monkeypatch, calls)
    run = train(rec, {"output.run_name": "hooked"})
    assert calls == ["before", "after"]
    samples = run.metrics["samples"]
    assert "samples" not in plain.metrics
    # "before" is the starting model, "after" the trained one: the weights moved between them.
    assert samples["before"]["weight_sum"] != pytest.approx(samples["after"]["weight_sum"], abs=1e-9)
    test_rows = json.loads((run.run_dir / "data_report.json").read_text())["rows_kept"]["test"]
    assert samples["before"]["samples"] == samples["after"]["samples"] == test_rows  # the held-out split
    assert json.loads((run.run_dir / "metrics.json").read_text())["samples"] == samples
    assert json.loads((run.run_dir / SAMPLES_BEFORE).read_text()) == samples["before"]
    assert (run.run_dir / "sample-before.txt").is_file() and (run.run_dir / "sample-after.txt").is_file()
    report = (run.run_dir / "report.md").read_text()
    assert "## Samples before and after training" in report and "| weight_sum |" in report
    # The hook did not change what trained: same test metrics as the run without it.
    assert run.metrics["test"]["loss"] == pytest.approx(plain.metrics["test"]["loss"], abs=1e-7)


def test_no_baseline_means_after_only(tmp_path, monkeypatch):
    calls: list[str] = []
    _register_hooked_task(monkeypatch, calls)
    run = train(_recipe(tmp_path), {"output.run_name": "r", "eval.baseline": False})
    assert calls == ["after"]
    assert list(run.metrics["samples"]) == ["after"]


def test_resumed_run_keeps_the_starting_models_scores(tmp_path, monkeypatch):
    from omnitune.core.loop.trainer import Interrupted

    calls: list[str] = []
    _register_hooked_task(monkeypatch, calls)
    rec = _recipe(tmp_path, max_steps=4, eval_every=2)

    def stop_at_2(trainer):
        if trainer.state.step == 2:
            trainer.request_stop()

    with pytest.raises(Interrupted):
        train(rec, {"output.run_name": "r"}, callbacks=[stop_at_2])
    first = json.loads((tmp_path / "fixture" / "runs" / "r" / SAMPLES_BEFORE).read_text())
    resumed = train(rec, resume=tmp_path / "fixture" / "runs" / "r")
    assert calls == ["before", "after"]  # the resumed process did not score its (trained) start again
    assert resumed.metrics["samples"]["before"] == first


def test_samples_table_by_hand():
    md = samples_md({"before": {"mcd": 9.5, "wer": 0.5}, "after": {"mcd": 7.25, "wer": 0.75}})
    assert md.splitlines() == ["| metric | before | after | change |", "|---|---|---|---|",
                               "| mcd | 9.5000 | 7.2500 | -2.2500 |", "| wer | 0.5000 | 0.7500 | 0.2500 |"]
    assert samples_md({"after": {"mcd": 7.0}}).splitlines()[2] == "| mcd | 7.0000 |"


def test_hook_leaves_the_random_state_and_falls_back_to_validation(tmp_path):
    from omnitune.core.api import sample_outputs
    from omnitune.core.base.task import DataBundle, DataReport

    seen = []

    class Task:
        def sample_outputs(self, model, dataset, out_dir, stage):
            seen.append(dataset)
            torch.rand(7)
            return {"x": 1.0}

    bundle = DataBundle(train=[0], validation=["v"], test=None, report=DataReport("here"))
    torch.manual_seed(3)
    want = torch.rand(3)
    torch.manual_seed(3)
    assert sample_outputs(Task(), None, bundle, tmp_path, "after") == {"x": 1.0}
    assert torch.equal(torch.rand(3), want)
    assert seen == [["v"]]
    assert sample_outputs(object(), None, bundle, tmp_path, "after") is None  # a task without the hook
