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


def _row(layer, op, convc, torch=None, topi=None):
    """A Row timed at `convc` / `torch` / `topi` seconds for 1 GFLOP, ratios from those times."""
    row = bench.Row(layer, op, 10**9, convc=convc, torch=torch, topi=topi, how="tuned")
    row.ratio = torch / convc if torch else None
    row.topi_ratio = topi / convc if topi else None
    return row


def test_summary_checks_the_tuned_targets():
    rows = [_row("c2_3x3", "forward", 0.01, torch=0.02, topi=0.03),      # 100 GFLOP/s, 2x, 3x
            _row("c3_3x3", "forward", 0.01, torch=0.0085, topi=0.005),   # 0.85x PyTorch, topi ahead
            _row("1x1", "forward", 0.02)]                                 # no peer at all
    text = bench.summary(rows, peak=125.0)
    forward = next(line for line in text.splitlines() if line.startswith("forward"))
    assert "geo-mean 1.30 (reached >= 1.3" in forward
    assert "lowest 0.85 on c3_3x3 (NOT reached >= 0.9" in forward
    assert "80% of peak (reached > 70%; 2 of 3 kernels above)" in text
    assert "1 of 2 kernels at or above (NOT reached" in text and "c3_3x3 forward 0.50" in text
    assert "grad_input" not in text                                      # ops not run: no line


def test_table_marks_missing_peers():
    line = bench.table([_row("1x1", "grad_weight", 0.02)], peak=100.0).splitlines()[-1]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:5] == ["1x1", "grad_weight", "50.0", "", "tuned"]
    assert cells[5:11] == ["-", "-", "-", "-", "-", "-"] and cells[11] == "50%"


def test_overhead_calls_compute_the_same_thing():
    """Every way the overhead benchmark calls a layer gives the direct call's answer."""
    import numpy as np

    from convc.bench import overhead
    from convc.target import resolve

    calls = overhead.calls("SE reduce 1x1 240->64 1x1", resolve(None))
    direct = calls["direct"]
    direct()
    expected = np.array(direct.args[-1], copy=True)
    for name, call in calls.items():
        result = call()
        if name.startswith("direct"):   # destination-passing: the output is its last argument
            result = call.args[-1]
        got = result.numpy() if hasattr(result, "numpy") else np.asarray(result)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)


def test_overhead_table_and_targets():
    from convc.bench import overhead

    rows = [overhead.Row("tiny", {"direct": 2e-6, "Kernel": 4e-6, "conv2d": 8e-6},
                         {"Kernel": 2e-6, "conv2d": 6e-6})]
    line = overhead.table(rows).splitlines()[-1]
    assert line.startswith("| tiny | 2.0 | 4.0 (+2.0) | 8.0 (+6.0) | - |")
    text = overhead.summary(rows)
    assert "Kernel over direct: at most 2.0 us (tiny); target <= 3 us reached" in text
    assert "conv2d over direct: at most 6.0 us (tiny); target <= 5 us NOT reached" in text
    assert "conv2d torch: not measured" in text


def test_overhead_targets_skip_kernel_bound_layers():
    from convc.bench import overhead

    big = overhead.Row("dw", {"direct": 1e-4, "Kernel": 1.2e-4}, {"Kernel": 2e-5})
    small = overhead.Row("se", {"direct": 4e-6, "Kernel": 6e-6}, {"Kernel": 2e-6})
    text = overhead.summary([small, big])
    assert "at most 2.0 us (se); target <= 3 us reached" in text
    assert "not judged (direct call over 20 us" in text and text.endswith(": dw")


# --- the model-zoo corpus (convc bench --zoo) -------------------------------------------------

def test_zoo_table_loads_every_model_with_counts():
    from convc.bench import zoo

    layers, sizes = zoo.load()
    assert len(sizes) >= 16 and sizes["inception_v3"] == 299 and sizes["resnet18"] == 224
    # resnet18 runs 20 convolutions, 11 of them distinct
    counts = [dict(z.models)["resnet18"] for z in layers if "resnet18" in dict(z.models)]
    assert len(counts) == 11 and sum(counts) == 20
    assert len({z.layer for z in layers}) == len(layers)           # distinct
    assert all(z.layer.spec().flops > 0 for z in layers)          # every entry is a valid conv
    with pytest.raises(ValueError, match="alexnet"):
        zoo.load(["resnet18", "alexnet"])


def _zoo_row(zoo, layer, op, convc, torch, models, nchw=None):
    row = zoo.ZooRow(zoo.ZooLayer(layer, tuple(models.items())), op, 10**9, convc=convc,
                     convc_layout="NHWC", torch=torch, torch_format="channels_last",
                     convc_nchw=nchw or convc, torch_nchw=torch,
                     schedule={"NHWC": "channel-vector direct v32"},
                     compile_seconds={"NCHW": 0.2, "NHWC": 2.0})
    row.ratio, row.ratio_nchw = torch / convc, torch / (nchw or convc)
    return row


