"""Pieces shared by the three declarations: layout-aware indexing, padding/dilation, the
correlation at the heart of every convolution, the epilogue, and the PrimFunc wrapper."""

from __future__ import annotations

import re

import numpy as np
import tvm
from tvm import te, tirx

from ..spec import ConvSpec


def acc_dtype(dtype: str) -> str:
    """float16 accumulates in float32; the others in their own precision."""
    return "float32" if dtype == "float16" else dtype


def data_index(channels_last: bool, n, c, spatial):
    """Index of an activation tensor: (n, c, *spatial) or (n, *spatial, c)."""
    return (n, *spatial, c) if channels_last else (n, c, *spatial)


def split_data_index(channels_last: bool, idx):
    """Inverse of data_index: -> (n, c, spatial)."""
    if channels_last:
        return idx[0], idx[-1], list(idx[1:-1])
    return idx[0], idx[1], list(idx[2:])


def weight_index(channels_last: bool, o, i, taps):
    """Index of a weight tensor: (o, i, *taps) (OIHW family) or (*taps, i, o) (HWIO family)."""
    return (*taps, i, o) if channels_last else (o, i, *taps)


def split_weight_index(channels_last: bool, idx):
    """Inverse of weight_index: -> (o, i, taps)."""
    if channels_last:
        return idx[-1], idx[-2], list(idx[:-2])
    return idx[0], idx[1], list(idx[2:])


def dilate_pad(data, channels_last: bool, size, dilation, before, name: str, pad_name=None,
               fill=0):
    """A zero-filled view of `data` on a larger spatial grid: element j of every spatial axis is
    data[(j - before) / dilation] when that is a whole in-range index, else 0 (`fill`: another
    value for the padding, e.g. -inf for max pooling; dilation 1 only).

    With dilation 1 this is plain zero padding (`before` zeros in front, the rest after). The
    gradient w.r.t. the input uses it with dilation = stride and a `before` that may be negative
    (a crop) when the forward padding exceeds dilation * (kernel - 1). With a dilation > 1 and a
    `pad_name`, it is two stages: `pad_name` pads `data` (no zeros inserted) so that every index
    the dilated view reads is in range, and `name` only tests j - before for a multiple of the
    dilation. A schedule that splits an axis by the dilation then sees that test become a
    constant per phase (and folds the zero products away) with no bound test left over.
    """
    in_size = [int(v) for v in (data.shape[1:-1] if channels_last else data.shape[2:])]
    if list(size) == in_size and not any(before) and all(d == 1 for d in dilation):
        return data
    if pad_name is not None and any(d > 1 for d in dilation):
        return _dilate_padded(data, channels_last, size, dilation, before, name, pad_name)
    if fill != 0 and any(d > 1 for d in dilation):
        raise ValueError("dilate_pad: a non-zero fill is for padding only (dilation 1)")
    channels = data.shape[-1] if channels_last else data.shape[1]
    zero = tvm.tirx.const(fill, data.dtype)

    def element(*idx):
        n, c, spatial = split_data_index(channels_last, idx)
        conditions, source = [], []
        for j, b, d, extent, span in zip(spatial, before, dilation, in_size, size):
            shifted = j - b
            if d == 1:
                conditions += [shifted >= 0] if b > 0 else []
                conditions += [shifted < extent] if span - b > extent else []
                source.append(shifted)
            else:
                conditions += [shifted >= 0, tirx.floormod(shifted, d) == 0,
                               tirx.floordiv(shifted, d) < extent]
                source.append(tirx.floordiv(shifted, d))
        value = data[data_index(channels_last, n, c, source)]
        if not conditions:
            return value
        return tirx.if_then_else(tvm.tirx.all(*conditions), value, zero)

    shape = data_index(channels_last, data.shape[0], channels, size)
    return te.compute(shape, element, name=name)


def ring_source(j, before: int, extent: int, mode: str):
    """The input index padded element j of one axis copies under a padding mode other than zeros
    (nn.ConvNd's): i = j - before, mapped into [0, extent) when it lies in the ring. The limits
    ConvSpec checks (reflect: padding < extent; circular: padding <= extent) make one mirror or
    one wrap enough."""
    i = j - before
    if mode == "reflect":
        low, high = -i, 2 * (extent - 1) - i
    elif mode == "replicate":
        low, high = tirx.const(0, "int32"), tirx.const(extent - 1, "int32")
    elif mode == "circular":
        low, high = i + extent, i - extent
    else:
        raise ValueError(f"padding_mode={mode!r} has no ring to copy")
    return tirx.Select(i < 0, low, tirx.Select(i >= extent, high, i))


