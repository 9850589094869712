"""What an export reports: the PyTorch, ONNX fp32 and int8 models compared on the run's test split
through the task's own metrics, with batch-1 and batch-32 latency and sizes (export_report.json,
.md, .png); a waveform generator's synthesis time and real-time factor instead; and ORT's int8
quantisation."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .onnx_predict import run_session
from .runtimes import waveform_feeds


def quantize_int8(src: Path, dst: Path, calibration: list[dict[str, Any]] | None = None) -> str:
    """int8 with ONNX Runtime's quantiser, after its recommended pre-processing (shape inference and
    graph optimisation). Without ``calibration``: dynamic quantisation (int8 weights, activations
    quantised at run time), which suits transformers' MatMuls. With it (CNNs): static QDQ
    quantisation, per-channel int8 weights and uint8 activations whose ranges come from the
    calibration batches (min/max); dynamic ConvInteger kernels are slower than fp32 on CPU.
    Returns how it quantised."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.stem + ".pre.onnx")
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs advice on the root logger
    try:
        # ONNX's shape inference and ORT's graph optimisation; ORT's symbolic shape inference is
        # skipped: it gives up on BERT-style masks built from the input's shape, and then dumps the
        # graph and its weights into the current directory.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if calibration is None:
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
            return "dynamic: int8 weights (MatMul/Gemm/Conv), activations quantised at run time"

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(calibration)

            def get_next(self):
                return next(self.items, None)

        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return (f"static QDQ: per-channel int8 weights, uint8 activations calibrated (min/max) on "
                f"{sum(len(next(iter(c.values()))) for c in calibration)} validation samples")
    finally:
        logging.getLogger().setLevel(quiet)
        pre.unlink(missing_ok=True)


def model_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def latency_ms(task, models: list, batch: dict[str, Any], repeats: int) -> list[float]:
    """Median wall time per model of the task's evaluation forward on one batch (an encoder-decoder: with its
    greedy decoding), after one warm-up call each. The models take turns within each round, so
    load from other jobs on a shared machine falls on all of them alike."""
    for m in models:
        task.forward(m, batch, train=False)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            task.forward(m, batch, train=False)
            times[i].append((time.perf_counter() - t0) * 1000)
    return [statistics.median(t) for t in times]


def latency_batch(task, dataset, size: int) -> dict[str, Any]:
    n = len(dataset)
    return task.collate([dataset[i % n] for i in range(size)])


@torch.no_grad()
def synthesis_report(module: nn.Module, sessions: dict[str, Any], sizes: dict[str, int], utts: list[torch.Tensor],
                     repeats: int) -> dict[str, Any]:
    """Seconds to synthesise one sentence (the longest of ``utts``) at the voice's own scales: the
    model's own forward (PyTorch) and each ONNX variant taking turns in every round, medians after
    one warm-up each; real-time factor = synthesis seconds / audio seconds."""
    ids = max(utts, key=lambda u: u.shape[1])
    runners = {"pytorch": lambda: module.reference(ids, module.scales)}
    for variant, sess in sessions.items():
        runners[f"onnx-{variant}"] = (lambda s: lambda: run_session(s, waveform_feeds(ids, module.scales))["output"][0])(sess)
    times: dict[str, list[float]] = {k: [] for k in runners}
    audio: dict[str, list[float]] = {k: [] for k in runners}
    for run in runners.values():
        run()
    for _ in range(repeats):
        for label, run in runners.items():
            t0 = time.perf_counter()
            wave = run()
            times[label].append(time.perf_counter() - t0)
            audio[label].append(wave.shape[-1] / module.sampling_rate)
    rows = []
    for label in runners:
        sec, aud = statistics.median(times[label]), statistics.median(audio[label])
        rows.append({"model": label, "seconds": round(sec, 4), "audio_seconds": round(aud, 3),
                     "real_time_factor": round(sec / aud, 4) if aud else None, "size_bytes": sizes[label]})
    return {"phonemes": int(ids.shape[1]), "repeats": repeats, "threads": torch.get_num_threads(),
            "scales": list(module.scales), "synthesis": rows}


