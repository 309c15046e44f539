"""Transposed convolution (convc.conv_transpose{1,2,3}d and its adjoints) against the NumPy
reference's own transposed convolution (a literal scatter, not the convolution's adjoint), against
PyTorch's F.conv_transposeNd under autograd when it is installed, the adjoint identity, float64
finite differences; arguments, records, export, the CLI and the CUDA rules."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import convc
from convc import check, reference as ref, transpose
from convc.ops import declare
from convc.records import workload_of
from convc.spec import LAYOUTS, TRANSPOSE_OPS
from conftest import assert_close, torch_or_skip

# (input_shape (N, C_in, *in), weight_shape (C_in, C_out/groups, *k), stride, padding,
#  output_padding, groups, dilation): F.conv_transposeNd's arguments, channels-first.
TRANSPOSED = {
    "unet_2x2_s2": ((2, 8, 5, 6), (8, 4, 2, 2), 2, 0, 0, 1, 1),
    "dcgan_4x4_s2": ((1, 16, 4, 5), (16, 8, 4, 4), 2, 1, 0, 1, 1),
    "odd_3x3_s2_op1": ((2, 5, 7, 6), (5, 7, 3, 3), 2, 1, 1, 1, 1),
    "s3_op2_grouped": ((1, 6, 5, 4), (6, 2, 3, 3), 3, 1, 2, 3, 1),
    "depthwise_s2_op1": ((1, 8, 6, 5), (8, 1, 3, 3), 2, 1, 1, 8, 1),
    "rect_s_d_op": ((2, 4, 5, 5), (4, 4, 3, 2), (2, 1), (1, 0), (1, 1), 2, (2, 3)),
    # output_padding >= stride (allowed by a dilation > stride): the equivalent convolution's
    # padding after is negative, a crop
    "dilated_op_beyond_stride": ((1, 4, 5, 6), (4, 6, 3, 3), 1, 0, 1, 1, 2),
    "pad_beyond_kernel": ((1, 3, 6, 7), (3, 4, 3, 3), 1, 2, 0, 1, 1),
    "pointwise": ((2, 16, 5, 5), (16, 8, 1, 1), 1, 0, 0, 1, 1),
    "asym_pad_pairs": ((1, 4, 6, 5), (4, 5, 3, 3), 2, ((1, 0), (0, 2)), 1, 1, 1),
    # kernel <= stride with many taps: grad_input's gather declaration
    "patch_unembed_gather": ((1, 8, 3, 4), (8, 6, 6, 5), (6, 5), 0, 0, 1, 1),
    "1d_s2_op1": ((2, 4, 9), (4, 6, 4), 2, 1, 1, 1, 1),
    "1d_grouped_dilated": ((1, 6, 8), (6, 2, 3), 3, 2, 1, 3, 2),
    "3d_s2": ((1, 4, 3, 4, 3), (4, 4, 2, 3, 2), 2, (0, 1, 0), (1, 0, 1), 1, 1),
    "3d_grouped_dilated": ((1, 4, 3, 3, 4), (4, 3, 3, 2, 3), (2, 1, 2), 1, (1, 0, 0), 2, (1, 2, 1)),
}


def channels_last(array, weight=False):
    return ref.weight_to_hwio(array) if weight else ref.to_channels_last(array)


def spec_of(name, layout="first", dtype="float32", bias=True):
    xs, ws, s, p, op, g, d = TRANSPOSED[name]
    ndim = len(xs) - 2
    if layout == "last":
        n, c, *sp = xs
        ci, co, *k = ws
        xs, ws = (n, *sp, c), (*k, co, ci)
    return transpose.from_shapes(xs, ws, s, p, op, g, d, layout=LAYOUTS[ndim][layout == "last"],
                                 dtype=dtype, bias=bias)


def check_ops(spec, ops=tuple(TRANSPOSE_OPS), seed=0):
    data = check.transpose_operands(spec, seed)
    for op in ops:
        kernel = convc.compile(spec, op)
        got = kernel(*check.kernel_inputs(spec, op, data))
        expected = check.transpose_reference(spec, op, **data)
        assert_close(got, expected, spec.dtype, f"{op} {spec.key} [{kernel.how}]")
        assert kernel.how == "hand-written", f"{op} {spec.key}: {kernel.how}"


# --- against the NumPy reference -------------------------------------------------------------

@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("name", list(TRANSPOSED))
def test_matches_reference(name, layout):
    check_ops(spec_of(name, layout, bias=layout == "first" or "3d" in name))


@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("name", ["dcgan_4x4_s2", "rect_s_d_op", "1d_s2_op1", "3d_s2"])
def test_dtypes(name, dtype):
    check_ops(spec_of(name, "last" if name == "rect_s_d_op" else "first", dtype))


def test_equivalent_convolution():
    """The spec is the convolution PyTorch pairs with the transposed one (output_padding < stride:
    the same padding both sides); its output is the transposed input."""
    spec = spec_of("odd_3x3_s2_op1")
    assert (spec.in_channels, spec.out_channels) == (7, 5)
    assert spec.in_size == (14, 12) and spec.out_size == (7, 6)
    assert spec.pad_before == spec.pad_after == (1, 1)
    t = transpose.transposed_of(spec)
    assert t.output_padding == (1, 1) and t.padding == ((1, 1), (1, 1))
    assert t.input_shape == (2, 5, 7, 6) and t.output_shape == (2, 7, 14, 12)
    crop = spec_of("dilated_op_beyond_stride")
    assert crop.pad_after == (-1, -1) and transpose.transposed_of(crop).output_padding == (1, 1)


def test_reference_agrees_with_the_convolution_adjoint():
    """Two independent routes in NumPy: the literal scatter and the convolution's grad_input."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 6, 5, 4)), rng.standard_normal((6, 2, 3, 3))
    y = ref.conv_transpose(x, w, (2, 3), [(1, 1), (0, 0)], (1, 2), (1, 1), 3)
    dx = ref.grad_input((2, 6, *y.shape[2:]), w, x, (2, 3), [(1, 0), (0, 2)], (1, 1), 3)
    np.testing.assert_allclose(y, dx, atol=1e-12)


