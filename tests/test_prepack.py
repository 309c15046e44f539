"""Prepacked weights of every forward and grad_input kernel (Kernel.prepack; Winograd's own
tests are in test_winograd.py): the direct schedules' weight stage split off the scheduled kernel
(convc.build.packing), "copy" packs where a kernel reads w as given, round trips against the
unpacked call and the NumPy reference, snapshots (a changed weight is never served from a stale
pack), and the errors."""

from __future__ import annotations

import numpy as np
import pytest

import convc
from convc.build import packed_functions
from convc.build.packing import split_weight_stage
from convc.check import kernel_inputs, operands, reference
from convc.spec import ConvSpec
from convc.target import resolve

from conftest import assert_close


def spec_of(input_cf, weight_cf, layout, **kw):
    n, c, *size = input_cf
    k, cg, *kernel = weight_cf
    if layout.endswith("C"):
        return ConvSpec.from_shapes((n, *size, c), (*kernel, cg, k), layout=layout, **kw)
    return ConvSpec.from_shapes(input_cf, weight_cf, layout=layout, **kw)


# (layout, op, channels-first input, weight, keywords, the pack's kind)
CASES = [
    ("NCHW", "forward", (2, 16, 9, 11), (40, 16, 3, 3), {"padding": 1, "bias": True}, "direct"),
    ("NCHW", "grad_input", (2, 16, 9, 11), (40, 16, 3, 3), {"padding": 1}, "direct"),
    ("NHWC", "grad_input", (1, 24, 8, 8), (32, 12, 3, 3), {"padding": 1, "groups": 2}, "direct"),
    ("NCHW", "grad_input", (1, 32, 12, 12), (16, 32, 3, 3), {"stride": 2, "padding": 1}, "direct"),
    ("NCDHW", "forward", (1, 16, 5, 6, 7), (32, 16, 3, 3, 3), {"padding": 1}, "direct"),
    ("NCW", "grad_input", (2, 16, 19), (32, 16, 5), {"padding": 2, "dilation": 2}, "direct"),
    ("NHWC", "forward", (1, 16, 9, 9), (32, 16, 3, 3), {"padding": 1}, "copy"),
    ("NCHW", "grad_input", (1, 64, 7, 7), (32, 64, 1, 1), {}, "copy"),
]


@pytest.mark.parametrize("layout, op, x, w, kw, kind", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[5]}-{i}" for i, c in enumerate(CASES)])
def test_direct_prepack_round_trip(layout, op, x, w, kw, kind):
    """kernel(.., kernel.prepack(w), ..) == kernel(.., w, ..) == the reference; after the weight
    changes in place, the old pack keeps the old values and a new pack follows the new ones."""
    spec = spec_of(x, w, layout, algorithm="direct", **kw)
    data = operands(spec, 3)
    kernel = convc.compile(spec, op)
    args = kernel_inputs(spec, op, data)
    at = kernel.arg_names.index("w")
    weight = data["w"].copy()
    packed = kernel.prepack(weight)
    assert packed.kind == kind, f"{kernel!r}: a {packed.kind} pack, expected {kind}"
    expected = reference(spec, op, **data)
    plain = kernel(*args)
    with_pack = kernel(*args[:at], packed, *args[at + 1:])
    assert_close(with_pack, expected, spec.dtype, f"{op} {spec.key} packed")
    np.testing.assert_array_equal(with_pack, plain)  # the same schedule minus the weight stage
    weight *= -0.5
    changed = reference(spec, op, **{**data, "w": weight})
    assert_close(kernel(*args[:at], weight, *args[at + 1:]), changed, spec.dtype, "unpacked")
    assert_close(kernel(*args[:at], kernel.prepack(weight), *args[at + 1:]), changed,
                 spec.dtype, "repacked")
    assert_close(kernel(*args[:at], packed, *args[at + 1:]), expected, spec.dtype,
                 "the old pack is a snapshot")


