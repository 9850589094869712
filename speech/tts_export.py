"""The VITS generator as one traceable module, for ``omnitune export`` (core/deploy/export.py).

``VitsModel.forward`` takes its noise and length scales from Python attributes and builds the
attention mask through transformers' mask helpers, so a trace of it would bake the scales in. This
wrapper runs the same inference path (text encoder, stochastic duration predictor in reverse,
length regulation, flow in reverse, HiFi-GAN decoder) from the model's own submodules with tensor
operations only, behind Piper's graph signature:

- ``input`` (int64 [batch, phonemes]) and ``input_lengths`` (int64 [batch]): phoneme ids, padded;
- ``scales`` (float [3]): noise_scale, length_scale (1 / speaking rate), noise_scale_duration;
- out: ``output`` (float [batch, samples], zero past each item's end) and ``output_lengths``
  (int64 [batch], samples).

A Piper voice's own ``.onnx`` and this graph take the same inputs, so they can be compared on the
same phoneme ids. The wrapper shares the model's modules (nothing is copied); the flow's weight
norm is traced as it is and constant-folded by the exporter.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from omnitune.core.base.exporting import BATCH, BATCH_PHONEMES, ExportSpec, Graph

INPUTS = ("input", "input_lengths", "scales")
OUTPUTS = ("output", "output_lengths")

# The text-to-speech task's export (its export_spec): this generator, traced through the task's
# onnx_generator method; int8 refused with what was measured.
GENERATOR_SPEC = ExportSpec(
    "waveform", (Graph("model", INPUTS, OUTPUTS, {"input": BATCH_PHONEMES, "input_lengths": BATCH,
                                                  "output": {0: "batch", 1: "samples"}, "output_lengths": BATCH}),),
    "VITS generator (text encoder, stochastic duration predictor, length regulation, flow in reverse, "
    "HiFi-GAN decoder): phoneme ids [batch, phonemes], input_lengths [batch] and scales [3] (noise, "
    "length, duration noise) -> waveform [batch, samples] and output_lengths [batch]", module="onnx_generator",
    int8="none", int8_why="ONNX Runtime's dynamic int8 made the Joe voice 2.7x slower than fp32 (the decoder is "
    "convolutions; ConvInteger has no fast CPU kernel) and changed its durations (62720 -> 61952 samples), and "
    "MatMul-only int8 saved 4% of the size at the same speed; export in fp32")


class VitsGenerator(nn.Module):
    """VITS inference (``VitsModel.forward`` without ``labels``) with tensor inputs for the scales
    and lengths; one speaker."""

    def __init__(self, vits: nn.Module) -> None:
        super().__init__()
        if getattr(vits.config, "num_speakers", 1) > 1:
            raise ValueError("ONNX export of the VITS generator: multi-speaker models are not supported")
        self.text_encoder, self.duration_predictor = vits.text_encoder, vits.duration_predictor
        self.flow, self.decoder = vits.flow, vits.decoder
        self.__dict__["_vits"] = vits  # the model itself, unregistered: its forward is the reference
        self.scales = self.default_scales(vits)
        self.sampling_rate = int(vits.config.sampling_rate)
        self.stochastic = bool(vits.config.use_stochastic_duration_prediction)
        self.hidden_size = int(vits.config.hidden_size)
        self.hop = int(np.prod(vits.config.upsample_rates))

    @staticmethod
    def default_scales(vits: nn.Module) -> list[float]:
        """The model's own synthesis settings as ``scales``: noise, length (1 / rate), duration noise."""
        return [float(vits.noise_scale), 1.0 / float(vits.speaking_rate), float(vits.noise_scale_duration)]

    @torch.no_grad()
    def reference(self, ids: torch.Tensor, scales: list[float]) -> torch.Tensor:
        """transformers' own ``VitsModel.forward`` on one utterance (ids [1, T]) at ``scales``: what the
        exported graph must reproduce. The model's synthesis settings are restored afterwards."""
        v = self._vits
        saved = (v.noise_scale, v.speaking_rate, v.noise_scale_duration)
        v.noise_scale, v.speaking_rate, v.noise_scale_duration = scales[0], 1.0 / scales[1], scales[2]
        try:
            return v(input_ids=ids).waveform[0]
        finally:
            v.noise_scale, v.speaking_rate, v.noise_scale_duration = saved

    def _encode(self, ids: torch.Tensor, x_mask: torch.Tensor):
        """The text encoder's layers with an additive key mask built here ([batch, 1, 1, T] broadcast
        to [batch, 1, T, T]): the same as transformers' bidirectional mask, without its shortcuts."""
        te = self.text_encoder
        hidden = te.embed_tokens(ids) * (self.hidden_size ** 0.5)
        pad = x_mask.unsqueeze(-1)  # [b, t, 1]
        keys = x_mask[:, None, None, :]  # [b, 1, 1, t]
        additive = (1.0 - keys) * torch.finfo(hidden.dtype).min
        additive = additive * torch.ones_like(x_mask)[:, None, :, None]  # [b, 1, t, t]
        hidden = hidden * pad
        for layer in te.encoder.layers:
            hidden = layer(hidden, padding_mask=pad, attention_mask=additive)[0]
        hidden = hidden * pad
        stats = te.project(hidden.transpose(1, 2)) * x_mask.unsqueeze(1)  # [b, 2 * flow, t]
        m_p, logs_p = torch.split(stats, stats.shape[1] // 2, dim=1)
        return hidden.transpose(1, 2), m_p, logs_p

    def forward(self, input: torch.Tensor, input_lengths: torch.Tensor, scales: torch.Tensor):
        noise_scale, length_scale, noise_w = scales[0], scales[1], scales[2]
        # positions 0..T-1 from a cumulative sum: no Python int of the sequence length enters the graph
        positions = torch.cumsum(torch.ones_like(input), dim=1) - 1
        x_mask = (positions < input_lengths.unsqueeze(1)).to(torch.float32)  # [b, t]
        hidden, m_p, logs_p = self._encode(input, x_mask)
        mask = x_mask.unsqueeze(1)  # [b, 1, t]
        if self.stochastic:
            log_w = self.duration_predictor(hidden, mask, reverse=True, noise_scale=noise_w)
        else:
            log_w = self.duration_predictor(hidden, mask)
        duration = torch.ceil(torch.exp(log_w) * mask * length_scale)  # [b, 1, t] frames per phoneme
        y_lengths = torch.clamp_min(duration.sum([1, 2]), 1).long()  # [b]
        frames = torch.arange(y_lengths.max(), dtype=duration.dtype)  # [t_y], traced as a Range op
        y_mask = (frames.unsqueeze(0) < y_lengths.unsqueeze(1).to(duration.dtype)).unsqueeze(1)  # [b, 1, t_y]
        y_mask = y_mask.to(torch.float32)
        # length regulation: frame j belongs to phoneme i when cum[i-1] <= j < cum[i]
        ends = torch.cumsum(duration, -1).squeeze(1)  # [b, t]
        before = ends.unsqueeze(-1) > frames  # [b, t, t_y]: frames before phoneme i's end
        path = before.to(torch.float32) - nn.functional.pad(before.to(torch.float32), [0, 0, 1, 0])[:, :-1]
        path = path * x_mask.unsqueeze(-1) * y_mask  # [b, t, t_y]
        m_y = torch.matmul(m_p, path)  # [b, flow, t_y]
        logs_y = torch.matmul(logs_p, path)
        z_p = m_y + torch.randn_like(m_y) * torch.exp(logs_y) * noise_scale
        z = self.flow(z_p, y_mask, None, reverse=True)
        wave = self.decoder(z * y_mask).squeeze(1)  # [b, t_y * hop]
        out_lengths = y_lengths * self.hop
        samples = torch.cumsum(torch.ones_like(wave), dim=1) - 1
        wave = wave * (samples < out_lengths.unsqueeze(1).to(wave.dtype)).to(wave.dtype)
        return wave, out_lengths
