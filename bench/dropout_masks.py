"""Dropout mask sampling on a CPU: nn.Dropout against cheaper masks that keep exact resume.

A profile of a MiniLM training step showed ``bernoulli_`` (dropout masks) at about 8% of the step
(issue 23, item 4). Every alternative here draws from torch's own generator, so a seed and a saved
RNG state still give the same masks (exact resume):

  nn.Dropout      ``bernoulli_`` on a float tensor, divided by 1-p, multiplied (torch's CPU path)
  rand_ge_p       ``torch.rand_like(x) >= p``: one float draw per element, same p
  bytes_8_per_64  full-range int64 draws viewed as bytes, kept where byte >= round(256 p): 8 masks
                  per 64-bit draw; p quantised to 1/256 (0.1 -> 26/256 = 0.1016)
  int16_4_per_64  the same viewed as int16: p quantised to 1/65536 (0.1 -> 6554/65536 = 0.100006)

Part 1 times mask + apply (forward and backward) on one (32, 64, 384) activation; part 2 times the
whole fwd+bwd step of a MiniLM-sized BERT built from its config (6 layers, hidden 384, 12 heads,
intermediate 1536, batch 32, seq 64) with its nn.Dropout modules swapped, under sdpa attention
(transformers' default: the attention-probability dropout stays inside scaled_dot_product_attention,
only the hidden dropouts swap; one more variant also draws the attention-probability mask as bytes in
an eager attention function) and eager attention (its attention dropout is F.dropout: hidden only). Steps
alternate between variants in rounds and medians are reported, in process CPU time and wall time:
on a shared machine the CPU time with ``--threads 1`` is the steadier measure, and only ratios within
one run mean anything.

    python bench/dropout_masks.py --threads 1 --rounds 3 --steps 1   # about two minutes on a busy 2-core machine
    python bench/dropout_masks.py --threads 2 --attn sdpa
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _full_range_bytes(n_bytes: int, device, generator=None) -> torch.Tensor:
    words = torch.empty((n_bytes + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)  # every one of the 64 bits random
    return words


def mask_bernoulli(x: torch.Tensor, p: float) -> torch.Tensor:
    return torch.empty_like(x).bernoulli_(1 - p).bool()


def mask_rand(x: torch.Tensor, p: float) -> torch.Tensor:
    return torch.rand_like(x) >= p


def mask_bytes(x: torch.Tensor, p: float) -> torch.Tensor:
    words = _full_range_bytes(x.numel(), x.device)
    return (words.view(torch.uint8)[:x.numel()] >= round(256 * p)).view(x.shape)


def mask_int16(x: torch.Tensor, p: float) -> torch.Tensor:
    words = _full_range_bytes(2 * x.numel(), x.device)
    return (words.view(torch.int16)[:x.numel()] >= -32768 + round(65536 * p)).view(x.shape)


MASKS = {"rand_ge_p": mask_rand, "bytes_8_per_64": mask_bytes, "int16_4_per_64": mask_int16}


class MaskDropout(nn.Dropout):
    """nn.Dropout with the mask drawn by ``fn`` (kept elements scaled by 1/(1-p))."""

    def __init__(self, p: float, fn) -> None:
        super().__init__(p)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        # A float mask holding 0 or 1/(1-p), as nn.Dropout's: saved for backward, one multiply each way
        # (torch.where or a bool mask times x cost more in the backward pass).
        return x * self.fn(x, self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))


def _time(fn, reps: int) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) per call. On a busy machine the CPU time is the steadier
    measure of the work (with 1 thread; OpenMP's spin-waiting inflates it with more)."""
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.process_time() - c0) / reps, (time.perf_counter() - t0) / reps


