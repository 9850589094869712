"""Per-group evaluation (eval.groups): metrics per group value match values worked out by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from omnitune.core.api import evaluate, train
from omnitune.core.base.errors import DataError, RecipeError
from omnitune.core.evaluation.groups import evaluate_groups, groups_md
from omnitune.core.base.metrics import compute
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.base.task import DataReport

from ..conftest import make_reviews, text_recipe

# sex, race, label, prediction: the "model" of the table task below reads its prediction column.
ROWS = [("F", "A", "yes", "yes"), ("F", "A", "no", "yes"), ("F", "B", "yes", "no"), ("F", "B", "no", "no"),
        ("M", "A", "yes", "yes"), ("M", "A", "yes", "yes"), ("M", "A", "no", "no"), ("M", "B", "no", "yes"),
        ("M", "B", "yes", "yes"), ("M", "B", "no", "no")]
LABELS = ["no", "yes"]


class TableTask:
    """A task whose predictions are a column of its evaluation table: the group machinery is tested
    on known predictions. Loss per sample: 0 when right, 1 when wrong (the error rate)."""

    name = "table"

    def load_eval_dataset(self, source, label_names):
        frame = pd.read_csv(source)
        report = DataReport(source=source)
        return [(label_names.index(p), label_names.index(y)) for p, y in zip(frame["pred"], frame["label"])], report

    def compute_metrics(self, predictions, references):
        return {"accuracy": compute("accuracy", predictions, references)}


def _evaluate(dataset):
    preds, refs = [p for p, _ in dataset], [r for _, r in dataset]
    metrics = TableTask().compute_metrics(preds, refs)
    metrics["loss"] = sum(p != r for p, r in dataset) / len(dataset)
    return metrics, preds, refs


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "people.csv"
    pd.DataFrame(ROWS, columns=["sex", "race", "label", "pred"]).to_csv(path, index=False)
    return path


def test_group_metrics_and_fairness_by_hand(table):
    out = evaluate_groups(TableTask(), LABELS, str(table), ["sex", "race"], _evaluate, min_count=5)
    sex, race = out["columns"]["sex"], out["columns"]["race"]
    # F: rows 1-4, right on 1 and 4. M: rows 5-10, wrong only on row 8.
    assert sex["F"]["count"] == 4 and sex["F"]["accuracy"] == pytest.approx(0.5)
    assert sex["M"]["count"] == 6 and sex["M"]["accuracy"] == pytest.approx(5 / 6)
    assert sex["F"]["loss"] == pytest.approx(0.5) and sex["M"]["loss"] == pytest.approx(1 / 6)
    assert sex["F"]["flagged"] and not sex["M"]["flagged"]  # 4 < min_count 5: flagged, still reported
    assert race["A"]["accuracy"] == pytest.approx(0.8) and race["B"]["accuracy"] == pytest.approx(0.6)
    assert out["overall"]["accuracy"] == pytest.approx(0.7) and out["overall"]["count"] == 10
    assert out["intersection"]["M & B"]["accuracy"] == pytest.approx(2 / 3)
    assert out["intersection"]["F & A"]["count"] == 2
    assert out["gaps"]["race"]["accuracy"] == pytest.approx(0.2)
    assert out["gaps"]["sex"] == {}  # only one unflagged sex group: no gap to trust
    fair = out["fairness"]["columns"]["sex"]
    assert out["fairness"]["positive_label"] == "yes"
    # Selection rate F 2/4, M 4/6; TPR F 1/2, M 3/3; FPR F 1/2, M 1/3.
    assert fair["by_group"]["F"]["selection_rate"] == pytest.approx(0.5)
    assert fair["by_group"]["M"]["selection_rate"] == pytest.approx(4 / 6)
    assert fair["by_group"]["F"]["tpr"] == pytest.approx(0.5) and fair["by_group"]["M"]["tpr"] == pytest.approx(1.0)
    assert fair["by_group"]["M"]["fpr"] == pytest.approx(1 / 3)
    assert fair["demographic_parity_difference"] == pytest.approx(4 / 6 - 0.5)
    assert fair["demographic_parity_ratio"] == pytest.approx(0.75)
    assert fair["equalized_odds_difference"] == pytest.approx(0.5)  # max(|TPR gap| 0.5, |FPR gap| 1/6)
    md = groups_md(out)
    assert "| F ⚠ | 4 |" in md and "| M | 6 |" in md


def test_positive_label_switches_the_selected_outcome(table):
    out = evaluate_groups(TableTask(), LABELS, str(table), ["sex"], _evaluate, positive_label="no")
    # Selected = predicted "no": F rows 3, 4 -> 2/4; M rows 7, 10 -> 2/6.
    assert out["fairness"]["columns"]["sex"]["by_group"]["M"]["selection_rate"] == pytest.approx(2 / 6)
    with pytest.raises(RecipeError, match="positive_label"):
        evaluate_groups(TableTask(), LABELS, str(table), ["sex"], _evaluate, positive_label="maybe")


def test_missing_values_are_a_group_and_unknown_columns_fail(tmp_path, table):
    frame = pd.read_csv(table)
    frame.loc[0, "sex"] = None
    path = tmp_path / "holes.csv"
    frame.to_csv(path, index=False)
    out = evaluate_groups(TableTask(), LABELS, str(path), ["sex"], _evaluate)
    assert out["columns"]["sex"]["(missing)"]["count"] == 1
    with pytest.raises(DataError, match="age"):
        evaluate_groups(TableTask(), LABELS, str(table), ["age"], _evaluate)


def test_training_run_and_eval_cli_report_groups(tmp_path, tiny_bert, reviews_csv):
    rows = make_reviews(80, seed=3)
    for i, r in enumerate(rows):
        r["sex"] = "F" if i % 4 == 0 else "M"  # F: 20 rows, M: 60
    test = tmp_path / "test.csv"
    pd.DataFrame(rows).to_csv(test, index=False)
    raw = text_recipe(tiny_bert, reviews_csv, tmp_path, data={"test_source": str(test)}, train={"epochs": 1},
                      eval={"groups": ["sex"], "group_min_count": 25})
    result = train(validate_recipe(raw))
    groups = json.loads((result.run_dir / "metrics.json").read_text())["groups"]
    assert groups["columns"]["sex"]["F"]["count"] == 20 and groups["columns"]["sex"]["F"]["flagged"]
    # Independently: the run's model evaluated on the F rows alone.
    only_f = tmp_path / "f.csv"
    pd.DataFrame([r for r in rows if r["sex"] == "F"]).to_csv(only_f, index=False)
    direct = evaluate(result.run_dir, data=str(only_f))["metrics"]
    assert groups["columns"]["sex"]["F"]["accuracy"] == pytest.approx(direct["accuracy"])
    assert groups["columns"]["sex"]["F"]["loss"] == pytest.approx(direct["loss"], rel=1e-5)
    report = (result.run_dir / "report.md").read_text()
    assert "## Metrics by group" in report and (result.run_dir / "group_rates.png").is_file()
    assert "demographic parity" in report
    assert "## Metrics by group" in (result.run_dir / "model" / "README.md").read_text()

    from omnitune.core.cli import main

    assert main(["eval", str(result.run_dir), "--data", str(test), "--groups", "sex", "--out",
                 str(tmp_path / "g")]) == 0
    again = json.loads((tmp_path / "g" / "groups.json").read_text())
    assert again["columns"]["sex"]["M"]["accuracy"] == pytest.approx(groups["columns"]["sex"]["M"]["accuracy"])


def test_model_card_metadata_groups_retention_and_export_table(tmp_path, table):
    import yaml

    from omnitune.core.evaluation.report import hub_metadata, update_model_card

    groups = evaluate_groups(TableTask(), LABELS, str(table), ["sex"], _evaluate)
    retention = {"source": "gen.csv", "mode": "metrics", "samples": 10, "before": {"loss": 2.0},
                 "after": {"loss": 2.5}, "change": {"loss": 0.5}}
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump({"name": "r", "task": "text-classification",
                                                     "model": {"name": str(tmp_path)}, "data": {"source": "x.csv"}}))
    (run / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.7, "loss": 0.6}, "groups": groups,
                                                  "retention": retention}))
    card = update_model_card(run).read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == "text-classification" and meta["license"] == "other"
    assert "base_model" not in meta  # a local folder is no Hub id
    assert meta["model-index"][0]["results"][0]["metrics"] == [{"type": "accuracy", "value": 0.7,
                                                                "name": "test accuracy"}]
    assert "## Metrics by group" in card and "| M | 6 |" in card
    assert "| loss | 2.0000 | 2.5000 | +0.5000 |" in card and "## ONNX export" not in card
    # An export report in the run folder (written by `omnitune export`) joins the card on update.
    (run / "export").mkdir()
    (run / "export" / "export_report.json").write_text(json.dumps({
        "split": "test", "samples": 40, "main_metric": "accuracy", "rows": [
            {"model": "onnx-int8", "metrics": {"accuracy": 0.75}, "size_bytes": 2_500_000,
             "latency_ms_batch1": 1.5, "latency_ms_batch32": 9.25}]}))
    assert "| onnx-int8 | 0.7500 | 1.5000 | 9.2500 | 2.5000 |" in update_model_card(run).read_text()
    # A bundled asset gives its Hub id and licence; a hub: dataset its id.
    meta = hub_metadata(recipe_name="r", task="text-classification", base_model="asset:minilm-l6",
                        data_source="hub:glue/sst2", metrics={"test": {"accuracy": 0.9, "loss": 0.3}})
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["glue/sst2"]


def test_adult_rows_become_texts_and_crows_flips_by_hand(tmp_path):
    from omnitune.text.adult import adult_texts, crows_pairs, flip_summary, read_adult

    (tmp_path / "adult.data").write_text(
        "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, "
        "United-States, <=50K\n"
        "52, ?, 209642, HS-grad, 9, Married-civ-spouse, ?, Husband, Black, Female, 0, 0, 45, ?, >50K\n\n")
    (tmp_path / "adult.test").write_text(
        "|1x3 Cross validator\n"
        "25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, "
        "United-States, <=50K.\n")
    frame = read_adult(tmp_path / "adult.test")
    assert len(frame) == 1 and frame["income"].tolist() == ["<=50K"] and frame["age"].tolist() == [25]
    out = adult_texts(tmp_path, tmp_path / "text")
    train = pd.read_csv(out / "train.csv")
    assert train["label"].tolist() == ["<=50K", ">50K"] and train["sex"].tolist() == ["Male", "Female"]
    assert train["text"][0].startswith("A 39-year-old White Male, never married,")
    assert "capital gain 2174" in train["text"][0] and "77516" not in train["text"][0]  # fnlwgt left out
    assert "?" not in train["text"][1] and "born in" not in train["text"][1]  # missing fields left out
    assert pd.read_csv(out / "test.csv")["age_band"].tolist() == ["25-44"]

    crows = tmp_path / "crows.csv"
    pd.DataFrame({"bias_type": ["race-color", "gender", "gender"],
                  "sentence": ["[MASK] people are poor.", "The [MASK] cried.", "no mask here"],
                  "mask1": ["Black", "woman", "x"], "mask2": ["White", "man", "y"]}).to_csv(crows)
    pairs = crows_pairs(str(crows))
    assert pairs["more"].tolist() == ["Black people are poor.", "The woman cried."]
    assert pairs["less"].tolist() == ["White people are poor.", "The man cried."]
    first = [{"label": "a", "scores": {"a": 0.9, "b": 0.1}}, {"label": "a", "scores": {"a": 0.6, "b": 0.4}}]
    second = [{"label": "b", "scores": {"a": 0.3, "b": 0.7}}, {"label": "a", "scores": {"a": 0.7, "b": 0.3}}]
    s = flip_summary(pairs, first, second)
    assert s["flip_share"] == pytest.approx(0.5) and s["mean_score_shift"] == pytest.approx((0.6 + 0.1) / 2)
    assert s["by_bias_type"]["race-color"]["flip_share"] == 1.0 and s["by_bias_type"]["gender"]["flip_share"] == 0.0