def test_zoo_per_model_totals_count_each_occurrence():
    from convc.bench import Conv2d, zoo

    a = Conv2d(1, 8, 8, 8, 8, (3, 3), padding=(1, 1))
    b = Conv2d(1, 8, 8, 8, 16, (1, 1))
    rows = [_zoo_row(zoo, a, op, 1.0, 2.0, {"m1": 3, "m2": 1}) for op in bench.OPS]
    rows += [_zoo_row(zoo, b, op, 1.0, 0.5, {"m1": 1}) for op in bench.OPS]
    m1, m2 = zoo.per_model(rows, ["m1", "m2"])
    assert m1["forward"]["convc"] == pytest.approx(4.0) and m1["forward"]["torch"] == pytest.approx(6.5)
    assert m1["train"]["convc"] == pytest.approx(12.0) and m2["train"]["torch"] == pytest.approx(6.0)
    text = zoo.summary(rows, ["m1", "m2"])
    assert "convc's total <= PyTorch's on 2 of 2 models (reached)" in text
    assert "lowest 0.50 (8->16 1x1 8x8 forward; reached >= 0.5)" in text
    assert "compile: slowest 2.00 s" in text and "NOT reached <= 1.5 s" in text
    assert "50% of 6 kernels at >= 0.8 (NOT reached >= 90%)" in text


def test_zoo_distribution_and_table_order():
    from convc.bench import Conv2d, zoo

    lay = Conv2d(1, 8, 8, 8, 8, (3, 3), padding=(1, 1))
    rows = [_zoo_row(zoo, lay, "forward", 1.0, t, {"m": 1}) for t in (0.4, 2.0, 1.0)]
    first = zoo.table(rows).splitlines()[2]
    assert "| 0.40 |" in first                                      # worst first
    text = zoo.distribution([r.ratio for r in rows])
    assert text.startswith("n=3 min 0.40") and "[0,0.5): 1" in text and "[2,inf): 1" in text


def test_train_table_and_targets():
    """convc bench --train's verdicts: each side's fastest memory format, best time against best
    time, so one slow PyTorch format (an outlier run) cannot flatter convc."""
    from convc.bench import train

    rows = [train.Row("resnet18", "train", "NCHW", 0.70, 0.43),
            train.Row("resnet18", "train", "channels_last", 0.22, 0.29),
            train.Row("resnet18", "inference", "NCHW", 0.035, 0.032),
            train.Row("resnet18", "inference", "channels_last", 0.040, 0.025)]
    assert "| resnet18 | train (fwd+bwd+SGD) | NCHW | 700.0 | 430.0 | 1.63 |" in train.table(rows)
    text = train.summary(rows)
    assert ("resnet18 train: PyTorch / convc 0.76 (best time each side: PyTorch channels_last "
            "220.0 ms, convc channels_last 290.0 ms); target >= 1.0 NOT reached") in text
    assert ("resnet18 inference: PyTorch / convc 1.40 (best time each side: PyTorch NCHW 35.0 ms, "
            "convc channels_last 25.0 ms); target >= 1.2 reached") in text


def test_train_in_processes_alternates_the_sides(monkeypatch):
    """--train's default protocol: each side in processes of its own, started alternately
    (PyTorch first, then convc first, ...), one JSON job each; a row is the median over the
    processes, the table shows every process and the page faults a call."""
    import json
    import subprocess

    from convc.bench import train

    jobs = []

    def fake_run(argv, **kwargs):
        job = json.loads(argv[-1])
        jobs.append(job)
        assert argv[1:3] == ["-m", "convc.bench.train"] and job["steps"] == 3
        seconds = {"torch": 0.050, "convc": 0.040}[job["side"]] + 0.001 * len(jobs)
        out = json.dumps({"seconds": seconds, "faults": 100.0 if job["side"] == "torch" else 7.0})
        return subprocess.CompletedProcess(argv, 0, stdout="noise\n" + out + "\n", stderr="")

    monkeypatch.setattr(train.subprocess, "run", fake_run)
    rows = train.run(["mobilenet_v2"], modes=("train",), formats=("channels_last",),
                     processes=3, steps=3)
    assert [j["side"] for j in jobs] == ["torch", "convc", "convc", "torch", "torch", "convc"]
    assert {j["memory_format"] for j in jobs} == {"channels_last"}
    (row,) = rows
    assert row.runs["torch"] == pytest.approx([0.051, 0.054, 0.055])
    assert row.torch_s == pytest.approx(0.054) and row.convc_s == pytest.approx(0.043)
    line = train.table(rows).splitlines()[2]
    assert "| 51.0 54.0 55.0 |" in line and "| 42.0 43.0 46.0 |" in line
    assert line.endswith("| 100 / 7 |")

    def failing(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 1, stdout="", stderr="Traceback: boom")

    monkeypatch.setattr(train.subprocess, "run", failing)
    with pytest.raises(RuntimeError, match="boom"):
        train.measure_in_processes("resnet18", "train", "NCHW", 1, 3)


