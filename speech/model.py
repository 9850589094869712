"""Whisper model helpers: loading, the short encoder window, layer groups, generation settings.

Short encoder window: Whisper's encoder always sees 30 s (3000 mel frames, 1500 positions), so a
1.5 s prompt is 95 % padding and most of the encoder's compute is wasted. ``set_encoder_window``
cuts the sinusoidal position table to the first ``seconds * 50`` rows and sizes the feature
extractor to pad to ``seconds`` instead of 30, so training and decoding both run on the short
window. The model's config records the window, so a saved model reloads with it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import LogitsProcessor

from omnitune.core.base.errors import OmnituneError
from omnitune.core.base.exporting import ExportSpec, encoder_decoder_graphs
from omnitune.core.base.task import LayerGroup

DEFAULT_WINDOW_SECONDS = 30
FRAMES_PER_SECOND = 100  # 10 ms hop of Whisper's log-mel features
POSITIONS_PER_SECOND = 50  # the encoder's second conv halves the frame rate

# The speech-recognition task's export (its export_spec): encoder, decoder and decoder with past,
# run by greedy decoding with whisper_decoding's settings (the task's onnx_decoding method).
WHISPER_EXPORT = ExportSpec("encoder-decoder", (), "Whisper: encoder, decoder (first step: logits and the key/value "
                            "cache) and decoder with past key values (one token per step)",
                            layered=encoder_decoder_graphs, decoding="onnx_decoding")


def whisper_decoding(model: nn.Module, tokenizer, max_new_tokens: int) -> dict:
    """Whisper's greedy decoding settings for an ONNX export: the tokenizer's prefix (start of
    transcript, language and task tokens when multilingual, no-timestamps), EOS, and the
    checkpoint's suppressed tokens."""
    gen = getattr(model, "generation_config", None)
    eos = gen.eos_token_id if gen is not None and gen.eos_token_id is not None else model.config.eos_token_id
    return {"prefix": [int(t) for t in tokenizer.prefix_tokens], "eos_token_id": int(eos),
            "suppress_tokens": [int(t) for t in (getattr(gen, "suppress_tokens", None) or [])],
            "begin_suppress_tokens": [int(t) for t in (getattr(gen, "begin_suppress_tokens", None) or [])],
            "max_new_tokens": int(max_new_tokens)}


def load_whisper(name: str, pretrained: bool, revision: str | None = None):
    """(model, processor) from a Hub id or local folder; random weights when not pretrained."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    try:
        processor = WhisperProcessor.from_pretrained(name, revision=revision)
        if pretrained:
            model = WhisperForConditionalGeneration.from_pretrained(name, revision=revision)
        else:
            from transformers import GenerationConfig

            model = WhisperForConditionalGeneration(WhisperConfig.from_pretrained(name, revision=revision))
            model.generation_config = GenerationConfig.from_pretrained(name, revision=revision)
    except OSError as exc:
        raise OmnituneError(f"model.name {name!r}: cannot load a Whisper model and processor ({exc})") from None
    return model, processor


def window_seconds(model: nn.Module) -> float:
    return model.config.max_source_positions / POSITIONS_PER_SECOND


def set_encoder_window(model: nn.Module, feature_extractor, seconds: int) -> None:
    """Shrink the encoder to a ``seconds`` window (in place): position table cut, config updated,
    feature extractor padding to ``seconds``. A window longer than the model's is refused."""
    encoder = model.model.encoder
    positions = int(seconds * POSITIONS_PER_SECOND)
    have = encoder.embed_positions.weight.shape[0]
    if positions > have:
        raise OmnituneError(
            f"model.max_source_seconds={seconds}: longer than the model's window ({have / POSITIONS_PER_SECOND:g} s)"
        )
    if positions < have:
        old = encoder.embed_positions
        new = nn.Embedding(positions, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[:positions])
        # Whisper's encoder positions are fixed sinusoids, never trained.
        new.weight.requires_grad_(old.weight.requires_grad)
        encoder.embed_positions = new
        encoder.max_source_positions = positions
        model.config.max_source_positions = positions
    set_feature_window(feature_extractor, seconds)


def set_feature_window(feature_extractor, seconds: int) -> None:
    # These three attributes are what WhisperFeatureExtractor pads and truncates to.
    feature_extractor.chunk_length = int(seconds)
    feature_extractor.n_samples = int(seconds) * feature_extractor.sampling_rate
    feature_extractor.nb_max_frames = feature_extractor.n_samples // feature_extractor.hop_length


def whisper_layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Input to output: conv stem, encoder blocks, decoder blocks, output.

    The encoder's final norm goes with its last block and the decoder's position table with its
    first block. The output group holds the decoder's final norm and the token embedding, which
    *is* the output projection (tied weights), so feature extraction trains exactly the head.
    """
    enc, dec = model.model.encoder, model.model.decoder
    groups = [LayerGroup("encoder.stem", [enc.conv1, enc.conv2, enc.embed_positions])]
    for i, layer in enumerate(enc.layers):
        extra = [enc.layer_norm] if i == len(enc.layers) - 1 else []
        groups.append(LayerGroup(f"encoder.layers.{i}", [layer, *extra]))
    for i, layer in enumerate(dec.layers):
        extra = [dec.embed_positions] if i == 0 else []
        groups.append(LayerGroup(f"decoder.layers.{i}", [*extra, layer]))
    groups.append(LayerGroup("output", [dec.layer_norm, dec.embed_tokens, model.proj_out]))
    return groups


def configure_language(generation_config, tokenizer, language: str | None, task: str | None) -> dict:
    """Set the label prefix tokens from the recipe and return the generate() keyword arguments.

    English-only checkpoints (``*.en``) have no language or task tokens: English/transcribe are
    accepted and ignored for them, anything else is an error."""
    multilingual = bool(getattr(generation_config, "is_multilingual", False))
    if not multilingual:
        if (language or "en").lower() not in ("en", "english") or (task or "transcribe") != "transcribe":
            raise OmnituneError(
                f"model.language={language!r}, model.task={task!r}: the model is English-only (no language "
                "or task tokens); use a multilingual checkpoint such as openai/whisper-tiny"
            )
        tokenizer.set_prefix_tokens(language=None, task=None, predict_timestamps=False)
        return {}
    tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    return {k: v for k, v in (("language", language), ("task", task)) if v is not None}


def save_model(model: nn.Module, processor, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


class RepeatGuard(LogitsProcessor):
    """A logits processor that ends a hypothesis once its last ``n`` tokens (n = 1..4) have
    repeated ``times`` times in a row: only the end-of-text token is left possible. Greedy decoding
    that falls into a loop ("rather rather rather ...") then stops instead of running to
    max_new_tokens. Tokens of the prompt (the first ``prompt_len``) are not looked at."""

    def __init__(self, eos_id: int, times: int, prompt_len: int = 0, max_n: int = 4) -> None:
        self.eos_id, self.times, self.prompt_len, self.max_n = eos_id, times, prompt_len, max_n

    def looping(self, tokens: list[int]) -> bool:
        for n in range(1, self.max_n + 1):
            span = n * self.times
            if len(tokens) >= span:
                tail = tokens[-span:]
                if all(tail[i] == tail[i % n] for i in range(span)):
                    return True
        return False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for row in range(input_ids.shape[0]):
            if self.looping(input_ids[row, self.prompt_len:].tolist()):
                keep = scores[row, self.eos_id].clone()
                scores[row] = float("-inf")
                scores[row, self.eos_id] = keep if torch.isfinite(keep) else 0.0
        return scores
