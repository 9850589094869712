"""What a task declares about its ONNX export: the graphs, their inputs, outputs and dynamic axes,
and the runtime that traces and runs them. Pure data: no torch.onnx, no deploy import, so a task
builds its spec (``Exportable.export_spec()``, core/base/task.py) without pulling in the exporter.

The runtimes are named by what they run, never by a task (core/deploy/runtimes.py traces them):

- ``named``: keyword tensor inputs, named outputs (Hugging Face heads);
- ``tensor``: one tensor in, the first output out (timm/torchvision);
- ``encoder-decoder``: an encoder graph and decoder graphs with a key/value cache, run by greedy
  decoding (Whisper); the graphs depend on the decoder's layer count (``layered``);
- ``waveform``: phoneme ids, their lengths and the synthesis scales in, a waveform out (the VITS
  generator, Piper's graph signature), traced through a module the task builds (``module``).

>>> spec = ExportSpec("named", (text_graph(("logits",), {0: "batch"}),), "sequence classifier")
>>> spec.graphs[0].inputs, spec.graphs[0].axes["logits"]
(('input_ids', 'attention_mask', 'token_type_ids'), {0: 'batch'})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

RUNTIMES = ("named", "tensor", "encoder-decoder", "waveform")
INT8_MODES = ("dynamic", "static", "none")

BATCH = {0: "batch"}
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
    """How a task's model is exported and run: ``runtime`` (one of :data:`RUNTIMES`), its graphs
    and a one-line ``note`` for the manifest and report."""

    runtime: str
    graphs: tuple[Graph, ...]
    note: str
    # "static" (calibrated on validation samples) where it pays off: convolutions; else "dynamic";
    # "none": --quantize int8 is refused with ``int8_why`` (measured).
    int8: str = "dynamic"
    int8_why: str = ""
    # Graphs whose cache inputs/outputs depend on the decoder's layer count: layers -> graphs.
    layered: Callable[[int], tuple[Graph, ...]] | None = None
    # ``waveform``: the name of the task method that builds the module to trace from the model
    # (e.g. speech/tts_export.py's generator wrapper); the core never imports a domain package.
    module: str | None = None
    # ``encoder-decoder``: the name of the task method ``(model) -> dict`` giving greedy decoding's
    # settings: prefix (token ids), eos_token_id, suppress_tokens, begin_suppress_tokens, max_new_tokens.
    decoding: str | None = None

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"ExportSpec runtime {self.runtime!r}: choose one of {', '.join(RUNTIMES)}")
        if self.int8 not in INT8_MODES:
            raise ValueError(f"ExportSpec int8 {self.int8!r}: choose one of {', '.join(INT8_MODES)}")
        if self.runtime == "waveform" and not self.module:
            raise ValueError("ExportSpec runtime 'waveform' needs module= (the task method building the generator)")
        if self.runtime == "encoder-decoder" and not (self.layered and self.decoding):
            raise ValueError("ExportSpec runtime 'encoder-decoder' needs layered= and decoding=")

    def graphs_for(self, model: Any) -> tuple[Graph, ...]:
        return self.layered(model.config.decoder_layers) if self.layered else self.graphs


def text_graph(outputs: tuple[str, ...], out_axes: dict[int, str], inputs: tuple[str, ...] = TEXT_INPUTS) -> Graph:
    """The one graph of a text model: token inputs [batch, sequence] in, ``outputs`` out."""
    return Graph("model", inputs, outputs, {**{n: BATCH_SEQ for n in inputs}, **{o: out_axes for o in outputs}})


def kv_names(prefix: str, layers: int) -> tuple[str, ...]:
    """Cache tensor names, layer by layer: ``past.0.key``, ``past.0.value``, ``past.1.key``, ..."""
    return tuple(f"{prefix}.{i}.{kv}" for i in range(layers) for kv in ("key", "value"))


def encoder_decoder_graphs(layers: int, encoder_input: str = "input_features") -> tuple[Graph, ...]:
    """Encoder; decoder over the prefix returning logits, the self-attention cache (``present.*``)
    and the cross-attention cache (``cross.*``, fixed for the input); decoder with past: one new
    token, the caches in, logits and the grown self-attention cache out. Caches are [batch, heads,
    length, head_dim]."""
    b, dec, enc = BATCH, {0: "batch", 1: "decoder_sequence"}, {0: "batch", 1: "encoder_sequence"}
    present, cross, past = kv_names("present", layers), kv_names("cross", layers), kv_names("past", layers)
    cache = {**{n: {0: "batch", 2: "decoder_sequence"} for n in present},
             **{n: {0: "batch", 2: "encoder_sequence"} for n in cross}}
    return (
        Graph("encoder", (encoder_input,), ("last_hidden_state",),
              {encoder_input: b, "last_hidden_state": enc}),
        Graph("decoder", ("decoder_input_ids", "encoder_hidden_states"), ("logits", *present, *cross),
              {"decoder_input_ids": dec, "encoder_hidden_states": enc, "logits": dec, **cache}),
        Graph("decoder_with_past", ("decoder_input_ids", *past, *cross), ("logits", *present),
              {"decoder_input_ids": {0: "batch", 1: "new_tokens"}, "logits": {0: "batch", 1: "new_tokens"},
               **{n: {0: "batch", 2: "past_sequence"} for n in past},
               **{n: {0: "batch", 2: "encoder_sequence"} for n in cross},
               **{n: {0: "batch", 2: "total_sequence"} for n in present}}),
    )
