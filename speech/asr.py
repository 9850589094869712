"""Whisper speech recognition on the shared core: the ``speech-recognition`` task.

Greedy decoding, WER/CER after one declared normaliser, a table of the worst utterances, and an
optional short encoder window (``model.max_source_seconds``) for clips much shorter than 30 s.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from omnitune.core.base import assets
from omnitune.core.base.data import (Storage, cap_splits, canonical_splits, choose_storage, drop_overlap, is_hub,
                                require_rows, split_off)
from omnitune.core.base.errors import DataError, OmnituneError
from omnitune.core.base.exporting import ExportSpec
from omnitune.core.base.recipe import DataConfig, ModelConfig, RegularizationConfig
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup

from . import data as sdata
from . import eval_sets as extra_sets
from . import metrics as smetrics
from .audio import SAMPLE_RATE, AudioProblem, chunk_bounds, load_clip
from .augment import AugmentConfig
from .model import (WHISPER_EXPORT, RepeatGuard, configure_language, load_whisper, save_model, set_encoder_window,
                    set_feature_window, whisper_decoding, whisper_layer_groups)


class SpeechModelConfig(ModelConfig):
    language: str | None = None
    """Language token for multilingual checkpoints (e.g. "english"); English-only checkpoints (*.en) have
    none: leave it unset."""
    task: Literal["transcribe", "translate"] | None = None
    """Task token for multilingual checkpoints: transcribe, or translate into English; unset for English-
    only checkpoints (*.en)."""
    max_source_seconds: int | None = Field(default=None, ge=1, le=30)
    """Short encoder window in whole seconds (1-30): positions cut and features padded to it.
    None keeps the model's own window (30 s). Size it to the longest clip you keep."""
    max_new_tokens: int = Field(default=128, gt=0, le=440)
    """Upper bound on generated tokens per utterance (greedy decoding)."""
    repeat_guard: int = Field(default=6, ge=0)
    """Repetition guard: decoding stops once the last 1-4 tokens have repeated this many times in a
    row ("rather rather rather ..."); 0 turns it off. Greedy decoding of a multilingual Whisper
    on an unexpected language can otherwise loop until max_new_tokens."""


class EvalSetConfig(BaseModel):
    """An extra evaluation set (``data.eval_sets``), scored with the starting (pretrained) model and
    with the fine-tuned one; results in ``eval_sets.json`` and the report."""
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    source: str | None = None
    """A folder / transcript file / asset; None: the run's own test clips."""
    match_test: bool = True
    """Keep only the clips whose names (without suffix) are test clips of the run: a codec twin of
    the training data (same names, e.g. asset:asterisk-prompts-gsm) then never scores a clip the
    model trained on."""
    noise: str | None = None
    """Mix real noise (a folder, file or asset such as asset:moh-noise) at exactly this SNR; the
    segment of each clip is seeded by (run seed, clip index), so every evaluation hears the same audio."""
    snr_db: float | None = None
    """The signal-to-noise ratio (dB) at which `noise` is mixed; set together with noise."""
    max_samples: int | None = Field(default=None, gt=0)
    """Score at most this many clips of the set (the first ones); None: all."""

    @model_validator(mode="after")
    def _noise(self) -> "EvalSetConfig":
        if (self.noise is None) != (self.snr_db is None):
            raise ValueError("noise and snr_db go together")
        return self