def test_split_keeps_the_schedule_minus_the_weight_stage():
    """The packed function is the scheduled kernel without its weight stage: the pack has the
    blocked layout the micro-kernel reads (o // vo, *r, c, o % vo) and w is no longer a parameter."""
    spec = ConvSpec.from_shapes((1, 64, 7, 7), (64, 64, 3, 3), padding=1, algorithm="direct")
    target = resolve(None)
    made = packed_functions(spec, "grad_input", target)
    assert made.kind == "direct"
    assert len(made.shape) == 5 and made.shape[1:3] == (3, 3) and made.shape[3] == 64
    assert made.shape[0] * made.shape[4] >= 64
    assert [p.name for p in made.packed.params][0] == "dy"
    assert "w" not in [p.name for p in made.packed.params]
    assert "w_flipped" in made.prepack.script() and "w_flipped" not in \
        [b.name for b in made.packed.body.block.alloc_buffers]


def test_split_declines_without_a_weight_stage():
    spec = ConvSpec.from_shapes((1, 9, 9, 16), (3, 3, 16, 32), layout="NHWC", padding=1,
                                algorithm="direct")
    from convc.build import schedule
    mod, _ = schedule(spec, "forward", resolve(None))
    assert split_weight_stage(mod["forward"], name="forward") is None


def test_prepack_float16_and_prologue():
    """A float16 kernel's direct pack stays float16; grad_input through an activation (the saved
    tensor before w) takes the pack in w's place."""
    spec = ConvSpec.from_shapes((1, 16, 8, 8), (32, 16, 3, 3), padding=1, dtype="float16",
                                algorithm="direct")
    data = operands(spec, 1)
    kernel = convc.compile(spec, "forward")
    packed = kernel.prepack(data["w"])
    assert packed.array.dtype == np.float16
    np.testing.assert_array_equal(kernel(data["x"], packed), kernel(data["x"], data["w"]))
    fused = ConvSpec.from_shapes((1, 16, 8, 8), (32, 16, 3, 3), padding=1, activation="relu",
                                 derivative_from="pre_activation", algorithm="direct")
    data = operands(fused, 2)
    kernel = convc.compile(fused, "grad_input")
    args = kernel_inputs(fused, "grad_input", data)
    assert kernel.arg_names.index("w") == 2
    packed = kernel.prepack(data["w"])
    np.testing.assert_array_equal(kernel(args[0], args[1], packed), kernel(*args))


def test_prepack_errors():
    spec = ConvSpec.from_shapes((1, 16, 8, 8), (32, 16, 3, 3), padding=1, algorithm="direct")
    w = np.ones(spec.weight_shape, "float32")
    packed = convc.compile(spec, "forward").prepack(w)
    with pytest.raises(ValueError, match="packed for"):
        convc.compile(spec, "grad_input")(np.ones(spec.output_shape, "float32"), packed)
    with pytest.raises(ValueError, match="no prepacked form"):
        convc.compile(spec, "grad_weight").prepack(w)
    with pytest.raises(ValueError, match="shape"):
        convc.compile(spec, "forward").prepack(np.ones((32, 16, 5, 5), "float32"))
    with pytest.raises(TypeError, match="dtype"):
        convc.compile(spec, "forward").prepack(w.astype("float64"))


# --- exported libraries --------------------------------------------------------------------------

@pytest.mark.parametrize("layout, algorithm", [("NCHW", "direct"), ("NHWC", "winograd")])
def test_exported_packed_calls(tmp_path, layout, algorithm):
    """export_library(..., prepacked=True): "<op>_prepack" / "<op>_packed" in the library and its
    manifest; the loaded kernels' packed calls, and the raw functions through tvm_ffi alone,
    give the unpacked results."""
    import tvm_ffi
    from convc.export import export_library, load

    spec = spec_of((1, 16, 8, 10), (32, 16, 3, 3), layout, padding=1, algorithm=algorithm)
    path = export_library(spec, tmp_path / "lib.so", ops=("forward", "grad_input", "grad_weight"),
                          prepacked=True)
    lib = load(path)
    entries = lib.manifest["functions"]
    assert sorted(entries) == sorted(["forward", "grad_input", "grad_weight", "forward_prepack",
                                      "forward_packed", "grad_input_prepack", "grad_input_packed"])
    assert entries["forward_packed"]["pack"]["kind"] == ("winograd" if algorithm == "winograd"
                                                        else "direct")
    data = operands(spec, 4)
    module = tvm_ffi.load_module(str(path))
    for op in ("forward", "grad_input"):
        args = kernel_inputs(spec, op, data)
        plain = lib[op](*args)
        packed = lib[op].prepack(data["w"])
        assert packed.kind == entries[f"{op}_prepack"]["pack"]["kind"]
        assert list(packed.array.shape) == entries[f"{op}_packed"]["args"][1]["shape"]
        np.testing.assert_array_equal(lib[op](args[0], packed), plain)
        assert_close(plain, reference(spec, op, **data), spec.dtype, f"{op} {spec.key}")
        raw = np.zeros_like(packed.array)
        module[f"{op}_prepack"](data["w"], raw)
        np.testing.assert_array_equal(raw, packed.array)
        out = np.zeros_like(plain)
        module[f"{op}_packed"](args[0], raw, out)
        np.testing.assert_array_equal(out, plain)


