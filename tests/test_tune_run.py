"""Auto-tuning runs, kept small: a tiny conv, a few trials, a small search population.

Marked `tuning` (several MetaSchedule searches; a few minutes on 2 cores). What they establish:
tuning works with PyTorch importable, records are valid and applied, a rerun continues instead of
starting over, `kill -9` loses nothing finished, and measurement over RPC works on loopback."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tvm

import convc
from convc.check import kernel_inputs, operands, reference, relative_error
from convc.ops import declare

tuning = importlib.import_module("convc.tuning")
records = importlib.import_module("convc.records")
driver = importlib.import_module("convc.tuning.driver")

pytestmark = pytest.mark.tuning

SPEC = convc.ConvSpec.from_shapes((1, 8, 10, 10), (8, 8, 3, 3), padding=1)
# The generic space (MetaSchedule's own rules, evolutionary search): any trial count is possible.
SMALL = dict(trials_per_iter=4, population=32, seed=0, quiet=True, space="generic")


def naive(func, target):
    """A deliberately slow yardstick (serial loops), so tuned records win the side-by-side."""
    return tvm.s_tir.Schedule(tvm.IRModule({"main": func}))


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("tuning-logs")


@pytest.fixture(scope="module")
def tuned(logs, tmp_path_factory):
    """One tuning run of all three ops, with torch importable in this process and a torch on the
    workers' path that kills any process importing it (the workers must never do)."""
    pytest.importorskip("torch")  # the real one, imported here as a user of the torch extra would
    fake = tmp_path_factory.mktemp("fake-torch") / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nos._exit(97)\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(fake.parent))
        mp.setenv("CONVC_TUNING_LOGS", str(logs / "unused-default"))
        mp.setattr(tuning, "hand_written", naive)
        started = time.perf_counter()
        (report,) = tuning.tune(SPEC, trials=4, log_dir=logs, **SMALL)
        report.elapsed = time.perf_counter() - started
    return report


def func(op):
    return declare(SPEC, op).with_attr("global_symbol", op)


def test_every_kernel_gets_valid_records_with_torch_importable(tuned):
    assert "torch" in sys.modules
    assert tuned.trials == 12
    store = records.RecordStore(tuned.path)
    meta = store.meta
    lines = [json.loads(line) for line in (tuned.path / records.RECORDS).read_text().splitlines()]
    assert len(lines) == 12
    valid = [r for r in lines if r[1][1] and max(r[1][1]) < 1e9]
    assert {r[0] for r in valid} == {0, 1, 2}, "a kernel got no valid record"
    for op in tuning.OPS:
        k = meta["kernels"][op]
        assert k["trials"] == 4 and k["hand_written_us"] > 0
        if k["tuned_us"] is not None:
            ahead = k["tuned_us"] < k["hand_written_us"] * (1 - driver.VERDICT_MARGIN)
            assert k["verdict"] == ("tuned" if ahead else "hand-written")


def test_records_carry_their_target_and_tvm(tuned):
    assert tuned.path.parent.name == f"tvm-{tvm.__version__}"
    assert records.RecordStore(tuned.path).check_records(convc.target.resolve(None)) == 12


def test_tuned_schedules_are_found_and_compute_the_right_thing(tuned, logs):
    data = operands(SPEC, 0)
    found = 0
    for op in tuning.OPS:
        look = tuning.lookup(func(op), None, log_dir=logs)
        verdict = records.RecordStore(tuned.path).kernel(op)["verdict"]
        assert (look.schedule is not None) == (verdict == "tuned"), look.reason
        if look.schedule is None:
            continue
        found += 1
        library = tvm.compile(look.schedule.mod, target=convc.target.resolve(None))
        inputs = [np.ascontiguousarray(a) for a in kernel_inputs(SPEC, op, data)]
        out = np.zeros(convc.ops.shapes(SPEC, op)[-1], dtype=SPEC.dtype)
        library["main"](*inputs, out)
        assert relative_error(out, reference(SPEC, op, **data)) < 1e-5, op
    if not found:
        pytest.skip("no tuned record beat even the serial yardstick in 4 trials (noisy machine)")


def test_compile_applies_tuned_records(tuned, logs, monkeypatch):
    import inspect

    from convc import dispatch

    if "find_record" not in inspect.getsource(dispatch):
        pytest.skip("convc.dispatch.choose does not consult tuning records yet")
    monkeypatch.setenv("CONVC_TUNING_LOGS", str(logs))
    convc.kernel.clear_memory_cache()
    meta = records.RecordStore(tuned.path).meta["kernels"]
    data = operands(SPEC, 0)
    for op in tuning.OPS:
        kernel = convc.compile(SPEC, op)
        assert kernel.how == ("tuned" if meta[op]["verdict"] == "tuned" else "hand-written"), op
        got = kernel(*kernel_inputs(SPEC, op, data))
        assert relative_error(got, reference(SPEC, op, **data)) < 1e-5, op
    convc.kernel.clear_memory_cache()


def test_rerun_continues_instead_of_starting_over(tuned, logs, monkeypatch):
    monkeypatch.setattr(tuning, "hand_written", naive)
    (again,) = tuning.tune(SPEC, ["forward"], trials=4, log_dir=logs, **SMALL)
    assert again.trials == 0 and again.kernels["forward"].trials_total == 4
    (more,) = tuning.tune(SPEC, ["forward"], trials=6, log_dir=logs,
                          **dict(SMALL, trials_per_iter=2))
    assert more.trials == 2 and more.kernels["forward"].trials_total == 6


