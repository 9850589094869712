"""A tiny CTranslate2 Whisper file written here per the documented format, read back and converted."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from omnitune.speech.ct2 import convert_ct2_to_hf, read_ct2

DT_CODE = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
           np.dtype(np.float16): 4}


def _name(s: str) -> bytes:
    b = s.encode() + b"\x00"
    return struct.pack("<H", len(b)) + b


def write_ct2_file(path, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    """The format of shared/ASSETS.md, written independently of the reader under test."""
    out = [struct.pack("<I", 6), _name("WhisperSpec"), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, arr in variables.items():
        arr = np.array(arr, order="C")  # (ascontiguousarray would turn a scalar into shape (1,))
        out += [_name(name), struct.pack("<B", arr.ndim), struct.pack(f"<{arr.ndim}I", *arr.shape),
                struct.pack("<BI", DT_CODE[arr.dtype], arr.nbytes), arr.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_name(alias), _name(target)]
    path.write_bytes(b"".join(out))


def ct2_variables_from_hf(sd: dict[str, torch.Tensor], n_enc: int, n_dec: int, heads: int) -> dict[str, np.ndarray]:
    """CTranslate2's Whisper layout built from a transformers state dict: q/k/v fused (k bias zero),
    cross-attention k/v fused, layer norms as gamma/beta, fp16 weights."""
    h = lambda k: sd[k].numpy().astype(np.float16)  # noqa: E731
    v: dict[str, np.ndarray] = {}

    def norm(dst, src):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = h(f"{src}.weight"), h(f"{src}.bias")

    def lin(dst, src):
        v[f"{dst}/weight"], v[f"{dst}/bias"] = h(f"{src}.weight"), h(f"{src}.bias")

    def fused(dst, srcs):
        v[f"{dst}/weight"] = np.concatenate([h(f"{s}.weight") for s in srcs])
        v[f"{dst}/bias"] = np.concatenate([np.zeros_like(h(f"{s}.weight")[:, 0]) if s.endswith("k_proj")
                                           else h(f"{s}.bias") for s in srcs])

    for side in ("encoder", "decoder"):
        v[f"{side}/num_heads"] = np.array(heads, dtype=np.int16)
    for k in ("conv1", "conv2"):
        lin(f"encoder/{k}", f"model.encoder.{k}")
    v["encoder/position_encodings/encodings"] = h("model.encoder.embed_positions.weight")
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(n_enc):
        s, d = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        fused(f"{d}/self_attention/linear_0", [f"{s}.self_attn.{p}_proj" for p in "qkv"])
        lin(f"{d}/self_attention/linear_1", f"{s}.self_attn.out_proj")
        norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
        lin(f"{d}/ffn/linear_0", f"{s}.fc1")
        lin(f"{d}/ffn/linear_1", f"{s}.fc2")
        norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
    v["decoder/embeddings/weight"] = h("model.decoder.embed_tokens.weight")
    v["decoder/position_encodings/encodings"] = h("model.decoder.embed_positions.weight")
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(n_dec):
        s, d = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        fused(f"{d}/self_attention/linear_0", [f"{s}.self_attn.{p}_proj" for p in "qkv"])
        lin(f"{d}/self_attention/linear_1", f"{s}.self_attn.out_proj")
        norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
        lin(f"{d}/attention/linear_0", f"{s}.encoder_attn.q_proj")
        fused(f"{d}/attention/linear_1", [f"{s}.encoder_attn.k_proj", f"{s}.encoder_attn.v_proj"])
        lin(f"{d}/attention/linear_2", f"{s}.encoder_attn.out_proj")
        norm(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
        lin(f"{d}/ffn/linear_0", f"{s}.fc1")
        lin(f"{d}/ffn/linear_1", f"{s}.fc2")
        norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
    return v


@pytest.fixture(scope="module")
def ct2_folder(tiny_whisper, tmp_path_factory):
    from transformers import WhisperForConditionalGeneration

    src = WhisperForConditionalGeneration.from_pretrained(tiny_whisper)
    cfg = src.config
    variables = ct2_variables_from_hf(src.state_dict(), cfg.encoder_layers, cfg.decoder_layers,
                                      cfg.encoder_attention_heads)
    folder = tmp_path_factory.mktemp("ct2")
    write_ct2_file(folder / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    (folder / "tokenizer.json").write_text((tiny_whisper / "tokenizer.json").read_text())
    (folder / "config.json").write_text(json.dumps({"suppress_ids": [5, 6], "suppress_ids_begin": [220, 256],
                                                    "alignment_heads": [[1, 0]]}))
    return folder, src, variables


def test_reader_returns_what_was_written(ct2_folder):
    folder, _, variables = ct2_folder
    m = read_ct2(folder / "model.bin")
    assert (m.version, m.spec, m.revision) == (6, "WhisperSpec", 3)
    assert set(m.variables) == set(variables)
    for name, arr in variables.items():
        assert m.variables[name].dtype == arr.dtype and m.variables[name].shape == arr.shape, name
        np.testing.assert_array_equal(m.variables[name], arr, err_msg=name)
    np.testing.assert_array_equal(m.get("decoder/projection/weight"), variables["decoder/embeddings/weight"])


def test_conversion_matches_source_model(ct2_folder, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder, src, _ = ct2_folder
    out = convert_ct2_to_hf(folder, tmp_path / "hf")
    conv = WhisperForConditionalGeneration.from_pretrained(out)
    assert conv.config.encoder_layers == src.config.encoder_layers
    assert conv.config.d_model == src.config.d_model and conv.config.vocab_size == src.config.vocab_size
    src_sd, conv_sd = src.state_dict(), conv.state_dict()
    assert set(conv_sd) == set(src_sd)
    for name, tensor in src_sd.items():
        if name.endswith("k_proj.bias"):
            continue  # Whisper's key projections have no bias
        # The CTranslate2 file holds fp16: the converted weights are the source rounded to fp16.
        torch.testing.assert_close(conv_sd[name], tensor.half().float(), rtol=0, atol=0, msg=name)
    assert conv.proj_out.weight.data_ptr() == conv.model.decoder.embed_tokens.weight.data_ptr()
    # Same computation: logits agree with the source model run on fp16-rounded weights.
    ref = WhisperForConditionalGeneration(src.config)
    ref.load_state_dict({k: v.half().float() for k, v in src_sd.items()})
    feats = torch.randn(1, 80, 3000)
    dec = torch.tensor([[257, 264, 100, 101]])
    with torch.no_grad():
        torch.testing.assert_close(conv(input_features=feats, decoder_input_ids=dec).logits,
                                   ref.eval()(input_features=feats, decoder_input_ids=dec).logits)
    gen = conv.generation_config
    assert gen.decoder_start_token_id == 257 and gen.no_timestamps_token_id == 264
    assert gen.suppress_tokens == [5, 6] and gen.is_multilingual is False
    tok = WhisperProcessor.from_pretrained(out).tokenizer
    assert tok(" hi").input_ids[:2] == [257, 264]


def test_main_import_ct2(ct2_folder, tmp_path):
    from omnitune.speech.ct2 import main_import_ct2

    folder, _, _ = ct2_folder
    assert main_import_ct2([str(folder), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_cli_command(ct2_folder, tmp_path):
    """`omnitune speech import-ct2 SRC OUT` as the core CLI builds it from add_commands."""
    import argparse

    from omnitune.speech.cli import add_commands

    parser = argparse.ArgumentParser(prog="omnitune")
    add_commands(parser.add_subparsers(dest="command"))
    folder, _, _ = ct2_folder
    args = parser.parse_args(["speech", "import-ct2", str(folder), str(tmp_path / "cli-out")])
    assert args.func(args) == 0
    assert (tmp_path / "cli-out" / "config.json").is_file()
