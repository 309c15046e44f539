"""Shared test machinery: one helper that checks forward and both adjoints against the NumPy
references, tolerances by dtype (with their reasons), and a private kernel cache per run."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

# A fresh on-disk kernel cache for every test session: tests must not pass because of kernels a
# previous version of convc left behind. Set before convc is imported anywhere.
os.environ["CONVC_CACHE_DIR"] = tempfile.mkdtemp(prefix="convc-test-cache-")

import convc  # noqa: E402
from convc import reference as ref  # noqa: E402
from convc.spec import ConvSpec  # noqa: E402

# Error allowed, relative to the largest magnitude of the reference result.
TOLERANCE = {
    # float64 sums of at most a few thousand products: rounding ~1e-16 per operation.
    "float64": 1e-11,
    # float32: ~6e-8 per rounding, sums of up to ~10^4 products in a different order than the
    # float64 reference: errors grow like sqrt(n) * eps; 2e-5 leaves a margin of ~10x.
    "float32": 2e-5,
    # float16 in, float32 accumulation, float16 out: the final rounding alone is 2^-11 ≈ 4.9e-4
    # relative to each element; 2e-3 of the largest element leaves room for accumulation order.
    "float16": 2e-3,
}


def random_array(shape, dtype, rng, scale=1.0):
    return (rng.uniform(-1, 1, size=shape) * scale).astype(dtype)


def assert_close(actual, expected, dtype, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = float(np.abs(actual - expected).max(initial=0.0)) / scale
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.3g} > {TOLERANCE[dtype]} ({dtype})"


def to_cf(spec, array, kind):
    """An array in spec's layout -> PyTorch's channels-first convention (references' input)."""
    if not spec.channels_last:
        return array
    return ref.weight_to_oi(array) if kind == "weight" else ref.to_channels_first(array)


def from_cf(spec, array, kind):
    if not spec.channels_last:
        return array
    return ref.weight_to_hwio(array) if kind == "weight" else ref.to_channels_last(array)


def references(spec: ConvSpec, x, w, b, dy, formulation="direct"):
    """The three results in spec's layout, computed by the NumPy references (float64)."""
    pad = list(zip(spec.pad_before, spec.pad_after))
    args = (spec.stride, pad, spec.dilation, spec.groups)
    xf, wf, dyf = to_cf(spec, x, "data"), to_cf(spec, w, "weight"), to_cf(spec, dy, "data")
    input_cf = (spec.batch, spec.in_channels, *spec.in_size)
    weight_cf = (spec.out_channels, spec.in_channels // spec.groups, *spec.kernel)
    if formulation == "direct":
        y = ref.forward(xf, wf, *args, bias=b)
        dx = ref.grad_input(input_cf, wf, dyf, *args)
        dw = ref.grad_weight(xf, weight_cf, dyf, *args)
    else:
        y = ref.forward_im2col(xf, wf, *args, bias=b)
        dx = ref.grad_input_im2col(input_cf, wf, dyf, *args)
        dw = ref.grad_weight_im2col(xf, weight_cf, dyf, *args)
    return from_cf(spec, y, "data"), from_cf(spec, dx, "data"), from_cf(spec, dw, "weight")


def operands(spec: ConvSpec, seed=0):
    rng = np.random.default_rng(seed)
    x = random_array(spec.input_shape, spec.dtype, rng)
    w = random_array(spec.weight_shape, spec.dtype, rng)
    b = random_array(spec.bias_shape, spec.dtype, rng) if spec.bias else None
    dy = random_array(spec.output_shape, spec.dtype, rng)
    return x, w, b, dy


def check_spec(spec: ConvSpec, target=None, ops=("forward", "grad_input", "grad_weight"), seed=0):
    """Compile the ops of `spec` for `target` and compare each with the NumPy reference."""
    x, w, b, dy = operands(spec, seed)
    y_ref, dx_ref, dw_ref = references(spec, x, w, b, dy)
    kernels = {}
    for op in ops:
        kernel = convc.compile(spec, op, target)
        kernels[op] = kernel
        if op == "forward":
            got = kernel(x, w, b) if spec.bias else kernel(x, w)
            assert_close(got, y_ref, spec.dtype, f"forward {spec.key} [{kernel.how}]")
        elif op == "grad_input":
            assert_close(kernel(dy, w), dx_ref, spec.dtype, f"grad_input {spec.key} [{kernel.how}]")
        else:
            assert_close(kernel(x, dy), dw_ref, spec.dtype, f"grad_weight {spec.key} [{kernel.how}]")
    return kernels


def make_spec(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *,
              layout=None, dtype="float32", bias=False):
    return ConvSpec.from_shapes(input_shape, weight_shape, stride, padding, dilation, groups,
                                layout=layout, dtype=dtype, bias=bias)


def channels_last_variant(spec: ConvSpec) -> ConvSpec:
    import dataclasses

    from convc.spec import LAYOUTS

    return dataclasses.replace(spec, layout=LAYOUTS[spec.ndim][1])


def torch_or_skip():
    return pytest.importorskip("torch", reason="PyTorch (the optional 'torch' extra) is not installed")