KILLED_RUN = textwrap.dedent("""
    import convc, sys
    from convc.tuning import tune
    spec = convc.ConvSpec.from_shapes((1, 4, 8, 8), (4, 4, 3, 3), padding=1)
    tune(spec, ["forward"], trials=40, log_dir=sys.argv[1], trials_per_iter=2, population=16,
         quiet=True, seed=1, space="generic")
""")


def test_kill_9_keeps_every_finished_record(tmp_path):
    log_dir = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(log_dir)],
                            start_new_session=True)
    spec = convc.ConvSpec.from_shapes((1, 4, 8, 8), (4, 4, 3, 3), padding=1)
    path = None
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            here = convc.target.resolve(None)
            path = records.layer_path(log_dir, here, spec.key) / records.RECORDS
            if path.exists() and path.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert path is not None and path.exists(), "the run wrote no record before the deadline"
    # The worst moment: killed in the middle of appending a line.
    complete = path.read_bytes().count(b"\n")
    with open(path, "ab") as handle:
        handle.write(b'[0, [[["GetSBlock", [], ["conv"')
    store = records.RecordStore.open(log_dir, convc.target.resolve(None), spec.key)
    with store.lock():
        database = store.database()  # repairs
        mod = records.canonical_module(declare(spec, "forward"))
        assert database.has_workload(mod)
        assert len(database.get_all_tuning_records()) == complete
    assert (path.parent / (records.RECORDS + ".damaged")).exists()
    (report,) = tuning.tune(spec, ["forward"], trials=complete + 2, log_dir=log_dir,
                            **dict(SMALL, trials_per_iter=2))
    assert report.kernels["forward"].trials_total == complete + 2 and report.trials == 2


def test_measuring_over_rpc_on_loopback(tmp_path):
    rpc = importlib.import_module("convc.tuning.rpc")
    with rpc.LocalCluster(servers=2, key="convc-test") as cluster:
        procs = list(cluster.procs)
        (report,) = tuning.tune(SPEC, ["forward"], trials=4, log_dir=tmp_path,
                                rpc_tracker=cluster.tracker, rpc_key=cluster.key, **SMALL)
    assert all(p.poll() is not None for p in procs), "a tracker/server outlived the test"
    lines = [json.loads(x) for x in (report.path / records.RECORDS).read_text().splitlines()]
    assert len(lines) == 4 and any(r[1][1] and max(r[1][1]) < 1e9 for r in lines)
    assert report.kernels["forward"].hand_written_us > 0


# A layer the hand-written rule has choices for (channels-last, two vectors of channels).
GRID_SPEC = convc.ConvSpec.from_shapes((1, 10, 12, 32), (3, 3, 32, 32), padding=1, layout="NHWC")


def test_hand_space_measures_each_alternative_once(tmp_path):
    """The default space: the rule's alternatives, each measured once, then nothing left; a small
    budget measures that many; the records replay to correct kernels. One op (grad_weight: the
    largest grid, no algorithm step) keeps it short; the grid's code is the same for every op."""
    import tvm_ffi

    from convc.tuning.space import hand_grid

    target = convc.target.resolve(None)
    ops = ["grad_weight"]
    distinct = {op: len({tvm_ffi.structural_hash(s.mod)
                         for _, s in hand_grid(declare(GRID_SPEC, op), target)}) for op in ops}
    assert all(n > 1 for n in distinct.values()), distinct
    (first,) = tuning.tune(GRID_SPEC, ops, trials=3, log_dir=tmp_path, quiet=True, seed=0)
    assert first.trials == 3
    (rest,) = tuning.tune(GRID_SPEC, ops, trials=1000, log_dir=tmp_path, quiet=True, seed=0)
    assert {op: k.trials_run for op, k in rest.kernels.items()} == {
        op: n - 3 for op, n in distinct.items()}
    data = operands(GRID_SPEC, 0)
    database = records.RecordStore(rest.path).database()
    for op in ops:
        mod = records.canonical_module(declare(GRID_SPEC, op))
        top = database.get_top_k(database.commit_workload(mod), distinct[op])
        assert len(top) == distinct[op]
        for record in top[:3]:
            sch = tvm.s_tir.Schedule(mod)
            record.trace.apply_to_schedule(sch, remove_postproc=False)
            library = tvm.compile(sch.mod, target=target)
            inputs = [np.ascontiguousarray(a) for a in kernel_inputs(GRID_SPEC, op, data)]
            out = np.zeros(convc.ops.shapes(GRID_SPEC, op)[-1], dtype=GRID_SPEC.dtype)
            library["main"](*inputs, out)
            assert relative_error(out, reference(GRID_SPEC, op, **data)) < 1e-5, op
    # compacted to the best record per kernel, the log still knows what was measured
    (again,) = tuning.tune(GRID_SPEC, ops, trials=1000, log_dir=tmp_path, quiet=True, keep=1)
    assert again.trials == 0
    (after,) = tuning.tune(GRID_SPEC, ops, trials=1000, log_dir=tmp_path, quiet=True)
    assert after.trials == 0
