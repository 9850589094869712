"""CoNLL-style tagged text: one token per line with its columns, a blank line between sentences.

The WNUT-16 file is ``token TAB tag``; CoNLL-2003 is ``token POS chunk NER`` separated by spaces,
with ``-DOCSTART-`` lines between documents. Both read with the defaults: the token is the first
column, the tag the last. Every line of a file must have the same number of columns; a line that
does not is a :class:`DataError` naming the file and the line.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a.conll"
>>> _ = p.write_text("-DOCSTART- -X- -X- O\\n\\nJohn NNP B-NP B-PER\\nruns VBZ B-VP O\\n\\n")
>>> [(s.tokens, s.tags, s.line) for s in read_conll(p)]
[(['John', 'runs'], ['B-PER', 'O'], 3)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omnitune.core.base.errors import DataError

DOCSTART = "-DOCSTART-"


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    # Where the sentence came from: the first line of it in a CoNLL file (1-based), or a row number.
    line: int


def _columns(line: str) -> list[str]:
    # Tab-separated files may hold tokens with spaces in them; otherwise any run of spaces separates.
    return line.split("\t") if "\t" in line else line.split()


def read_conll(path: str | Path, token_column: int = 0, tag_column: int = -1) -> list[Sentence]:
    """The sentences of a CoNLL-style file. ``-DOCSTART-`` lines end a sentence and are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    width: int | None = None

    def flush() -> None:
        nonlocal tokens, tags
        if tokens:
            sentences.append(Sentence(tokens, tags, start))
        tokens, tags = [], []

    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            cols = _columns(line)
            if width is None:
                width = len(cols)
                for index, name in ((token_column, "conll_token_column"), (tag_column, "conll_tag_column")):
                    if not -width <= index < width:
                        raise DataError(f"{path}:{number}: data.{name} is {index} but lines have {width} columns")
                if width < 2:
                    raise DataError(f"{path}:{number}: expected a token and a tag column, found 1 column "
                                    f"({line.strip()[:60]!r})")
            elif len(cols) != width:
                raise DataError(f"{path}:{number}: expected {width} columns (as on the first line), found "
                                f"{len(cols)} ({line.strip()[:60]!r})")
            if cols[0] == DOCSTART:
                flush()
                continue
            if not tokens:
                start = number
            tokens.append(cols[token_column])
            tags.append(cols[tag_column].strip())
    flush()
    return sentences
