"""Where one training step of MiniLM text classification spends its time (torch.profiler).

Builds the run exactly as ``omnitune train`` does (recipe -> task, datasets, model, strategy,
optimiser, Trainer), then profiles ``--steps`` optimiser steps of the real loop
(``Trainer._train_step``) after ``--warmup`` unprofiled ones, and prints:

- the share of each part of the step: loading + collating the batch, forward, backward, gradient
  normalisation and clipping, the optimiser update, zeroing the gradients, and the rest;
- host synchronisations per micro-batch (``aten::_local_scalar_dense``: ``float(tensor)``,
  ``.item()``, ``if tensor``), which stall a GPU's queue (on a CPU they cost little);
- the top operators by self CPU time, and what the matrix products and attention take;
- the settings that decide the hot path: torch threads, attention implementation (sdpa/eager),
  precision, the optimiser's implementation (for-loop, foreach or fused) and a side-by-side of the
  three AdamW implementations on this model's trainable parameters.

Only shares and ratios are meaningful on a shared machine; absolute milliseconds are printed for
reference. The trace (chrome://tracing / Perfetto) is written with ``--trace FILE``.

    python bench/profile_step.py                       # MiniLM-L6 on Rotten Tomatoes, batch 32, 10 steps
    python bench/profile_step.py --precision bf16 --steps 20 --trace /tmp/step.json
    python bench/profile_step.py --quick               # a tiny BERT built from a config: a smoke test
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

RECIPE = "text/minilm-rotten-tomatoes"
PARTS = ("data: load + collate", "forward", "backward", "optimizer.step", "zero_grad")


class _Timed:
    """The task, with collate and forward inside named profiler ranges."""

    def __init__(self, task) -> None:
        self._task = task

    def __getattr__(self, name):
        return getattr(self._task, name)

    def collate(self, samples):
        with record_function("data: load + collate"):
            return self._task.collate(samples)

    def forward(self, model, batch, train, **kw):
        with record_function("forward"):
            return self._task.forward(model, batch, train=train, **kw)


def build(recipe, overrides: dict, run_dir: Path):
    """The trainer ``omnitune train`` would build for the recipe (no run folder files but the log)."""
    from omnitune.core.api import as_recipe, build_task, build_trainer, seed_everything

    rec = as_recipe(recipe, overrides)
    if rec.train.threads:
        torch.set_num_threads(rec.train.threads)
    seed_everything(rec.seed)
    task = build_task(rec)
    bundle = task.build_datasets()
    seed_everything(rec.seed)
    model = task.build_model()
    trainer = build_trainer(rec, task, model, bundle, run_dir)
    trainer.task = _Timed(task)
    backward = trainer.accelerator.backward

    def timed_backward(loss, **kw):
        with record_function("backward"):
            return backward(loss, **kw)

    trainer.accelerator.backward = timed_backward
    return rec, trainer, model


def steps(trainer, n: int, start: int = 0):
    """Run n optimiser steps of epoch 0 through the trainer's own step (no hooks, no evaluation)."""
    batches = trainer._batches(0)
    accum = trainer.cfg.grad_accum
    groups = [batches[i:i + accum] for i in range(0, len(batches), accum)][start:start + n]
    loader = iter(trainer._loader([b for g in groups for b in g], 0))
    trainer._train_mode()
    for group in groups:
        trainer._train_step(group, loader)
    return sum(len(g) for g in groups)


