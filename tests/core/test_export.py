"""ONNX export (core/deploy/export.py, onnx_predict.py): every task's tiny model exports, ONNX
Runtime reproduces PyTorch on the run's validation samples, the int8 model runs, the folder alone
serves predictions, and a task without an export gets a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from omnitune.core import api
from omnitune.core.cli import main
from omnitune.core.base.errors import OmnituneError
from omnitune.core.deploy.export import export_run, modules_and_examples, parity, parity_problems
from omnitune.core.deploy.onnx_predict import MANIFEST, predict_onnx, session

from ..fixtures import tiny_inputs, tiny_recipe


def tiny_run(task_name: str, folder: Path, *, lora: bool = False, steps: int = 2, lr: float | None = None,
             name: str | None = None, r: int = 4) -> Path:
    """A finished run of the task's tiny recipe (a couple of optimiser steps)."""
    raw = tiny_recipe(task_name, folder)
    raw["train"] = {**raw.get("train", {}), "max_steps": steps, "epochs": 1, **({"lr": lr} if lr else {})}
    raw["output"] = {"dir": str(folder / "runs"), "run_name": name or ("lora" if lora else "full")}
    if lora:
        raw["finetune"] = {"peft": {"method": "lora", "r": r, "alpha": 2 * r}}
    return api.train(api.validate_recipe(raw, where=f"tiny {task_name}")).run_dir


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    return tiny_run("text-classification", tmp_path_factory.mktemp("export-text"))


@pytest.fixture(scope="module")
def text_export(text_run, tmp_path_factory) -> tuple[Path, dict]:
    import os

    cwd, here = tmp_path_factory.mktemp("cwd"), os.getcwd()
    os.chdir(cwd)  # ORT's quantisation tools must leave nothing in the current directory
    try:
        result = export_run(text_run, quantize="int8", int8_min_agreement=0.0, latency_repeats=1)
    finally:
        os.chdir(here)
    assert list(cwd.iterdir()) == []
    return result.out_dir, result.report


def test_text_classifier_exports_with_report_and_dynamic_axes(text_run, text_export):
    out, report = text_export
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["opset"] == 17 and manifest["task"] == "text-classification"
    assert manifest["graphs"]["model"]["dynamic_axes"]["input_ids"] == {"0": "batch", "1": "sequence"}
    assert manifest["parity"]["fp32"]["passed"] and manifest["parity"]["fp32"]["max_abs_diff_all"] <= 1e-3
    assert manifest["parity"]["fp32"]["agreement"] == 1.0
    # self-contained: tokenizer, labels and recipe beside the graphs, no torch weights
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "omnitune_labels.json", "recipe.yaml",
                 "export_report.md", "export_report.json", "export_report.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.safetensors"))
    assert [r["model"] for r in report["rows"]] == ["pytorch", "onnx-fp32", "onnx-int8"]
    # The fp32 graph scores the test split exactly as PyTorch does (same metric code, same samples).
    assert report["rows"][1]["metrics"]["accuracy"] == report["rows"][0]["metrics"]["accuracy"]
    assert all(r["latency_ms_batch1"] > 0 and r["latency_ms_batch32"] > 0 for r in report["rows"])
    assert report["rows"][2]["size_bytes"] < report["rows"][1]["size_bytes"]
    assert "| onnx-int8 |" in (out / "export_report.md").read_text()
    card = (text_run / "model" / "README.md").read_text()  # the run's model card gained the export table
    assert "## ONNX export" in card and "onnx-int8" in card

    # Shapes the trace never saw (batch 3, 11 tokens) still match PyTorch: the axes are dynamic.
    _, task, model = api._load_run(text_run)
    ids = torch.tensor([[2] + [5 + (i + j) % 20 for j in range(9)] + [3] for i in range(3)])
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits.numpy()
    assert manifest["graphs"]["model"]["inputs"] == ["input_ids", "attention_mask"]  # the tokenizer has no types
    got = session(out / "model.onnx").run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_predict_onnx_matches_torch_predict(text_run, text_export, capsys):
    out, _ = text_export
    texts = ["the film was good", "a very dull plot"]
    torch_rows = api.predict(text_run, texts)
    onnx_rows = predict_onnx(out, texts)
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    for a, b in zip(onnx_rows, torch_rows):
        assert abs(a["score"] - b["score"]) <= 1e-4 and a.keys() == b.keys()
    assert main(["predict", "--onnx", str(out), "--int8", *texts]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in rows] == texts and all(r["label"] in ("neg", "pos") for r in rows)


