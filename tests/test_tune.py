"""Auto-tuning, the parts that need no search: record directories and their refusal rules,
interrupt damage repair, lookups, the progress line, the warm workers, the CLI's errors.

The tuning runs themselves are in test_tune_run.py (marked `tuning`)."""

from __future__ import annotations

import importlib
import io
import json
import platform
import subprocess
import sys
import warnings

import pytest
import tvm

import convc
from convc.ops import declare
from convc.target import resolve

tuning = importlib.import_module("convc.tuning")
records = importlib.import_module("convc.records")

SPEC = convc.ConvSpec.from_shapes((1, 4, 6, 6), (4, 4, 3, 3), padding=1)
# A CPU no machine reports as its own (LLVM names hosts by micro-architecture, not by x86-64 level).
OTHER_CPU = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2", "num-cores": 2}
HERE = resolve(None)  # record stores and keys take resolved targets, as convc passes them


@pytest.fixture(autouse=True)
def private_logs(tmp_path, monkeypatch):
    """No test reads or writes the user's tuning logs."""
    monkeypatch.setenv("CONVC_TUNING_LOGS", str(tmp_path / "user-logs"))
    records._DATABASES.clear()
    records._WARNED.clear()


def func(op="forward"):
    return declare(SPEC, op).with_attr("global_symbol", op)


# --- keys and directories ----------------------------------------------------------------------

def test_target_identity_names_what_a_record_depends_on():
    here = records.target_identity(HERE)
    assert here["kind"] == "llvm" and here["num-cores"] >= 1 and here["mcpu"]
    assert records.target_identity(resolve(OTHER_CPU)) == OTHER_CPU
    cuda = records.target_identity(resolve("cuda"))
    assert cuda == {"kind": "cuda", "arch": "sm_90"}


def test_layer_directory_is_keyed_by_target_tvm_and_workload(tmp_path):
    store = records.RecordStore.create(tmp_path, HERE, SPEC.key, SPEC)
    parts = store.path.relative_to(tmp_path).parts
    assert parts == (convc.target.info(None).key, f"tvm-{tvm.__version__}", SPEC.key)
    meta = store.meta
    assert meta["tvm"] == tvm.__version__ and meta["workload"] == SPEC.key
    assert meta["target"] == records.target_identity(HERE)
    assert convc.ConvSpec.from_dict(meta["spec"]) == SPEC


def test_canonical_module_ignores_the_callers_global_symbol():
    import tvm_ffi

    a = records.canonical_module(declare(SPEC, "forward"))
    b = records.canonical_module(func("forward"))
    assert tvm_ffi.structural_equal(a, b)
    assert tvm_ffi.structural_hash(a) == tvm_ffi.structural_hash(b)
    assert records.workload_of(func("grad_weight")) == (SPEC.key, "grad_weight")


# --- refusal -----------------------------------------------------------------------------------

def _edit_meta(store, **changes):
    meta = store.meta
    meta.update(changes)
    store.write_meta(meta)


def test_directory_of_another_tvm_is_refused_with_the_reason(tmp_path):
    store = records.RecordStore.create(tmp_path, HERE, SPEC.key, SPEC)
    _edit_meta(store, tvm="0.26.0")
    with pytest.raises(records.RecordError, match="TVM 0.26.0"):
        records.RecordStore.open(tmp_path, HERE, SPEC.key)
    with pytest.warns(records.RecordMismatchWarning, match="TVM 0.26.0"):
        assert tuning.find_record(func(), None, log_dir=tmp_path) is None


def test_directory_claiming_another_target_is_refused(tmp_path):
    store = records.RecordStore.create(tmp_path, HERE, SPEC.key, SPEC)
    _edit_meta(store, target=OTHER_CPU)
    with pytest.raises(records.RecordError, match="x86-64-v2"):
        store.check(HERE)


def test_records_of_another_target_only_are_not_applied_and_say_why(tmp_path):
    records.RecordStore.create(tmp_path, resolve(OTHER_CPU), SPEC.key, SPEC)
    with pytest.warns(records.RecordMismatchWarning, match="other targets"):
        found = tuning.lookup(func(), None, log_dir=tmp_path)
    assert found.schedule is None
    assert "llvm-x86_64-linux-gnu-x86-64-v2-2c" in found.reason


