"""VITS training pieces: spectrograms, monotonic alignment search and the losses (mel
reconstruction, KL, duration, adversarial, feature matching), as in the VITS paper (Kim et al.
2021) and HiFi-GAN, written on transformers' ``VitsModel`` submodules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# ------------------------------------------------------------------------------------ spectrograms
def linear_spectrogram(wave: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Magnitude STFT (batch, n_fft // 2 + 1, frames) framed like VITS (reflect pad, no centring):
    ``frames = samples // hop``."""
    pad = (n_fft - hop) // 2
    x = F.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=n_fft, window=torch.hann_window(n_fft, device=x.device),
                      center=False, return_complex=True)
    return torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-6)


_FBANKS: dict = {}


def mel_from_linear(spec: torch.Tensor, sampling_rate: int, n_mels: int = 80) -> torch.Tensor:
    """Log mel spectrogram (natural log of the magnitude, floored at 1e-5) from a linear one."""
    import torchaudio

    n_freqs = spec.shape[1]
    key = (n_freqs, sampling_rate, n_mels, spec.device)
    if key not in _FBANKS:
        _FBANKS[key] = torchaudio.functional.melscale_fbanks(
            n_freqs, 0.0, sampling_rate / 2, n_mels, sampling_rate, norm="slaney", mel_scale="slaney").to(spec.device)
    mel = torch.einsum("bft,fm->bmt", spec, _FBANKS[key])
    return torch.log(torch.clamp(mel, min=1e-5))


def mel_spectrogram(wave: torch.Tensor, sampling_rate: int, n_fft: int, hop: int, n_mels: int = 80) -> torch.Tensor:
    return mel_from_linear(linear_spectrogram(wave, n_fft, hop), sampling_rate, n_mels)


# ------------------------------------------------------------------------------------ alignment
@torch.no_grad()
def monotonic_alignment(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The monotonic alignment of highest total score (VITS's "MAS").

    ``scores``: (batch, frames, tokens) log-likelihood of frame t under token x; ``mask``: (batch,
    frames, tokens) valid pairs. Returns a 0/1 path of the same shape: every frame is assigned one
    token, tokens in order, each token at least one frame, starting at (0, 0) and ending at the last
    valid (frame, token). Dynamic programming over frames, vectorised over batch and tokens.
    """
    b, t_y, t_x = scores.shape
    neg = torch.tensor(-1e9, dtype=scores.dtype, device=scores.device)
    value = torch.where(mask.bool(), scores, neg)
    acc = torch.full((b, t_y, t_x), -1e9, dtype=scores.dtype, device=scores.device)
    acc[:, 0, 0] = value[:, 0, 0]
    x_idx = torch.arange(t_x, device=scores.device)
    for y in range(1, t_y):
        stay = acc[:, y - 1]
        move = F.pad(acc[:, y - 1, :-1], (1, 0), value=-1e9)
        best = torch.maximum(stay, move) + value[:, y]
        best = torch.where(x_idx[None] <= y, best, neg)  # token x needs at least x + 1 frames before it
        acc[:, y] = best
    frames = mask[:, :, 0].sum(1).long()
    tokens = mask[:, 0, :].sum(1).long()
    path = torch.zeros_like(scores)
    for i in range(b):
        x = int(tokens[i]) - 1
        for y in range(int(frames[i]) - 1, -1, -1):
            path[i, y, x] = 1
            if y > 0 and x > 0 and (x == y or acc[i, y - 1, x - 1] > acc[i, y - 1, x]):
                x -= 1
    return path


def alignment_scores(z_p: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor) -> torch.Tensor:
    """log N(z_p[t] | m_p[x], exp(logs_p[x])) summed over channels: (batch, frames, tokens).
    z_p: (b, c, t_y); m_p, logs_p: (b, c, t_x)."""
    s_p_sq_r = torch.exp(-2 * logs_p)
    neg1 = torch.sum(-0.5 * math.log(2 * math.pi) - logs_p, [1], keepdim=True)  # (b, 1, t_x)
    neg2 = torch.matmul(-0.5 * (z_p ** 2).transpose(1, 2), s_p_sq_r)
    neg3 = torch.matmul(z_p.transpose(1, 2), m_p * s_p_sq_r)
    neg4 = torch.sum(-0.5 * (m_p ** 2) * s_p_sq_r, [1], keepdim=True)
    return neg1 + neg2 + neg3 + neg4


# ------------------------------------------------------------------------------------ losses
def kl_loss(z_p, logs_q, m_p, logs_p, z_mask) -> torch.Tensor:
    """Summed KL(q(z|x) || p(z|c)) over valid frames and channels (VITS eq. 3's sampled form)."""
    kl = logs_p - logs_q - 0.5 + 0.5 * ((z_p - m_p) ** 2) * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask)


def discriminator_loss(real_outputs, fake_outputs) -> torch.Tensor:
    """LSGAN: sum over sub-discriminators of mean (1 - D(real))^2 + mean D(fake)^2."""
    loss = 0.0
    for dr, dg in zip(real_outputs, fake_outputs):
        loss = loss + torch.mean((1 - dr) ** 2) + torch.mean(dg ** 2)
    return loss


def generator_adversarial_loss(fake_outputs) -> torch.Tensor:
    return sum(torch.mean((1 - dg) ** 2) for dg in fake_outputs)


def feature_matching_loss(real_features, fake_features) -> torch.Tensor:
    loss = 0.0
    for fr, fg in zip(real_features, fake_features):
        for r, g in zip(fr, fg):
            loss = loss + torch.mean(torch.abs(r.detach() - g))
    return loss * 2


def random_segments(x: torch.Tensor, lengths: torch.Tensor, size: int, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``size`` frames from each item of x (b, c, t) within its length; returns
    the windows and their start frames."""
    b = x.shape[0]
    max_start = torch.clamp(lengths - size, min=0)
    starts = (torch.rand(b, generator=generator, device=x.device) * (max_start + 1).float()).long()
    starts = torch.minimum(starts, max_start)
    if x.shape[-1] < size:
        x = F.pad(x, (0, size - x.shape[-1]))
    return torch.stack([x[i, :, int(s):int(s) + size] for i, s in enumerate(starts)]), starts


def slice_segments(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] < int(starts.max()) + size:
        x = F.pad(x, (0, int(starts.max()) + size - x.shape[-1]))
    return torch.stack([x[i, :, int(s):int(s) + size] for i, s in enumerate(starts)])
