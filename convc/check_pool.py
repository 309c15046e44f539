"""Checking pooling kernels against the NumPy references, in any layout (tests, bench).

convc.reference_pool speaks channels-first and computes in float64; this module moves arrays
between a PoolSpec's layout and that convention, draws operands and names each kernel's inputs.
"""

from __future__ import annotations

import numpy as np

from . import reference_pool as ref
from .check import relative_error
from .pool_spec import PoolSpec
from .reference import to_channels_first, to_channels_last


def _cf(spec: PoolSpec, array):
    return to_channels_first(array) if spec.channels_last else array


def _layout(spec: PoolSpec, array):
    return np.ascontiguousarray(to_channels_last(array)) if spec.channels_last else array


def operands(spec: PoolSpec, seed: int = 0, ties: bool = False, indices: bool = True) -> dict:
    """Random x and dy in spec's layout and dtype (uniform in [-1, 1]; with `ties`, x holds only
    a few distinct values, so most windows have several maxima), and (`indices`) the saved
    indices of a max pool, from the reference."""
    rng = np.random.default_rng(seed)
    if ties:
        x = rng.integers(-2, 3, size=spec.input_shape).astype(spec.dtype)
    else:
        x = rng.uniform(-1, 1, size=spec.input_shape).astype(spec.dtype)
    data = {"x": x, "dy": rng.uniform(-1, 1, size=spec.output_shape).astype(spec.dtype)}
    if spec.pool == "max" and indices:
        data["indices"] = reference(spec, "forward_indices", x)[1]
    return data


def reference(spec: PoolSpec, op: str, x=None, dy=None, indices=None):
    """The reference result of `op` in spec's layout: float64 values (a (values, int64 indices)
    pair for forward_indices). grad_input of a max pool takes x (its maxima found again);
    grad_input_indices takes indices, gather_indices x and indices."""
    spec.check_op(op)
    size = (spec.batch, spec.channels, *spec.in_size)
    if spec.pool == "max":
        if op == "gather_indices":
            return _layout(spec, ref.max_pool_gather(_cf(spec, x), _cf(spec, indices),
                                                     spec.kernel, spec.stride, spec.padding,
                                                     spec.dilation, spec.ceil_mode))
        if op in ("forward", "forward_indices") or (op == "grad_input" and indices is None):
            y, found = ref.max_pool(_cf(spec, x), spec.kernel, spec.stride, spec.padding,
                                    spec.dilation, spec.ceil_mode)
            if op == "forward":
                return _layout(spec, y)
            if op == "forward_indices":
                return _layout(spec, y), _layout(spec, found)
            indices = _layout(spec, found)
        return _layout(spec, ref.max_pool_grad_input(size, _cf(spec, dy), _cf(spec, indices)))
    if spec.pool == "avg":
        window = (spec.kernel, spec.stride, spec.padding, spec.ceil_mode, spec.count_include_pad,
                  spec.divisor_override)
        if op == "forward":
            return _layout(spec, ref.avg_pool(_cf(spec, x), *window))
        return _layout(spec, ref.avg_pool_grad_input(size, _cf(spec, dy), *window))
    if op == "forward":
        return _layout(spec, ref.adaptive_avg_pool(_cf(spec, x), spec.output_size))
    return _layout(spec, ref.adaptive_avg_pool_grad_input(size, _cf(spec, dy)))


def kernel_inputs(spec: PoolSpec, op: str, data: dict) -> list:
    """The arrays a Kernel of `op` takes, in parameter order, from an operands() dict."""
    return [data[name] for name, _, _ in spec.signature(op)[:-(2 if op == "forward_indices"
                                                               else 1)]]


def error(actual, expected) -> float:
    """relative_error where both are finite; non-finite elements (NaN, a window of -inf) must
    be the same in both (else inf)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    finite = np.isfinite(expected)
    if not np.array_equal(actual[~finite], expected[~finite], equal_nan=True):
        return float("inf")
    return relative_error(np.where(finite, actual, 0), np.where(finite, expected, 0))


def check_kernel(kernel, data: dict) -> float:
    """Run a pooling kernel on `data` (an operands() dict); -> its error relative to the
    reference (see error; forward_indices' indices must match exactly, else AssertionError)."""
    spec, op = kernel.spec, kernel.op
    expected = reference(spec, op, **data)
    got = kernel(*kernel_inputs(spec, op, data))
    if op == "forward_indices":
        (values, indices), (want, want_indices) = got, expected
        mismatch = np.argwhere(indices != want_indices)
        if len(mismatch):
            raise AssertionError(f"{spec.key} forward_indices: {len(mismatch)} indices differ "
                                 f"from the reference, first at {tuple(mismatch[0])}")
        return error(values, want)
    return error(got, expected)