def test_a_record_measured_on_another_target_poisons_its_file(tmp_path):
    """TVM's database keeps a target per record but never compares it (TVM issue #15549)."""
    store = records.RecordStore.create(tmp_path, HERE, SPEC.key, SPEC)
    line = [0, [[[], []], [1e-5], dict(OTHER_CPU, keys=["cpu"]), []]]
    (store.path / records.RECORDS).write_text(json.dumps(line) + "\n")
    with pytest.raises(records.RecordError, match="line 1 was measured on target"):
        store.check_records(HERE)


def test_no_records_is_a_quiet_none(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = tuning.lookup(func(), None, log_dir=tmp_path)
    assert found.schedule is None and "no tuning record" in found.reason


def test_hand_written_verdict_is_respected(tmp_path):
    store = records.RecordStore.create(tmp_path, HERE, SPEC.key, SPEC)
    store.update_kernel("forward", verdict="hand-written", hand_written_us=1.0, tuned_us=2.0)
    found = tuning.lookup(func(), None, log_dir=tmp_path)
    assert found.schedule is None and "did not beat the hand-written" in found.reason


def test_an_unfinished_run_is_not_applied(tmp_path):
    """A run stopped before its side-by-side check leaves records without a verdict: they are kept
    for the next run but not applied, however their time compares with the early yardstick."""
    store = records.RecordStore.create(tmp_path, HERE, SPEC.key, SPEC)
    store.update_kernel("forward", verdict=None, hand_written_us=1e9)
    found = tuning.lookup(func(), None, log_dir=tmp_path)
    assert found.schedule is None and "has not finished" in found.reason


# --- interrupted writers -----------------------------------------------------------------------

def test_repair_cuts_a_partial_last_line_and_keeps_it_aside(tmp_path):
    store = records.RecordStore.create(tmp_path, HERE, SPEC.key, SPEC)
    path = store.path / records.RECORDS
    good = json.dumps([0, [[[], []], [1e-5], records.target_identity(HERE), []]]) + "\n"
    path.write_text(good + good[: len(good) // 2])  # a writer killed mid-line
    assert list(records._json_lines(path)) == [json.loads(good)]
    assert store.repair() == 1
    assert path.read_text() == good
    assert (store.path / (records.RECORDS + ".damaged")).exists()
    assert store.repair() == 0


def test_compact_keeps_the_fastest_valid_records_of_each_kernel(tmp_path):
    store = records.RecordStore.create(tmp_path, HERE, SPEC.key, SPEC)
    here = records.target_identity(HERE)

    def line(workload, secs):
        return json.dumps([workload, [[[], []], secs, here, []]]) + "\n"

    (store.path / records.RECORDS).write_text("".join([
        line(0, [3e-5]), line(0, [1e10]), line(0, [1e-5, 2e-5]), line(1, [5e-5]), line(0, [2e-5]),
    ]))
    with store.lock():
        assert store.compact(keep=1) == (5, 2)
    kept = list(records._json_lines(store.path / records.RECORDS))
    assert [(r[0], r[1][1]) for r in kept] == [(0, [1e-5, 2e-5]), (1, [5e-5])]
    with pytest.raises(ValueError, match="at least 1"):
        store.compact(keep=0)


def test_second_writer_is_refused_while_one_holds_the_lock(tmp_path):
    store = records.RecordStore.create(tmp_path, HERE, SPEC.key, SPEC)
    with store.lock():
        with pytest.raises(records.RecordError, match="another convc tune is writing"):
            with records.RecordStore(store.path).lock():
                pass
    with store.lock():  # released
        pass


def test_meta_is_replaced_atomically(tmp_path):
    store = records.RecordStore.create(tmp_path, HERE, SPEC.key, SPEC)
    store.update_kernel("forward", hand_written_us=3.5)
    assert store.kernel("forward") == {"hand_written_us": 3.5}
    assert not list(store.path.glob(".meta.*"))


# --- the machinery around the search ----------------------------------------------------------

def test_progress_line_reports_trials_best_and_eta():
    progress = importlib.import_module("convc.tuning.progress")
    out = io.StringIO()
    line = progress.ProgressLine("layer", [progress.KernelProgress("forward", 2_000_000, 8),
                                           progress.KernelProgress("grad_input", 2_000_000, 8)],
                                 stream=out)
    line.kernels["forward"].hand_written_seconds = 1e-3
    line.measured("forward", [2e-3, None, 1e-4, 1e10])
    text = out.getvalue()
    assert "4/16 trials" in text and "forward 20.0 GFLOP/s (hand 2.0)" in text
    assert "grad_input - GFLOP/s" in text and "ETA" in text
    assert line.kernels["forward"].failed == 2
    quiet = io.StringIO()
    progress.ProgressLine("layer", [progress.KernelProgress("forward", 1, 1)], quiet=True,
                          stream=quiet).measured("forward", [1.0])
    assert quiet.getvalue() == ""


def test_reached_90_percent_is_the_first_batch_within_10_percent():
    progress = importlib.import_module("convc.tuning.progress")
    k = progress.KernelProgress("forward", 1, 10)
    k.history = [(1.0, 2, 4.0), (2.0, 4, 1.05), (3.0, 6, 1.0)]
    k.best_seconds = 1.0
    assert k.reached(0.9) == (2.0, 4)


def test_build_workers_start_once_fast_and_without_torch(tmp_path, monkeypatch):
    """A torch on the path that kills whoever imports it: the workers never do."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os\nos._exit(97)\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    workers = importlib.import_module("convc.tuning.workers")
    pool = workers.WarmPool(max_workers=2, timeout=30)
    try:
        started = pool.warm_up(2)
        pids = {pool.submit(eval, "__import__('os').getpid()").result() for _ in range(4)}
        torch_seen = pool.submit(eval, "__import__('sys').modules.get('torch', 'absent')").result()
    finally:
        pool.shutdown()
    assert torch_seen is None  # blocked: `import torch` raises ImportError there
    assert len(pids) <= 2  # reused, not restarted per call
    assert started < 30


@pytest.mark.skipif(platform.machine() != "x86_64", reason="checks the x86 intrinsic set")
def test_intrinsics_for_a_cpu_target_skip_the_cuda_set():
    """TuneContext imports every backend's intrinsics (the CUDA set takes 16-40 s to parse);
    for an x86 target only the x86 set is loaded and the import finds it done."""
    code = ("import sys, tvm, json\n"
            "from convc.tuning.intrinsics import load_for\n"
            "from convc.target import resolve\n"
            "print(json.dumps(load_for(resolve(None))))\n"
            "import tvm.s_tir.tensor_intrin\n"
            "print('tvm.s_tir.tensor_intrin.cuda' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()
    assert json.loads(out[0]) == ["x86"]
    assert out[1] == "False"


def test_cuda_without_gpu_or_tracker_stops_with_a_clear_message():
    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU")
    driver = importlib.import_module("convc.tuning.driver")
    with pytest.raises(driver.TuneError, match="--rpc-tracker"):
        driver.Session(resolve("cuda"))


def test_rpc_flags_go_together_and_name_the_problem():
    rpc = importlib.import_module("convc.tuning.rpc")
    with pytest.raises(ValueError, match="go together"):
        rpc.rpc_config_for("127.0.0.1:9190", None)
    with pytest.raises(ValueError, match="HOST:PORT"):
        rpc.parse_tracker("localhost")
    driver = importlib.import_module("convc.tuning.driver")
    with pytest.raises(driver.TuneError, match="cannot reach the RPC tracker"):
        rpc.servers_under("127.0.0.1", rpc.free_port(), "nobody")


@pytest.mark.parametrize("argv, message", [
    (["tune", "--trials", "4"], "--op, --input, --weight missing"),
    (["tune", "--layers", "nope"], "not in the suite"),
    (["tune", "--layers", "c2_3x3", "--op", "conv2d"], "--layers replaces"),
    (["tune", "--op", "conv2d", "--input", "1,4,6,6", "--weight", "4,4,3,3", "--kernels",
      "backward"], "not a convc kernel"),
])
def test_cli_errors_speak_the_flags(argv, message, capsys):
    from convc.cli import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_tune_checks_its_arguments_before_starting_anything():
    with pytest.raises(TypeError, match="not a ConvSpec"):
        tuning.tune([(1, 4, 6, 6)])
    with pytest.raises(ValueError, match="positive number of trials"):
        tuning.tune(SPEC, trials=0)
    with pytest.raises(ValueError, match="not a convc kernel"):
        tuning.tune(SPEC, ["forward", "backward"])
