"""The tuner's algorithm choice (direct against each Winograd tile) and dispatch following it.

Only test_tuner_measures_and_records_the_verdict tunes (marked `tuning`, a few seconds: one small
layer, the hand space's forward kernel); the rest write verdicts by hand and ask dispatch."""

from __future__ import annotations

import dataclasses
import importlib
import json
import warnings

import numpy as np
import pytest

import convc
from convc import dispatch
from convc.check import operands, reference, relative_error
from convc.dispatch import recorded_algorithm, resolve_algorithm, winograd_tiles
from convc.records import RecordStore

SPEC = convc.ConvSpec.from_shapes((1, 16, 10, 10), (16, 16, 3, 3), padding=1)
STRIDED = convc.ConvSpec.from_shapes((1, 16, 10, 10), (16, 16, 3, 3), padding=1, stride=2)


@pytest.fixture
def target():
    return convc.target.resolve(None)


def write_verdict(root, target, spec, op, verdict):
    store = RecordStore.create(root, target, spec.key, spec)
    store.update_kernel(op, algorithm=verdict)
    return store


def test_every_tile_is_a_candidate_on_3x3_stride_1_only():
    assert winograd_tiles(SPEC, "forward") == [2, 4, 6]
    assert winograd_tiles(SPEC, "grad_input") == [2, 4, 6]
    assert winograd_tiles(SPEC, "grad_weight") == []
    assert winograd_tiles(STRIDED, "forward") == []


@pytest.mark.parametrize("m", [2, 4, 6])
def test_dispatch_follows_a_winograd_verdict(tmp_path, target, monkeypatch, m):
    monkeypatch.setattr(dispatch, "prefers_winograd", lambda *a: 0)  # the rule says direct
    write_verdict(tmp_path, target, SPEC, "forward", {"choice": "winograd", "m": m})
    assert recorded_algorithm(SPEC, "forward", target, tmp_path) == m
    chosen = resolve_algorithm(SPEC, "forward", target, tmp_path)
    assert (chosen.algorithm, chosen.winograd_m) == ("winograd", m)
    # per kernel: grad_input has no verdict, so the rule decides
    assert resolve_algorithm(SPEC, "grad_input", target, tmp_path) is SPEC


def test_dispatch_follows_a_direct_verdict(tmp_path, target, monkeypatch):
    monkeypatch.setattr(dispatch, "prefers_winograd", lambda *a: 4)  # the rule says Winograd
    assert resolve_algorithm(SPEC, "grad_input", target, tmp_path).algorithm == "winograd"
    write_verdict(tmp_path, target, SPEC, "grad_input", {"choice": "direct", "m": 0})
    assert resolve_algorithm(SPEC, "grad_input", target, tmp_path) is SPEC


def test_forcing_overrides_the_verdict(tmp_path, target):
    write_verdict(tmp_path, target, SPEC, "forward", {"choice": "winograd", "m": 2})
    direct = dataclasses.replace(SPEC, algorithm="direct")
    assert resolve_algorithm(direct, "forward", target, tmp_path) is direct
    forced = dataclasses.replace(SPEC, algorithm="winograd", winograd_m=4)
    assert resolve_algorithm(forced, "forward", target, tmp_path) is forced


@pytest.mark.parametrize("verdict", [
    {"choice": "winograd", "m": 3},       # not a tile
    {"choice": "winograd", "m": "4"},     # not an int
    {"choice": "winograd"},               # no tile
    {"choice": "fastest", "m": 4},        # not a choice
    ["winograd", 4],                      # not a mapping
])
def test_a_stale_or_damaged_verdict_falls_back_to_the_rule(tmp_path, target, monkeypatch,
                                                           verdict):
    monkeypatch.setattr(dispatch, "prefers_winograd", lambda *a: 2)
    write_verdict(tmp_path, target, SPEC, "forward", verdict)
    with pytest.warns(convc.records.RecordMismatchWarning, match="stale or damaged"):
        assert recorded_algorithm(SPEC, "forward", target, tmp_path) is None
    chosen = resolve_algorithm(SPEC, "forward", target, tmp_path)
    assert (chosen.algorithm, chosen.winograd_m) == ("winograd", 2)


