"""``omnitune speech ...`` commands, added to the core CLI through the ``omnitune.commands``
entry-point group (pyproject: ``speech = "omnitune.speech.cli:add_commands"``)."""

from __future__ import annotations

import argparse


def _cmd_import_ct2(args: argparse.Namespace) -> int:
    from .ct2 import main_import_ct2

    return main_import_ct2([args.src, args.out, "--dtype", args.dtype])


def add_commands(sub) -> None:
    """Add ``speech import-ct2 SRC OUT`` to the core parser's sub-commands."""
    speech = sub.add_parser("speech", help="speech tools (Whisper checkpoint conversion)")
    speech_sub = speech.add_subparsers(dest="speech_command", required=True, metavar="SPEECH_COMMAND")
    p = speech_sub.add_parser("import-ct2", help="convert a CTranslate2 (faster-whisper) Whisper folder "
                                                 "into a transformers Whisper folder")
    p.add_argument("src", help="folder with model.bin, tokenizer.json and config.json")
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.set_defaults(func=_cmd_import_ct2)
