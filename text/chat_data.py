"""Conversations for chat fine-tuning: layouts, templates, assistant-only labels, packing, answers.

A conversation is a list of ``{"role": "system" | "user" | "assistant", "content": str}`` turns.
Rows arrive in one of two layouts: a ``messages`` column holding such a list (JSON lines, or a JSON
string in a CSV cell), or columns (``instruction`` / ``input`` / ``output``...) mapped to a user and
an assistant turn by format strings.

The rendered text comes from the tokenizer's chat template (or a declared one). Which tokens are
the assistant's is found from the template itself: the conversation is rendered up to each
assistant turn with the generation prompt, then with the turn, and the difference between the
two strings is the turn (its content plus the end-of-turn marker the template closes it with, so
the model learns to stop). Token offsets map those character spans onto tokens. A template whose
rendering does not contain the assistant's content (one that drops or rewrites it) is an error.

>>> parse_answer(r"\\b([A-E])\\.", "B. bookstore")
'B'
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from typing import Any, Sequence

from omnitune.core.base.errors import DataError, RecipeError
from omnitune.core.base.task import DataReport

IGNORE = -100  # label value cross entropy skips: system/user tokens, padding
ROLES = ("system", "user", "assistant")

# The declared template for tokenizers without one (``data.chat_template: chatml``): ChatML, as
# SmolLM2, Qwen and many others use it. ``eos`` closes each turn, so generation stops there.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE}


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


# ----------------------------------------------------------------------------- layouts
def _as_messages(cell: Any) -> Any:
    """A messages cell as read by pandas: a list already (JSON lines) or a JSON string (CSV)."""
    if isinstance(cell, str):
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return None
    if hasattr(cell, "tolist"):  # numpy arrays from parquet
        return cell.tolist()
    return cell


def _problem(messages: Any) -> str | None:
    """Why a messages list is unusable (a drop reason), or None."""
    if not isinstance(messages, list) or not messages:
        return "malformed messages (not a non-empty list)"
    for turn in messages:
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str) or "role" not in turn:
            return "malformed messages (a turn without role/content)"
        if turn["role"] not in ROLES:
            return f"unknown role {turn['role']!r}"
    if not any(t["role"] == "assistant" and t["content"].strip() for t in messages):
        return "no assistant turn"
    return None


def rows_to_conversations(df, *, layout: str, messages_column: str, prompt_template: str, response_template: str,
                          system_prompt: str | None, split: str, where: str,
                          report: DataReport) -> list[list[dict[str, str]]]:
    """The rows of one split as conversations; unusable rows are counted in ``report`` by reason."""
    if layout == "auto":
        layout = "messages" if messages_column in df.columns else "columns"
    report.rows_read[split] = len(df)
    convs: list[list[dict[str, str]]] = []
    dropped: dict[str, list[str]] = {}
    if layout == "messages":
        if messages_column not in df.columns:
            raise DataError(f"{where}: no column {messages_column!r} (columns: {', '.join(map(str, df.columns))}); "
                            "set data.messages_column, or data.layout: columns with prompt/response templates")
        for i, cell in enumerate(df[messages_column]):
            messages = _as_messages(cell)
            why = _problem(messages)
            if why:
                dropped.setdefault(why, []).append(f"row {i}")
                continue
            convs.append([{"role": t["role"], "content": t["content"]} for t in messages])
    else:
        fields = list(dict.fromkeys(template_fields(prompt_template) + template_fields(response_template)))
        missing = [f for f in fields if f not in df.columns]
        if missing:
            raise DataError(f"{where}: no column {', '.join(map(repr, missing))} for data.prompt_template/"
                            f"response_template (columns: {', '.join(map(str, df.columns))})")
        for i, row in enumerate(df[fields].to_dict("records")):
            absent = [f for f in fields if row[f] is None or (isinstance(row[f], float) and row[f] != row[f])]
            if absent:
                dropped.setdefault(f"missing field ({absent[0]})", []).append(f"row {i}")
                continue
            row = {k: str(v) for k, v in row.items()}
            user, answer = prompt_template.format(**row).strip(), response_template.format(**row).strip()
            if not answer:
                dropped.setdefault("no assistant turn", []).append(f"row {i}")
                continue
            convs.append([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
    for reason, rows in dropped.items():
        report.drop(split, reason, len(rows), rows)
    if system_prompt:
        convs = [c if c[0]["role"] == "system" else [{"role": "system", "content": system_prompt}, *c] for c in convs]
    return convs


def conversation_key(conv: list[dict[str, str]]) -> str:
    return json.dumps(conv, sort_keys=True, ensure_ascii=False)


# ----------------------------------------------------------------------------- templates and labels
def set_chat_template(tokenizer, declared: str | None, model_name: str) -> None:
    """Use ``declared`` (a name in NAMED_TEMPLATES or a Jinja string) or check the tokenizer has one."""
    if declared is not None:
        tokenizer.chat_template = NAMED_TEMPLATES.get(declared, declared)
    elif not tokenizer.chat_template:
        raise RecipeError(f"data.chat_template: the tokenizer of {model_name!r} has no chat template; declare one "
                          f"({' / '.join(NAMED_TEMPLATES)} or a Jinja template string)")


def render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns.

    Each span is what rendering the turn adds after the generation prompt: the content and the
    template's end-of-turn text. Raises DataError when the template drops or rewrites an assistant's
    content, or renders earlier turns differently once later ones are added (then the spans could
    not be told apart)."""
    text = render(tokenizer, messages)
    spans = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant" or i == 0:
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True)
        after = render(tokenizer, messages[: i + 1])
        content = turn["content"].strip()
        if not (after.startswith(before) and text.startswith(after)):
            raise DataError(f"chat template: rendering turn {i} does not extend the rendering of the turns before it "
                            "(the template rewrites earlier turns); assistant tokens cannot be located")
        if content and content not in after[len(before):]:
            raise DataError(f"chat template drops the assistant content (turn {i}: {content[:60]!r} is not in "
                            f"the rendered text {after[len(before):][:80]!r}); fix data.chat_template")
        spans.append((len(before), len(after)))
    return text, spans


