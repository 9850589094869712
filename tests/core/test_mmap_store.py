"""core/base/mmap_store.py: the disk store behind data.storage: disk (images, audio)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

from omnitune.core.base.mmap_store import ArrayStore, ContentKey, StoreWriter, build_store


def test_round_trip_variable_lengths_and_dtype(tmp_path):
    items = [np.arange(5, dtype=np.float32) / 7, np.zeros(0, dtype=np.float32),
             np.array([-1.5, 2.25], dtype=np.float32), np.full(1000, np.pi, dtype=np.float32)]
    store = build_store(tmp_path / "waves", np.float32, lambda w: [w.append(x) for x in items])
    assert len(store) == 4
    for i, x in enumerate(items):
        got = store[i]
        assert got.dtype == np.float32 and got.shape == x.shape
        assert np.array_equal(got, x)  # bit-exact, not approximately
    assert [store.length(i) for i in range(4)] == [5, 0, 2, 1000]
    assert store.nbytes == 4 * (5 + 0 + 2 + 1000)
    assert np.array_equal(store[-1], items[-1])
    with pytest.raises(IndexError):
        store[4]


def test_images_keep_shape_and_uint8(tmp_path):
    a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    b = np.full((4, 1, 3), 255, dtype=np.uint8)
    store = build_store(tmp_path / "img", np.uint8, lambda w: (w.append(a), w.append(b)))
    assert store[0].dtype == np.uint8 and store.shape(0) == (2, 3, 3) and store.shape(1) == (4, 1, 3)
    assert np.array_equal(store[0], a) and np.array_equal(store[1], b)
    # Items are copies: writing to one does not change the store.
    x = store[0]
    x.flags.writeable or x.setflags(write=True)
    x[0, 0, 0] = 99
    assert store[0][0, 0, 0] == 0


def test_rank_is_fixed_per_store(tmp_path):
    with pytest.raises(ValueError, match="rank"):
        build_store(tmp_path / "s", np.uint8, lambda w: (w.append(np.zeros((2, 2))), w.append(np.zeros(3))))
    assert not (tmp_path / "s").exists()  # the failed build left no store...
    assert not list(tmp_path.glob("s.tmp-*"))  # ...and no temp folder


def test_second_build_reuses_the_store(tmp_path):
    calls = []

    def fill(w):
        calls.append(1)
        w.append(np.ones(3, dtype=np.int64))

    build_store(tmp_path / "k", np.int64, fill)
    again = build_store(tmp_path / "k", np.int64, fill)
    assert len(calls) == 1 and again[0].tolist() == [1, 1, 1]


def test_pickles_by_path(tmp_path):
    store = build_store(tmp_path / "p", np.int16, lambda w: w.append(np.array([3, -4], dtype=np.int16)))
    _ = store[0]  # opens the file descriptor, which must not travel
    clone = pickle.loads(pickle.dumps(store))
    assert clone[0].tolist() == [3, -4]


def test_empty_store(tmp_path):
    store = build_store(tmp_path / "e", np.float32, lambda w: None)
    assert len(store) == 0


CRASH = """
import os, sys, numpy as np
from omnitune.core.base.mmap_store import StoreWriter
w = StoreWriter(sys.argv[1], np.float32)
for i in range(50):
    w.append(np.ones(100) * i)
os.kill(os.getpid(), 9)  # kill -9 before finalise
"""


def test_half_written_store_is_never_used(tmp_path):
    path = tmp_path / "crash"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(path)], capture_output=True)
    assert proc.returncode == -9
    temps = list(tmp_path.glob("crash.tmp-*"))
    assert len(temps) == 1 and (temps[0] / "data.bin").stat().st_size > 0  # partly written (buffered)
    assert ArrayStore.open(path) is None and ArrayStore.open(temps[0]) is None  # no meta.json: not a store
    calls = []
    store = build_store(path, np.float32, lambda w: (calls.append(1), w.append(np.arange(3))))
    assert calls == [1] and len(store) == 1 and store[0].tolist() == [0, 1, 2]
    assert not list(tmp_path.glob("crash.tmp-*"))  # the dead writer's folder was removed


def test_damaged_store_is_rebuilt(tmp_path):
    path = tmp_path / "d"
    build_store(path, np.float32, lambda w: w.append(np.ones(10)))
    with open(path / "data.bin", "r+b") as f:  # truncated after publishing (disk full, bad copy)
        f.truncate(8)
    assert ArrayStore.open(path) is None
    store = build_store(path, np.float32, lambda w: w.append(np.full(2, 5.0)))
    assert store[0].tolist() == [5.0, 5.0]


def test_content_key_follows_files_and_settings(tmp_path):
    f = tmp_path / "a.wav"
    f.write_bytes(b"abc")
    k1 = ContentKey("audio").add(16000).add_files([f]).hexdigest()
    assert ContentKey("audio").add(16000).add_files([f]).hexdigest() == k1
    assert ContentKey("audio").add(22050).add_files([f]).hexdigest() != k1
    time.sleep(0.01)
    f.write_bytes(b"abcd")
    os.utime(f, ns=(time.time_ns(), time.time_ns()))
    assert ContentKey("audio").add(16000).add_files([f]).hexdigest() != k1


def test_meta_travels_with_the_store(tmp_path):
    def fill(w):
        w.append(np.zeros(1))
        w.meta["bad"] = ["x.png"]

    build_store(tmp_path / "m", np.uint8, fill)
    assert ArrayStore(tmp_path / "m").meta == {"bad": ["x.png"]}


def test_writer_rejects_after_abort(tmp_path):
    w = StoreWriter(tmp_path / "x", np.uint8)
    w.append(np.zeros(2))
    w.abort()
    assert not list(tmp_path.iterdir())
