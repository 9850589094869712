"""HiFi-GAN's multi-period and multi-scale discriminator (as used by VITS), with a channel width
parameter so that tests can build a tiny one. Fresh for every fine-tuning run: Piper voices and
MMS checkpoints ship only the generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

SLOPE = 0.1


class PeriodDiscriminator(nn.Module):
    """Folds the waveform into (samples / period, period) and runs 2-D convs along time."""

    def __init__(self, period: int, width: int = 32) -> None:
        super().__init__()
        self.period = period
        chans = [1, width, width * 4, width * 16, width * 32, width * 32]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0)))
            for i in range(5))
        self.post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor):
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), "reflect")
        x = x.view(b, c, -1, self.period)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), SLOPE)
            feats.append(x)
        x = self.post(x)
        feats.append(x)
        return x.flatten(1), feats


class ScaleDiscriminator(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        spec = [(1, w, 15, 1, 1), (w, 4 * w, 41, 4, 4), (4 * w, 16 * w, 41, 4, 16), (16 * w, 64 * w, 41, 4, 64),
                (64 * w, 64 * w, 41, 4, 256), (64 * w, 64 * w, 5, 1, 1)]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv1d(i, o, k, s, groups=min(g, i), padding=k // 2)) for i, o, k, s, g in spec)
        self.post = weight_norm(nn.Conv1d(64 * w, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor):
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), SLOPE)
            feats.append(x)
        x = self.post(x)
        feats.append(x)
        return x.flatten(1), feats


class MultiPeriodDiscriminator(nn.Module):
    """One scale discriminator and one period discriminator per period (VITS: 2, 3, 5, 7, 11).
    ``width`` 32 / 16 gives VITS's sizes; tests use 2."""

    def __init__(self, periods=(2, 3, 5, 7, 11), width: int = 32) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            [ScaleDiscriminator(max(1, width // 2))] + [PeriodDiscriminator(p, width) for p in periods])

    def forward(self, wave: torch.Tensor):
        """wave (b, 1, t) -> (list of scores, list of feature lists), one per sub-discriminator."""
        scores, feats = [], []
        for d in self.discriminators:
            s, f = d(wave)
            scores.append(s)
            feats.append(f)
        return scores, feats
