"""A Piper voice (VITS exported to ONNX) as a transformers ``VitsModel``.

Piper's ONNX file is VITS's inference graph: the text encoder (``enc_p``), the stochastic duration
predictor's inference path (``dp``), the flow (``flow``) and the HiFi-GAN decoder (``dec``). Most
initialisers keep their PyTorch names; the rest are recovered from the graph:

- ``sid`` (256 x 192) is the phoneme embedding: it feeds the ``/enc_p/emb/Gather`` node (checked);
- the flow's WaveNet convolutions lost their names (``onnx::Conv_*``) when weight norm was folded
  into them; the Conv node that reads each one names its layer, and the folded weight is split back
  into weight norm's magnitude (``original0``) and direction (``original1``), so it is exact;
- the duration predictor's first affine flow was constant-folded to ``exp(-logs)`` (its reverse
  pass); ``logs`` is taken back from it.

Not in the file (inference never used them) and so initialised fresh: the posterior encoder, the
duration predictor's posterior flows (``post_*``) and its first conv flow (VITS skips it at
inference), and of course the discriminator.

Piper's "medium" voices use HiFi-GAN's second residual block ("resblock 2": one dilated conv per
step), which transformers' ``HifiGanResidualBlock`` does not have; :class:`ResBlock2` replaces the
decoder's blocks when the config says ``resblock_type: "2"``, so :func:`build_vits` (not
``VitsModel.from_pretrained``) builds and loads these models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULT_VOICE = "joe-piper-voice"


class ResBlock2(nn.Module):
    """HiFi-GAN residual block type 2: for each dilation, ``x = x + conv(leaky_relu(x))``."""

    def __init__(self, channels: int, kernel_size: int, dilation, leaky_relu_slope: float = 0.1) -> None:
        super().__init__()
        self.leaky_relu_slope = leaky_relu_slope
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2)
            for d in dilation)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            hidden_states = hidden_states + conv(nn.functional.leaky_relu(hidden_states, self.leaky_relu_slope))
        return hidden_states


def build_vits(config) -> nn.Module:
    """``VitsModel(config)``, with type-2 residual blocks in the decoder when the config asks."""
    from transformers import VitsModel

    model = VitsModel(config)
    if str(getattr(config, "resblock_type", "1")) == "2":
        dec = model.decoder
        blocks = []
        for i in range(len(config.upsample_rates)):
            channels = config.upsample_initial_channel // (2 ** (i + 1))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                blocks.append(ResBlock2(channels, k, d, config.leaky_relu_slope))
        dec.resblocks = nn.ModuleList(blocks)
    return model


def load_vits(model_dir: Path) -> nn.Module:
    """A VITS saved with ``save_pretrained`` (either residual block type)."""
    from safetensors.torch import load_file
    from transformers import VitsConfig

    model_dir = Path(model_dir)
    config = VitsConfig.from_pretrained(model_dir)
    model = build_vits(config)
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{model_dir}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


# ------------------------------------------------------------------------------------ config
def voice_files(voice: str | Path) -> tuple[Path, Path]:
    """The ``.onnx`` file and its ``.onnx.json`` for a voice: a file, a folder holding one, or an
    asset name (``joe-piper-voice``)."""
    p = Path(str(voice).removeprefix("asset:"))
    if not p.exists():
        from omnitune.core.base.assets import fetch

        p = Path(fetch(str(voice).removeprefix("asset:")))
    if p.is_dir():
        found = sorted(p.glob("*.onnx"))
        if not found:
            raise FileNotFoundError(f"{p}: no .onnx voice file")
        p = found[0]
    meta = p.with_name(p.name + ".json")
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: the voice's .onnx.json (phoneme-id map, sample rate) is missing")
    return p, meta


def piper_config(meta: dict):
    """The ``VitsConfig`` of a Piper "medium" voice (the architecture Piper's medium/low voices
    share), from its ``.onnx.json``."""
    from transformers import VitsConfig

    return VitsConfig(
        vocab_size=int(meta["num_symbols"]), hidden_size=192, num_hidden_layers=6, num_attention_heads=2,
        window_size=4, use_bias=True, ffn_dim=768, ffn_kernel_size=3, flow_size=192, spectrogram_bins=513,
        hidden_act="relu", layer_norm_eps=1e-5, layerdrop=0.0, hidden_dropout=0.1, attention_dropout=0.1,
        activation_dropout=0.1, use_stochastic_duration_prediction=True, num_speakers=1, speaker_embedding_size=0,
        upsample_initial_channel=256, upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8],
        resblock_kernel_sizes=[3, 5, 7], resblock_dilation_sizes=[[1, 2], [2, 6], [3, 12]], resblock_type="2",
        leaky_relu_slope=0.1, depth_separable_channels=2, depth_separable_num_layers=3,
        duration_predictor_flow_bins=10, duration_predictor_tail_bound=5.0, duration_predictor_kernel_size=3,
        duration_predictor_dropout=0.5, duration_predictor_num_flows=4, duration_predictor_filter_channels=256,
        prior_encoder_num_flows=4, prior_encoder_num_wavenet_layers=4, posterior_encoder_num_wavenet_layers=16,
        wavenet_kernel_size=5, wavenet_dilation_rate=1, wavenet_dropout=0.0,
        speaking_rate=1.0 / float(meta.get("inference", {}).get("length_scale", 1.0)),
        noise_scale=float(meta.get("inference", {}).get("noise_scale", 0.667)),
        noise_scale_duration=float(meta.get("inference", {}).get("noise_w", 0.8)),
        sampling_rate=int(meta["audio"]["sample_rate"]), pad_token_id=0,
    )


# ------------------------------------------------------------------------------------ mapping
def _onnx_tensors(onnx_path: Path) -> tuple[dict[str, np.ndarray], list]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}, list(graph.node)


def _rename(name: str, num_layers: int) -> str | None:
    """A named Piper (VITS) tensor -> its VitsModel name; None for tensors that are not weights."""
    import re

    rules = [
        (r"enc_p\.encoder\.attn_layers\.(\d+)\.conv_([qkvo])\.(weight|bias)",
         lambda m: f"text_encoder.encoder.layers.{m[1]}.attention.{'out' if m[2] == 'o' else m[2]}_proj.{m[3]}"),
        (r"enc_p\.encoder\.attn_layers\.(\d+)\.(emb_rel_[kv])", r"text_encoder.encoder.layers.\1.attention.\2"),
        (r"enc_p\.encoder\.norm_layers_1\.(\d+)\.gamma", r"text_encoder.encoder.layers.\1.layer_norm.weight"),
        (r"enc_p\.encoder\.norm_layers_1\.(\d+)\.beta", r"text_encoder.encoder.layers.\1.layer_norm.bias"),
        (r"enc_p\.encoder\.norm_layers_2\.(\d+)\.gamma", r"text_encoder.encoder.layers.\1.final_layer_norm.weight"),
        (r"enc_p\.encoder\.norm_layers_2\.(\d+)\.beta", r"text_encoder.encoder.layers.\1.final_layer_norm.bias"),
        (r"enc_p\.encoder\.ffn_layers\.(\d+)\.(conv_[12])\.(weight|bias)",
         r"text_encoder.encoder.layers.\1.feed_forward.\2.\3"),
        (r"enc_p\.proj\.(weight|bias)", r"text_encoder.project.\1"),
        (r"dec\.conv_pre\.(weight|bias)", r"decoder.conv_pre.\1"),
        (r"dec\.ups\.(\d+)\.(weight|bias)", r"decoder.upsampler.\1.\2"),
        (r"dec\.resblocks\.(\d+)\.convs\.(\d+)\.(weight|bias)", r"decoder.resblocks.\1.convs.\2.\3"),
        (r"dec\.conv_post\.weight", "decoder.conv_post.weight"),
        (r"flow\.flows\.(\d+)\.(pre|post)\.(weight|bias)",
         lambda m: f"flow.flows.{int(m[1]) // 2}.conv_{m[2]}.{m[3]}"),
        (r"flow\.flows\.(\d+)\.enc\.(in_layers|res_skip_layers)\.(\d+)\.bias",
         lambda m: f"flow.flows.{int(m[1]) // 2}.wavenet.{m[2]}.{m[3]}.bias"),
        (r"dp\.flows\.0\.m", "duration_predictor.flows.0.translate"),
        # VITS's dp.flows: [affine, conv flow 1, flip, conv flow 2, flip, ...]; transformers drops the flips.
        (r"dp\.flows\.(\d+)\.(.*)", lambda m: _dds(f"duration_predictor.flows.{(int(m[1]) + 1) // 2}.", m[2])),
        (r"dp\.(pre|proj)\.(weight|bias)", r"duration_predictor.conv_\1.\2"),
        (r"dp\.convs\.(.*)", lambda m: _dds("duration_predictor.conv_dds.", "convs." + m[1])),
    ]
    for pattern, repl in rules:
        m = re.fullmatch(pattern, name)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    return None


def _dds(prefix: str, rest: str) -> str:
    """A VITS ConvFlow / DDSConv tensor name (after the flow prefix) -> transformers'."""
    rest = (rest.replace("pre.", "conv_pre.", 1) if rest.startswith("pre.") else
            rest.replace("proj.", "conv_proj.", 1) if rest.startswith("proj.") else rest)
    if rest.startswith("convs."):
        rest = "conv_dds." + rest[len("convs."):] if not prefix.endswith("conv_dds.") else rest[len("convs."):]
    rest = (rest.replace("convs_sep", "convs_dilated").replace("convs_1x1", "convs_pointwise")
            .replace(".gamma", ".weight").replace(".beta", ".bias"))
    return prefix + rest


