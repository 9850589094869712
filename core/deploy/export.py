"""ONNX export of a finished run: ``omnitune export RUN_DIR --format onnx [--quantize int8]``.

The run's best model (an adapter run merged into its base first) is traced with
``torch.onnx.export(..., dynamo=False)``: the TorchScript exporter takes the ``dynamic_axes`` of
:data:`EXPORTS` directly and needs no package beyond the ``onnx`` extra (the torch.export-based
exporter, torch's default since 2.9, needs onnxscript, which the extra does not pin). Optimum's
exporter (optimum-onnx 0.1.0, the only release) requires transformers < 4.58 and would downgrade
ours, so it is not used.

After every export a parity check runs ONNX Runtime against PyTorch on the run's own validation
samples (the datasets rebuilt from the recipe, as ``omnitune eval`` does); a difference above the
tolerance fails the export. ``quantize="int8"`` adds ORT dynamic quantisation (int8 weights,
activations quantised at run time). The export report compares the PyTorch, ONNX fp32 and ONNX int8
models on the run's test split through the task's own metrics, with batch-1 and batch-32 latency
and file sizes. The folder is self-contained: graphs, tokenizer/processor, labels, the recipe and
a manifest (``omnitune_export.json``) with the opset, inputs, outputs and dynamic axes.

The text-to-speech generator (``runtime: waveform``) is traced through the task's own wrapper
(speech/tts_export.py: Piper's inputs ``input``, ``input_lengths``, ``scales``); its parity check
compares each held-out sentence's waveform with ``VitsModel.forward`` at noise scales 0 (equal
lengths, max abs difference), and its report is synthesis time and real-time factor instead of
task metrics (a generator graph has no posterior to score mel L1 with). int8 is refused for it.
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base.errors import OmnituneError
from ..deploy.onnx_predict import MANIFEST, RECIPE, CachedDecoder, greedy_decode, run_session, session

OPSET = 17  # ORT 1.32 runs it fully; the TorchScript exporter's best-tested opset
FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
# fp32 graphs must reproduce PyTorch to this absolute difference on every output value, and
# agree on at least this share of predicted labels/tokens; an int8 graph only on the share.
DEFAULT_ATOL = 1e-3
DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_INT8_MIN_AGREEMENT = 0.90

BATCH_SEQ = {0: "batch", 1: "sequence"}
BATCH_PHONEMES = {0: "batch", 1: "phonemes"}
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Graph:
    """One ONNX graph: its role (file stem), inputs in call order (those the batch lacks are left
    out, e.g. token_type_ids for tokenizers without them), outputs and dynamic axes by name."""

    role: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    axes: dict[str, dict[int, str]]


@dataclass(frozen=True)
class ExportSpec:
    """How a task's model is exported and run: ``named`` (keyword inputs, named outputs: Hugging
    Face heads), ``tensor`` (one tensor in, logits out: timm/torchvision), ``seq2seq`` (encoder and
    decoder graphs with greedy decoding: Whisper), ``waveform`` (phoneme ids, their lengths and the
    synthesis scales in, a waveform out: the VITS generator, Piper's graph signature)."""

    runtime: str
    graphs: tuple[Graph, ...]
    note: str
    # "static" (calibrated on validation samples) where it pays off: convolutions; else "dynamic";
    # "none": --quantize int8 is refused with ``int8_why`` (measured).
    int8: str = "dynamic"
    int8_why: str = ""
    # Graphs whose cache inputs/outputs depend on the decoder's layer count: layers -> graphs.
    layered: Any = None
    # The task method that builds the module to trace from the model (``waveform``: the task's
    # generator wrapper, e.g. speech/tts_export.py); the core never imports a domain package.
    module: str | None = None

    def graphs_for(self, model: nn.Module) -> tuple[Graph, ...]:
        return self.layered(model.config.decoder_layers) if self.layered else self.graphs


def _text(outputs: tuple[str, ...], out_axes: dict[int, str], inputs: tuple[str, ...] = TEXT_INPUTS) -> Graph:
    return Graph("model", inputs, outputs, {**{n: BATCH_SEQ for n in inputs}, **{o: out_axes for o in outputs}})


def kv_names(prefix: str, layers: int) -> tuple[str, ...]:
    """Cache tensor names, layer by layer: ``past.0.key``, ``past.0.value``, ``past.1.key``, ..."""
    return tuple(f"{prefix}.{i}.{kv}" for i in range(layers) for kv in ("key", "value"))


def seq2seq_graphs(layers: int) -> tuple[Graph, ...]:
    """Encoder; decoder over the prefix returning logits, the self-attention cache (``present.*``)
    and the cross-attention cache (``cross.*``, fixed for the utterance); decoder with past: one new
    token, the caches in, logits and the grown self-attention cache out. Caches are [batch, heads,
    length, head_dim]."""
    b, dec, enc = {0: "batch"}, {0: "batch", 1: "decoder_sequence"}, {0: "batch", 1: "encoder_sequence"}
    present, cross, past = kv_names("present", layers), kv_names("cross", layers), kv_names("past", layers)
    cache = {**{n: {0: "batch", 2: "decoder_sequence"} for n in present},
             **{n: {0: "batch", 2: "encoder_sequence"} for n in cross}}
    return (
        Graph("encoder", ("input_features",), ("last_hidden_state",),
              {"input_features": b, "last_hidden_state": enc}),
        Graph("decoder", ("decoder_input_ids", "encoder_hidden_states"), ("logits", *present, *cross),
              {"decoder_input_ids": dec, "encoder_hidden_states": enc, "logits": dec, **cache}),
        Graph("decoder_with_past", ("decoder_input_ids", *past, *cross), ("logits", *present),
              {"decoder_input_ids": {0: "batch", 1: "new_tokens"}, "logits": {0: "batch", 1: "new_tokens"},
               **{n: {0: "batch", 2: "past_sequence"} for n in past},
               **{n: {0: "batch", 2: "encoder_sequence"} for n in cross},
               **{n: {0: "batch", 2: "total_sequence"} for n in present}}),
    )


# The one per-task table of export knowledge. A task missing here gets a one-line error naming
# the tasks that export.
EXPORTS: dict[str, ExportSpec] = {
    "text-classification": ExportSpec("named", (_text(("logits",), {0: "batch"}),),
                                      "sequence classifier: logits [batch, labels]"),
    "token-classification": ExportSpec("named", (_text(("logits",), BATCH_SEQ),),
                                       "token classifier: logits [batch, sequence, labels]"),
    "question-answering": ExportSpec("named", (_text(("start_logits", "end_logits"), BATCH_SEQ),),
                                     "extractive QA: start and end logits [batch, sequence]"),
    "causal-lm": ExportSpec("named", (_text(("logits",), BATCH_SEQ, ("input_ids", "attention_mask")),),
                            "decoder LM without key/value cache: full-sequence logits (scoring)"),
    "image-classification": ExportSpec(
        "tensor", (Graph("model", ("pixel_values",), ("logits",),
                         {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}),),
        "image classifier: pixel_values [batch, 3, H, W] at the trained size -> logits", int8="static"),
    "speech-recognition": ExportSpec(
        "seq2seq", (), "Whisper: encoder, decoder (first step: logits and the key/value cache) and decoder "
        "with past key values (one token per step)", layered=lambda n: seq2seq_graphs(n)),
    "text-to-speech": ExportSpec(
        "waveform", (Graph("model", ("input", "input_lengths", "scales"), ("output", "output_lengths"),
                           {"input": BATCH_PHONEMES, "input_lengths": {0: "batch"},
                            "output": {0: "batch", 1: "samples"}, "output_lengths": {0: "batch"}}),),
        "VITS generator (text encoder, stochastic duration predictor, length regulation, flow in reverse, "
        "HiFi-GAN decoder): phoneme ids [batch, phonemes], input_lengths [batch] and scales [3] (noise, "
        "length, duration noise) -> waveform [batch, samples] and output_lengths [batch]", module="onnx_generator",
        int8="none", int8_why="ONNX Runtime's dynamic int8 made the Joe voice 2.7x slower than fp32 (the decoder is "
        "convolutions; ConvInteger has no fast CPU kernel) and changed its durations (62720 -> 61952 samples), and "
        "MatMul-only int8 saved 4% of the size at the same speed; export in fp32"),
}


def export_spec(task_name: str) -> ExportSpec:
    if task_name not in EXPORTS:
        raise OmnituneError(f"omnitune export: task {task_name!r} has no ONNX export "
                            f"(tasks that export: {', '.join(sorted(EXPORTS))})")
    return EXPORTS[task_name]


# ----------------------------------------------------------------------------- torch side
class _Named(nn.Module):
    """Positional tensors in (tracing needs them), the named outputs of a Hugging Face head out."""

    def __init__(self, model: nn.Module, inputs: list[str], outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, *tensors: torch.Tensor):
        out = self.model(**dict(zip(self.inputs, tensors)))
        return tuple(out[n] for n in self.outputs)


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.model.get_encoder()(input_features).last_hidden_state


def _flat_caches(cache, layers: int, cross: bool = True) -> list[torch.Tensor]:
    out = []
    for part in ([cache.self_attention_cache, cache.cross_attention_cache] if cross else [cache.self_attention_cache]):
        for i in range(layers):
            out += [part.layers[i].keys, part.layers[i].values]
    return out


class _Decoder(nn.Module):
    """The decoder over whole token sequences: logits, then its self- and cross-attention caches."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.layers = model, model.config.decoder_layers

    def forward(self, decoder_input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor):
        # An explicit all-ones mask: without one, transformers looks for packed sequences with
        # torch.diff, which has no ONNX symbolic.
        out = self.model(encoder_outputs=(encoder_hidden_states,), decoder_input_ids=decoder_input_ids,
                         decoder_attention_mask=torch.ones_like(decoder_input_ids), use_cache=True)
        return (out.logits, *_flat_caches(out.past_key_values, self.layers))


class _DecoderWithPast(nn.Module):
    """New tokens with the caches as flat tensors in: logits and the grown self-attention cache out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.layers = model, model.config.decoder_layers

    def forward(self, decoder_input_ids: torch.Tensor, *caches: torch.Tensor):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        own, cross = DynamicCache(), DynamicCache()
        n = self.layers
        for i in range(n):
            own.update(caches[2 * i], caches[2 * i + 1], i)
            cross.update(caches[2 * n + 2 * i], caches[2 * n + 2 * i + 1], i)
        mask = torch.ones((decoder_input_ids.shape[0], caches[0].shape[2] + decoder_input_ids.shape[1]),
                          dtype=torch.long)
        # encoder_outputs is only a placeholder: every cross-attention reads its cached keys/values.
        out = self.model(encoder_outputs=(caches[2 * n],), decoder_input_ids=decoder_input_ids,
                         past_key_values=EncoderDecoderCache(own, cross), decoder_attention_mask=mask, use_cache=True)
        return (out.logits, *_flat_caches(out.past_key_values, n, cross=False))


def _decoding(task, model: nn.Module) -> dict[str, Any]:
    """Whisper's greedy decoding settings: the tokenizer's prefix (start of transcript, language and
    task tokens when multilingual, no-timestamps), EOS, and the checkpoint's suppressed tokens."""
    gen = getattr(model, "generation_config", None)
    tokenizer = task.processor.tokenizer
    eos = (gen.eos_token_id if gen is not None and gen.eos_token_id is not None else model.config.eos_token_id)
    return {"prefix": [int(t) for t in tokenizer.prefix_tokens], "eos_token_id": int(eos),
            "suppress_tokens": [int(t) for t in (getattr(gen, "suppress_tokens", None) or [])],
            "begin_suppress_tokens": [int(t) for t in (getattr(gen, "begin_suppress_tokens", None) or [])],
            "max_new_tokens": int(task.model_cfg.max_new_tokens)}


def _modules_and_examples(spec: ExportSpec, model: nn.Module, batch: dict[str, Any],
                          decoding: dict[str, Any] | None) -> list[tuple[Graph, nn.Module, tuple[str, ...], tuple]]:
    """(graph, torch module to trace, input names used, example inputs) per graph."""
    if spec.runtime == "seq2seq":
        enc, dec, past = _Encoder(model).eval(), _Decoder(model).eval(), _DecoderWithPast(model).eval()
        feats = batch["input_features"]
        ids = torch.tensor([decoding["prefix"] + [decoding["prefix"][-1]]] * feats.shape[0], dtype=torch.long)
        with torch.no_grad():
            hidden = enc(feats)
            caches = dec(ids, hidden)[1:]
        step = ids[:, -1:]
        g_enc, g_dec, g_past = spec.graphs_for(model)
        return [(g_enc, enc, g_enc.inputs, (feats,)), (g_dec, dec, g_dec.inputs, (ids, hidden)),
                (g_past, past, g_past.inputs, (step, *caches))]
    (graph,) = spec.graphs
    names = tuple(n for n in graph.inputs if n in batch)
    if not names:
        raise OmnituneError(f"the task's batches hold none of the inputs {graph.inputs} the export needs")
    module = _Named(model, list(names), graph.outputs).eval() if spec.runtime == "named" else model
    return [(graph, module, names, tuple(batch[n] for n in names))]


def _export_graph(graph: Graph, module: nn.Module, names: tuple[str, ...], example: tuple, path: Path,
                  opset: int, fold: bool = True) -> dict[str, Any]:
    import warnings

    axes = {k: v for k, v in graph.axes.items() if k in names or k in graph.outputs}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and transformers' tracer warnings about
        # Python booleans: the parity check below is what tells whether the trace generalises.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), input_names=list(names), output_names=list(graph.outputs),
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=fold)
    module.eval()  # the exporter restores the training flag it found; keep evaluating in eval mode
    import onnx

    onnx.checker.check_model(str(path))
    return {"inputs": list(names), "outputs": list(graph.outputs), "dynamic_axes": {k: {str(a): n for a, n in v.items()}
                                                                                     for k, v in axes.items()}}


