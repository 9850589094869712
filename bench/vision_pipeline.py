"""Input pipeline vs training step, in one run, for a vision recipe (a benchmark, not a test).

Measures, on the recipe's own data, model, strategy and workers:
1. pipeline images/s: decode + augment + collate through a DataLoader with the recipe's
   ``train.num_workers`` (what the trainer builds), no model involved;
2. training step images/s on pre-collated batches (forward, backward, optimiser step), in fp32
   and in bf16 autocast, with the recipe's frozen groups, and the share of the CPU's measured
   matmul peak those steps reach (useful FLOPs = 3x the forward's, counted by torch);
3. the ratio pipeline / step (target >= 3: the step, not the data, should bound training).

    .venv/bin/python bench/vision_pipeline.py                     # the shipped full fine-tuning recipe
    .venv/bin/python bench/vision_pipeline.py --recipe vision/effnet-lite0-fmnist-linear --steps 6
    .venv/bin/python bench/vision_pipeline.py train.num_workers=2 model.image_size=96
    .venv/bin/python bench/vision_pipeline.py --recipe vision/resnet50-imagefolder --photo-folder 400 \
        model.pretrained=false        # JPEG decoding at photo size; random weights (offline)

Prints a table and writes bench/results/vision_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from omnitune.core.api import as_recipe, build_task, seed_everything
from omnitune.core.loop.strategies import apply_trainable, frozen_parameter_ids
from omnitune.core.loop.trainer import mean_loss


def make_photo_folder(root: Path, count: int, seed: int = 0) -> Path:
    """Photo-sized JPEGs (random 400-640 px crops of scikit-learn's two sample photos) in 4
    class folders: realistic decode cost for the user-data recipe, offline."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    photos = [load_sample_image(n) for n in ("china.jpg", "flower.jpg")]  # 427 x 640 each
    for i in range(count):
        photo = photos[i % 2]
        h, w = int(rng.integers(300, 427)), int(rng.integers(400, 640))
        y, x = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[y:y + h, x:x + w]).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def pipeline_rate(dataset, collate, batch_size: int, workers: int, batches: int) -> float:
    """Images/s out of a DataLoader like the trainer's (after a warm-up batch: worker start-up)."""
    # With replacement: the timed batches never run out, however small the dataset.
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=(batches + 1) * batch_size,
                                             generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=workers,
                        drop_last=True)
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)["labels"])
    return n / (time.perf_counter() - start)


def matmul_peak(dtype: torch.dtype, size: int = 1024, reps: int = 5) -> float:
    """Measured GEMM FLOP/s for the dtype on this machine now (the efficiency denominator)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - start)


def forward_flops(model, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch["pixel_values"])
    return counter.get_total_flops()


def step_rates(task, model, batches: list[dict]) -> dict[str, float]:
    """Images/s of forward + backward + AdamW step in fp32 and in bf16 autocast.

    The two precisions alternate step by step (order flipped every step), so a change in the
    load of a shared machine hits both alike instead of biasing whichever ran second.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def one(batch, precision: str) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = mean_loss(task.forward(model, batch, train=True))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    one(batches[0], "fp32")  # warm-up: first-call allocations and kernel selection
    one(batches[0], "bf16")
    seconds = {"fp32": 0.0, "bf16": 0.0}
    for k, batch in enumerate(batches[1:]):
        for precision in (("fp32", "bf16") if k % 2 == 0 else ("bf16", "fp32")):
            seconds[precision] += one(batch, precision)
    images = sum(len(b["labels"]) for b in batches[1:])
    return {p: images / t for p, t in seconds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="vision/effnet-lite0-fmnist-full")
    ap.add_argument("--batches", type=int, default=30, help="pipeline batches to time")
    ap.add_argument("--steps", type=int, default=4, help="training steps to time per precision")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--out", default="bench/results/vision_pipeline.json")
    ap.add_argument("--photo-folder", type=int, default=0, metavar="N",
                    help="use N generated photo-sized JPEGs as data.source (for the ImageFolder recipe)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. model.image_size=96")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = list(args.overrides)
    if args.photo_folder:
        import atexit
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="omnitune-bench-"))
        atexit.register(shutil.rmtree, tmp, True)
        overrides.append(f"data.source={make_photo_folder(tmp / 'photos', args.photo_folder)}")
    recipe = as_recipe(args.recipe, overrides)
    seed_everything(recipe.seed)
    task = build_task(recipe)
    bundle = task.build_datasets()
    bs, workers = recipe.train.batch_size, recipe.train.num_workers
    pipe = pipeline_rate(bundle.train, task.collate, bs, workers, args.batches)

    model = task.build_model()
    groups = task.layer_groups(model)
    ft = recipe.finetune
    strategy = "feature_extraction" if ft.strategy == "gradual" else ft.strategy  # gradual starts as a probe
    apply_trainable(model, frozen_parameter_ids(model, groups, strategy, ft.freeze, ft.freeze_layers))
    torch.manual_seed(0)
    n = len(bundle.train)
    batches = [task.collate([bundle.train[(k * bs + i) % n] for i in range(bs)]) for k in range(args.steps + 1)]
    # Useful FLOPs per image: forward + backward (2x forward) when the backbone trains; a linear
    # probe's backward stops at the head, so about 1x. Partial freezing lies between (3x: an upper bound).
    backbone_trains = any(p.requires_grad for g in groups[:-1] for p in g.parameters())
    flops = (3 if backbone_trains else 1) * forward_flops(model, batches[0]) / bs
    rows = {}
    rates = step_rates(task, model, batches)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rate = rates[precision]
        peak = matmul_peak(dtype)
        rows[precision] = {"step_images_per_s": round(rate, 1), "matmul_peak_gflops": round(peak / 1e9, 1),
                           "efficiency": round(rate * flops / peak, 3)}
    result = {
        "recipe": recipe.name, "strategy": ft.strategy, "image_size": task.preprocessing().input_size,
        "batch_size": bs, "num_workers": workers, "threads": torch.get_num_threads(),
        "pipeline_images_per_s": round(pipe, 1), "train_gflops_per_image": round(flops / 1e9, 4),
        **{f"{k}_{m}": v for k, r in rows.items() for m, v in r.items()},
        "pipeline_over_bf16_step": round(pipe / rows["bf16"]["step_images_per_s"], 1),
        "pipeline_over_fp32_step": round(pipe / rows["fp32"]["step_images_per_s"], 1),
        "bf16_speedup": round(rows["bf16"]["step_images_per_s"] / rows["fp32"]["step_images_per_s"], 2),
    }
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