def test_parity_measures_a_known_difference(text_run, text_export):
    """Shift the PyTorch head's bias by 0.25 on one class after export: every logit of that class
    then differs by exactly 0.25 from the exported graph's, and the check says so."""
    out, _ = text_export
    rec, task, model = api._load_run(text_run)
    model.eval()
    bundle = task.build_datasets()
    batches = [task.collate([bundle.validation[i] for i in range(8)])]
    with torch.no_grad():
        model.classifier.bias[1] += 0.25
    spec = task.export_spec()  # the task's own declaration
    parts = modules_and_examples(spec, model, batches[0], None)
    result = parity(spec, parts, {"model": session(out / "model.onnx")}, batches, None)
    assert result["max_abs_diff_all"] == pytest.approx(0.25, abs=1e-5) and result["samples"] == 8
    problems = parity_problems(result, "fp32", atol=1e-3, min_agreement=0.99, int8_min_agreement=0.9)
    assert problems and "differ by up to 0.25 (tolerance 0.001)" in problems[0]
    assert parity_problems({**result, "agreement": 0.5}, "int8", 1e-3, 0.99, 0.9) == [
        "predicted labels agree on 50.0% (needs 90%)"]


def test_lora_run_is_merged_then_exported(tmp_path):
    run = tiny_run("text-classification", tmp_path, lora=True)
    result = export_run(run, tmp_path / "onnx", evaluate=False)
    assert result.manifest["adapter_merged"] is True and result.manifest["parity"]["fp32"]["passed"]
    texts = ["the film was good", "a very dull plot", "boring story"]
    torch_rows = api.predict(run, texts)  # the unmerged adapter model
    onnx_rows = predict_onnx(result.out_dir, texts)
    for a, b in zip(onnx_rows, torch_rows):
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) <= 1e-4


def test_image_classifier_exports_with_static_int8(tmp_path, monkeypatch):
    run = tiny_run("image-classification", tmp_path)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    result = export_run(run, tmp_path / "onnx", quantize="int8", int8_min_agreement=0.0, evaluate=False)
    assert list((tmp_path / "cwd").iterdir()) == []
    m = result.manifest
    assert m["parity"]["fp32"]["passed"] and m["parity"]["fp32"]["max_abs_diff_all"] <= 1e-4
    assert "static QDQ" in m["quantization"]["int8"]
    assert (result.out_dir / "model.int8.onnx").stat().st_size < (result.out_dir / "model.onnx").stat().st_size
    inputs = tiny_inputs("image-classification", tmp_path)
    onnx_rows = predict_onnx(result.out_dir, inputs)
    torch_rows = api.predict(run, inputs)
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    assert len(predict_onnx(result.out_dir, inputs, variant="int8")) == len(inputs)


def test_whisper_exports_with_kv_cache_and_transcribes_like_torch(tmp_path):
    run = tiny_run("speech-recognition", tmp_path)
    result = export_run(run, tmp_path / "onnx", evaluate=False)
    m = result.manifest
    assert set(m["files"]["fp32"]) == {"encoder", "decoder", "decoder_with_past"} and m["parity"]["fp32"]["passed"]
    # the cached decoder, fed one token at a time, reproduces the full-sequence PyTorch logits
    assert m["parity"]["fp32"]["max_abs_diff"]["logits_with_past"] <= 1e-4
    past = m["graphs"]["decoder_with_past"]
    assert past["inputs"][:3] == ["decoder_input_ids", "past.0.key", "past.0.value"]
    assert past["dynamic_axes"]["past.0.key"] == {"0": "batch", "2": "past_sequence"}
    assert m["parity"]["fp32"]["compared_what"] == "generated tokens" and m["parity"]["fp32"]["compared"] > 0
    # ORT greedy decoding through the task's own predict gives transformers' generate() texts.
    inputs = tiny_inputs("speech-recognition", tmp_path)
    expected = api.predict(run, inputs)
    assert predict_onnx(result.out_dir, inputs) == expected
    # A folder exported before the runtimes were named by what they run (runtime "seq2seq", the
    # task's name then) still loads: the runtime is told by the graphs it holds.
    assert m["runtime"] == "encoder-decoder"
    (result.out_dir / MANIFEST).write_text(json.dumps({**m, "runtime": "seq2seq"}))
    assert predict_onnx(result.out_dir, inputs) == expected