# --- against PyTorch -------------------------------------------------------------------------

def _torch_case(name):
    xs, ws, s, p, op, g, d = TRANSPOSED[name]
    if isinstance(p, tuple) and any(isinstance(v, tuple) for v in p):
        return None  # PyTorch takes symmetric padding only
    return xs, ws, s, p, op, g, d


@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("name", [n for n in TRANSPOSED if _torch_case(n)])
def test_matches_torch_autograd(name, layout):
    """convc's forward and both adjoints against F.conv_transposeNd's forward and backward."""
    torch = torch_or_skip()
    xs, ws, s, p, op, g, d = _torch_case(name)
    ndim = len(xs) - 2
    fn = getattr(torch.nn.functional, f"conv_transpose{ndim}d")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(xs, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(ws, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(ws[1] * g, generator=gen, dtype=torch.float64)
    y = fn(x, w, b, s, p, op, g, d)
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(dy)
    args = (s, p, op, g, d)
    xa, wa, dya = x.detach().numpy(), w.detach().numpy(), dy.numpy()
    lay = LAYOUTS[ndim][layout == "last"]
    if layout == "last":
        xa, wa, dya = channels_last(xa), channels_last(wa, True), channels_last(dya)
    forward = getattr(convc, f"conv_transpose{ndim}d")
    got_y = forward(xa, wa, b.numpy(), *args, layout=lay)
    got_dx = getattr(convc, f"conv_transpose{ndim}d_grad_input")(xa.shape, wa, dya, *args, layout=lay)
    got_dw = getattr(convc, f"conv_transpose{ndim}d_grad_weight")(xa, wa.shape, dya, *args, layout=lay)
    expected = [y.detach().numpy(), x.grad.numpy(), w.grad.numpy()]
    if layout == "last":
        expected = [channels_last(expected[0]), channels_last(expected[1]),
                    channels_last(expected[2], True)]
    for what, got, want in zip(("forward", "grad_input", "grad_weight"), (got_y, got_dx, got_dw),
                               expected):
        assert_close(got, want, "float64", f"{name} {lay} {what} vs torch")


def test_torch_tensors_unbatched_and_the_cached_path():
    torch = torch_or_skip()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((8, 5, 6), generator=gen)
    w = torch.randn((8, 3, 4, 4), generator=gen)
    b = torch.randn(3, generator=gen)
    want = torch.nn.functional.conv_transpose2d(x, w, b, 2, 1, 1)
    for _ in range(3):  # the full path, then the plan
        got = convc.conv_transpose2d(x, w, b, 2, 1, 1)
        assert isinstance(got, torch.Tensor) and got.shape == want.shape == (3, 11, 13)
        assert_close(got.numpy(), want.numpy(), "float32", "unbatched torch conv_transpose2d")
    dy = torch.randn(want.shape, generator=gen)
    dx = convc.conv_transpose2d_grad_input(x.shape, w, dy, 2, 1, 1)
    dw = convc.conv_transpose2d_grad_weight(x, w.shape, dy, 2, 1, 1)
    xr, wr = x[None].clone().requires_grad_(), w.clone().requires_grad_()
    torch.nn.functional.conv_transpose2d(xr, wr, None, 2, 1, 1).backward(dy[None])
    assert dx.shape == x.shape and dw.shape == w.shape
    assert_close(dx.numpy(), xr.grad[0].numpy(), "float32", "unbatched grad_input")
    assert_close(dw.numpy(), wr.grad.numpy(), "float32", "unbatched grad_weight")


# --- identities ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["odd_3x3_s2_op1", "rect_s_d_op", "dilated_op_beyond_stride",
                                  "1d_grouped_dilated", "3d_grouped_dilated"])
