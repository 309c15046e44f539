"""Pooling and its adjoints as TVM tensor expressions: max, average, adaptive average; N-d and
layout-generic, one declaration per kernel. Nothing here names a target.

Every pooling reads, per spatial axis, the windows of an :class:`Axis`: output o reads input
positions o*s - p + r*d for taps r in [0, k) (adaptive: floor(o*I/O) + r for r below the window's
length). Each adjoint is the same windows read backwards: input position p gathers from the
outputs whose windows cover it, enumerated by `Axis.cover` (o = floor((p + pad)/s) - j for
j in [0, (k-1)*d // s + 1); adaptive: o = floor(p*O/I) + j), so a kernel writes every element of
dx once, with no scatter and no atomics:

    avg:  dx[p] = sum_{o covers p} dy[o] * scale[o]           scale = 1/divisor (or 0: empty)
    max:  dx[p] = sum_{o covers p} (argmax[o] == flat(p)) * dy[o]

and the max adjoint's own adjoint (w.r.t. dy) is the forward's window again:
y[o] = sum_{taps t of o} (indices[o] == flat(t)) * x[t] ("gather_indices").

Stages: "pad" (max: -inf, avg: 0; absent without padding or overhang), "pool" (the forward
reduction), "argmax" and "indices" (max: where the maximum came from), "scale" (the divisor's
reciprocal per output position, where it is not one constant), "dx" (the gather), "output" (the
float16 cast, or avg's division).
"""

from __future__ import annotations

import dataclasses
import math

import tvm
from tvm import te, tirx

from ..pool_spec import INDEX_DTYPE, PoolSpec
from .common import acc_dtype, data_index, dilate_pad, make_func, split_data_index

ATTR = "convc.pool_spec"
NEG_INF = float("-inf")


