"""``omnitune chat MODEL``: an interactive terminal chat with a fine-tuned model, a model folder or
an asset (``asset:smollm2-135m``).

Replies stream token by token (transformers' TextStreamer); the history goes through the chat
template every turn, so the model sees the whole conversation. ``/reset`` clears the history,
``/exit`` (or end of input) leaves. A run folder is loaded as ``omnitune predict`` loads it: an
adapter run is rebuilt on its base, and the run's decoding settings (``model.generation``) and
system prompt apply.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TextIO

import torch

from omnitune.core.base.generation import GenerationConfig

from . import chat_data as cd

HELP = "Type a message; /reset clears the conversation, /exit leaves."


def load_chat_model(ref: str, adapter: str | None = None, template: str | None = None):
    """(model, tokenizer, generation settings, system prompt) for a run folder, a Hugging Face
    model folder or ``asset:NAME``."""
    from omnitune.core.base import assets
    from omnitune.core.adapters import peft as peft_lib
    from omnitune.core.runs import RECIPE_FILE, load_run

    if (Path(ref) / RECIPE_FILE).is_file():
        rec, task, model = load_run(ref, adapter)
        tokenizer, model = task.tokenizer, peft_lib.task_model(model)
        # A run of another generative task (e.g. preference tuning) may declare no decoding settings.
        generation = getattr(rec.model, "generation", None) or GenerationConfig()
        system = getattr(rec.data, "system_prompt", None)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = assets.resolve(ref)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        generation, system = GenerationConfig(), None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if template is not None or not tokenizer.chat_template:
        cd.set_chat_template(tokenizer, template, ref)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return model, tokenizer, generation, system


class ChatSession:
    """A conversation with ``model``: each reply is generated from the whole history, rendered by
    the chat template, and streamed to ``out`` as it is decoded."""

    def __init__(self, model, tokenizer, generation: GenerationConfig, system: str | None = None) -> None:
        self.model, self.tokenizer, self.generation, self.system = model, tokenizer, generation, system
        self.history: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    @torch.no_grad()
    def reply(self, text: str, out: TextIO) -> str:
        from transformers import TextStreamer

        class Streamer(TextStreamer):
            def on_finalized_text(self, chunk: str, stream_end: bool = False) -> None:
                out.write(chunk)
                out.flush()

        self.history.append({"role": "user", "content": text})
        prompt = cd.render(self.tokenizer, self.history, generation_prompt=True)
        enc = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(self.model.device)
        streamer = Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        ids = self.model.generate(**enc, streamer=streamer, **self.generation.kwargs(self.tokenizer))
        answer = self.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer


def chat_loop(session: ChatSession, read: Callable[[str], str], out: TextIO) -> int:
    """Read messages with ``read(prompt)`` until /exit or end of input; answer each one."""
    out.write(HELP + "\n")
    out.flush()
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return 0
        if line == "/exit":
            return 0
        if line == "/reset":
            session.reset()
            out.write("(conversation cleared)\n")
            continue
        if not line:
            continue
        out.write("bot> ")
        session.reply(line, out)
        out.write("\n")
        out.flush()


def run_terminal_chat(ref: str, *, adapter: str | None = None, system: str | None = None,
                      template: str | None = None, max_new_tokens: int | None = None) -> int:
    model, tokenizer, generation, run_system = load_chat_model(ref, adapter, template)
    if max_new_tokens is not None:
        generation = generation.model_copy(update={"max_new_tokens": max_new_tokens})
    session = ChatSession(model, tokenizer, generation, system if system is not None else run_system)
    return chat_loop(session, _read_line, sys.stdout)


def _read_line(prompt: str) -> str:
    """``input`` without its habit of writing the prompt to stderr when no readline is loaded."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line

