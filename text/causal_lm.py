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
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from omnitune.core.base import assets
from omnitune.core.base.errors import DataError, OmnituneError
from omnitune.core.base.recipe import DataConfig, ModelConfig, RegularizationConfig
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup

from . import data as tdata

IGNORE = -100  # label value that cross entropy skips (prompt and padding tokens)


class CausalLMModelConfig(ModelConfig):
    # Prompt + response tokens; longer rows are truncated from the end.
    max_length: int = Field(default=256, gt=0)
    # Greedy decoding length for `omnitune predict`.
    max_new_tokens: int = Field(default=32, gt=0)


class CausalLMDataConfig(DataConfig):
    # Format strings over the row's columns. The defaults expect "prompt" and "response" columns.
    prompt_template: str = "{prompt}"
    response_template: str = "{response}"
    # False: the loss (and perplexity) covers the response tokens only, the usual instruction tuning.
    train_on_prompt: bool = False
    # Append the tokenizer's end-of-sequence token to every response, so the model learns to stop.
    add_eos: bool = True


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
    ModelConfig: ClassVar[type] = CausalLMModelConfig
    DataConfig: ClassVar[type] = CausalLMDataConfig
    main_metric: ClassVar[str] = "perplexity"
    main_metric_mode: ClassVar[str] = "min"

    @classmethod
    def tiny_recipe(cls, folder: Path, like=None) -> dict:
        """The contract tests' fixture: a raw recipe for a tiny Llama and generated review -> yes/no rows (built
        from configs into ``folder``, nothing downloaded); see text/testing.py."""
        from .testing import tiny_causal_lm_recipe

        return tiny_causal_lm_recipe(folder)

    @classmethod
    def tiny_inputs(cls, folder: Path) -> list[str]:
        """Raw inputs for ``predict`` on the tiny recipe's model."""
        return ["the film was good"]

    def __init__(self, *, model: CausalLMModelConfig, data: CausalLMDataConfig,
                 regularization: RegularizationConfig, seed: int) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.label_smoothing = regularization.label_smoothing
        self.label_names = None  # no label set: the core's label-aware paths see None
        self._tokenizer = None

    # ------------------------------------------------------------------ model
    @property
    def model_path(self) -> str:
        return assets.resolve(self.model_cfg.name)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            tok = tdata.load_tokenizer(self.model_cfg.name, self.model_path, self.model_cfg.revision)
            if tok.pad_token_id is None:  # padding positions are masked out of the loss anyway
                tok.pad_token = tok.eos_token
            self._tokenizer = tok
        return self._tokenizer

    def build_model(self) -> nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            if self.model_cfg.pretrained:
                # fp32 master weights: bf16 autocast handles speed, AdamW updates stay exact.
                return AutoModelForCausalLM.from_pretrained(self.model_path, revision=self.model_cfg.revision,
                                                            dtype=torch.float32)
            config = AutoConfig.from_pretrained(self.model_path, revision=self.model_cfg.revision)
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        except OSError as exc:
            raise OmnituneError(f"model.name: cannot load {self.model_cfg.name!r} ({exc})") from None

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """Input embeddings, each decoder block, then the head: final norm and the LM head, unless
        the LM head is tied to the input embeddings (then it trains with them, in the first group)."""
        base = model
        inner = base.base_model
        blocks = max((m for m in inner.modules() if isinstance(m, nn.ModuleList)), key=len, default=None)
        if not blocks:
            raise OmnituneError(f"{type(base).__name__}: no list of decoder blocks found for layer groups")
        embed = base.get_input_embeddings()
        out_emb = base.get_output_embeddings()
        tied = out_emb is not None and out_emb.weight is embed.weight
        head = [m for n, m in inner.named_children() if m is not blocks and m is not embed]
        if out_emb is not None and not tied:
            head.append(out_emb)
        return [LayerGroup("embeddings", [embed]), *[LayerGroup(f"block_{i}", [b]) for i, b in enumerate(blocks)],
                LayerGroup("head", head)]

    # ------------------------------------------------------------------ data
    def _columns(self) -> list[str]:
        return list(dict.fromkeys(template_fields(self.data_cfg.prompt_template)
                                  + template_fields(self.data_cfg.response_template)))

    def _prepare(self, df) -> _LMDataset:
        d, tok = self.data_cfg, self.tokenizer
        rows = df[self._columns()].astype(str).to_dict("records")
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
        if all(all(x == IGNORE for x in lab) for lab in labels):
            raise DataError(f"{d.source}: every response was truncated away; raise model.max_length")
        return _LMDataset(input_ids, labels, [p + r for p, r in zip(prompts, responses)])

    def _clean(self, df, split: str, where: str, report: DataReport):
        d = self.data_cfg
        return tdata.clean_frame(df, split, where, self._columns(), None, None, d.unknown_labels,
                                 d.drop_duplicates, None, report)

    def build_datasets(self) -> DataBundle:
        d = self.data_cfg
        report = DataReport(source=d.source)
        splits = tdata.prepared_splits(d, self.seed, report, self._clean,
                                       lambda df: list(zip(*(df[c].astype(str) for c in self._columns()))),
                                       "same row")
        train = self._prepare(splits["train"])
        return DataBundle(train=train, validation=self._prepare(splits["validation"]),
                          test=self._prepare(splits["test"]) if "test" in splits else None, report=report,
                          train_lengths=[len(x) for x in train.input_ids])

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
        """The contract's forward result from a causal LM's logits: next-token NLL summed over the
        labelled tokens (labels IGNORE elsewhere), with per-sample sums for perplexity."""
        logits, target = logits[:, :-1], labels[:, 1:]  # token t predicts token t + 1
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE,
                              reduction="none", label_smoothing=self.label_smoothing if train else 0.0)
        nll = nll.view(target.shape)
        counted = (target != IGNORE).sum(-1)
        # Summed over response tokens; the trainer divides by the tokens of the whole step, so every
        # token weighs the same whatever the batch it fell into. Per-sample sums feed perplexity.
        return {"loss_sum": nll.sum(), "num_items": counted.sum(),
                "outputs": {"nll_sum": nll.sum(-1).detach(), "tokens": counted}}

    def predict_batch(self, model, batch, outputs) -> tuple[list[Any], list[Any]]:
        out = outputs["outputs"]
        return out["nll_sum"].float().cpu().tolist(), out["tokens"].cpu().tolist()

    def compute_metrics(self, predictions: list[float], references: list[int]) -> dict[str, float]:
        # predictions: summed NLL per sequence, references: its labelled-token count
        from omnitune.core.base.metrics import compute

        return {name: compute(name, predictions, references) for name in ("perplexity", "token_nll")}

    def report_extras(self, out_dir: Path, split: str, predictions, references, dataset) -> list[str]:
        per_sample = sorted(((p / max(1, r), i) for i, (p, r) in enumerate(zip(predictions, references))),
                            reverse=True)[:5]
        if not per_sample:
            return []
        rows = ["| text | token NLL |", "|---|---|"]
        rows += [f"| {dataset.texts[i][:120].replace('|', chr(92) + '|').replace(chr(10), ' ')} | {v:.3f} |"
                 for v, i in per_sample]
        return ["Hardest responses (highest mean token NLL):\n\n" + "\n".join(rows)]

    # ------------------------------------------------------------------ save / load / predict
    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)

    def resolve_labels(self) -> None:
        """No label set: nothing about the model's shape comes from the data."""
        return None

    def restore(self, model_dir: Path) -> None:
        """The tokenizer saved with the model (nothing else was learnt from the data)."""
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token

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
