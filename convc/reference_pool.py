"""Plain NumPy references for pooling and its adjoints. Imports nothing from TVM or convc.

Slow and obvious on purpose: a loop over output positions, each window listed tap by tap in scan
order, the rules of PyTorch's CPU kernels written out literally (max: start from -inf at the
window's first valid element, take a value that is greater or NaN; avg: divisor_override, else
the window clipped to the padded input or to the input; empty window -> 0). The adjoints scatter
into the input (the adjoint read literally), where the kernels gather.

Arrays are channels-first, (N, C, *spatial); computation in float64 (or wider), callers cast.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def output_size(size, kernel, stride, padding, dilation, ceil_mode):
    out = []
    for i, k, s, p, d in zip(size, kernel, stride, padding, dilation):
        span = i + 2 * p - d * (k - 1) - 1
        o = math.floor(span / s) + 1 if not ceil_mode else math.ceil(span / s) + 1
        if ceil_mode and (o - 1) * s >= i + p:
            o -= 1
        out.append(o)
    return tuple(out)


def _windows(size, kernel, stride, padding, dilation, ceil_mode):
    """For every output position: (its index, the valid input positions in scan order)."""
    out = output_size(size, kernel, stride, padding, dilation, ceil_mode)
    for o in itertools.product(*[range(n) for n in out]):
        per_axis = [[t for t in (oi * s - p + r * d for r in range(k)) if 0 <= t < i]
                    for oi, i, k, s, p, d in zip(o, size, kernel, stride, padding, dilation)]
        yield o, list(itertools.product(*per_axis))


def _flat(position, size):
    return int(np.ravel_multi_index(position, size))


def max_pool(x, kernel, stride, padding, dilation, ceil_mode):
    """-> (y, indices): indices are flat positions in the input's spatial plane (int64)."""
    x = np.asarray(x, dtype=np.float64)
    n, c, *size = x.shape
    out = output_size(size, kernel, stride, padding, dilation, ceil_mode)
    y = np.empty((n, c, *out))
    indices = np.empty((n, c, *out), np.int64)
    for o, taps in _windows(size, kernel, stride, padding, dilation, ceil_mode):
        best = np.full((n, c), -np.inf)
        where = np.full((n, c), _flat(taps[0], size), np.int64)
        for tap in taps:
            value = x[(slice(None), slice(None), *tap)]
            take = (value > best) | np.isnan(value)
            best = np.where(take, value, best)
            where = np.where(take, _flat(tap, size), where)
        y[(slice(None), slice(None), *o)] = best
        indices[(slice(None), slice(None), *o)] = where
    return y, indices


def max_pool_grad_input(input_size, dy, indices):
    """dx: every dy added into the input position its window's maximum came from."""
    dy = np.asarray(dy, dtype=np.float64)
    n, c, *size = input_size
    dx = np.zeros((n, c, math.prod(size)))
    flat_dy = dy.reshape(n, c, -1)
    flat_idx = np.asarray(indices).reshape(n, c, -1)
    for b in range(n):
        for ch in range(c):
            np.add.at(dx[b, ch], flat_idx[b, ch], flat_dy[b, ch])
    return dx.reshape(n, c, *size)


def max_pool_gather(x, indices, kernel, stride, padding, dilation, ceil_mode):
    """y: x at each saved index, where the index is a position of its own window (else 0)."""
    x = np.asarray(x, dtype=np.float64)
    n, c, *size = x.shape
    flat_x = x.reshape(n, c, -1)
    indices = np.asarray(indices)
    y = np.zeros(indices.shape)
    for o, taps in _windows(size, kernel, stride, padding, dilation, ceil_mode):
        window = {_flat(tap, size) for tap in taps}
        for b in range(n):
            for ch in range(c):
                index = int(indices[(b, ch, *o)])
                if index in window:
                    y[(b, ch, *o)] = flat_x[b, ch, index]
    return y


def _avg_divisor(o, size, kernel, stride, padding, ceil_mode, count_include_pad,
                 divisor_override):
    """(divisor, empty) of output position `o`, as PyTorch's avg_pool kernels compute it."""
    padded, clipped = 1, 1
    for oi, i, k, s, p in zip(o, size, kernel, stride, padding):
        start = oi * s - p
        end = min(start + k, i + p)
        padded *= end - start
        clipped *= max(0, min(end, i) - max(start, 0))
    if clipped == 0:
        return None
    if divisor_override is not None:
        return divisor_override
    return padded if count_include_pad else clipped


def avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    x = np.asarray(x, dtype=np.float64)
    n, c, *size = x.shape
    ones = (1,) * len(size)
    out = output_size(size, kernel, stride, padding, ones, ceil_mode)
    y = np.zeros((n, c, *out))
    for o, taps in _windows(size, kernel, stride, padding, ones, ceil_mode):
        divisor = _avg_divisor(o, size, kernel, stride, padding, ceil_mode, count_include_pad,
                               divisor_override)
        if divisor is None:
            continue  # empty window: 0
        total = sum(x[(slice(None), slice(None), *tap)] for tap in taps)
        y[(slice(None), slice(None), *o)] = total / divisor
    return y


def avg_pool_grad_input(input_size, dy, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override):
    dy = np.asarray(dy, dtype=np.float64)
    n, c, *size = input_size
    ones = (1,) * len(size)
    dx = np.zeros((n, c, *size))
    for o, taps in _windows(size, kernel, stride, padding, ones, ceil_mode):
        divisor = _avg_divisor(o, size, kernel, stride, padding, ceil_mode, count_include_pad,
                               divisor_override)
        if divisor is None:
            continue
        for tap in taps:
            dx[(slice(None), slice(None), *tap)] += dy[(slice(None), slice(None), *o)] / divisor
    return dx


def _adaptive_windows(size, out):
    for o in itertools.product(*[range(m) for m in out]):
        ranges = [range((oi * i) // m, -((-(oi + 1) * i) // m)) for oi, i, m in zip(o, size, out)]
        yield o, ranges


def adaptive_avg_pool(x, out):
    x = np.asarray(x, dtype=np.float64)
    n, c, *size = x.shape
    y = np.empty((n, c, *out))
    for o, ranges in _adaptive_windows(size, out):
        region = x[(slice(None), slice(None), *[slice(r.start, r.stop) for r in ranges])]
        y[(slice(None), slice(None), *o)] = region.mean(axis=tuple(range(2, 2 + len(size))))
    return y


def adaptive_avg_pool_grad_input(input_size, dy):
    dy = np.asarray(dy, dtype=np.float64)
    n, c, *size = input_size
    out = dy.shape[2:]
    dx = np.zeros((n, c, *size))
    for o, ranges in _adaptive_windows(size, out):
        count = math.prod(len(r) for r in ranges)
        region = (slice(None), slice(None), *[slice(r.start, r.stop) for r in ranges])
        dx[region] += (dy[(slice(None), slice(None), *o)] / count)[(...,) + (None,) * len(size)]
    return dx
