"""A task that lives entirely in this module, as a plug-in outside omnitune would: it brings its own
metric (with a direction), its own ONNX export spec and its own model-card tags, and gets
training, evaluation, export with parity, a model card and checkpoint selection by its metric
without any edit to the core. It is registered in the task registry for each test only.

The task: the sign of a fixed linear form of 4 features (a tiny MLP, generated data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from omnitune.core import api
from omnitune.core.base.exporting import BATCH, ExportSpec, Graph
from omnitune.core.base.metrics import METRICS, compute, define_metric, list_metrics
from omnitune.core.base.recipe import DataConfig, ModelConfig, validate_recipe
from omnitune.core.base.registry import TASKS
from omnitune.core.base.task import DataBundle, DataReport, DeclaresMetrics, Exportable, LayerGroup, ModelCardInfo
from omnitune.core.deploy.onnx_predict import predict_onnx

NAME = "toy-sign"
FEATURES = 4
LABELS = ["neg", "pos"]
W = np.array([1.0, -2.0, 0.5, 1.5])


@define_metric("toy_brier", "min", "this test", "mean squared error of the predicted probability of 'pos'")
def toy_brier(predictions, references):
    return float(np.mean([(p - r) ** 2 for p, r in zip(predictions, references, strict=True)]))


class ToyModelConfig(ModelConfig):
    hidden: int = 8
    """Width of the hidden layer."""


class ToyDataConfig(DataConfig):
    pass


class ToyNet(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(FEATURES, hidden), nn.Linear(hidden, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)))


class ToySignTask:
    name: ClassVar[str] = NAME
    ModelConfig: ClassVar[type] = ToyModelConfig
    DataConfig: ClassVar[type] = ToyDataConfig
    main_metric: ClassVar[str] = "accuracy"
    main_metric_mode: ClassVar[str] = "max"
    pipeline_tag: ClassVar[str] = "tabular-classification"
    card_library: ClassVar[str] = "toy-library"
    metric_definitions: ClassVar[tuple] = (toy_brier,)

    def __init__(self, *, model: ToyModelConfig, data: ToyDataConfig, regularization, seed: int) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.label_names = list(LABELS)

    def export_spec(self) -> ExportSpec:
        return ExportSpec("tensor", (Graph("model", ("x",), ("logits",), {"x": BATCH, "logits": BATCH}),),
                          "toy sign classifier: x [batch, 4] -> logits [batch, 2]")

    def resolve_labels(self) -> list[str]:
        return self.label_names

    def restore(self, model_dir: Path) -> None:
        self.label_names = json.loads((Path(model_dir) / "toy_labels.json").read_text())

    def build_model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return ToyNet(self.model_cfg.hidden)

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return [LayerGroup("body", [model.body]), LayerGroup("head", [model.head])]

    def _rows(self, source: str) -> list[dict[str, Any]]:
        table = np.loadtxt(source, delimiter=",", skiprows=1)
        return [{"x": torch.tensor(r[:FEATURES], dtype=torch.float32), "label": int(r[FEATURES])} for r in table]

    def build_datasets(self) -> DataBundle:
        rows = self._rows(self.data_cfg.source)
        report = DataReport(self.data_cfg.source, rows_read={"all": len(rows)})
        train, validation, test = rows[:96], rows[96:128], rows[128:]
        report.rows_kept = {"train": len(train), "validation": len(validation), "test": len(test)}
        return DataBundle(train, validation, test, report, label_names=self.label_names)

    def load_eval_dataset(self, source: str, label_names: list[str] | None) -> tuple[Any, DataReport]:
        rows = self._rows(source)
        return rows, DataReport(source, rows_read={"all": len(rows)}, rows_kept={"all": len(rows)})

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"x": torch.stack([s["x"] for s in samples]), "labels": torch.tensor([s["label"] for s in samples])}

    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        logits = model(batch["x"])
        loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
        return {"loss_sum": loss, "num_items": len(batch["labels"]), "outputs": logits}

    def predict_batch(self, model, batch, outputs) -> tuple[list[Any], list[Any]]:
        prob = outputs["outputs"].float().softmax(-1)[:, 1]
        return prob.tolist(), batch["labels"].tolist()

    def compute_metrics(self, predictions: list[float], references: list[int]) -> dict[str, float]:
        return {"accuracy": compute("accuracy", [int(p > 0.5) for p in predictions], references),
                "toy_brier": toy_brier(predictions, references)}

    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(out_dir) / "model.safetensors"))
        (Path(out_dir) / "toy_labels.json").write_text(json.dumps(self.label_names))

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        self.restore(model_dir)
        model = ToyNet(self.model_cfg.hidden)
        model.load_state_dict(load_file(str(Path(model_dir) / "model.safetensors")))
        return model.eval()

    def predict(self, model, inputs: list[str]) -> list[dict[str, Any]]:
        x = torch.tensor([[float(v) for v in s.split(",")] for s in inputs])
        with torch.no_grad():
            prob = model(x).float().softmax(-1)
        return [{"input": s, "label": self.label_names[int(p.argmax())], "score": round(float(p.max()), 5)}
                for s, p in zip(inputs, prob)]


@pytest.fixture
def toy_task(monkeypatch):
    """Registered for this test only: the registry is all the core knows of it."""
    assert NAME not in TASKS.names()
    monkeypatch.setitem(TASKS._items, NAME, ToySignTask)
    return ToySignTask


def _recipe(folder: Path) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, FEATURES))
    y = (x @ W > 0).astype(int)
    csv = folder / "toy.csv"
    np.savetxt(csv, np.column_stack([x, y]), delimiter=",", header="x0,x1,x2,x3,label", comments="", fmt="%.6f")
    return {"name": "toy-sign", "task": NAME, "model": {"name": "toy"}, "data": {"source": str(csv)},
            "train": {"epochs": 5, "batch_size": 16, "lr": 0.03, "threads": 1},
            # selected by the task's own metric: its direction ("min") is declared only by the task
            "eval": {"metric": "toy_brier"},
            "output": {"dir": str(folder / "runs"), "run_name": "toy"}}


def test_the_test_task_is_unknown_to_the_core():
    # Nothing of it is registered anywhere in omnitune: not the task, not its metric.
    assert NAME not in TASKS.names() and "toy_brier" not in list_metrics() and "toy_brier" not in METRICS.names()
    assert isinstance(ToySignTask, Exportable) and isinstance(ToySignTask, ModelCardInfo)
    assert isinstance(ToySignTask, DeclaresMetrics)


def test_external_task_trains_evaluates_exports_and_gets_its_card(tmp_path, toy_task):
    result = api.train(validate_recipe(_recipe(tmp_path)))
    run, metrics = result.run_dir, result.metrics

    # Checkpoint selection by the task's metric, in the task's direction: the lowest validation value.
    evals = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["event"] == "eval" and e.get("split") == "validation"]
    values = {e["step"]: e["toy_brier"] for e in evals}
    assert len(values) == 5 and metrics["selected_by"] == "toy_brier"
    lowest, highest = min(values, key=values.get), max(values, key=values.get)
    assert values[lowest] < values[highest], "the fixture should make the metric move"
    assert metrics["best_step"] == lowest
    assert metrics["validation"]["toy_brier"] == pytest.approx(values[lowest], abs=1e-6)  # the best weights reloaded
    assert metrics["test"]["accuracy"] >= 0.75

    # Evaluation of the finished run through the task's own metrics.
    evaluated = api.evaluate(run)
    assert evaluated["metrics"]["toy_brier"] == pytest.approx(metrics["test"]["toy_brier"], abs=1e-6)

    # The model card carries the task's own pipeline tag and library.
    card = (run / "model" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == "tabular-classification" and meta["library_name"] == "toy-library"
    assert meta["model-index"][0]["results"][0]["task"] == {"type": "tabular-classification"}

    # ONNX export through the task's own spec; parity against PyTorch on the validation samples.
    exported = api.export(run, latency_repeats=1)
    manifest = exported.manifest
    assert manifest["runtime"] == "tensor" and manifest["task"] == NAME
    assert manifest["parity"]["fp32"]["passed"] and manifest["parity"]["fp32"]["max_abs_diff_all"] <= 1e-5
    rows = {r["model"]: r["metrics"]["toy_brier"] for r in exported.report["rows"]}
    assert rows["onnx-fp32"] == pytest.approx(rows["pytorch"], abs=1e-5)
    inputs = ["1,0,0,0", "0,1,0,0", "0.5,-0.5,1,-1"]
    assert [r["label"] for r in predict_onnx(exported.out_dir, inputs)] == [r["label"] for r in api.predict(run, inputs)]
    # The export rewrote the card: the export table joined it, the task's tags stayed.
    card = (run / "model" / "README.md").read_text()
    assert "## ONNX export" in card and yaml.safe_load(card.split("---")[1])["pipeline_tag"] == "tabular-classification"


def test_a_task_without_the_declarations_gets_defaults_and_a_clear_export_error(tmp_path, monkeypatch):
    from omnitune.core.base.errors import OmnituneError
    from omnitune.core.evaluation.report import model_card_info

    dropped = ("export_spec", "pipeline_tag", "card_library", "metric_definitions")
    bare = type("BareToyTask", (), {k: v for k, v in vars(ToySignTask).items()
                                    if k not in dropped and (not k.startswith("__") or k == "__init__")})
    monkeypatch.setitem(TASKS._items, NAME, bare)
    assert model_card_info(bare) == {"pipeline_tag": None, "library": "omnitune"}
    raw = _recipe(tmp_path)
    with pytest.raises(OmnituneError, match="toy_brier"):  # no direction for an undeclared metric
        api.train(validate_recipe(raw))
    raw["eval"] = {"metric": "accuracy"}
    run = api.train(validate_recipe({**raw, "train": {**raw["train"], "epochs": 1}})).run_dir
    meta = yaml.safe_load((run / "model" / "README.md").read_text().split("---")[1])
    assert "pipeline_tag" not in meta and meta["library_name"] == "omnitune"
    with pytest.raises(OmnituneError, match=f"task '{NAME}' has no ONNX export"):
        api.export(run)
