"""Cost as the data grows, for images and speech: the vision and speech cases of
bench/data_scaling.py (which calls :func:`vision_case` and :func:`speech_case`; the recipe field
``data.storage: memory | disk | auto`` and the row keys are defined in its docstring).

Each case writes a corpus of ``size`` x a base, as a user's files would be, then trains a FIXED
number of optimiser steps on it in a fresh process with a cold cache folder, and returns one row:
domain, size, storage, rows, peak_rss_mb, samples_per_s, prepare_s, steps (plus CPU-second
figures and the storage note of the data report).

- vision: base = the first 10,000 training and 2,000 test images of the bundled Fashion-MNIST;
  copy k > 0 of an image has +-2 grey levels of seeded noise (so no copy is a pixel-exact duplicate
  that the train/test overlap check would drop), written as gzip IDX files. Model: timm's tiny
  ``test_resnet`` (random init, 32 px): a scaling measurement, not an accuracy one.
- speech: base = the 568 bundled Asterisk prompts (8 kHz WAV, one speaker); copy k > 0 of a
  prompt has its gain scaled by 1 - 0.01 k and is shifted by 7 k samples of leading silence,
  written as WAV files with a transcripts.csv. Model: a random 2+2-layer Whisper (d_model 32,
  speech/testing.py) with a 10 s encoder window: the real clip lengths and feature extraction at a
  fraction of the model compute.

    python bench/scaling_media.py --domain vision --sizes 1,4 --storage memory,disk
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = 40  # fixed optimiser steps: the runs measure data cost, not epochs
VISION_BATCH, SPEECH_BATCH = 32, 8
VISION_BASE = (10_000, 2_000)  # Fashion-MNIST train / test images in the 1x corpus
EVAL_ROWS = 64  # evaluation on a fixed number of items; preparation still reads and checks them all

# A fresh interpreter per run: the recipe, then its figures as one JSON line. Data preparation is
# timed around the task's build_datasets; peak RSS is VmHWM, this process's own high-water mark.
_CHILD = r"""
import importlib, json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from omnitune.core.api import train

module, cls = sys.argv[2].split(":")
Task = getattr(importlib.import_module(module), cls)

