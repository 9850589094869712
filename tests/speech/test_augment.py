"""Augmentation keeps length (or changes it by the declared factor), reaches the requested SNR,
band-limits like a telephone, and is seeded."""

from __future__ import annotations

import numpy as np
import pytest

from omnitune.speech.augment import (NoiseAug, SpecAugmentAug, SpeedAug, TelephoneAug, add_noise, augment_wave,
                                     measured_snr_db, spec_augment, speed_perturb, telephone_band)

SR = 16000


def speechlike(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    # Harmonics up to 7 kHz with a slow amplitude envelope.
    wave = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / (k + 1) for k, f in enumerate([220, 1100, 2500, 6000]))
    return (0.2 * wave * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_noise_reaches_requested_snr_and_keeps_length(snr_db):
    clean = speechlike()
    noisy = add_noise(clean, snr_db, np.random.default_rng(1))
    assert noisy.shape == clean.shape and noisy.dtype == np.float32
    # Measured from the signals (float32 storage rounds the noise a little).
    assert measured_snr_db(clean, noisy) == pytest.approx(snr_db, abs=0.05)


def test_telephone_band_keeps_length_and_removes_high_band():
    clean = speechlike()
    phone = telephone_band(clean, SR, 8000)
    assert phone.shape == clean.shape

    def band_energy(x, lo, hi):
        spec = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / SR)
        return spec[(freqs >= lo) & (freqs < hi)].sum()

    # The 6 kHz partial is gone (> 40 dB down), the 1.1 kHz one stays (within 1 dB).
    assert band_energy(phone, 5000, 8000) < 1e-4 * band_energy(clean, 5000, 8000)
    assert band_energy(phone, 1000, 1200) == pytest.approx(band_energy(clean, 1000, 1200), rel=0.25)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_length_by_the_factor(factor):
    clean = speechlike()
    fast = speed_perturb(clean, factor, SR)
    assert abs(len(fast) - len(clean) / factor) <= 2


def test_specaugment_masks_keep_shape_and_stay_in_range():
    feats = np.random.default_rng(0).standard_normal((80, 300)).astype(np.float32)
    out = spec_augment(feats, np.random.default_rng(3), time_masks=2, time_width=20, freq_masks=2, freq_width=10,
                       valid_frames=100)
    assert out.shape == feats.shape
    changed_frames = np.flatnonzero((out != feats).all(axis=0))
    assert changed_frames.size == 0 or changed_frames.max() < 100  # time masks only over speech frames
    changed_cols = (out != feats).any(axis=0)
    assert changed_cols.any()
    assert np.array_equal(feats, np.random.default_rng(0).standard_normal((80, 300)).astype(np.float32))  # input untouched


def test_augment_wave_is_seeded():
    augs = [NoiseAug(name="noise", prob=1.0, min_snr_db=5, max_snr_db=20),
            SpeedAug(name="speed", prob=0.5), TelephoneAug(name="telephone", prob=0.5),
            SpecAugmentAug(name="specaugment")]
    clean = speechlike()
    a = augment_wave(clean, augs, np.random.default_rng([7, 1, 0]), SR)
    b = augment_wave(clean, augs, np.random.default_rng([7, 1, 0]), SR)
    c = augment_wave(clean, augs, np.random.default_rng([7, 1, 1]), SR)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