# --- windows, one axis at a time ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Axis:
    """The windows of one spatial axis: I inputs, O outputs. Regular windows (max, avg, and
    adaptive pools whose size divides: k = s = I/O) have kernel, stride, padding, dilation;
    irregular adaptive windows have start floor(o*I/O) and end ceil((o+1)*I/O)."""

    size: int
    out: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    adaptive: bool = False

    @classmethod
    def of(cls, spec: PoolSpec) -> list:
        if spec.adaptive:
            return [cls(i, o, i // o, i // o) if i % o == 0 else cls(i, o, adaptive=True)
                    for i, o in zip(spec.in_size, spec.output_size)]
        return [cls(i, o, k, s, p, d) for i, o, k, s, p, d in
                zip(spec.in_size, spec.out_size, spec.kernel, spec.stride, spec.padding,
                    spec.dilation)]

    # forward: the taps of output o
    @property
    def taps(self) -> int:
        if not self.adaptive:
            return self.kernel
        return max(self._end(o) - self._start(o) for o in range(self.out))

    @property
    def span(self) -> int:
        """Padded extent every regular window fits in: (O-1)*s + (k-1)*d + 1 from -padding."""
        return (self.out - 1) * self.stride + (self.kernel - 1) * self.dilation + 1

    def _start(self, o):
        return (o * self.size) // self.out if isinstance(o, int) else \
            tirx.floordiv(o * self.size, self.out)

    def _end(self, o):
        if isinstance(o, int):
            return -((-(o + 1) * self.size) // self.out)
        return tirx.floordiv((o + 1) * self.size + self.out - 1, self.out)

    def tap(self, o, r):
        """(position in the unpadded input, condition or None) of tap r of output o. Regular:
        the position may lie in the padding (the condition says whether it is inside)."""
        if self.adaptive:
            start = self._start(o)
            return start + r, start + r < self._end(o)
        position = o * self.stride - self.padding + r * self.dilation
        lo, hi = -self.padding, self.span - self.padding - 1
        conditions = ([position >= 0] if lo < 0 else []) + ([position < self.size]
                                                           if hi >= self.size else [])
        return position, (tvm.tirx.all(*conditions) if conditions else None)

    # adjoint: the outputs covering input p
    @property
    def covers(self) -> int:
        """The most outputs whose windows cover one input position."""
        if not self.adaptive:
            return (self.kernel - 1) * self.dilation // self.stride + 1
        return max(self._cover_end(p) - (p * self.out) // self.size for p in range(self.size))

    def _cover_end(self, p):
        if isinstance(p, int):
            return -((-(p + 1) * self.out) // self.size)
        return tirx.floordiv((p + 1) * self.out + self.size - 1, self.size)

    def cover(self, p, j):
        """(output o, condition or None): the j-th output whose window covers input p, and
        whether there is one (o in range, p on one of its taps). o is clipped into [0, O), an
        index safe to read whatever the condition says: see _in_range."""
        if self.adaptive:
            o = tirx.floordiv(p * self.out, self.size) + j
            return self._in_range(o, low=False, high=True, also=[o < self._cover_end(p)])
        q = p + self.padding
        o = tirx.floordiv(q, self.stride) - j
        offset = tirx.floormod(q, self.stride) + j * self.stride  # p's tap, times the dilation
        last = self.stride - 1 + (self.covers - 1) * self.stride
        if self.dilation > 1:
            taps = [tirx.floormod(offset, self.dilation) == 0,
                    tirx.floordiv(offset, self.dilation) < self.kernel]
        else:
            taps = [offset < self.kernel] if last >= self.kernel else []
        return self._in_range(o, low=self.covers > 1,
                              high=(self.size - 1 + self.padding) // self.stride > self.out - 1,
                              also=taps)

    def _in_range(self, o, low: bool, high: bool, also):
        """(o clipped into [0, O), condition): the condition tests o against its clipped self.

        The adjoints read dy (and the saved positions, avg's divisor table) at the covering
        outputs inside a Select, and a vectorized Select loads both of its arms for every lane.
        Written as `o >= 0 and o < O` the condition lets TVM's simplifier, which simplifies a
        Select's true arm under its condition, drop the clip as redundant: the loads then ran up
        to a row before dy and past its end (a segfault when that page was unmapped: ResNet's
        8x64x112x112 max pool backward right after a forward). `clipped == o` states the same
        range without a bound the simplifier can lift off it."""
        clipped = o
        if high:
            clipped = tvm.te.min(clipped, self.out - 1)
        if low:
            clipped = tvm.te.max(clipped, 0)
        conditions = ([clipped == o] if low or high else []) + list(also)
        return clipped, (tvm.tirx.all(*conditions) if conditions else None)

    # avg: the divisor's factor on this axis
    def count(self, o, include_pad: bool):
        """Window length on this axis (avg's divisor is the product): clipped to the padded input
        (include_pad) or to the input; None where it is k for every window."""
        if self.adaptive:
            return self._end(o) - self._start(o)
        start = o * self.stride - self.padding
        if include_pad:
            if self.span - self.padding <= self.size + self.padding:  # no window overhangs
                return None
            return tvm.te.min(start + self.kernel, self.size + self.padding) - start
        if self.padding == 0 and self.span <= self.size:
            return None
        return tvm.te.min(start + self.kernel, self.size) - tvm.te.max(start, 0)


def _all(conditions):
    conditions = [c for c in conditions if c is not None]
    return tvm.tirx.all(*conditions) if conditions else None


def _flat(positions, axes):
    """Row-major flat index of a spatial position (PyTorch's indices)."""
    flat = 0
    for p, axis in zip(positions, axes):
        flat = flat * axis.size + p
    return flat


# Bit patterns of the float types: a NaN is all exponent bits and a non-zero mantissa.
_BITS = {"float16": ("int16", 0x7FFF, 0x7C00), "float32": ("int32", 0x7FFFFFFF, 0x7F800000),
         "float64": ("int64", 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


def isnan(value, dtype: str):
    """value is a NaN, as an integer test on its bits. tirx.isnan is a call TVM 0.27's vectorizer
    does not know, so a loop using it runs lane by lane (max pooling 3x3/2 NHWC: 2644 scalar
    loads, 10x slower), and `v != v` is simplified to false."""
    itype, magnitude, infinity = _BITS[dtype]
    bits = tvm.tirx.reinterpret(itype, value)
    return tvm.tirx.bitwise_and(bits, tvm.tirx.const(magnitude, itype)) > tvm.tirx.const(
        infinity, itype)


def _nanmax(dtype: str, ordered_test: bool = False):
    """max that lets a NaN win and keeps it (PyTorch: `val > maxval || isnan(val)`).

    Two spellings of the same reducer. By default the NaN test is on the value's bits (see
    isnan). With `ordered_test`, as max(v, acc) where v is ordered (`-inf <= v`, false only for
    a NaN; TVM's simplifier keeps it, while it folds `v != v` and rewrites `not (v <= acc)` as
    if NaNs did not exist), else v: LLVM makes each tap one vcmpordps and one merge-masked
    vmaxps. Vectors along the channels (channels-last) run it 1.5x faster than the bit test
    (ResNet's 3x3/2 max pool, 8x112x112x64 NHWC, 2 threads, Zen 5: 822 against 1255 us; a
    NaN-blind max: 372 us); along a channels-first row TVM ran it lane by lane (8.8 against
    3.1 ms), so those keep the bit test."""
    if ordered_test:
        def combine(acc, v):
            ordered = tvm.tirx.const(NEG_INF, dtype) <= v
            return tvm.tirx.Select(ordered, tvm.tirx.Select(v > acc, v, acc), v)
    else:
        def combine(acc, v):
            return tvm.tirx.Select(tvm.tirx.any(v > acc, isnan(v, dtype)), v, acc)
    return te.comm_reducer(combine, lambda t: tvm.tirx.const(NEG_INF, t), name="nanmax")


# --- stages shared by the declarations ---------------------------------------------------------

def _padded(x, spec: PoolSpec, axes, fill: float):
    """x on the grid every regular window reads (stage "pad"; x itself when nothing is added)."""
    return dilate_pad(x, spec.channels_last, [a.span for a in axes], (1,) * spec.ndim,
                      [a.padding for a in axes], name="pad", fill=fill)


def _window_sum(x, spec: PoolSpec, axes, name: str):
    """sum over each window (accumulated in acc_dtype), zero padding: stage `name`."""
    cl, acc = spec.channels_last, acc_dtype(spec.dtype)
    irregular = any(a.adaptive for a in axes)
    data = x if irregular else _padded(x, spec, axes, 0.0)
    taps = [te.reduce_axis((0, a.taps), name=f"r{i}") for i, a in enumerate(axes)]

    def element(*idx):
        n, c, out = split_data_index(cl, idx)
        if not irregular:
            pos = [o * a.stride + r * a.dilation for o, r, a in zip(out, taps, axes)]
            return te.sum(data[data_index(cl, n, c, pos)].astype(acc), axis=taps)
        pos, conditions = zip(*[a.tap(o, r) for o, r, a in zip(out, taps, axes)])
        safe = [tvm.te.min(p, a.size - 1) for p, a in zip(pos, axes)]
        value = data[data_index(cl, n, c, safe)].astype(acc)
        return te.sum(tvm.tirx.if_then_else(_all(conditions), value, tvm.tirx.const(0, acc)),
                      axis=taps)

    return te.compute(spec.output_shape, element, name=name)


def _scale(spec: PoolSpec, axes):
    """1 / divisor per output position: a float (one constant) or stage "scale" over the output's
    spatial grid (0 for an empty window)."""
    acc = acc_dtype(spec.dtype)
    if spec.divisor_override is not None:
        return 1.0 / spec.divisor_override
    include = spec.count_include_pad
    if all(a.count(0, include) is None for a in axes) and not any(a.adaptive for a in axes):
        return 1.0 / math.prod(a.kernel for a in axes)

    def element(*out):
        divisor = 1
        for o, a in zip(out, axes):
            count = a.count(o, include)
            divisor = divisor * (a.kernel if count is None else count)
        return tvm.tirx.Select(divisor > 0, tvm.tirx.const(1, acc) / divisor.astype(acc),
                               tvm.tirx.const(0, acc))

    return te.compute(spec.out_size, element, name="scale")


def _scaled(value, scale, spatial, dtype: str):
    if isinstance(scale, float):
        return value if scale == 1.0 else value * tvm.tirx.const(scale, dtype)
    return value * scale[tuple(spatial)]


def _cast(data, spec: PoolSpec, name="output"):
    if data.dtype == spec.dtype:
        return data
    return te.compute(data.shape, lambda *i: data[i].astype(spec.dtype), name=name)


def _placeholders(spec: PoolSpec, op: str):
    return {name: te.placeholder(shape, dtype, name=name)
            for name, shape, dtype in spec.signature(op)[:-_outputs(op)]}


def _outputs(op: str) -> int:
    return 2 if op == "forward_indices" else 1


# --- the declarations --------------------------------------------------------------------------

def _window_max(xp, spec: PoolSpec, axes, name: str = "pool"):
    """max over each window of the -inf padded input: stage `name`, in spec.dtype."""
    cl = spec.channels_last
    taps = [te.reduce_axis((0, a.kernel), name=f"r{i}") for i, a in enumerate(axes)]
    nanmax = _nanmax(spec.dtype, ordered_test=spec.channels_last)

    def element(*idx):
        n, c, out = split_data_index(cl, idx)
        pos = [o * a.stride + r * a.dilation for o, r, a in zip(out, taps, axes)]
        return nanmax(xp[data_index(cl, n, c, pos)], axis=taps)

    return te.compute(spec.output_shape, element, name=name)


def max_forward(spec: PoolSpec):
    """y[n, c, o] = max over the window of x (padding -inf; NaN wins and stays).

    Tensors: x (N, C, *in) / (N, *in, C); y (N, C, *out) / (N, *out, C).
    Stages: "pad" (-inf), "pool" (the reduction, in spec.dtype: max needs no wider type)."""
    axes = Axis.of(spec)
    x = _placeholders(spec, "forward")["x"]
    y = _window_max(_padded(x, spec, axes, NEG_INF), spec, axes)
    return make_func([x, y], spec, "forward", ATTR)


def _max_and_index(x, spec: PoolSpec, axes, index_dtype: str):
    """(values, indices): each window's maximum ("pool") and where it came from, PyTorch's
    choice: the first position holding the maximum in scan order, or, when the maximum is NaN,
    the last NaN (its `val > maxval || isnan(val)` update).

    The position is a second reduction over the window ("argmax": the least key, where the key
    of a valid tap holding the maximum is its flat position, or for NaN, last - position), decoded
    by "indices". Two single-output reductions rather than one over (value, index) pairs: TVM
    0.27 vectorizes a two-output reduction block wrongly (every lane got the last lane's pair)."""
    cl = spec.channels_last
    xp = _padded(x, spec, axes, NEG_INF)
    values = _window_max(xp, spec, axes)
    taps = [te.reduce_axis((0, a.kernel), name=f"t{i}") for i, a in enumerate(axes)]
    last = tvm.tirx.const(math.prod(spec.in_size) - 1, index_dtype)
    never = tvm.tirx.max_value(index_dtype)

    def key(*idx):
        n, c, out = split_data_index(cl, idx)
        pos, conditions = zip(*[a.tap(o, r) for o, r, a in zip(out, taps, axes)])
        value = xp[data_index(cl, n, c, [o * a.stride + r * a.dilation
                                          for o, r, a in zip(out, taps, axes)])]
        best = values[idx]
        nan = isnan(best, spec.dtype)
        flat = _flat(pos, axes).astype(index_dtype)
        hit = tvm.tirx.any(value == best, tvm.tirx.all(nan, isnan(value, spec.dtype)))
        hit = hit if _all(conditions) is None else tvm.tirx.all(_all(conditions), hit)
        return te.min(tvm.tirx.Select(hit, tvm.tirx.Select(nan, last - flat, flat), never),
                      axis=taps)

    keys = te.compute(spec.output_shape, key, name="argmax")
    indices = te.compute(spec.output_shape, lambda *i: tvm.tirx.Select(
        isnan(values[i], spec.dtype), last - keys[i], keys[i]), name="indices")
    return values, indices


def max_forward_indices(spec: PoolSpec):
    """(y, indices) = the window's maximum and its flat input position (max_pool*d with
    return_indices=True). Tensors: x; y and indices (int64) shaped as the output.
    Stages: "pad" (-inf), "pool" (values), "argmax" and "indices" (positions)."""
    x = _placeholders(spec, "forward_indices")["x"]
    values, indices = _max_and_index(x, spec, Axis.of(spec), INDEX_DTYPE)
    return make_func([x, values, indices], spec, "forward_indices", ATTR)


def _gather(spec: PoolSpec, axes, term, name="dx"):
    """dx[n, c, p] = sum over the outputs o covering p of term(n, c, o, p, condition):
    the adjoint's one loop nest (reduction axes j per spatial axis), in acc_dtype."""
    cl, acc = spec.channels_last, acc_dtype(spec.dtype)
    js = [te.reduce_axis((0, a.covers), name=f"j{i}") for i, a in enumerate(axes)]

    def element(*idx):
        n, c, pos = split_data_index(cl, idx)
        outs, conditions = zip(*[a.cover(p, j) for p, j, a in zip(pos, js, axes)])
        value = term(n, c, outs, pos)
        inside = _all(conditions)
        if inside is not None:
            value = tvm.tirx.Select(inside, value, tvm.tirx.const(0, acc))
        return te.sum(value, axis=js)

    return te.compute(spec.input_shape, element, name=name)


def _max_adjoint(spec: PoolSpec, axes, dy, indices):
    """dx: dy added where each window's maximum came from (a gather: see the module docstring)."""
    cl, acc = spec.channels_last, acc_dtype(spec.dtype)
    zero = tvm.tirx.const(0, acc)

    def term(n, c, outs, pos):
        hit = indices[data_index(cl, n, c, outs)] == _flat(pos, axes).astype(indices.dtype)
        return tvm.tirx.Select(hit, dy[data_index(cl, n, c, outs)].astype(acc), zero)

    return _cast(_gather(spec, axes, term), spec)


def max_grad_input(spec: PoolSpec):
    """dx = the adjoint of max pooling at x, from x and dy: each window's argmax found again
    ("pool", "argmax", "indices": int32 positions), then dy gathered into the positions it
    names ("dx"). Tensors: x, dy (output shape), dx (input shape). Stages: "pad", "pool",
    "argmax", "indices", "dx", "output" (float16)."""
    axes = Axis.of(spec)
    args = _placeholders(spec, "grad_input")
    index_dtype = "int32" if math.prod(spec.in_size) < 2 ** 31 else "int64"
    _, indices = _max_and_index(args["x"], spec, axes, index_dtype)
    dx = _max_adjoint(spec, axes, args["dy"], indices)
    return make_func([args["x"], args["dy"], dx], spec, "grad_input", ATTR)


def max_grad_input_indices(spec: PoolSpec):
    """dx from dy and the indices forward_indices saved (max_pool*d_with_indices_backward).
    Tensors: dy, indices (int64, output shape), dx. Stages: "dx", "output" (float16)."""
    axes = Axis.of(spec)
    args = _placeholders(spec, "grad_input_indices")
    dx = _max_adjoint(spec, axes, args["dy"], args["indices"])
    return make_func([args["dy"], args["indices"], dx], spec, "grad_input_indices", ATTR)


def max_gather_indices(spec: PoolSpec):
    """y[o] = x at indices[o] where that position is a tap of o's window, else 0: the adjoint of
    grad_input_indices w.r.t. dy (<grad_input_indices(dy, i), x> = <dy, gather_indices(x, i)>),
    which max pooling's double backward runs. Written as the forward's reduction over the taps
    (the one tap whose flat position is the index, summed), so it is scheduled as the forward.
    Tensors: x (input shape), indices (int64, output shape), y (output shape). Stages: "pad" (0),
    "pool" (in acc_dtype), "output" (float16)."""
    cl, axes, acc = spec.channels_last, Axis.of(spec), acc_dtype(spec.dtype)
    args = _placeholders(spec, "gather_indices")
    x, indices = args["x"], args["indices"]
    xp = _padded(x, spec, axes, 0.0)
    taps = [te.reduce_axis((0, a.kernel), name=f"r{i}") for i, a in enumerate(axes)]

    def element(*idx):
        n, c, out = split_data_index(cl, idx)
        pos, conditions = zip(*[a.tap(o, r) for o, r, a in zip(out, taps, axes)])
        value = xp[data_index(cl, n, c, [o * a.stride + r * a.dilation
                                          for o, r, a in zip(out, taps, axes)])].astype(acc)
        hit = indices[idx] == _flat(pos, axes).astype(indices.dtype)
        hit = hit if _all(conditions) is None else tvm.tirx.all(_all(conditions), hit)
        return te.sum(tvm.tirx.Select(hit, value, tvm.tirx.const(0, acc)), axis=taps)

    y = _cast(te.compute(spec.output_shape, element, name="pool"), spec)
    return make_func([x, indices, y], spec, "gather_indices", ATTR)


def avg_forward(spec: PoolSpec):
    """y = sum over the window (zero padding) / divisor: divisor_override, else the window's
    length clipped to the padded input (count_include_pad) or to the input; adaptive windows
    [floor(o*I/O), ceil((o+1)*I/O)). Stages: "pad", "pool" (sum in acc_dtype), "scale" (where the
    divisor varies), "output" (scale and cast)."""
    cl, axes = spec.channels_last, Axis.of(spec)
    x = _placeholders(spec, "forward")["x"]
    total = _window_sum(x, spec, axes, "pool")
    scale = _scale(spec, axes)

    def element(*idx):
        _, _, out = split_data_index(cl, idx)
        return _scaled(total[idx], scale, out, acc_dtype(spec.dtype)).astype(spec.dtype)

    y = te.compute(spec.output_shape, element, name="output")
    return make_func([x, y], spec, "forward", ATTR)


def avg_grad_input(spec: PoolSpec):
    """dx[p] = sum over the windows covering p of dy[o] / divisor(o) (avg and adaptive avg).
    Tensors: dy (output shape), dx (input shape). Stages: "scale", "dx", "output" (float16)."""
    cl, axes, acc = spec.channels_last, Axis.of(spec), acc_dtype(spec.dtype)
    dy = _placeholders(spec, "grad_input")["dy"]
    scale = _scale(spec, axes)

    def term(n, c, outs, pos):
        return _scaled(dy[data_index(cl, n, c, outs)].astype(acc), scale, outs, acc)

    dx = _cast(_gather(spec, axes, term), spec)
    return make_func([dy, dx], spec, "grad_input", ATTR)


DECLARATIONS = {
    ("max", "forward"): max_forward,
    ("max", "forward_indices"): max_forward_indices,
    ("max", "grad_input"): max_grad_input,
    ("max", "grad_input_indices"): max_grad_input_indices,
    ("max", "gather_indices"): max_gather_indices,
    ("avg", "forward"): avg_forward,
    ("avg", "grad_input"): avg_grad_input,
    ("adaptive_avg", "forward"): avg_forward,
    ("adaptive_avg", "grad_input"): avg_grad_input,
}
# The reduction stage of each kernel, by name (schedules find blocks by name).
REDUCTION = {"forward": "pool", "forward_indices": "pool", "grad_input": "dx",
             "grad_input_indices": "dx", "gather_indices": "pool"}


def declare_pool(spec: PoolSpec, op: str):
    """The PrimFunc computing `op` of `spec` (destination-passing: PoolSpec.signature)."""
    return DECLARATIONS[spec.pool, spec.check_op(op)](spec)


def pool_spec_of(func) -> tuple:
    """(PoolSpec, op) recorded in a PrimFunc declared here, or (None, None)."""
    attrs = func.attrs
    if attrs is None or ATTR not in attrs:
        return None, None
    return PoolSpec.from_json(str(attrs[ATTR])), str(attrs["convc.op"])
