"""Pooling and its adjoints: every kernel against the NumPy references (convc.reference_pool, in
both layout families), PyTorch's semantics through the functional API when torch is installed,
argument errors, and the schedules (hand-written everywhere, no races with 2 threads).

Workloads are grouped by where they come from; shapes are small (the whole file runs in about a
minute on 2 cores) and chosen so that no vector of 16 divides the channels or the width where
"odd" is in the name.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import convc
import guard_pages
from conftest import torch_or_skip
from convc.check import TOLERANCE, relative_error
from convc.check_pool import check_kernel, error, kernel_inputs, operands, reference
from convc.pool_spec import PoolSpec
from convc.spec import LAYOUTS

# name -> (pool, channels-first input shape, PoolSpec arguments)
RESNET = {"resnet_maxpool_3x3s2": ("max", (2, 16, 13, 12), dict(kernel_size=3, stride=2,
                                                                 padding=1)),
          # even rows: the gathers split them by the stride (schedules/cpu/pool._row_phases)
          "resnet_maxpool_3x3s2_even": ("max", (2, 17, 14, 12), dict(kernel_size=3, stride=2,
                                                                     padding=1))}
VGG = {"vgg_maxpool_2x2s2_odd": ("max", (1, 20, 10, 9), dict(kernel_size=2, stride=2))}
INCEPTION = {"inception_avg_3x3s1": ("avg", (1, 24, 9, 9), dict(kernel_size=3, stride=1,
                                                                padding=1))}
GLOBAL = {"global_avg": ("adaptive_avg", (2, 40, 7, 7), dict(output_size=1))}
ODD = {
    "max_ceil_overhang": ("max", (1, 5, 10, 11), dict(kernel_size=3, stride=2, padding=1,
                                                      ceil_mode=True)),
    "max_dilated": ("max", (2, 3, 11, 10), dict(kernel_size=(3, 2), stride=(2, 1),
                                                padding=(1, 1), dilation=(2, 3))),
    "max_stride_over_kernel": ("max", (1, 4, 9, 9), dict(kernel_size=2, stride=3)),
    "avg_ceil_no_pad_count": ("avg", (1, 3, 10, 11), dict(kernel_size=3, stride=2, padding=1,
                                                          ceil_mode=True,
                                                          count_include_pad=False)),
    "avg_ceil_pad_count": ("avg", (1, 3, 10, 11), dict(kernel_size=3, stride=2, padding=1,
                                                       ceil_mode=True)),
    "avg_divisor_override": ("avg", (1, 6, 8, 9), dict(kernel_size=(2, 3), stride=2,
                                                       padding=1, divisor_override=5)),
    "adaptive_irregular": ("adaptive_avg", (1, 5, 9, 8), dict(output_size=(4, 5))),
    "adaptive_upsample": ("adaptive_avg", (1, 3, 3, 5), dict(output_size=(5, 7))),
}
ONE_D = {
    "1d_max": ("max", (2, 3, 19), dict(kernel_size=4, stride=3, padding=2, dilation=2,
                                       ceil_mode=True)),
    "1d_avg": ("avg", (1, 5, 12), dict(kernel_size=3, stride=2, padding=1,
                                       count_include_pad=False)),
    "1d_adaptive": ("adaptive_avg", (1, 4, 10), dict(output_size=4)),
}
THREE_D = {
    "3d_max": ("max", (1, 3, 6, 7, 5), dict(kernel_size=(2, 3, 2), stride=(2, 1, 2),
                                            padding=(1, 1, 0), ceil_mode=True)),
    "3d_avg": ("avg", (1, 18, 5, 6, 7), dict(kernel_size=3, stride=2, padding=1,
                                             divisor_override=7)),
    "3d_adaptive": ("adaptive_avg", (1, 3, 5, 6, 7), dict(output_size=(2, 3, 4))),
    "3d_max_overlap_even": ("max", (1, 33, 6, 8, 5), dict(kernel_size=3, stride=2, padding=1)),
}
FAMILIES = {"resnet": RESNET, "vgg": VGG, "inception": INCEPTION, "global": GLOBAL, "odd": ODD,
            "1d": ONE_D, "3d": THREE_D}
BUILDERS = {"max": PoolSpec.max_pool, "avg": PoolSpec.avg_pool,
            "adaptive_avg": PoolSpec.adaptive_avg_pool}


def pool_spec(pool, shape, kwargs, channels_last=False, dtype="float32"):
    ndim = len(shape) - 2
    if channels_last:
        n, c, *sp = shape
        shape = (n, *sp, c)
    return BUILDERS[pool](shape, **kwargs, layout=LAYOUTS[ndim][int(channels_last)], dtype=dtype)


def spec_params():
    params = []
    for table in FAMILIES.values():
        for name, (pool, shape, kwargs) in table.items():
            for last in (False, True):
                spec = pool_spec(pool, shape, kwargs, last)
                params.append(pytest.param(spec, id=f"{name}-{spec.layout}"))
    return params


def _same(a, b) -> bool:
    return np.array_equal(a, b, equal_nan=True)


def _check_all(spec: PoolSpec, data: dict, repeat: int = 5):
    """Every kernel of `spec`: hand-written, no rule declined, matches the reference, and gives
    bitwise the same result `repeat` times (parallel over TVM_NUM_THREADS, 2 on this machine:
    a tile whose write-back over-covered would race)."""
    for op in spec.ops:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a declining rule warns
            kernel = convc.compile(spec, op)
        assert kernel.how == "hand-written", f"{op} {spec.key}: {kernel.how}"
        error = check_kernel(kernel, data)
        assert error <= TOLERANCE[spec.dtype], f"{op} {spec.key}: relative error {error:.3g}"
        args = kernel_inputs(spec, op, data)
        first = kernel(*args)
        for _ in range(repeat - 1):
            again = kernel(*args)
            pairs = zip(first, again) if kernel.outputs > 1 else [(first, again)]
            assert all(_same(a, b) for a, b in pairs), f"{op} {spec.key}: runs differ"


@pytest.mark.parametrize("spec", spec_params())
def test_kernels_match_reference(spec):
    _check_all(spec, operands(spec))


@pytest.mark.parametrize("spec", [pytest.param(pool_spec("max", (1, 20, 9, 11), dict(
    kernel_size=3, stride=2, padding=1), last), id=f"max-{'NHWC' if last else 'NCHW'}")
    for last in (False, True)])
def test_ties_take_the_first_position(spec):
    """A few distinct values: most windows hold their maximum more than once."""
    _check_all(spec, operands(spec, ties=True), repeat=1)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("name", ["resnet_maxpool_3x3s2", "avg_ceil_no_pad_count", "global_avg",
                                  "3d_max"])
def test_other_dtypes(name, dtype):
    pool, shape, kwargs = {k: v for table in FAMILIES.values() for k, v in table.items()}[name]
    spec = pool_spec(pool, shape, kwargs, channels_last=dtype == "float16", dtype=dtype)
    _check_all(spec, operands(spec), repeat=2)


def test_nan_is_a_maximum_and_propagates():
    spec = PoolSpec.max_pool((1, 9, 8, 17), 3, 2, 1, layout="NHWC")
    data = operands(spec, ties=True)
    data["x"][0, 2, 3, :5] = np.nan          # one NaN in some windows
    data["x"][0, 4, 4, 3:9] = np.nan         # two NaNs in a window: the last one is its index
    data["x"][0, 4, 5, 3:9] = np.nan
    data["indices"] = reference(spec, "forward_indices", data["x"])[1]
    y, indices = convc.compile(spec, "forward_indices")(data["x"])
    want, want_indices = reference(spec, "forward_indices", data["x"])
    assert np.isnan(y).sum() == np.isnan(want).sum() > 0
    assert _same(y, want) and np.array_equal(indices, want_indices)
    assert _same(convc.compile(spec, "forward")(data["x"]), want)
    for op in ("grad_input", "grad_input_indices"):
        assert check_kernel(convc.compile(spec, op), data) <= 2e-5


def test_padding_acts_as_minus_infinity():
    """A window of -inf values: its maximum is -inf and its index the first input position (the
    padding never wins)."""
    spec = PoolSpec.max_pool((1, 2, 5, 5), 3, 2, 1)
    x = np.full(spec.input_shape, -np.inf, "float32")
    y, indices = convc.compile(spec, "forward_indices")(x)
    assert np.all(y == -np.inf)
    assert np.array_equal(indices[0, 0], [[0, 1, 3], [5, 6, 8], [15, 16, 18]])


def test_kernels_stay_inside_their_arguments(tmp_path):
    """Every kernel of every workload above (both layouts; float16 and float64 too) on arguments
    flush against no-access pages (tests/guard_pages.py), so a read or write past either end of
    any argument faults, and still right. The adjoints' gathers once read up to a row of dy
    before its start and past its end (a vectorized Select loads both arms, and the simplifier
    had dropped the clip of the covering output: convc.ops.pool.Axis._in_range); ResNet's
    8x64x112x112 max pool backward segfaulted whenever the page before dy was unmapped."""
    specs = [param.values[0] for param in spec_params()]
    specs += [pool_spec("max", (1, 5, 10, 11), dict(kernel_size=3, stride=2, padding=1,
                                                    ceil_mode=True), last, dtype)
              for last, dtype in ((True, "float16"), (False, "float64"))]
    cases, expected = [], {}
    for spec in specs:
        data = operands(spec)
        for op in spec.ops:
            name = f"{op} {spec.key}"
            cases.append((name, convc.compile(spec, op), kernel_inputs(spec, op, data)))
            expected[name] = reference(spec, op, **data)
    result, outputs = guard_pages.run_guarded(cases, tmp_path)
    assert result.returncode == 0, (f"exit {result.returncode}:\n{result.stdout[-300:]}\n"
                                    f"{result.stderr[-3000:]}")
    for (name, side), got in outputs.items():
        want = expected[name]
        if name.startswith("forward_indices"):
            assert np.array_equal(got[1], want[1]), f"{name} ({side}): indices"
            want = want[0]
        tolerance = TOLERANCE[str(got[0].dtype)]
        assert error(got[0], want) <= tolerance, f"{name} ({side})"


# --- schedules -------------------------------------------------------------------------------

def test_schedules_vectorize_and_parallelize():
    """Channels-last vectors run along the channels (every load a vector), channels-first ones
    along the width; the outer loops are parallel; every reduction is in registers."""
    import re

    for spec, vector in ((PoolSpec.max_pool((1, 56, 56, 64), 3, 2, 1, layout="NHWC"), 16),
                         (PoolSpec.avg_pool((1, 28, 28, 64), 3, 1, 1, layout="NHWC"), 16),
                         (PoolSpec.avg_pool((1, 64, 28, 32), 3, 1, 1), 16)):
        for op in spec.ops:
            kernel = convc.compile(spec, op)
            assert "T.parallel(" in kernel.tir and f"T.vectorized({vector})" in kernel.tir
            assert 'scope="local"' in kernel.tir
            if spec.channels_last:
                assert not re.search(r"= load float,", kernel.source), op  # no lane by lane


def test_tuner_grid_schedules_are_correct():
    """Every alternative the rule offers the tuner (convc.tuning.space) computes the same."""
    import tvm

    from convc.ops import declare
    from convc.tuning.space import hand_grid

    odd = pool_spec("max", (1, 20, 9, 11), dict(kernel_size=3, stride=2, padding=1), True)
    even = pool_spec("max", (1, 20, 10, 11), dict(kernel_size=3, stride=2, padding=1), True)
    for spec, op in ((odd, "forward"), (odd, "grad_input_indices"), (even, "grad_input_indices")):
        data = operands(spec)
        grid = hand_grid(declare(spec, op).with_attr("global_symbol", op), convc.target.resolve(None))
        assert len(grid) > 3 and all(knobs is not None for knobs, _ in grid)
        expected = reference(spec, op, **data)
        for knobs, sch in grid:
            function = tvm.compile(sch.mod, target=convc.target.resolve(None))["main"]
            out = np.empty(spec.output_shape if op == "forward" else spec.input_shape, "float32")
            function(*kernel_inputs(spec, op, data), out)
            assert relative_error(out, expected) <= 2e-5, f"{op} {knobs}"


# --- the functional API against PyTorch --------------------------------------------------------

def _torch_case(F, torch, pool, x, kwargs):
    """(PyTorch's result and its input gradient for grad_output g, convc's)."""
    ndim = x.ndim - 2
    functions = {"max": getattr(F, f"max_pool{ndim}d"), "avg": getattr(F, f"avg_pool{ndim}d"),
                 "adaptive_avg": getattr(F, f"adaptive_avg_pool{ndim}d")}
    xt = torch.from_numpy(x).requires_grad_()
    if pool == "max":
        y, indices = functions[pool](xt, **kwargs, return_indices=True)
    else:
        y, indices = functions[pool](xt, **kwargs), None
    g = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, y.shape).astype(x.dtype))
    y.backward(g)
    return y.detach().numpy(), None if indices is None else indices.numpy(), \
        xt.grad.numpy(), g.numpy()


def _convc_case(pool, x, g, kwargs, layout=None, unbatched=False):
    ndim = x.ndim - 2 + unbatched
    if pool == "max":
        y, indices = getattr(convc, f"max_pool{ndim}d")(x, **kwargs, return_indices=True,
                                                        layout=layout)
        grad = getattr(convc, f"max_pool{ndim}d_grad_input")
        dx = grad(x, g, **kwargs, layout=layout)
        dx_saved = grad(x.shape, g, **kwargs, indices=indices, layout=layout)
        assert _same(dx, dx_saved)
        return y, indices, dx
    if pool == "avg":
        y = getattr(convc, f"avg_pool{ndim}d")(x, **kwargs, layout=layout)
        return y, None, getattr(convc, f"avg_pool{ndim}d_grad_input")(x.shape, g, **kwargs,
                                                                       layout=layout)
    y = getattr(convc, f"adaptive_avg_pool{ndim}d")(x, **kwargs, layout=layout)
    return y, None, getattr(convc, f"adaptive_avg_pool{ndim}d_grad_input")(x.shape, g,
                                                                            layout=layout)


TORCH_CASES = [(name, *case) for table in FAMILIES.values() for name, case in table.items()]


@pytest.mark.parametrize("name,pool,shape,kwargs", TORCH_CASES,
                         ids=[case[0] for case in TORCH_CASES])
def test_functional_api_matches_pytorch(name, pool, shape, kwargs):
    """convc.<pool>Nd and its _grad_input against torch.nn.functional and autograd: values,
    indices exactly, gradients; channels-first and channels-last (layout=)."""
    torch = torch_or_skip()
    F = torch.nn.functional
    kwargs = {k: v for k, v in kwargs.items()
              if not (k == "divisor_override" and len(shape) == 3)}
    rng = np.random.default_rng(0)
    x = (rng.integers(-3, 4, shape) if pool == "max" else rng.uniform(-1, 1, shape)).astype(
        "float32")
    y_t, i_t, dx_t, g = _torch_case(F, torch, pool, x, kwargs)
    y, indices, dx = _convc_case(pool, x, g, kwargs)
    assert relative_error(y, y_t) <= 2e-5 and relative_error(dx, dx_t) <= 2e-5
    if pool == "max":
        assert np.array_equal(indices, i_t)
    last = LAYOUTS[len(shape) - 2][1]
    to_last = lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))  # noqa: E731
    y, indices, dx = _convc_case(pool, to_last(x), to_last(g), kwargs, layout=last)
    assert relative_error(y, to_last(y_t)) <= 2e-5 and relative_error(dx, to_last(dx_t)) <= 2e-5
    if pool == "max":
        assert np.array_equal(indices, to_last(i_t))


def test_unbatched_and_torch_tensors_match_pytorch():
    torch = torch_or_skip()
    F = torch.nn.functional
    x = torch.from_numpy(np.random.default_rng(2).integers(-3, 4, (6, 11, 10)).astype("float32"))
    y, indices = convc.max_pool2d(x, 3, 2, 1, return_indices=True)
    y_t, i_t = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert isinstance(y, torch.Tensor) and torch.equal(y, y_t) and torch.equal(indices, i_t)
    g = torch.ones_like(y)
    dx = convc.max_pool2d_grad_input(x, g, 3, 2, 1)
    dx_t = torch.ops.aten.max_pool2d_with_indices_backward(
        g[None], x[None], [3, 3], [2, 2], [1, 1], [1, 1], False, i_t[None])[0]
    assert isinstance(dx, torch.Tensor) and torch.allclose(dx, dx_t)
    for _ in range(2):  # the second call runs the cached plan
        a = convc.avg_pool1d(x[0], 3, 2, 1, count_include_pad=False)
        assert torch.allclose(a, F.avg_pool1d(x[0], 3, 2, 1, count_include_pad=False))
        b = convc.adaptive_avg_pool3d(x[None], (2, None, 3))[0]
        assert torch.allclose(b, F.adaptive_avg_pool3d(x[None], (2, None, 3))[0], atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_dtypes_match_pytorch(dtype):
    torch = torch_or_skip()
    F = torch.nn.functional
    x = np.random.default_rng(3).uniform(-1, 1, (2, 5, 9, 8)).astype(dtype)
    xt = torch.from_numpy(x if dtype == "float64" else x.astype("float32"))  # float16 in float32
    y, indices = convc.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    y_t, i_t = F.max_pool2d(xt, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert np.array_equal(indices, i_t.numpy()) and y.dtype == dtype
    assert relative_error(y, y_t.numpy()) <= TOLERANCE[dtype]
    a = convc.avg_pool2d(x, 3, 2, 1, count_include_pad=False, divisor_override=None)
    assert relative_error(a, F.avg_pool2d(xt, 3, 2, 1, count_include_pad=False).numpy()) \
        <= TOLERANCE[dtype]


# --- errors ------------------------------------------------------------------------------------

X = np.zeros((1, 3, 8, 8), "float32")


@pytest.mark.parametrize("call,error,message", [
    (lambda: convc.max_pool2d(X, 3, padding=2), ValueError,
     r"padding=\(2, 2\) is not valid with kernel_size=\(3, 3\): padding must be at most half"),
    (lambda: convc.max_pool2d(X, 0), ValueError, "kernel_size=0 is not valid"),
    (lambda: convc.max_pool2d(X, 3, stride=(1, 2, 3)), ValueError, "stride=.* tuple of 2 ints"),
    (lambda: convc.max_pool2d(X, 3, dilation=0), ValueError, "dilation=0 is not valid"),
    (lambda: convc.max_pool2d(X, 9), ValueError, "too small for kernel_size=.*output size"),
    (lambda: convc.max_pool2d(X, 3, ceil_mode="yes"), TypeError, "ceil_mode='yes'"),
    (lambda: convc.max_pool2d(X, 3, return_indices=2), TypeError, "return_indices=2"),
    (lambda: convc.avg_pool2d(X, 2, divisor_override=0), ValueError, "divisor_override=0"),
    (lambda: convc.avg_pool2d(X, 2, divisor_override=1.5), TypeError, "divisor_override=1.5"),
    (lambda: convc.avg_pool2d(X, 2, count_include_pad=None), TypeError, "count_include_pad"),
    (lambda: convc.adaptive_avg_pool2d(X, (0, 2)), ValueError, "output_size=.*positive"),
    (lambda: convc.adaptive_avg_pool2d(X, "1"), TypeError, "output_size='1'"),
    (lambda: convc.max_pool2d(X[0, 0, 0], 2), ValueError, "expected a 4-D batched"),
    (lambda: convc.max_pool2d(X.astype("int32"), 2), TypeError, "input has dtype int32"),
    (lambda: convc.max_pool2d(X, 2, layout="NCW"), ValueError, "layout='NCW'"),
    (lambda: convc.max_pool2d_grad_input(X, np.zeros((1, 3, 3, 3), "float32"), 2),
     ValueError, r"grad_output has shape \(1, 3, 3, 3\): expected \(1, 3, 4, 4\)"),
    (lambda: convc.max_pool2d_grad_input(X, np.zeros((1, 3, 4, 4), "float64"), 2),
     TypeError, "grad_output has dtype float64 but input has dtype float32"),
    (lambda: convc.max_pool2d_grad_input(X.shape, np.zeros((1, 3, 4, 4), "float32"), 2,
                                         indices=np.zeros((1, 3, 4, 4), "int32")),
     TypeError, "indices has dtype int32: expected int64"),
    (lambda: convc.avg_pool2d_grad_input((3, 8), np.zeros((1, 3, 4, 4), "float32"), 2),
     ValueError, r"input_size=\(3, 8\) has 2 entries"),
    (lambda: convc.compile(PoolSpec.avg_pool((1, 3, 8, 8), 2), "forward_indices"), ValueError,
     "not a kernel of avg pooling"),
])
def test_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_avg_pool1d_has_no_divisor_override():
    with pytest.raises(TypeError):
        convc.avg_pool1d(X[0], 2, divisor_override=2)  # noqa - PyTorch's signature


# --- compile, export, load, the command line, tuning ---------------------------------------------

def test_export_load_and_raw_call(tmp_path):
    """A pooling library: every kernel, its manifest (int64 indices, two outputs), convc.load's
    validating callables, and a raw tvm_ffi call."""
    import json

    import tvm_ffi

    spec = PoolSpec.max_pool((2, 9, 8, 20), 3, 2, 1, ceil_mode=True, layout="NHWC")
    path = convc.export_library(spec, tmp_path / "pool.so")
    manifest = json.loads(path.with_suffix(".json").read_text())
    args = manifest["functions"]["forward_indices"]["args"]
    assert [(a["name"], a["role"], a["dtype"]) for a in args] == [
        ("x", "input", "float32"), ("y", "output", "float32"), ("indices", "output", "int64")]
    library = convc.load(path)
    data = operands(spec)
    for op in spec.ops:
        assert check_kernel(library[op], data) <= 2e-5, op
    y, indices = library.forward_indices(data["x"])
    raw = tvm_ffi.load_module(str(path))
    dx = np.empty(spec.input_shape, "float32")
    raw["grad_input_indices"](data["dy"], indices, dx)
    assert relative_error(dx, reference(spec, "grad_input", data["x"], data["dy"])) <= 2e-5


def test_cli_compile_pooling(tmp_path, capsys):
    from convc.cli import main

    out = tmp_path / "avg.so"
    assert main(["compile", "--op", "avg_pool2d", "--input", "1,8,9,9", "--kernel-size", "3",
                 "--stride", "2", "--padding", "1", "--ceil-mode", "--no-count-include-pad",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "forward" in printed and "grad_input" in printed and "dy[1,8,5,5] -> dx[1,8,9,9]" in printed
    spec = PoolSpec.avg_pool((1, 8, 9, 9), 3, 2, 1, True, False)
    library = convc.load(out)
    assert library["forward"].spec == spec
    assert main(["compile", "--op", "max_pool1d", "--input", "1,4,10", "--kernel-size", "2",
                 "--kernels", "forward,forward_indices", "-o", str(tmp_path / "m.so")]) == 0
    assert set(convc.load(tmp_path / "m.so")) == {"forward", "forward_indices"}


@pytest.mark.parametrize("argv,message", [
    (["--op", "max_pool2d", "--input", "1,2,8,8"], "--op max_pool2d needs --kernel-size"),
    (["--op", "max_pool2d", "--input", "1,2,8,8", "--kernel-size", "2", "--weight", "2,2"],
     "--weight is for convolutions"),
    (["--op", "conv2d", "--input", "1,2,8,8", "--weight", "2,2,3,3", "--kernel-size", "3"],
     "--kernel-size is for poolings"),
    (["--op", "adaptive_avg_pool2d", "--input", "1,2,8,8"], "needs --output-size"),
    (["--op", "avg_pool1d", "--input", "1,2,8", "--kernel-size", "2", "--divisor-override", "3"],
     "avg_pool1d has none"),
    (["--op", "avg_pool2d", "--input", "1,2,8,8", "--kernel-size", "2", "--kernels", "grad_weight"],
     "not a kernel of avg pooling"),
])
def test_cli_compile_errors_speak_the_flags(argv, message, tmp_path, capsys):
    from convc.cli import main

    assert main(["compile", *argv, "-o", str(tmp_path / "x.so")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.tuning
def test_tuning_a_pooling(tmp_path):
    """The hand space takes pooling kernels: a few trials measured, records written and checked
    against the hand-written schedule (applied only where they win)."""
    from convc import tuning

    spec = PoolSpec.max_pool((1, 16, 24, 24), 3, 2, 1, layout="NHWC")
    (report,) = tuning.tune(spec, ["forward"], trials=4, log_dir=tmp_path, quiet=True)
    assert report.kernels["forward"].trials_total >= 1
    assert (tmp_path / convc.target.resolve(None).key).is_dir()
    kernel = convc.compile(spec, "forward")
    assert kernel.how in ("tuned", "hand-written")
    assert check_kernel(kernel, operands(spec)) <= 2e-5


# --- max pooling's gather at saved indices (convc.torch's double backward) --------------------

@pytest.mark.parametrize("name", ["resnet_maxpool_3x3s2", "max_dilated", "max_ceil_overhang",
                                  "1d_max", "3d_max"])
def test_gather_indices_is_the_adjoint_of_grad_input_indices(name):
    """gather_indices (not among spec.ops: compiled on demand, see pool_spec.ADJOINT_OPS) in both
    layouts: hand-written, the reference's values, and <grad_input_indices(dy, i), x> =
    <dy, gather_indices(x, i)>; an index outside its window gathers 0."""
    pool, shape, kwargs = {k: v for table in FAMILIES.values() for k, v in table.items()}[name]
    for last in (False, True):
        spec = pool_spec(pool, shape, kwargs, last)
        data = operands(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            kernel = convc.compile(spec, "gather_indices")
        assert kernel.how == "hand-written" and "gather_indices" not in spec.ops
        assert check_kernel(kernel, data) == 0.0
        dx = convc.compile(spec, "grad_input_indices")(data["dy"], data["indices"])
        lhs = float((dx.astype(np.float64) * data["x"]).sum())
        rhs = float((data["dy"].astype(np.float64) * kernel(data["x"], data["indices"])).sum())
        assert abs(lhs - rhs) <= 1e-5 * (1 + abs(lhs))
        wrong = np.zeros_like(data["indices"]) + (int(np.prod(spec.in_size)) - 1)
        got = kernel(data["x"], wrong)
        assert check_kernel(kernel, {**data, "indices": wrong}) == 0.0 and (got == 0).any()
