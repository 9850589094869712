"""``omnitune chat``: streamed replies from the whole history, /reset, /exit; adapter runs on their base.

The expected replies are the library's own greedy decoding (``model.generate``) of the history
rendered by the chat template, computed here independently of the chat code.
"""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omnitune.core.api import predict, train
from omnitune.core.base.generation import GenerationConfig
from omnitune.core.base.recipe import validate_recipe
from omnitune.text.chat_cli import ChatSession, chat_loop, load_chat_model

from ..fixtures import tiny_recipe

Q1 = "review: the film was good . positive ?"
Q2 = "review: a dull plot . positive ?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chatcli")
    tiny_recipe("chat", folder)
    return folder / "tiny-chat-llama"


def greedy(model, tok, messages, n: int) -> str:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tok(text, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_session_keeps_history_streams_and_resets(model_dir):
    model, tok, _, _ = load_chat_model(str(model_dir))
    gen = GenerationConfig(max_new_tokens=6)
    lines = iter([Q1, Q2, "/reset", Q2, "/exit", "never read"])
    out = io.StringIO()
    session = ChatSession(model, tok, gen)
    assert chat_loop(session, lambda prompt: next(lines), out) == 0
    first = greedy(model, tok, [{"role": "user", "content": Q1}], 6)
    second = greedy(model, tok, [{"role": "user", "content": Q1}, {"role": "assistant", "content": first},
                                 {"role": "user", "content": Q2}], 6)
    fresh = greedy(model, tok, [{"role": "user", "content": Q2}], 6)
    assert first and second != fresh, "the fixture should make history matter"
    replies = [line.removeprefix("bot> ").strip() for line in out.getvalue().splitlines() if line.startswith("bot> ")]
    assert replies == [first, second, fresh]
    assert "(conversation cleared)" in out.getvalue()
    assert session.history == [{"role": "user", "content": Q2}, {"role": "assistant", "content": fresh}]


def test_adapter_run_loads_on_its_base_and_chats_like_predict(model_dir, tmp_path):
    raw = tiny_recipe("chat", model_dir.parent)
    raw.update(finetune={"peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}},
               output={"dir": str(tmp_path), "run_name": "lora"})
    raw["train"].update(max_steps=4)
    run = train(validate_recipe(raw)).run_dir
    assert (run / "model" / "adapter_config.json").is_file()
    model, tok, gen, _ = load_chat_model(str(run))
    assert any("lora_" in n for n, _ in model.named_parameters())
    assert gen.max_new_tokens == 3  # the run's model.generation
    out = io.StringIO()
    reply = ChatSession(model, tok, gen).reply(Q1, out)
    assert reply == predict(run, [Q1])[0]["reply"]
    assert out.getvalue().strip() == reply


def _read_until(fd: int, seen: bytearray, prompts: int, timeout: float = 120.0) -> None:
    """Read the terminal until it has shown the "you> " prompt ``prompts`` times."""
    end = time.monotonic() + timeout
    while seen.count(b"you> ") < prompts:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        assert ready, f"the chat stopped answering: {bytes(seen)!r}"
        seen.extend(os.read(fd, 4096))


def test_omnitune_chat_in_a_pseudo_terminal_answers_and_exits(model_dir):
    model, tok, _, _ = load_chat_model(str(model_dir))
    expected = greedy(model, tok, [{"role": "user", "content": Q1}], 5)
    main, child = pty.openpty()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "omnitune.core.cli", "chat", str(model_dir), "--max-new-tokens", "5"],
                            stdin=child, stdout=child, stderr=subprocess.DEVNULL, env=env, close_fds=True)
    os.close(child)
    seen = bytearray()
    try:
        _read_until(main, seen, prompts=1)
        os.write(main, (Q1 + "\n").encode())
        _read_until(main, seen, prompts=2)  # the reply streamed, then the prompt again
        os.write(main, b"/exit\n")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    text = seen.decode(errors="replace").replace("\r", "")
    reply = text.split("bot> ", 1)[1].split("\n", 1)[0].strip()
    assert reply == expected
