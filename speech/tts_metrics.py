"""How close synthesised speech is to a target voice, and how intelligible it is.

- :func:`mcd_dtw`: mel-cepstral distortion (dB) between two utterances after dynamic time warping:
  ``10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)`` averaged over the aligned frames, on cepstra
  c_1..c_D (c_0, the energy, left out) of a log mel spectrogram (a DCT of it, as MFCCs are; not
  SPTK's mel-generalised cepstrum, so values are comparable with each other, not with papers).
- :func:`f0_track` / :func:`f0_distance`: voiced F0 by normalised autocorrelation; the distance of
  two F0 distributions is the 1-D Wasserstein distance of their log-F0 in semitones, plus the
  difference of the medians.
- :class:`Transcriber`: Whisper (``asset:whisper-tiny.en``) transcripts of waveforms, for WER.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from omnitune.core.base.metrics import define_metric


# The text-to-speech task's own metrics (its metric_definitions), computed from its per-utterance
# predictions ({"mel_l1", "kl", "dur"}); lower is better, which picks the best checkpoint.
@define_metric("mel_l1", "min", "omnitune", "mean L1 distance of log-mel spectrograms, synthesised (posterior "
               "path) vs real, over held-out utterances")
def MEL_L1(predictions, references=None):
    return float(np.mean([p["mel_l1"] for p in predictions]))


@define_metric("log_duration_mse", "min", "omnitune", "mean squared error of the predicted log phoneme durations "
               "against the aligned ones, over held-out utterances")
def LOG_DURATION_MSE(predictions, references=None):
    return float(np.mean([p["dur"] for p in predictions]))


def cepstra(wave: np.ndarray, sr: int, n_mfcc: int = 25, n_mels: int = 40) -> np.ndarray:
    """(frames, n_mfcc - 1) cepstra c_1..c_{n-1} of a 25 ms / 5 ms log mel spectrogram."""
    import torchaudio

    mfcc = torchaudio.transforms.MFCC(
        sample_rate=sr, n_mfcc=n_mfcc, log_mels=True,
        melkwargs={"n_fft": int(0.025 * sr), "hop_length": int(0.005 * sr), "n_mels": n_mels, "f_max": min(sr / 2, 4000), "power": 1.0})
    return mfcc(torch.from_numpy(np.asarray(wave, dtype=np.float32)))[1:].T.numpy()


def dtw_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """The minimum-cost monotonic alignment of a (n, m) cost matrix (steps (1,0), (0,1), (1,1))."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        prev, c = acc[i - 1], cost[i - 1]
        diag_up = np.minimum(prev[:-1], prev[1:]) + c  # from (i-1, j-1) or (i-1, j)
        # From the left too: row[j] = min(diag_up[j-1], row[j-1] + c[j-1]) unrolls to
        # P[j] + min_{k<=j}(diag_up[k-1] - P[k]) with P the running sum of c, one vector scan per row.
        p = np.concatenate([[0.0], np.cumsum(c)])
        acc[i, 1:] = p[1:] + np.minimum.accumulate(diag_up - p[1:])
    i, j, path = n, m, []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        k = int(np.argmin([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]]))
        i, j = (i - 1, j - 1) if k == 0 else (i - 1, j) if k == 1 else (i, j - 1)
    return path[::-1]


def mcd_dtw(synth: np.ndarray, ref: np.ndarray, sr: int) -> float:
    a, b = cepstra(synth, sr), cepstra(ref, sr)
    diff = a[:, None, :] - b[None, :, :]
    dist = np.sqrt(2.0 * np.sum(diff ** 2, axis=-1))
    path = dtw_path(dist)
    return float(10.0 / math.log(10) * np.mean([dist[i, j] for i, j in path]))


def f0_track(wave: np.ndarray, sr: int, fmin: float = 60.0, fmax: float = 400.0, threshold: float = 0.5) -> np.ndarray:
    """F0 (Hz) of the voiced 40 ms frames (10 ms hop): the lag of the first normalised
    autocorrelation peak in [1/fmax, 1/fmin] within 5% of the highest, kept when it exceeds
    ``threshold`` and the frame is not quiet."""
    wave = np.asarray(wave, dtype=np.float64)
    win, hop = int(0.04 * sr), int(0.01 * sr)
    lo, hi = int(sr / fmax), int(sr / fmin)
    peak = np.abs(wave).max() + 1e-9
    out = []
    for start in range(0, len(wave) - win - hi, hop):
        frame = wave[start:start + win + hi]
        x = frame[:win] - frame[:win].mean()
        if np.sqrt(np.mean(x ** 2)) < 0.03 * peak:
            continue
        # Every lag at once. x has zero mean, so a window's mean drops out of its dot product with x;
        # the windows' mean-removed norms come from running sums.
        seg = frame[lo:]
        dots = np.correlate(seg, x, mode="valid")[: hi - lo + 1]
        c1 = np.concatenate([[0.0], np.cumsum(seg)])
        c2 = np.concatenate([[0.0], np.cumsum(seg ** 2)])
        sums, squares = (c1[win:] - c1[:-win])[: hi - lo + 1], (c2[win:] - c2[:-win])[: hi - lo + 1]
        norms = np.sqrt(np.maximum(squares - sums ** 2 / win, 0.0))
        r = dots / (np.linalg.norm(x) * norms + 1e-12)
        # The first peak within 5% of the highest: a periodic voice also peaks at 2, 3.. periods, as
        # high (an octave low) give or take rounding.
        peaks = np.flatnonzero((r[1:-1] >= r[:-2]) & (r[1:-1] >= r[2:])) + 1
        near_top = peaks[r[peaks] >= 0.95 * r.max()]
        k = int(near_top[0]) if len(near_top) else int(np.argmax(r))
        if r[k] > threshold:
            out.append(sr / (lo + k))
    return np.array(out)


def f0_distance(a_hz: np.ndarray, b_hz: np.ndarray) -> dict[str, float]:
    """Wasserstein distance of log-F0 distributions (semitones) and the difference of medians."""
    from scipy.stats import wasserstein_distance

    if len(a_hz) == 0 or len(b_hz) == 0:
        return {"f0_wasserstein_st": float("nan"), "f0_median_diff_st": float("nan")}
    sa, sb = 12 * np.log2(a_hz / 100.0), 12 * np.log2(b_hz / 100.0)
    return {"f0_wasserstein_st": float(wasserstein_distance(sa, sb)),
            "f0_median_diff_st": float(np.median(sa) - np.median(sb))}


class Transcriber:
    """Whisper transcripts of waveforms (any sample rate), greedy, English."""

    def __init__(self, model: str = "asset:whisper-tiny.en") -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from omnitune.core.base.assets import resolve

        path = resolve(model)
        self.processor = WhisperProcessor.from_pretrained(path)
        self.model = WhisperForConditionalGeneration.from_pretrained(path).eval()

    @torch.no_grad()
    def __call__(self, waves: list[np.ndarray], sr: int) -> list[str]:
        from .audio import resample

        audio = [resample(np.asarray(w, dtype=np.float32), sr, 16000) for w in waves]
        feats = self.processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        # 96 new tokens cover a sentence; a small test model may have fewer decoder positions.
        room = self.model.config.max_target_positions - 8
        ids = self.model.generate(feats, max_new_tokens=min(96, room))
        return [t.strip() for t in self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]
