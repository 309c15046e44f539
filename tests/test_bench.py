"""The benchmark's timing and its ratio estimate (no timing assertions: only the arithmetic)."""

import statistics

import pytest

from convc import bench


def test_paired_ratio_compares_inside_each_round():
    # A neighbour halves the machine's speed in rounds 2-3: both contenders slow down together,
    # so the per-round ratio stays 2 while the ratio of separate medians would not.
    batches = {
        ("torch", "NCHW"): [2.0, 4.0, 4.0],
        ("torch", "channels_last"): [3.0, 5.0, 6.0],
        ("convc", "NHWC"): [1.0, 2.0, 2.0],
        ("convc", "NCHW"): [1.5, 2.5, 3.0],
    }
    rivals = [k for k in batches if k[0] == "torch"]
    ours = [k for k in batches if k[0] == "convc"]
    assert bench.paired_ratio(batches, rivals, ours) == pytest.approx(2.0)
    assert bench.paired_ratio(batches, rivals, ours, min) == pytest.approx(2.0)
    skewed = dict(batches)
    skewed[("convc", "NHWC")] = [1.0, 1.0, 4.0]      # rounds: 2, 4, 4/3 (NCHW wins round 3)
    assert bench.paired_ratio(skewed, rivals, ours) == pytest.approx(statistics.median([2, 4, 4 / 3]))


def test_paired_ratio_needs_both_sides():
    assert bench.paired_ratio({("convc", "NHWC"): [1.0]}, [], [("convc", "NHWC")]) is None


def test_time_side_by_side_rounds(monkeypatch):
    monkeypatch.setattr(bench, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(bench, "MIN_BATCH_SECONDS", 0.001)
    calls = []
    batches = bench.time_side_by_side({"a": lambda: calls.append("a"),
                                       "b": lambda: calls.append("b")}, repeat=3)
    assert set(batches) == {"a", "b"} and all(len(v) == 3 for v in batches.values())
    assert all(t > 0 for v in batches.values() for t in v)
    # alternating: every round runs a's batch, then b's
    assert calls.index("b") > calls.index("a") and calls[-1] == "b"


def test_geomean():
    assert bench.geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert bench.geomean([None, 2.0]) == pytest.approx(2.0)
    assert bench.geomean([]) is None