def pad(data, channels_last: bool, before, after, mode: str, name: str = "pad"):
    """`data` padded on every spatial axis by (before, after): the padded view the forward and
    grad_weight correlations read. zeros: dilate_pad's zero-filled view; the other modes: every
    element of the ring a copy of an input element (ring_source), so the stage is one gather whose
    index map alone carries the mode and the schedules see the same stage either way."""
    in_size = [int(v) for v in (data.shape[1:-1] if channels_last else data.shape[2:])]
    size = [i + b + a for i, b, a in zip(in_size, before, after)]
    if mode == "zeros" or not any(tuple(before) + tuple(after)):
        return dilate_pad(data, channels_last, size, (1,) * len(size), before, name=name)
    channels = data.shape[-1] if channels_last else data.shape[1]

    def element(*idx):
        n, c, spatial = split_data_index(channels_last, idx)
        source = [ring_source(j, b, extent, mode) if b or a else j
                  for j, b, a, extent in zip(spatial, before, after, in_size)]
        return data[data_index(channels_last, n, c, source)]

    return te.compute(data_index(channels_last, data.shape[0], channels, size), element, name=name)


def _dilate_padded(data, channels_last, size, dilation, before, name, pad_name):
    """dilate_pad as a padding stage and a zero-insertion test (see dilate_pad)."""
    # Index read on each axis: floor((j - b) / d) + lead for j in [0, span); `lead` makes it >= 0.
    lead = [max(0, -((-b) // d)) for b, d in zip(before, dilation)]
    padded_size = [(span - 1 - b) // d + extra + 1
                   for span, b, d, extra in zip(size, before, dilation, lead)]
    padded = dilate_pad(data, channels_last, padded_size, (1,) * len(size), lead, name=pad_name)
    zero = tvm.tirx.const(0, data.dtype)
    channels = data.shape[-1] if channels_last else data.shape[1]

    def element(*idx):
        n, c, spatial = split_data_index(channels_last, idx)
        conditions, source = [], []
        for j, b, d, extra in zip(spatial, before, dilation, lead):
            if d == 1:
                source.append(j - b + extra)
            else:
                conditions.append(tirx.floormod(j - b, d) == 0)
                source.append(tirx.floordiv(j - b, d) + extra)
        value = padded[data_index(channels_last, n, c, source)]
        return tirx.if_then_else(tvm.tirx.all(*conditions), value, zero)

    shape = data_index(channels_last, data.shape[0], channels, size)
    return te.compute(shape, element, name=name)


def correlate(data, weight, *, channels_last, groups, out_channels, kernel, out_size, stride,
              dilation, name: str):
    """out[n, o, p] = sum_{c, r} data[n, g(o)*Cg + c, p*stride + r*dilation] * weight[o, c, r]

    `data` is already padded; g(o) = o // (out_channels / groups) picks the group. Products are
    accumulated in acc_dtype. This is the one convolution loop nest convc declares: forward is it
    directly, grad_input is it on transformed operands.
    """
    cl = channels_last
    in_per_group = int(weight.shape[-2] if cl else weight.shape[1])
    out_per_group = out_channels // groups
    acc = acc_dtype(data.dtype)
    rc = te.reduce_axis((0, in_per_group), name="rc")
    rk = [te.reduce_axis((0, k), name=f"r{i}") for i, k in enumerate(kernel)]

    def element(*idx):
        n, o, spatial = split_data_index(cl, idx)
        c = rc if groups == 1 else (o // out_per_group) * in_per_group + rc
        pos = [p * s + r * d for p, s, r, d in zip(spatial, stride, rk, dilation)]
        x = data[data_index(cl, n, c, pos)]
        w = weight[weight_index(cl, o, rc, rk)]
        return te.sum(x.astype(acc) * w.astype(acc), axis=[rc, *rk])

    shape = data_index(cl, data.shape[0], out_channels, out_size)
    return te.compute(shape, element, name=name)


def activate(value, name, negative_slope: float, dtype: str):
    """PyTorch's activation `name` of a scalar expression of `dtype` (the accumulator's)."""
    c = lambda v: tvm.tirx.const(v, dtype)  # noqa: E731 - a constant of the value's dtype
    if name == "relu":
        return tvm.tirx.max(value, c(0))
    if name == "relu6":
        return tvm.tirx.min(tvm.tirx.max(value, c(0)), c(6))
    if name == "leaky_relu":
        return tirx.Select(value >= c(0), value, value * c(negative_slope))
    if name == "sigmoid":
        return tirx.sigmoid(value)
    if name == "silu":
        return value * tirx.sigmoid(value)
    if name == "gelu":
        return c(0.5) * value * (c(1) + tirx.erf(value * c(0.7071067811865476)))
    if name == "gelu_tanh":
        inner = c(0.7978845608028654) * (value + c(0.044715) * value * value * value)
        return c(0.5) * value * (c(1) + tirx.tanh(inner))
    if name == "hardswish":
        return value * tvm.tirx.min(tvm.tirx.max(value + c(3), c(0)), c(6)) / c(6)
    raise ValueError(f"activation={name!r}")


# The saved forward tensor an adjoint's prologue reads, by spec.derivative_from: its parameter name.
SAVED = {"pre_activation": "pre_activation", "output": "activation_output"}


def derivative(value, name, negative_slope: float, dtype: str, from_output: bool):
    """act'(z) of PyTorch's activation `name` as its autograd computes it (threshold_backward,
    hardtanh_backward, leaky_relu_backward, sigmoid_backward, silu_backward, gelu_backward,
    hardswish_backward), from `value`: the pre-activation z, or with `from_output` the output
    y = act(z) (only spec.FROM_OUTPUT). A boolean for relu and relu6 (dy passes or is zeroed);
    else a scalar of `dtype`."""
    c = lambda v: tvm.tirx.const(v, dtype)  # noqa: E731 - a constant of the value's dtype
    if name == "relu":
        return value > c(0)
    if name == "relu6":
        return tvm.tirx.all(value > c(0), value < c(6))
    if name == "leaky_relu":
        return tirx.Select(value > c(0), c(1), c(negative_slope))
    if name == "sigmoid":
        s = value if from_output else tirx.sigmoid(value)
        return s * (c(1) - s)
    if name == "silu":
        s = tirx.sigmoid(value)
        return s * (c(1) + value * (c(1) - s))
    if name == "gelu":
        cdf = c(0.5) * (c(1) + tirx.erf(value * c(0.7071067811865476)))
        pdf = tirx.exp(c(-0.5) * value * value) * c(0.3989422804014327)
        return cdf + value * pdf
    if name == "gelu_tanh":
        beta, kappa = c(0.7978845608028654), c(0.044715)
        t = tirx.tanh(beta * (value + kappa * value * value * value))
        return (c(0.5) * (c(1) + t)
                + c(0.5) * value * (c(1) - t * t) * beta * (c(1) + c(3) * kappa * value * value))
    if name == "hardswish":
        return tirx.Select(value < c(-3), c(0),
                           tirx.Select(value <= c(3), value / c(3) + c(0.5), c(1)))
    raise ValueError(f"activation={name!r}")


def prologue(dy, saved, spec: ConvSpec):
    """"dy_act": dy * act'(saved), the activation's derivative applied to the incoming gradient
    (spec.activation, read from `saved`: the pre-activation or the output, spec.derivative_from),
    computed in acc_dtype and stored in spec.dtype as an unfused backward would. `dy` itself
    without a prologue. Element-wise, so schedules compute it inside the stage that reads dy."""
    if saved is None:
        return dy
    dtype = acc_dtype(spec.dtype)
    from_output = spec.derivative_from == "output"

    def element(*idx):
        factor = derivative(saved[idx].astype(dtype), spec.activation, spec.negative_slope, dtype,
                            from_output)
        if spec.activation in ("relu", "relu6"):  # a condition: dy passes or is zeroed
            return tirx.Select(factor, dy[idx], tvm.tirx.const(0, spec.dtype))
        return (dy[idx].astype(dtype) * factor).astype(spec.dtype)

    return te.compute(dy.shape, element, name="dy_act")


def saved_placeholder(spec: ConvSpec, op: str):
    """The forward's saved tensor (y's shape) an adjoint's prologue reads, or None without one.
    An activation without derivative_from is refused: the adjoint would silently skip act'."""
    if spec.activation is not None and not spec.prologue:
        raise ValueError(
            f"{op} of a convolution with activation={spec.activation!r} needs derivative_from "
            "('pre_activation' or 'output'): the tensor its derivative is computed from")
    if not spec.prologue:
        return None
    if spec.scale_shift:
        raise ValueError(
            f"{op} through an activation with scale_shift=True is not supported: the gradient "
            "would also need dy * act' * scale; fold the batch norm into the weights "
            "(convc.fold_batch_norm) so that the activation follows the convolution directly")
    return te.placeholder(spec.output_shape, spec.dtype, name=SAVED[spec.derivative_from])


def cast(acc, spec: ConvSpec):
    """The adjoints' "output": the accumulator cast to spec.dtype (float16), else `acc` itself.
    (Their activation, if any, is a prologue on dy, never applied to the result.)"""
    if acc.dtype == spec.dtype:
        return acc
    return te.compute(acc.shape, lambda *idx: acc[idx].astype(spec.dtype), name="output")


def epilogue(acc, spec: ConvSpec, bias=None, scale=None, shift=None, residual=None):
    """"output": the accumulator + bias, * scale + shift (per output channel), + residual,
    then spec.activation, cast to spec.dtype; `acc` itself when none of them applies. One
    element-wise stage, so schedules fold it into the accumulator's write-back."""
    if (bias is None and scale is None and residual is None and spec.activation is None
            and acc.dtype == spec.dtype):
        return acc
    cl, dtype = spec.channels_last, acc_dtype(spec.dtype)

    def element(*idx):
        value = acc[idx]
        _, o, _ = split_data_index(cl, idx)
        if bias is not None:
            value = value + bias[o].astype(dtype)
        if scale is not None:
            value = value * scale[o].astype(dtype) + shift[o].astype(dtype)
        if residual is not None:
            value = value + residual[idx].astype(dtype)
        if spec.activation is not None:
            value = activate(value, spec.activation, spec.negative_slope, dtype)
        return value.astype(spec.dtype)

    return te.compute(acc.shape, element, name="output")


_PARAM = re.compile(r'T\.Buffer\((\((?:[^()]*)\)), ("(?:float|int|uint|bfloat)[0-9]+")\)')


def make_func(params, spec: ConvSpec, op: str, attr: str = "convc.spec") -> tirx.PrimFunc:
    """PrimFunc with convc's attributes, whose parameters do not assume 64-byte alignment.

    `attr` names the attribute holding the spec's JSON: "convc.spec" for a ConvSpec,
    "convc.pool_spec" for a PoolSpec (so that rules reading one never mistake the other).

    te.create_prim_func declares every parameter buffer 64-byte aligned and nothing checks it at
    call time: an unaligned NumPy array segfaults the process. Re-declaring each parameter with the
    alignment of its element type makes the generated code use unaligned vector loads (as fast on
    x86 and on NVIDIA GPUs for the access widths we emit) and keeps the runtime's shape, dtype and
    stride checks. TVM 0.27 offers no API to change a parameter's alignment after the fact
    (PrimFunc.specialize refuses to), so this goes through a TVMScript round trip of the signature.
    """
    func = te.create_prim_func(params)
    return relax_alignment(func.with_attr("convc.op", op).with_attr(attr, spec.to_json()))


def relax_alignment(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with every buffer parameter declared aligned to its element size only (make_func;
    also the split weight stages of convc.build.packing, whose pack parameter was a buffer the
    function allocated itself)."""
    source = func.script()
    head, sep, body = source.partition("):\n")

    def relax(match):
        itemsize = np.dtype(match.group(2).strip('"')).itemsize
        return f"T.Buffer({match.group(1)}, {match.group(2)}, align={itemsize})"

    relaxed = tvm.script.from_source(_PARAM.sub(relax, head) + sep + body)
    for param in relaxed.params:
        if param.ty.data_alignment != np.dtype(str(param.dtype)).itemsize:
            raise RuntimeError(f"could not relax the alignment of parameter {param.name}")
    return relaxed
