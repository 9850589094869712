"""Chat fine-tuning (supervised, on conversations) with generation in evaluation and ``predict``.

Rows are conversations (a ``messages`` column) or instruction/response columns mapped through
templates (text/chat_data.py); they are rendered with the tokenizer's chat template, or a declared
one, and the loss is the next-token cross entropy on the assistant turns only, summed over tokens
(the trainer divides by the tokens of the whole step). Short conversations may be packed into
full-length sequences (``data.packing``); attention stays within each conversation.

Evaluation scores every sample's assistant tokens (perplexity, the main metric), and generates a
reply for a fixed, seeded subset (``model.generation.eval_samples``) with the recipe's decoding
settings (``model.generation``), scored against the last assistant turn by ``data.generation_metrics``
(exact match, ROUGE) and, with ``data.answer_pattern``, by the accuracy of the label parsed from
the reply. With ``eval.baseline: true`` the report puts the zero-shot replies next to the
fine-tuned ones. Model loading, layer groups, the loss, saving and reloading are composed from the
shared modules (text/backbone.py, text/layers.py, text/lm.py), as causal-lm composes them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from omnitune.core.base import assets
from omnitune.core.base.errors import DataError
from omnitune.core.base.generation import GenerationConfig, fixed_subset, side_by_side
from omnitune.core.base.recipe import DataConfig, ModelConfig, RegularizationConfig
from omnitune.core.base.task import DataBundle, DataReport, LayerGroup

from . import chat_data as cd
from . import data as tdata
from . import lm, pipeline
from .backbone import Backbone
from .layers import decoder_layer_groups

IGNORE = cd.IGNORE


class ChatModelConfig(ModelConfig):
    max_length: int = Field(default=512, gt=0)
    """Tokens per conversation (per packed sequence with data.packing); longer ones are cut at the end."""
    generation: GenerationConfig = GenerationConfig()
    """Decoding for evaluation, `omnitune predict` and `omnitune chat` (greedy by default)."""


class ChatDataConfig(DataConfig):
    layout: Literal["auto", "messages", "columns"] = "auto"
    """messages: a column of [{"role", "content"}...] lists; columns: one user turn from
    prompt_template and one assistant turn from response_template (format strings over the
    row's columns); auto: messages when the column exists."""
    messages_column: str = "messages"
    """layout messages: the column of [{role, content}...] lists."""
    prompt_template: str = "{instruction}"
    """layout columns: format string over the row's columns giving the user turn."""
    response_template: str = "{output}"
    """layout columns: format string over the row's columns giving the assistant turn."""
    system_prompt: str | None = None
    """Prepended as a system turn to every conversation that has none."""
    chat_template: str | None = None
    """None: the tokenizer's own chat template (an error if it has none); "chatml", or a Jinja
    template string. Saved with the tokenizer, so predict and chat render the same way."""
    packing: bool = False
    """Pack whole training conversations into sequences of model.max_length tokens (less padding
    for short conversations; attention never crosses conversations). Evaluation is never packed."""
    generation_metrics: list[Literal["exact_match", "rouge1", "rouge2", "rougeL"]] = ["exact_match"]
    """Scores of generated replies against the reference reply."""
    answer_pattern: str | None = None
    r"""A regex whose first group (or whole match) is the label in a reply, e.g. "^\\s*([A-E])\\b" for
    multiple choice; adds answer_accuracy (the parsed labels of reply and reference agree)."""

    @model_validator(mode="after")
    def _pattern_compiles(self) -> "ChatDataConfig":
        if self.answer_pattern is not None:
            try:
                re.compile(self.answer_pattern)
            except re.error as exc:
                raise ValueError(f"answer_pattern is not a valid regex ({exc})") from None
        return self


class ChatDataset(torch.utils.data.Dataset):
    """Encoded conversations (or packed sequences). Evaluation sets also hold, per conversation, the
    prompt to generate from, the reference reply and whether it is in the generation subset."""

    def __init__(self, input_ids: list[list[int]], labels: list[list[int]], *,
                 position_ids: list[list[int]] | None = None, prompts: list[list[int]] | None = None,
                 references: list[str] | None = None, generate: list[bool] | None = None,
                 conversations: list[list[dict]] | None = None, split: str = "") -> None:
        self.input_ids, self.labels, self.position_ids = input_ids, labels, position_ids
        self.prompts, self.references, self.generate = prompts, references, generate
        self.conversations, self.split = conversations, split

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"input_ids": self.input_ids[i], "labels": self.labels[i], "index": i}
        if self.position_ids is not None:
            item["position_ids"] = self.position_ids[i]
        if self.prompts is not None:
            item.update(prompt_ids=self.prompts[i], reference=self.references[i], generate=self.generate[i],
                        split=self.split)
        return item

    def last_user(self, i: int) -> str:
        users = [t["content"] for t in self.conversations[i] if t["role"] == "user"]
        return users[-1] if users else ""


