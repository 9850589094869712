"""The speech-recognition task on a tiny random Whisper and generated audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from omnitune.core.base.errors import DataError
from omnitune.core.base.recipe import RegularizationConfig
from omnitune.core.loop.strategies import check_groups_cover
from omnitune.speech.asr import SpeechDataConfig, SpeechModelConfig, SpeechRecognitionTask
from omnitune.core.loop.trainer import mean_loss

from .conftest import tone


def make_task(model_dir, source, seed=0, **data_kw) -> SpeechRecognitionTask:
    model_kw = {k: data_kw.pop(k) for k in ("max_source_seconds", "max_new_tokens") if k in data_kw}
    model_kw.setdefault("max_new_tokens", 6)
    data_kw.setdefault("max_bad_share", 0.5)
    data_kw.setdefault("val_size", 0.2)
    data_kw.setdefault("test_size", 0.2)
    return SpeechRecognitionTask(model=SpeechModelConfig(name=str(model_dir), **model_kw),
                                 data=SpeechDataConfig(source=str(source), **data_kw),
                                 regularization=RegularizationConfig(), seed=seed)


def test_data_report_names_bad_files(tiny_whisper, audio_folder):
    bundle = make_task(tiny_whisper, audio_folder).build_datasets()
    r = bundle.report
    assert r.examples["silent"] == ["quiet"]
    assert r.examples["unreadable"] == ["broken"]
    assert r.examples["missing audio file"] == ["ghost"]
    assert r.examples["audio without transcript"] == ["orphan.wav"]
    assert len(bundle.train) + len(bundle.validation) + len(bundle.test) == 12
    assert bundle.train_lengths == [len(c.wave) * 1000 // 16000 for c in bundle.train.clips]
    # The same seed gives the same split; utterances never appear in two splits.
    again = make_task(tiny_whisper, audio_folder).build_datasets()
    assert again.test.names == bundle.test.names
    assert not set(bundle.test.names) & set(bundle.train.names)


def test_too_many_bad_files_is_an_error(tiny_whisper, audio_folder):
    # 4 bad of 16 (25 %): over a 10 % threshold.
    with pytest.raises(DataError, match="unusable"):
        make_task(tiny_whisper, audio_folder, max_bad_share=0.1).build_datasets()


def test_csv_and_jsonl_transcripts(tiny_whisper, tmp_path):
    for i in range(6):
        sf.write(tmp_path / f"a{i}.flac", tone(0.4, 16000, 200 + 50 * i), 16000)
    (tmp_path / "t.csv").write_text("file,sentence\n" + "".join(f"a{i}.flac,word {i}\n" for i in range(6)))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"path": f"a{i}.flac", "text": f"w {i}"}) + "\n"
                                              for i in range(6)))
    csv_task = make_task(tiny_whisper, tmp_path / "t.csv", path_column="file", text_column="sentence")
    csv_bundle = csv_task.build_datasets()
    assert len(csv_bundle.train) + len(csv_bundle.validation) + len(csv_bundle.test) == 6
    # A transcript-file source names its own clips; other files in the folder are not its business.
    jsonl = make_task(tiny_whisper, tmp_path / "t.jsonl").build_datasets()
    assert jsonl.report.dropped.get("all", {}) == {}


def test_label_padding_is_masked_out_of_the_loss(tiny_whisper, audio_folder):
    task = make_task(tiny_whisper, audio_folder)
    ds = task.build_datasets().train
    model = task.build_model().eval()
    samples = [ds[0], ds[1]]
    samples[1]["labels"] = samples[1]["labels"][:5]  # make the lengths differ
    batch = task.collate(samples)
    n0, n1 = len(samples[0]["labels"]), 5
    assert (batch["labels"][1, n1:] == -100).all() and (batch["labels"][1, :n1] >= 0).all()
    with torch.no_grad():
        loss = mean_loss(task.forward(model, batch, train=True))
        # Manual: each utterance alone, unpadded; summed token losses over all real tokens.
        total = 0.0
        for s, n in ((samples[0], n0), (samples[1], n1)):
            labels = torch.tensor([s["labels"]])
            dec_in = torch.cat([torch.tensor([[model.config.decoder_start_token_id]]), labels[:, :-1]], dim=1)
            logits = model(input_features=torch.from_numpy(s["input_features"][None]), decoder_input_ids=dec_in).logits
            total += F.cross_entropy(logits[0], labels[0], reduction="sum").item()
    assert loss.item() == pytest.approx(total / (n0 + n1), rel=1e-5)


def test_layer_groups_cover_every_parameter(tiny_whisper, audio_folder):
    task = make_task(tiny_whisper, audio_folder)
    model = task.build_model()
    groups = task.layer_groups(model)
    check_groups_cover(model, groups)
    assert [g.name for g in groups] == ["encoder.stem", "encoder.layers.0", "encoder.layers.1",
                                        "decoder.layers.0", "decoder.layers.1", "output"]
    assert any(p is model.proj_out.weight for p in groups[-1].parameters())


def test_short_window_cuts_positions_and_still_decodes(tiny_whisper, tmp_path, audio_folder):
    sf.write(audio_folder / "long.wav", tone(2.5, 8000), 8000)
    with open(audio_folder / "transcripts.txt", "a") as f:
        f.write("long: a long clip\n")
    task = make_task(tiny_whisper, audio_folder, max_source_seconds=2, max_bad_share=0.6)
    bundle = task.build_datasets()
    assert bundle.report.examples["longer than the model window"] == ["long"]
    model = task.build_model().eval()
    assert model.model.encoder.embed_positions.weight.shape[0] == 100  # 2 s x 50 positions/s
    batch = task.collate([bundle.test[i] for i in range(len(bundle.test))])
    assert batch["input_features"].shape[-1] == 200  # 2 s of 10 ms frames
    out = task.forward(model, batch, train=False)
    # Evaluation reuses the encoder states; decoding from the features gives the same tokens.
    assert torch.equal(out["generated"], task.generate(model, batch["input_features"]))
    hyps, refs = task.predict_batch(model, batch, out)
    assert len(hyps) == len(refs) == len(bundle.test)
    metrics = task.compute_metrics(hyps, refs)
    assert set(metrics) == {"wer", "cer"}
    # Save and reload keep the window; predictions of the reloaded model are the same.
    task.save_pretrained(model, tmp_path / "saved")
    reloaded = make_task(tmp_path / "saved", audio_folder, max_source_seconds=2).load_pretrained(tmp_path / "saved")
    assert reloaded.config.max_source_positions == 100
    files = [str(audio_folder / "clip00.wav"), str(audio_folder / "quiet.wav")]
    first = task.predict(model, files)
    assert task.predict(reloaded, files) == first
    assert "text" in first[0] and first[1]["error"] == "silent"
    blocks = task.report_extras(tmp_path, "test", hyps, refs, bundle.test)
    assert "Worst test utterances" in blocks[0] and (tmp_path / "predictions_test.csv").is_file()


def test_augmented_training_items_are_seeded(tiny_whisper, audio_folder):
    aug = [{"name": "noise", "prob": 1.0, "min_snr_db": 5, "max_snr_db": 5},
           {"name": "specaugment", "prob": 1.0}]
    a = make_task(tiny_whisper, audio_folder, augment=aug).build_datasets().train
    b = make_task(tiny_whisper, audio_folder, augment=aug).build_datasets().train
    first, again = a[0]["input_features"], b[0]["input_features"]
    np.testing.assert_array_equal(first, again)
    # A function of (seed, epoch, index): the same on a second draw, different in another epoch.
    np.testing.assert_array_equal(a[0]["input_features"], first)
    a.set_epoch(1)
    assert not np.array_equal(a[0]["input_features"], first)


def test_hub_audio_dataset_without_ffmpeg(tiny_whisper, tmp_path):
    """A datasets audio dataset (parquet with an Audio column, as on the Hub) is decoded with
    soundfile: its own test split is kept, validation is split off its train split."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def wav_bytes(freq):
        buf = io.BytesIO()
        sf.write(buf, tone(0.5, 16000, freq), 16000, format="WAV")
        return buf.getvalue()

    meta = {"info": {"features": {"audio": {"_type": "Audio"}, "sentence": {"dtype": "string", "_type": "Value"}}}}
    (tmp_path / "data").mkdir()
    for split, n in (("train", 10), ("test", 3)):
        # Distinct tones per split: a test clip equal to a training clip would be dropped as a leak.
        audio = pa.array([{"bytes": wav_bytes(200 + 30 * i + (15 if split == "test" else 0)), "path": f"{split}{i}.wav"}
                          for i in range(n)],
                         type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        table = pa.table({"audio": audio, "sentence": [f"word {i}" for i in range(n)]})
        pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}),
                       tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    bundle = make_task(tiny_whisper, f"hub:{tmp_path}", text_column="sentence").build_datasets()
    assert sorted(bundle.test.names) == ["test0.wav", "test1.wav", "test2.wav"]
    assert len(bundle.train) == 8 and len(bundle.validation) == 2
    assert bundle.train[0]["input_features"].shape == (80, 3000)
    # ":SPLIT" reads one (sliced) split only, as for LibriSpeech's large training splits.
    bundle = make_task(tiny_whisper, f"hub:{tmp_path}:train[:6]", text_column="sentence",
                       test_source=f"hub:{tmp_path}:test[:2]").build_datasets()
    assert sorted(bundle.test.names) == ["test0.wav", "test1.wav"]
    assert len(bundle.train) + len(bundle.validation) == 6 and len(bundle.validation) >= 1


def test_language_and_task_tokens(tiny_whisper):
    from transformers import GenerationConfig, WhisperProcessor

    from omnitune.core.base.errors import OmnituneError
    from omnitune.speech.model import configure_language

    tok = WhisperProcessor.from_pretrained(tiny_whisper).tokenizer
    english_only = GenerationConfig(is_multilingual=False)
    assert configure_language(english_only, tok, "english", "transcribe") == {}
    assert tok(" a").input_ids[:2] == [257, 264]  # <|startoftranscript|><|notimestamps|>
    with pytest.raises(OmnituneError, match="English-only"):
        configure_language(english_only, tok, "french", None)
    multilingual = GenerationConfig(is_multilingual=True)
    assert configure_language(multilingual, tok, "english", "transcribe") == {"language": "english",
                                                                              "task": "transcribe"}
    # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>, then the text.
    assert tok(" a").input_ids[:4] == [257, 258, 260, 264]
