"""Voice adaptation benchmark: the Piper "joe" voice towards the Asterisk "Allison" prompts.

Trains recipe speech/piper-joe-to-allison through the core API and scores the voice before and
after on the held-out test sentences: Whisper tiny.en WER of the synthesised sentences
(intelligibility), MCD with DTW against the held-out recordings and the F0 distribution distance
(closeness to Allison). Writes WAV files, mel-spectrogram images, results.json and report.md (which
links the WAVs and embeds the images) into --out; prints training steps/s.

    .venv/bin/python bench/tts_adapt.py [--steps 100] [--threads 2] [--sentences 6] [--out runs/bench-tts]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RECIPE = "recipes/speech/piper-joe-to-allison.yaml"


def mel_png(wave: np.ndarray, sr: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from omnitune.speech.vits_losses import mel_spectrogram

    mel = mel_spectrogram(torch.from_numpy(wave)[None], sr, 1024, 256)[0].numpy()
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("frame")
    ax.set_ylabel("mel bin")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def score(task, model, items, transcriber, out: Path, tag: str) -> dict:
    """Synthesise every item's text (seed 0), then WER, MCD-DTW and F0 distance against the items."""
    import soundfile as sf

    from omnitune.speech.metrics import get_normalizer, word_error_rate
    from omnitune.speech.tts_metrics import f0_distance, f0_track, mcd_dtw

    sr = task.sampling_rate
    norm = get_normalizer("whisper_english")
    waves, mcds = [], []
    t0 = time.perf_counter()
    for i, it in enumerate(items):
        w = task.synthesize(model, it["text"], seed=0)
        waves.append(w)
        sf.write(str(out / f"{tag}-{i:02d}.wav"), w, sr)
        mcds.append(mcd_dtw(w, it["wave"], sr))
    synth_s = time.perf_counter() - t0
    hyps = transcriber(waves, sr)
    refs = [it["text"] for it in items]
    f0_synth = np.concatenate([f0_track(w, sr) for w in waves])
    f0_ref = np.concatenate([f0_track(it["wave"], sr) for it in items])
    mel_png(waves[0], sr, out / f"{tag}-00-mel.png", f"{tag}: {refs[0]}")
    return {"wer": word_error_rate([norm(r) for r in refs], [norm(h) for h in hyps]), "mcd_dtw_db": float(np.mean(mcds)),
            **f0_distance(f0_synth, f0_ref), "f0_median_hz": float(np.median(f0_synth)) if len(f0_synth) else None,
            "target_f0_median_hz": float(np.median(f0_ref)) if len(f0_ref) else None,
            "transcripts": hyps, "synthesis_seconds": round(synth_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sentences", type=int, default=6)
    ap.add_argument("--out", default="runs/bench-tts")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from omnitune.core.api import build_task, train
    from omnitune.core.recipe import load_recipe
    from omnitune.speech.tts_metrics import Transcriber

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(RECIPE)
    task = build_task(recipe)
    bundle = task.build_datasets()
    items = bundle.test.items[: args.sentences]
    transcriber = Transcriber()
    for it in items:
        import soundfile as sf

        sf.write(str(out / f"target-{items.index(it):02d}.wav"), it["wave"], task.sampling_rate)
    mel_png(items[0]["wave"], task.sampling_rate, out / "target-00-mel.png", f"Allison (target): {items[0]['text']}")
    before = score(task, task.build_model(), items, transcriber, out, "before")

    overrides = {"train.max_steps": args.steps, "train.threads": args.threads, "eval.baseline": False,
                 "output.dir": str(out), "output.run_name": "run"}
    t0 = time.perf_counter()
    result = train(recipe, overrides)
    wall = time.perf_counter() - t0
    trained = task.load_pretrained(result.run_dir / "model")
    after = score(task, trained, items, transcriber, out, "after")
    timing = result.metrics.get("timing", {})
    steps = result.metrics.get("steps", args.steps)
    res = {"steps": steps, "train_seconds": timing.get("train_seconds"), "wall_seconds": round(wall, 1),
           "steps_per_s": steps / timing["train_seconds"] if timing.get("train_seconds") else None,
           "validation": result.metrics.get("validation"), "before": before, "after": after,
           "sentences": [it["text"] for it in items]}
    (out / "results.json").write_text(json.dumps(res, indent=1))
    lines = [f"# Piper joe -> Allison ({steps} steps)", "",
             f"Training: {steps} steps in {res['train_seconds']} s ({res['steps_per_s']:.3f} steps/s).", "",
             "| | WER (Whisper tiny.en) | MCD-DTW (dB) | F0 Wasserstein (semitones) | median F0 (Hz) |",
             "|---|---|---|---|---|"]
    for tag, r in (("before (joe)", before), ("after", after)):
        lines.append(f"| {tag} | {r['wer']:.3f} | {r['mcd_dtw_db']:.2f} | {r['f0_wasserstein_st']:.2f} | "
                     f"{r['f0_median_hz']:.0f} (target {r['target_f0_median_hz']:.0f}) |")
    lines += ["", "| sentence | target | before | after |", "|---|---|---|---|"]
    for i, text in enumerate(res["sentences"]):
        lines.append(f"| {text} | [wav](target-{i:02d}.wav) | [wav](before-{i:02d}.wav) | [wav](after-{i:02d}.wav) |")
    lines += ["", "![target](target-00-mel.png)", "![before](before-00-mel.png)", "![after](after-00-mel.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    print(json.dumps({k: v for k, v in res.items() if k not in ("sentences",)}, indent=1))


if __name__ == "__main__":
    main()