def test_adjoint_identity(name):
    """<conv_transpose(x, W), v> == <x, grad_input(v, W)> == <W, grad_weight(x, v)> (float64)."""
    spec = spec_of(name, dtype="float64", bias=False)
    data = check.transpose_operands(spec, seed=3)
    y = convc.compile(spec, "conv_transpose")(data["x"], data["w"])
    dx = convc.compile(spec, "conv_transpose_grad_input")(data["dy"], data["w"])
    dw = convc.compile(spec, "conv_transpose_grad_weight")(data["dy"], data["x"])
    a, b, c = np.vdot(y, data["dy"]), np.vdot(data["x"], dx), np.vdot(data["w"], dw)
    assert abs(a - b) <= 1e-10 * max(1.0, abs(a)) and abs(a - c) <= 1e-10 * max(1.0, abs(a))


def test_finite_differences_float64():
    """The gradient of L = <conv_transpose(x, W) + b, v> along random directions, by central
    differences of the forward, matches both adjoints."""
    xs, ws, s, p, op, g, d = TRANSPOSED["rect_s_d_op"]
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[1] * g)
    y = convc.conv_transpose2d(x, w, b, s, p, op, g, d)
    v = rng.standard_normal(y.shape)

    def loss(xx, ww):
        return float(np.vdot(convc.conv_transpose2d(xx, ww, b, s, p, op, g, d), v))

    dx = convc.conv_transpose2d_grad_input(xs, w, v, s, p, op, g, d)
    dw = convc.conv_transpose2d_grad_weight(x, ws, v, s, p, op, g, d)
    eps = 1e-6
    for _ in range(3):
        ex, ew = rng.standard_normal(xs), rng.standard_normal(ws)
        fd_x = (loss(x + eps * ex, w) - loss(x - eps * ex, w)) / (2 * eps)
        fd_w = (loss(x, w + eps * ew) - loss(x, w - eps * ew)) / (2 * eps)
        assert abs(fd_x - np.vdot(dx, ex)) <= 1e-6 * max(1.0, abs(fd_x))
        assert abs(fd_w - np.vdot(dw, ew)) <= 1e-6 * max(1.0, abs(fd_w))


# --- arguments -------------------------------------------------------------------------------

X = np.zeros((1, 4, 5, 5), np.float32)
W = np.zeros((4, 2, 3, 3), np.float32)


