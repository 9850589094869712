"""Text-to-speech voice adaptation: a VITS (transformers' ``VitsModel``) fine-tuned on a new
speaker's recordings with VITS's losses and a HiFi-GAN discriminator, on the core's loop.

Model sources (``model.name``): a Piper voice (``asset:joe-piper-voice``, a ``.onnx`` file or its
folder; mapped into ``VitsModel`` by speech/vits_piper.py), any transformers VITS checkpoint (Hub id
such as ``facebook/mms-tts-eng`` or ``kakao-enterprise/vits-ljs``, or a folder with config.json of
model_type vits: ``VitsModel.from_pretrained`` with its ``VitsTokenizer``, speech/vits_tokenizer.py),
or a folder this task saved. The posterior encoder and the discriminator are not in a Piper file
and start fresh; warm the posterior encoder up with ``finetune.strategy: gradual`` (the layer groups
end with it, so it trains alone first while the decoder and flow stay as they were, then the groups
below unfreeze in turn).

Training uses two optimisers through the core's ``optimizer_parts``: the discriminator's step
(LSGAN on real vs generated segments), then the generator's (mel L1 x c_mel + KL + duration +
adversarial + feature matching). Every random draw (posterior noise, duration-flow noise, the
decoded segment) comes from the item's (seed, epoch, index), so a batch trains the same however it
is split into micro-batches. Losses are summed over items (each item's loss is its own mean).

Evaluation (validation/test) is deterministic: the posterior mean, the whole utterance decoded on
its own, mel L1 / KL / log-duration error per item. The run report adds samples (the core's
``sample_outputs`` hook): a few held-out sentences synthesised before and after training, as WAVs
and mel images, with MCD-DTW, F0 distance and the Whisper WER (speech/tts_samples.py).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from omnitune.core.base import assets
from omnitune.core.base.data import cap_splits, canonical_splits, require_rows, split_off
from omnitune.core.base.errors import DataError, OmnituneError
from omnitune.core.base.exporting import ExportSpec
from omnitune.core.base.metrics import Metric
from omnitune.core.base.recipe import DataConfig, ModelConfig, RegularizationConfig
from omnitune.core.base.seeding import item_seed
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup

from . import data as sdata
from . import vits_losses as L
from .audio import AudioProblem, load_clip
from .tts_export import GENERATOR_SPEC
from .tts_metrics import LOG_DURATION_MSE, MEL_L1

FRONTEND_FILE = "omnitune_tts.json"


class TTSModelConfig(ModelConfig):
    phonemizer: Literal["espeak", "characters"] | None = None
    """How text becomes ids: espeak-ng IPA (Piper voices) or the characters themselves (MMS-style character
    vocabularies, and the tiny test models). None: espeak for Piper voices."""
    segment_frames: int = Field(default=32, gt=0)
    """The decoder (and discriminator) train on random windows of this many spectrogram frames."""
    discriminator_width: int = Field(default=32, ge=0)
    """Discriminator width (VITS: 32); 0 trains without a discriminator (mel, KL, duration only)."""
    n_mels: int = Field(default=80, gt=0)
    """Mel bands of the spectrogram the mel loss compares."""
    c_mel: float = 45.0
    """Weight of the mel-spectrogram L1 loss in the generator loss (VITS: 45)."""
    c_kl: float = 1.0
    """Weight of the KL loss in the generator loss (VITS: 1)."""
    noise_scale: float | None = None
    """Synthesis: noise scale of the prior (variation of the voice); None: the voice's own."""
    noise_scale_duration: float | None = None
    """Synthesis: noise scale of the stochastic duration predictor; None: the voice's own."""
    speaking_rate: float | None = None
    """Synthesis: speed factor (above 1 is faster); None: the voice's own."""
    sample_sentences: int = Field(default=4, ge=0)
    """The run report's samples: this many held-out (test) sentences synthesised by the starting voice
    (with eval.baseline) and the trained one, as WAVs and mel images, scored by MCD-DTW and F0
    distance against the recordings (0: none). A few keep the report quick: each costs a synthesis,
    a DTW and, with sample_asr, a Whisper transcript."""
    sample_asr: str | None = "asset:whisper-tiny.en"
    """The ASR model whose transcripts of the samples give the WER (intelligibility); null: no WER."""


