"""Image classification on the shared core: any timm/torchvision backbone, albumentations data.

Recipe sections declared here: ``model`` (:class:`VisionModelConfig`) and ``data``
(:class:`VisionDataConfig`); everything else (strategy, optimiser, EMA, trainer) is the core's.
Mixup/CutMix and label smoothing come from ``regularization`` and live in core/loop/mixing.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from omnitune.core.base.data import Storage, check_classes, require_rows
from omnitune.core.base.errors import DataError, OmnituneError
from omnitune.core.base.exporting import BATCH, ExportSpec, Graph
from omnitune.core.loop.mixing import mix_batch, soft_target_cross_entropy
from omnitune.core.base.recipe import DataConfig, ModelConfig, RegularizationConfig, Section
from omnitune.core.evaluation.report import confusion_matrix_png, per_class_table
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup

from . import sources
from .augment import AugmentSpec, Augmenter, validate_spec
from .data import ImageDataset, decode_path
from .models import (Preprocessing, build_classifier, image_layer_groups, load_folder, read_folder_config,
                     resolve_preprocessing, save_folder)
from .report import confidently_wrong, wrong_grid_png

Interpolation = Literal["nearest", "bilinear", "bicubic", "area", "lanczos"]
Triple = tuple[float, float, float]


class VisionModelConfig(ModelConfig):
    image_size: int | None = Field(default=None, ge=16)
    """Input size in pixels; None keeps the model's own pretrained preprocessing (timm pretrained_cfg,
    torchvision weights)."""
    mean: Triple | None = None
    """Normalisation mean per RGB channel; None: the model's pretrained preprocessing."""
    std: Triple | None = None
    """Normalisation standard deviation per RGB channel; None: the model's pretrained preprocessing."""
    interpolation: Interpolation | None = None
    """Resize interpolation; None: the model's pretrained preprocessing."""
    crop_pct: float | None = Field(default=None, gt=0, le=1)
    """Eval resize is image_size / crop_pct before the centre crop; 1.0 keeps the whole image."""
    drop_rate: float | None = Field(default=None, ge=0, lt=1)
    """timm only: classifier dropout (0.1 is a usual start for ViT/ConvNeXt); None: the model's own."""
    drop_path_rate: float | None = Field(default=None, ge=0, lt=1)
    """timm only: stochastic depth rate (0.1 is a usual start for ViT/ConvNeXt); None: the model's own."""
    channels_last: bool = True
    """Channels-last (NHWC) weights and inputs: oneDNN's and cuDNN's fast convolution layout. Measured
    2.7x on EfficientNet-Lite0's upper blocks (fp32, 2-core CPU; bench/vision_layout.py)."""


class AugmentConfig(Section):
    train: AugmentSpec = "light"
    """A preset (none, light, medium, heavy) or a list of albumentations steps, e.g.
    [{name: HorizontalFlip, p: 0.5}, {name: RandomResizedCrop, size: [96, 96], scale: [0.5, 1]}].
    Resize to the input size and normalisation are always appended."""
    eval: AugmentSpec = "none"
    """Evaluation: "none" (resize + centre crop) or a list of deterministic steps."""

    @field_validator("train")
    @classmethod
    def _train(cls, v: AugmentSpec) -> AugmentSpec:
        return validate_spec(v)

    @field_validator("eval")
    @classmethod
    def _eval(cls, v: AugmentSpec) -> AugmentSpec:
        if isinstance(v, str) and v != "none":
            raise ValueError("presets are for training; evaluation takes 'none' or a list of steps")
        return validate_spec(v)


class VisionDataConfig(DataConfig):
    path_column: str = "path"
    """Manifest files (CSV/JSONL...): the image path column (relative to the manifest's folder); labels
    come from label_column."""
    image_column: str = "image"
    """Hub datasets: the image column."""
    augment: AugmentConfig = AugmentConfig()
    """Training and evaluation image transforms (albumentations)."""
    random_erasing: float = Field(default=0.0, ge=0, le=1)
    """Probability of erasing a random rectangle of each training image (timm's RandomErasing)."""
    verify_images: Literal["full", "header", "none"] = "full"
    """full: decode every kept image once before training (catches truncated files); header: only
    open it (fast, misses truncation); none: trust the files (a bad one stops the run later)."""
    max_unreadable_share: float = Field(default=0.05, ge=0, le=1)
    """Above this share of unreadable images the run stops: a few broken files are noise, many
    mean a wrong path or format."""
    storage: Storage = "auto"
    """memory: IDX arrays read whole into RAM, image files decoded on every read. disk: decoded images
    (RGB uint8, before augmentation) go once into a store under $OMNITUNE_CACHE/arrays, keyed by
    the files and settings, and are read back item by item: flat RSS as the data grows, no repeat
    decoding. auto: disk above omnitune.core.base.data.AUTO_DISK_BYTES of source files. Hub datasets
    stay in datasets' memory-mapped Arrow files either way."""