class SpeechDataConfig(DataConfig):
    transcripts: str | None = None
    """Transcript file inside a source folder; None looks for transcripts.{csv,jsonl,txt}, metadata.csv."""
    audio_dir: str | None = None
    """Folder that relative audio paths are resolved against; None: the transcript file's folder."""
    path_column: str = "path"
    """Transcript tables: the column with the audio file path (relative to audio_dir)."""
    text_column: str = "text"
    """The column with the transcript."""
    audio_column: str = "audio"
    """Hub datasets: the column holding the audio."""
    min_seconds: float | None = Field(default=None, ge=0)
    """Clips shorter than this many seconds are dropped (counted in the report, not as bad files)."""
    max_seconds: float | None = Field(default=None, gt=0)
    """Clips longer than this many seconds are dropped (counted in the report, not as bad files)."""
    augment: list[AugmentConfig] = []
    """Seeded augmentation of training clips, applied in this order."""
    max_bad_share: float = Field(default=0.2, ge=0, le=1)
    """Unusable files (unreadable, empty, silent, too long for the window, missing audio or
    transcript) above this share of all clips stop the run with a DataError."""
    normalizer: smetrics.NormalizerName = "whisper_english"
    """Applied identically to references and hypotheses (baseline and fine-tuned) before WER/CER."""
    speaker_column: str | None = None
    """A column of a CSV/JSONL transcript file naming the speaker: made splits are then grouped by
    speaker (no speaker in two splits) and the report gives per-speaker WER."""
    eval_sets: dict[str, EvalSetConfig] = {}
    """Extra evaluation sets {name: {source, noise, snr_db, ...}} scored before and after fine-tuning
    (codec twins, noisy mixes); see EvalSetConfig."""
    storage: Storage = "auto"
    """memory: every decoded, resampled clip held in RAM. disk: decoded once into a store under
    $OMNITUNE_CACHE/arrays (keyed by the audio files and the sample rate) and read per item: flat
    RSS as the data grows, no decoding on later runs. auto: disk above
    omnitune.core.base.data.AUTO_DISK_BYTES of audio files. Same clips, drops and batches either way."""

    @model_validator(mode="after")
    def _limits(self) -> "SpeechDataConfig":
        if self.labels is not None:
            raise ValueError("labels: speech recognition has transcripts, not labels (use text_column)")
        if self.min_seconds is not None and self.max_seconds is not None and self.min_seconds >= self.max_seconds:
            raise ValueError("min_seconds must be below max_seconds")
        return self


