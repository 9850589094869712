"""Speech data: transcript files, audio folders, Hub audio datasets; cleaning with a report.

Sources (``data.source``):
- a folder with a transcript file in it (``data.transcripts``, or the first of transcripts.csv,
  transcripts.jsonl, transcripts.txt, metadata.csv found there);
- a transcript file: CSV or JSONL with ``path_column`` and ``text_column``, or text lines
  ``name: text`` (``;`` or ``#`` starts a comment; ``.gz`` is read too). Relative audio paths are
  resolved against the transcript's folder (or ``data.audio_dir``); a name without a suffix is
  tried as .wav, .flac, .ogg;
- ``hub:DATASET[/CONFIG]``: a datasets audio dataset, its Audio column cast with decode=False and
  decoded with soundfile (no FFmpeg / torchcodec needed).

Every clip is decoded once, resampled to 16 kHz and checked. Unreadable, empty or silent files,
clips longer than the model's window, missing audio files, audio files without a transcript and
transcripts that are empty after normalisation are skipped and reported by file name.
``data.storage: memory`` keeps the decoded waves in RAM; ``disk`` writes them once into a store
under the cache folder (core/base/mmap_store.py, keyed by the audio files) and reads each clip back when
it is used, so RSS stays flat as the corpus grows.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from omnitune.core.base.data import is_hub, load_hub, parse_hub
from omnitune.core.base.errors import DataError
from omnitune.core.base.mmap_store import ArrayStore, ContentKey, build_store, cache_root
from omnitune.core.base.seeding import item_rng
from omnitune.core.base.task import DataReport

from .audio import SAMPLE_RATE, AudioProblem, load_clip

# .gsm: raw GSM 06.10 (telephone codec), which libsndfile decodes by its suffix.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".gsm")
TRANSCRIPT_NAMES = ("transcripts.csv", "transcripts.jsonl", "transcripts.txt", "metadata.csv")
# Reasons that count towards the bad-file threshold (duration-limit filters are the user's choice).
BAD_REASONS = ("unreadable", "empty", "silent", "longer than the model window", "missing audio file",
               "audio without transcript", "empty transcript after normalisation")


@dataclass
class Utterance:
    name: str  # what the report calls it: a relative path or a Hub row id
    text: str
    audio: str | bytes  # a file path or encoded bytes (Hub)
    speaker: str | None = None  # data.speaker_column's value (grouped splits, per-speaker WER)


class Clip:
    """A usable utterance: its 16 kHz mono float32 samples in RAM (``data.storage: memory``) or
    item ``index`` of a disk store (``disk``: :attr:`wave` reads it on each access)."""

    __slots__ = ("name", "text", "_wave", "speaker", "_store", "_index")

    def __init__(self, name: str, text: str, wave: np.ndarray | None, speaker: str | None = None, *,
                 store: ArrayStore | None = None, index: int = -1) -> None:
        self.name, self.text, self._wave, self.speaker = name, text, wave, speaker
        self._store, self._index = store, index

    @property
    def wave(self) -> np.ndarray:
        return self._wave if self._wave is not None else self._store[self._index]

    @property
    def num_samples(self) -> int:
        """Length in samples, without reading a stored clip."""
        return len(self._wave) if self._wave is not None else self._store.length(self._index)

    def __repr__(self) -> str:
        return f"Clip({self.name!r}, {self.text!r}, {self.num_samples} samples)"


# ----------------------------------------------------------------------------- transcript files
def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_transcripts(path: Path, path_column: str, text_column: str, speaker_column: str | None = None
                     ) -> list[tuple[str, str]] | list[tuple[str, str, str | None]]:
    """(audio name or path, text) pairs from a CSV, JSONL or ``name: text`` file; with
    ``speaker_column`` (CSV/JSONL only) (name, text, speaker) triples."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    rows: list[tuple[str, str]] = []
    with _open_text(path) as f:
        if kind in (".csv", ".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if kind == ".tsv" else ",")
            missing = {path_column, text_column, *([speaker_column] if speaker_column else [])} - set(
                reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: no column(s) {sorted(missing)} (columns: {reader.fieldnames}); "
                                "set data.path_column / data.text_column / data.speaker_column")
            rows = [(r[path_column], r[text_column] or "", *([r[speaker_column] or None] if speaker_column else []))
                    for r in reader]
        elif kind in (".jsonl", ".json"):
            for i, line in enumerate(f, 1):
                if line.strip():
                    obj = json.loads(line)
                    need = [path_column, text_column, *([speaker_column] if speaker_column else [])]
                    if any(k not in obj for k in need):
                        raise DataError(f"{path}:{i}: needs keys {', '.join(map(repr, need))}")
                    speaker = [None if obj[speaker_column] is None else str(obj[speaker_column])] if speaker_column else []
                    rows.append((str(obj[path_column]), str(obj[text_column] or ""), *speaker))
        else:
            if speaker_column:
                raise DataError(f"{path}: data.speaker_column needs a CSV/TSV/JSONL transcript file, not 'name: text' lines")
            for i, line in enumerate(f, 1):
                line = line.strip()
                if not line or line[0] in ";#":
                    continue
                name, sep, text = line.partition(":")
                if not sep:
                    raise DataError(f"{path}:{i}: expected 'name: text', got {line[:60]!r}")
                rows.append((name.strip(), text.strip()))
    return rows


def _resolve_audio(root: Path, name: str) -> Path | None:
    p = Path(name)
    p = p if p.is_absolute() else root / p
    if p.is_file():
        return p
    if not p.suffix or p.suffix.lower() not in AUDIO_SUFFIXES:
        for suffix in AUDIO_SUFFIXES:
            q = p.with_name(p.name + suffix)
            if q.is_file():
                return q
    return None


def local_utterances(source: Path, transcripts: str | None, audio_dir: str | None, path_column: str,
                     text_column: str, report: DataReport, split: str,
                     speaker_column: str | None = None) -> list[Utterance]:
    """Utterances of a folder or transcript file; missing audio and untranscribed audio reported."""
    if source.is_dir():
        names = [transcripts] if transcripts else [n for n in TRANSCRIPT_NAMES if (source / n).is_file()][:1]
        if not names or not (source / names[0]).is_file():
            raise DataError(f"{source}: no transcript file (looked for {transcripts or ', '.join(TRANSCRIPT_NAMES)}); "
                            "set data.transcripts")
        table = source / names[0]
    elif source.is_file():
        table = source
    else:
        raise DataError(f"data source {source}: no such file or folder")
    root = Path(audio_dir) if audio_dir and Path(audio_dir).is_absolute() else table.parent / (audio_dir or "")
    out, missing, seen = [], [], set()
    for name, text, *speaker in read_transcripts(table, path_column, text_column, speaker_column):
        path = _resolve_audio(root, name)
        if path is None:
            missing.append(name)
            continue
        seen.add(path.resolve())
        out.append(Utterance(name=name, text=text, audio=str(path), speaker=speaker[0] if speaker else None))
    report.drop(split, "missing audio file", len(missing), missing)
    if source.is_dir():
        # A folder source is the data set: audio in it that no transcript line names is reported,
        # never guessed. (A transcript-file source may share its folder with other splits' files.)
        orphans = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                         if p.suffix.lower() in AUDIO_SUFFIXES and p.resolve() not in seen)
        report.drop(split, "audio without transcript", len(orphans), orphans)
    return out


