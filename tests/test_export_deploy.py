"""Deployment: an exported library runs where neither TVM nor convc is installed.

- Python: a fresh virtual environment holding only apache-tvm-ffi and NumPy (and tvm-ffi's one
  dependency, typing_extensions) loads the library with `tvm_ffi.load_module` and gets the
  references' (and PyTorch's) results; raw calls with unaligned, wrong-shape, wrong-dtype or
  strided arrays compute correctly or raise, never crash; parallel kernels run on the library's
  own thread pool, from several threads, across unload and reload.
- C++: examples/cpp builds with g++ against the installed tvm-ffi and checks all three kernels.
- Cross-compilation: an aarch64 target gives an aarch64 ELF library (with the cross toolchain)
  or object file (without).

The environment is made the way pip would lay it out, from the files pip recorded when it
installed those distributions here (their RECORD), hard-linked: a fraction of a second, no
network, and exactly the same package versions as the compiler's environment.
"""

from __future__ import annotations

import dataclasses

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import numpy as np
import pytest

from conftest import EXPORT_SPEC_ARGS, assert_close, make_spec
from convc.check import operands, reference
from convc.export import export_library, manifest_path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DISTRIBUTIONS = ("apache-tvm-ffi", "numpy", "typing_extensions")
OPS = ("forward", "grad_input", "grad_weight")


def make_clean_venv(dest: Path) -> Path:
    """A venv (no pip, no system site-packages) holding only DEPLOY_DISTRIBUTIONS; -> its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True, system_site_packages=False).create(dest)
    python = dest / "bin" / "python"
    site = Path(subprocess.check_output(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    for name in DEPLOY_DISTRIBUTIONS:
        dist = importlib.metadata.distribution(name)
        for record in dist.files or ():
            relative = Path(os.path.normpath(str(record)))
            if relative.parts[0] == ".." or "__pycache__" in relative.parts:
                continue     # console scripts outside site-packages; bytecode is rebuilt
            source, target = Path(dist.locate_file(record)), site / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system
                shutil.copy2(source, target)
    return python


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory):
    return make_clean_venv(tmp_path_factory.mktemp("deploy") / "venv")


def run_clean(python: Path, script: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    """Run `script` in the clean venv: isolated mode (no PYTHONPATH, no user site, no cwd on the
    path), a minimal environment, in a directory far from the convc checkout."""
    environ = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env}
    return subprocess.run([str(python), "-I", "-c", textwrap.dedent(script)], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=120)




@pytest.fixture(scope="module")
def spec():
    return make_spec(**EXPORT_SPEC_ARGS)


@pytest.fixture(scope="module")
def exported(spec, tmp_path_factory):
    """The layer's three kernels in one library, made the way a user would: `convc compile`."""
    from convc.cli import main

    path = tmp_path_factory.mktemp("deploy_lib") / "lib.so"
    assert main(["compile", "--op", "conv2d", "--input", "2,8,12,12", "--weight", "16,4,3,3",
                 "--bias", "--stride", "2", "--padding", "1", "--groups", "2", "-o", str(path)]) == 0
    assert json.loads(manifest_path(path).read_text())["functions"]["forward"]["spec"] == \
        spec.to_dict()
    return path


