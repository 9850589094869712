"""Tiny text-to-speech fixtures: a random VITS built from a config (type-2 residual blocks, like
Piper's medium voices) with a character front end, and generated clips; nothing downloaded.
They back the task's registered fixture (``omnitune.fixtures``); production code never imports them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SR = 8000
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def tiny_id_map() -> dict[str, list[int]]:
    symbols = ["_", "^", "$", " "] + list("abcdefghijklmnopqrstuvwxyz")
    return {s: [i] for i, s in enumerate(symbols)}


def tiny_vits_config(vocab_size: int = 30):
    from transformers import VitsConfig

    return VitsConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, window_size=2,
        ffn_dim=32, ffn_kernel_size=3, flow_size=8, spectrogram_bins=65, hidden_act="relu",
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, use_stochastic_duration_prediction=True,
        upsample_initial_channel=16, upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 2]], resblock_type="2",
        depth_separable_channels=2, depth_separable_num_layers=2, duration_predictor_flow_bins=4,
        duration_predictor_num_flows=2, duration_predictor_filter_channels=16, duration_predictor_dropout=0.0,
        prior_encoder_num_flows=2, prior_encoder_num_wavenet_layers=2, posterior_encoder_num_wavenet_layers=2,
        wavenet_kernel_size=3, wavenet_dropout=0.0, sampling_rate=SR, pad_token_id=0,
        noise_scale=0.667, noise_scale_duration=0.8)


def make_tiny_vits(out: Path, seed: int = 0) -> Path:
    """A random tiny VITS (hop 16 at 8 kHz) saved as the text-to-speech task saves its models."""
    import torch

    from .tts import FRONTEND_FILE
    from .vits_piper import build_vits

    torch.manual_seed(seed)
    model = build_vits(tiny_vits_config())
    out = Path(out)
    model.save_pretrained(out)
    (out / FRONTEND_FILE).write_text(json.dumps({"phoneme_id_map": tiny_id_map(), "phonemizer": "characters",
                                                 "espeak_voice": "en-us", "sampling_rate": SR}))
    return out


def make_tiny_hf_vits(out: Path, seed: int = 0, add_blank: bool = True) -> Path:
    """A random tiny VITS as a transformers checkpoint (like ``facebook/mms-tts-eng``): ``VitsModel``
    (HiFi-GAN's first residual block) saved with save_pretrained and a ``VitsTokenizer`` of a
    character vocabulary (blank ``_`` = id 0, space, a-z, ``<unk>``); no omnitune front-end file."""
    import torch
    from transformers import VitsModel, VitsTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    symbols = ["_", " "] + list("abcdefghijklmnopqrstuvwxyz") + ["<unk>"]
    vocab_file = out / "vocab.json"
    vocab_file.write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    tokenizer = VitsTokenizer(str(vocab_file), pad_token="_", unk_token="<unk>", language="eng",
                              add_blank=add_blank, normalize=True, phonemize=False)
    config = tiny_vits_config(len(symbols))
    del config.resblock_type  # transformers' own VITS: no such field
    torch.manual_seed(seed)
    VitsModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_speech_folder(root: Path, n: int = 12) -> Path:
    """n clips of two 'words' (each word a tone of its own pitch) with `name: text` transcripts."""
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    lines = []
    t = np.arange(int(0.12 * SR)) / SR
    for i in range(n):
        a, b = i % 10, (i + 3) % 10
        wave = np.concatenate([0.3 * np.sin(2 * np.pi * (200 + 30 * a) * t), np.zeros(SR // 40),
                               0.3 * np.sin(2 * np.pi * (200 + 30 * b) * t)]).astype(np.float32)
        sf.write(root / f"utt{i:02d}.wav", wave, SR)
        lines.append(f"utt{i:02d}: {WORDS[a]} {WORDS[b]}")
    (root / "transcripts.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_tts_recipe(folder: Path, like=None) -> dict:
    folder = Path(folder)
    model = folder / "tiny-vits"
    if not model.exists():
        make_tiny_vits(model)
    data = folder / "speech"
    if not data.exists():
        make_speech_folder(data)
    return {
        "name": "tiny-text-to-speech", "task": "text-to-speech", "seed": 0,
        # Two report samples, scored without an ASR model (no Whisper download or run in tests).
        "model": {"name": str(model), "segment_frames": 8, "discriminator_width": 2, "n_mels": 20, "c_mel": 1.0,
                  "sample_sentences": 2, "sample_asr": None},
        "data": {"source": str(data), "val_size": 0.2, "test_size": 0.2},
        "train": {"epochs": 1, "batch_size": 2, "eval_batch_size": 4, "lr": 2e-3, "precision": "fp32"},
        "eval": {"baseline": False},
        "output": {"dir": str(folder / "runs")},
    }


class TextToSpeechFixture:
    """text-to-speech's fixture (entry point in ``omnitune.fixtures``)."""

    @staticmethod
    def tiny_recipe(folder: Path, like=None) -> dict:
        return tiny_tts_recipe(folder, like)

    @staticmethod
    def tiny_inputs(folder: Path) -> list[str]:
        return ["one two", "three"]
