"""``omnitune chat MODEL``, added to the core CLI through the ``omnitune.commands`` entry-point
group (pyproject: ``text = "omnitune.text.cli:add_commands"``); the chat itself is text/chat_cli.py."""

from __future__ import annotations

import argparse


def _cmd_chat(args: argparse.Namespace) -> int:
    from .chat_cli import run_terminal_chat

    return run_terminal_chat(args.model, adapter=args.adapter, system=args.system, template=args.template,
                             max_new_tokens=args.max_new_tokens)


def add_commands(sub) -> None:
    """Add ``chat MODEL [--adapter A] [--system S] [--template T] [--max-new-tokens N]``."""
    p = sub.add_parser("chat", help="chat in the terminal with a run's model, a model folder or asset:NAME")
    p.add_argument("model", help="a run folder (adapter runs load on their base), a model folder or asset:NAME")
    p.add_argument("--adapter", help="which adapter of a PEFT run or adapter library to use")
    p.add_argument("--system", help="system prompt (default: the run's data.system_prompt, if any)")
    p.add_argument("--template", help="chat template when the tokenizer has none: chatml or a Jinja string")
    p.add_argument("--max-new-tokens", type=int, help="reply length cap (default: the run's model.generation)")
    p.set_defaults(func=_cmd_chat)
