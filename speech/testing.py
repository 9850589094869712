"""Tiny speech fixtures: a random Whisper built from a config and generated tone clips, nothing
downloaded. They back the ASR task's registered fixture (``omnitune.fixtures``: the contract tests and
the tiny run of every shipped recipe) and the test suite's fixtures. Production code never imports
this module."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


LANGUAGES = ["<|en|>", "<|de|>", "<|fr|>"]


def make_tiny_whisper(out: Path, seed: int = 0, multilingual: bool = False) -> Path:
    """A random 2+2-layer Whisper (d_model 32) with a byte-level tokenizer of 265 tokens, saved in
    Hugging Face layout with its processor and an English-only generation config. ``multilingual``:
    two more language tokens (<|de|>, <|fr|>) and a multilingual generation config (lang_to_id,
    task_to_id), so generate() detects the language when none is given."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)

    # One token per byte (the byte-level alphabet), no merges: tiny and still a real BPE tokenizer.
    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    specials = SPECIALS + (LANGUAGES[1:] if multilingual else [])
    for tok in specials:
        vocab[tok] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    cfg = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=64,
                        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(cfg)
    gen = GenerationConfig.from_model_config(cfg)
    gen._from_model_config = False  # else from_pretrained rebuilds it from config.json
    gen.decoder_start_token_id, gen.max_length = sot, 64
    gen.no_timestamps_token_id = vocab["<|notimestamps|>"]
    gen.prev_sot_token_id = vocab["<|startofprev|>"]
    gen.is_multilingual = multilingual
    if multilingual:
        gen.lang_to_id = {tok: vocab[tok] for tok in LANGUAGES}
        gen.task_to_id = {"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]}
    model.generation_config = gen
    model.save_pretrained(out)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(out)
    return out


def tone(seconds: float, sr: int, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_audio_folder(root: Path, n: int = 12, sr: int = 8000) -> Path:
    """n short tone clips at 8 kHz with `name: text` transcripts, plus one silent clip, one
    unreadable file, one clip without transcript and one transcript without audio."""
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    lines = []
    for i in range(n):
        sf.write(root / f"clip{i:02d}.wav", tone(0.5 + 0.05 * i, sr, 300 + 40 * i), sr)
        lines.append(f"clip{i:02d}: {words[i % 10]} {words[(i + 3) % 10]}")
    sf.write(root / "quiet.wav", np.zeros(sr // 2, dtype=np.float32), sr)
    lines.append("quiet: nothing")
    (root / "broken.wav").write_bytes(b"not a wav file at all")
    lines.append("broken: broken")
    sf.write(root / "orphan.wav", tone(0.5, sr), sr)
    lines.append("ghost: no audio for this line")
    (root / "transcripts.txt").write_text("; comment line\n" + "\n".join(lines) + "\n")
    return root


def tiny_asr_recipe(folder: Path) -> dict:
    """speech-recognition: a tiny random Whisper and 12 generated clips (plus the bad files
    make_audio_folder adds, which the data report must count)."""
    folder = Path(folder)
    model = folder / "tiny-whisper"
    if not model.exists():
        make_tiny_whisper(model)
    data = folder / "audio"
    if not data.exists():
        make_audio_folder(data)
    return {
        "name": "tiny-speech-recognition", "task": "speech-recognition", "seed": 0,
        "model": {"name": str(model), "max_new_tokens": 4},
        "data": {"source": str(data), "validation_source": None, "test_source": None, "max_bad_share": 0.5,
                 "val_size": 0.2, "test_size": 0.2,
                 # A shipped recipe's extra evaluation sets name real assets the tiny clips have no twin in.
                 "eval_sets": {}},
        "train": {"epochs": 1, "batch_size": 2, "eval_batch_size": 4, "lr": 1e-3, "precision": "fp32"},
        "eval": {"baseline": False},
        "output": {"dir": str(folder / "runs")},
    }


class SpeechRecognitionFixture:
    """speech-recognition's fixture (entry point in ``omnitune.fixtures``): inputs are two of the
    tiny recipe's clips, so ``tiny_recipe`` must have built ``folder`` first."""

    @staticmethod
    def tiny_recipe(folder: Path, like=None) -> dict:
        return tiny_asr_recipe(folder)

    @staticmethod
    def tiny_inputs(folder: Path) -> list[str]:
        return [str(Path(folder) / "audio" / "clip00.wav"), str(Path(folder) / "audio" / "clip01.wav")]
