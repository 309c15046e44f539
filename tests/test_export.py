"""Export and load: one library holding several kernels, its manifest, convc.load's checks, the
`convc compile` command, and every way a library or a call can be wrong."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pytest

import convc
from conftest import EXPORT_SPEC_ARGS, assert_close, make_spec
from convc.check import kernel_inputs, operands, reference
from convc.cli import compile as compile_cli
from convc.export import (FORMAT, CrossCompileWarning, LibraryError, export_library, load,
                          manifest_path, sha256)

OPS = ("forward", "grad_input", "grad_weight")


@pytest.fixture(scope="module")
def spec():
    return make_spec(**EXPORT_SPEC_ARGS)


@pytest.fixture(scope="module")
def exported(spec, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "lib.so"
    assert export_library(spec, path) == path
    return path


def _manifest(path):
    return json.loads(manifest_path(path).read_text())


def _copy(exported, tmp_path, name="copy"):
    """A private copy of the exported library and manifest, to damage."""
    lib = tmp_path / f"{name}.so"
    lib.write_bytes(exported.read_bytes())
    meta = _manifest(exported)
    meta["library"] = lib.name
    manifest_path(lib).write_text(json.dumps(meta))
    return lib


# --- the manifest --------------------------------------------------------------------------------

def test_manifest_describes_every_function(spec, exported):
    import tvm
    import tvm_ffi

    meta = _manifest(exported)
    assert meta["format"] == FORMAT
    assert (meta["convc"], meta["tvm"], meta["tvm_ffi"]) == (
        convc.__version__, tvm.__version__, tvm_ffi.__version__)
    assert meta["target"]["kind"] == "llvm" and meta["target"]["mtriple"]
    assert meta["library"] == "lib.so" and meta["artifact"] == "shared-library"
    assert meta["sha256"] == sha256(exported)
    assert list(meta["functions"]) == list(OPS)
    layouts = {"x": "NCHW", "y": "NCHW", "dy": "NCHW", "dx": "NCHW", "w": "OIHW", "dw": "OIHW",
               "b": "O"}
    shapes = {"x": spec.input_shape, "dx": spec.input_shape, "w": spec.weight_shape,
              "dw": spec.weight_shape, "b": (16,), "y": spec.output_shape, "dy": spec.output_shape}
    names = {"forward": ["x", "w", "b", "y"], "grad_input": ["dy", "w", "dx"],
             "grad_weight": ["x", "dy", "dw"]}
    for op, entry in meta["functions"].items():
        assert entry["op"] == op
        assert entry["how"] in ("tuned", "hand-written", "default")
        assert entry["spec"] == spec.to_dict()
        assert [a["name"] for a in entry["args"]] == names[op]
        assert [a["role"] for a in entry["args"]] == ["input"] * (len(names[op]) - 1) + ["output"]
        for arg in entry["args"]:
            assert tuple(arg["shape"]) == shapes[arg["name"]], (op, arg)
            assert arg["dtype"] == "float32" and arg["layout"] == layouts[arg["name"]]


def test_manifest_records_how_each_schedule_was_chosen(spec, tmp_path):
    kernels = [convc.compile(spec, op) for op in ("grad_weight", "forward")]
    path = export_library(kernels, tmp_path / "two.so")
    meta = _manifest(path)
    assert list(meta["functions"]) == ["grad_weight", "forward"]
    assert [meta["functions"][k.op]["how"] for k in kernels] == [k.how for k in kernels]


# --- convc.load ----------------------------------------------------------------------------------

def test_load_computes_the_three_ops(spec, exported):
    lib = load(exported)
    assert sorted(lib) == sorted(OPS) and len(lib) == 3
    data = operands(spec, seed=3)
    for op in OPS:
        kernel = lib[op]
        assert getattr(lib, op) is kernel and kernel.op == op and kernel.spec == spec
        got = kernel(*kernel_inputs(spec, op, data))
        assert_close(got, reference(spec, op, **data), "float32", f"loaded {op}")
    out = np.full(spec.output_shape, np.nan, "float32")
    assert lib.forward(*kernel_inputs(spec, "forward", data), out=out) is out
    assert_close(out, reference(spec, "forward", **data), "float32", "forward out=")


def test_load_accepts_the_manifest_path_too(exported):
    assert sorted(load(manifest_path(exported))) == sorted(OPS)


def test_load_takes_a_bare_file_name_as_a_file_here(spec, exported, monkeypatch):
    """convc.load("lib.so") loads ./lib.so (dlopen alone would search the system's library
    directories for a name without a slash, and fail)."""
    monkeypatch.chdir(exported.parent)
    lib = load(exported.name)
    data = operands(spec, seed=6)
    assert_close(lib.forward(*kernel_inputs(spec, "forward", data)),
                 reference(spec, "forward", **data), "float32", "loaded by a bare name")


def test_loaded_kernels_validate_their_arguments(spec, exported):
    lib = load(exported)
    data = operands(spec)
    x, w, b, dy = data["x"], data["w"], data["b"], data["dy"]
    with pytest.raises(ValueError, match=r"x has shape \(2, 8, 12, 11\): expected \(2, 8, 12, 12\)"):
        lib.forward(x[..., :11], w, b)
    with pytest.raises(TypeError, match="w has dtype float64: expected float32"):
        lib.grad_input(dy, w.astype("float64"))
    with pytest.raises(TypeError, match=r"takes 2 arrays \(x, dy\), got 1"):
        lib.grad_weight(x)
    with pytest.raises(ValueError, match="out .dw. has shape"):
        lib.grad_weight(x, dy, out=np.empty((1, 2), "float32"))
    with pytest.raises(KeyError, match="no function 'backward'"):
        lib["backward"]
    with pytest.raises(AttributeError, match="backward"):
        lib.backward
    # Awkward memory is made safe, not refused: an input one element off a 64-byte boundary and
    # a transposed (Fortran-order) one.
    raw = np.empty(x.size + 17, "float32")
    shift = (-raw.ctypes.data // 4) % 16 + 1
    unaligned = raw[shift:shift + x.size].reshape(x.shape)
    unaligned[...] = x
    assert unaligned.ctypes.data % 64
    assert_close(lib.grad_weight(unaligned, np.asfortranarray(dy)),
                 reference(spec, "grad_weight", **data), "float32", "awkward memory")


def test_float16_library(tmp_path):
    spec = make_spec((1, 4, 9, 7), (6, 4, 3, 3), padding="same", dtype="float16")
    lib = load(export_library(spec, tmp_path / "half.so", ops=["forward", "grad_weight"]))
    data = operands(spec, seed=1)
    for op in ("forward", "grad_weight"):
        got = lib[op](*kernel_inputs(spec, op, data))
        assert got.dtype == np.float16
        assert_close(got, reference(spec, op, **data), "float16", f"float16 {op}")


def test_channels_last_1d_float64(tmp_path):
    spec = make_spec((2, 19, 4), (5, 2, 6), stride=2, padding=((2, 1),), dilation=3, groups=2,
                     layout="NWC", dtype="float64")
    path = export_library(spec, tmp_path / "nwc.so")
    assert [a["layout"] for a in _manifest(path)["functions"]["grad_weight"]["args"]] == [
        "NWC", "NWC", "WIO"]
    lib = load(path)
    data = operands(spec, seed=2)
    for op in OPS:
        assert_close(lib[op](*kernel_inputs(spec, op, data)), reference(spec, op, **data),
                     "float64", f"NWC {op}")


# --- what convc.load refuses ---------------------------------------------------------------------

def test_missing_files(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="library .*nothing.so' not found"):
        load(tmp_path / "nothing.so")
    lonely = tmp_path / "lonely.so"
    lonely.write_bytes(exported.read_bytes())
    with pytest.raises(FileNotFoundError, match="manifest .*lonely.json' not found beside"):
        load(lonely)
    lib = _copy(exported, tmp_path)
    lib.unlink()
    with pytest.raises(FileNotFoundError, match="copy.so' named by .*copy.json' not found"):
        load(manifest_path(lib))


def test_tampered_library(exported, tmp_path):
    lib = _copy(exported, tmp_path)
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(LibraryError, match="does not match its manifest.*sha256.*modified or replaced"):
        load(lib)
    lib.write_bytes(b"not a library")
    with pytest.raises(LibraryError, match="sha256"):
        load(lib)


@pytest.mark.parametrize("change, message", [
    ({"convc": "0.0.1"}, r"written by convc 0\.0\.1, this is convc .*export the library again"),
    ({"format": "convc-library/0"}, r"has format 'convc-library/0'.*reads 'convc-library/1'"),
    ({"tvm_ffi": "0.2.0"}, r"built against apache-tvm-ffi 0\.2\.0.*another ABI"),
    ({"functions": {}}, "lists no functions"),
    ({"target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}},
     "compiled for aarch64-linux-gnu; this machine is x86_64"),
    ({"cpu_features": ["avx", "sse9-imaginary"]}, r"uses sse9-imaginary, which this CPU .* lacks"),
])
def test_manifest_from_elsewhere(exported, tmp_path, change, message):
    import platform

    if "target" in change and platform.machine() != "x86_64":
        pytest.skip("the foreign architecture in this case is aarch64")
    lib = _copy(exported, tmp_path)
    meta = _manifest(lib)
    meta.update(change)
    manifest_path(lib).write_text(json.dumps(meta))
    with pytest.raises(LibraryError, match=message):
        load(lib)


def test_not_a_manifest(exported, tmp_path):
    lib = _copy(exported, tmp_path)
    manifest_path(lib).write_text("{ not json")
    with pytest.raises(LibraryError, match="not a convc manifest: invalid JSON"):
        load(lib)
    manifest_path(lib).write_text("[1, 2]")
    with pytest.raises(LibraryError, match="no 'format' field"):
        load(lib)


def test_manifest_naming_a_missing_function(exported, tmp_path):
    lib = _copy(exported, tmp_path)
    meta = _manifest(lib)
    meta["functions"]["backward"] = meta["functions"]["forward"]
    manifest_path(lib).write_text(json.dumps(meta))
    with pytest.raises(LibraryError, match="has no function 'backward' although its manifest lists it"):
        load(lib)


# --- what export_library refuses ---------------------------------------------------------------

def test_export_argument_errors(spec, tmp_path):
    with pytest.raises(ValueError, match="op='backward' is not a convc kernel"):
        export_library(spec, tmp_path / "a.so", ops=["forward", "backward"])
    with pytest.raises(ValueError, match="names a kernel twice"):
        export_library(spec, tmp_path / "a.so", ops="forward,forward")
    with pytest.raises(ValueError, match="is empty"):
        export_library(spec, tmp_path / "a.so", ops=[])
    with pytest.raises(ValueError, match="must not end in .json"):
        export_library(spec, tmp_path / "a.json")
    with pytest.raises(ValueError, match="batch 0"):
        export_library(spec.with_batch(0), tmp_path / "a.so")
    with pytest.raises(TypeError, match="expected a ConvSpec or"):
        export_library("conv2d", tmp_path / "a.so")
    with pytest.raises(ValueError, match="log_dir=.* is not a directory"):
        export_library(spec, tmp_path / "a.so", log_dir=tmp_path / "missing")
    kernel = convc.compile(spec, "forward")
    with pytest.raises(ValueError, match="one library holds kernels of one target"):
        export_library([kernel], tmp_path / "a.so", target={"kind": "llvm", "mcpu": "x86-64"})
    with pytest.raises(ValueError, match="names a kernel twice"):
        export_library([kernel, kernel], tmp_path / "a.so")
    assert not list(tmp_path.iterdir()), "a refused export must not leave files behind"


def test_log_dir_reaches_the_schedule_choice(spec, tmp_path, monkeypatch):
    """--log-dir: the tuning-record lookup is asked with that directory for every kernel."""
    from convc import dispatch

    seen = []
    original = dispatch.find_record

    def spy(func, target, log_dir=None):
        seen.append(log_dir)
        return original(func, target, log_dir)

    monkeypatch.setattr(dispatch, "find_record", spy)
    logs = tmp_path / "logs"
    logs.mkdir()
    export_library(spec, tmp_path / "a.so", ops=["forward", "grad_input"], log_dir=logs)
    assert [str(d) for d in seen] == [str(logs)] * 2


def test_cuda_export(spec, tmp_path):
    """The CUDA library: built by convc.build.cuda with nvcc, described by the same manifest;
    loading it works anywhere, calling it needs a GPU (and says so)."""
    from convc.build import cuda

    try:
        cuda.find_nvcc()
    except cuda.NvccNotFound:
        pytest.skip("no nvcc on this machine")
    path = export_library(spec, tmp_path / "gpu.so", ops=["forward"], target="cuda")
    meta = _manifest(path)
    assert meta["target"]["kind"] == "cuda" and meta["sha256"] == sha256(path)
    assert [k["name"] for k in meta["cuda"]["functions"]["forward"]["kernels"]] == ["forward_kernel"]
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[16:18], "little") == 3  # ET_DYN
    lib = load(path)
    if not cuda.gpu_available():
        data = operands(spec)
        with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
            lib.forward(*kernel_inputs(spec, "forward", data))
    else:
        data = operands(spec, seed=4)
        assert_close(lib.forward(*kernel_inputs(spec, "forward", data)),
                     reference(spec, "forward", **data), "float32", "CUDA forward")


def test_cross_compile_without_a_linker_writes_the_object(spec, tmp_path):
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}
    with pytest.warns(CrossCompileWarning, match="no linker for aarch64-linux-gnu .*wrote the object"):
        path = export_library(spec, tmp_path / "arm.so", ops=["forward"], target=target,
                              cc="no-such-aarch64-g++")
    assert path == tmp_path / "arm.o" and not (tmp_path / "arm.so").exists()
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[16:18], "little") == 1  # ET_REL
    assert int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    meta = _manifest(path)
    assert meta["artifact"] == "object" and meta["library"] == "arm.o"
    assert meta["link"]["command"].startswith("no-such-aarch64-g++ -shared -fPIC")
    assert (tmp_path / meta["link"]["runtime_source"]).read_text().count("__TVMBackendParallelLaunch")
    with pytest.raises(LibraryError, match="is an object file, not a loadable library: link it"):
        load(path)


# --- convc compile -------------------------------------------------------------------------------

def cli(*argv) -> int:
    """`convc compile ARGV` through the same parser and error handling as the `convc` command."""
    from convc import cli as convc_cli

    if "compile" in convc_cli.SUBCOMMANDS:
        return convc_cli.main(["compile", *argv])
    parser = argparse.ArgumentParser(prog="convc")
    compile_cli.add_parser(parser.add_subparsers(dest="command"))
    try:
        return compile_cli.run(parser.parse_args(["compile", *argv]))
    except (ValueError, TypeError) as err:
        print(f"convc compile: error: {err}")
        return 2


def test_cli_compile_writes_library_and_manifest(spec, tmp_path, capsys):
    out = tmp_path / "lib.so"
    code = cli("--op", "conv2d", "--input", "2,8,12,12", "--weight", "16,4,3,3", "--bias",
               "--stride", "2", "--padding", "1", "--dilation", "1", "--groups", "2",
               "--layout", "NCHW", "--dtype", "float32",
               "--kernels", "forward,grad_input,grad_weight", "--target", "llvm", "-o", str(out))
    assert code == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "grad_weight" in text and _manifest(out)["sha256"] in text
    meta = _manifest(out)
    assert meta["functions"]["forward"]["spec"] == spec.to_dict()
    lib = load(out)
    data = operands(spec, seed=5)
    assert_close(lib.grad_input(data["dy"], data["w"]), reference(spec, "grad_input", **data),
                 "float32", "cli grad_input")


def test_cli_compile_options(tmp_path):
    out = tmp_path / "k.so"
    assert cli("--op", "conv1d", "--input", "1,6,16", "--weight", "4,3,3", "--groups", "2",
               "--padding", "same", "--kernels", "grad_weight", "--arch",
               __import__("tvm").target.codegen.llvm_get_system_cpu(), "-o", str(out)) == 0
    meta = _manifest(out)
    assert list(meta["functions"]) == ["grad_weight"]
    assert meta["functions"]["grad_weight"]["spec"]["pad_before"] == [1]
    assert cli("--op", "conv2d", "--input", "1,2,9,10", "--weight", "3,2,3,3",
               "--padding", "1:2,0:3", "--kernels", "forward", "-o", str(out)) == 0
    spec = _manifest(out)["functions"]["forward"]["spec"]
    assert (spec["pad_before"], spec["pad_after"]) == ([1, 0], [2, 3])


def test_cli_compile_padding_mode(tmp_path):
    """--padding-mode reaches the spec, the manifest and the library's three functions."""
    out = tmp_path / "ring.so"
    assert cli("--op", "conv2d", "--input", "2,4,7,9", "--weight", "6,2,3,3", "--groups", "2",
               "--stride", "2", "--padding", "2:1,1:2", "--padding-mode", "circular",
               "-o", str(out)) == 0
    spec = convc.ConvSpec.from_dict(_manifest(out)["functions"]["forward"]["spec"])
    assert spec.padding_mode == "circular" and spec.key.endswith("_circular")
    lib, data = load(out), operands(spec, seed=3)
    for op in ("forward", "grad_input", "grad_weight"):
        assert_close(lib[op](*kernel_inputs(spec, op, data)), reference(spec, op, **data),
                     "float32", f"cli circular {op}")


