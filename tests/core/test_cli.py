"""The command line: bad input gives one line naming the problem, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from omnitune.core.cli import main

from ..conftest import text_recipe, write_recipe


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _recipe(tmp_path, tiny_bert, data_path, **sections):
    return str(write_recipe(tmp_path / "r.yaml", text_recipe(tiny_bert, data_path, tmp_path / "runs", **sections)))


def _assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_missing_data_file(tmp_path, capsys, tiny_bert):
    code, _, err = _cli(capsys, "train", _recipe(tmp_path, tiny_bert, tmp_path / "missing.csv"))
    _assert_one_line_error(code, err, "missing.csv", "not found")
    assert not (tmp_path / "runs").exists()  # nothing made before the data was known good


def test_unknown_column(tmp_path, capsys, tiny_bert, reviews_csv):
    code, _, err = _cli(capsys, "train", _recipe(tmp_path, tiny_bert, reviews_csv, data={"text_column": "body"}))
    _assert_one_line_error(code, err, "reviews.csv", "'body'", "columns: text, label")


def test_label_not_in_declared_set(tmp_path, capsys, tiny_bert):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["good film", "bad film", "dull plot"], "label": ["pos", "neg", "meh"]}).to_csv(path, index=False)
    code, _, err = _cli(capsys, "train", _recipe(tmp_path, tiny_bert, path))
    _assert_one_line_error(code, err, "d.csv", "'meh'", "declared set")


def test_empty_after_cleaning(tmp_path, capsys, tiny_bert):
    path = tmp_path / "e.csv"
    pd.DataFrame({"text": ["", "  ", None], "label": ["pos", "neg", "pos"]}).to_csv(path, index=False)
    code, _, err = _cli(capsys, "train", _recipe(tmp_path, tiny_bert, path))
    _assert_one_line_error(code, err, "e.csv", "empty after cleaning")


def test_malformed_yaml_and_unknown_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [x\n")
    code, _, err = _cli(capsys, "train", str(bad))
    _assert_one_line_error(code, err, "bad.yaml", "malformed YAML")
    code, _, err = _cli(capsys, "validate", "text/minilm-rotten-tomatoes", "train.epoch=3")
    _assert_one_line_error(code, err, "minilm-rotten-tomatoes.yaml", "train.epoch: unknown field")


def test_unknown_asset(capsys):
    code, _, err = _cli(capsys, "assets", "fetch", "bert-huge")
    _assert_one_line_error(code, err, "unknown asset 'bert-huge'", "minilm-l6")


def test_recipes_lists_shipped(capsys):
    code, out, _ = _cli(capsys, "recipes")
    assert code == 0 and "text/minilm-rotten-tomatoes" in out


def test_train_eval_predict_round_trip(tmp_path, capsys, tiny_bert, reviews_csv):
    recipe = _recipe(tmp_path, tiny_bert, reviews_csv, train={"epochs": 8})
    code, out, err = _cli(capsys, "train", recipe)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "run"
    assert "test accuracy:" in out and str(run_dir) in out
    code, out, _ = _cli(capsys, "eval", str(run_dir))
    assert code == 0 and '"accuracy"' in out
    other = tmp_path / "other.csv"
    pd.DataFrame({"text": ["great fun film", "awful dull plot", "superb actors"],
                  "label": ["pos", "neg", "pos"]}).to_csv(other, index=False)
    code, out, _ = _cli(capsys, "eval", str(run_dir), "--data", str(other))
    assert code == 0 and '"samples": 3' in out
    code, out, _ = _cli(capsys, "predict", str(run_dir), "a superb lovely film", "an awful boring plot")
    lines = out.strip().splitlines()
    assert code == 0 and '"label": "pos"' in lines[0] and '"label": "neg"' in lines[1]
    # The same run folder cannot be trained into twice by accident.
    code, _, err = _cli(capsys, "train", recipe)
    _assert_one_line_error(code, err, "a run already exists", "--resume")


def test_subprocess_exit_status_and_debug(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    exe = [sys.executable, "-m", "omnitune.core.cli"]
    plain = subprocess.run([*exe, "validate", str(bad)], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "task" in plain.stderr
    debug = subprocess.run([*exe, "--debug", "validate", str(bad)], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_help_is_fast():
    import time

    t = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "omnitune.core.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout
    # Generous bound: it must not import torch (which alone takes several seconds here).
    assert time.perf_counter() - t < 5
    check = subprocess.run([sys.executable, "-c", "import sys, omnitune.core.cli; "
                            "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert check.stdout.strip() == "False"


def test_overrides_may_follow_options():
    from omnitune.core.cli import build_parser, parse_args

    parser = build_parser()
    args = parse_args(parser, ["cv", "r.yaml", "data.max_samples=50", "--folds", "3", "train.lr=1e-3"])
    assert args.folds == 3 and args.overrides == ["data.max_samples=50", "train.lr=1e-3"]
    args = parse_args(parser, ["tune", "r.yaml", "--n-trials", "2", "train.epochs=1"])
    assert args.overrides == ["train.epochs=1"]
    with pytest.raises(SystemExit):  # anything else left over is still an error
        parse_args(parser, ["cv", "r.yaml", "--folds", "3", "--no-such-option"])
