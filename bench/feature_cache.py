"""Frozen-trunk feature cache: seconds per training epoch with and without ``train.cache_features``.

Each case trains the same recipe twice in this process, once recomputing the frozen trunk every epoch
(``cache_features: false``) and once from the cache (``auto``), with settings under which nothing is
random below the trained groups, so both runs must end with the same test metrics (the bench checks
it). Per-epoch training time comes from the trainer's own clock (``state.train_seconds``, which
includes loading and collating the batches); the cached run's one-off extraction (the trunk over the
training and validation sets) is reported apart, so "epochs after the first" compares like with like.

Cases (bundled assets, offline):
  vision  EfficientNet-Lite0 linear probe on Fashion-MNIST (recipes/vision/effnet-lite0-fmnist-linear,
          train augmentation off: with it on, ``cache_features: true`` caches and says it turned it off)
  vision-partial  the same model with the stem and blocks 0-3 frozen, blocks 4-6 and the head trained
          from the cached block-3 feature maps (recipes/vision/effnet-lite0-fmnist-partial, augmentation off)
  text    MiniLM-L6 feature extraction on Rotten Tomatoes (recipes/text/minilm-rotten-tomatoes with
          strategy feature_extraction, dropout 0: BERT's dropout in frozen layers would be random)
  speech  Whisper tiny.en with a frozen encoder on the Asterisk prompts
          (recipes/speech/whisper-tiny-asterisk-frozen-encoder, augmentation off, whole epochs)

    python bench/feature_cache.py                 # all three, 3 epochs each (minutes on 2 CPU cores)
    python bench/feature_cache.py --cases vision --epochs 4
    python bench/feature_cache.py --quick         # tiny models built from configs, seconds: a smoke test

Target (issue 13): epochs after the first >= 5x faster cached, identical metrics. The machine (CPU
model, cores, bf16 path, fp32 matmul peak) is printed with the figures; on a shared machine only the
ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from text_vs_hf_trainer import machine_info, matmul_peak  # noqa: E402

EXACT = {  # per case: the shipped recipe and the overrides under which caching changes nothing
    "vision": ("vision/effnet-lite0-fmnist-linear", {"data.augment.train": "none"}),
    "vision-partial": ("vision/effnet-lite0-fmnist-partial", {"data.augment.train": "none"}),
    "text": ("text/minilm-rotten-tomatoes", {"finetune.strategy": "feature_extraction", "regularization.dropout": 0.0,
                                            "train.lr": 2.0e-3, "early_stopping.enabled": False}),
    "speech": ("speech/whisper-tiny-asterisk-frozen-encoder", {"data.augment": [], "train.max_steps": None,
                                                               "eval.baseline": False}),
}
MAIN_METRIC = {"vision": "accuracy", "vision-partial": "accuracy", "text": "accuracy", "speech": "wer"}


def tiny_recipe(case: str, folder: Path) -> dict:
    """--quick: the task's tiny model and data (nothing downloaded) with the case's strategy."""
    from omnitune.core.base.registry import FIXTURES

    task = "image-classification" if case.startswith("vision") else "text-classification" if case == "text" \
        else "speech-recognition"
    raw = FIXTURES.get(task).tiny_recipe(folder / case)
    if case.startswith("vision"):
        raw["model"]["name"] = "test_efficientnet"
        raw["data"]["augment"] = {"train": "none"}
        raw["finetune"] = {"strategy": "feature_extraction", "freeze_norm_stats": True}
        if case == "vision-partial":  # stem and the first two stages frozen, the stages above train
            raw["finetune"].update(strategy="partial", freeze_layers=3)
    elif case == "text":
        raw["finetune"] = {"strategy": "feature_extraction"}
        raw["regularization"] = {"dropout": 0.0}
    else:
        raw["finetune"] = {"strategy": "partial", "freeze": ["model.encoder.*"]}
    return raw


def run_once(recipe, overrides: dict, cache) -> dict:
    import omnitune
    from omnitune.core.api import as_recipe

    marks: list[tuple[int, float]] = []  # (epoch, train seconds so far) after every step

    def clock(trainer) -> None:
        marks.append((trainer.state.epoch, trainer.state.train_seconds))

    # A time budget would cut the slower (uncached) run shorter: both train the recipe's whole plan.
    rec = as_recipe(recipe, {**overrides, "train.cache_features": cache, "train.time_budget_minutes": None})
    t0 = time.perf_counter()
    result = omnitune.train(rec, callbacks=[clock])
    wall = time.perf_counter() - t0
    per_epoch: dict[int, float] = {}
    for epoch, seconds in marks:
        per_epoch[epoch] = seconds  # the last step of each epoch holds its running total
    totals = [per_epoch[e] for e in sorted(per_epoch)]
    epochs = [b - a for a, b in zip([0.0] + totals[:-1], totals)]
    m = result.metrics
    return {"cache": cache, "epoch_seconds": [round(s, 3) for s in epochs], "wall_seconds": round(wall, 2),
            "feature_cache": m["feature_cache"], "test": m.get("test", {}), "validation": m["validation"],
            "peak_rss_mb": m["memory"]["peak_rss_mb"], "run_dir": str(result.run_dir)}


def compare(case: str, plain: dict, cached: dict) -> dict:
    metric = MAIN_METRIC[case]
    p_ep, c_ep = plain["epoch_seconds"], cached["epoch_seconds"]
    extract = cached["feature_cache"].get("extract_seconds", 0.0)
    mean_p = sum(p_ep) / len(p_ep)
    mean_c = sum(c_ep) / len(c_ep)
    later_p = sum(p_ep[1:]) / max(len(p_ep) - 1, 1)
    later_c = sum(c_ep[1:]) / max(len(c_ep) - 1, 1)
    return {
        "case": case, "metric": metric, "cache_enabled": cached["feature_cache"].get("enabled"),
        "cache_note": cached["feature_cache"],
        "uncached_epoch_s": [round(s, 2) for s in p_ep], "cached_epoch_s": [round(s, 2) for s in c_ep],
        "extract_s": extract,
        "speedup_later_epochs": round(later_p / max(later_c, 1e-9), 1),
        "speedup_mean_epoch": round(mean_p / max(mean_c, 1e-9), 1),
        "speedup_whole_training": round(sum(p_ep) / max(sum(c_ep) + extract, 1e-9), 2),
        f"test_{metric}_uncached": plain["test"].get(metric), f"test_{metric}_cached": cached["test"].get(metric),
        "same_metrics": plain["test"].get(metric) == cached["test"].get(metric)
        and plain["validation"].get(metric) == cached["validation"].get(metric),
        "peak_rss_mb": {"uncached": plain["peak_rss_mb"], "cached": cached["peak_rss_mb"]},
    }


def markdown(rows: list[dict], machine: dict, peak: float, args) -> str:
    lines = [f"Machine: {machine['cpu_model']}, {machine['usable_cpus']} usable CPUs, bf16 path "
             f"{'yes' if machine['mkldnn_bf16_supported'] else 'no'}, fp32 matmul peak {peak:.0f} GFLOP/s, "
             f"torch {machine['torch']}. Command: `python bench/feature_cache.py {' '.join(sys.argv[1:])}`.", "",
             "| case | epoch s uncached | epoch s cached | extraction s | later epochs speed-up | whole run speed-up "
             "| test metric uncached / cached | same |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metric"]
        lines.append(f"| {r['case']} | {', '.join(map(str, r['uncached_epoch_s']))} | "
                     f"{', '.join(map(str, r['cached_epoch_s']))} | {r['extract_s']} | {r['speedup_later_epochs']}x | "
                     f"{r['speedup_whole_training']}x | {r[f'test_{m}_uncached']} / {r[f'test_{m}_cached']} | "
                     f"{'yes' if r['same_metrics'] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(EXACT), choices=list(EXACT))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny models and data: a smoke test of the bench")
    parser.add_argument("--out", type=Path, default=None, help="folder for runs and results (default: a temp folder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="omnitune-bench-feature-cache-"))
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    peak = matmul_peak(torch.float32, torch.get_num_threads(), n=512 if args.quick else 2048)
    print(f"machine: {machine['cpu_model']} | {machine['usable_cpus']} usable CPUs | threads "
          f"{torch.get_num_threads()} | bf16 path: {machine['mkldnn_bf16_supported']} | fp32 matmul peak "
          f"{peak:.0f} GFLOP/s", flush=True)
    rows = []
    for case in args.cases:
        if args.quick:
            from omnitune.core.base.recipe import validate_recipe

            raw = tiny_recipe(case, out / "tiny")
            raw["train"].update(epochs=args.epochs, save_checkpoints=False)
            recipe, overrides = validate_recipe(raw, where=f"tiny {case}"), {}
        else:
            recipe, overrides = EXACT[case]
            overrides = {**overrides, "train.epochs": args.epochs, "train.save_checkpoints": False}
        overrides["output.dir"] = str(out / "runs")
        results = []
        for cache in (False, "auto"):
            overrides["output.run_name"] = f"{case}-{'cached' if cache else 'uncached'}"
            print(f"--- {case}: cache_features={cache}", flush=True)
            results.append(run_once(recipe, dict(overrides), cache))
        row = compare(case, *results)
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    report = {"machine": machine, "fp32_matmul_gflops": round(peak, 1), "epochs": args.epochs, "quick": args.quick,
              "rows": rows}
    (out / "feature_cache.json").write_text(json.dumps(report, indent=1))
    text = markdown(rows, machine, peak, args)
    (out / "feature_cache.md").write_text(text + "\n")
    print(text)
    print(f"results: {out}/feature_cache.json")


if __name__ == "__main__":
    main()