def test_cli_compile_fused_epilogue(tmp_path):
    """--scale-shift --residual --activation: forward's parameters, the manifest's epilogue."""
    out = tmp_path / "fused.so"
    assert cli("--op", "conv2d", "--input", "2,6,7,8", "--weight", "3,3,8,6", "--layout", "NHWC",
               "--bias", "--scale-shift", "--residual", "--activation", "leaky_relu:0.1",
               "--padding", "1", "--kernels", "forward", "-o", str(out)) == 0
    entry = _manifest(out)["functions"]["forward"]
    assert [a["name"] for a in entry["args"]] == ["x", "w", "b", "scale", "shift", "residual", "y"]
    assert entry["epilogue"] == ["bias (b)", "* scale + shift (per output channel)", "+ residual",
                                 "leaky_relu(negative_slope=0.1)"]
    spec = convc.ConvSpec.from_dict(entry["spec"])
    data = operands(spec, seed=4)
    assert_close(load(out).forward(*kernel_inputs(spec, "forward", data)),
                 reference(spec, "forward", **data), "float32", "cli fused forward")


@pytest.mark.parametrize("argv, message", [
    (["--input", "2,8,12,12", "--weight", "16,8,3,3", "--activation", "leaky_relu:x"],
     "--activation='leaky_relu:x'"),
    (["--input", "2,8,12,12", "--weight", "16,8,3,3", "--activation", "tanh"], "activation='tanh'"),
    (["--input", "2,8,3,12", "--weight", "16,8,3,3", "--padding", "3", "--padding-mode", "reflect"],
     "padding_mode='reflect' needs padding < the input size"),
    (["--input", "2,8,12", "--weight", "16,8,3,3"], "--input='2,8,12' has 3 dimensions: conv2d expects 4"),
    (["--input", "2,8,12,12", "--weight", "16,8,3"], "--weight='16,8,3' has 3 dimensions"),
    (["--input", "2,8,x,12", "--weight", "16,8,3,3"], "--input='2,8,x,12' is not an int or a comma list"),
    (["--input", "2,8,12,12", "--weight", "16,8,3,3", "--padding", "wide"], "--padding='wide'"),
    (["--input", "2,8,12,12", "--weight", "16,4,3,3"], "does not fit input_shape"),
    (["--input", "2,8,12,12", "--weight", "16,8,3,3", "--kernels", "forward,backward"], "op='backward'"),
    (["--input", "2,8,12,12", "--weight", "16,8,3,3", "--target", "{oops"], "target='{oops' is not known"),
    (["--input", "2,8,12,12", "--weight", "16,8,3,3", "--target", "{oops", "--arch", "x"],
     "--target='{oops' is not valid JSON"),
])
def test_cli_compile_errors(tmp_path, capsys, argv, message):
    out = tmp_path / "bad.so"
    code = cli("--op", "conv2d", *argv, "-o", str(out))
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err + captured.out
    assert not out.exists()


def test_cli_compile_cross_note(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")   # no <triple>-g++ anywhere
    out = tmp_path / "arm.so"
    with warnings.catch_warnings():
        warnings.simplefilter("error")    # the command reports the note itself, as text
        code = cli("--op", "conv2d", "--input", "1,3,8,8", "--weight", "4,3,3,3", "--kernels",
                   "forward", "--target", '{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}',
                   "-o", str(out))
    assert code == 0
    captured = capsys.readouterr()
    assert "note: no linker for aarch64-linux-gnu" in captured.err
    assert "wrote " + str(tmp_path / "arm.o") in captured.out
