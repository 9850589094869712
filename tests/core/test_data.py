"""Splits, batch order and table reading."""

from __future__ import annotations

import numpy as np
import pytest

from omnitune.core.base.data import BatchOrder, read_table, stratified_split
from omnitune.core.base.errors import DataError


def test_stratified_split_is_disjoint_covering_and_stratified():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    train, val, test = stratified_split(labels, [0.2, 0.1], seed=3)
    all_idx = np.concatenate([train, val, test])
    assert sorted(all_idx.tolist()) == list(range(100))
    assert len(val) == 20 and len(test) == 10
    assert [labels[i] for i in val].count("a") == 12 and [labels[i] for i in val].count("c") == 2
    again = stratified_split(labels, [0.2, 0.1], seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again))
    other = stratified_split(labels, [0.2, 0.1], seed=4)
    assert not np.array_equal(val, other[1])


def test_batch_order_is_a_function_of_seed_and_epoch():
    order = BatchOrder(100, 8, seed=1)
    assert order.batches(2) == BatchOrder(100, 8, seed=1).batches(2)
    assert order.batches(2) != order.batches(3)
    assert sorted(i for b in order.batches(0) for i in b) == list(range(100))


def test_length_grouping_reduces_padding_and_keeps_accumulation_exact():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=400).tolist()
    grouped = BatchOrder(400, 8, seed=0, lengths=lengths, group_size=400)
    plain = BatchOrder(400, 8, seed=0)

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(grouped.batches(0)) < 0.75 * padded(plain.batches(0))
    # Two micro-batches of 4 are exactly one batch of 8 when the group size is the same.
    small = BatchOrder(400, 4, seed=0, lengths=lengths, group_size=400).batches(0)
    big = grouped.batches(0)
    assert [small[2 * i] + small[2 * i + 1] for i in range(len(big))] == big


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".csv.gz", ".json"])
def test_read_table_formats(tmp_path, suffix):
    import pandas as pd

    df = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    path = tmp_path / f"t{suffix}"
    if suffix.startswith(".csv"):
        df.to_csv(path, index=False)
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        df.to_json(path, orient="records")
    else:
        df.to_parquet(path)
    assert read_table(path).to_dict("records") == df.to_dict("records")


def test_read_table_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: data file not found"):
        read_table(tmp_path / "nope.csv")
    bad = tmp_path / "t.xlsx"
    bad.write_text("x")
    with pytest.raises(DataError, match="t.xlsx: unsupported file type"):
        read_table(bad)
