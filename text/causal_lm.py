"""GPT-style causal language modelling on instruction templates, evaluated by perplexity.

Each row of the data becomes ``prompt_template`` + ``response_template`` (Python format strings over
the row's columns, e.g. ``"{instruction}"`` / ``"{output}"``). The loss is the next-token cross
entropy on the response tokens only (``train_on_prompt: false``), and the main metric is the
perplexity of the responses: exp of the mean token negative log-likelihood over the whole split.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from omnitune.core.base import assets
from omnitune.core.base.errors import DataError
from omnitune.core.base.exporting import BATCH_SEQ, ExportSpec, text_graph
from omnitune.core.base.data import Storage
from omnitune.core.base.recipe import DataConfig, ModelConfig, RegularizationConfig
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup

from . import data as tdata
from . import lm, pipeline
from .backbone import Backbone
from .layers import decoder_layer_groups
from .lm import IGNORE  # noqa: F401  (re-exported: seq2seq and users import it from here)


class CausalLMModelConfig(ModelConfig):
    max_length: int = Field(default=256, gt=0)
    """Prompt + response tokens; longer rows are truncated from the end."""
    max_new_tokens: int = Field(default=32, gt=0)
    """Greedy decoding length for `omnitune predict`."""


class CausalLMDataConfig(DataConfig):
    prompt_template: str = "{prompt}"
    """Format string over the row's columns giving the prompt (default: the "prompt" column)."""
    response_template: str = "{response}"
    """Format string over the row's columns giving the response the model learns (default: the "response"
    column)."""
    train_on_prompt: bool = False
    """False: the loss (and perplexity) covers the response tokens only, the usual instruction tuning."""
    add_eos: bool = True
    """Append the tokenizer's end-of-sequence token to every response, so the model learns to stop."""
    storage: Storage = "auto"
    """memory: the table and token ids in RAM. disk: cleaned rows and token ids in memory-mapped Arrow
    files in the cache folder, read row by row (flat RSS as the data grows; the same batches and
    losses). auto: disk above core.data.AUTO_DISK_BYTES of source files."""


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


class _LMDataset(torch.utils.data.Dataset):
    def __init__(self, input_ids: list[list[int]], labels: list[list[int]], texts: list[str]) -> None:
        self.input_ids, self.labels, self.texts = input_ids, labels, texts

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i], "index": i}