class ChatTask:
    name: ClassVar[str] = "chat"
    # The fields only some tasks read (core.base.recipe.TASK_IMPLEMENTED) that this one reads.
    implemented_fields: ClassVar[frozenset[str]] = frozenset({"regularization.label_smoothing"})
    ModelConfig: ClassVar[type] = ChatModelConfig
    DataConfig: ClassVar[type] = ChatDataConfig
    main_metric: ClassVar[str] = "perplexity"
    main_metric_mode: ClassVar[str] = "min"
    pipeline_tag: ClassVar[str] = "text-generation"  # Hub model-card metadata (ModelCardInfo)
    card_library: ClassVar[str] = "transformers"

    def __init__(self, *, model: ChatModelConfig, data: ChatDataConfig, regularization: RegularizationConfig,
                 seed: int) -> None:
        self.model_cfg, self.data_cfg, self.seed = model, data, seed
        self.label_smoothing = regularization.label_smoothing
        self.label_names = None  # no label set: the core's label-aware paths see None
        # A causal LM's tokenizer (EOS pads; padding is masked out of the loss) with the chat template
        # set when it is first loaded; a restored one was saved with its template.
        self.backbone = Backbone(model, pad_with_eos=True, prepare=lambda tok: cd.set_chat_template(
            tok, data.chat_template, model.name))
        # Generations of each evaluation, by split, in order: with eval.baseline the first test
        # evaluation is the zero-shot model's, which the report sets beside the fine-tuned one.
        self.generation_history: dict[str, list[dict[int, str]]] = {}

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
        """Input embeddings, each decoder block, then the head (text/layers.py)."""
        return decoder_layer_groups(model)

    # ------------------------------------------------------------------ data
    def _conversations(self, df, split: str, where: str, report: DataReport) -> list[list[dict]]:
        d = self.data_cfg
        convs = cd.rows_to_conversations(df, layout=d.layout, messages_column=d.messages_column,
                                         prompt_template=d.prompt_template, response_template=d.response_template,
                                         system_prompt=d.system_prompt, split=split, where=where, report=report)
        if d.drop_duplicates:
            seen, kept, dups = set(), [], []
            for i, c in enumerate(convs):
                key = cd.conversation_key(c)
                if key in seen:
                    dups.append(f"conversation {i}")
                else:
                    seen.add(key)
                    kept.append(c)
            report.drop(split, "exact duplicate", len(dups), dups)
            convs = kept
        return convs

    def _encode(self, convs: list[list[dict]], split: str, report: DataReport, eval_set: bool) -> ChatDataset:
        tok, max_len = self.tokenizer, self.model_cfg.max_length
        ids, labels, kept, cut = [], [], [], []
        for i, conv in enumerate(convs):
            x, y = cd.encode_conversation(tok, conv, max_len)
            if all(v == IGNORE for v in y[1:]):
                cut.append(f"conversation {i}")
                continue
            ids.append(x)
            labels.append(y)
            kept.append(conv)
        report.drop(split, "no assistant token within model.max_length", len(cut), cut)
        report.rows_kept[split] = len(kept)
        if not kept:
            raise DataError(f"{self.data_cfg.source}: no {split} conversation keeps an assistant token within "
                            f"model.max_length={max_len}")
        if not eval_set:
            if not self.data_cfg.packing:
                return ChatDataset(ids, labels, conversations=kept, split=split)
            packed = cd.pack(list(zip(ids, labels)), max_len)
            report.notes.append(f"{split}: {len(ids)} conversations packed into {len(packed)} sequences of at most "
                                f"{max_len} tokens")
            return ChatDataset([p.input_ids for p in packed], [p.labels for p in packed],
                               position_ids=[p.position_ids for p in packed], split=split)
        prompts, refs = [], []
        for conv in kept:
            before, reference = cd.prompt_and_reference(conv)
            text = cd.render(tok, before, generation_prompt=True)
            # Keep the end of a long prompt: the generation prompt and the question are there.
            prompts.append(list(tok(text, add_special_tokens=False)["input_ids"])[-max_len:])
            refs.append(reference)
        chosen = set(fixed_subset(len(kept), self.model_cfg.generation.eval_samples, self.seed))
        return ChatDataset(ids, labels, prompts=prompts, references=refs,
                           generate=[i in chosen for i in range(len(kept))], conversations=kept, split=split)

    def build_datasets(self) -> DataBundle:
        d = self.data_cfg
        report = DataReport(source=d.source)
        convs = pipeline.prepared_splits(d, self.seed, report, self._conversations,
                                         lambda cs: [cd.conversation_key(c) for c in cs], "same conversation")
        train = self._encode(convs["train"], "train", report, eval_set=False)
        return DataBundle(train=train, validation=self._encode(convs["validation"], "validation", report, True),
                          test=self._encode(convs["test"], "test", report, True) if "test" in convs else None,
                          report=report, train_lengths=[len(x) for x in train.input_ids])

    def load_eval_dataset(self, source: str, label_names) -> tuple[Any, DataReport]:
        report = DataReport(source=source)
        splits = tdata.load_splits(assets.resolve(source), None, None)
        convs = self._conversations(splits.get("test", splits["train"]), "eval", source, report)
        if not convs:
            raise DataError(f"{source}: no usable conversations after cleaning")
        return self._encode(convs, "eval", report, eval_set=True), report

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(s["input_ids"]) for s in samples)
        n = len(samples)
        ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        packed = "position_ids" in samples[0]
        extra = torch.zeros((n, width), dtype=torch.long)  # attention mask, or position ids when packed
        for i, s in enumerate(samples):
            k = len(s["input_ids"])
            ids[i, :k] = torch.tensor(s["input_ids"])
            labels[i, :k] = torch.tensor(s["labels"])
            if packed:  # padding is one more sequence (positions restart); causal, so nothing attends to it
                extra[i, :k] = torch.tensor(s["position_ids"])
                extra[i, k:] = torch.arange(width - k)
            else:
                extra[i, :k] = 1
        batch = {"input_ids": ids, "labels": labels, "index": torch.tensor([s["index"] for s in samples]),
                 ("position_ids" if packed else "attention_mask"): extra}
        if "prompt_ids" in samples[0]:
            batch.update(prompt_ids=[s["prompt_ids"] for s in samples], reference=[s["reference"] for s in samples],
                         generate=torch.tensor([s["generate"] for s in samples]), split=samples[0]["split"])
        return batch

    # ------------------------------------------------------------------ step
    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        if "position_ids" in batch:
            # No attention mask and no cache: transformers then reads the restarts of the position ids
            # as packed sequences and keeps attention block-diagonal (every attention implementation).
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                           use_cache=False).logits.float()
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).logits.float()
        return lm.next_token_loss(logits, batch["labels"], self.label_smoothing if train else 0.0)

    @torch.no_grad()
    def generate(self, model: nn.Module, prompts: list[list[int]]) -> list[str]:
        """Replies to token-id prompts (left-padded into one batch), decoded without special tokens."""
        tok = self.tokenizer
        return lm.generate_replies(model, tok, prompts, **self.model_cfg.generation.kwargs(tok))

    def predict_batch(self, model, batch, outputs) -> tuple[list[Any], list[Any]]:
        out = outputs["outputs"]
        nll, tokens = out["nll_sum"].float().cpu().tolist(), out["tokens"].cpu().tolist()
        replies: list[str | None] = [None] * len(nll)
        if "generate" in batch and bool(batch["generate"].any()):
            chosen = [i for i, g in enumerate(batch["generate"].tolist()) if g]
            for i, text in zip(chosen, self.generate(model, [batch["prompt_ids"][i] for i in chosen])):
                replies[i] = text
        split = batch.get("split", "")
        preds = [{"nll_sum": a, "tokens": b, "reply": r, "index": int(j), "split": split}
                 for a, b, r, j in zip(nll, tokens, replies, batch["index"].tolist())]
        return preds, list(batch.get("reference", [None] * len(nll)))

    def compute_metrics(self, predictions: list[dict], references: list[str | None]) -> dict[str, float]:
        from omnitune.core.base.metrics import compute

        metrics = lm.perplexity_metrics([p["nll_sum"] for p in predictions], [p["tokens"] for p in predictions])
        generated = [(p, r) for p, r in zip(predictions, references) if p["reply"] is not None]
        if generated:
            replies, refs = [p["reply"] for p, _ in generated], [r for _, r in generated]
            for name in self.data_cfg.generation_metrics:
                metrics[name] = compute(name, replies, refs)
            pattern = self.data_cfg.answer_pattern
            if pattern is not None:
                metrics["answer_accuracy"] = compute("answer_accuracy", [cd.parse_answer(pattern, x) for x in replies],
                                                     [cd.parse_answer(pattern, x) for x in refs])
            split = generated[0][0]["split"]
            self.generation_history.setdefault(split, []).append({p["index"]: p["reply"] for p, _ in generated})
        return metrics

    def report_extras(self, out_dir: Path, split: str, predictions, references, dataset) -> list[str]:
        texts = [dataset.last_user(i) for i in range(len(dataset))]  # the hardest conversations' last user turn
        blocks = lm.hardest_responses(texts, [p["nll_sum"] for p in predictions], [p["tokens"] for p in predictions])
        runs = self.generation_history.get(split, [])
        if not runs:
            return blocks
        tuned = runs[-1]
        zero = runs[0] if len(runs) >= 2 else {}
        rows = [{"prompt": dataset.last_user(i), "reference": dataset.references[i],
                 "zero-shot": zero.get(i, ""), "fine-tuned": tuned[i]} for i in sorted(tuned)]
        with open(Path(out_dir) / f"generations_{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        g = self.model_cfg.generation
        how = f"{'sampling' if g.do_sample else 'greedy' if g.num_beams == 1 else f'beam {g.num_beams}'}, " \
              f"at most {g.max_new_tokens} new tokens"
        columns = ["prompt", "reference", "zero-shot", "fine-tuned"] if zero else ["prompt", "reference", "fine-tuned"]
        note = "" if zero else " (set eval.baseline: true for the zero-shot replies beside them)"
        blocks.append(f"Generated replies on a fixed subset of {len(tuned)} {split} conversations ({how}; all in "
                      f"generations_{split}.jsonl){note}:\n\n" + side_by_side(rows[:8], columns, width=120))
        return blocks

    # ------------------------------------------------------------------ save / load / predict
    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        self.backbone.save(model, out_dir)  # the tokenizer carries the chat template

    def resolve_labels(self) -> None:
        """No label set: nothing about the model's shape comes from the data."""
        return None

    def restore(self, model_dir: Path) -> None:
        """The tokenizer saved with the model, chat template included."""
        self.backbone.restore(model_dir)

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        from transformers import AutoModelForCausalLM

        self.restore(model_dir)
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = cd.render(self.tokenizer, messages, generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def user_turn(self, text: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.data_cfg.system_prompt}] if self.data_cfg.system_prompt else []
        return [*system, {"role": "user", "content": text}]

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        """A reply to each raw user message (one turn, with the recipe's system prompt)."""
        replies = [self.generate(model, [self.prompt_ids(self.user_turn(text))])[0] for text in inputs]
        return [{"input": text, "reply": reply} for text, reply in zip(inputs, replies)]

