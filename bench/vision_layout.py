"""Channels-last against channels-first, fp32 against bf16 autocast, on EfficientNet-Lite0's upper
blocks (blocks 4-6, conv_head, head: what the cached Fashion-MNIST recipe trains, fed 80x4x4 feature
maps as at 64 px input), forward + backward + fused AdamW per step, and the whole network's forward.

    .venv/bin/python bench/vision_layout.py            # about a minute on 2 CPU cores

Prints samples/s per configuration; only ratios within one run mean anything.
"""

from __future__ import annotations

import time

import timm
import torch


def upper_blocks() -> torch.nn.Module:
    m = timm.create_model("efficientnet_lite0", num_classes=10).train()
    return torch.nn.Sequential(*m.blocks[4:], m.conv_head, m.bn2, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               m.classifier)


def train_rate(channels_last: bool, precision: str, batch: int, steps: int = 10) -> float:
    top = upper_blocks()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    top = top.to(memory_format=fmt)
    opt = torch.optim.AdamW(top.parameters(), fused=True)
    x = torch.randn(batch, 80, 4, 4).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(top(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"bf16 path: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    for batch in (128, 256, 512):
        for precision in ("fp32", "bf16"):
            for cl in (False, True):
                rate = train_rate(cl, precision, batch)
                print(f"upper blocks train  batch {batch:>3} {precision} {'channels-last ' if cl else 'channels-first'}"
                      f"  {rate:7.0f} samples/s", flush=True)
    full = timm.create_model("efficientnet_lite0", num_classes=10).eval()
    x = torch.randn(256, 3, 64, 64)
    for cl in (False, True):
        model = full.to(memory_format=torch.channels_last) if cl else full
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x
        with torch.no_grad():
            model(xi)
            t = time.perf_counter()
            model(xi)
            model(xi)
        print(f"whole network forward, 64 px, batch 256, fp32 {'channels-last ' if cl else 'channels-first'}"
              f"  {512 / (time.perf_counter() - t):7.0f} images/s")


if __name__ == "__main__":
    main()