# ----------------------------------------------------------------------------- parity
def _first_batches(task, dataset, n: int, batch_size: int) -> list[dict[str, Any]]:
    idx = list(range(min(n, len(dataset))))
    return [task.collate([dataset[i] for i in idx[s:s + batch_size]]) for s in range(0, len(idx), batch_size)]


def _predicted(name: str, value: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Predicted labels/positions of one output, only where they count: argmax over the last
    axis; token-level outputs [batch, sequence, labels] at the attention mask's positions."""
    pred = value.float().argmax(-1)
    if value.ndim == 3 and "attention_mask" in batch:
        return pred[batch["attention_mask"].bool()]
    return pred.reshape(-1)


def _agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, int]:
    x, y = torch.cat(a), torch.cat(b)
    return (float((x == y).float().mean()) if len(x) else 1.0), int(len(x))


def _generated(ids_a: torch.Tensor, ids_b: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated tokens (after the prefix) of two decodings, padded to one length with -1."""
    width = max(ids_a.shape[1], ids_b.shape[1])

    def pad(t):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1)[:, start:].reshape(-1)

    return pad(ids_a), pad(ids_b)


@torch.no_grad()
def parity(spec: ExportSpec, torch_parts: list[tuple[Graph, nn.Module, tuple[str, ...], tuple]], sessions: dict,
           batches: list[dict[str, Any]], decoding: dict[str, Any] | None) -> dict[str, Any]:
    """Max absolute difference per output and the agreement of predicted labels (tokens for
    Whisper's greedy decoding, run by the same loop on both sides) between PyTorch and ORT."""
    if spec.runtime == "waveform":
        (_, module, _, _), = torch_parts
        return waveform_parity(module, sessions["model"], utterances(batches), module.scales[1])
    diffs: dict[str, float] = {}
    preds_t: list[torch.Tensor] = []
    preds_o: list[torch.Tensor] = []
    samples = 0

    def note(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        diffs[name] = max(diffs.get(name, 0.0), float((a.float() - b.float()).abs().max()))

    for batch in batches:
        if spec.runtime == "seq2seq":
            (_, enc, _, _), (_, dec, _, _), _ = torch_parts
            feats = batch["input_features"]
            samples += feats.shape[0]
            h_t = enc(feats)
            h_o = run_session(sessions["encoder"], {"input_features": feats})["last_hidden_state"]
            note("last_hidden_state", h_t, h_o)
            ids_t = greedy_decode(lambda ids: dec(ids, h_t)[0], feats.shape[0], decoding)
            ids_o = greedy_decode(CachedDecoder(sessions, h_o), feats.shape[0], decoding)
            # Logits on the same (PyTorch's) tokens, so a token flip cannot inflate the diff: the
            # decoder over the whole sequence, and step by step through the cache.
            full_t = dec(ids_t, h_t)[0]
            note("logits", full_t, run_session(sessions["decoder"], {
                "decoder_input_ids": ids_t, "encoder_hidden_states": h_t})["logits"])
            cached = CachedDecoder(sessions, h_t)
            start = len(decoding["prefix"])
            steps = [cached(ids_t[:, :start])] + [cached(ids_t[:, :t + 1])[:, -1:] for t in range(start, ids_t.shape[1])]
            note("logits_with_past", full_t, torch.cat(steps, dim=1))
            a, b = _generated(ids_t, ids_o, len(decoding["prefix"]))
            keep = (a != -1) | (b != -1)
            preds_t.append(a[keep])
            preds_o.append(b[keep])
            continue
        (graph, module, names, _) = torch_parts[0]
        inputs = tuple(batch[n] for n in names)
        samples += inputs[0].shape[0]
        out_t = module(*inputs)
        out_t = out_t if isinstance(out_t, tuple) else (out_t,)
        out_o = run_session(sessions["model"], dict(zip(names, inputs)))
        for name, t in zip(graph.outputs, out_t):
            note(name, t, out_o[name])
            preds_t.append(_predicted(name, t, batch))
            preds_o.append(_predicted(name, out_o[name], batch))
    agree, counted = _agreement(preds_t, preds_o)
    return {"samples": samples, "max_abs_diff": diffs, "max_abs_diff_all": max(diffs.values(), default=0.0),
            "agreement": agree, "compared": counted,
            "compared_what": "generated tokens" if spec.runtime == "seq2seq" else "predicted labels"}


# ----------------------------------------------------------------------------- waveform (VITS)
def utterances(batches: list[dict[str, Any]]) -> list[torch.Tensor]:
    """Each sample's phoneme ids [1, T] without padding, from collated batches (input_ids, attention_mask)."""
    out = []
    for b in batches:
        for ids, mask in zip(b["input_ids"], b["attention_mask"]):
            out.append(ids[: int(mask.sum())].unsqueeze(0))
    return out


def waveform_feeds(ids: torch.Tensor, scales: list[float]) -> dict[str, torch.Tensor]:
    """One utterance (ids [1, T]) as the generator graph's inputs."""
    return {"input": ids, "input_lengths": torch.tensor([ids.shape[1]]),
            "scales": torch.tensor(scales, dtype=torch.float32)}


def _waveform_parts(spec: ExportSpec, task, model: nn.Module, example: dict[str, Any]
                    ) -> list[tuple[Graph, nn.Module, tuple[str, ...], tuple]]:
    """The task's generator wrapper traced on one utterance (the first validation sample) at the
    voice's own scales; the parity check's utterances of other lengths show that the trace keeps
    the phoneme and sample axes dynamic."""
    (graph,) = spec.graphs
    module = getattr(task, spec.module)(model).eval()
    ids = utterances([example])[0]
    return [(graph, module, graph.inputs, tuple(waveform_feeds(ids, module.scales)[n] for n in graph.inputs))]


@torch.no_grad()
def waveform_parity(module: nn.Module, sess, utts: list[torch.Tensor], length_scale: float) -> dict[str, Any]:
    """ORT against the model's own forward (``module.reference``: transformers' VitsModel) with the
    noise scales at 0, one utterance at a time: the share of equal lengths (in samples) and the
    largest absolute waveform difference over the utterances whose lengths agree."""
    scales = [0.0, float(length_scale), 0.0]
    diff, same = 0.0, 0
    for ids in utts:
        ref = module.reference(ids, scales)
        out = run_session(sess, waveform_feeds(ids, scales))
        got = out["output"][0, : int(out["output_lengths"][0])]
        if got.shape == ref.shape:
            same += 1
            diff = max(diff, float((got - ref).abs().max()))
    n = len(utts)
    return {"samples": n, "max_abs_diff": {"output": diff}, "max_abs_diff_all": diff,
            "agreement": same / n if n else 1.0, "compared": n, "compared_what": "waveform lengths",
            "scales": scales}


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


def parity_problems(result: dict[str, Any], variant: str, atol: float, min_agreement: float,
                    int8_min_agreement: float) -> list[str]:
    """What exceeds the tolerance: an fp32 graph must match every output value within ``atol`` and
    the predictions on ``min_agreement`` of them; an int8 graph (values change by design) only the
    predictions, on ``int8_min_agreement``."""
    bad = []
    if variant == "fp32" and result["max_abs_diff_all"] > atol:
        bad.append(f"outputs differ by up to {result['max_abs_diff_all']:.3g} (tolerance {atol:g})")
    limit = min_agreement if variant == "fp32" else int8_min_agreement
    if result["agreement"] < limit:
        bad.append(f"{result['compared_what']} agree on {result['agreement']:.1%} (needs {limit:.0%})")
    return bad


# ----------------------------------------------------------------------------- quantisation, metrics, timing
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


def _model_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def _latency_ms(task, models: list, batch: dict[str, Any], repeats: int) -> list[float]:
    """Median wall time per model of the task's evaluation forward on one batch (Whisper: with its
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


def _latency_batch(task, dataset, size: int) -> dict[str, Any]:
    n = len(dataset)
    return task.collate([dataset[i % n] for i in range(size)])


# ----------------------------------------------------------------------------- the export
@dataclass
class ExportResult:
    out_dir: Path
    manifest: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)


def _copy_support_files(model_dir: Path, out_dir: Path) -> list[str]:
    """Tokenizer/processor, labels and configs from the run's model folder: everything but weights."""
    copied = []
    for p in sorted(model_dir.iterdir()):
        if p.is_file() and p.suffix not in (".safetensors", ".bin", ".pt", ".pth") and not p.name.startswith("adapter_"):
            shutil.copy2(p, out_dir / p.name)
            copied.append(p.name)
    return copied


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, *, fmt: str = "onnx",
               quantize: str | None = None, adapter: str | None = None, opset: int = OPSET,
               atol: float = DEFAULT_ATOL, min_agreement: float = DEFAULT_MIN_AGREEMENT,
               int8_min_agreement: float = DEFAULT_INT8_MIN_AGREEMENT, parity_samples: int = 32,
               calibration_samples: int = 64, evaluate: bool = True, latency_repeats: int = 10) -> ExportResult:
    """Export a finished run's model to ONNX, check parity, optionally quantise, and write the
    export report. Returns the folder and its manifest; raises OmnituneError on a parity failure."""
    from ..adapters import peft as peft_lib
    from ..api import MODEL_DIR, RECIPE_FILE, _load_run, user_extra_metrics
    from ..evaluation.report import write_json
    from ..loop.trainer import default_eval_batch_size, evaluate_model

    if fmt not in FORMATS:
        raise OmnituneError(f"omnitune export: --format {fmt!r} is not supported (formats: {', '.join(FORMATS)})")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise OmnituneError(f"omnitune export: --quantize {quantize!r} is not supported (choose: {', '.join(QUANTIZATIONS)})")
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file():
        raise OmnituneError(f"{run_dir}: not a run folder (no {RECIPE_FILE})")
    from ..base.recipe import read_yaml

    spec = export_spec(read_yaml(run_dir / RECIPE_FILE).get("task", ""))  # fails before any model loads
    if quantize == "int8" and spec.int8 == "none":
        raise OmnituneError(f"omnitune export: --quantize int8 is not offered for this task: {spec.int8_why}")
    rec, task, model = _load_run(run_dir, adapter)
    merged = peft_lib.is_adapter_wrapper(model)
    if merged:  # adapters folded into the base weights: one plain graph, no peft at run time
        model = peft_lib.merge_adapter(model, adapter)
    model = peft_lib.task_model(model).eval()
    out = Path(out_dir) if out_dir else run_dir / f"export-{fmt}"
    out.mkdir(parents=True, exist_ok=True)

    bundle = task.build_datasets()  # seeded as in training: the run's own validation and test samples
    decoding = _decoding(task, model) if spec.runtime == "seq2seq" else None
    example = task.collate([bundle.validation[i] for i in range(min(2, len(bundle.validation)))])
    if spec.runtime == "waveform":
        parts = _waveform_parts(spec, task, model, example)
    else:
        parts = _modules_and_examples(spec, model, example, decoding)
    graphs, files = {}, {"fp32": {}}
    t0 = time.perf_counter()
    for graph, module, names, args in parts:
        name = f"{graph.role}.onnx"
        graphs[graph.role] = _export_graph(graph, module, names, args, out / name, opset)
        files["fp32"][graph.role] = name
    export_seconds = time.perf_counter() - t0
    copied = _copy_support_files(run_dir / MODEL_DIR, out)
    shutil.copy2(run_dir / RECIPE_FILE, out / RECIPE)
    hf_config = getattr(model, "config", None)
    if merged and hf_config is not None and hasattr(hf_config, "save_pretrained"):
        hf_config.save_pretrained(out)  # the merged model's own config beside its graphs
    if getattr(model, "generation_config", None) is not None and not (out / "generation_config.json").exists():
        model.generation_config.save_pretrained(out)
    int8_method = None
    if quantize == "int8":
        files["int8"] = {}
        calibration = None
        if spec.int8 == "static":
            (graph, _, names, _), = parts
            calibration = [{n: b[n].numpy() for n in names}
                           for b in _first_batches(task, bundle.validation, calibration_samples, 8)]
        for role, name in files["fp32"].items():
            files["int8"][role] = f"{role}.int8.onnx"
            int8_method = quantize_int8(out / name, out / files["int8"][role], calibration)

    import onnxruntime

    manifest: dict[str, Any] = {
        "format": "onnx", "task": rec.task, "runtime": spec.runtime, "note": spec.note, "opset": opset,
        "exporter": "torch.onnx.export (TorchScript, dynamo=False)", "source_run": str(run_dir.resolve()),
        "recipe": rec.name, "base_model": rec.model.name, "adapter_merged": merged, "adapter": adapter,
        "graphs": graphs, "files": files, "decoding": decoding, "support_files": copied,
        "quantization": {"int8": f"onnxruntime.quantization, {int8_method}"} if quantize else None,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "onnx": __import__("onnx").__version__},
        "export_seconds": round(export_seconds, 2),
        "tolerance": {"atol": atol, "min_agreement": min_agreement, "int8_min_agreement": int8_min_agreement},
    }
    if spec.runtime == "waveform":  # what `predict --onnx` feeds as scales, and the WAV sample rate
        (_, generator, _, _), = parts
        manifest["synthesis"] = {"scales": list(generator.scales), "sampling_rate": generator.sampling_rate,
                                 "scales_order": ["noise_scale", "length_scale", "noise_scale_duration"],
                                 "traced_phonemes": int(parts[0][3][0].shape[1])}

    # --- parity on the run's validation samples: always, for every variant written
    batches = _first_batches(task, bundle.validation, parity_samples, 8)
    manifest["parity"] = {}
    failures = []
    for variant, names in files.items():
        sessions = {role: session(out / n) for role, n in names.items()}
        result = parity(spec, parts, sessions, batches, decoding)
        bad = parity_problems(result, variant, atol, min_agreement, int8_min_agreement)
        result["passed"] = not bad
        manifest["parity"][variant] = result
        if bad:
            failures.append(f"ONNX {variant}: " + " and ".join(bad))
    write_json(out / MANIFEST, manifest)
    if failures:
        raise OmnituneError(f"omnitune export: parity check failed against PyTorch on "
                            f"{manifest['parity']['fp32']['samples']} validation samples of {run_dir}: "
                            f"{'; '.join(failures)} (graphs kept in {out} for inspection)")

    result = ExportResult(out, manifest)
    if evaluate and spec.runtime == "waveform":  # no task metrics from a generator graph: synthesis speed
        (_, generator, _, _), = parts
        sizes = {"pytorch": _model_bytes(generator)}
        sizes.update({f"onnx-{v}": sum((out / n).stat().st_size for n in names.values()) for v, names in files.items()})
        result.report = synthesis_report(generator, {v: session(out / names["model"]) for v, names in files.items()},
                                         sizes, utterances(batches), max(3, latency_repeats // 3))
        write_synthesis_report(out, result.report, manifest)
    elif evaluate:
        dataset = bundle.test if bundle.test is not None else bundle.validation
        split = "test" if bundle.test is not None else "validation"
        batch_size = default_eval_batch_size(rec.train.batch_size, rec.train.eval_batch_size)
        extra = user_extra_metrics(rec)
        from ..deploy.onnx_predict import load_ort_model

        candidates: list[tuple[str, Any, int]] = [("pytorch", model, _model_bytes(model))]
        for variant, names in files.items():
            size = sum((out / n).stat().st_size for n in names.values())
            candidates.append((f"onnx-{variant}", load_ort_model(out, manifest, variant), size))
        rows = []
        for label, m, size in candidates:
            with torch.no_grad():
                metrics, _, _ = evaluate_model(task, m, dataset, batch_size, torch.device("cpu"), extra_metrics=extra)
            rows.append({"model": label, "metrics": metrics, "size_bytes": size})
        models = [m for _, m, _ in candidates]
        for key, size, reps in (("latency_ms_batch1", 1, latency_repeats), ("latency_ms_batch32", 32,
                                                                           max(3, latency_repeats // 3))):
            for row, ms in zip(rows, _latency_ms(task, models, _latency_batch(task, dataset, size), reps)):
                row[key] = round(ms, 3)
        result.report = {"split": split, "samples": len(dataset), "main_metric": task.main_metric,
                         "main_metric_mode": task.main_metric_mode, "threads": torch.get_num_threads(),
                         "rows": rows, "parity": manifest["parity"]}
        write_export_report(out, result.report, manifest)
        if out.resolve().parent == run_dir.resolve() and (run_dir / "metrics.json").is_file():
            from ..evaluation.report import update_model_card

            update_model_card(run_dir)  # the run's model card gains the export table
    return result


# ----------------------------------------------------------------------------- report
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


# ----------------------------------------------------------------------------- adapter libraries
def adapter_tensors(module: nn.Module, graph_names: set[str], exported: str, name: str) -> dict[str, Any]:
    """Adapter ``name``'s weights under the initializer names the graph gave adapter ``exported``'s
    (peft names each adapter's parameters ``...lora_A.<adapter>.weight``, ``modules_to_save.<adapter>...``)."""
    params = dict(module.named_parameters())
    out = {}
    for pname in params:
        if f".{exported}." in pname and pname in graph_names:
            own = pname.replace(f".{exported}.", f".{name}.")
            if own not in params:
                raise OmnituneError(f"adapter {name!r} has no {own} (adapters of one export must share targets)")
            out[pname] = params[own].detach().cpu().float().contiguous().numpy()
    return out


def _weights_to_inputs(path: Path, names: set[str]) -> set[str]:
    """Turn the initializers named ``names`` into float graph inputs of the same shape; returns them."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(path))
    moved = [i for i in m.graph.initializer if i.name in names]
    for init in moved:
        m.graph.initializer.remove(init)
        m.graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT, list(init.dims)))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return {i.name for i in moved}


def export_adapters(source: str | Path, out_dir: str | Path | None = None, *, opset: int = OPSET,
                    atol: float = DEFAULT_ATOL, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                    parity_samples: int = 32) -> ExportResult:
    """An adapter library (or a PEFT run) as one ONNX graph of the base with the first adapter,
    plus one weights file per adapter (``adapters/<name>.safetensors``: its LoRA matrices and head
    under the graph's initializer names), switched at session creation in ONNX Runtime (Olive's
    generate-adapter idea). Parity is checked per adapter against PyTorch with that adapter active.
    The adapters must share targets, rank and alpha: the LoRA scale is a constant of the graph."""
    import onnx
    import onnxruntime
    from safetensors.numpy import save_file

    from ..adapters import peft as peft_lib
    from ..api import MODEL_DIR, RECIPE_FILE, _load_run
    from ..base.recipe import read_yaml
    from ..evaluation.report import write_json

    source = Path(source)
    if not (source / RECIPE_FILE).is_file():
        raise OmnituneError(f"{source}: not a run folder or adapter library (no {RECIPE_FILE})")
    spec = export_spec(read_yaml(source / RECIPE_FILE).get("task", ""))
    if spec.runtime == "seq2seq":
        raise OmnituneError("omnitune export --all-adapters: one-graph tasks only (not the Whisper encoder/decoder)")
    rec, task, model = _load_run(source)
    if not peft_lib.is_adapter_wrapper(model) or not hasattr(model, "peft_config"):
        raise OmnituneError(f"{source}: no peft adapters to export one by one (use plain `omnitune export`)")
    names = list(model.peft_config)
    shape = {n: (sorted(model.peft_config[n].target_modules or []), getattr(model.peft_config[n], "r", None),
                 getattr(model.peft_config[n], "lora_alpha", None)) for n in names}
    if len({repr(v) for v in shape.values()}) > 1:
        raise OmnituneError(f"{source}: adapters differ in targets, rank or alpha ({shape}); export them one at a time")
    first = names[0]
    peft_lib.switch_adapter(model, first)
    model.eval()
    out = Path(out_dir) if out_dir else source / "export-onnx-adapters"
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    bundle = task.build_datasets()
    example = task.collate([bundle.validation[i] for i in range(min(2, len(bundle.validation)))])
    parts = _modules_and_examples(spec, peft_lib.task_model(model), example, None)
    (graph, module, used, args), = parts
    # The exported adapter's weights are traced as distinct random values (the exporter merges
    # initializers of equal value, e.g. untrained zero LoRA B matrices, which could not then be
    # swapped one by one), without constant folding (each stays named after its parameter), and
    # become graph inputs that each adapter's weights file feeds.
    own = {n: p for n, p in module.named_parameters() if f".{first}." in n}
    saved = {n: p.detach().clone() for n, p in own.items()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in own.values():
            p.copy_(torch.randn(p.shape, generator=gen))
    try:
        info = _export_graph(graph, module, used, args, out / "model.onnx", opset, fold=False)
    finally:
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(saved[n])
    graph_names = _weights_to_inputs(out / "model.onnx", set(own))
    _copy_support_files(source / MODEL_DIR, out)
    shutil.copy2(source / RECIPE_FILE, out / RECIPE)
    adapters = {}
    for name in names:
        tensors = adapter_tensors(module, graph_names, first, name)
        save_file(tensors, str(out / "adapters" / f"{name}.safetensors"))
        adapters[name] = {"file": f"adapters/{name}.safetensors", "tensors": len(tensors),
                          "bytes": (out / "adapters" / f"{name}.safetensors").stat().st_size}
    manifest: dict[str, Any] = {
        "format": "onnx", "task": rec.task, "runtime": spec.runtime, "note": spec.note, "opset": opset,
        "exporter": "torch.onnx.export (TorchScript, dynamo=False), no constant folding", "source_run": str(source.resolve()),
        "recipe": rec.name, "base_model": rec.model.name, "adapter_merged": False, "adapter": first,
        "graphs": {"model": info}, "files": {"fp32": {"model": "model.onnx"}}, "decoding": None,
        "adapters": adapters, "default_adapter": first, "quantization": None,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
        "tolerance": {"atol": atol, "min_agreement": min_agreement}, "parity": {}}
    batches = _first_batches(task, bundle.validation, parity_samples, 8)
    failures = []
    from ..deploy.onnx_predict import adapter_session

    for name in names:
        peft_lib.switch_adapter(model, name)
        result = parity(spec, parts, {"model": adapter_session(out, manifest, name)}, batches, None)
        bad = parity_problems(result, "fp32", atol, min_agreement, min_agreement)
        result["passed"] = not bad
        manifest["parity"][name] = result
        if bad:
            failures.append(f"adapter {name}: " + " and ".join(bad))
    write_json(out / MANIFEST, manifest)
    if failures:
        raise OmnituneError(f"omnitune export: adapter parity failed against PyTorch: {'; '.join(failures)} "
                            f"(kept in {out} for inspection)")
    return ExportResult(out, manifest)