def breakdown(prof, n_steps: int, n_micro: int, wall: float) -> None:
    events = prof.events()
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        name = e.name
        key = next((p for p in PARTS if name == p or name.startswith(f"Optimizer.{p.split('.')[-1]}#")
                    or (p == "optimizer.step" and name.startswith("Optimizer.step#"))
                    or (p == "zero_grad" and name.startswith("Optimizer.zero_grad#"))), None)
        if key:
            totals[key] += e.cpu_time_total / 1e3
    # The data range is entered inside DataLoader iteration; forward holds the loss.
    known = sum(totals.values())
    step_ms = wall * 1e3 / n_steps
    print(f"\nper optimiser step ({n_steps} steps, {n_micro} micro-batches, wall {step_ms:.1f} ms/step):")
    print(f"  {'part':<34}{'ms/step':>10}{'share':>9}")
    for part in PARTS:
        ms = totals.get(part, 0.0) / n_steps
        print(f"  {part:<34}{ms:>10.1f}{ms / step_ms:>9.1%}")
    rest = step_ms - known / n_steps
    print(f"  {'rest (grad scale, clip, syncs, loop)':<34}{rest:>10.1f}{rest / step_ms:>9.1%}")

    ops = prof.key_averages()
    by_name = {o.key: o for o in ops}
    syncs = by_name.get("aten::_local_scalar_dense")
    print(f"\nhost syncs: {syncs.count / n_micro if syncs else 0:.1f} per micro-batch "
          f"({(syncs.cpu_time_total / 1e3 / n_steps) if syncs else 0:.2f} ms/step on this device)")
    for frames, count in sync_sites(prof):
        print(f"  {count / n_steps:6.1f}/step  {frames}")
    groups = {"matmul (mm/addmm/bmm/linear)": ("aten::mm", "aten::addmm", "aten::bmm"),
              "attention (sdpa kernels)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                                           "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
                                           "aten::_scaled_dot_product_efficient_attention",
                                           "aten::_scaled_dot_product_attention_math"),
              "softmax / layer norm / gelu": ("aten::_softmax", "aten::native_layer_norm", "aten::gelu",
                                              "aten::native_layer_norm_backward", "aten::gelu_backward",
                                              "aten::_softmax_backward_data"),
              "optimizer kernels (adamw)": ("aten::_fused_adamw_", "aten::_foreach_mul_", "aten::_foreach_add_",
                                            "aten::_foreach_addcmul_", "aten::_foreach_lerp_", "aten::lerp_",
                                            "aten::addcmul_", "aten::addcdiv_", "aten::_foreach_addcdiv_",
                                            "aten::sqrt", "aten::_foreach_sqrt")}
    total_self = sum(o.self_cpu_time_total for o in ops) / 1e3 / n_steps
    print(f"\nself CPU time by kind (of {total_self:.1f} ms/step of operator self time):")
    for label, names in groups.items():
        ms = sum(by_name[n].self_cpu_time_total for n in names if n in by_name) / 1e3 / n_steps
        print(f"  {label:<34}{ms:>10.1f}{ms / max(total_self, 1e-9):>9.1%}")
    print("\ntop operators by self CPU time:")
    print(ops.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


def sync_sites(prof) -> list[tuple[str, int]]:
    """Where the host syncs happen: the named range around each (forward, backward, the optimiser's
    step, ...); outside all of them is the loop itself (float(loss), float(num_items), isfinite)."""
    sites: dict[str, int] = defaultdict(int)
    for e in prof.events():
        if e.name != "aten::_local_scalar_dense":
            continue
        parent, site = e.cpu_parent, "the trainer loop (float(loss), float(num_items), isfinite, totals)"
        while parent is not None:
            if parent.name in PARTS or parent.name.startswith("Optimizer."):
                site = parent.name
                break
            parent = parent.cpu_parent
        sites[site] += 1
    return sorted(sites.items(), key=lambda kv: -kv[1])


def optimizer_variants(model, lr: float, repeats: int) -> None:
    """ms per AdamW update of the trainable parameters: for-loop, foreach, fused."""
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"\nAdamW update of {sum(p.numel() for p in params) / 1e6:.1f}M trainable parameters:")
    base = None
    for label, kw in (("for-loop (foreach=False)", {"foreach": False}), ("foreach", {"foreach": True}),
                      ("fused", {"fused": True})):
        copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for c in copies:
            c.grad = torch.randn_like(c)
        try:
            opt = torch.optim.AdamW(copies, lr=lr, **kw)
        except (RuntimeError, ValueError) as exc:
            print(f"  {label:<28} unavailable ({exc})")
            continue
        opt.step()
        t = time.perf_counter()
        for _ in range(repeats):
            opt.step()
        ms = (time.perf_counter() - t) * 1e3 / repeats
        base = base or ms
        print(f"  {label:<28}{ms:>8.2f} ms{base / ms:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--trace", type=Path, default=None, help="write a Chrome/Perfetto trace here")
    parser.add_argument("--quick", action="store_true", help="a tiny BERT and generated reviews: a smoke test")
    args = parser.parse_args()
    from text_vs_hf_trainer import machine_info, matmul_peak

    work = Path(tempfile.mkdtemp(prefix="omnitune-profile-"))
    overrides = {"train.batch_size": args.batch_size, "train.precision": args.precision,
                 "train.save_checkpoints": False, "output.dir": str(work / "runs")}
    if args.threads:
        overrides["train.threads"] = args.threads
    recipe = args.recipe
    if args.quick:
        from omnitune.core.base.recipe import validate_recipe
        from omnitune.core.base.registry import FIXTURES

        raw = FIXTURES.get("text-classification").tiny_recipe(work)  # the fixture in text/testing.py
        recipe = validate_recipe(raw, where="tiny text-classification")
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
    rec, trainer, model = build(recipe, overrides, work / "run")
    machine = machine_info()
    peak = matmul_peak(torch.float32, torch.get_num_threads(), n=512 if args.quick else 2048)
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    impl = "fused" if opt.defaults.get("fused") else "foreach" if opt.defaults.get("foreach") else \
        "default (for-loop on CPU)"
    print(f"machine: {machine['cpu_model']} | {machine['usable_cpus']} usable CPUs | bf16 path: "
          f"{machine['mkldnn_bf16_supported']} | fp32 matmul peak {peak:.0f} GFLOP/s | torch {machine['torch']}")
    print(f"recipe: {rec.name} | batch {rec.train.batch_size} | precision {trainer.precision} | threads "
          f"{torch.get_num_threads()} (interop {torch.get_num_interop_threads()}) | attention "
          f"{getattr(getattr(model, 'config', None), '_attn_implementation', '?')} | optimizer "
          f"{type(opt).__name__} {impl} | group_by_length {rec.train.group_by_length}")

    steps(trainer, args.warmup)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        t = time.perf_counter()
        n_micro = steps(trainer, args.steps, start=args.warmup)
        wall = time.perf_counter() - t
    breakdown(prof, args.steps, n_micro, wall)
    optimizer_variants(model, rec.train.lr, repeats=3 if args.quick else 10)
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
        print(f"trace: {args.trace}")


if __name__ == "__main__":
    main()