def test_the_clean_environment_has_only_tvm_ffi_and_numpy(clean_python, tmp_path):
    result = run_clean(clean_python, """
        import importlib.metadata, importlib.util, json, sys
        print(json.dumps({
            "dists": sorted(d.metadata["Name"].lower().replace("_", "-")
                            for d in importlib.metadata.distributions()),
            "absent": [m for m in ("tvm", "convc", "torch") if importlib.util.find_spec(m) is None],
            "prefix": sys.prefix}))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["dists"] == ["apache-tvm-ffi", "numpy", "typing-extensions"]
    assert found["absent"] == ["tvm", "convc", "torch"]
    assert found["prefix"].startswith(str(clean_python.parent.parent))


def test_library_runs_with_only_tvm_ffi_and_numpy(spec, exported, clean_python, tmp_path):
    """The issue's 'done when': compile a layer's three kernels into one library, load it in an
    environment that has only tvm-ffi and NumPy, get the reference's (and PyTorch's) results."""
    data = operands(spec, seed=11)
    np.savez(tmp_path / "in.npz", **{k: v for k, v in data.items() if v is not None})
    result = run_clean(clean_python, f"""
        import numpy as np, tvm_ffi
        lib = tvm_ffi.load_module({str(exported)!r})
        d = np.load("in.npz")
        x, w, b, dy = d["x"], d["w"], d["b"], d["dy"]
        y = np.empty({spec.output_shape}, "float32")
        dx = np.empty_like(x)
        dw = np.empty_like(w)
        lib["forward"](x, w, b, y)
        lib["grad_input"](dy, w, dx)
        lib["grad_weight"](x, dy, dw)
        np.savez("out.npz", y=y, dx=dx, dw=dw)
        print("ran")
    """, tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ran", result.stderr
    out = np.load(tmp_path / "out.npz")
    for op, name in zip(OPS, ("y", "dx", "dw")):
        assert_close(out[name], reference(spec, op, **data), "float32", f"clean-venv {op}")
    try:
        import torch
    except ImportError:
        return
    t = {k: torch.from_numpy(v) for k, v in data.items() if v is not None}
    kwargs = dict(stride=spec.stride, padding=spec.pad_before, dilation=spec.dilation,
                  groups=spec.groups)
    expected = {
        "y": torch.nn.functional.conv2d(t["x"], t["w"], t["b"], **kwargs),
        "dx": torch.nn.grad.conv2d_input(spec.input_shape, t["w"], t["dy"], **kwargs),
        "dw": torch.nn.grad.conv2d_weight(t["x"], spec.weight_shape, t["dy"], **kwargs),
    }
    for name, value in expected.items():
        assert_close(out[name], value.numpy(), "float32", f"clean-venv {name} vs PyTorch")


# Each raw call, made in the clean venv: "ok <max error>" when it computed, the exception type when
# it raised. Expected: "ok" (the right answer) or the exception; a crash fails the test with the
# process's signal.
RAW_CALLS = {
    "unaligned_input": "ok",          # float32 data one element past a 64-byte boundary
    "unaligned_output": "ok",
    "byte_misaligned_input": "ok",    # not even element aligned (x86 and aarch64 allow it)
    "wrong_shape": "ValueError",
    "wrong_rank": "ValueError",
    "wrong_dtype": "TypeError",
    "fortran_order": "ValueError",    # strides the kernel was not compiled for
    "strided_view": "ValueError",
    "too_few_args": "TypeError",
    "too_many_args": "TypeError",
    "not_an_array": "ValueError",     # tvm-ffi converts the list to an Array, then rejects it
    "read_only_output": "BufferError",  # NumPy refuses to export a read-only array via DLPack
}


def test_raw_calls_never_crash(spec, exported, clean_python, tmp_path):
    data = operands(spec, seed=12)
    np.savez(tmp_path / "in.npz", x=data["x"], w=data["w"], dy=data["dy"])
    expected_dw = reference(spec, "grad_weight", **data)
    np.save(tmp_path / "expected.npy", expected_dw)
    result = run_clean(clean_python, """
        import json, numpy as np, tvm_ffi
        d = np.load("in.npz")
        x, w, dy, expected = d["x"], d["w"], d["dy"], np.load("expected.npy")
        f = tvm_ffi.load_module(%r)["grad_weight"]

        def shifted(a, byte_offset):
            raw = np.empty(a.nbytes + 128, np.uint8)
            start = (-raw.ctypes.data) %% 64 + byte_offset
            view = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
            view[...] = a
            return view

        def out():
            return np.zeros(expected.shape, "float32")

        calls = {
            "unaligned_input": lambda: (shifted(x, 4), dy, out()),
            "unaligned_output": lambda: (x, dy, shifted(out(), 4)),
            "byte_misaligned_input": lambda: (shifted(x, 1), shifted(dy, 3), out()),
            "wrong_shape": lambda: (x[:, :, :-1], dy, out()),
            "wrong_rank": lambda: (x.reshape(2, 8, 144), dy, out()),
            "wrong_dtype": lambda: (x.astype("float64"), dy, out()),
            "fortran_order": lambda: (np.asfortranarray(x), dy, out()),
            "strided_view": lambda: (np.repeat(x, 2, axis=3)[..., ::2], dy, out()),
            "too_few_args": lambda: (x, dy),
            "too_many_args": lambda: (x, dy, out(), out()),
            "not_an_array": lambda: (x, [1.0, 2.0], out()),
        }

        def read_only():
            o = out()
            o.setflags(write=False)
            return (x, dy, o)

        calls["read_only_output"] = read_only
        outcome = {}
        for name, make in calls.items():
            args = make()
            try:
                f(*args)
            except Exception as err:
                outcome[name] = type(err).__name__
                continue
            outcome[name] = "ok %%.3g" %% (np.abs(args[-1] - expected).max() / np.abs(expected).max())
        print(json.dumps(outcome))
    """ % str(exported), tmp_path)
    assert result.returncode == 0, f"the process died ({result.returncode}): {result.stderr[-2000:]}"
    outcome = json.loads(result.stdout)
    for name, want in RAW_CALLS.items():
        got = outcome[name]
        if want == "ok":
            assert got.startswith("ok") and float(got.split()[1]) < 2e-5, (name, got)
        else:
            assert got == want, (name, got)


def test_thread_pool_without_tvm(spec, exported, clean_python, tmp_path):
    """Parallel kernels need a thread pool, which libtvm_runtime provides and tvm-ffi does not:
    the library carries its own (convc/export_runtime.py). With CONVC_NUM_THREADS=5 the first
    call starts 4 workers; calls from four Python threads at once agree; the library loads again
    after its module was dropped (tvm-ffi 0.1.14 keeps it mapped); a forked child starts a fresh
    pool; the process exits cleanly (the library's destructor stops the workers)."""
    data = operands(spec, seed=13)
    np.savez(tmp_path / "in.npz", x=data["x"], w=data["w"], dy=data["dy"])
    np.save(tmp_path / "expected.npy", reference(spec, "grad_input", **data))
    result = run_clean(clean_python, """
        import gc, json, os, threading, numpy as np, tvm_ffi
        d = np.load("in.npz")
        expected = np.load("expected.npy")

        def threads():
            return len(os.listdir("/proc/self/task"))

        def error(lib):
            dx = np.empty(expected.shape, "float32")
            lib["grad_input"](d["dy"], d["w"], dx)
            return float(np.abs(dx - expected).max())

        base = threads()
        lib = tvm_ffi.load_module(%r)
        errors = [error(lib)]
        workers = threads() - base
        results = []
        callers = [threading.Thread(target=lambda: results.extend(error(lib) for _ in range(20)))
                   for _ in range(4)]
        for t in callers: t.start()
        for t in callers: t.join()
        errors += results
        del lib
        gc.collect()
        lib = tvm_ffi.load_module(%r)
        errors.append(error(lib))
        pid = os.fork()
        if pid == 0:
            os._exit(0 if error(lib) < 1e-4 else 3)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"calls": len(errors), "worst": max(errors), "workers": workers,
                          "child": os.waitstatus_to_exitcode(status)}))
    """ % (str(exported), str(exported)), tmp_path, CONVC_NUM_THREADS="5")
    assert result.returncode == 0, f"the process died ({result.returncode}): {result.stderr[-2000:]}"
    found = json.loads(result.stdout)
    assert found == {"calls": 82, "worst": found["worst"], "workers": 4, "child": 0}, found
    assert found["worst"] < 1e-4


def test_without_its_runtime_a_library_crashes_under_tvm_ffi_alone(spec, clean_python, tmp_path,
                                                                    monkeypatch):
    """Why convc/export_runtime.py exists: the same library linked without it dies at its first
    parallel loop when TVM is not in the process (tvm-ffi leaves __TVMBackendParallelLaunch null).
    If this starts passing calls, tvm-ffi grew a thread pool and the runtime can go."""
    from convc import export_runtime

    def empty_runtime(directory):
        path = Path(directory) / export_runtime.FILE_NAME
        path.write_text("/* nothing */\n")
        return path

    monkeypatch.setattr(export_runtime, "write_source", empty_runtime)
    bare = export_library(spec, tmp_path / "bare.so", ops=["forward"])
    symbols = bare.read_bytes()
    if b"__TVMBackendParallelLaunch" not in symbols:
        pytest.skip("the forward schedule has no parallel loop")
    x, w, b = (np.zeros(s, "float32") for s in (spec.input_shape, spec.weight_shape, (16,)))
    np.savez(tmp_path / "in.npz", x=x, w=w, b=b)
    result = run_clean(clean_python, f"""
        import numpy as np, tvm_ffi
        d = np.load("in.npz")
        y = np.empty({spec.output_shape}, "float32")
        tvm_ffi.load_module({str(bare)!r})["forward"](d["x"], d["w"], d["b"], y)
        print("survived")
    """, tmp_path)
    assert result.returncode < 0 and "survived" not in result.stdout, (result.returncode,
                                                                       result.stdout)


# --- C++ -----------------------------------------------------------------------------------------

def _tvm_ffi_config() -> str | None:
    beside = Path(sys.executable).parent / "tvm-ffi-config"
    return str(beside) if beside.exists() else shutil.which("tvm-ffi-config")


def build_cpp_example(directory: Path) -> Path:
    """examples/cpp built in `directory` with its Makefile against the installed tvm-ffi (the test
    skips where tvm-ffi-config is missing); -> the program."""
    config = _tvm_ffi_config()
    if config is None:
        pytest.skip("tvm-ffi-config (installed with apache-tvm-ffi) is not on PATH")
    for name in ("run_library.cc", "Makefile"):
        shutil.copy(ROOT / "examples" / "cpp" / name, directory / name)
    build = subprocess.run(["make", "-s", f"TVM_FFI_CONFIG={config}"], cwd=directory,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    return directory / "run_library"


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                    reason="the C++ example needs g++ and make")
def test_cpp_example(tmp_path):
    """Build examples/cpp with its Makefile against the installed tvm-ffi, run it on a float32
    library (named by its bare file name) and on a float64 channels-last 3-D one padded in reflect
    mode, and read its verdicts."""
    build_cpp_example(tmp_path)
    libraries = [
        export_library(make_spec(**EXPORT_SPEC_ARGS), tmp_path / "nchw.so"),
        export_library(make_spec((2, 6, 7, 5, 4), (3, 2, 2, 2, 6), stride=(2, 1, 1),
                                 padding=((1, 0), (0, 2), (1, 1)), dilation=(1, 2, 1), groups=2,
                                 layout="NDHWC", dtype="float64", bias=True,
                                 padding_mode="reflect"),
                       tmp_path / "ndhwc.so", ops=["grad_weight", "forward", "grad_input"]),
        # Fused layers: conv + bias + scale/shift + residual + leaky_relu (forward), and conv +
        # bias + residual + silu with the adjoints through the silu (from the pre-activation).
        export_library(dataclasses.replace(
            make_spec((2, 7, 6, 6), (3, 3, 6, 8), padding=1, layout="NHWC", bias=True),
            scale_shift=True, residual=True, activation="leaky_relu", negative_slope=0.1),
            tmp_path / "fused.so", ops=["forward"]),
        export_library(dataclasses.replace(
            make_spec((2, 6, 9, 8), (8, 3, 3, 3), stride=2, padding=1, groups=2, bias=True),
            residual=True, activation="silu", derivative_from="pre_activation"),
            tmp_path / "through.so"),
    ]
    # The first by its bare file name, as the README runs it (dlopen alone would search the
    # system's library directories for it), the second by its full path.
    names = (libraries[0].name, *(str(path) for path in libraries[1:]))
    for library, name in zip(libraries, names):
        run = subprocess.run([str(tmp_path / "run_library"), name], capture_output=True,
                             text=True, timeout=120, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        lines = run.stdout.splitlines()
        assert lines[-1] == "ALL PASS"
        for op in (("forward",) if library.name == "fused.so" else OPS):
            verdicts = [line for line in lines if line.startswith(op) and "logue" not in line]
            assert len(verdicts) == 3 and all(line.endswith("PASS") for line in verdicts), lines
            assert "wrong output shape: raised ValueError" in "\n".join(verdicts)
        if library.name == "fused.so":
            assert 'epilogue ["bias (b)","* scale + shift (per output channel)","+ residual",' \
                   '"leaky_relu(negative_slope=0.1)"]' in run.stdout, run.stdout
        if library.name == "through.so":
            assert "prologue [\"dy * silu'(pre_activation)\"]" in run.stdout, run.stdout


# --- cross-compilation ---------------------------------------------------------------------------

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}


def _elf(path: Path) -> tuple[int, int]:
    """(e_type, e_machine) of a little-endian ELF file."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[16:18], "little"), int.from_bytes(header[18:20], "little")


def test_cross_compile_for_aarch64(spec, tmp_path):
    """With the cross toolchain (examples/cpp/install-cross-toolchain.sh installs it on Debian
    and Ubuntu): an aarch64 shared library. Without: the object file, and a warning that says
    how to link it."""
    import warnings

    from convc.export import CrossCompileWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_library(spec, tmp_path / "arm.so", target=AARCH64)
    meta = json.loads(manifest_path(path).read_text())
    assert meta["target"]["mtriple"] == "aarch64-linux-gnu"
    linked = shutil.which("aarch64-linux-gnu-g++") or shutil.which("aarch64-linux-gnu-gcc")
    if linked:
        assert path == tmp_path / "arm.so" and meta["artifact"] == "shared-library"
        assert _elf(path) == (3, 183)        # ET_DYN, EM_AARCH64
        assert not [w for w in caught if issubclass(w.category, CrossCompileWarning)]
        symbols = subprocess.run(["aarch64-linux-gnu-nm", "-D", str(path)], capture_output=True,
                                 text=True).stdout if shutil.which("aarch64-linux-gnu-nm") else ""
        for name in ("__tvm_ffi_forward", "__tvm_ffi_grad_input", "__tvm_ffi_grad_weight"):
            assert not symbols or name in symbols
    else:
        assert path == tmp_path / "arm.o" and meta["artifact"] == "object"
        assert _elf(path) == (1, 183)        # ET_REL, EM_AARCH64
        assert any("no linker for aarch64-linux-gnu" in str(w.message) for w in caught)