class ImageClassificationTask:
    name: ClassVar[str] = "image-classification"
    # The fields only some tasks read (core.base.recipe.TASK_IMPLEMENTED) that this one reads: mixing
    # in forward, smoothing in the loss, and the label set.
    implemented_fields: ClassVar[frozenset[str]] = frozenset(
        {"regularization.label_smoothing", "regularization.mixup_alpha", "regularization.cutmix_alpha",
         "regularization.mix_prob", "data.label_column", "data.labels", "data.unknown_labels"})
    ModelConfig: ClassVar[type[ModelConfig]] = VisionModelConfig
    DataConfig: ClassVar[type[DataConfig]] = VisionDataConfig
    main_metric: ClassVar[str] = "accuracy"
    main_metric_mode: ClassVar[str] = "max"
    pipeline_tag: ClassVar[str] = "image-classification"  # Hub model-card metadata (ModelCardInfo)
    card_library: ClassVar[str] = "timm"

    def export_spec(self) -> ExportSpec:
        """ONNX export (Exportable): pixels at the trained size in, logits out; int8 calibrated statically
        (dynamic ConvInteger kernels are slower than fp32 on CPU)."""
        return ExportSpec("tensor", (Graph("model", ("pixel_values",), ("logits",),
                                          {"pixel_values": BATCH, "logits": BATCH}),),
                          "image classifier: pixel_values [batch, 3, H, W] at the trained size -> logits", int8="static")

    def __init__(self, *, model: VisionModelConfig, data: VisionDataConfig,
                 regularization: RegularizationConfig, seed: int) -> None:
        self.model_cfg, self.data_cfg, self.reg, self.seed = model, data, regularization, seed
        self.label_names: list[str] | None = list(data.labels) if data.labels else None
        self._pre: Preprocessing | None = None
        self._architecture: str | None = None

    # ------------------------------------------------------------------ preprocessing
    def preprocessing(self) -> Preprocessing:
        """The model's own input size / mean / std / interpolation, with the recipe's overrides."""
        if self._pre is None:
            base = resolve_preprocessing(self.model_cfg.name, self.model_cfg.pretrained)
            m = self.model_cfg
            self._pre = Preprocessing(
                input_size=m.image_size or base.input_size, mean=tuple(m.mean or base.mean),
                std=tuple(m.std or base.std), interpolation=m.interpolation or base.interpolation,
                crop_pct=m.crop_pct or base.crop_pct)
        return self._pre

    def augmenter(self, train: bool) -> Augmenter:
        pre, aug = self.preprocessing(), self.data_cfg.augment
        return Augmenter(aug.train if train else aug.eval, train=train, size=pre.input_size, mean=pre.mean,
                         std=pre.std, crop_pct=pre.crop_pct, interpolation=pre.interpolation,
                         random_erasing=self.data_cfg.random_erasing)

    # ------------------------------------------------------------------ model
    def resolve_labels(self) -> list[str]:
        """The class names the head is sized for: ``data.labels``, the names :meth:`restore` read
        back from a saved model, the source's own (IDX labels.txt, a Hub ClassLabel), or the sorted
        classes of the training data. build_model and build_datasets both go through it, so either
        may run first; this reads the label set only, not the images."""
        if self.label_names is None:
            d = self.data_cfg
            report = DataReport(source=d.source)
            # The recipe's storage here too: "memory" would read a big IDX array whole just for its labels.
            storage = sources.resolve_storage(d.storage, [d.source], d.path_column, d.label_column, report)
            raw, native = sources.load_raw_splits(d.source, declared=None, path_column=d.path_column,
                                                  image_column=d.image_column, label_column=d.label_column,
                                                  report=report, storage=storage)
            self.label_names = sources.label_set(None, native, raw["train"], report)
        return self.label_names

    def cv_rows(self):
        """``omnitune cv``: the source's image files as manifest rows, stratified by class."""
        return sources.cv_rows(self)

    def build_model(self) -> nn.Module:
        names = self.resolve_labels()
        m = self.model_cfg
        model, _, self._architecture = build_classifier(
            m.name, pretrained=m.pretrained, num_classes=len(names), drop_rate=m.drop_rate,
            drop_path_rate=m.drop_path_rate)
        return self._layout(model)

    def _layout(self, x):
        """A model or a 4-d batch in channels-last layout when ``model.channels_last`` (else as is)."""
        if not self.model_cfg.channels_last or (isinstance(x, torch.Tensor) and x.dim() != 4):
            return x
        return x.to(memory_format=torch.channels_last) if isinstance(x, nn.Module) else \
            x.contiguous(memory_format=torch.channels_last)

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return image_layer_groups(model)

    # ------------------------------------------------------------------ data
    def build_datasets(self) -> DataBundle:
        d = self.data_cfg
        report = DataReport(source=d.source)
        storage = sources.resolve_storage(d.storage, [d.source, d.validation_source, d.test_source], d.path_column,
                                          d.label_column, report)
        raw, native = sources.load_raw_splits(d.source, declared=d.labels, path_column=d.path_column,
                                              image_column=d.image_column, label_column=d.label_column,
                                              report=report, drop_duplicates=d.drop_duplicates, storage=storage)
        for key, extra in (("validation", d.validation_source), ("test", d.test_source)):
            if extra:
                more, _ = sources.load_raw_splits(extra, declared=None, path_column=d.path_column,
                                                  image_column=d.image_column, label_column=d.label_column,
                                                  report=report, storage=storage)
                raw[key] = sources.merge_for_eval(more)
        if self.label_names is None:  # else declared, or restored from a saved model
            self.label_names = sources.label_set(d.labels, native, raw["train"], report)
        for split in raw:
            report.rows_read[split] = len(raw[split].keys)
            raw[split] = sources.encode_labels(raw[split], self.label_names, d.unknown_labels, split, d.source, report)
        splits = sources.split_and_subsample(raw, val_size=d.val_size, test_size=d.test_size,
                                             max_samples=d.max_samples, max_eval_samples=d.max_eval_samples,
                                             seed=self.seed, report=report, drop_duplicates=d.drop_duplicates)
        bad = checked = 0
        for split in ("train", "validation", "test"):
            if split in splits:
                checked += len(splits[split].keys)
                splits[split], n_bad = sources.drop_unreadable(splits[split], split, d.verify_images, report,
                                                               storage)
                bad += n_bad
        sources.check_bad_share(bad, checked, d.max_unreadable_share, report)
        require_rows(splits, d.source, report)
        check_classes([self.label_names[i] for i in set(splits["train"].labels)], d.source)
        for split, records in splits.items():
            report.label_counts[split] = sources.label_counts(records, self.label_names)
        train_aug, eval_aug = self.augmenter(True), self.augmenter(False)
        return DataBundle(
            train=ImageDataset(splits["train"], train_aug, train=True, seed=self.seed),
            validation=ImageDataset(splits["validation"], eval_aug, train=False),
            test=ImageDataset(splits["test"], eval_aug, train=False) if "test" in splits else None,
            report=report, label_names=list(self.label_names))

    def load_eval_dataset(self, source: str, label_names: list[str] | None) -> tuple[Any, DataReport]:
        d = self.data_cfg
        names = label_names or self.resolve_labels()
        self.label_names = list(names)
        report = DataReport(source=source)
        storage = sources.resolve_storage(d.storage, [source], d.path_column, d.label_column, report)
        raw, _ = sources.load_raw_splits(source, declared=None, path_column=d.path_column,
                                         image_column=d.image_column, label_column=d.label_column, report=report,
                                         storage=storage)
        records = sources.merge_for_eval(raw)
        report.rows_read["eval"] = len(records.keys)
        records = sources.encode_labels(records, self.label_names, d.unknown_labels, "eval", source, report)
        checked = len(records.keys)
        records, bad = sources.drop_unreadable(records, "eval", d.verify_images, report, storage)
        sources.check_bad_share(bad, checked, d.max_unreadable_share, report)
        report.rows_kept["eval"] = len(records.keys)
        return ImageDataset(records, self.augmenter(False), train=False), report

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"pixel_values": torch.from_numpy(np.stack([s["pixel_values"] for s in samples])),
                "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
                "index": torch.tensor([s["index"] for s in samples], dtype=torch.long)}

    # ------------------------------------------------------------------ loss and predictions
    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        x, y, reg = self._layout(batch["pixel_values"]), batch["labels"], self.reg
        if train and (reg.mixup_alpha > 0 or reg.cutmix_alpha > 0):
            # generator=None: torch's global RNG, which the trainer seeds and checkpoints, so a
            # resumed run mixes exactly as an uninterrupted one.
            x, soft = mix_batch(x, y, num_classes=len(self.label_names), mixup_alpha=reg.mixup_alpha,
                                cutmix_alpha=reg.cutmix_alpha, prob=reg.mix_prob,
                                label_smoothing=reg.label_smoothing, generator=None)
            logits = model(x)
            loss = soft_target_cross_entropy(logits, soft) * y.shape[0]
        else:
            logits = model(x)
            # Validation/test loss is the plain cross-entropy, comparable across recipes.
            loss = F.cross_entropy(logits.float(), y, label_smoothing=reg.label_smoothing if train else 0.0,
                                   reduction="sum")
        # Summed over the batch's images; the trainer divides by the images of the whole step.
        return {"loss_sum": loss, "num_items": y.shape[0], "outputs": logits}

    # ------------------------------------------------------------------ frozen-trunk feature cache
    def feature_cache_train_set(self, bundle: DataBundle) -> tuple[Any, list[str]]:
        """The training set without input randomness (the evaluation transform), and what that turned off."""
        d, reg = self.data_cfg, self.reg
        off = []
        if d.augment.train != "none":
            off.append(f"train-time augmentation (data.augment.train: {d.augment.train!r})")
        if d.random_erasing > 0:
            off.append(f"random erasing ({d.random_erasing:g})")
        if reg.mixup_alpha > 0 or reg.cutmix_alpha > 0:
            off.append("mixup/cutmix")
        if not off:
            return bundle.train, []
        return ImageDataset(bundle.train.records, self.augmenter(False), train=False), off

    @staticmethod
    def _trunk_split(model: nn.Module, depth: int) -> list[nn.Module] | None:
        """For a timm EfficientNet/MobileNet-style model (conv_stem, bn1, blocks, conv_head, bn2): the
        modules of the first ``depth`` layer groups in order, when they are exactly the stem and the
        first ``depth - 1`` stages; None otherwise."""
        if not all(hasattr(model, n) for n in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
            return None
        groups = image_layer_groups(model)
        if depth < 1 or depth - 1 > len(model.blocks) - 1:
            return None
        modules = [model.conv_stem, model.bn1, *model.blocks[:depth - 1]]
        want = {id(p) for m in modules for p in m.parameters()}
        have = {id(p) for g in groups[:depth] for p in g.parameters()}
        return modules if want == have else None

    # The feature cache (core/loop/feature_cache.py) holds validation too: metrics need only the logits.
    feature_cache_eval: ClassVar[bool] = True

    def frozen_features(self, model: nn.Module, batch: dict[str, Any], depth: int) -> dict[str, Any] | None:
        """Outputs of the first ``depth`` layer groups (core/loop/feature_cache.py): a timm model's pre-logits
        (pooled features) when only the head trains, or an EfficientNet-style model's feature map after
        the stem and the first stages when the stages above train; None for other splits."""
        x = self._layout(batch["pixel_values"])
        head = len(self.layer_groups(model)) - 1
        if depth == head and hasattr(model, "forward_head"):
            feats = model.forward_head(model.forward_features(x), pre_logits=True)
        else:
            modules = self._trunk_split(model, depth)
            if modules is None:
                return None
            for m in modules:
                x = m(x)
            feats = x
        return {"features": feats, "labels": batch["labels"], "index": batch["index"]}

    def forward_features(self, model: nn.Module, batch: dict[str, Any], depth: int, train: bool) -> dict[str, Any]:
        """:meth:`forward` from cached :meth:`frozen_features` (same loss, same dropout draws)."""
        x, y = self._layout(batch["features"]), batch["labels"]
        if depth == len(self.layer_groups(model)) - 1:
            rate = float(getattr(model, "drop_rate", 0.0) or 0.0)
            if rate > 0:  # timm heads drop out the pooled features before the classifier
                x = F.dropout(x, p=rate, training=model.training)
            logits = model.get_classifier()(x)
        else:
            for m in model.blocks[depth - 1:]:
                x = m(x)
            logits = model.forward_head(model.bn2(model.conv_head(x)))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.reg.label_smoothing if train else 0.0,
                               reduction="sum")
        return {"loss_sum": loss, "num_items": y.shape[0], "outputs": logits}

    def predict_batch(self, model: nn.Module, batch: dict[str, Any], outputs: dict[str, Any]) -> tuple[list, list]:
        probs = outputs["outputs"].detach().float().softmax(-1).cpu()
        k = min(5, probs.shape[-1])
        top_p, top_i = probs.topk(k, dim=-1)
        idx = batch["index"].cpu().tolist()
        preds = [{"label": int(ti[0]), "score": float(tp[0]), "top5": [int(j) for j in ti], "index": i}
                 for tp, ti, i in zip(top_p, top_i, idx)]
        return preds, batch["labels"].cpu().tolist()

    def metric_inputs(self, predictions: list[Any], references: list[Any]) -> tuple[list, list]:
        """Plain values for a user's metric (``eval.extra_metrics``): predicted and true label indices."""
        return [p["label"] for p in predictions], list(references)

    def compute_metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        from omnitune.core.base.metrics import compute

        refs = [int(r) for r in references]
        if not refs:
            return {"accuracy": 0.0, "top5_accuracy": 0.0}
        top1 = [int(p["label"]) for p in predictions]
        out = {"accuracy": compute("accuracy", top1, refs),
               "top5_accuracy": compute("top5_accuracy", [p["top5"] for p in predictions], refs)}
        labels = list(range(len(self.label_names)))  # every class counts, even one absent from this split
        for name in ("precision_macro", "recall_macro", "f1_macro"):
            out[name] = compute(name, top1, refs, labels=labels)
        return out

    def report_extras(self, out_dir: Path, split: str, predictions: list[Any], references: list[Any],
                      dataset: Any) -> list[str]:
        out_dir = Path(out_dir)
        names = self.label_names
        top1 = [p["label"] for p in predictions]
        cm = confusion_matrix_png(references, top1, names, out_dir / f"confusion_matrix_{split}.png",
                                  title=f"Confusion matrix ({split})")
        blocks = [f"![confusion matrix]({cm.name})", "Per-class results:\n\n" + per_class_table(references, top1, names)]
        wrong = confidently_wrong(predictions, references, k=16)
        if wrong:
            images = [dataset.raw_image(p["index"]) for p in wrong]
            grid = wrong_grid_png(wrong, images, names, out_dir / f"confidently_wrong_{split}.png",
                                  title=f"Most confidently wrong ({split})")
            rows = ["| image | true | predicted | confidence |", "|---|---|---|---|"]
            rows += [f"| {dataset.describe(p['index'])} | {names[p['true']]} | {names[p['label']]} | {p['score']:.2f} |"
                     for p in wrong[:8]]
            blocks.append(f"Most confidently wrong {split} images:\n\n![confidently wrong]({grid.name})\n\n"
                          + "\n".join(rows))
        return blocks

    # ------------------------------------------------------------------ save / load / predict
    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        if self._architecture is None:
            raise OmnituneError("save_pretrained: build_model or load_pretrained first")
        save_folder(model, Path(out_dir), architecture=self._architecture, label_names=self.label_names,
                    data_config=self.preprocessing(), extra={"base_model": self.model_cfg.name})

    def restore(self, model_dir: Path) -> None:
        """Class names, preprocessing and architecture id from a folder written by save_pretrained
        (full model or adapter): a saved run needs no training data to be rebuilt."""
        config = read_folder_config(Path(model_dir))
        dc = config["data_config"]
        self.label_names, self._architecture = list(config["label_names"]), config["architecture"]
        self._pre = Preprocessing(int(dc["input_size"][-1]), tuple(dc["mean"]), tuple(dc["std"]),
                                  dc["interpolation"], float(dc["crop_pct"]))

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        model, pre, config = load_folder(Path(model_dir))
        self.label_names, self._pre, self._architecture = config["label_names"], pre, config["architecture"]
        return self._layout(model).eval()

    @staticmethod
    def _read_for_predict(path: str) -> np.ndarray:
        try:
            return decode_path(path)
        except Exception as exc:  # PIL raises several types for missing or broken files
            raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        augment = self.augmenter(False)
        out = []
        model.eval()
        for start in range(0, len(inputs), 32):
            chunk = inputs[start:start + 32]
            arrays = [augment(self._read_for_predict(p), 0) for p in chunk]
            probs = model(torch.from_numpy(np.stack(arrays))).float().softmax(-1)
            k = min(5, probs.shape[-1])
            for path, p in zip(chunk, probs):
                tp, ti = p.topk(k)
                out.append({"input": path, "label": self.label_names[int(ti[0])], "score": round(float(tp[0]), 4),
                            "top5": [{"label": self.label_names[int(j)], "score": round(float(s), 4)}
                                     for s, j in zip(tp, ti)]})
        return out
