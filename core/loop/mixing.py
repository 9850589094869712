"""Mixup and CutMix with label smoothing: generic batch mixing, no domain knowledge.

Both blend pairs of samples in a batch and blend their one-hot targets by the same share, so the
loss must take soft targets (:func:`soft_target_cross_entropy`). Inputs are any tensor whose first
dimension is the batch; CutMix needs at least two trailing spatial dimensions (images, spectrograms).
Randomness comes only from the ``generator`` argument, so a seeded generator reproduces the mix.

>>> g = torch.Generator().manual_seed(0)
>>> x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
>>> mixed, soft = mix_batch(x, y, num_classes=3, mixup_alpha=0.2, cutmix_alpha=1.0, prob=1.0,
...                         label_smoothing=0.1, generator=g)
>>> mixed.shape, soft.shape, bool(torch.allclose(soft.sum(-1), torch.ones(4)))
(torch.Size([4, 3, 8, 8]), torch.Size([4, 3]), True)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def smooth_one_hot(targets: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """Integer class ids -> soft targets: 1 - s + s/n on the true class, s/n elsewhere."""
    off = label_smoothing / num_classes
    soft = torch.full((targets.shape[0], num_classes), off, dtype=torch.float32, device=targets.device)
    soft.scatter_(1, targets.long().view(-1, 1), 1.0 - label_smoothing + off)
    return soft


def soft_target_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum(target * log_softmax(logits)); computed in fp32 for bf16 safety."""
    return torch.sum(-soft_targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    # torch's Beta distribution takes no generator, so draw a seed from ours and let numpy's
    # seeded Beta sampler use it: the draw stays a pure function of the generator's state.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None) -> tuple[int, int, int, int]:
    """A box covering about (1 - lam) of the area, centred uniformly, clipped to the image."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (1,), generator=generator).item())
    cx = int(torch.randint(0, width, (1,), generator=generator).item())
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    return y0, y1, x0, x1


def mix_batch(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    prob: float,
    label_smoothing: float,
    generator: torch.Generator | None,
    switch_prob: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with its reversed self (timm's batch mode); return (inputs, soft targets).

    With probability ``prob`` the batch is mixed; when both alphas are positive, CutMix is picked
    with ``switch_prob`` (0.5 as in timm and DeiT). A skipped batch still gets smoothed targets.
    The pairing partner is the batch flipped end to end, which needs no extra randomness and never
    pairs a sample with itself unless the batch size is odd (the middle sample, lam effectively 1).
    """
    soft = smooth_one_hot(targets, num_classes, label_smoothing)
    use_mix = (mixup_alpha > 0 or cutmix_alpha > 0) and inputs.shape[0] > 1
    if not use_mix or float(torch.rand(1, generator=generator)) >= prob:
        return inputs, soft
    use_cutmix = cutmix_alpha > 0 and (
        mixup_alpha <= 0 or float(torch.rand(1, generator=generator)) < switch_prob
    )
    lam = _beta(cutmix_alpha if use_cutmix else mixup_alpha, generator)
    flipped = inputs.flip(0)
    if use_cutmix:
        if inputs.dim() < 3:
            raise ValueError("CutMix needs inputs with two trailing spatial dimensions")
        h, w = inputs.shape[-2], inputs.shape[-1]
        y0, y1, x0, x1 = cutmix_box(h, w, lam, generator)
        mixed = inputs.clone()
        mixed[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
        # The clipped box may be smaller than asked: weight the targets by the real pasted area.
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        mixed = inputs * lam + flipped * (1.0 - lam)
    return mixed, soft * lam + soft.flip(0) * (1.0 - lam)
