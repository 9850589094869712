"""Run an exported model with ONNX Runtime through the task's own code.

An :class:`OrtModel` answers the calls a task makes on its PyTorch model (``model(**inputs).logits``,
``model(pixels)``, Whisper's ``model.model.encoder(...)`` and ``model.generate(...)``), so the
task's ``forward``, ``predict_batch``, ``compute_metrics`` and ``predict`` run unchanged on the
exported graphs: the export report's metrics and ``omnitune predict --onnx`` go through exactly
the code that evaluates and serves the PyTorch model.

>>> from omnitune.core.deploy.onnx_predict import predict_onnx  # doctest: +SKIP
>>> predict_onnx("runs/my-run/export-onnx", ["a fine film"])  # doctest: +SKIP
[{'input': 'a fine film', 'label': 'pos', 'score': 0.93, 'scores': {...}}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.errors import OmnituneError

MANIFEST = "omnitune_export.json"
RECIPE = "recipe.yaml"
# Graph inputs a caller may omit, and the input whose shape their zeros take: transformers treats
# missing token_type_ids as all zeros (one segment).
OPTIONAL_ZEROS = {"token_type_ids": "input_ids"}


class Outputs(dict):
    """Named outputs reachable as attributes (``out.logits``) and items, like transformers' ModelOutput."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def session(path: Path, threads: int | None = None):
    """An ORT CPU session using as many intra-op threads as torch does (a fair latency comparison)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # ORT's warnings about unused initialisers are noise here
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class AdapterSession:
    """The base graph of a multi-adapter export with one adapter's weights fed as the graph inputs
    that hold them (inputs, not initializers: ORT would fold initializers at load time). Looks like
    an ORT session whose inputs are the task's own."""

    def __init__(self, sess, weights: dict[str, np.ndarray]) -> None:
        self.session, self.weights = sess, weights

    def get_inputs(self):
        return [i for i in self.session.get_inputs() if i.name not in self.weights]

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feeds):
        return self.session.run(names, {**feeds, **self.weights})


