"""The task's own pieces: metrics against hand-computed values, the loss, report pictures, eval sets."""

from __future__ import annotations

import pytest
import torch

from omnitune.core.base.errors import DataError
from omnitune.core.base.recipe import RegularizationConfig
from omnitune.core.base.task import Task
from omnitune.vision.classification import ImageClassificationTask, VisionDataConfig, VisionModelConfig
from omnitune.core.loop.trainer import mean_loss

from .test_data import make_task


def test_task_satisfies_the_core_contract():
    assert isinstance(make_task("x"), Task)


def test_metrics_match_hand_computed_values():
    task = make_task("x")
    task.label_names = ["a", "b", "c"]
    refs = [0, 0, 1, 2]
    preds = [{"label": 0, "score": 0.9, "top5": [0, 1, 2]}, {"label": 1, "score": 0.6, "top5": [1, 2, 0]},
             {"label": 1, "score": 0.7, "top5": [1, 0, 2]}, {"label": 0, "score": 0.5, "top5": [0, 1, 2]}]
    m = task.compute_metrics(preds, refs)
    # top-1 right for samples 0 and 2; per class P = (1/2, 1/2, 0), R = (1/2, 1, 0).
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["top5_accuracy"] == pytest.approx(1.0)
    assert m["precision_macro"] == pytest.approx(1 / 3)
    assert m["recall_macro"] == pytest.approx(0.5)
    assert m["f1_macro"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)


def test_loss_uses_smoothing_and_mixing_only_in_training(image_folder):
    model_cfg = VisionModelConfig(name="test_resnet", pretrained=False, image_size=32)
    data_cfg = VisionDataConfig(source=str(image_folder))
    reg = RegularizationConfig(label_smoothing=0.2, mixup_alpha=0.4, cutmix_alpha=1.0)
    task = ImageClassificationTask(model=model_cfg, data=data_cfg, regularization=reg, seed=0)
    bundle = task.build_datasets()
    model = task.build_model().eval()
    batch = task.collate([bundle.validation[i] for i in range(len(bundle.validation))])
    logits = model(batch["pixel_values"])
    plain = torch.nn.functional.cross_entropy(logits, batch["labels"])
    torch.testing.assert_close(mean_loss(task.forward(model, batch, train=False)), plain)
    torch.manual_seed(0)
    trained = mean_loss(task.forward(model, batch, train=True))
    assert not torch.allclose(trained, plain)
    preds, refs = task.predict_batch(model, batch, {"outputs": logits})
    assert refs == batch["labels"].tolist()
    assert [p["label"] for p in preds] == logits.argmax(-1).tolist()
    assert all(p["top5"][0] == p["label"] and len(p["top5"]) == 3 for p in preds)


def test_report_extras_write_the_pictures_and_tables(image_folder, tmp_path):
    task = make_task(image_folder)
    bundle = task.build_datasets()
    n = len(bundle.test)
    refs = [bundle.test.labels[i] for i in range(n)]
    preds = [{"label": (r + 1) % 3, "score": 0.5 + i / 100, "top5": [(r + 1) % 3, r, (r + 2) % 3], "index": i}
             for i, r in enumerate(refs)]
    blocks = task.report_extras(tmp_path, "test", preds, refs, bundle.test)
    text = "\n".join(blocks)
    assert (tmp_path / "confusion_matrix_test.png").stat().st_size > 1000
    assert (tmp_path / "confidently_wrong_test.png").stat().st_size > 1000
    most_confident = bundle.test.describe(n - 1)  # highest score, and wrong
    assert most_confident in text.split("| image |")[1].splitlines()[2]


def test_eval_dataset_from_another_folder_uses_the_trained_labels(image_folder):
    task = make_task(image_folder)
    dataset, report = task.load_eval_dataset(str(image_folder), ["cat", "dog", "fox"])
    assert len(dataset) == 30 and report.rows_kept["eval"] == 30
    with pytest.raises(DataError, match="outside data.labels"):
        task.load_eval_dataset(str(image_folder), ["cat", "dog"])


def test_hub_source_offline_is_a_clear_data_error(monkeypatch):
    import datasets

    # Offline mode fails at once instead of retrying the network (the error is the same kind).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="hub:nobody/no-such-dataset"):
        make_task("hub:nobody/no-such-dataset").build_datasets()