def test_train_timing_process_times_one_side(monkeypatch):
    """A timing process builds only its side's model, calls it WARMUP times untimed and `steps`
    times timed, and reports the median seconds and page faults of a call."""
    pytest.importorskip("torch")
    from convc.bench import train

    built, called = [], []
    monkeypatch.setattr(train, "calls", lambda *a, sides: built.append((a, sides)) or
                        {sides[0]: lambda: called.append(1)})
    found = train.time_one_side({"model": "resnet18", "mode": "inference",
                                 "memory_format": "NCHW", "side": "convc", "steps": 4})
    assert built == [(("resnet18", "inference", "NCHW"), ("convc",))]
    assert len(called) == train.WARMUP + 4
    assert found["seconds"] >= 0 and found["faults"] >= 0


def test_train_cli_rejects_bad_process_counts():
    from convc.cli.bench import _train
    from convc.target import resolve

    with pytest.raises(ValueError, match="--processes=-1"):
        _train(resolve(None), None, 5, 2, "median", processes=-1)
    with pytest.raises(ValueError, match="--steps=0"):
        _train(resolve(None), None, 5, 2, "median", processes=2, steps=0)


def test_variant_tables_on_a_tiny_layer(monkeypatch):
    """convc bench --padding-modes / --fused: one row per layer (and op, layout), every ratio a
    positive number, tables that name the targets; a layer without padding has no ring rows."""
    from convc.bench import variants

    monkeypatch.setattr(bench, "MIN_BATCH_SECONDS", 0.001)
    monkeypatch.setattr(bench, "SETTLE_SECONDS", 0.0)
    tiny, unpadded = (1, 8, 6, 6, 8, 3, 1, 1, 1), (1, 8, 6, 6, 8, 1, 1, 0, 1)
    rows = variants.padding_mode_costs([tiny, unpadded], layouts=("NCHW",), repeat=1)
    assert len(rows) == 1 and all(rows[0][m] > 0 for m in variants.RING_MODES)
    assert "target <= 1.1" in variants.padding_table(rows)
    fused = variants.fused_costs([tiny], layouts=("NHWC",), repeat=1)
    assert fused[0]["bn_relu"]["NHWC"] > 0 and fused[0]["bn_add_relu"]["NHWC"] > 0
    assert "target >= 1.2" in variants.fused_table(fused)


def test_fastest_takes_each_contenders_best_kind():
    best = bench.fastest({("convc", "NCHW"): 3.0, ("convc", "NHWC"): 2.0,
                          ("torch", "NCHW"): 4.0, ("copy", "numpy"): 1.0})
    assert best == {"convc": (2.0, "NHWC"), "torch": (4.0, "NCHW"), "copy": (1.0, "numpy")}


def test_pool_bench_rows_and_targets(monkeypatch):
    """`convc bench --pool` on its smallest layer: a row per direction with convc, the copy and
    the bytes filled in; the targets judged from the rows (a ratio below 1 or a large workload
    under 60 % of the copy is NOT reached)."""
    from convc.bench import pool

    monkeypatch.setattr(bench, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(bench, "MIN_BATCH_SECONDS", 0.001)
    rows = pool.run(layers=["resnet_gap"], batches=(1,), repeat=1)
    assert [r.direction for r in rows] == ["forward", "backward"]
    assert all(r.convc > 0 and r.copy > 0 and r.bytes > 2048 * 49 * 4 for r in rows)
    text = pool.table(rows)
    assert "convc us" in text and "copy GB/s" in text and text.count("resnet_gap") == 2
    slow = pool.Row("vgg_pool1", 8, "forward", 2 * pool.LARGE_BYTES, convc=2.0, torch=1.0,
                    copy=1.0, ratio=0.5)
    fast = pool.Row("vgg_pool1", 8, "backward", 2 * pool.LARGE_BYTES, convc=1.0, torch=3.0,
                    copy=0.7, ratio=3.0)
    verdict = pool.summary([slow, fast]).splitlines()
    assert "geo-mean 0.50 (NOT reached" in verdict[0] and "geo-mean 3.00 (reached" in verdict[1]
    assert "1 of 2 at >= 60%" in verdict[2] and "vgg_pool1 b8 forward 50%" in verdict[2]