class TTSDataConfig(DataConfig):
    transcripts: str | None = None
    """Transcript file inside a source folder; None looks for the usual names (transcripts.{csv,jsonl,txt},
    metadata.csv)."""
    audio_dir: str | None = None
    """Folder that relative audio paths are resolved against; None: the transcript file's folder."""
    path_column: str = "path"
    """The column with the audio file path."""
    text_column: str = "text"
    """The column with the sentence spoken."""
    min_seconds: float | None = Field(default=None, ge=0)
    """Clips shorter than this many seconds are dropped (counted in the data report)."""
    max_seconds: float | None = Field(default=12.0, gt=0)
    """Clips longer than this many seconds are dropped (counted in the data report)."""


class TTSModel(nn.Module):
    """The VITS generator and (in training) its discriminator."""

    def __init__(self, vits: nn.Module, discriminator: nn.Module | None) -> None:
        super().__init__()
        self.vits = vits
        self.discriminator = discriminator


class _Dataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict], seed: int) -> None:
        self.items, self.seed, self.epoch = items, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        return [len(it["wave"]) for it in self.items]

    def names(self) -> list[str]:
        return [it["name"] for it in self.items]

    def __getitem__(self, i: int) -> dict:
        return {**self.items[i], "index": i, "noise_seed": item_seed(self.seed, self.epoch, i)}