@pytest.mark.parametrize("call,error,match", [
    (lambda: convc.conv_transpose2d(X, W, stride=2, output_padding=2), ValueError,
     r"output_padding=2 .*smaller than either stride or dilation"),
    (lambda: convc.conv_transpose2d(X, W, output_padding=(0, 1), dilation=(1, 1)), ValueError,
     "output_padding"),
    (lambda: convc.conv_transpose2d(X, W, output_padding=-1), ValueError, "output_padding"),
    (lambda: convc.conv_transpose2d(X, W, padding_mode="reflect"), ValueError,
     "padding_mode='reflect'.*only 'zeros'"),
    (lambda: convc.conv_transpose2d(X, W, padding="same"), ValueError, "padding='same'"),
    (lambda: convc.conv_transpose2d(X, W, padding=4), ValueError, "padding=4 is too large"),
    (lambda: convc.conv_transpose2d(X, np.zeros((3, 2, 3, 3), np.float32)), ValueError,
     "weight_shape.*4 channels"),
    (lambda: convc.conv_transpose2d(X, W, groups=3), ValueError, "groups=3"),
    (lambda: convc.conv_transpose2d(X, W, np.zeros(3, np.float32)), ValueError,
     r"bias has shape \(3,\): expected \(2,\)"),
    (lambda: convc.conv_transpose2d(X, W, stride=0), ValueError, "stride"),
    (lambda: convc.conv_transpose2d(X, W.astype(np.float64)), TypeError, "weight has dtype"),
    (lambda: convc.conv_transpose2d(X, W[0]), ValueError, "weight has shape"),
    (lambda: convc.conv_transpose2d(X, W, layout="NCDHW"), ValueError, "layout"),
    (lambda: convc.conv_transpose2d_grad_input(X.shape, W, np.zeros((1, 2, 6, 6), np.float32)),
     ValueError, r"grad_output has shape \(1, 2, 6, 6\): expected \(1, 2, 7, 7\)"),
    (lambda: convc.conv_transpose2d_grad_weight(X, (4, 2, 3), np.zeros((1, 2, 7, 7), np.float32)),
     ValueError, "weight_size"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_output_padding_up_to_the_dilation():
    """PyTorch's rule is output_padding < max(stride, dilation): 1 with stride 1 and dilation 2
    is valid (the crop case), 2 is not."""
    assert convc.conv_transpose2d(X, W, output_padding=1, dilation=2).shape == (1, 2, 10, 10)
    with pytest.raises(ValueError, match="output_padding"):
        convc.conv_transpose2d(X, W, output_padding=2, dilation=2)


# --- records, export, CLI --------------------------------------------------------------------

def test_kernels_are_keyed_apart_from_the_convolution():
    spec = spec_of("unet_2x2_s2", bias=False)
    conv = workload_of(declare(spec, "grad_input"))
    assert workload_of(declare(spec, "conv_transpose")) == (spec.key, "conv_transpose")
    assert conv == (spec.key, "grad_input")
    assert workload_of(declare(spec, "conv_transpose_grad_weight"))[1] == "conv_transpose_grad_weight"
    # the three kernels of a layer share its record directory, bias or not
    biased = spec_of("unet_2x2_s2", bias=True)
    assert {workload_of(declare(biased, op))[0] for op in TRANSPOSE_OPS} == {biased.key}
    assert convc.compile(spec, "conv_transpose") is not convc.compile(spec, "grad_input")


def test_export_and_load(tmp_path):
    spec = spec_of("odd_3x3_s2_op1", "last")
    path = convc.export_library(spec, tmp_path / "up.so", ops=tuple(TRANSPOSE_OPS))
    manifest = json.loads((tmp_path / "up.json").read_text())
    entry = manifest["functions"]["conv_transpose"]
    assert [a["name"] for a in entry["args"]] == ["x", "w", "b", "y"]
    assert entry["args"][1]["layout"] == "HWOI" and entry["epilogue"] == ["bias (b)"]
    assert entry["transpose"]["output_padding"] == [1, 1]
    assert entry["transpose"]["input_shape"] == [2, 7, 6, 5]
    assert [a["name"] for a in manifest["functions"]["conv_transpose_grad_weight"]["args"]] == \
        ["dy", "x", "dw"]
    lib = convc.load(path)
    data = check.transpose_operands(spec)
    for op in TRANSPOSE_OPS:
        got = lib[op](*check.kernel_inputs(spec, op, data))
        assert_close(got, check.transpose_reference(spec, op, **data), "float32", f"loaded {op}")


def test_cli_compile(tmp_path, capsys):
    from convc.cli import main

    out = tmp_path / "up.so"
    assert main(["compile", "--op", "conv_transpose2d", "--input", "1,8,5,5", "--weight",
                 "8,4,4,4", "--stride", "2", "--padding", "1", "--output-padding", "1",
                 "--bias", "-o", str(out)]) == 0
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert sorted(manifest["functions"]) == sorted(TRANSPOSE_OPS)
    assert manifest["functions"]["conv_transpose"]["args"][-1]["shape"] == [1, 4, 11, 11]
    assert main(["compile", "--op", "conv_transpose2d", "--input", "1,8,5,5", "--weight",
                 "8,4,4,4", "--stride", "2", "--output-padding", "2", "-o", str(out)]) == 2
    assert "output_padding" in capsys.readouterr().err
    assert main(["compile", "--op", "conv2d", "--input", "1,8,5,5", "--weight", "8,4,3,3",
                 "--output-padding", "1", "-o", str(out)]) == 2


# --- CUDA rules ------------------------------------------------------------------------------

CUDA_CASES = ["dcgan_4x4_s2", "s3_op2_grouped", "dilated_op_beyond_stride", "1d_s2_op1", "3d_s2"]


def _cuda_modules(spec):
    from convc.build import schedule
    from convc.target import resolve

    target = resolve({"kind": "cuda", "arch": "sm_90"})
    mods = {}
    for op in TRANSPOSE_OPS:
        mods[op], how = schedule(spec, op, target)
        assert how == "hand-written", f"{op} {spec.key}: the GPU rule declined ({how})"
    return mods


@pytest.mark.parametrize("name", CUDA_CASES)
def test_cuda_rules_serialized(name):
    """The GPU schedules of the three transposed ops, serialized and run on the CPU (as
    tests/test_cuda.py does for the convolution's), match the reference."""
    from convc.build import cuda
    from convc.build.cuda.library import merge

    spec = spec_of(name, "last" if name == "dcgan_4x4_s2" else "first")
    cpu = cuda.build_serial(merge(_cuda_modules(spec)))
    data = check.transpose_operands(spec)
    for op in TRANSPOSE_OPS:
        expected = check.transpose_reference(spec, op, **data)
        out = np.full(expected.shape, np.nan, spec.dtype)
        cpu[op](*check.kernel_inputs(spec, op, data), out)
        assert_close(out, expected, spec.dtype, f"serialized GPU {op} {spec.key}")


def test_cuda_rules_compile_with_nvcc():
    """nvcc compiles every transposed kernel of the CUDA cases within the target's limits and
    without spills (convc.build.cuda's checks)."""
    from convc.build import cuda
    from convc.build.cuda.library import compile_device_code, merge
    from convc.target import resolve

    try:
        cuda.find_nvcc()
    except cuda.NvccNotFound:
        pytest.skip("nvcc (the CUDA toolkit) is not installed")
    entries = {}
    for name in CUDA_CASES:
        for op, mod in _cuda_modules(spec_of(name)).items():
            entries[f"k_{name}_{op}"] = mod
    reports = compile_device_code(merge(entries), resolve({"kind": "cuda", "arch": "sm_90"}))
    assert len(reports) >= len(entries)
    assert not [r.name for r in reports if r.resources.spills]


def test_spec_field_bias_is_the_ops_own():
    """With bias, conv_transpose takes b of its output channels; the adjoints take none."""
    spec = spec_of("unet_2x2_s2")
    assert convc.compile(spec, "conv_transpose").arg_names == ("x", "w", "b", "y")
    assert convc.compile(spec, "conv_transpose").arg_shapes[2] == (4,)
    assert convc.compile(spec, "conv_transpose_grad_input").arg_names == ("dy", "w", "dx")
    assert dataclasses.replace(spec, bias=False).key != spec.key


@pytest.mark.parametrize("name,layout", [("dcgan_4x4_s2", "last"), ("odd_3x3_s2_op1", "last"),
                                         ("3d_s2", "last")])
def test_tuning_grid_alternatives(name, layout):
    """Every alternative the tuner may pick for the transposed forward (the phased grad_input
    variant's vectors and widths; channels-last, so the channel-vector family) computes the right
    thing, the rule's own choice first."""
    import tvm

    from convc.target import resolve
    from convc.tuning.space import hand_grid

    spec = spec_of(name, layout)
    data, target = check.transpose_operands(spec), resolve("llvm")
    want = check.transpose_reference(spec, "conv_transpose", **data)
    grid = hand_grid(declare(spec, "conv_transpose").with_attr("global_symbol", "main"), target)
    assert len(grid) == 4 and grid[0][0] == {}
    for knobs, sch in grid:
        out = np.zeros(want.shape, spec.dtype)
        tvm.compile(sch.mod, target=target)["main"](*check.kernel_inputs(spec, "conv_transpose",
                                                                         data), out)
        assert_close(out, want, spec.dtype, f"{spec.key} knobs={knobs}")