def micro(rounds: int, reps: int, p: float) -> dict:
    x = torch.randn(32, 64, 384, requires_grad=True)
    variants = {"nn.Dropout": nn.Dropout(p), **{k: MaskDropout(p, f) for k, f in MASKS.items()}}
    g = torch.randn_like(x)
    times: dict[str, dict[str, list[tuple[float, float]]]] = {k: {"mask_only": [], "fwd_bwd": []} for k in variants}
    for _ in range(rounds):
        for name, mod in variants.items():
            if name == "nn.Dropout":
                times[name]["mask_only"].append(_time(lambda: mask_bernoulli(x, p), reps))
            else:
                times[name]["mask_only"].append(_time(lambda f=mod.fn: f(x, p), reps))

            def fb(m=mod):
                y = m(x)
                y.backward(g)
                x.grad = None
            times[name]["fwd_bwd"].append(_time(fb, reps))
    return {k: {f"{kind}_{clock}_us": round(statistics.median(t[c] for t in v) * 1e6, 1)
                for kind, v in d.items() for c, clock in enumerate(("cpu", "wall"))} for k, d in times.items()}


def fast_eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' BERT eager attention with the attention-probability dropout drawn as bytes."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = weights.softmax(-1)
    if module.training and dropout > 0:
        weights = weights * mask_bytes(weights, dropout).to(weights.dtype).mul_(1.0 / (1.0 - dropout))
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def minilm(dropout_fn, attn: str) -> nn.Module:
    from transformers import AttentionInterface, BertConfig, BertForSequenceClassification

    AttentionInterface.register("fast_dropout_eager", fast_eager_attention)

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, num_labels=2,
                     attn_implementation=attn)
    model = BertForSequenceClassification(cfg).train()
    if dropout_fn is not None:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout:
                    setattr(parent, name, MaskDropout(child.p, dropout_fn))
    return model


def step_times(rounds: int, steps: int, batch: int, seq: int, attn: str) -> dict:
    torch.manual_seed(1)
    ids = torch.randint(1000, 30000, (batch, seq))
    labels = torch.randint(0, 2, (batch,))
    models = {"nn.Dropout": minilm(None, attn), **{k: minilm(f, attn) for k, f in MASKS.items()},
              "no_dropout (bound)": minilm(None, attn).eval()}
    if attn == "sdpa":  # the attention-probability dropout too: sdpa cannot take a mask, so eager math
        models["bytes_8_per_64 + attention probs (eager)"] = minilm(mask_bytes, "fast_dropout_eager")
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in models}

    def step(m):
        out = m(input_ids=ids, labels=labels)
        out.loss.backward()
        m.zero_grad(set_to_none=True)

    for m in models.values():
        step(m)  # warm-up
    for _ in range(rounds):
        for name, m in models.items():
            times[name].append(_time(lambda: step(m), steps))
    out = {}
    for c, clock in enumerate(("cpu", "wall")):
        base = statistics.median(t[c] for t in times["nn.Dropout"])
        for k, v in times.items():
            med = statistics.median(t[c] for t in v)
            out.setdefault(k, {}).update({f"{clock}_ms": round(med * 1e3, 1), f"{clock}_vs_nn_dropout": round(med / base, 3),
                                          f"{clock}_all_ms": [round(t[c] * 1e3, 1) for t in v]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", nargs="+", default=["sdpa", "eager"], help="attention implementations for the step")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20, help="micro: calls per timing")
    ap.add_argument("--steps", type=int, default=3, help="step: train steps per timing")
    ap.add_argument("--p", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__, "p": args.p,
           "effective_p": {"nn.Dropout": args.p, "rand_ge_p": args.p, "bytes_8_per_64": round(256 * args.p) / 256,
                           "int16_4_per_64": round(65536 * args.p) / 65536},
           "note": "shared machine: medians over interleaved rounds; compare ratios only"}
    out["micro_us_32x64x384"] = micro(args.rounds, args.reps, args.p)
    print(json.dumps(out["micro_us_32x64x384"], indent=1), flush=True)
    for attn in args.attn:
        key = f"minilm_step_b32_s64_{attn}"
        out[key] = step_times(args.rounds, args.steps, 32, 64, attn)
        print(key, json.dumps({k: {m: x for m, x in v.items() if not m.endswith("_all_ms")} for k, v in out[key].items()}, indent=1),
              flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"dropout_masks_t{args.threads}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"cpu: {out['cpu']} | results: {path}")


if __name__ == "__main__":
    main()
