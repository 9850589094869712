"""Seeded speech augmentation, declared in the recipe's ``data.augment`` list.

Waveform transforms (noise, speed, telephone) run before feature extraction; SpecAugment masks
the log-mel features after it. Every function takes an explicit ``numpy.random.Generator``; the
training dataset makes one per item from (seed, epoch, index) (``omnitune.core.base.seeding.item_rng``),
so a run is reproducible from its seed with any number of DataLoader workers, and after a resume.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> noisy = add_noise(np.sin(np.arange(16000) / 5).astype("float32"), snr_db=10.0, rng=rng)
>>> round(measured_snr_db(np.sin(np.arange(16000) / 5), noisy), 3)
10.0
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .audio import resample


# ----------------------------------------------------------------------------- recipe schema
class _Aug(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    prob: float = Field(default=0.5, ge=0, le=1)
    """Share of training clips the transform is applied to."""


class NoiseAug(_Aug):
    name: Literal["noise"]
    """noise: mix in white or recorded noise."""
    min_snr_db: float = 10.0
    """Noise at an SNR drawn uniformly from [min_snr_db, max_snr_db] (equal values: fixed SNR)."""
    max_snr_db: float = 20.0
    """Upper end of the SNR range (dB) the noise is mixed at."""
    files: str | None = None
    """None: white noise. Else real noise recordings: a folder of audio files (searched recursively),
    one file, or an asset (``asset:moh-noise``, the Asterisk music on hold); a seeded file and
    offset are drawn per clip (the recording loops if shorter than the clip)."""


class SpeedAug(_Aug):
    name: Literal["speed"]
    """speed: resample to change tempo and pitch."""
    factors: list[Annotated[float, Field(gt=0.5, lt=2.0)]] = [0.9, 1.1]
    """Kaldi-style speed perturbation: 0.9/1.1 changes tempo and pitch by 10 %."""


class TelephoneAug(_Aug):
    name: Literal["telephone"]
    """telephone: band-limit through a low sample rate."""
    rate: int = Field(default=8000, ge=2000, le=16000)
    """Resample through this rate: removes everything above rate/2 (4 kHz for an 8 kHz channel)."""


class SpecAugmentAug(_Aug):
    name: Literal["specaugment"]
    """specaugment: mask bands of time and frequency in the log-mel features."""
    time_masks: int = Field(default=2, ge=0)
    """Time masks per clip."""
    time_width: int = Field(default=40, ge=1)
    """Widest time mask, in frames of 10 ms."""
    freq_masks: int = Field(default=2, ge=0)
    """Frequency masks per clip."""
    freq_width: int = Field(default=15, ge=1)
    """Widest frequency mask, in mel bins."""


AugmentConfig = Annotated[Union[NoiseAug, SpeedAug, TelephoneAug, SpecAugmentAug], Field(discriminator="name")]


# ----------------------------------------------------------------------------- waveform transforms
def measured_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    noise = np.asarray(noisy, dtype=np.float64) - np.asarray(clean, dtype=np.float64)
    return float(10 * np.log10(np.mean(np.square(clean, dtype=np.float64)) / np.mean(np.square(noise))))


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white noise scaled so that signal power / noise power is exactly ``snr_db``."""
    noise = rng.standard_normal(wave.shape)
    signal_power = float(np.mean(np.square(wave, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise)))
    scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10))) if noise_power > 0 else 0.0
    return (wave + scale * noise).astype(np.float32)


NOISE_SUFFIXES = (".wav", ".flac", ".ogg", ".gsm")
_NOISE_BANKS: dict[str, list[np.ndarray]] = {}


def noise_bank(source: str, sample_rate: int) -> list[np.ndarray]:
    """The recordings of a noise folder, file or asset, decoded once per process (16 kHz mono),
    in sorted path order, so a seeded draw picks the same recording on every machine."""
    key = f"{source}@{sample_rate}"
    if key not in _NOISE_BANKS:
        from pathlib import Path

        from omnitune.core.base import assets
        from omnitune.core.base.errors import DataError

        from .audio import AudioProblem, load_clip

        path = Path(assets.resolve(source))
        files = ([path] if path.is_file() else
                 sorted(p for p in path.rglob("*") if p.suffix.lower() in NOISE_SUFFIXES) if path.is_dir() else [])
        if not files:
            raise DataError(f"data.augment noise files {source!r}: no audio files ({', '.join(NOISE_SUFFIXES)}) there")
        bank = []
        for f in files:
            try:
                bank.append(load_clip(f, sample_rate))
            except AudioProblem as problem:
                raise DataError(f"noise file {f}: {problem}") from None
        _NOISE_BANKS[key] = bank
    return _NOISE_BANKS[key]


