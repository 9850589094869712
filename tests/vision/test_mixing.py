"""core/loop/mixing.py: Mixup/CutMix targets agree with what was pasted, and a seed reproduces them."""

from __future__ import annotations

import torch

from omnitune.core.loop.mixing import mix_batch, smooth_one_hot, soft_target_cross_entropy


def constant_images(values: list[float], size: int = 16) -> torch.Tensor:
    # Each image is one constant value, so the share of a mixed image from its partner is readable.
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()


def test_label_smoothing_targets():
    soft = smooth_one_hot(torch.tensor([2, 0]), num_classes=4, label_smoothing=0.2)
    torch.testing.assert_close(soft, torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]]))


def test_cutmix_target_weights_match_the_pasted_area():
    x, y = constant_images([0.0, 1.0]), torch.tensor([0, 1])
    for seed in range(10):
        mixed, soft = mix_batch(x, y, num_classes=2, mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0,
                                label_smoothing=0.0, generator=torch.Generator().manual_seed(seed))
        share_from_partner = mixed[0].mean().item()  # image 0 is zeros, its partner (image 1) ones
        torch.testing.assert_close(soft[0], torch.tensor([1 - share_from_partner, share_from_partner]))
        torch.testing.assert_close(soft.sum(-1), torch.ones(2))


def test_mixup_blends_inputs_and_targets_by_the_same_share():
    x, y = constant_images([0.0, 1.0]), torch.tensor([0, 1])
    mixed, soft = mix_batch(x, y, num_classes=2, mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0,
                            label_smoothing=0.0, generator=torch.Generator().manual_seed(3))
    assert torch.all(mixed[0] == mixed[0, 0, 0, 0])  # mixup blends the whole image uniformly
    lam = 1 - mixed[0, 0, 0, 0].item()  # image 0 = lam * zeros + (1 - lam) * ones
    assert 0 < lam < 1
    torch.testing.assert_close(soft, torch.tensor([[lam, 1 - lam], [1 - lam, lam]]))
    torch.testing.assert_close(mixed[1, 0, 0, 0].item(), lam)


def test_same_generator_seed_same_mix_and_prob_zero_is_identity():
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])

    def run(seed, prob=1.0):
        return mix_batch(x, y, num_classes=4, mixup_alpha=0.2, cutmix_alpha=1.0, prob=prob,
                         label_smoothing=0.1, generator=torch.Generator().manual_seed(seed))

    a, b = run(0), run(0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert any(not torch.equal(a[1], run(s)[1]) for s in range(1, 6))
    same, soft = run(0, prob=0.0)
    assert torch.equal(same, x)
    torch.testing.assert_close(soft, smooth_one_hot(y, 4, 0.1))


def test_soft_cross_entropy_equals_hard_cross_entropy_on_one_hot_targets():
    logits, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    expected = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    torch.testing.assert_close(soft_target_cross_entropy(logits, smooth_one_hot(y, 4, 0.1)), expected)
