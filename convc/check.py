"""Checking kernels against the NumPy references, in any layout.

convc.reference speaks PyTorch's channels-first convention and computes in float64; this module
moves arrays between a spec's layout and that convention and measures errors. The demo, the
benchmarks and the tests share it.
"""

from __future__ import annotations

import numpy as np

from . import reference as ref
from .spec import ConvSpec

# Error allowed, relative to the largest magnitude of the reference result (at least 1).
TOLERANCE = {
    # float64 sums of at most ~10^4 products: rounding ~1e-16 per operation.
    "float64": 1e-11,
    # float32: ~6e-8 per rounding; sums of up to ~10^4 products in another order than the float64
    # reference grow like sqrt(n) * eps. 2e-5 leaves a margin of ~10x.
    "float32": 2e-5,
    # float16 in, float32 accumulation, float16 out: the final rounding alone is 2^-11 ≈ 4.9e-4
    # of each element; 2e-3 of the largest element leaves room for the accumulation order.
    "float16": 2e-3,
}


def relative_error(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} != reference shape {expected.shape}")
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


def operands(spec: ConvSpec, seed: int = 0) -> dict:
    """Random x, w, b (None without bias) and dy in spec's layout and dtype, uniform in [-1, 1]."""
    rng = np.random.default_rng(seed)

    def draw(shape):
        return rng.uniform(-1, 1, size=shape).astype(spec.dtype)

    data = {"x": draw(spec.input_shape), "w": draw(spec.weight_shape),
            "b": draw(spec.bias_shape) if spec.bias else None, "dy": draw(spec.output_shape)}
    if spec.scale_shift:
        data["scale"], data["shift"] = draw(spec.bias_shape), draw(spec.bias_shape)
    if spec.residual:
        data["residual"] = draw(spec.output_shape)
    return data


def _to_cf(spec, array, weight=False):
    if not spec.channels_last:
        return array
    return ref.weight_to_oi(array) if weight else ref.to_channels_first(array)


def _from_cf(spec, array, weight=False):
    if not spec.channels_last:
        return array
    return ref.weight_to_hwio(array) if weight else ref.to_channels_last(array)


def reference(spec: ConvSpec, op: str, x=None, w=None, b=None, dy=None, formulation="direct",
              scale=None, shift=None, residual=None):
    """The reference result of `op` in spec's layout (float64), forward with its fused epilogue
    (scale, shift, residual, spec.activation). formulation: direct | im2col."""
    pad = list(zip(spec.pad_before, spec.pad_after))
    args = (spec.stride, pad, spec.dilation, spec.groups)
    mode = {"mode": spec.padding_mode}
    im2col = formulation == "im2col"
    if op == "forward":
        f = ref.forward_im2col if im2col else ref.forward
        y = f(_to_cf(spec, x), _to_cf(spec, w, True), *args, bias=b, **mode)
        y = ref.epilogue(y, scale, shift, None if residual is None else _to_cf(spec, residual),
                         spec.activation, spec.negative_slope)
        return _from_cf(spec, y)
    if op == "grad_input":
        f = ref.grad_input_im2col if im2col else ref.grad_input
        size = (spec.batch, spec.in_channels, *spec.in_size)
        return _from_cf(spec, f(size, _to_cf(spec, w, True), _to_cf(spec, dy), *args, **mode))
    if op == "grad_weight":
        f = ref.grad_weight_im2col if im2col else ref.grad_weight
        size = (spec.out_channels, spec.in_channels // spec.groups, *spec.kernel)
        return _from_cf(spec, f(_to_cf(spec, x), size, _to_cf(spec, dy), *args, **mode), True)
    raise ValueError(f"op={op!r}")


def kernel_inputs(spec: ConvSpec, op: str, data: dict) -> list:
    """The arrays a Kernel of `op` takes, in parameter order, from an operands() dict."""
    if op == "forward":
        return ([data["x"], data["w"]] + ([data["b"]] if spec.bias else [])
                + ([data["scale"], data["shift"]] if spec.scale_shift else [])
                + ([data["residual"]] if spec.residual else []))
    if op == "grad_input":
        return [data["dy"], data["w"]]
    return [data["x"], data["dy"]]


def check_kernel(kernel, data: dict, expected=None) -> float:
    """Run `kernel` on `data` (an operands() dict); return its error relative to the reference."""
    spec, op = kernel.spec, kernel.op
    if expected is None:
        expected = reference(spec, op, **data)
    return relative_error(kernel(*kernel_inputs(spec, op, data)), expected)