class CausalLMTask:
    name: ClassVar[str] = "causal-lm"
    # The fields only some tasks read (core.base.recipe.TASK_IMPLEMENTED) that this one reads.
    implemented_fields: ClassVar[frozenset[str]] = frozenset({"regularization.label_smoothing"})
    ModelConfig: ClassVar[type] = CausalLMModelConfig
    DataConfig: ClassVar[type] = CausalLMDataConfig
    main_metric: ClassVar[str] = "perplexity"
    main_metric_mode: ClassVar[str] = "min"
    pipeline_tag: ClassVar[str] = "text-generation"  # Hub model-card metadata (ModelCardInfo)
    card_library: ClassVar[str] = "transformers"

    def export_spec(self) -> ExportSpec:
        """ONNX export (Exportable): full-sequence logits for scoring; no key/value cache, no generation."""
        return ExportSpec("named", (text_graph(("logits",), BATCH_SEQ, ("input_ids", "attention_mask")),),
                          "decoder LM without key/value cache: full-sequence logits (scoring)")

    def __init__(self, *, model: CausalLMModelConfig, data: CausalLMDataConfig,
                 regularization: RegularizationConfig, seed: int) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.label_smoothing = regularization.label_smoothing
        self.label_names = None  # no label set: the core's label-aware paths see None
        # Padding positions are masked out of the loss anyway: a tokenizer without a pad token pads with EOS.
        self.backbone = Backbone(model, pad_with_eos=True)

    # ------------------------------------------------------------------ model
    @property
    def model_path(self) -> str:
        return self.backbone.path

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return self.backbone.load_lm(AutoModelForCausalLM)

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """Input embeddings, each decoder block, then the head: final norm and the LM head, unless
        the LM head is tied to the input embeddings (then it trains with them, in the first group)."""
        return decoder_layer_groups(model)

    # ------------------------------------------------------------------ data
    def _columns(self) -> list[str]:
        return list(dict.fromkeys(template_fields(self.data_cfg.prompt_template)
                                  + template_fields(self.data_cfg.response_template)))

    def _prepare(self, df) -> _LMDataset:
        if isinstance(df, tdata.DiskRows):
            return self._prepare_disk(df)
        input_ids, labels, texts = self._encode_rows(*pipeline.columns_of(df, self._columns()))
        if all(all(x == IGNORE for x in lab) for lab in labels):
            raise DataError(f"{self.data_cfg.source}: every response was truncated away; raise model.max_length")
        return _LMDataset(input_ids, labels, texts)

    def _prepare_disk(self, rows: tdata.DiskRows) -> tdata.DiskTextDataset:
        """:meth:`_prepare` for rows on disk: encoded 2,000 at a time into an Arrow file in the cache
        folder (text/pipeline.py), keyed by the rows and every tokenisation setting."""
        d, tok = self.data_cfg, self.tokenizer
        settings = [f"{self.model_cfg.name}@{self.model_cfg.revision}|{type(tok).__name__}|{len(tok)}",
                    self.model_cfg.max_length, d.prompt_template, d.response_template, d.train_on_prompt, d.add_eos]
        seen = {"rows": 0, "labelled": False}

        def encode(*columns):
            input_ids, labels, texts = self._encode_rows(*columns)
            seen["rows"] += len(labels)
            seen["labelled"] = seen["labelled"] or any(x != IGNORE for lab in labels for x in lab)
            if seen["rows"] == len(rows) and not seen["labelled"]:
                raise DataError(f"{d.source}: every response was truncated away; raise model.max_length")
            return {"input_ids": input_ids, "labels": labels, "text": texts, "length": [len(x) for x in input_ids]}

        return pipeline.encode_to_disk(rows, self._columns(), settings, encode)

    def _encode_rows(self, *columns: list[str]) -> tuple[list[list[int]], list[list[int]], list[str]]:
        """(input ids, labels, prompt + response texts) of rows given as one list of values per column."""
        d, tok = self.data_cfg, self.tokenizer
        rows = [dict(zip(self._columns(), values)) for values in zip(*columns)]
        prompts = [d.prompt_template.format(**r) for r in rows]
        responses = [d.response_template.format(**r) for r in rows]
        p_ids = tok(prompts, add_special_tokens=True)["input_ids"]
        r_ids = tok(responses, add_special_tokens=False)["input_ids"]
        eos = [tok.eos_token_id] if d.add_eos and tok.eos_token_id is not None else []
        input_ids, labels = [], []
        for p, r in zip(p_ids, r_ids):
            ids = (list(p) + list(r) + eos)[: self.model_cfg.max_length]
            lab = ids if d.train_on_prompt else [IGNORE] * len(p) + (list(r) + eos)
            input_ids.append(ids)
            labels.append(list(lab[: len(ids)]))
        return input_ids, labels, [p + r for p, r in zip(prompts, responses)]

    def _clean(self, df, split: str, where: str, report: DataReport):
        d = self.data_cfg
        return tdata.clean_frame(df, split, where, self._columns(), None, None, d.unknown_labels,
                                 d.drop_duplicates, None, report)

    def build_datasets(self) -> DataBundle:
        d = self.data_cfg
        report = DataReport(source=d.source)
        splits = pipeline.prepared_splits(d, self.seed, report, self._clean,
                                          lambda df: list(zip(*(df[c].astype(str) for c in self._columns()))),
                                          "same row", disk_columns=self._columns())
        train = self._prepare(splits["train"])
        lengths = train.lengths() if isinstance(train, tdata.DiskTextDataset) else [len(x) for x in train.input_ids]
        return DataBundle(train=train, validation=self._prepare(splits["validation"]),
                          test=self._prepare(splits["test"]) if "test" in splits else None, report=report,
                          train_lengths=lengths)

    def load_eval_dataset(self, source: str, label_names) -> tuple[Any, DataReport]:
        report = DataReport(source=source)
        splits = tdata.load_splits(assets.resolve(source), None, None)
        df = self._clean(splits.get("test", splits["train"]), "eval", source, report)
        if len(df) == 0:
            raise DataError(f"{source}: no usable rows after cleaning")
        return self._prepare(df), report

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(s["input_ids"]) for s in samples)
        ids = torch.full((len(samples), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[i, :n] = torch.tensor(s["input_ids"])
            labels[i, :n] = torch.tensor(s["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "index": torch.tensor([s["index"] for s in samples])}

    # ------------------------------------------------------------------ step
    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits.float()
        return self.next_token_loss(logits, batch["labels"], train)

    def next_token_loss(self, logits: torch.Tensor, labels: torch.Tensor, train: bool) -> dict[str, Any]:
        """Next-token NLL on the labelled tokens (text/lm.py), label smoothing in training only."""
        return lm.next_token_loss(logits, labels, self.label_smoothing if train else 0.0)

    def predict_batch(self, model, batch, outputs) -> tuple[list[Any], list[Any]]:
        out = outputs["outputs"]
        return out["nll_sum"].float().cpu().tolist(), out["tokens"].cpu().tolist()

    def compute_metrics(self, predictions: list[float], references: list[int]) -> dict[str, float]:
        # predictions: summed NLL per sequence, references: its labelled-token count
        return lm.perplexity_metrics(predictions, references)

    def report_extras(self, out_dir: Path, split: str, predictions, references, dataset) -> list[str]:
        return lm.hardest_responses(dataset.texts, predictions, references)

    # ------------------------------------------------------------------ save / load / predict
    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        self.backbone.save(model, out_dir)

    def resolve_labels(self) -> None:
        """No label set: nothing about the model's shape comes from the data."""
        return None

    def restore(self, model_dir: Path) -> None:
        """The tokenizer saved with the model (nothing else was learnt from the data)."""
        self.backbone.restore(model_dir)

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        from transformers import AutoModelForCausalLM

        self.restore(model_dir)
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        """Greedy continuation of each input, placed into the prompt template when it has one field."""
        fields = template_fields(self.data_cfg.prompt_template)
        out = []
        for text in inputs:
            prompt = self.data_cfg.prompt_template.format(**{fields[0]: text}) if len(fields) == 1 else text
            enc = self.tokenizer(prompt, return_tensors="pt")
            gen = model.generate(**enc, max_new_tokens=self.model_cfg.max_new_tokens, do_sample=False,
                                 pad_token_id=self.tokenizer.pad_token_id)
            completion = self.tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out.append({"input": text, "completion": completion})
        return out