class TextToSpeechTask:
    name: ClassVar[str] = "text-to-speech"
    ModelConfig: ClassVar[type] = TTSModelConfig
    DataConfig: ClassVar[type] = TTSDataConfig
    main_metric: ClassVar[str] = "mel_l1"
    main_metric_mode: ClassVar[str] = "min"
    pipeline_tag: ClassVar[str] = "text-to-speech"  # Hub model-card metadata (ModelCardInfo)
    card_library: ClassVar[str] = "omnitune"
    metric_definitions: ClassVar[tuple[Metric, ...]] = (MEL_L1, LOG_DURATION_MSE)  # their directions select

    def export_spec(self) -> ExportSpec:
        """ONNX export (Exportable): the VITS generator through :meth:`onnx_generator`, int8 refused."""
        return GENERATOR_SPEC

    def __init__(self, *, model: TTSModelConfig, data: TTSDataConfig, regularization: RegularizationConfig,
                 seed: int) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.label_names = None
        self._frontend: dict | None = None
        self._restored: Path | None = None
        self._predictions: Path | None = None
        self._tokenizer = None  # a transformers VITS checkpoint's VitsTokenizer
        self._tokenizer_dir: Path | None = None
        self._scorer: tuple | None = None  # (ASR transcriber or None, why none), loaded once for the samples

    # ------------------------------------------------------------------ model and front end
    def _source(self) -> Path:
        return Path(assets.resolve(self.model_cfg.name)) if self._restored is None else self._restored

    def _is_piper(self, path: Path) -> bool:
        return path.suffix == ".onnx" or (path.is_dir() and any(path.glob("*.onnx"))
                                          and not (path / "config.json").is_file())

    def _kind(self, src: Path) -> str:
        """"piper" (a Piper .onnx voice), "omnitune" (a folder this task saved) or "transformers" (a
        transformers VITS checkpoint: a folder with config.json of model_type vits, or a Hub id)."""
        from .vits_tokenizer import checkpoint_kind

        if self._is_piper(src):
            return "piper"
        if (src / FRONTEND_FILE).is_file():
            return "omnitune"
        kind = checkpoint_kind(src)
        if kind is None:
            raise OmnituneError(f"model.name: {src} is neither a Piper voice (.onnx + .onnx.json), a transformers "
                                f"VITS checkpoint (Hub id or folder with config.json) nor a folder saved by the "
                                f"text-to-speech task ({FRONTEND_FILE})")
        return kind

    @property
    def frontend(self) -> dict:
        """How text becomes ids: {phoneme_id_map, phonemizer, espeak_voice, sampling_rate} for Piper
        voices, {phonemizer: "vits-tokenizer", sampling_rate} for a transformers VITS checkpoint (its
        own VitsTokenizer, saved with the model)."""
        if self._frontend is None:
            src = self._source()
            kind = self._kind(src)
            if kind == "piper":
                from .vits_piper import voice_files

                meta = json.loads(voice_files(src)[1].read_text())
                self._frontend = {"phoneme_id_map": meta["phoneme_id_map"],
                                  "phonemizer": self.model_cfg.phonemizer or "espeak",
                                  "espeak_voice": meta.get("espeak", {}).get("voice", "en-us"),
                                  "sampling_rate": int(meta["audio"]["sample_rate"])}
            elif kind == "omnitune":
                self._frontend = json.loads((src / FRONTEND_FILE).read_text())
            else:
                from transformers import VitsConfig

                from .vits_tokenizer import TOKENIZER

                if self.model_cfg.phonemizer is not None:
                    raise OmnituneError(f"model.phonemizer: {src} brings its own VitsTokenizer (which decides "
                                        "about phonemes); leave model.phonemizer unset")
                config = VitsConfig.from_pretrained(str(src), revision=self.model_cfg.revision)
                self._frontend = {"phonemizer": TOKENIZER, "sampling_rate": int(config.sampling_rate)}
        return self._frontend

    @property
    def tokenizer(self):
        """The VitsTokenizer of a transformers VITS front end: from the saved model when restored."""
        if self._tokenizer is None:
            from .vits_tokenizer import load_tokenizer

            where = self._tokenizer_dir or self._source()
            self._tokenizer = load_tokenizer(where, None if self._tokenizer_dir else self.model_cfg.revision)
        return self._tokenizer

    def text_ids(self, text: str) -> tuple[list[int], list[str]]:
        """(ids, symbols the voice does not know, left out); ids are [] when nothing is left."""
        from .phonemes import PhonemeIds, phonemize
        from .vits_tokenizer import TOKENIZER, text_ids

        fe = self.frontend
        if fe["phonemizer"] == TOKENIZER:
            return text_ids(self.tokenizer, text)
        ids = PhonemeIds(fe["phoneme_id_map"], fe.get("espeak_voice", "en-us"))
        symbols = phonemize(text, ids.voice) if fe["phonemizer"] == "espeak" else text.lower()
        out, missing = ids.ids(symbols)
        return (out if len(out) > 3 else []), missing  # BOS, pad and EOS alone say nothing

    @property
    def sampling_rate(self) -> int:
        return int(self.frontend["sampling_rate"])

    def _vits(self) -> nn.Module:
        from .vits_piper import build_vits, load_vits, piper_to_vits

        src = self._source()
        kind = self._kind(src)
        if kind == "piper":
            model = piper_to_vits(src)[0]
            if not self.model_cfg.pretrained:
                model = build_vits(model.config)
            return model
        from transformers import VitsConfig

        revision = self.model_cfg.revision if kind == "transformers" else None
        if not self.model_cfg.pretrained:
            return build_vits(VitsConfig.from_pretrained(str(src), revision=revision))
        if kind == "transformers":
            from transformers import VitsModel

            return VitsModel.from_pretrained(str(src), revision=revision)
        return load_vits(src)

    def _wrap(self, vits: nn.Module, discriminator: bool = True) -> TTSModel:
        from .discriminator import MultiPeriodDiscriminator

        cfg = self.model_cfg
        for attr in ("noise_scale", "noise_scale_duration", "speaking_rate"):
            if getattr(cfg, attr) is not None:
                setattr(vits, attr, getattr(cfg, attr))
        disc = MultiPeriodDiscriminator(width=cfg.discriminator_width) if discriminator and cfg.discriminator_width else None
        return TTSModel(vits, disc)

    def build_model(self) -> nn.Module:
        return self._wrap(self._vits())

    def resolve_labels(self) -> None:
        return None

    def restore(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        if (model_dir / FRONTEND_FILE).is_file():
            self._frontend = json.loads((model_dir / FRONTEND_FILE).read_text())
        if (model_dir / "config.json").is_file():  # a whole model (an adapter folder keeps the base)
            self._restored = model_dir
        if (model_dir / "vocab.json").is_file():  # the VitsTokenizer saved with the model
            self._tokenizer_dir, self._tokenizer = model_dir, None
        self._predictions = model_dir.parent / "predictions"

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        v = model.vits
        top = [v.posterior_encoder] + ([model.discriminator] if model.discriminator is not None else [])
        top += [m for n, m in v.named_children() if n not in
                ("text_encoder", "duration_predictor", "decoder", "flow", "posterior_encoder")]
        return [LayerGroup("text_encoder", [v.text_encoder]), LayerGroup("duration_predictor", [v.duration_predictor]),
                LayerGroup("decoder", [v.decoder]), LayerGroup("flow", [v.flow]),
                LayerGroup("posterior_encoder", top)]

    def optimizer_parts(self, model: nn.Module) -> dict[str, list[nn.Parameter]] | None:
        if model.discriminator is None:
            return None
        disc = {id(p) for p in model.discriminator.parameters()}
        return {"discriminator": list(model.discriminator.parameters()),
                "generator": [p for p in model.parameters() if id(p) not in disc]}

    # ------------------------------------------------------------------ data
    def _hop(self, vits) -> int:
        return int(np.prod(vits.config.upsample_rates))

    def _items(self, utts: list[sdata.Utterance], split: str, report: DataReport) -> list[dict]:
        cfg, sr = self.data_cfg, self.sampling_rate
        out, drops = [], {}
        for u in utts:
            try:
                wave = load_clip(u.audio, sr)
            except AudioProblem as exc:
                drops.setdefault(str(exc), []).append(u.name)
                continue
            seconds = len(wave) / sr
            if (cfg.max_seconds and seconds > cfg.max_seconds) or (cfg.min_seconds and seconds < cfg.min_seconds):
                drops.setdefault("outside the duration limits", []).append(u.name)
                continue
            ids, missing = self.text_ids(u.text)
            if not ids:
                drops.setdefault("empty text", []).append(u.name)
                continue
            if missing:
                report.notes.append(f"{u.name}: symbols not in the voice's map, dropped from the text: "
                                    f"{''.join(sorted(set(missing)))!r}")
            peak = float(np.abs(wave).max())
            out.append({"name": u.name, "text": u.text, "ids": ids, "wave": (wave * (0.95 / peak)).astype(np.float32)})
        for reason, names in drops.items():
            report.drop(split, reason, len(names), names)
        return out

    def _utterances(self, source: str, report: DataReport, split: str) -> list[sdata.Utterance]:
        cfg = self.data_cfg
        return sdata.local_utterances(Path(assets.resolve(source)), cfg.transcripts, cfg.audio_dir,
                                      cfg.path_column, cfg.text_column, report, split)

    def build_datasets(self) -> DataBundle:
        cfg = self.data_cfg
        report = DataReport(source=cfg.source)
        splits: dict[str, list] = {"train": sorted(self._utterances(cfg.source, report, "all"), key=lambda u: u.name)}
        for name, extra in (("validation", cfg.validation_source), ("test", cfg.test_source)):
            if extra:
                splits[name] = self._utterances(extra, report, name)
        splits = canonical_splits(splits)
        splits = split_off(splits, val_size=cfg.val_size, test_size=cfg.test_size, seed=self.seed, report=report)
        # Capped before decoding and phonemising (a quick subset stays quick); clips dropped after
        # that are counted in the report.
        splits = cap_splits({k: splits[k] for k in ("train", "validation", "test")}, max_samples=cfg.max_samples,
                            max_eval_samples=cfg.max_eval_samples, seed=self.seed, report=report)
        items = {name: self._items(splits[name], name, report) for name in ("train", "validation", "test")}
        require_rows(items, cfg.source, report)
        minutes = sum(len(it["wave"]) for it in items["train"]) / self.sampling_rate / 60
        report.notes.append(f"audio resampled to {self.sampling_rate} Hz, peak-normalised; training audio "
                            f"{minutes:.1f} min; text front end: {self.frontend['phonemizer']}")
        ds = {k: _Dataset(v, self.seed) for k, v in items.items()}
        return DataBundle(train=ds["train"], validation=ds["validation"], test=ds["test"], report=report,
                          train_lengths=ds["train"].lengths())

    def load_eval_dataset(self, source: str, label_names: list[str] | None) -> tuple[Any, DataReport]:
        report = DataReport(source=source)
        items = self._items(self._utterances(source, report, "eval"), "eval", report)
        if not items:
            raise DataError(f"{source}: no usable clips (see the data report: {report.dropped})")
        return _Dataset(items, self.seed), report

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        b = len(samples)
        t_x = max(len(s["ids"]) for s in samples)
        t_w = max(len(s["wave"]) for s in samples)
        ids = torch.zeros(b, t_x, dtype=torch.long)
        mask = torch.zeros(b, t_x, dtype=torch.long)
        wave = torch.zeros(b, t_w)
        for i, s in enumerate(samples):
            ids[i, :len(s["ids"])] = torch.tensor(s["ids"])
            mask[i, :len(s["ids"])] = 1
            wave[i, :len(s["wave"])] = torch.from_numpy(s["wave"])
        return {"input_ids": ids, "attention_mask": mask, "wave": wave,
                "wave_lengths": torch.tensor([len(s["wave"]) for s in samples]),
                "noise_seed": torch.tensor([s["noise_seed"] for s in samples]),
                "index": torch.tensor([s["index"] for s in samples]), "text": [s["text"] for s in samples],
                "name": [s["name"] for s in samples]}

    # ------------------------------------------------------------------ forward
    def _spec(self, vits, wave: torch.Tensor) -> torch.Tensor:
        n_fft = (vits.config.spectrogram_bins - 1) * 2
        return L.linear_spectrogram(wave, n_fft, self._hop(vits))

    def _mel(self, vits, wave: torch.Tensor) -> torch.Tensor:
        spec = self._spec(vits, wave)
        return L.mel_from_linear(spec, vits.config.sampling_rate, self.model_cfg.n_mels)

    def _noise(self, batch, shape_fn) -> torch.Tensor:
        """Per-item standard normal noise from the item's seed, padded: independent of batching."""
        parts = []
        for i, seed in enumerate(batch["noise_seed"].tolist()):
            g = torch.Generator().manual_seed(int(seed))
            parts.append(torch.randn(*shape_fn(i), generator=g))
        out = torch.zeros(len(parts), parts[0].shape[0], max(p.shape[-1] for p in parts))
        for i, p in enumerate(parts):
            out[i, :, :p.shape[-1]] = p
        return out.to(batch["wave"].device)

    def _generate(self, model: TTSModel, batch: dict) -> dict:
        """The generator's training pass: text prior, posterior, MAS, duration NLL, a decoded window."""
        v = model.vits
        cfg = self.model_cfg
        hop = self._hop(v)
        seg = cfg.segment_frames
        dev = batch["wave"].device
        spec = self._spec(v, batch["wave"])
        y_len = torch.clamp(batch["wave_lengths"] // hop, max=spec.shape[-1])
        t_y = int(y_len.max())
        spec = spec[..., :t_y]
        y_mask = (torch.arange(t_y, device=dev)[None] < y_len[:, None]).unsqueeze(1).float()
        x_mask = batch["attention_mask"].unsqueeze(1).float()
        x_len = batch["attention_mask"].sum(1)

        te = v.text_encoder(input_ids=batch["input_ids"], padding_mask=x_mask.transpose(1, 2),
                            attention_mask=batch["attention_mask"])
        hidden = te.last_hidden_state.transpose(1, 2)
        m_p, logs_p = te.prior_means.transpose(1, 2), te.prior_log_variances.transpose(1, 2)

        pe = v.posterior_encoder
        h = pe.wavenet(pe.conv_pre(spec) * y_mask, y_mask)
        m_q, logs_q = torch.split(pe.conv_proj(h) * y_mask, pe.out_channels, dim=1)
        z = (m_q + self._noise(batch, lambda i: (m_q.shape[1], int(y_len[i]))) * torch.exp(logs_q)) * y_mask
        z_p = v.flow(z, y_mask, reverse=False)

        path = L.monotonic_alignment(L.alignment_scores(z_p.detach(), m_p.detach(), logs_p.detach()),
                                     y_mask.transpose(1, 2) * x_mask)  # (b, t_y, t_x)
        durations = path.sum(1).unsqueeze(1)  # (b, 1, t_x)
        dur_nll = self._duration_nll(v, hidden, x_mask, durations, batch) / x_len.float()

        m_p_y = torch.matmul(path, m_p.transpose(1, 2)).transpose(1, 2)
        logs_p_y = torch.matmul(path, logs_p.transpose(1, 2)).transpose(1, 2)
        kl = ((logs_p_y - logs_q - 0.5 + 0.5 * (z_p - m_p_y) ** 2 * torch.exp(-2.0 * logs_p_y)) * y_mask).sum([1, 2])
        kl = kl / y_len.float()

        starts = torch.stack([
            torch.randint(0, max(1, int(y_len[i]) - seg + 1), (1,),
                          generator=torch.Generator().manual_seed(int(s) + 1))[0]
            for i, s in enumerate(batch["noise_seed"].tolist())]).to(dev)
        z_seg = L.slice_segments(z, starts, seg)
        wave_hat = v.decoder(z_seg)  # (b, 1, seg * hop)
        wave_real = L.slice_segments(batch["wave"].unsqueeze(1), starts * hop, seg * hop)
        return {"wave_hat": wave_hat, "wave_real": wave_real, "kl": kl, "dur": dur_nll,
                "decoder_trains": any(p.requires_grad for p in v.decoder.parameters())}

    def _duration_nll(self, v, hidden, x_mask, durations, batch) -> torch.Tensor:
        """The stochastic duration predictor's variational NLL (VITS eq. 12) per item, with the
        posterior noise drawn from the item's seed."""
        dp = v.duration_predictor
        if not hasattr(dp, "post_flows"):  # deterministic duration predictor: MSE on log durations
            log_pred = dp(hidden, x_mask)
            return (((log_pred - torch.log(durations + 1e-6) * x_mask) ** 2) * x_mask).sum([1, 2])
        inputs = dp.conv_proj(dp.conv_dds(dp.conv_pre(hidden.detach()), x_mask)) * x_mask
        hs = dp.post_conv_proj(dp.post_conv_dds(dp.post_conv_pre(durations), x_mask)) * x_mask
        eps = self._noise(batch, lambda i: (2, int(batch["attention_mask"][i].sum()))) * x_mask
        logdet_q, z_q = 0.0, eps
        for flow in dp.post_flows:
            z_q, logdet = flow(z_q, x_mask, global_conditioning=inputs + hs)
            z_q = torch.flip(z_q, [1])
            logdet_q = logdet_q + logdet
        z_u, z1 = torch.split(z_q, [1, 1], dim=1)
        u = torch.sigmoid(z_u) * x_mask
        z0 = (durations - u) * x_mask
        logdet_q = logdet_q + torch.sum((nn.functional.logsigmoid(z_u) + nn.functional.logsigmoid(-z_u)) * x_mask, [1, 2])
        logq = torch.sum(-0.5 * (math.log(2 * math.pi) + eps ** 2) * x_mask, [1, 2]) - logdet_q
        z0 = torch.log(torch.clamp_min(z0, 1e-5)) * x_mask
        logdet = torch.sum(-z0, [1, 2])
        latents = torch.cat([z0, z1], 1)
        for flow in dp.flows:
            latents, ld = flow(latents, x_mask, global_conditioning=inputs)
            latents = torch.flip(latents, [1])
            logdet = logdet + ld
        nll = torch.sum(0.5 * (math.log(2 * math.pi) + latents ** 2) * x_mask, [1, 2]) - logdet
        return nll + logq

    @staticmethod
    def _per_item(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1)

    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool, part: str | None = None) -> dict[str, Any]:
        if not train:
            return self._evaluate(model, batch)
        b = batch["wave"].shape[0]
        # The discriminator part (first) generates and leaves the result for the generator part.
        gen = batch.pop("_generated", None) if part == "generator" else None
        if gen is None:
            gen = self._generate(model, batch)
            if part == "discriminator":
                batch["_generated"] = gen
        disc = model.discriminator
        if part == "discriminator":
            real, _ = disc(gen["wave_real"])
            fake, _ = disc(gen["wave_hat"].detach())
            loss = sum(self._per_item((1 - r) ** 2) + self._per_item(f ** 2) for r, f in zip(real, fake))
            return {"loss_sum": loss.sum(), "num_items": b, "outputs": {"disc": loss.detach()}}
        v = model.vits
        mel_hat = self._mel(v, gen["wave_hat"].squeeze(1))
        mel_real = self._mel(v, gen["wave_real"].squeeze(1))
        mel = self._per_item((mel_hat - mel_real).abs())
        loss = self.model_cfg.c_mel * mel + self.model_cfg.c_kl * gen["kl"] + gen["dur"]
        if disc is not None and gen["decoder_trains"]:
            fake, fake_feats = disc(gen["wave_hat"])
            with torch.no_grad():
                _, real_feats = disc(gen["wave_real"])
            adv = sum(self._per_item((1 - f) ** 2) for f in fake)
            fm = 2 * sum(self._per_item((r - g).abs()) for rs, gs in zip(real_feats, fake_feats) for r, g in zip(rs, gs))
            loss = loss + adv + fm
        return {"loss_sum": loss.sum(), "num_items": b,
                "outputs": {"mel_l1": mel.detach(), "kl": gen["kl"].detach(), "dur": gen["dur"].detach()}}

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """Per item, on its own (no padding effects): posterior mean -> flow -> MAS; mel L1 of the
        whole decoded utterance, KL, squared error of predicted log durations."""
        v = model.vits
        hop = self._hop(v)
        mels, kls, durs = [], [], []
        for i in range(batch["wave"].shape[0]):
            n_x = int(batch["attention_mask"][i].sum())
            wave = batch["wave"][i:i + 1, :int(batch["wave_lengths"][i])]
            ids = batch["input_ids"][i:i + 1, :n_x]
            spec = self._spec(v, wave)
            t_y = min(spec.shape[-1], wave.shape[-1] // hop)
            spec = spec[..., :t_y]
            y_mask = torch.ones(1, 1, t_y, device=wave.device)
            x_mask = torch.ones(1, 1, n_x, device=wave.device)
            te = v.text_encoder(input_ids=ids, padding_mask=x_mask.transpose(1, 2))
            m_p, logs_p = te.prior_means.transpose(1, 2), te.prior_log_variances.transpose(1, 2)
            pe = v.posterior_encoder
            m_q, logs_q = torch.split(pe.conv_proj(pe.wavenet(pe.conv_pre(spec), y_mask)), pe.out_channels, dim=1)
            z_p = v.flow(m_q, y_mask, reverse=False)
            path = L.monotonic_alignment(L.alignment_scores(z_p, m_p, logs_p), torch.ones(1, t_y, n_x))
            m_p_y = torch.matmul(path, m_p.transpose(1, 2)).transpose(1, 2)
            logs_p_y = torch.matmul(path, logs_p.transpose(1, 2)).transpose(1, 2)
            kls.append(float((logs_p_y - logs_q - 0.5 + 0.5 * (z_p - m_p_y) ** 2 * torch.exp(-2 * logs_p_y)).sum() / t_y))
            wave_hat = v.decoder(m_q)[0, 0]
            n = min(wave_hat.shape[-1], wave.shape[-1])
            mels.append(float((self._mel(v, wave_hat[None, :n]) - self._mel(v, wave[:, :n])).abs().mean()))
            hidden = te.last_hidden_state.transpose(1, 2)
            dp = v.duration_predictor
            if hasattr(dp, "post_flows"):
                log_pred = dp(hidden, x_mask, reverse=True, noise_scale=0.0)
            else:
                log_pred = dp(hidden, x_mask)
            durs.append(float(((log_pred[:, 0] - torch.log(path.sum(1))) ** 2).mean()))
        mel_t, kl_t, dur_t = (torch.tensor(x, dtype=torch.float64) for x in (mels, kls, durs))
        loss = self.model_cfg.c_mel * mel_t + self.model_cfg.c_kl * kl_t + dur_t
        return {"loss_sum": loss.sum(), "num_items": len(mels),
                "outputs": {"mel_l1": mel_t, "kl": kl_t, "dur": dur_t}}

    def predict_batch(self, model: nn.Module, batch: dict[str, Any], outputs: dict[str, Any]
                      ) -> tuple[list[Any], list[Any]]:
        o = outputs["outputs"]
        preds = [{"mel_l1": float(m), "kl": float(k), "dur": float(d)}
                 for m, k, d in zip(o["mel_l1"], o["kl"], o["dur"])]
        return preds, list(batch["name"])

    def compute_metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        if not predictions:
            return {"mel_l1": float("nan"), "kl": float("nan"), "log_duration_mse": float("nan")}
        return {"mel_l1": float(np.mean([p["mel_l1"] for p in predictions])),
                "kl": float(np.mean([p["kl"] for p in predictions])),
                "log_duration_mse": float(np.mean([p["dur"] for p in predictions]))}

    def sample_outputs(self, model: nn.Module, dataset: Any, out_dir: Path, stage: str) -> dict[str, float]:
        """The first ``model.sample_sentences`` held-out sentences synthesised by ``model`` into
        ``out_dir/samples/`` (WAVs, mel images) and scored against their recordings: MCD-DTW, F0
        distance and, with ``model.sample_asr``, the WER of the ASR transcripts (speech/tts_samples.py)."""
        from . import tts_samples as ts

        items = dataset.items[:self.model_cfg.sample_sentences]
        if not items:
            return {}
        out = Path(out_dir) / ts.SAMPLES_DIR
        out.mkdir(parents=True, exist_ok=True)
        if self._scorer is None:  # loaded once, for both stages
            self._scorer = ts.load_transcriber(self.model_cfg.sample_asr)
        transcriber, asr_note = self._scorer
        ts.write_targets(items, self.sampling_rate, out)
        ts.write_manifest(out, items, self.sampling_rate, self.model_cfg.sample_asr, asr_note)
        return ts.synthesize_and_score(lambda text: self.synthesize(model, text, seed=0), items, self.sampling_rate,
                                       out, stage, transcriber)

    def report_extras(self, out_dir: Path, split: str, predictions: list[Any], references: list[Any],
                      dataset: Any) -> list[str]:
        from .tts_samples import samples_md

        block = samples_md(Path(out_dir))
        return [block] if block else []

    # ------------------------------------------------------------------ save, load, synthesise
    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        frontend = self.frontend
        from .vits_tokenizer import TOKENIZER

        if frontend["phonemizer"] == TOKENIZER:  # the text front end travels with the model
            self.tokenizer.save_pretrained(out_dir)
        if hasattr(model, "peft_config"):  # adapter-only files
            model.save_pretrained(out_dir)
            (out_dir / FRONTEND_FILE).write_text(json.dumps(frontend, ensure_ascii=False, indent=1))
            return
        vits = model.vits if isinstance(model, TTSModel) else model
        vits.save_pretrained(out_dir)
        (out_dir / FRONTEND_FILE).write_text(json.dumps(self.frontend, ensure_ascii=False, indent=1))
        card = out_dir / "README.md"
        card.write_text(
            f"# VITS voice fine-tuned with omnitune\n\nBase: `{self.model_cfg.name}`. Generator only "
            "(transformers `VitsModel`, load with `omnitune.speech.vits_piper.load_vits`). When the base is a "
            "Piper voice, its posterior encoder, the duration predictor's posterior flows and first conv flow, "
            "and the discriminator were not in the ONNX file and were initialised fresh before fine-tuning.\n")

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        from .vits_piper import load_vits

        self.restore(model_dir)
        return self._wrap(load_vits(Path(model_dir)), discriminator=False)

    @torch.no_grad()
    def synthesize(self, model: nn.Module, text: str, seed: int = 0) -> np.ndarray:
        vits = model.vits if isinstance(model, TTSModel) else model
        vits.eval()
        ids, missing = self.text_ids(text)
        if not ids:
            unknown = f" (unknown: {''.join(sorted(set(missing)))!r})" if missing else ""
            raise DataError(f"text {text!r}: the voice's text front end maps it to no symbol it knows{unknown}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = vits(input_ids=torch.tensor([ids], device=next(vits.parameters()).device))
        return out.waveform[0].float().cpu().numpy()

    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        import soundfile as sf

        folder = self._predictions or Path(tempfile.mkdtemp(prefix="omnitune-tts-"))
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for i, text in enumerate(inputs):
            wave = self.synthesize(model, text)
            path = folder / f"{i:03d}.wav"
            sf.write(str(path), wave, self.sampling_rate)
            out.append({"input": text, "wav": str(path), "seconds": round(len(wave) / self.sampling_rate, 3)})
        return out

    def onnx_generator(self, model: nn.Module) -> nn.Module:
        """The generator as one traceable module for ``omnitune export`` (speech/tts_export.py)."""
        from .tts_export import VitsGenerator

        return VitsGenerator(model.vits if isinstance(model, TTSModel) else model)
