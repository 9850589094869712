"""CTranslate2 Whisper checkpoints -> transformers Whisper folders.

The offline Whisper asset (tiny.en, as converted for faster-whisper) ships as a CTranslate2
``model.bin`` with its ``tokenizer.json`` and ``config.json``. :func:`convert_ct2_to_hf` rebuilds a
transformers folder from it (config, safetensors, tokenizer, feature extractor, generation
config) so that ``WhisperForConditionalGeneration.from_pretrained(out)`` works. CLI:
``omnitune speech import-ct2 SRC OUT`` (wired to :func:`main_import_ct2`).

The binary layout (little-endian), from shared/ASSETS.md and checked against the real file:
u32 format version; for version >= 2 a spec name (u16 length + NUL-terminated bytes) and a u32
revision; u32 variable count; per variable: name (u16 length + NUL-terminated bytes), u8 rank,
rank x u32 dims, u8 dtype, u32 byte count, raw bytes. Version >= 3 ends with u32 alias count and
(alias, target) name pairs (``decoder/projection/weight`` -> ``decoder/embeddings/weight``).
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from omnitune.core.base.errors import AssetError

# CTranslate2 dtype codes -> numpy dtypes (bfloat16 is read as raw uint16, converted via torch).
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
BFLOAT16 = 5


@dataclass
class Ct2Model:
    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]


def _read_name(f) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n).rstrip(b"\x00").decode("utf-8")


def read_ct2(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` into numpy arrays (no CTranslate2 install needed)."""
    path = Path(path)
    with open(path, "rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        spec, revision = "", 1
        if version >= 2:
            spec = _read_name(f)
            (revision,) = struct.unpack("<I", f.read(4))
        (count,) = struct.unpack("<I", f.read(4))
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = _read_name(f)
            (rank,) = struct.unpack("<B", f.read(1))
            dims = struct.unpack(f"<{rank}I", f.read(4 * rank)) if rank else ()
            dtype_code, nbytes = struct.unpack("<BI", f.read(5))
            if dtype_code not in _DTYPES:
                raise AssetError(f"{path}: variable {name} has unknown dtype code {dtype_code}")
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise AssetError(f"{path}: truncated at variable {name}")
            arr = np.frombuffer(raw, dtype=_DTYPES[dtype_code]).reshape(dims)
            if dtype_code == BFLOAT16:
                arr = torch.from_numpy(arr.copy()).view(torch.bfloat16).float().numpy()
            variables[name] = arr
        aliases: dict[str, str] = {}
        if version >= 3:
            head = f.read(4)
            if len(head) == 4:
                (n_alias,) = struct.unpack("<I", head)
                for _ in range(n_alias):
                    alias = _read_name(f)
                    aliases[alias] = _read_name(f)
    return Ct2Model(version, spec, revision, variables, aliases)


# ----------------------------------------------------------------------------- weights
def _t(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _linear(m: Ct2Model, src: str, dst: str, out: dict, bias: bool = True) -> None:
    out[f"{dst}.weight"] = _t(m.get(f"{src}/weight"))
    if bias:
        out[f"{dst}.bias"] = _t(m.get(f"{src}/bias"))


def _norm(m: Ct2Model, src: str, dst: str, out: dict) -> None:
    out[f"{dst}.weight"] = _t(m.get(f"{src}/gamma"))
    out[f"{dst}.bias"] = _t(m.get(f"{src}/beta"))


def _split_fused(m: Ct2Model, src: str, dsts: list[str], out: dict, where: str) -> None:
    """Fused projections are stacked along dim 0; the key part has no bias in Whisper (its slot in
    the fused bias is zero), so it is dropped after checking it is zero."""
    w = _t(m.get(f"{src}/weight"))
    b = _t(m.get(f"{src}/bias"))
    parts_w = torch.chunk(w, len(dsts), dim=0)
    parts_b = torch.chunk(b, len(dsts), dim=0)
    for dst, pw, pb in zip(dsts, parts_w, parts_b):
        out[f"{dst}.weight"] = pw.clone()
        if dst.endswith("k_proj"):
            if pb.abs().max() > 1e-6:
                raise AssetError(f"{where}: {src} key bias is not zero; the q/k/v order is not as expected")
        else:
            out[f"{dst}.bias"] = pb.clone()


def _self_attention(m: Ct2Model, src: str, dst: str, out: dict, where: str) -> None:
    """A layer's self-attention block, the same in the encoder and the decoder."""
    _split_fused(m, f"{src}/self_attention/linear_0",
                 [f"{dst}.self_attn.q_proj", f"{dst}.self_attn.k_proj", f"{dst}.self_attn.v_proj"], out, where)
    _linear(m, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", out)
    _norm(m, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)


def _ffn(m: Ct2Model, src: str, dst: str, out: dict) -> None:
    """A layer's feed-forward block, the same in the encoder and the decoder."""
    _linear(m, f"{src}/ffn/linear_0", f"{dst}.fc1", out)
    _linear(m, f"{src}/ffn/linear_1", f"{dst}.fc2", out)
    _norm(m, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", out)


def _count_layers(m: Ct2Model, side: str) -> int:
    found = {int(x.group(1)) for n in m.variables if (x := re.match(rf"{side}/layer_(\d+)/", n))}
    return max(found) + 1 if found else 0


def ct2_to_state_dict(m: Ct2Model, where: str = "model.bin") -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables onto transformers' WhisperForConditionalGeneration names."""
    sd: dict[str, torch.Tensor] = {}
    sd["model.encoder.conv1.weight"] = _t(m.get("encoder/conv1/weight"))
    sd["model.encoder.conv1.bias"] = _t(m.get("encoder/conv1/bias"))
    sd["model.encoder.conv2.weight"] = _t(m.get("encoder/conv2/weight"))
    sd["model.encoder.conv2.bias"] = _t(m.get("encoder/conv2/bias"))
    sd["model.encoder.embed_positions.weight"] = _t(m.get("encoder/position_encodings/encodings"))
    _norm(m, "encoder/layer_norm", "model.encoder.layer_norm", sd)
    for i in range(_count_layers(m, "encoder")):
        s, d = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _self_attention(m, s, d, sd, where)
        _ffn(m, s, d, sd)
    sd["model.decoder.embed_tokens.weight"] = _t(m.get("decoder/embeddings/weight"))
    sd["model.decoder.embed_positions.weight"] = _t(m.get("decoder/position_encodings/encodings"))
    _norm(m, "decoder/layer_norm", "model.decoder.layer_norm", sd)
    for i in range(_count_layers(m, "decoder")):
        s, d = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _self_attention(m, s, d, sd, where)
        _linear(m, f"{s}/attention/linear_0", f"{d}.encoder_attn.q_proj", sd)
        _split_fused(m, f"{s}/attention/linear_1", [f"{d}.encoder_attn.k_proj", f"{d}.encoder_attn.v_proj"], sd, where)
        _linear(m, f"{s}/attention/linear_2", f"{d}.encoder_attn.out_proj", sd)
        _norm(m, f"{s}/attention/layer_norm", f"{d}.encoder_attn_layer_norm", sd)
        _ffn(m, s, d, sd)
    return sd


# ----------------------------------------------------------------------------- folder conversion
def _special_ids(tokenizer_json: dict) -> dict[str, int]:
    return {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}


def build_hf_config(m: Ct2Model, tokenizer_json: dict, ct2_config: dict):
    """A WhisperConfig and GenerationConfig sized from the tensors, token ids from the tokenizer."""
    from transformers import GenerationConfig, WhisperConfig

    vocab, d_model = m.get("decoder/embeddings/weight").shape
    special = _special_ids(tokenizer_json)
    sot = special["<|startoftranscript|>"]
    eot = special["<|endoftext|>"]
    translate, transcribe = special["<|translate|>"], special["<|transcribe|>"]
    # Multilingual checkpoints have 51865 tokens (one more language); English-only ones 51864.
    multilingual = vocab >= 51865
    cfg = WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(m.get("encoder/conv1/weight").shape[1]),
        d_model=int(d_model),
        encoder_layers=_count_layers(m, "encoder"),
        decoder_layers=_count_layers(m, "decoder"),
        encoder_attention_heads=int(m.get("encoder/num_heads")),
        decoder_attention_heads=int(m.get("decoder/num_heads")),
        encoder_ffn_dim=int(m.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(m.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(m.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(m.get("decoder/position_encodings/encodings").shape[0]),
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, eot])),
        tie_word_embeddings=True,
    )
    gen = GenerationConfig.from_model_config(cfg)
    # Not "from model config": transformers would otherwise rebuild it from config.json on load
    # and lose the Whisper fields below.
    gen._from_model_config = False
    gen.decoder_start_token_id = sot
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = eot, eot, eot
    gen.max_length = cfg.max_target_positions
    gen.suppress_tokens = cfg.suppress_tokens
    gen.begin_suppress_tokens = cfg.begin_suppress_tokens
    gen.no_timestamps_token_id = special["<|notimestamps|>"]
    gen.prev_sot_token_id = special["<|startofprev|>"]
    gen.is_multilingual = multilingual
    gen.return_timestamps = False
    gen.max_initial_timestamp_index = 50
    if ct2_config.get("alignment_heads"):
        gen.alignment_heads = [list(h) for h in ct2_config["alignment_heads"]]
    if multilingual:
        gen.lang_to_id = {c: i for c, i in special.items() if sot < i < translate}
        gen.task_to_id = {"translate": translate, "transcribe": transcribe}
    return cfg, gen


def _tokenizer_with_timestamps(tokenizer_json: dict, vocab_size: int) -> dict:
    """faster-whisper's tokenizer.json stops at <|notimestamps|>; transformers' Whisper tokenizers
    also know the 1501 timestamp tokens <|0.00|> ... <|30.00|> that fill the rest of the vocab."""
    tok = json.loads(json.dumps(tokenizer_json))
    added = tok["added_tokens"]
    next_id = max(t["id"] for t in added) + 1
    step = 0
    while next_id < vocab_size:
        added.append({"id": next_id, "content": f"<|{step * 0.02:.2f}|>", "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": False})
        next_id += 1
        step += 1
    return tok


def convert_ct2_to_hf(src: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Convert a CTranslate2 Whisper folder (model.bin, tokenizer.json, config.json) into a
    transformers Whisper folder; returns ``out``.

    >>> convert_ct2_to_hf("faster-whisper-tiny.en", "whisper-tiny.en-hf")  # doctest: +SKIP
    """
    from transformers import (WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor,
                              WhisperTokenizer)

    src, out = Path(src), Path(out)
    for needed in ("model.bin", "tokenizer.json"):
        if not (src / needed).is_file():
            raise AssetError(f"{src}: no {needed} (expected a CTranslate2 Whisper folder)")
    m = read_ct2(src / "model.bin")
    if m.spec and m.spec != "WhisperSpec":
        raise AssetError(f"{src / 'model.bin'}: spec is {m.spec!r}, not WhisperSpec")
    tokenizer_json = json.loads((src / "tokenizer.json").read_text())
    ct2_config = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    cfg, gen = build_hf_config(m, tokenizer_json, ct2_config)
    sd = ct2_to_state_dict(m, where=str(src / "model.bin"))

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    # proj_out is tied to the token embeddings (CTranslate2 stores it as an alias).
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise AssetError(f"{src}: conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model = model.to(dtype)
    model.generation_config = gen
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)

    # The tokenizer is built from tokenizer.json (byte-level BPE); the prefix tokens default to the
    # English-only layout <|startoftranscript|><|notimestamps|>.
    tok_dir = out / ".tokenizer-src"
    tok_dir.mkdir(exist_ok=True)
    (tok_dir / "tokenizer.json").write_text(json.dumps(_tokenizer_with_timestamps(tokenizer_json, cfg.vocab_size)))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "model_max_length": cfg.max_target_positions,
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}))
    tokenizer = WhisperTokenizer.from_pretrained(tok_dir)
    feature_extractor = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out)
    for p in tok_dir.iterdir():
        p.unlink()
    tok_dir.rmdir()
    return out


def main_import_ct2(argv: list[str] | None = None) -> int:
    """``omnitune speech import-ct2 SRC OUT``: convert a CTranslate2 Whisper folder."""
    parser = argparse.ArgumentParser(prog="omnitune speech import-ct2",
                                     description="Convert a CTranslate2 (faster-whisper) Whisper folder "
                                                 "into a transformers Whisper folder.")
    parser.add_argument("src", help="folder with model.bin, tokenizer.json and config.json")
    parser.add_argument("out", help="output folder (created)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    out = convert_ct2_to_hf(args.src, args.out, dtype=getattr(torch, args.dtype))
    print(f"wrote transformers Whisper checkpoint to {out}", file=sys.stderr)
    return 0