def test_an_unreadable_or_misshapen_meta_json_falls_back(tmp_path, target, monkeypatch):
    monkeypatch.setattr(dispatch, "prefers_winograd", lambda *a: 0)
    store = write_verdict(tmp_path, target, SPEC, "forward", {"choice": "winograd", "m": 4})
    meta = store.path / "meta.json"
    good = json.loads(meta.read_text())
    meta.write_text(json.dumps({**good, "kernels": ["forward"]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", convc.records.RecordMismatchWarning)
        assert resolve_algorithm(SPEC, "forward", target, tmp_path) is SPEC
        meta.write_text(meta.read_text()[:40])  # cut short
        assert resolve_algorithm(SPEC, "forward", target, tmp_path) is SPEC


def test_a_verdict_for_another_target_is_not_used(tmp_path, target, monkeypatch):
    monkeypatch.setattr(dispatch, "prefers_winograd", lambda *a: 0)
    other = convc.target.resolve({"kind": "llvm", "mcpu": "skylake-avx512"})
    write_verdict(tmp_path, other, SPEC, "forward", {"choice": "winograd", "m": 4})
    if convc.records.target_key(other) != convc.records.target_key(target):
        assert resolve_algorithm(SPEC, "forward", target, tmp_path) is SPEC


def test_the_verdict_takes_winograd_only_where_faster_and_the_smallest_tile_on_a_tie():
    decide = importlib.import_module("convc.tuning.algorithm").decide
    assert decide(100.0, {2: 99.0, 4: 98.0, 6: 98.5}, 0.03) == ("direct", 0)   # inside the margin
    assert decide(100.0, {2: 80.0, 4: 50.0, 6: 49.0}, 0.03) == ("winograd", 4)  # m=6 ties m=4
    assert decide(100.0, {2: 80.0, 4: 60.0, 6: 50.0}, 0.03) == ("winograd", 6)
    assert decide(100.0, {2: None, 4: 60.0, 6: None}, 0.03) == ("winograd", 4)  # failed tiles
    assert decide(100.0, {2: None}, 0.03) == ("direct", 0)
    assert decide(None, {2: 10.0}, 0.03) == (None, 0)                          # no verdict


@pytest.mark.tuning
def test_tuner_measures_and_records_the_verdict(tmp_path, target, monkeypatch):
    tuning = importlib.import_module("convc.tuning")
    monkeypatch.setenv("CONVC_TUNING_LOGS", str(tmp_path / "unused-default"))
    (report,) = tuning.tune(SPEC, ["forward", "grad_weight"], trials=1, log_dir=tmp_path,
                            quiet=True, seed=0)
    assert set(report.algorithms) == {"forward"}        # grad_weight has no choice
    found = report.algorithms["forward"]
    assert found.direct_us and set(found.winograd_us) == {2, 4, 6}
    assert all(us for us in found.winograd_us.values())
    saved = RecordStore(report.path).kernel("forward")["algorithm"]
    assert saved["choice"] == found.choice and saved["m"] == found.m
    assert set(saved["winograd_us"]) == {"2", "4", "6"}
    if found.choice == "winograd":  # only where it beat direct by the margin
        assert found.winograd_us[found.m] < found.direct_us * 0.97
    chosen = resolve_algorithm(SPEC, "forward", target, tmp_path)
    assert chosen.algorithm == ("winograd" if found.choice == "winograd" else "auto")
    assert chosen.winograd_m == found.m
    # the kernel compiled under that verdict computes the convolution
    monkeypatch.setenv("CONVC_TUNING_LOGS", str(tmp_path))
    convc.kernel.clear_memory_cache()
    data = operands(SPEC, 0)
    kernel = convc.compile(SPEC, "forward")
    out = kernel(np.ascontiguousarray(data["x"]), np.ascontiguousarray(data["w"]))
    assert relative_error(np.asarray(out), reference(SPEC, "forward", **data)) < 1e-5