def adapter_session(export_dir: Path, manifest: dict[str, Any], name: str) -> AdapterSession:
    """The exported base graph with adapter ``name``'s weights."""
    from safetensors.numpy import load_file

    adapters = manifest.get("adapters") or {}
    if name not in adapters:
        raise OmnituneError(f"{export_dir}: no adapter {name!r} in this export (adapters: {', '.join(adapters) or 'none'})")
    return AdapterSession(session(Path(export_dir) / manifest["files"]["fp32"]["model"]),
                          load_file(str(Path(export_dir) / adapters[name]["file"])))


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def run_session(sess, feeds: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Feed the session the inputs it declares (a missing one is an error naming it); torch out."""
    wanted = [i.name for i in sess.get_inputs()]
    for name, like in OPTIONAL_ZEROS.items():  # an input the caller may leave out, as in transformers
        if name in wanted and name not in feeds and like in feeds:
            feeds = {**feeds, name: torch.zeros_like(torch.as_tensor(feeds[like]))}
    missing = [n for n in wanted if n not in feeds]
    if missing:
        raise OmnituneError(f"ONNX model needs inputs {missing}; got {sorted(feeds)}")
    arrays = {}
    for i in sess.get_inputs():
        a = _to_numpy(feeds[i.name])
        arrays[i.name] = a.astype(np.int64) if i.type == "tensor(int64)" else a.astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    return {n: torch.from_numpy(np.asarray(v)) for n, v in zip(names, sess.run(names, arrays))}


class OrtModel:
    """One ONNX graph behind the call a task makes on its model: keyword inputs returning named
    outputs (Hugging Face style, ``style="named"``) or one positional input returning the first
    output tensor (timm/torchvision style, ``style="tensor"``)."""

    def __init__(self, sess, style: str) -> None:
        self.session, self.style = sess, style
        self.input_names = [i.name for i in sess.get_inputs()]

    def eval(self) -> "OrtModel":
        return self

    def parameters(self):  # tasks read the device from the first parameter
        yield torch.zeros(0)

    def generate(self, *args: Any, **kwargs: Any):
        raise OmnituneError("this ONNX export holds the forward pass only (logits, for scoring); generation "
                            "is not exported for this task")

    def __call__(self, *args: Any, **kwargs: Any):
        feeds = dict(zip(self.input_names, args))
        feeds.update({k: v for k, v in kwargs.items() if k in self.input_names})
        out = run_session(self.session, feeds)
        return next(iter(out.values())) if self.style == "tensor" else Outputs(out)


class _OrtEncoder:
    def __init__(self, sess) -> None:
        self.session = sess
        self.input_name = sess.get_inputs()[0].name  # input_features (Whisper), input_ids (text)

    def __call__(self, features: torch.Tensor, **_: Any) -> Outputs:
        out = run_session(self.session, {self.input_name: features})
        return Outputs(last_hidden_state=out["last_hidden_state"])


class OrtEncoderDecoder:
    """An ``encoder-decoder`` export (Whisper) as encoder, decoder and decoder-with-past graphs (greedy decoding feeds one token per
    step with the key/value cache), with the attributes a Whisper task's forward and generate
    use: ``config``, ``model.encoder``, ``__call__(encoder_outputs=, decoder_input_ids=)`` and
    greedy ``generate``. Decoding starts from the prefix tokens recorded at export time and
    applies the checkpoint's suppressed tokens, as transformers' Whisper generate does."""

    def __init__(self, sessions: dict, config, decoding: dict[str, Any], generation_config=None) -> None:
        self.config, self.sessions, self.decoding = config, sessions, decoding
        self.generation_config = generation_config
        self.decoder = sessions["decoder"]
        self.model = Outputs(encoder=_OrtEncoder(sessions["encoder"]))

    def eval(self) -> "OrtEncoderDecoder":
        return self

    def parameters(self):
        yield torch.zeros(0)

    def _encode(self, input_features=None, encoder_outputs=None) -> torch.Tensor:
        if encoder_outputs is None:
            encoder_outputs = self.model.encoder(input_features)
        return encoder_outputs["last_hidden_state"] if isinstance(encoder_outputs, dict) else encoder_outputs[0]

    def decode_step(self, decoder_input_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return run_session(self.decoder, {"decoder_input_ids": decoder_input_ids, "encoder_hidden_states": hidden})["logits"]

    def __call__(self, input_features=None, encoder_outputs=None, decoder_input_ids=None, **_: Any) -> Outputs:
        return Outputs(logits=self.decode_step(decoder_input_ids, self._encode(input_features, encoder_outputs)))

    def generate(self, input_features=None, encoder_outputs=None, max_new_tokens: int | None = None,
                 logits_processor=None, **_: Any) -> torch.Tensor:
        hidden = self._encode(input_features, encoder_outputs)
        return greedy_decode(CachedDecoder(self.sessions, hidden), hidden.shape[0], self.decoding, max_new_tokens,
                             logits_processor)


class OrtVits:
    """An exported VITS generator (``runtime: waveform``) behind the call a speech synthesis task makes
    on its ``VitsModel``: ``model(input_ids=[batch, T], attention_mask=None)`` returning ``waveform``
    [batch, samples] and ``sequence_lengths``, at the synthesis scales recorded at export (noise,
    length, duration noise). The noise is drawn by ONNX Runtime, so with noise scales above 0 a
    sentence does not sound sample-for-sample as PyTorch's draw (the same with the scales at 0)."""

    def __init__(self, sess, scales: list[float]) -> None:
        self.session, self.scales = sess, [float(x) for x in scales]

    def eval(self) -> "OrtVits":
        return self

    def parameters(self):
        yield torch.zeros(0)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> Outputs:
        input_ids = torch.as_tensor(input_ids)
        lengths = (attention_mask.sum(1) if attention_mask is not None
                   else torch.full((input_ids.shape[0],), input_ids.shape[1], dtype=torch.long))
        out = run_session(self.session, {"input": input_ids, "input_lengths": lengths,
                                         "scales": torch.tensor(self.scales, dtype=torch.float32)})
        return Outputs(waveform=out["output"], sequence_lengths=out["output_lengths"])


class CachedDecoder:
    """One utterance batch's decoding state over the exported graphs: the first call runs the
    decoder over the prefix and keeps its caches; each later call feeds only the newest token and
    the caches to the decoder-with-past graph. Returns logits [batch, new tokens, vocab]."""

    def __init__(self, sessions: dict, hidden: torch.Tensor) -> None:
        self.sessions, self.hidden, self.cache = sessions, hidden, None
        outs = [o.name for o in sessions["decoder"].get_outputs()]
        self.present = [n for n in outs if n.startswith("present.")]
        self.cross = [n for n in outs if n.startswith("cross.")]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cache is None or "decoder_with_past" not in self.sessions:
            out = run_session(self.sessions["decoder"], {"decoder_input_ids": ids, "encoder_hidden_states": self.hidden})
            self.cache = {n: out[n] for n in self.present + self.cross}
            return out["logits"]
        feeds = {"decoder_input_ids": ids[:, -1:], **{n: self.cache[n] for n in self.cross},
                 **{n.replace("present.", "past.", 1): self.cache[n] for n in self.present}}
        out = run_session(self.sessions["decoder_with_past"], feeds)
        self.cache.update({n: out[n] for n in self.present})
        return out["logits"]


def greedy_decode(step, batch: int, decoding: dict[str, Any], max_new_tokens: int | None = None,
                  logits_processor=None) -> torch.Tensor:
    """Greedy decoding shared by the ONNX and the PyTorch side of the parity check: ``step(ids)``
    returns logits [batch, len, vocab]; rows that produced EOS are padded with EOS afterwards.
    ``logits_processor`` (transformers' ``(ids, scores) -> scores``, e.g. a task's repetition
    guard) runs after the suppressed tokens, where transformers' generate runs a caller's."""
    prefix = list(decoding["prefix"])
    eos, limit = decoding["eos_token_id"], max_new_tokens or decoding["max_new_tokens"]
    suppress = list(decoding.get("suppress_tokens") or [])
    begin_suppress = list(decoding.get("begin_suppress_tokens") or [])
    ids = torch.tensor([prefix] * batch, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    for t in range(limit):
        logits = step(ids)[:, -1, :].float().clone()
        if t == 0:  # ids beyond the vocabulary are ignored, as transformers' suppress processors do
            suppress = [i for i in suppress if i < logits.shape[-1]]
            begin_suppress = [i for i in begin_suppress if i < logits.shape[-1]]
        if suppress:
            logits[:, suppress] = float("-inf")
        if t == 0 and begin_suppress:
            logits[:, begin_suppress] = float("-inf")
        if logits_processor is not None:
            logits = logits_processor(ids, logits)
        nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == eos
        if bool(done.all()):
            break
    return ids


def export_folder(path: str | Path) -> Path:
    """An export folder, or a run folder holding its default one (``RUN_DIR/export-onnx``)."""
    path = Path(path)
    if not (path / MANIFEST).is_file() and (path / "export-onnx" / MANIFEST).is_file():
        return path / "export-onnx"
    return path


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise OmnituneError(f"{export_dir}: not an omnitune ONNX export (no {MANIFEST}); "
                            "make one with `omnitune export RUN_DIR --format onnx`")
    return json.loads(path.read_text())


def load_ort_model(export_dir: str | Path, manifest: dict[str, Any], variant: str = "fp32", adapter: str | None = None):
    """The exported graphs of ``variant`` (fp32 or int8) behind the task-facing wrapper; with
    ``adapter``, that adapter of a multi-adapter export."""
    export_dir = Path(export_dir)
    if adapter is not None or manifest.get("adapters"):
        name = adapter or manifest["default_adapter"]
        if not manifest.get("adapters"):
            raise OmnituneError(f"{export_dir}: exported with one adapter merged; --adapter needs an export "
                                "made with --all-adapters")
        return OrtModel(adapter_session(export_dir, manifest, name), manifest["runtime"])
    files = manifest["files"].get(variant)
    if not files:
        raise OmnituneError(f"{export_dir}: no {variant} model in this export"
                            + (" (export again with --quantize int8)" if variant == "int8" else ""))
    sessions = {role: session(export_dir / name) for role, name in files.items()}
    runtime = export_runtime(manifest)
    if runtime == "encoder-decoder":
        from transformers import AutoConfig

        from transformers import GenerationConfig

        config = AutoConfig.from_pretrained(export_dir)
        try:
            generation = GenerationConfig.from_pretrained(export_dir)
        except OSError:
            generation = GenerationConfig.from_model_config(config)
        return OrtEncoderDecoder(sessions, config, manifest["decoding"], generation)
    if runtime == "waveform":
        return OrtVits(sessions["model"], manifest["synthesis"]["scales"])
    return OrtModel(sessions["model"], runtime)


OrtSeq2Seq = OrtEncoderDecoder  # the name before the runtimes were named by what they run


def export_runtime(manifest: dict[str, Any]) -> str:
    """The runtime of an export folder, told by the graphs it holds, not by the name the manifest
    gives it (exports written before the runtimes were named by what they run name the encoder-decoder
    after its task): encoder and decoder graphs are an ``encoder-decoder``, a synthesis section a
    ``waveform`` generator; otherwise the one graph's ``named`` or ``tensor``."""
    roles = set(manifest["files"]["fp32"])
    if {"encoder", "decoder"} <= roles:
        return "encoder-decoder"
    if manifest.get("synthesis"):
        return "waveform"
    return manifest["runtime"]


def load_export(export_dir: str | Path, variant: str = "fp32", adapter: str | None = None):
    """(recipe, task, ORT model) of an export folder alone: the task is rebuilt from the copied
    recipe and restored from the copied tokenizer/processor and labels."""
    from ..base.recipe import read_yaml, validate_recipe
    from ..runs import build_task

    export_dir = export_folder(export_dir)
    manifest = read_manifest(export_dir)
    rec = validate_recipe(read_yaml(export_dir / RECIPE), where=str(export_dir / RECIPE))
    task = build_task(rec)
    task.restore(export_dir)
    return rec, task, load_ort_model(export_dir, manifest, variant, adapter)


def predict_onnx(export_dir: str | Path, inputs: list[str], variant: str = "fp32",
                 adapter: str | None = None) -> list[dict[str, Any]]:
    """Predictions of an exported model for raw inputs, in the format of ``omnitune predict``."""
    _, task, model = load_export(export_dir, variant, adapter)
    with torch.no_grad():
        return task.predict(model, list(inputs))
