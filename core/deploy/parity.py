"""Parity of an exported model against PyTorch on the run's own validation samples: the largest
absolute difference per output and the share of equal predictions (labels, greedy tokens, or
waveform lengths), and what of it exceeds the tolerance."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..base.exporting import ExportSpec
from .onnx_predict import CachedDecoder, greedy_decode, run_session
from .runtimes import Part, utterances, waveform_feeds


def first_batches(task, dataset, n: int, batch_size: int) -> list[dict[str, Any]]:
    """The first ``n`` samples of ``dataset``, collated by the task in batches of ``batch_size``."""
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
def parity(spec: ExportSpec, torch_parts: list[Part], sessions: dict, batches: list[dict[str, Any]],
           decoding: dict[str, Any] | None) -> dict[str, Any]:
    """Max absolute difference per output and the agreement of predicted labels (tokens for an
    encoder-decoder's greedy decoding, run by the same loop on both sides) between PyTorch and ORT."""
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
        if spec.runtime == "encoder-decoder":
            (g_enc, enc, _, _), (_, dec, _, _), _ = torch_parts
            feats = batch[g_enc.inputs[0]]
            samples += feats.shape[0]
            h_t = enc(feats)
            h_o = run_session(sessions["encoder"], {g_enc.inputs[0]: feats})["last_hidden_state"]
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
            "compared_what": "generated tokens" if spec.runtime == "encoder-decoder" else "predicted labels"}


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
