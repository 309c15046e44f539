"""Gradient w.r.t. the input: dx = Ŵᵀ dy, a transposed convolution."""

from __future__ import annotations

import dataclasses
import itertools
import math

import tvm
from tvm import te, tirx

from ..spec import ConvSpec
from .common import (acc_dtype, correlate, data_index, dilate_pad, epilogue, make_func,
                     split_data_index, split_weight_index, weight_index)

# Windows that do not overlap (kernel <= stride, no dilation) with more taps than this are
# declared as a gather (gather_grad_input). In the correlation form the dilated dy holds
# (s^d - 1)/s^d zeros, and the schedules that fold them away unroll taps x phases, which stops
# being compilable past a few dozen taps: ViT's 16x16/16 patch embedding ran at 0.4 GFLOP/s
# (PyTorch 53) multiplying the zeros.
GATHER_MIN_TAPS = 28


def flip_swap(w, spec: ConvSpec):
    """w_flipped[g*Cg + c, k, r] = w[g*Kg + k, c, kernel - 1 - r]: the filter flipped in space with
    input and output channels swapped inside each group (same layout family as w)."""
    cl, groups = spec.channels_last, spec.groups
    cg, kg = spec.in_channels // groups, spec.out_channels // groups

    def element(*idx):
        c_full, k, taps = split_weight_index(cl, idx)
        g, c = (c_full // cg, c_full % cg) if groups > 1 else (0, c_full)
        flipped = [t_extent - 1 - t for t, t_extent in zip(taps, spec.kernel)]
        return w[weight_index(cl, g * kg + k, c, flipped)]

    shape = weight_index(cl, spec.in_channels, kg, spec.kernel)
    return te.compute(shape, element, name="w_flipped")


def is_gather_grad_input(spec: ConvSpec) -> bool:
    """Each input position meets at most one kernel tap per axis (kernel <= stride, dilation 1),
    the layer is ungrouped and has many taps: grad_input is declared as a gather."""
    return (spec.groups == 1 and all(d == 1 for d in spec.dilation)
            and all(k <= s for k, s in zip(spec.kernel, spec.stride))
            and math.prod(spec.kernel) >= GATHER_MIN_TAPS)


def gather_grad_input(dy, w, spec: ConvSpec):
    """dx[n, c, i] = sum_k dy[n, k, (i + p) // s] * w[k, c, (i + p) % s] per spatial axis, where
    the tap (i + p) % s lies inside the kernel and the window (i + p) // s inside dy; else 0.

    The same adjoint as the correlation form for non-overlapping windows (each input position
    lies in at most one window per axis), with no zeros inserted: a GEMM per window of
    dy's channels against the weight's (c, taps), written back window by window (a
    depth-to-space). Block "dx", reduction over the output channels only."""
    cl = spec.channels_last
    acc = acc_dtype(spec.dtype)
    rk = te.reduce_axis((0, spec.out_channels), name="rk")
    zero = tirx.const(0, acc)

    def element(*idx):
        n, c, spatial = split_data_index(cl, idx)
        windows, taps, inside = [], [], []
        for i, k, s, p, i_size, o_size in zip(spatial, spec.kernel, spec.stride, spec.pad_before,
                                              spec.in_size, spec.out_size):
            windows.append(tirx.floordiv(i + p, s))
            taps.append(tirx.floormod(i + p, s))
            if k < s:
                inside.append(tirx.floormod(i + p, s) < k)
            if (i_size - 1 + p) // s >= o_size:
                inside.append(tirx.floordiv(i + p, s) < o_size)
        product = (dy[data_index(cl, n, rk, windows)].astype(acc)
                   * w[weight_index(cl, rk, c, taps)].astype(acc))
        if inside:
            product = tirx.if_then_else(tirx.all(*inside), product, zero)
        return te.sum(product, axis=[rk])

    return te.compute(data_index(cl, spec.batch, spec.in_channels, spec.in_size), element,
                      name="dx")


def grad_input(spec: ConvSpec):
    """Declare dx = ∂<conv(x, W), dy>/∂x as a convolution of transformed operands.

    Transform (per spatial axis, k kernel size, s stride, d dilation, p_b padding before):
      * dy is dilated by the stride (s-1 zeros between neighbours) and padded by
        d*(k-1) - p_b in front (negative = cropped) up to in + d*(k-1) elements: "dy_dilated"
        (with s > 1 on some axis: "dy_pad" pads dy and "dy_dilated" inserts the zeros);
      * W is flipped in space and its in/out channels are swapped per group: "w_flipped";
      * dx = correlate(dy_dilated, w_flipped) with stride 1, dilation d, the same groups: "dx".
    Tensors: dy (N, K, *out) / (N, *out, K); w as in forward; dx (N, C, *in) / (N, *in, C).
    Large non-overlapping windows (is_gather_grad_input) are declared as a gather instead
    (gather_grad_input).

    With a padding mode other than zeros the ring is a copy of input elements, so the padding's
    own adjoint follows: "dx" is the gradient of the padded input (the above for the convolution
    of the padded input without padding, ring_unpadded), and "fold" adds each ring element's
    gradient onto the input element it copies (corners collect from every axis), as F.pad's
    backward does.
    """
    inner = ring_unpadded(spec)
    dy = te.placeholder(spec.output_shape, spec.dtype, name="dy")
    w = te.placeholder(spec.weight_shape, spec.dtype, name="w")
    dx = (gather_grad_input if is_gather_grad_input(inner) else transposed)(dy, w, inner)
    out = fold(dx, spec) if spec.ring_padded else epilogue(dx, spec)
    return make_func([dy, w, out], spec, "grad_input")


def ring_unpadded(spec: ConvSpec) -> ConvSpec:
    """The convolution whose input-gradient grad_input's reduction computes: `spec` itself, or for
    a ring padding (spec.ring_padded) the same convolution of the padded input, without padding."""
    if not spec.ring_padded:
        return spec
    zeros = (0,) * spec.ndim
    padded = tuple(i + b + a for i, b, a in zip(spec.in_size, spec.pad_before, spec.pad_after))
    return dataclasses.replace(spec, in_size=padded, pad_before=zeros, pad_after=zeros,
                               padding_mode="zeros", bias=False)


def transposed(dy, w, spec: ConvSpec):
    """The reduction "dx" (and its operand stages) of grad_input for `spec`."""
    cl = spec.channels_last
    before = [d * (k - 1) - pb for k, d, pb in zip(spec.kernel, spec.dilation, spec.pad_before)]
    size = [i + d * (k - 1) for i, k, d in zip(spec.in_size, spec.kernel, spec.dilation)]
    dy_dilated = dilate_pad(dy, cl, size, spec.stride, before, name="dy_dilated", pad_name="dy_pad")
    if dy_dilated is dy:  # dilate_pad elides identity views; grad_input keeps the named stage
        dy_dilated = te.compute(dy.shape, lambda *i: dy[i], name="dy_dilated")
    w_flipped = flip_swap(w, spec)
    return correlate(dy_dilated, w_flipped, channels_last=cl, groups=spec.groups,
                     out_channels=spec.in_channels, kernel=spec.kernel, out_size=spec.in_size,
                     stride=(1,) * spec.ndim, dilation=spec.dilation, name="dx")


def ring_copies(i, before: int, after: int, extent: int, mode: str):
    """The padded positions on one axis whose element is a copy of input element i, as
    (position, condition) pairs (the inverse of ops.common.ring_source): i + before always, and the
    ring positions that mirror, repeat or wrap onto i."""
    copies = [(i + before, None)]
    if mode == "reflect":
        copies += [(before - i, tirx.all(i >= 1, i <= before)),
                   (before + 2 * (extent - 1) - i, tirx.all(i <= extent - 2, i >= extent - 1 - after))]
    elif mode == "circular":
        copies += [(i + before - extent, i >= extent - before), (i + before + extent, i < after)]
    elif mode == "replicate":
        copies += [(tirx.const(t, "int32"), i == 0) for t in range(before)]
        copies += [(tirx.const(before + extent + t, "int32"), i == extent - 1) for t in range(after)]
    return copies


def fold(dx_padded, spec: ConvSpec):
    """dx[n, c, i] = sum of dx_padded over the padded positions that copy input position i
    (ring_copies on every axis, their combinations for the corners), cast to spec.dtype: "fold"."""
    cl = spec.channels_last
    acc = acc_dtype(spec.dtype)
    zero = tvm.tirx.const(0, acc)

    def element(*idx):
        n, c, spatial = split_data_index(cl, idx)
        axes = [ring_copies(i, b, a, extent, spec.padding_mode)
                for i, b, a, extent in zip(spatial, spec.pad_before, spec.pad_after, spec.in_size)]
        total = None
        for combination in itertools.product(*axes):
            value = dx_padded[data_index(cl, n, c, [j for j, _ in combination])].astype(acc)
            conditions = [cond for _, cond in combination if cond is not None]
            if conditions:
                value = tirx.if_then_else(tirx.all(*conditions), value, zero)
            total = value if total is None else total + value
        return total.astype(spec.dtype)

    return te.compute(spec.input_shape, element, name="fold")
