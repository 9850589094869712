"""Audio I/O: decode with soundfile, mix to mono, resample to 16 kHz with torchaudio.

FFmpeg is never needed: soundfile reads WAV/FLAC/OGG from files or bytes (the Hub path casts its
Audio column with ``decode=False`` and hands the bytes here).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000  # what Whisper's feature extractor expects
# A clip whose loudest sample is below this (about -80 dBFS) carries no usable speech.
SILENCE_PEAK = 1e-4


class AudioProblem(Exception):
    """Why a clip cannot be used; the message is the data report's reason."""


def decode(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """A file path or encoded bytes -> (float32 mono samples, sample rate)."""
    try:
        data, sr = sf.read(io.BytesIO(source) if isinstance(source, bytes) else str(source),
                           dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt or unknown formats
        raise AudioProblem("unreadable") from exc
    return data.mean(axis=1), int(sr)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), orig_sr, target_sr)
    return out.numpy()


def load_clip(source: str | Path | bytes, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode, mix to mono, resample; raises AudioProblem("unreadable" | "empty" | "silent")."""
    wave, sr = decode(source)
    if wave.size == 0:
        raise AudioProblem("empty")
    if not np.isfinite(wave).all() or np.abs(wave).max() < SILENCE_PEAK:
        raise AudioProblem("silent")
    return resample(wave, sr, target_sr)


def chunk_bounds(wave: np.ndarray, window: int, sample_rate: int = SAMPLE_RATE, search_seconds: float = 5.0,
                 frame_seconds: float = 0.02) -> list[tuple[int, int]]:
    """Cut a long recording into consecutive pieces of at most ``window`` samples that cover it
    exactly (each piece starts where the previous one ends). Each cut falls on the quietest 20 ms
    frame of the last ``search_seconds`` of the window, so that it lands between words where it can.

    >>> chunk_bounds(np.ones(10), window=4, sample_rate=1, search_seconds=0, frame_seconds=1)
    [(0, 4), (4, 8), (8, 10)]
    """
    n = len(wave)
    frame = max(1, int(frame_seconds * sample_rate))
    search = int(search_seconds * sample_rate)
    out, start = [], 0
    while n - start > window:
        lo, hi = start + max(window - search, frame), start + window
        cut = hi
        if hi - lo >= frame:
            frames = wave[lo:hi - (hi - lo) % frame].reshape(-1, frame)
            energy = np.square(frames, dtype=np.float64).mean(axis=1)
            cut = lo + (int(np.argmin(energy)) + 1) * frame
        out.append((start, cut))
        start = cut
    out.append((start, n))
    return out