def hub_utterances(ref: str, split: str | None, audio_column: str, text_column: str,
                   report: DataReport) -> dict[str, list[Utterance]]:
    """``hub:DATASET[/CONFIG][:SPLIT]`` -> utterances per split, audio kept as encoded bytes.

    ``:SPLIT`` takes one split in datasets' slicing syntax (``:train.100[:2000]``): only those rows
    are read into memory, which large corpora such as LibriSpeech need."""
    import datasets

    dd = load_hub(parse_hub(ref), split)
    out: dict[str, list[Utterance]] = {}
    for split_name, d in dd.items():
        if audio_column not in d.column_names or text_column not in d.column_names:
            raise DataError(f"{ref} [{split_name}]: needs columns {audio_column!r} and {text_column!r} "
                            f"(has {d.column_names}); set data.audio_column / data.text_column")
        d = d.cast_column(audio_column, datasets.Audio(decode=False))
        utts = []
        for i, row in enumerate(d):
            audio = row[audio_column]
            data = audio.get("bytes") or audio.get("path")
            utts.append(Utterance(name=audio.get("path") or f"{split_name}/{i}", text=str(row[text_column] or ""),
                                  audio=data))
        out[split_name] = utts
    return out


# ----------------------------------------------------------------------------- splitting and cleaning
def audio_identity(utt: Utterance) -> str:
    """What makes two utterances the same recording: the audio file's real path, or a hash of the
    encoded bytes of a Hub row."""
    if isinstance(utt.audio, bytes):
        return hashlib.sha1(utt.audio).hexdigest()
    return os.path.realpath(utt.audio)