def noise_segment(bank: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of a seeded recording of ``bank`` from a seeded offset, looped when shorter."""
    rec = bank[int(rng.integers(len(bank)))]
    start = int(rng.integers(len(rec)))
    reps = -(-(start + n) // len(rec))
    return np.tile(rec, reps)[start:start + n]


def mix_at_snr(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``wave`` plus ``noise`` scaled so that signal power / noise power is exactly ``snr_db``
    (a silent noise segment leaves the clip unchanged)."""
    signal_power = float(np.mean(np.square(wave, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10))) if noise_power > 0 else 0.0
    return (wave + scale * noise).astype(np.float32)


def add_file_noise(wave: np.ndarray, snr_db: float, bank: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Mix a seeded segment of a real noise recording at exactly ``snr_db``."""
    return mix_at_snr(wave, noise_segment(bank, len(wave), rng), snr_db)


def speed_perturb(wave: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play ``factor`` times faster: resample as if recorded at sample_rate * factor.
    The length becomes about len / factor (that is the point of the transform)."""
    return resample(wave, int(round(sample_rate * factor)), sample_rate)


def telephone_band(wave: np.ndarray, sample_rate: int, rate: int = 8000) -> np.ndarray:
    """Band-limit like a telephone channel by resampling down to ``rate`` and back; same length."""
    narrow = resample(resample(wave, sample_rate, rate), rate, sample_rate)
    if len(narrow) >= len(wave):
        return narrow[: len(wave)]
    return np.pad(narrow, (0, len(wave) - len(narrow)))


def spec_augment(features: np.ndarray, rng: np.random.Generator, time_masks: int, time_width: int,
                 freq_masks: int, freq_width: int, valid_frames: int | None = None) -> np.ndarray:
    """Mask random time and mel-bin stripes of a (n_mels, frames) array with its mean value.
    Time masks fall inside the first ``valid_frames`` frames (the speech, not the padding)."""
    out = features.copy()
    n_mels, frames = out.shape
    valid = min(frames, valid_frames or frames)
    fill = float(out[:, :valid].mean())
    for _ in range(time_masks):
        width = int(rng.integers(0, min(time_width, valid) + 1))
        start = int(rng.integers(0, valid - width + 1))
        out[:, start:start + width] = fill
    for _ in range(freq_masks):
        width = int(rng.integers(0, min(freq_width, n_mels) + 1))
        start = int(rng.integers(0, n_mels - width + 1))
        out[start:start + width, :] = fill
    return out


def augment_wave(wave: np.ndarray, augs: list, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Apply the waveform augmentations in recipe order, each with its probability."""
    for aug in augs:
        if isinstance(aug, SpecAugmentAug) or rng.random() >= aug.prob:
            continue
        if isinstance(aug, NoiseAug):
            snr = float(rng.uniform(aug.min_snr_db, aug.max_snr_db))
            wave = (add_noise(wave, snr, rng) if aug.files is None
                    else add_file_noise(wave, snr, noise_bank(aug.files, sample_rate), rng))
        elif isinstance(aug, SpeedAug):
            wave = speed_perturb(wave, float(rng.choice(aug.factors)), sample_rate)
        elif isinstance(aug, TelephoneAug):
            wave = telephone_band(wave, sample_rate, aug.rate)
    return wave


def augment_features(features: np.ndarray, augs: list, rng: np.random.Generator, valid_frames: int) -> np.ndarray:
    for aug in augs:
        if isinstance(aug, SpecAugmentAug) and rng.random() < aug.prob:
            features = spec_augment(features, rng, aug.time_masks, aug.time_width, aug.freq_masks,
                                    aug.freq_width, valid_frames)
    return features