def encode_conversation(tokenizer, messages: list[dict[str, str]], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation (at most ``max_length``) and labels that are the ids
    on assistant tokens and IGNORE elsewhere. The template writes any BOS itself."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    labels = [tok if any(s <= start < e for s, e in spans) else IGNORE for tok, (start, _) in zip(ids, offsets)]
    return ids[:max_length], labels[:max_length]


def prompt_and_reference(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The turns before the last assistant turn (to generate from) and that turn's content."""
    last = max(i for i, t in enumerate(messages) if t["role"] == "assistant")
    return messages[:last], messages[last]["content"]


# ----------------------------------------------------------------------------- packing
@dataclass
class Packed:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]  # restart at 0 for every conversation: attention stays inside each
    conversations: int


def pack(sequences: Sequence[tuple[list[int], list[int]]], max_length: int) -> list[Packed]:
    """Whole conversations packed, in order, into sequences of at most ``max_length`` tokens (a
    conversation never splits). Position ids restart per conversation; the model's packed-sequence
    mask (transformers reads restarts from position ids when no attention mask is given) keeps
    attention inside each conversation, and no loss term predicts a conversation's first token
    from the one before it (that label is IGNORE)."""
    out: list[Packed] = []
    cur = Packed([], [], [], 0)
    for ids, labels in sequences:
        if cur.input_ids and len(cur.input_ids) + len(ids) > max_length:
            out.append(cur)
            cur = Packed([], [], [], 0)
        cur.input_ids += ids
        # The first token of a conversation is predicted by the last token of the one before: no label.
        cur.labels += [IGNORE] + labels[1:]
        cur.position_ids += list(range(len(ids)))
        cur.conversations += 1
    if cur.input_ids:
        out.append(cur)
    return out


# ----------------------------------------------------------------------------- answers
def parse_answer(pattern: str | None, text: str) -> str | None:
    """The label parsed from ``text`` by ``pattern`` (its first group, else the whole match); the
    text itself without a pattern; None when the pattern does not match."""
    if pattern is None:
        return text
    m = re.search(pattern, text)
    if m is None:
        return None
    return m.group(1) if m.groups() else m.group(0)
