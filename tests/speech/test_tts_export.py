"""ONNX export of the VITS generator (speech/tts_export.py, the text-to-speech entry of core/deploy/export.py):
the length regulation on a hand-made case, a tiny VITS run exported and reproduced by ONNX Runtime
at phoneme lengths other than the traced one, `predict --onnx` writing the WAV PyTorch writes, the
int8 refusal; slow: the Joe voice against PyTorch and against Piper's own ONNX file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from omnitune.core import api
from omnitune.core.cli import main
from omnitune.core.base.errors import OmnituneError
from omnitune.core.deploy.export import export_run, waveform_feeds
from omnitune.core.deploy.onnx_predict import MANIFEST, run_session, session

ROOT = Path(__file__).resolve().parents[2]


def _tiny_vits(folder: Path):
    from omnitune.speech.testing_tts import make_tiny_vits
    from omnitune.speech.vits_piper import load_vits

    model = load_vits(make_tiny_vits(folder)).eval()
    model.noise_scale, model.noise_scale_duration = 0.0, 0.0
    return model


class _FixedDurations(nn.Module):
    """A duration predictor answering fixed log durations (the thing under test is what follows)."""

    def __init__(self, durations: list[float]) -> None:
        super().__init__()
        self.log_w = torch.log(torch.tensor(durations)).view(1, 1, -1)

    def forward(self, hidden, mask, reverse=True, noise_scale=0.0):
        return self.log_w * mask


def test_length_regulation_hand_case(tmp_path):
    from omnitune.speech.tts_export import VitsGenerator

    gen = VitsGenerator(_tiny_vits(tmp_path / "tiny")).eval()
    gen.duration_predictor = _FixedDurations([1.0, 2.0, 0.5, 1.2])
    ids = torch.tensor([[1, 5, 6, 2]])
    with torch.no_grad():
        # frames per phoneme: ceil(d * length_scale) = 1, 2, 1, 2 -> 6 frames of hop 16 samples
        wave, lengths = gen(ids, torch.tensor([4]), torch.tensor([0.0, 1.0, 0.0]))
        assert lengths.tolist() == [6 * 16] and wave.shape == (1, 96)
        # length scale 2: ceil(2, 4, 1, 2.4) = 2, 4, 1, 3 -> 10 frames
        _, lengths = gen(ids, torch.tensor([4]), torch.tensor([0.0, 2.0, 0.0]))
        assert lengths.tolist() == [160]
        # the last phoneme is padding (input_lengths 3): 1 + 2 + 1 frames
        _, lengths = gen(ids, torch.tensor([3]), torch.tensor([0.0, 1.0, 0.0]))
        assert lengths.tolist() == [64]


def test_generator_equals_vits_forward(tmp_path):
    from omnitune.speech.tts_export import VitsGenerator

    model = _tiny_vits(tmp_path / "tiny")
    gen = VitsGenerator(model).eval()
    for n in (5, 17):
        ids = torch.tensor([[1] + [(7 * i) % 26 + 4 for i in range(n - 2)] + [2]])
        with torch.no_grad():
            ref = model(input_ids=ids).waveform
            wave, lengths = gen(*waveform_feeds(ids, [0.0, 1.0, 0.0]).values())
        assert wave.shape == ref.shape and int(lengths[0]) == ref.shape[1]
        assert torch.allclose(wave, ref, atol=1e-6)
    assert (model.noise_scale, model.speaking_rate) == (0.0, 1.0)  # reference() restored them


# ------------------------------------------------------------------------------ a tiny run, exported
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from omnitune.speech.testing_tts import tiny_tts_recipe

    folder = tmp_path_factory.mktemp("tts-export")
    raw = tiny_tts_recipe(folder)
    # noise scales 0: synthesis is deterministic, so PyTorch and ONNX must give the same WAV
    raw["model"].update({"noise_scale": 0.0, "noise_scale_duration": 0.0})
    raw["train"].update({"max_steps": 1})
    raw["output"] = {"dir": str(folder / "runs"), "run_name": "tiny"}
    return api.train(api.validate_recipe(raw, where="tiny text-to-speech")).run_dir


@pytest.fixture(scope="module")
def tiny_export(tiny_run) -> tuple[Path, dict]:
    result = export_run(tiny_run, latency_repeats=3)
    return result.out_dir, result.report


def test_tiny_voice_exports_with_dynamic_lengths(tiny_run, tiny_export):
    from omnitune.core.api import _load_run

    out, report = tiny_export
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["task"] == "text-to-speech" and manifest["opset"] == 17 and manifest["runtime"] == "waveform"
    graph = manifest["graphs"]["model"]
    assert graph["inputs"] == ["input", "input_lengths", "scales"] and graph["outputs"] == ["output", "output_lengths"]
    assert graph["dynamic_axes"]["input"] == {"0": "batch", "1": "phonemes"}
    assert graph["dynamic_axes"]["output"] == {"0": "batch", "1": "samples"}
    assert manifest["synthesis"]["scales"] == [0.0, 1.0, 0.0] and manifest["synthesis"]["sampling_rate"] == 8000
    parity = manifest["parity"]["fp32"]
    assert parity["passed"] and parity["agreement"] == 1.0 and parity["max_abs_diff_all"] <= 1e-4
    # the front end travels with the graph: phoneme map, recipe; no torch weights
    assert (out / "omnitune_tts.json").is_file() and (out / "recipe.yaml").is_file()
    assert not list(out.glob("*.safetensors"))
    assert [r["model"] for r in report["synthesis"]] == ["pytorch", "onnx-fp32"]
    assert all(r["real_time_factor"] > 0 for r in report["synthesis"])
    assert "real-time factor" in (out / "export_report.md").read_text()

    # ORT against transformers' forward at two phoneme lengths, neither the traced one
    _, _, model = _load_run(tiny_run)
    vits = model.vits.eval()
    sess = session(out / "model.onnx")
    lengths = []
    for text in ("one", "seven eight nine ten one two"):  # ^ _ (char _)* $ with the tiny map: a=4 ... z=29, " "=3
        ids = torch.tensor([[1, 0] + [k for ch in text for k in (ord(ch) - ord("a") + 4 if ch != " " else 3, 0)] + [2]])
        with torch.no_grad():
            ref = vits(input_ids=ids).waveform[0]
        got = run_session(sess, waveform_feeds(ids, [0.0, 1.0, 0.0]))
        assert int(got["output_lengths"][0]) == ref.shape[0] == got["output"].shape[1]
        assert float((got["output"][0] - ref).abs().max()) < 1e-4
        lengths.append(ids.shape[1])
    assert manifest["synthesis"]["traced_phonemes"] not in lengths and lengths[0] != lengths[1]


def test_padded_batch_gives_each_items_length(tiny_export):
    out, _ = tiny_export
    sess = session(out / "model.onnx")
    short, long_ = [1, 0, 18, 0, 17, 0, 8, 0, 2], [1, 0] + [4 + i % 26 for i in range(20)] + [2]
    singles = [run_session(sess, waveform_feeds(torch.tensor([x]), [0.0, 1.0, 0.0])) for x in (short, long_)]
    ids = torch.zeros(2, len(long_), dtype=torch.long)
    ids[0, :len(short)], ids[1] = torch.tensor(short), torch.tensor(long_)
    both = run_session(sess, {"input": ids, "input_lengths": torch.tensor([len(short), len(long_)]),
                              "scales": torch.tensor([0.0, 1.0, 0.0])})
    assert both["output_lengths"].tolist() == [int(s["output_lengths"][0]) for s in singles]
    n = int(both["output_lengths"][0])
    assert n < both["output"].shape[1] and float(both["output"][0, n:].abs().sum()) == 0.0  # silence after its end
    # the longest item has no padding: the same waveform as on its own
    assert torch.allclose(both["output"][1], singles[1]["output"][0], atol=1e-4)


def test_predict_onnx_writes_the_wav_pytorch_writes(tiny_run, tiny_export, capsys):
    import soundfile as sf

    texts = ["one two three", "four"]
    torch_rows = api.predict(tiny_run, texts)
    torch_waves = [sf.read(r["wav"], dtype="float32")[0] for r in torch_rows]
    # a run folder works too (its export-onnx folder is found)
    assert main(["predict", "--onnx", str(tiny_run), *texts]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["input"] for r in rows] == texts
    for row, ref in zip(rows, torch_waves):
        wave, sr = sf.read(row["wav"], dtype="float32")
        assert sr == 8000 and len(wave) == len(ref) and len(wave) % 16 == 0
        assert row["seconds"] == round(len(ref) / 8000, 3)
        assert np.abs(wave - ref).max() < 1e-3  # PCM-16 WAVs: within a quantisation step or two


def test_int8_is_refused_in_one_line(tiny_run, capsys):
    with pytest.raises(OmnituneError, match="int8"):
        export_run(tiny_run, tiny_run / "export-int8", quantize="int8")
    assert not (tiny_run / "export-int8").exists()
    assert main(["export", str(tiny_run), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: omnitune export:") and "\n" not in err


# ------------------------------------------------------------------------------ the real voice
@pytest.mark.slow
def test_joe_voice_exports_and_matches_pytorch_and_piper(tmp_path):
    """The Joe voice as it loads (no training: a run folder holding the base model) exports; ORT
    matches PyTorch on held-out Allison sentences and Piper's own ONNX file on the same phoneme ids."""
    import yaml

    from omnitune.core.base.recipe import read_yaml, validate_recipe
    from omnitune.core.api import build_task
    from omnitune.speech.vits_piper import run_onnx, voice_files

    if shutil.which("espeak-ng") is None:
        subprocess.run(["bash", str(ROOT / "scripts" / "espeak.sh")], check=True)
    raw = read_yaml(ROOT / "recipes" / "speech" / "piper-joe-to-allison.yaml")
    raw["data"].update({"max_samples": 8, "max_eval_samples": 3})
    rec = validate_recipe(raw, where="piper-joe-to-allison")
    task = build_task(rec)
    run = tmp_path / "run"
    task.save_pretrained(task.build_model(), run / "model")
    (run / "recipe.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    result = export_run(run, latency_repeats=3)
    manifest = result.manifest
    assert manifest["parity"]["fp32"]["passed"] and manifest["parity"]["fp32"]["agreement"] == 1.0
    assert manifest["parity"]["fp32"]["samples"] == 3 and manifest["parity"]["fp32"]["max_abs_diff_all"] < 1e-4
    assert manifest["synthesis"]["sampling_rate"] == 22050

    onnx_path, _ = voice_files("joe-piper-voice")
    sess = session(result.out_dir / "model.onnx")
    for sentence in ("Please enter your password, followed by the pound key.", "Goodbye."):
        ids, _ = task.text_ids(sentence)
        ours = run_session(sess, waveform_feeds(torch.tensor([ids]), [0.0, 1.0, 0.0]))["output"][0].numpy()
        piper = run_onnx(onnx_path, ids)
        assert ours.shape == piper.shape
        assert np.abs(ours - piper).max() < 1e-4