def write_synthesis_report(out: Path, report: dict[str, Any], manifest: dict[str, Any]) -> None:
    """export_report.json and export_report.md for a waveform (TTS) export."""
    from ..evaluation.report import write_json

    write_json(out / "export_report.json", {**report, "manifest": manifest})
    lines = [f"# ONNX export of `{manifest['recipe']}` ({manifest['task']})", "",
             f"Exporter: {manifest['exporter']}, opset {manifest['opset']}; ONNX Runtime "
             f"{manifest['versions']['onnxruntime']}, torch {manifest['versions']['torch']}. {manifest['note']}.", "",
             f"One sentence ({report['phonemes']} phoneme ids) at the voice's scales {report['scales']}, median of "
             f"{report['repeats']} rounds (models taking turns), {report['threads']} thread(s) for torch and ORT alike:", "",
             "| model | synthesis (s) | audio (s) | real-time factor | size (MB) |", "|---|---|---|---|---|"]
    for r in report["synthesis"]:
        lines.append(f"| {r['model']} | {r['seconds']:.3f} | {r['audio_seconds']:.2f} | {r['real_time_factor']:.3f} | "
                     f"{r['size_bytes'] / 1e6:.2f} |")
    lines += ["", "Parity against the PyTorch model (noise scales 0, one validation sentence at a time):", "",
              "| graph | sentences | max abs diff | equal lengths | passed |", "|---|---|---|---|---|"]
    for variant, p in manifest["parity"].items():
        lines.append(f"| onnx-{variant} | {p['samples']} | {p['max_abs_diff_all']:.3g} | {p['agreement']:.2%} | "
                     f"{'yes' if p['passed'] else 'no'} |")
    (out / "export_report.md").write_text("\n".join(lines) + "\n")


def write_export_report(out: Path, report: dict[str, Any], manifest: dict[str, Any]) -> None:
    """export_report.json, export_report.md (a table) and export_report.png (three bar charts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation.report import write_json

    write_json(out / "export_report.json", {**report, "manifest": manifest})
    metric, split = report["main_metric"], report["split"]
    lines = [f"# ONNX export of `{manifest['recipe']}` ({manifest['task']})", "",
             f"Exporter: {manifest['exporter']}, opset {manifest['opset']}; ONNX Runtime "
             f"{manifest['versions']['onnxruntime']}, torch {manifest['versions']['torch']}. {manifest['note']}.",
             f"Adapter merged into the base: {'yes' if manifest['adapter_merged'] else 'no (full model)'}.", "",
             f"| model | {split} {metric} | latency batch 1 (ms) | latency batch 32 (ms) | size (MB) |",
             "|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['metrics'][metric]:.4f} | {r['latency_ms_batch1']:.2f} | "
                     f"{r['latency_ms_batch32']:.2f} | {r['size_bytes'] / 1e6:.2f} |")
    lines += ["", f"{report['samples']} {split} samples, evaluated through the task's own metrics; latency is the "
              f"median of the task's evaluation forward on one batch (models taking turns each round), "
              f"{report['threads']} thread(s) for torch and ORT alike. PyTorch size: parameters and buffers in memory; ONNX: file sizes.", "",
              "Parity against PyTorch on the run's validation samples:", "",
              "| graph | samples | max abs diff | agreement | passed |", "|---|---|---|---|---|"]
    for variant, p in report["parity"].items():
        lines.append(f"| onnx-{variant} | {p['samples']} | {p['max_abs_diff_all']:.3g} | "
                     f"{p['agreement']:.2%} of {p['compared']} {p['compared_what']} | {'yes' if p['passed'] else 'no'} |")
    (out / "export_report.md").write_text("\n".join(lines) + "\n")

    names = [r["model"] for r in report["rows"]]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = [([r["metrics"][metric] for r in report["rows"]], f"{split} {metric}"),
              (None, "latency (ms)"), ([r["size_bytes"] / 1e6 for r in report["rows"]], "size (MB)")]
    for ax, (values, title) in zip(axes, panels):
        if values is None:
            x = range(len(names))
            ax.bar([i - 0.2 for i in x], [r["latency_ms_batch1"] for r in report["rows"]], 0.4, label="batch 1")
            ax.bar([i + 0.2 for i in x], [r["latency_ms_batch32"] for r in report["rows"]], 0.4, label="batch 32")
            ax.set_xticks(list(x), names)
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.bar(names, values, color=["#777", "#1f77b4", "#ff7f0e"][: len(names)])
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"{manifest['recipe']}: PyTorch vs ONNX Runtime")
    fig.tight_layout()
    fig.savefig(out / "export_report.png", dpi=110)
    plt.close(fig)