def audio_bytes(utts: Iterable[Utterance]) -> int:
    """Bytes of the utterances' audio files (or encoded Hub bytes): what data.storage: auto sizes."""
    return sum(len(u.audio) if isinstance(u.audio, bytes) else os.path.getsize(u.audio) for u in utts)


def stored_waves(utts: list[Utterance], sample_rate: int = SAMPLE_RATE) -> ArrayStore:
    """Every utterance decoded and resampled to ``sample_rate`` once, into a disk store; item i is
    the wave of the i-th decodable utterance, and ``meta["problems"]`` maps the others' positions to
    their AudioProblem. Keyed by the audio (file path, size and mtime; a hash of Hub bytes) and the
    sample rate, so a later run over the same clips reads the store instead of decoding."""
    key = ContentKey("speech-waves").add(sample_rate)
    for u in utts:
        if isinstance(u.audio, bytes):
            key.add(hashlib.sha1(u.audio).hexdigest())
        else:
            key.add_files([u.audio])

    def fill(writer) -> None:
        problems: dict[str, str] = {}
        for i, u in enumerate(utts):
            try:
                writer.append(load_clip(u.audio, sample_rate))
            except AudioProblem as problem:
                problems[str(i)] = str(problem)
        writer.meta["problems"] = problems

    return build_store(cache_root() / key.hexdigest(), np.float32, fill, ndim=1)


def decoded(utts: list[Utterance], storage: str, sample_rate: int = SAMPLE_RATE):
    """(utterance, where its wave is) per utterance, for a task's cleaning loop: None in memory
    mode (the caller decodes, only the clips it keeps), else (store, index) of the stored wave, or
    the AudioProblem message of a clip that did not decode when the store was filled."""
    if storage != "disk":
        for u in utts:
            yield u, None
        return
    store = stored_waves(utts, sample_rate)
    problems, next_item = store.meta.get("problems", {}), 0
    for i, u in enumerate(utts):
        if str(i) in problems:
            yield u, problems[str(i)]
        else:
            yield u, (store, next_item)
            next_item += 1


def clean_clips(utts: Iterable[Utterance], split: str, report: DataReport, normalize: Callable[[str], str],
                window_seconds: float, min_seconds: float | None, max_seconds: float | None,
                storage: str = "memory") -> list[Clip]:
    """Decode and check every clip; skipped ones are counted in the report by reason and name.
    ``storage`` "disk": the waves go into a disk store (:func:`stored_waves`) and the clips read
    them from there; the same clips are kept and the same ones skipped, for the same reasons."""
    kept: list[Clip] = []
    skipped: dict[str, list[str]] = {}
    utts = list(utts)
    report.rows_read[split] = report.rows_read.get(split, 0) + len(utts)
    for u, where in decoded(utts, storage):
        if not normalize(u.text):
            skipped.setdefault("empty transcript after normalisation", []).append(u.name)
            continue
        if isinstance(where, str):  # a problem found when the store was filled
            skipped.setdefault(where, []).append(u.name)
            continue
        if where is None:
            try:
                wave = load_clip(u.audio, SAMPLE_RATE)
            except AudioProblem as problem:
                skipped.setdefault(str(problem), []).append(u.name)
                continue
            clip = Clip(u.name, u.text, wave, u.speaker)
        else:
            clip = Clip(u.name, u.text, None, u.speaker, store=where[0], index=where[1])
        seconds = clip.num_samples / SAMPLE_RATE
        if seconds > window_seconds:
            skipped.setdefault("longer than the model window", []).append(u.name)
        elif max_seconds is not None and seconds > max_seconds:
            skipped.setdefault("longer than data.max_seconds", []).append(u.name)
        elif min_seconds is not None and seconds < min_seconds:
            skipped.setdefault("shorter than data.min_seconds", []).append(u.name)
        else:
            kept.append(clip)
    for reason, names in skipped.items():
        report.drop(split, reason, len(names), names)
    report.rows_kept[split] = len(kept)
    return kept


