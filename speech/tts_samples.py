"""A voice's samples before and after adaptation: held-out sentences synthesised into WAV files and
mel-spectrogram images, scored for intelligibility (the WER of an ASR model's transcripts) and
closeness to the target speaker (MCD with DTW and the F0 distance against the held-out recordings,
:mod:`speech.tts_metrics`). One implementation for the run report
(``TextToSpeechTask.sample_outputs``) and bench/tts_adapt.py.

Files, in ``<run>/samples/``: ``target-NN.wav`` (the recording), ``{before,after}-NN.wav`` (the
voice), ``*-NN-mel.png`` for each, ``{before,after}.json`` (per-sentence scores and transcripts)
and ``samples.json`` (the sentences and how they were scored).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

SAMPLES_DIR = "samples"
MANIFEST = "samples.json"


def mel_png(wave: np.ndarray, sr: int, path: Path, title: str) -> Path:
    """A log-mel spectrogram image (1024-point FFT, hop 256) of ``wave``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .vits_losses import mel_spectrogram

    mel = mel_spectrogram(torch.from_numpy(np.asarray(wave, dtype=np.float32))[None], sr, 1024, 256)[0].numpy()
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma")
    ax.set_title(title[:90], fontsize=8)
    ax.set_xlabel("frame")
    ax.set_ylabel("mel bin")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def load_transcriber(model: str | None):
    """(an ASR scorer or None, why there is none): Whisper from ``model`` (``asset:whisper-tiny.en``,
    a folder, a Hub id). A scorer that cannot be loaded (offline, not fetched) costs the WER only."""
    if model is None:
        return None, "no ASR scorer (model.sample_asr is null)"
    from .tts_metrics import Transcriber

    try:
        return Transcriber(model), None
    except Exception as exc:  # noqa: BLE001 - any load failure: the other scores still count
        return None, f"ASR scorer {model} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"


def _playable(wave: np.ndarray, sr: int) -> np.ndarray:
    """At least 50 ms (the cepstra's and the F0 tracker's windows need that much)."""
    wave = np.asarray(wave, dtype=np.float32)
    need = int(0.05 * sr)
    return wave if len(wave) >= need else np.pad(wave, (0, need - len(wave)))


def write_targets(items: list[dict], sr: int, out: Path) -> None:
    """The held-out recordings as ``target-NN.wav`` and their mel images (once)."""
    import soundfile as sf

    for i, it in enumerate(items):
        wav = out / f"target-{i:02d}.wav"
        if not wav.is_file():
            sf.write(str(wav), it["wave"], sr)
            mel_png(it["wave"], sr, out / f"target-{i:02d}-mel.png", f"target: {it['text']}")


def synthesize_and_score(synthesize: Callable[[str], np.ndarray], items: list[dict], sr: int, out: Path,
                         tag: str, transcriber=None) -> dict[str, float]:
    """Synthesise every item's text, write ``{tag}-NN.wav`` and its mel image, and score the set
    against the items' recordings: WER (when ``transcriber``), mean MCD-DTW (dB), F0 distance."""
    import soundfile as sf

    from .metrics import get_normalizer, utterance_errors, word_error_rate
    from .tts_metrics import f0_distance, f0_track, mcd_dtw

    out.mkdir(parents=True, exist_ok=True)
    waves, mcds = [], []
    t0 = time.perf_counter()
    for i, it in enumerate(items):
        wave = _playable(synthesize(it["text"]), sr)
        waves.append(wave)
        sf.write(str(out / f"{tag}-{i:02d}.wav"), wave, sr)
        mel_png(wave, sr, out / f"{tag}-{i:02d}-mel.png", f"{tag}: {it['text']}")
        mcds.append(mcd_dtw(wave, _playable(it["wave"], sr), sr))
    seconds = time.perf_counter() - t0
    f0_synth = np.concatenate([f0_track(w, sr) for w in waves])
    f0_ref = np.concatenate([f0_track(_playable(it["wave"], sr), sr) for it in items])
    scores: dict[str, float] = {"mcd_dtw_db": float(np.mean(mcds)), **f0_distance(f0_synth, f0_ref),
                                "f0_median_hz": float(np.median(f0_synth)) if len(f0_synth) else float("nan"),
                                "target_f0_median_hz": float(np.median(f0_ref)) if len(f0_ref) else float("nan"),
                                "synthesis_seconds": round(seconds, 2)}
    details: dict[str, Any] = {"mcd_dtw_db": mcds, "seconds": [round(len(w) / sr, 3) for w in waves]}
    if transcriber is not None:
        norm = get_normalizer("whisper_english")
        hyps = transcriber(waves, sr)
        refs = [norm(it["text"]) for it in items]
        scores["wer"] = word_error_rate(refs, [norm(h) for h in hyps])
        details["transcripts"] = hyps
        details["word_errors"] = [utterance_errors(r, norm(h)) for r, h in zip(refs, hyps)]
    (out / f"{tag}.json").write_text(json.dumps({"scores": scores, **details}, indent=1))
    return scores


def write_manifest(out: Path, items: list[dict], sr: int, asr: str | None, asr_note: str | None) -> None:
    (out / MANIFEST).write_text(json.dumps({"sentences": [it["text"] for it in items],
                                            "names": [it.get("name") for it in items], "sampling_rate": sr,
                                            "asr": asr, "asr_note": asr_note}, indent=1, ensure_ascii=False))


def samples_md(run_dir: Path, folder: str = SAMPLES_DIR) -> str | None:
    """The report block: each sentence with its recording and the voice before and after (WAV links,
    ASR transcripts), then the mel images; paths relative to ``run_dir``. None without samples."""
    out = Path(run_dir) / folder
    if not (out / MANIFEST).is_file():
        return None
    manifest = json.loads((out / MANIFEST).read_text())
    stages = [s for s in ("before", "after") if (out / f"{s}.json").is_file()]
    details = {s: json.loads((out / f"{s}.json").read_text()) for s in stages}

    def link(name: str) -> str:
        return f"[wav]({folder}/{name})" if (out / name).is_file() else ""

    heard = [s for s in stages if "transcripts" in details[s]]
    lines = [f"Synthesised held-out sentences ({len(manifest['sentences'])}, seed 0) beside the recordings, "
             f"at {manifest['sampling_rate']} Hz; MCD-DTW in dB per sentence. "
             + (f"Transcripts by `{manifest['asr']}`." if heard else f"No WER: {manifest.get('asr_note')}."), "",
             "| # | sentence | target | " + " | ".join(f"{s} | {s} MCD" for s in stages)
             + "".join(f" | {s} heard" for s in heard) + " |",
             "|---|---|---|" + "---|---|" * len(stages) + "---|" * len(heard)]
    for i, text in enumerate(manifest["sentences"]):
        cells = [str(i), text.replace("|", "\\|"), link(f"target-{i:02d}.wav")]
        for s in stages:
            cells += [link(f"{s}-{i:02d}.wav"), f"{details[s]['mcd_dtw_db'][i]:.2f}"]
        cells += [details[s]["transcripts"][i].replace("|", "\\|") for s in heard]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mel spectrograms (target, then " + ", ".join(stages) + "):", ""]
    for i in range(len(manifest["sentences"])):
        images = [f"![{s} {i}]({folder}/{s}-{i:02d}-mel.png)" for s in ["target", *stages]
                  if (out / f"{s}-{i:02d}-mel.png").is_file()]
        lines.append(" ".join(images))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