@pytest.mark.slow  # 20 s more on 2 shared cores; the same "named" runtime as text-classification above
@pytest.mark.parametrize("task_name", ["token-classification", "question-answering", "causal-lm"])
def test_text_tasks_export_with_parity(tmp_path, task_name):
    run = tiny_run(task_name, tmp_path)
    result = export_run(run, tmp_path / "onnx", evaluate=False)
    p = result.manifest["parity"]["fp32"]
    assert p["passed"] and p["max_abs_diff_all"] <= 1e-3 and p["agreement"] == 1.0 and p["compared"] > 0
    inputs = tiny_inputs(task_name, tmp_path)
    if task_name == "causal-lm":  # logits for scoring only: no generation loop in the export
        with pytest.raises(OmnituneError, match="forward pass only"):
            predict_onnx(result.out_dir, inputs)
    else:
        assert predict_onnx(result.out_dir, inputs) == api.predict(run, inputs)


def test_unsupported_task_gets_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump({"name": "summaries", "task": "seq2seq"}))
    with pytest.raises(OmnituneError, match="task 'seq2seq' has no ONNX export"):
        export_run(run)
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: omnitune export: task 'seq2seq'") and "\n" not in err
    assert "image-classification" in err and "speech-recognition" in err


def test_predict_onnx_on_a_folder_without_manifest(tmp_path):
    with pytest.raises(OmnituneError, match="not an omnitune ONNX export"):
        predict_onnx(tmp_path, ["x"])


def test_adapter_library_exports_base_once_and_switches_adapters(tmp_path):
    from omnitune.core.adapters import peft as peft_lib
    from omnitune.core.deploy.export import export_adapters

    library = tmp_path / "library"
    for name, lr in (("calm", 3e-3), ("bold", 2e-2)):
        run = tiny_run("text-classification", tmp_path, lora=True, steps=3, lr=lr, name=name)
        peft_lib.add_to_library(library, run, "recipe.yaml", "model", name)
    result = export_adapters(library, tmp_path / "onnx")
    m = result.manifest
    assert sorted(m["adapters"]) == ["bold", "calm"] and m["files"]["fp32"] == {"model": "model.onnx"}
    assert all(p["passed"] and p["max_abs_diff_all"] <= 1e-5 for p in m["parity"].values())
    # 8 LoRA matrices (query/value of 2 layers, A and B) + classifier and pooler weights and biases
    assert m["adapters"]["calm"]["tensors"] == 12
    texts = ["the film was good", "a very dull plot"]
    scores = {}
    for name in ("calm", "bold"):
        onnx_rows = predict_onnx(result.out_dir, texts, adapter=name)
        torch_rows = api.predict(library, texts, adapter=name)
        for a, b in zip(onnx_rows, torch_rows):
            assert abs(a["score"] - b["score"]) <= 1e-4 and a["label"] == b["label"]
        scores[name] = [r["scores"]["pos"] for r in onnx_rows]
    assert scores["calm"] != scores["bold"]  # the switch really changes the weights
    with pytest.raises(OmnituneError, match="no adapter 'loud'"):
        predict_onnx(result.out_dir, texts, adapter="loud")


@pytest.mark.slow
def test_minilm_rotten_tomatoes_int8_keeps_accuracy(tmp_path):
    """Real assets: a short run of the shipped MiniLM recipe, exported with int8 (bench/export_latency.py
    gives the full figures). The fp32 graph scores exactly as PyTorch; int8 within 3 points."""
    run = api.train("text/minilm-rotten-tomatoes", {"train.max_steps": 40, "data.max_eval_samples": 400,
                                                    "output.dir": str(tmp_path), "output.run_name": "rt"}).run_dir
    result = export_run(run, quantize="int8", latency_repeats=3)
    rows = {r["model"]: r for r in result.report["rows"]}
    acc = {k: r["metrics"]["accuracy"] for k, r in rows.items()}
    assert result.manifest["parity"]["fp32"]["passed"] and result.manifest["parity"]["int8"]["passed"]
    assert acc["onnx-fp32"] == pytest.approx(acc["pytorch"], abs=1 / 400)
    assert abs(acc["onnx-int8"] - acc["pytorch"]) <= 0.03
    assert rows["onnx-int8"]["size_bytes"] < 0.4 * rows["onnx-fp32"]["size_bytes"]