def _pad_labels(labels: list[list[int]]) -> torch.Tensor:
    """Right-pad with -100: cross-entropy ignores those positions, so padding costs no loss."""
    width = max(len(x) for x in labels)
    out = torch.full((len(labels), width), -100, dtype=torch.long)
    for i, x in enumerate(labels):
        out[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    return out


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs: <|startoftranscript|> then the labels, with -100 replaced by the pad id."""
    dec = labels.new_full(labels.shape, pad_id)
    dec[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad_id)
    dec[:, 0] = start_id
    return dec


class SpeechRecognitionTask:
    name: ClassVar[str] = "speech-recognition"
    # The fields only some tasks read (core.base.recipe.TASK_IMPLEMENTED) that this one reads.
    implemented_fields: ClassVar[frozenset[str]] = frozenset({"regularization.label_smoothing"})
    ModelConfig: ClassVar[type] = SpeechModelConfig
    DataConfig: ClassVar[type] = SpeechDataConfig
    main_metric: ClassVar[str] = "wer"
    main_metric_mode: ClassVar[str] = "min"
    pipeline_tag: ClassVar[str] = "automatic-speech-recognition"  # Hub model-card metadata (ModelCardInfo)
    card_library: ClassVar[str] = "transformers"

    def export_spec(self) -> ExportSpec:
        """ONNX export (Exportable): Whisper's encoder and cached decoders (speech/model.py)."""
        return WHISPER_EXPORT

    def onnx_decoding(self, model: nn.Module) -> dict[str, Any]:
        """Greedy decoding's settings for the exported graphs (the spec's ``decoding``)."""
        return whisper_decoding(model, self.processor.tokenizer, self.model_cfg.max_new_tokens)

    def __init__(self, *, model: SpeechModelConfig, data: SpeechDataConfig,
                 regularization: RegularizationConfig, seed: int) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.label_smoothing = regularization.label_smoothing
        self.label_names = None  # not a classification task
        self._processor = None
        self._gen_kwargs: dict[str, Any] = {}
        self._window: float | None = None
        self._max_label_tokens = 448
        self._normalize = None
        self._multilingual = False
        self._lang_ids: dict[int, str] = {}  # language token id -> code, multilingual checkpoints
        self._languages: dict[str, str] = {}  # clip name -> detected language (no model.language)
        self._model_config = None  # the built model's config: its dropout settings (feature cache)
        self._test_clips: list[sdata.Clip] = []
        self._storage = "memory"  # data.storage as resolved by build_datasets (extra eval sets use it too)

    # ------------------------------------------------------------------ processor and model
    @property
    def model_path(self) -> str:
        return assets.resolve(self.model_cfg.name)

    @property
    def processor(self):
        if self._processor is None:
            from transformers import GenerationConfig, WhisperConfig, WhisperProcessor

            path, rev = self.model_path, self.model_cfg.revision
            try:
                processor = WhisperProcessor.from_pretrained(path, revision=rev)
                config = WhisperConfig.from_pretrained(path, revision=rev)
            except OSError as exc:
                raise OmnituneError(f"model.name {self.model_cfg.name!r}: cannot load a Whisper processor ({exc})") from None
            try:
                gen = GenerationConfig.from_pretrained(path, revision=rev)
            except OSError:  # a checkpoint without generation_config.json
                gen = GenerationConfig.from_model_config(config)
            self._use_processor(processor, config, gen)
        return self._processor

    def _use_processor(self, processor, config, generation_config) -> None:
        model_window = config.max_source_positions / 50
        seconds = self.model_cfg.max_source_seconds
        if seconds is not None and seconds > model_window:
            raise OmnituneError(f"model.max_source_seconds={seconds}: longer than the model's window ({model_window:g} s)")
        if seconds is not None:
            set_feature_window(processor.feature_extractor, seconds)
        self._window = float(seconds or model_window)
        self._max_label_tokens = config.max_target_positions - 4  # room for the prefix tokens
        self._gen_kwargs = configure_language(generation_config, processor.tokenizer, self.model_cfg.language,
                                              self.model_cfg.task)
        self._multilingual = bool(getattr(generation_config, "is_multilingual", False))
        lang_to_id = getattr(generation_config, "lang_to_id", None) or {}
        self._lang_ids = {int(i): tok.strip("<|>") for tok, i in lang_to_id.items()}
        spelling = getattr(processor.tokenizer, "english_spelling_normalizer", None)
        self._normalize = smetrics.get_normalizer(self.data_cfg.normalizer, spelling)
        self._processor = processor

    @property
    def normalize(self):
        """The declared text normaliser (with the checkpoint's spelling table, if it ships one)."""
        _ = self.processor
        return self._normalize

    @property
    def window_seconds(self) -> float:
        _ = self.processor
        return self._window

    def cv_rows(self):
        """``omnitune cv``: the source's clips as transcript-manifest rows (unstratified folds)."""
        return sdata.cv_rows(self)

    def build_model(self) -> nn.Module:
        processor = self.processor
        model, _ = load_whisper(self.model_path, self.model_cfg.pretrained, self.model_cfg.revision)
        if self.model_cfg.max_source_seconds is not None:
            set_encoder_window(model, processor.feature_extractor, self.model_cfg.max_source_seconds)
        self._model_config = model.config
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return whisper_layer_groups(model)

    # ------------------------------------------------------------------ data
    def _utterances(self, source: str, report: DataReport, split: str) -> dict[str, list[sdata.Utterance]]:
        """{split: utterances} of one source: Hub sources may bring their own splits."""
        cfg = self.data_cfg
        if is_hub(source):
            return sdata.hub_utterances(source, None, cfg.audio_column, cfg.text_column, report)
        path = Path(assets.resolve(source))
        return {split: sdata.local_utterances(path, cfg.transcripts, cfg.audio_dir, cfg.path_column,
                                              cfg.text_column, report, split, cfg.speaker_column)}

    def _dataset(self, clips: list[sdata.Clip], augment: list) -> sdata.SpeechDataset:
        return sdata.SpeechDataset(clips, self.processor.feature_extractor, self.processor.tokenizer, augment,
                                   self.seed, self._max_label_tokens)

    def _clean(self, utts, split: str, report: DataReport, storage: str | None = None) -> list[sdata.Clip]:
        cfg = self.data_cfg
        return sdata.clean_clips(utts, split, report, self.normalize, self.window_seconds, cfg.min_seconds,
                                 cfg.max_seconds, storage or self._storage)

    def _resolve_storage(self, utts: list[sdata.Utterance], report: DataReport) -> str:
        storage = self.data_cfg.storage
        return choose_storage(storage, sdata.audio_bytes(utts) if storage == "auto" else 0, report)

    def build_datasets(self) -> DataBundle:
        cfg = self.data_cfg
        if self._multilingual_without_language():
            raise OmnituneError(f"model.name {self.model_cfg.name!r} is a multilingual Whisper and model.language is "
                                "not set: training labels need the language token. Set model.language (e.g. "
                                "english); evaluation and predict without it detect the language per utterance")
        report = DataReport(source=cfg.source)
        found = canonical_splits(self._utterances(cfg.source, report, "all"))
        splits: dict[str, list[sdata.Utterance]] = {}
        for name, extra in (("validation", cfg.validation_source), ("test", cfg.test_source)):
            if extra:
                splits[name] = [u for v in self._utterances(extra, report, name).values() for u in v]
            elif name in found:
                splits[name] = found[name]
        pool = found.get("train") or [u for k, v in found.items() if k not in ("validation", "test") for u in v]
        # Sorted by name, so the seeded split does not depend on the order the source lists clips in.
        splits["train"] = sorted(pool, key=lambda u: u.name)
        speakers = None
        if cfg.speaker_column:
            unnamed = [u.name for u in splits["train"] if u.speaker is None]
            if unnamed:
                raise DataError(f"{cfg.source}: {len(unnamed)} clips have no {cfg.speaker_column!r} "
                                f"(data.speaker_column), e.g. {unnamed[:3]}")
            speakers = lambda utts: [u.speaker for u in utts]  # noqa: E731
        splits = split_off(splits, val_size=cfg.val_size, test_size=cfg.test_size, seed=self.seed, report=report,
                           groups=speakers)
        if speakers is not None:
            by_split = {k: sorted(set(speakers(v))) for k, v in splits.items()}
            report.notes.append("speakers per split (data.speaker_column " + repr(cfg.speaker_column) + "): "
                                + "; ".join(f"{k} {len(v)}" for k, v in by_split.items()))
        if cfg.drop_duplicates:  # before decoding: a clip that is also a training clip is not decoded twice
            splits = drop_overlap(splits, lambda utts: [sdata.audio_identity(u) for u in utts], report,
                                  "same audio")
        self._storage = self._resolve_storage([u for v in splits.values() for u in v], report)
        clips = {name: self._clean(splits[name], name, report) for name in ("train", "validation", "test")}
        sdata.check_bad_share(report, cfg.max_bad_share)
        # Caps apply to usable clips (after decoding), so a capped run gets the clips it asked for.
        clips = cap_splits(clips, max_samples=cfg.max_samples, max_eval_samples=cfg.max_eval_samples,
                           seed=self.seed, report=report)
        require_rows(clips, cfg.source, report)
        report.notes.append(f"normaliser: {cfg.normalizer} ({smetrics.NORMALIZER_DESCRIPTIONS[cfg.normalizer]})")
        report.notes.append(f"encoder window: {self.window_seconds:g} s; audio resampled to {SAMPLE_RATE} Hz")
        hours = sum(c.num_samples for c in clips["train"]) / SAMPLE_RATE / 3600
        report.notes.append(f"training audio: {hours * 60:.1f} min; augmentation: "
                            f"{[a.name for a in cfg.augment] or 'none'}")
        self._test_clips = clips["test"]
        train = self._dataset(clips["train"], list(cfg.augment))
        return DataBundle(train=train, validation=self._dataset(clips["validation"], []),
                          test=self._dataset(clips["test"], []), report=report, train_lengths=train.lengths())

    def load_eval_dataset(self, source: str, label_names: list[str] | None) -> tuple[Any, DataReport]:
        report = DataReport(source=source)
        utts = [u for v in self._utterances(source, report, "eval").values() for u in v]
        clips = self._clean(utts, "eval", report, self._resolve_storage(utts, report))
        sdata.check_bad_share(report, self.data_cfg.max_bad_share)
        if not clips:
            raise DataError(f"{source}: no usable clips (see the data report: {report.dropped})")
        return self._dataset(clips, []), report

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        # Every clip is already padded to the encoder window by the feature extractor.
        return {"input_features": torch.from_numpy(np.stack([s["input_features"] for s in samples])),
                "labels": _pad_labels([s["labels"] for s in samples]),
                "texts": [s["text"] for s in samples], "names": [s["name"] for s in samples]}

    # ------------------------------------------------------------------ forward and decoding
    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        core = getattr(model, "module", model)
        labels = batch["labels"]
        dec_in = shift_right(labels, core.config.decoder_start_token_id, core.config.pad_token_id)
        if train:  # through the (possibly DDP-wrapped) model, so gradients synchronise
            logits = model(input_features=batch["input_features"], decoder_input_ids=dec_in).logits
        else:
            # Evaluation encodes once and reuses the encoder states for the loss and for decoding,
            # inside the trainer's autocast (so it runs at the training precision).
            encoded = core.model.encoder(batch["input_features"])
            logits = core(encoder_outputs=encoded, decoder_input_ids=dec_in).logits
        # Summed over transcript tokens; the trainer divides by the tokens of the whole step.
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                               label_smoothing=self.label_smoothing if train else 0.0, reduction="sum")
        out = {"loss_sum": loss, "num_items": (labels != -100).sum(), "outputs": logits}
        if not train:
            out["generated"] = self.generate(model, encoder_outputs=encoded)
        return out

    @torch.no_grad()
    def generate(self, model: nn.Module, input_features: torch.Tensor | None = None,
                 encoder_outputs: Any = None) -> torch.Tensor:
        """Greedy decoding (one beam, no sampling) from features or precomputed encoder states."""
        from transformers.utils import logging as hf_logging

        core = getattr(model, "module", model)
        verbosity = hf_logging.get_verbosity()
        # Whisper's generate warns on every call about settings it handles itself (no attention mask
        # for fixed-length features, max_length next to max_new_tokens): expected here.
        hf_logging.set_verbosity_error()
        try:
            inputs = {"input_features": input_features} if encoder_outputs is None else {"encoder_outputs": encoder_outputs}
            extra = {}
            if self.model_cfg.repeat_guard:
                from transformers import LogitsProcessorList

                # The prompt (start, language, task tokens) is at most 4 tokens; loops are longer.
                extra["logits_processor"] = LogitsProcessorList(
                    [RepeatGuard(core.generation_config.eos_token_id, self.model_cfg.repeat_guard, prompt_len=4)])
            if self._multilingual_without_language():
                # Detect each utterance's language first (the language token the model finds most
                # likely after <|startoftranscript|>) and decode each in its own language.
                lang_ids = core.detect_language(**inputs, generation_config=core.generation_config,
                                                num_segment_frames=self.processor.feature_extractor.nb_max_frames)
                self._last_languages = [self._lang_ids.get(int(i)) for i in lang_ids.reshape(-1).tolist()]
                extra["language"] = [lang or "en" for lang in self._last_languages]
            return core.generate(**inputs, max_new_tokens=self.model_cfg.max_new_tokens, num_beams=1,
                                 do_sample=False, **self._gen_kwargs, **extra)
        finally:
            hf_logging.set_verbosity(verbosity)

    def _multilingual_without_language(self) -> bool:
        _ = self.processor
        return self._multilingual and self.model_cfg.language is None

    def languages(self, ids: torch.Tensor) -> list[str | None]:
        """The languages detected for the hypotheses ``ids`` of the last generate() call."""
        langs = list(getattr(self, "_last_languages", []))
        return langs if len(langs) == len(ids) else [None] * len(ids)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def predict_batch(self, model: nn.Module, batch: dict[str, Any], outputs: dict[str, Any]
                      ) -> tuple[list[Any], list[Any]]:
        """Normalised hypotheses and references (the normaliser is applied here, once)."""
        ids = outputs.get("generated")
        if ids is None:
            ids = self.generate(model, batch["input_features"])
        hyps = [self.normalize(t) for t in self.decode(ids)]
        refs = [self.normalize(t) for t in batch["texts"]]
        if self._multilingual_without_language():
            self._languages.update(zip(batch["names"], self.languages(ids)))
        return hyps, refs

    def compute_metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        """WER and CER in percent over already-normalised texts (see predict_batch)."""
        from omnitune.core.base.metrics import compute

        return {name: compute(name, predictions, references) for name in ("wer", "cer")}

    def report_extras(self, out_dir: Path, split: str, predictions: list[Any], references: list[Any],
                      dataset: Any) -> list[str]:
        names = list(getattr(dataset, "names", []))
        if len(names) != len(predictions):
            names = [str(i) for i in range(len(predictions))]
        with open(out_dir / f"predictions_{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["name", "reference", "hypothesis", "errors", "reference_words"])
            for n, r, h in zip(names, references, predictions):
                e = smetrics.utterance_errors(r, h)
                w.writerow([n, r, h, e["errors"], e["words"]])
        worst = smetrics.worst_utterances(names, references, predictions, top=10)
        table = smetrics.markdown_table(worst) if worst else "No errors."
        block = (f"### Worst {split} utterances\n\nTexts after the normaliser `{self.data_cfg.normalizer}`: "
                 f"{smetrics.NORMALIZER_DESCRIPTIONS[self.data_cfg.normalizer]}. All {split} predictions: "
                 f"`predictions_{split}.csv`.\n\n{table}\n")
        (out_dir / f"worst_utterances_{split}.md").write_text(block, encoding="utf-8")
        blocks = [block]
        clips = getattr(dataset, "clips", [])
        if len(clips) == len(predictions) and any(c.speaker is not None for c in clips):
            blocks.append(self._speaker_block(split, [c.speaker for c in clips], predictions, references))
        if self._multilingual_without_language() and self._languages:
            from collections import Counter

            counts = Counter(self._languages.get(n) or "(none)" for n in names)
            rows = "\n".join(f"| {lang} | {k} |" for lang, k in counts.most_common())
            blocks.append(f"### Detected languages ({split})\n\nmodel.language is not set: each utterance was "
                          f"transcribed in the language the model detected (per clip in `predictions_{split}.csv`'s "
                          f"order: `languages_{split}.json`).\n\n| language | clips |\n|---|---|\n{rows}\n")
            import json

            (out_dir / f"languages_{split}.json").write_text(json.dumps({n: self._languages.get(n) for n in names},
                                                                        indent=1))
        return blocks

    def _speaker_block(self, split: str, speakers: list[str | None], predictions: list, references: list) -> str:
        """Per-speaker WER/CER of the split (each speaker's clips scored together)."""
        from omnitune.core.base.metrics import compute

        rows = []
        for spk in sorted({s or "(missing)" for s in speakers}):
            idx = [i for i, s in enumerate(speakers) if (s or "(missing)") == spk]
            p, r = [predictions[i] for i in idx], [references[i] for i in idx]
            rows.append(f"| {spk} | {len(idx)} | {compute('wer', p, r):.2f} | {compute('cer', p, r):.2f} |")
        return (f"### Per-speaker {split} WER\n\nSpeakers from `{self.data_cfg.speaker_column}`; made splits are "
                "grouped by speaker (no speaker in two splits).\n\n| speaker | clips | WER % | CER % |\n"
                "|---|---|---|---|\n" + "\n".join(rows) + "\n")

    # ------------------------------------------------------------------ extra evaluation sets
    def eval_set(self, name: str) -> tuple[Any, DataReport]:
        """The dataset of ``data.eval_sets[name]``: its source (or the run's test clips), restricted to
        the test clips' names, with seeded real noise mixed at the stated SNR."""
        from .augment import mix_at_snr, noise_bank, noise_segment
        from omnitune.core.base.seeding import item_rng

        spec = self.data_cfg.eval_sets[name]
        report = DataReport(source=spec.source or "test split")
        if spec.source is None:
            clips = list(self._test_clips)
        else:
            utts = [u for v in self._utterances(spec.source, report, name).values() for u in v]
            if spec.match_test and self._test_clips:
                stems = {Path(c.name).with_suffix("").as_posix() for c in self._test_clips}
                utts = [u for u in utts if Path(u.name).with_suffix("").as_posix() in stems]
            clips = self._clean(utts, name, report)
        if spec.max_samples is not None:
            clips = clips[: spec.max_samples]
        if spec.noise is not None:
            bank = noise_bank(spec.noise, SAMPLE_RATE)
            clips = [sdata.Clip(c.name, c.text, mix_at_snr(c.wave, noise_segment(bank, c.num_samples,
                                                                               item_rng(self.seed, 0, i)), spec.snr_db),
                                c.speaker) for i, c in enumerate(clips)]
        if not clips:
            raise DataError(f"data.eval_sets.{name}: no usable clips (see {report.dropped})")
        return self._dataset(clips, []), report

    def extra_evaluations(self, model: nn.Module, out_dir: Path) -> tuple[dict[str, Any], list[str]]:
        """ExtraEvaluation: every ``data.eval_sets`` set scored with the fine-tuned ``model`` and with the
        starting checkpoint (speech/eval_sets.py); results for metrics.json and the report's table."""
        return extra_sets.before_and_after(self, model, out_dir)

    # ------------------------------------------------------------------ frozen-encoder feature cache
    # Validation batches must carry texts and names for decoding: only training batches are cached.
    feature_cache_eval: ClassVar[bool] = False

    def feature_cache_train_set(self, bundle: DataBundle) -> tuple[Any, list[str]]:
        """The training clips without augmentation, and what that turned off (core/loop/feature_cache.py)."""
        off = []
        if self.data_cfg.augment:
            off.append(f"audio augmentation ({', '.join(a.name for a in self.data_cfg.augment)})")
        config = self._model_config
        for field in ("dropout", "attention_dropout", "activation_dropout"):  # functional: not nn.Dropout
            if config is not None and getattr(config, field, 0.0):
                off.append(f"encoder {field} ({getattr(config, field):g})")
        if config is not None and getattr(config, "apply_spec_augment", False):
            off.append("the model's SpecAugment (apply_spec_augment)")
        return (self._dataset(bundle.train.clips, []) if off else bundle.train), off

    def frozen_features(self, model: nn.Module, batch: dict[str, Any], depth: int) -> dict[str, Any] | None:
        """A frozen encoder's output states, and the labels padded to a fixed width; None unless the
        whole encoder (and nothing else) is frozen."""
        core = getattr(model, "module", model)
        if depth != 1 + len(core.model.encoder.layers):
            return None
        states = core.model.encoder(batch["input_features"]).last_hidden_state
        labels = batch["labels"]
        fixed = labels.new_full((labels.shape[0], max(self._max_label_tokens, labels.shape[1])), -100)
        fixed[:, :labels.shape[1]] = labels
        return {"encoder_states": states, "labels": fixed}

    def forward_features(self, model: nn.Module, batch: dict[str, Any], depth: int, train: bool) -> dict[str, Any]:
        """:meth:`forward` (training) from cached encoder states: the decoder and the loss."""
        from transformers.modeling_outputs import BaseModelOutput

        core = getattr(model, "module", model)
        labels = batch["labels"]
        labels = labels[:, :max(int((labels != -100).sum(1).max()), 1)]
        dec_in = shift_right(labels, core.config.decoder_start_token_id, core.config.pad_token_id)
        logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=batch["encoder_states"]),
                       decoder_input_ids=dec_in).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                               label_smoothing=self.label_smoothing if train else 0.0, reduction="sum")
        return {"loss_sum": loss, "num_items": (labels != -100).sum(), "outputs": logits}

    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        save_model(getattr(model, "module", model), self.processor, Path(out_dir))

    def resolve_labels(self) -> None:
        """No label set: nothing about Whisper's shape comes from the data."""
        return None

    def restore(self, model_dir: Path) -> None:
        """The processor saved beside the model (full or adapter), which pads to the window the
        model was trained with; the generation settings saved with it, else the base model's."""
        from transformers import GenerationConfig, WhisperConfig, WhisperProcessor

        model_dir = Path(model_dir)
        processor = WhisperProcessor.from_pretrained(model_dir)
        config = WhisperConfig.from_pretrained(model_dir)
        try:
            gen = GenerationConfig.from_pretrained(model_dir)
        except OSError:  # an adapter folder: the base's generation settings are the ones it runs with
            try:
                gen = GenerationConfig.from_pretrained(self.model_path, revision=self.model_cfg.revision)
            except OSError:
                gen = GenerationConfig.from_model_config(config)
        # The saved feature extractor already pads to the saved window; the recipe's window must agree.
        self._use_processor(processor, config, gen)
        if self.model_cfg.max_source_seconds is None:
            set_feature_window(processor.feature_extractor, int(config.max_source_positions // 50))
            self._window = config.max_source_positions / 50

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        from transformers import WhisperForConditionalGeneration

        self.restore(model_dir)
        return WhisperForConditionalGeneration.from_pretrained(Path(model_dir)).eval()

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        """Transcribe audio files; a file that cannot be used gets an "error" instead of "text"."""
        model.eval()
        fe = self.processor.feature_extractor
        out: list[dict[str, Any]] = []
        for path in inputs:
            try:
                wave = load_clip(path, SAMPLE_RATE)
            except AudioProblem as problem:
                out.append({"input": path, "error": str(problem)})
                continue
            device = next(model.parameters()).device
            # A file longer than the window is cut into consecutive pieces (at quiet frames) that
            # cover it exactly; each piece is transcribed on its own and carries its times.
            segments = []
            for start, end in chunk_bounds(wave, fe.n_samples):
                feats = fe(wave[start:end], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
                ids = self.generate(model, feats.to(device))
                seg = {"start": round(start / SAMPLE_RATE, 2), "end": round(end / SAMPLE_RATE, 2),
                       "text": self.decode(ids)[0]}
                if self._multilingual_without_language():
                    seg["language"] = self.languages(ids)[0]
                segments.append(seg)
            item = {"input": path, "text": " ".join(s["text"] for s in segments if s["text"])}
            if len(segments) > 1:
                item["segments"] = segments
            if "language" in segments[0]:
                item["language"] = segments[0]["language"]
            out.append(item)
        return out
