"""The Piper voice -> transformers VitsModel mapping: names (fast, hand-written table), every
mapped tensor and the synthesised waveform against onnxruntime (slow, the real voice)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("piper, vits", [
    ("enc_p.encoder.attn_layers.3.conv_o.weight", "text_encoder.encoder.layers.3.attention.out_proj.weight"),
    ("enc_p.encoder.attn_layers.0.conv_q.bias", "text_encoder.encoder.layers.0.attention.q_proj.bias"),
    ("enc_p.encoder.attn_layers.5.emb_rel_v", "text_encoder.encoder.layers.5.attention.emb_rel_v"),
    ("enc_p.encoder.norm_layers_1.2.gamma", "text_encoder.encoder.layers.2.layer_norm.weight"),
    ("enc_p.encoder.norm_layers_2.4.beta", "text_encoder.encoder.layers.4.final_layer_norm.bias"),
    ("enc_p.encoder.ffn_layers.1.conv_2.weight", "text_encoder.encoder.layers.1.feed_forward.conv_2.weight"),
    ("enc_p.proj.bias", "text_encoder.project.bias"),
    ("dec.ups.2.weight", "decoder.upsampler.2.weight"),
    ("dec.resblocks.8.convs.1.bias", "decoder.resblocks.8.convs.1.bias"),
    ("dec.conv_post.weight", "decoder.conv_post.weight"),
    ("flow.flows.6.pre.weight", "flow.flows.3.conv_pre.weight"),
    ("flow.flows.2.post.bias", "flow.flows.1.conv_post.bias"),
    ("flow.flows.4.enc.res_skip_layers.3.bias", "flow.flows.2.wavenet.res_skip_layers.3.bias"),
    ("dp.flows.0.m", "duration_predictor.flows.0.translate"),
    ("dp.flows.3.pre.weight", "duration_predictor.flows.2.conv_pre.weight"),
    ("dp.flows.7.proj.bias", "duration_predictor.flows.4.conv_proj.bias"),
    ("dp.flows.5.convs.convs_sep.2.weight", "duration_predictor.flows.3.conv_dds.convs_dilated.2.weight"),
    ("dp.flows.5.convs.norms_2.0.gamma", "duration_predictor.flows.3.conv_dds.norms_2.0.weight"),
    ("dp.convs.convs_1x1.1.bias", "duration_predictor.conv_dds.convs_pointwise.1.bias"),
    ("dp.pre.weight", "duration_predictor.conv_pre.weight"),
    ("dp.proj.bias", "duration_predictor.conv_proj.bias"),
    ("/dp/flows.7/Constant_6_output_0", None),
])
def test_piper_names_map_to_vits_names(piper, vits):
    from omnitune.speech.vits_piper import _rename

    assert _rename(piper, 6) == vits


def test_resblock2_is_one_dilated_conv_per_step():
    from omnitune.speech.vits_piper import ResBlock2

    block = ResBlock2(1, 3, (1, 2), leaky_relu_slope=0.5)
    with torch.no_grad():
        block.convs[0].weight.copy_(torch.tensor([[[0.0, 1.0, 0.0]]]))  # identity
        block.convs[0].bias.zero_()
        block.convs[1].weight.copy_(torch.tensor([[[1.0, 0.0, 0.0]]]))  # x[t-2] (dilation 2)
        block.convs[1].bias.fill_(1.0)
    x = torch.tensor([[[-2.0, 4.0, 1.0]]])
    # step 1: x + lrelu(x) = [-3, 8, 2]; step 2: y + (lrelu(y)[t-2] + 1) = [-2, 9, 3 + (-1.5) ]
    assert block(x).tolist() == [[[-2.0, 9.0, 1.5]]]


# ------------------------------------------------------------------------------ the real voice
@pytest.fixture(scope="module")
def joe():
    from omnitune.speech.vits_piper import piper_state_dict, piper_to_vits, voice_files

    onnx_path, _ = voice_files("joe-piper-voice")
    model, meta, fresh = piper_to_vits("joe-piper-voice")
    state, used = piper_state_dict(onnx_path)
    return onnx_path, model.eval(), meta, fresh, state, used


@pytest.mark.slow
def test_every_voice_tensor_is_mapped_and_equal(joe):
    import onnx
    from onnx import numpy_helper

    onnx_path, model, meta, fresh, state, used = joe
    tensors = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    weights = {n for n, v in tensors.items() if v.ndim >= 1 and not n.startswith("/") and not n[0].isdigit()
               and not n.startswith("onnx::Split") and not n.startswith("onnx::ReduceSum")
               and not n.startswith("onnx::Slice")}
    assert len(weights) == 349  # 316 named VITS tensors + sid + 32 unnamed flow convs (15.65M values)
    assert weights <= {u.split(" ")[0] for u in used}, weights - {u.split(" ")[0] for u in used}
    assert "/dp/flows.0/Exp_output_0" in used
    ours = model.state_dict()
    # every model tensor is either from the voice or one of the three parts the file cannot have
    assert all(n.startswith(("posterior_encoder.", "duration_predictor.post_", "duration_predictor.flows.1."))
               for n in fresh)
    assert len(fresh) + len(state) == len(ours)
    for name, value in state.items():
        assert torch.equal(ours[name], value), name
    # direct tensors equal the ONNX ones; the flow convs give back the folded weight exactly
    assert np.array_equal(ours["text_encoder.embed_tokens.weight"].numpy(), tensors["sid"])
    assert np.array_equal(ours["decoder.upsampler.0.weight"].numpy(),
                          tensors["dec.ups.0.weight"])
    layer = model.flow.flows[3].wavenet.in_layers[0]  # /flow/flows.6/enc/in_layers.0 reads onnx::Conv_8168
    assert np.allclose(layer.weight.detach().numpy(), tensors["onnx::Conv_8168"], atol=1e-6)
    np.testing.assert_allclose(np.exp(-model.duration_predictor.flows[0].log_scale.detach().numpy()),
                               tensors["/dp/flows.0/Exp_output_0"], rtol=1e-6)


@pytest.mark.slow
def test_mapped_voice_synthesises_what_onnxruntime_does(joe):
    from omnitune.speech.vits_piper import run_onnx

    onnx_path, model, meta, *_ = joe
    ids = [1, 0] + [x for i in [20, 59, 100, 31, 88, 25, 120, 3, 50, 60] for x in (i, 0)] + [2]
    model.noise_scale, model.noise_scale_duration = 0.0, 0.0
    with torch.no_grad():
        wav = model(torch.tensor([ids])).waveform[0].numpy()
    ref = run_onnx(onnx_path, ids)
    assert wav.shape == ref.shape
    assert np.abs(wav - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.slow
def test_mapped_voice_speaks_a_fixed_sentence_whisper_understands(tmp_path):
    """Text -> espeak-ng phonemes -> mapped VitsModel -> WAV -> Whisper tiny.en -> the same words."""
    import shutil
    import subprocess
    from pathlib import Path

    from omnitune.core.base.recipe import RegularizationConfig
    from omnitune.speech.metrics import get_normalizer
    from omnitune.speech.tts import TextToSpeechTask, TTSDataConfig, TTSModelConfig
    from omnitune.speech.tts_metrics import Transcriber

    if shutil.which("espeak-ng") is None:
        subprocess.run(["bash", str(Path(__file__).resolve().parents[2] / "scripts" / "espeak.sh")], check=True)
    task = TextToSpeechTask(model=TTSModelConfig(name="asset:joe-piper-voice"),
                            data=TTSDataConfig(source=str(tmp_path)), regularization=RegularizationConfig(), seed=0)
    model = task.build_model().eval()
    sentence = "Please enter your password, followed by the pound key."
    [out] = task.predict(model, [sentence])
    assert out["wav"].endswith(".wav") and 2.0 < out["seconds"] < 6.0
    import soundfile as sf

    wave, sr = sf.read(out["wav"], dtype="float32")
    assert sr == 22050
    [heard] = Transcriber()([wave], sr)
    norm = get_normalizer("whisper_english")
    assert norm(heard) == norm(sentence), heard