def vm(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return round(int(line.split()[1]) / 1024, 1)

timing, marks = {}, []
build = Task.build_datasets
def timed(self):
    t0, c0 = time.perf_counter(), time.process_time()
    bundle = build(self)
    timing.update(prepare_s=time.perf_counter() - t0, prepare_cpu_s=time.process_time() - c0,
                  prepare_peak_rss_mb=vm("VmHWM"), rss_after_prepare_mb=vm("VmRSS"))
    return bundle
Task.build_datasets = timed
def mark(trainer):  # CPU seconds at each step's end: the machine may be shared
    marks.append((trainer.state.samples_seen, time.process_time()))
res = train(sys.argv[1], callbacks=[mark])
metrics = json.loads((Path(res.run_dir) / "metrics.json").read_text())
(n0, c0), (n1, c1) = marks[0], marks[-1]
notes = json.loads((Path(res.run_dir) / "data_report.json").read_text())["notes"]
print("RESULT " + json.dumps({**timing, "peak_rss_mb": vm("VmHWM"), "samples_per_cpu_s": (n1 - n0) / (c1 - c0),
      "samples_per_s": metrics["timing"]["train_samples_per_s"], "samples_seen": metrics["timing"]["samples_seen"],
      "notes": [n for n in notes if n.startswith("data.storage")]}))
"""


# ----------------------------------------------------------------------------- corpora
def vision_corpus(size: int, folder: Path) -> tuple[Path, int]:
    """Fashion-MNIST's first VISION_BASE images, ``size`` copies, as an IDX folder (gzip)."""
    import gzip

    import numpy as np

    from omnitune.core.base import assets
    from omnitune.vision.data import _read_idx

    src = Path(assets.fetch("fashion-mnist"))
    out = folder / f"fmnist_x{size}"
    if (out / "done").exists():
        return out, int((out / "done").read_text())
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    for prefix, n in zip(("train", "t10k"), VISION_BASE):
        images = _read_idx(src / f"{prefix}-images-idx3-ubyte.gz")[:n]
        labels = _read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")[:n]
        rng = np.random.default_rng(size)
        with gzip.open(out / f"{prefix}-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
            f.write((0x0803).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in (n * size, 28, 28)))
            for k in range(size):  # one copy in memory at a time
                noise = rng.integers(-2, 3, images.shape) if k else 0
                f.write((images.astype(np.int16) + noise).clip(0, 255).astype(np.uint8).tobytes())
        with gzip.open(out / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write((0x0801).to_bytes(4, "big") + (n * size).to_bytes(4, "big") + np.tile(labels, size).tobytes())
        rows += n * size
    shutil.copy(src / "labels.txt", out / "labels.txt")
    (out / "done").write_text(str(rows))
    return out, rows


def speech_corpus(size: int, folder: Path) -> tuple[Path, int]:
    """The Asterisk prompts, ``size`` copies (gain and time-shift variations), as WAV files and a
    transcripts.csv."""
    import csv

    import numpy as np
    import soundfile as sf

    from omnitune.core.base import assets
    from omnitune.speech.data import local_utterances
    from omnitune.core.base.task import DataReport

    out = folder / f"asterisk_x{size}"
    if (out / "done").exists():
        return out, int((out / "done").read_text())
    src = Path(assets.fetch("asterisk-prompts"))  # the audio folder with its transcripts.txt
    utts = local_utterances(src, None, None, "path", "text", DataReport(source=str(src)), "all")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "transcripts.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "text"])
        for u in utts:
            data, sr = sf.read(u.audio, dtype="int16")
            stem = Path(u.audio).relative_to(src).with_suffix("")
            for k in range(size):
                wave = data if not k else np.concatenate([np.zeros(7 * k, np.int16),
                                                          (data * (1 - 0.01 * k)).astype(np.int16)])
                rel = Path(f"copy{k:02d}") / stem.with_suffix(".wav")
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                sf.write(out / rel, wave, sr, subtype="PCM_16")
                w.writerow([rel.as_posix(), u.text])
    rows = len(utts) * size
    (out / "done").write_text(str(rows))
    return out, rows


# ----------------------------------------------------------------------------- recipes
def vision_recipe(source: Path, storage: str, run_dir: Path) -> dict:
    return {
        "name": "data-scaling-vision", "task": "image-classification", "seed": 0,
        "model": {"name": "test_resnet", "pretrained": False, "image_size": 32},
        "data": {"source": str(source), "storage": storage, "augment": {"train": "light"},
                 "max_eval_samples": EVAL_ROWS},
        "train": {"epochs": 1000, "max_steps": STEPS, "batch_size": VISION_BATCH, "eval_batch_size": 64,
                  "precision": "fp32", "log_every": 10, "save_checkpoints": False},
        "eval": {"baseline": False},
        "output": {"dir": str(run_dir), "run_name": "run"},
    }


def speech_recipe(source: Path, model: Path, storage: str, run_dir: Path) -> dict:
    return {
        "name": "data-scaling-speech", "task": "speech-recognition", "seed": 0,
        "model": {"name": str(model), "max_source_seconds": 10, "max_new_tokens": 4},
        "data": {"source": str(source), "storage": storage, "max_eval_samples": EVAL_ROWS,
                 "normalizer": "whisper_basic"},
        "train": {"epochs": 1000, "max_steps": STEPS, "batch_size": SPEECH_BATCH, "eval_batch_size": 16,
                  "precision": "fp32", "log_every": 10, "save_checkpoints": False},
        "eval": {"baseline": False},
        "output": {"dir": str(run_dir), "run_name": "run"},
    }


# ----------------------------------------------------------------------------- one run
def _run(domain: str, task: str, recipe: dict, size: int, storage: str, rows: int, batch: int,
         out_dir: Path) -> dict:
    import yaml

    work = Path(tempfile.mkdtemp(prefix=f"{domain}-x{size}-{storage}-", dir=out_dir))
    recipe_file = work / "recipe.yaml"
    recipe["output"]["dir"] = str(work / "runs")
    recipe_file.write_text(yaml.safe_dump(recipe))
    # A cold cache folder: a disk store is built in the run (what a first run pays).
    env = {**os.environ, "OMNITUNE_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(recipe_file), task], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{domain} x{size} {storage} failed:\n{proc.stderr[-3000:]}")
    fig = json.loads(line[len("RESULT "):])
    return {"domain": domain, "size": size, "storage": storage, "rows": rows,
            "peak_rss_mb": fig["peak_rss_mb"], "samples_per_s": fig["samples_per_s"],
            "prepare_s": round(fig["prepare_s"], 2), "steps": fig["samples_seen"] // batch,
            "samples_per_cpu_s": round(fig["samples_per_cpu_s"], 2), "prepare_cpu_s": round(fig["prepare_cpu_s"], 2),
            "prepare_peak_rss_mb": fig["prepare_peak_rss_mb"], "wall_s": round(wall, 1), "notes": fig["notes"]}


def vision_case(size: int, storage: str, out_dir: Path) -> dict:
    """One image-classification run at ``size`` x the base, in its own process, cold cache."""
    out_dir = Path(out_dir)
    (out_dir / "corpus").mkdir(parents=True, exist_ok=True)
    source, rows = vision_corpus(size, out_dir / "corpus")
    return _run("vision", "omnitune.vision.classification:ImageClassificationTask",
                vision_recipe(source, storage, out_dir), size, storage, rows, VISION_BATCH, out_dir)


def speech_case(size: int, storage: str, out_dir: Path) -> dict:
    """One speech-recognition run at ``size`` x the base, in its own process, cold cache."""
    from omnitune.speech.testing import make_tiny_whisper

    out_dir = Path(out_dir)
    (out_dir / "corpus").mkdir(parents=True, exist_ok=True)
    source, rows = speech_corpus(size, out_dir / "corpus")
    model = out_dir / "tiny-whisper"
    if not (model / "config.json").exists():
        make_tiny_whisper(model)
    return _run("speech", "omnitune.speech.asr:SpeechRecognitionTask", speech_recipe(source, model, storage, out_dir),
                size, storage, rows, SPEECH_BATCH, out_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domain", choices=["vision", "speech"], required=True)
    p.add_argument("--sizes", default="1,4,16")
    p.add_argument("--storage", default="memory,disk")
    p.add_argument("--work", default=None, help="corpora and runs (default: a temp folder, removed)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="scaling-media-"))
    case = vision_case if args.domain == "vision" else speech_case
    try:
        for size in map(int, args.sizes.split(",")):
            for storage in args.storage.split(","):
                print(json.dumps(case(size, storage, work)), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