def piper_state_dict(onnx_path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The VitsModel tensors recovered from a Piper ONNX file, and the ONNX initialisers used."""
    tensors, nodes = _onnx_tensors(onnx_path)
    out: dict[str, torch.Tensor] = {}
    used: list[str] = []

    def put(name: str, value: np.ndarray, source: str) -> None:
        if name in out:
            raise ValueError(f"{onnx_path}: two tensors map to {name}")
        out[name] = torch.from_numpy(np.array(value, dtype=np.float32))
        used.append(source)

    for src, value in tensors.items():
        if value.ndim == 0 or src.startswith("/") or src.startswith("onnx::") or src == "sid" or src[0].isdigit():
            continue
        dst = _rename(src, 6)
        if dst is None:
            continue
        if ".attention." in dst and dst.endswith("_proj.weight"):
            value = value[..., 0]  # 1x1 Conv1d -> Linear
        put(dst, value, src)

    for node in nodes:
        if node.op_type == "Gather" and node.name == "/enc_p/emb/Gather":
            emb = node.input[0]
            put("text_encoder.embed_tokens.weight", tensors[emb], emb)
        if node.op_type == "Conv" and node.input[1].startswith("onnx::Conv_"):
            import re

            m = re.fullmatch(r"/flow/flows\.(\d+)/enc/(in_layers|res_skip_layers)\.(\d+)/Conv", node.name)
            if not m:
                raise ValueError(f"{onnx_path}: unnamed convolution weight in an unexpected node {node.name}")
            w = tensors[node.input[1]]
            prefix = f"flow.flows.{int(m[1]) // 2}.wavenet.{m[2]}.{m[3]}.parametrizations.weight."
            # weight norm (dim 0): weight = g * v / ||v||; v = weight and g = ||weight|| give it back exactly.
            put(prefix + "original0", np.linalg.norm(w.reshape(w.shape[0], -1), axis=1).reshape(-1, 1, 1),
                node.input[1])
            put(prefix + "original1", w, node.input[1] + " (direction)")
        if node.op_type == "Mul" and node.name == "/dp/flows.0/Mul":
            scale = node.input[1]
            # reverse affine: (x - m) * exp(-logs), folded into a constant exp(-logs)
            put("duration_predictor.flows.0.log_scale", -np.log(tensors[scale]), scale)
    return out, used


def piper_to_vits(voice: str | Path = DEFAULT_VOICE):
    """(VitsModel with the voice's weights, the voice's .onnx.json dict, the names initialised fresh)."""
    onnx_path, meta_path = voice_files(voice)
    meta = json.loads(meta_path.read_text())
    config = piper_config(meta)
    torch.manual_seed(0)
    model = build_vits(config)
    state, _ = piper_state_dict(onnx_path)
    own = model.state_dict()
    for name, value in state.items():
        if name not in own:
            raise ValueError(f"{onnx_path}: mapped tensor {name} is not in VitsModel")
        if tuple(own[name].shape) != tuple(value.shape):
            raise ValueError(f"{onnx_path}: {name} has shape {tuple(value.shape)}, VitsModel wants {tuple(own[name].shape)}")
    model.load_state_dict(state, strict=False)
    # The fresh posterior encoder starts at q(z|x) = N(0, 1) (zero output projection): with
    # transformers' Kaiming init its log-variances start large and the KL term in the hundreds of
    # thousands, which would swamp the pretrained prior once it unfreezes.
    with torch.no_grad():
        model.posterior_encoder.conv_proj.weight.zero_()
        model.posterior_encoder.conv_proj.bias.zero_()
    fresh = sorted(n for n in own if n not in state)
    return model, meta, fresh


def run_onnx(onnx_path: Path, ids: list[int], noise_scale: float = 0.0, length_scale: float = 1.0,
             noise_w: float = 0.0) -> np.ndarray:
    """The voice's own waveform for phoneme ids, from onnxruntime (the reference for the mapping)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.array([ids], dtype=np.int64),
                          "input_lengths": np.array([len(ids)], dtype=np.int64),
                          "scales": np.array([noise_scale, length_scale, noise_w], dtype=np.float32)})
    return out[0].reshape(-1)