def test_exported_without_packs_refuses_prepack(tmp_path):
    from convc.export import export_library, load

    spec = ConvSpec.from_shapes((1, 16, 8, 8), (16, 16, 3, 3), padding=1, algorithm="direct")
    lib = load(export_library(spec, tmp_path / "plain.so", ops=("forward",)))
    assert "forward_prepack" not in lib.manifest["functions"]
    with pytest.raises(ValueError, match="prepacked=True"):
        lib.forward.prepack(np.ones(spec.weight_shape, "float32"))


@pytest.mark.skipif(__import__("shutil").which("g++") is None
                    or __import__("shutil").which("make") is None,
                    reason="the C++ example needs g++ and make")
def test_cpp_example_packed_calls(tmp_path):
    """examples/cpp on prepacked libraries (a direct NCHW layer and a Winograd NHWC one): it
    packs the weight once with <op>_prepack and checks two packed calls against its own loop
    nest, besides the usual checks."""
    import subprocess

    from convc.export import export_library
    from test_export_deploy import build_cpp_example

    program = build_cpp_example(tmp_path)
    cases = {"direct.so": ("NCHW", "direct", "direct"), "wino.so": ("NHWC", "winograd", "winograd")}
    for file, (layout, algorithm, kind) in cases.items():
        spec = spec_of((2, 16, 6, 7), (24, 16, 3, 3), layout, padding=1, bias=True,
                       algorithm=algorithm)
        library = export_library(spec, tmp_path / file, prepacked=True)
        run = subprocess.run([str(program), str(library)], capture_output=True,
                             text=True, timeout=120, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        lines = run.stdout.splitlines()
        assert lines[-1] == "ALL PASS", lines
        for op in ("forward", "grad_input"):
            packed = [line for line in lines if line.startswith(op) and "packed call" in line]
            assert len(packed) == 2 and all(f"({kind} pack, once)" in line and
                                            line.endswith("PASS") for line in packed), lines
        assert not any(line.startswith("grad_weight") and "packed" in line for line in lines)


def test_forced_direct_declares_the_auto_tir():
    """algorithm="direct" declares the same TIR as "auto" resolved to direct, so a layer forced
    to direct still finds the shipped tuning records of that layer (keyed by the TIR)."""
    import tvm_ffi

    from convc.ops import declare

    for op in ("forward", "grad_input", "grad_weight"):
        auto = ConvSpec.from_shapes((1, 9, 9, 16), (3, 3, 16, 32), layout="NHWC", padding=1)
        direct = ConvSpec.from_shapes((1, 9, 9, 16), (3, 3, 16, 32), layout="NHWC", padding=1,
                                      algorithm="direct")
        assert tvm_ffi.structural_equal(declare(auto, op), declare(direct, op)), op


def test_bench_prepacked_table():
    """convc bench --prepacked's rows and table on a tiny layer (one round; no timing asserted)."""
    from convc.bench.prepacked import prepacked_costs, prepacked_table

    layer = (1, 16, 6, 6, 16, 3, 1, 1, 1)
    rows = prepacked_costs([layer], ops=("grad_input",), repeat=1)
    (row,) = rows
    assert row["kinds"] == {"NCHW": "direct", "NHWC": "direct"}
    assert all(v > 0 for v in row["speedup"].values())
    text = prepacked_table(rows)
    assert "grad_input" in text and "NCHW direct" in text
