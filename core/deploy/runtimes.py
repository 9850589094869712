"""The torch side of an export, one runtime per kind of graph (core/base/exporting.py names them):
the modules that are traced and the example inputs they are traced on.

- ``named``: positional tensors in (tracing needs them), a Hugging Face head's named outputs out;
- ``tensor``: the model itself (one tensor in, logits out);
- ``encoder-decoder``: the encoder, the decoder over a prefix returning its self- and
  cross-attention caches, and the decoder with past (one token and the caches in);
- ``waveform``: the module the task builds (``ExportSpec.module``), traced on one utterance.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base.errors import OmnituneError
from ..base.exporting import ExportSpec, Graph

# (graph, torch module to trace, input names used, example inputs) per graph.
Part = tuple[Graph, nn.Module, tuple[str, ...], tuple]


class NamedOutputs(nn.Module):
    """Positional tensors in (tracing needs them), the named outputs of a Hugging Face head out."""

    def __init__(self, model: nn.Module, inputs: list[str], outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, *tensors: torch.Tensor):
        out = self.model(**dict(zip(self.inputs, tensors)))
        return tuple(out[n] for n in self.outputs)


class Encoder(nn.Module):
    """The encoder of an encoder-decoder model: its input in, the last hidden state out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.get_encoder()(features).last_hidden_state


def _flat_caches(cache, layers: int, cross: bool = True) -> list[torch.Tensor]:
    out = []
    for part in ([cache.self_attention_cache, cache.cross_attention_cache] if cross else [cache.self_attention_cache]):
        for i in range(layers):
            out += [part.layers[i].keys, part.layers[i].values]
    return out


class Decoder(nn.Module):
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


class DecoderWithPast(nn.Module):
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


def decoding_settings(spec: ExportSpec, task, model: nn.Module) -> dict[str, Any] | None:
    """Greedy decoding's settings from the task (``ExportSpec.decoding`` names its method) for an
    ``encoder-decoder`` export; None for the other runtimes."""
    if spec.runtime != "encoder-decoder":
        return None
    return dict(getattr(task, spec.decoding)(model))


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


def modules_and_examples(spec: ExportSpec, model: nn.Module, batch: dict[str, Any],
                         decoding: dict[str, Any] | None, task=None) -> list[Part]:
    """(graph, torch module to trace, input names used, example inputs) per graph. ``task`` is
    needed by the ``waveform`` runtime only (it builds the module to trace)."""
    if spec.runtime == "waveform":
        # The task's generator traced on one utterance (the first sample) at the voice's own scales;
        # the parity check's utterances of other lengths show that the trace keeps the phoneme and
        # sample axes dynamic.
        (graph,) = spec.graphs
        module = getattr(task, spec.module)(model).eval()
        ids = utterances([batch])[0]
        return [(graph, module, graph.inputs, tuple(waveform_feeds(ids, module.scales)[n] for n in graph.inputs))]
    if spec.runtime == "encoder-decoder":
        enc, dec, past = Encoder(model).eval(), Decoder(model).eval(), DecoderWithPast(model).eval()
        g_enc, g_dec, g_past = spec.graphs_for(model)
        feats = batch[g_enc.inputs[0]]
        ids = torch.tensor([decoding["prefix"] + [decoding["prefix"][-1]]] * feats.shape[0], dtype=torch.long)
        with torch.no_grad():
            hidden = enc(feats)
            caches = dec(ids, hidden)[1:]
        step = ids[:, -1:]
        return [(g_enc, enc, g_enc.inputs, (feats,)), (g_dec, dec, g_dec.inputs, (ids, hidden)),
                (g_past, past, g_past.inputs, (step, *caches))]
    (graph,) = spec.graphs
    names = tuple(n for n in graph.inputs if n in batch)
    if not names:
        raise OmnituneError(f"the task's batches hold none of the inputs {graph.inputs} the export needs")
    module = NamedOutputs(model, list(names), graph.outputs).eval() if spec.runtime == "named" else model
    return [(graph, module, names, tuple(batch[n] for n in names))]


def export_graph(graph: Graph, module: nn.Module, names: tuple[str, ...], example: tuple, path: Path,
                 opset: int, fold: bool = True) -> dict[str, Any]:
    """Trace ``module`` on ``example`` into ``path`` with torch.onnx's TorchScript exporter and check
    the file; returns the manifest's entry for the graph (inputs, outputs, dynamic axes)."""
    axes = {k: v for k, v in graph.axes.items() if k in names or k in graph.outputs}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and transformers' tracer warnings about
        # Python booleans: the parity check is what tells whether the trace generalises.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), input_names=list(names), output_names=list(graph.outputs),
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=fold)
    module.eval()  # the exporter restores the training flag it found; keep evaluating in eval mode
    import onnx

    onnx.checker.check_model(str(path))
    return {"inputs": list(names), "outputs": list(graph.outputs), "dynamic_axes": {k: {str(a): n for a, n in v.items()}
                                                                                     for k, v in axes.items()}}
