"""Voice adaptation benchmark: the Piper "joe" voice towards the Asterisk "Allison" prompts.

Trains recipe speech/piper-joe-to-allison through the core API with ``eval.baseline`` on, so the
run itself scores the voice before and after on held-out test sentences (the task's sample_outputs,
speech/tts_samples.py): Whisper tiny.en WER of the synthesised sentences (intelligibility), MCD with
DTW against the held-out recordings and the F0 distribution distance (closeness to Allison), with
WAV files and mel-spectrogram images linked from the run's report.md. This script adds the timing:
writes results.json and a short report.md into --out and prints training steps/s.

    .venv/bin/python bench/tts_adapt.py [--steps 100] [--threads 2] [--sentences 6] [--out runs/bench-tts]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RECIPE = "recipes/speech/piper-joe-to-allison.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sentences", type=int, default=6)
    ap.add_argument("--out", default="runs/bench-tts")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more recipe overrides, e.g. finetune.unfreeze_every=5")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from omnitune.core.api import train
    from omnitune.speech.tts_samples import MANIFEST, SAMPLES_DIR

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {"train.max_steps": args.steps, "train.threads": args.threads, "eval.baseline": True,
                 "model.sample_sentences": args.sentences, "output.dir": str(out), "output.run_name": "run"}
    overrides = [f"{k}={v}" for k, v in overrides.items()] + list(args.set)
    t0 = time.perf_counter()
    result = train(RECIPE, overrides)
    wall = time.perf_counter() - t0
    m = result.metrics
    timing = m.get("timing", {})
    steps = m.get("steps", args.steps)
    samples = m.get("samples", {})
    manifest = json.loads((result.run_dir / SAMPLES_DIR / MANIFEST).read_text())
    res = {"steps": steps, "train_seconds": timing.get("train_seconds"), "wall_seconds": round(wall, 1),
           "steps_per_s": steps / timing["train_seconds"] if timing.get("train_seconds") else None,
           "validation": m.get("validation"), "baseline_test": m.get("baseline_test"), "test": m.get("test"),
           "before": samples.get("before"), "after": samples.get("after"), "sentences": manifest["sentences"],
           "run_dir": str(result.run_dir)}
    (out / "results.json").write_text(json.dumps(res, indent=1))

    def row(tag: str, r: dict) -> str:
        wer = f"{r['wer']:.1f}" if "wer" in r else "n/a"
        return (f"| {tag} | {wer} | {r['mcd_dtw_db']:.2f} | {r['f0_wasserstein_st']:.2f} | "
                f"{r['f0_median_hz']:.0f} (target {r['target_f0_median_hz']:.0f}) |")

    lines = [f"# Piper joe -> Allison ({steps} steps)", "",
             f"Training: {steps} steps in {res['train_seconds']} s ({res['steps_per_s']:.3f} steps/s); "
             f"{len(res['sentences'])} held-out sentences.", "",
             "| | WER % (Whisper tiny.en) | MCD-DTW (dB) | F0 Wasserstein (semitones) | median F0 (Hz) |",
             "|---|---|---|---|---|", row("before (joe)", res["before"]), row("after", res["after"]), "",
             f"WAVs and mel images: [{result.run_dir.name}/report.md]({result.run_dir.name}/report.md).", ""]
    (out / "report.md").write_text("\n".join(lines))
    print(json.dumps({k: v for k, v in res.items() if k != "sentences"}, indent=1))


if __name__ == "__main__":
    main()