def check_bad_share(report: DataReport, max_bad_share: float) -> None:
    """Raise DataError when the share of bad files (not duration-limit filters) is too high.
    Transcripts without audio and audio without transcripts were dropped before splitting (split
    "all"), so they are added to the rows read."""
    read = sum(report.rows_read.values()) + sum(report.dropped.get("all", {}).values())
    bad = sum(n for by_reason in report.dropped.values() for r, n in by_reason.items() if r in BAD_REASONS)
    if read and bad / read > max_bad_share:
        reasons = {r: n for by_reason in report.dropped.values() for r, n in by_reason.items() if r in BAD_REASONS}
        examples = {r: report.examples.get(r, [])[:3] for r in reasons}
        raise DataError(f"{report.source}: {bad} of {read} clips are unusable ({bad / read:.0%} > "
                        f"data.max_bad_share={max_bad_share:.0%}): {reasons}, e.g. {examples}")


# ----------------------------------------------------------------------------- the torch dataset
class SpeechDataset:
    """Clips -> {"input_features", "labels", "text", "name"}; augmentation only when ``augment``.

    An item's augmentation is a pure function of (``seed``, epoch, index)
    (:func:`omnitune.core.base.seeding.item_rng`), never of how often it was drawn or in which
    DataLoader worker: a resumed run hears exactly the audio an uninterrupted one did. The trainer
    calls :meth:`set_epoch` before each epoch; without augmentation an item is fixed.
    """

    def __init__(self, clips: list[Clip], feature_extractor, tokenizer, augment: list, seed: int,
                 max_label_tokens: int) -> None:
        self.clips, self.feature_extractor, self.tokenizer = clips, feature_extractor, tokenizer
        self.augment, self.seed, self.max_label_tokens = augment, seed, max_label_tokens
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.clips]

    def lengths(self) -> list[int]:
        """Audio lengths in milliseconds (for length-grouped batches)."""
        return [c.num_samples * 1000 // SAMPLE_RATE for c in self.clips]

    def labels(self, text: str) -> list[int]:
        # Whisper writes a space before the first word; the leading <|startoftranscript|> is what
        # the model prepends itself when it shifts the labels right, so it is not a target.
        ids = self.tokenizer(" " + text.strip()).input_ids
        sot = self.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        if ids and ids[0] == sot:
            ids = ids[1:]
        return ids[: self.max_label_tokens]

    def __getitem__(self, index: int) -> dict:
        from .augment import augment_features, augment_wave

        clip = self.clips[index]
        wave = clip.wave
        rng = None
        if self.augment:
            rng = item_rng(self.seed, self.epoch, index)
            augmented = augment_wave(wave, self.augment, rng, SAMPLE_RATE)
            # Slowing a clip down can push it past the window; cutting it would cut words that the
            # labels still hold, so such a draw trains on the clean clip instead.
            wave = augmented if len(augmented) <= self.feature_extractor.n_samples else wave
        feats = self.feature_extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
        if rng is not None:
            valid = min(feats.shape[-1], len(wave) // self.feature_extractor.hop_length + 1)
            feats = augment_features(feats, self.augment, rng, valid)
        return {"input_features": feats.astype(np.float32), "labels": self.labels(clip.text),
                "text": clip.text, "name": clip.name}


# ----------------------------------------------------------------------------- cross-validation
def cv_rows(task) -> tuple[object, None]:
    """``omnitune cv``: the recipe's utterances as transcript-manifest rows (absolute audio path,
    text) from its folder or transcript file (and data.validation_source / data.test_source);
    there is no class label, so folds are unstratified. Transcript lines without audio are left
    out here (a run would drop them too); bad audio is left to each fold's run to drop and report.
    Hub datasets have no files to list and are refused."""
    import pandas as pd

    from omnitune.core.base.assets import resolve

    cfg = task.data_cfg
    rows: list[tuple[str, str]] = []
    for field, source in (("source", cfg.source), ("validation_source", cfg.validation_source),
                          ("test_source", cfg.test_source)):
        if not source:
            continue
        if is_hub(source) or is_hub(resolve(source)):
            raise DataError(f"data.{field} {source}: cross-validation writes each fold as a transcript manifest "
                            f"of audio files, and a Hub dataset has no files to list. Save the clips as audio "
                            f"files with a transcript CSV ({cfg.path_column},{cfg.text_column}) and set "
                            f"data.{field} to it; or use `omnitune train` with the dataset's own splits.")
        utts = local_utterances(Path(resolve(source)), cfg.transcripts, cfg.audio_dir, cfg.path_column,
                                cfg.text_column, DataReport(source=source), "all")
        rows += [(os.path.abspath(u.audio), u.text) for u in utts]
    frame = pd.DataFrame(rows, columns=[cfg.path_column, cfg.text_column])
    # One clip listed twice must not land on both sides of a fold.
    return frame.drop_duplicates(subset=[cfg.path_column]).reset_index(drop=True), None
