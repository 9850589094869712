"""Short encoder window vs Whisper's 30 s default on the Asterisk prompts, in one run.

Trains the same model on the same clips with the same seed, steps and batch size twice: once
with the 30 s window (recipe whisper-tiny-asterisk-full) and once with the 8 s window (recipe
whisper-tiny-asterisk-short-window), both through the core API. Reports training samples/s and
zero-shot / fine-tuned test WER of each. Target: >= 3x samples/s, WER within 1 point absolute.

    .venv/bin/python bench/speech_window.py [--steps 30] [--threads N] [--out runs/bench-speech-window]

On a machine shared with other jobs the two runs' samples/s can be hit by different loads, so the
bench also times a few optimiser steps of both windows alternately on the same batch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RECIPES = {"30 s window (default)": "recipes/speech/whisper-tiny-asterisk-full.yaml",
           "8 s window": "recipes/speech/whisper-tiny-asterisk-short-window.yaml"}


def interleaved_samples_per_s(rounds: int, batch_size: int = 8) -> dict[str, float]:
    """Training samples/s of both windows measured alternately (A B A B ...) on the same batch of
    clips, so load from other processes on a shared machine hits both alike. One optimiser step =
    forward, backward and AdamW update at bf16 autocast, as in the trainer."""
    import time

    import torch

    from omnitune.core.api import build_task
    from omnitune.core.base.recipe import load_recipe
    from omnitune.core.loop.trainer import mean_loss

    setups = {}
    for label, recipe in RECIPES.items():
        task = build_task(load_recipe(recipe))
        bundle = task.build_datasets()
        model = task.build_model().train()
        batch = task.collate([bundle.train[i] for i in range(batch_size)])
        setups[label] = (task, model, batch, torch.optim.AdamW(model.parameters(), lr=1e-6))
    times: dict[str, list[float]] = {label: [] for label in setups}
    for r in range(rounds + 1):
        for label, (task, model, batch, opt) in setups.items():
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = mean_loss(task.forward(model, batch, train=True))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r:  # round 0 warms up
                times[label].append(time.perf_counter() - t0)
    return {label: batch_size * len(t) / sum(t) for label, t in times.items()}


def main() -> None:
    from omnitune.core.api import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/bench-speech-window")
    parser.add_argument("--interleaved-rounds", type=int, default=3,
                        help="extra A/B step timing of both windows (0 skips it)")
    parser.add_argument("--timing-only", action="store_true", help="only the A/B step timing, no training runs")
    args = parser.parse_args()
    if args.threads:
        import torch

        # One thread is the fairest A/B on a loaded machine: a multi-threaded op stalls whenever
        # one of its threads is descheduled.
        torch.set_num_threads(args.threads)
    if args.timing_only:
        sps = interleaved_samples_per_s(args.interleaved_rounds or 3)
        print(f"interleaved A/B step timing (samples/s): {sps} -> "
              f"{sps['8 s window'] / sps['30 s window (default)']:.2f}x")
        return
    rows = {}
    for label, recipe in RECIPES.items():
        overrides = {"train.max_steps": args.steps, "output.dir": args.out}
        if args.threads:
            overrides["train.threads"] = args.threads
        result = train(recipe, overrides)
        m = result.metrics
        rows[label] = {"train_samples_per_s": m["timing"]["train_samples_per_s"],
                       "train_seconds": m["timing"]["train_seconds"],
                       "zero_shot_test_wer": round(m["baseline_test"]["wer"], 2),
                       "test_wer": round(m["test"]["wer"], 2), "test_cer": round(m["test"]["cer"], 2),
                       "run_dir": str(result.run_dir)}
    base, short = rows["30 s window (default)"], rows["8 s window"]
    summary = {"speedup": round(short["train_samples_per_s"] / base["train_samples_per_s"], 2),
               "wer_difference_points": round(short["test_wer"] - base["test_wer"], 2)}
    print("| window | train samples/s | train s | zero-shot test WER % | fine-tuned test WER % |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['train_samples_per_s']:.2f} | {r['train_seconds']:.0f} | "
              f"{r['zero_shot_test_wer']:.2f} | {r['test_wer']:.2f} |")
    print(f"speed-up {summary['speedup']}x (target >= 3x); WER difference {summary['wer_difference_points']:+.2f} "
          f"points (target within 1)")
    if args.interleaved_rounds:
        sps = interleaved_samples_per_s(args.interleaved_rounds)
        summary["interleaved_samples_per_s"] = {k: round(v, 3) for k, v in sps.items()}
        summary["interleaved_speedup"] = round(sps["8 s window"] / sps["30 s window (default)"], 2)
        print(f"interleaved A/B step timing: {summary['interleaved_samples_per_s']} -> "
              f"{summary['interleaved_speedup']}x")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "speech_window.json").write_text(json.dumps({"runs": rows, **summary}, indent=1))


if __name__ == "__main__":
    main()
