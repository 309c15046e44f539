"""Gradient w.r.t. the input: dx = Ŵᵀ dy, a transposed convolution."""

from __future__ import annotations

import math

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


def gather_grad_input(spec: ConvSpec):
    """dx[n, c, i] = sum_k dy[n, k, (i + p) // s] * w[k, c, (i + p) % s] per spatial axis, where
    the tap (i + p) % s lies inside the kernel and the window (i + p) // s inside dy; else 0.

    The same adjoint as the correlation form for non-overlapping windows (each input position
    lies in at most one window per axis), with no zeros inserted: a GEMM per window of
    dy's channels against the weight's (c, taps), written back window by window (a
    depth-to-space). Block "dx", reduction over the output channels only."""
    cl = spec.channels_last
    dy = te.placeholder(spec.output_shape, spec.dtype, name="dy")
    w = te.placeholder(spec.weight_shape, spec.dtype, name="w")
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

    dx = te.compute(data_index(cl, spec.batch, spec.in_channels, spec.in_size), element,
                    name="dx")
    return make_func([dy, w, epilogue(dx, spec)], spec, "grad_input")


def grad_input(spec: ConvSpec):
    """Declare dx = ∂<conv(x, W), dy>/∂x as a convolution of transformed operands.

    Transform (per spatial axis, k kernel size, s stride, d dilation, p_b padding before):
      * dy is dilated by the stride (s-1 zeros between neighbours) and padded by
        d*(k-1) - p_b in front (negative = cropped) up to in + d*(k-1) elements: "dy_dilated"
        (with s > 1 on some axis: "dy_pad" pads dy and "dy_dilated" inserts the zeros);
      * W is flipped in space and its in/out channels are swapped per group: "w_flipped";
      * dx = correlate(dy_dilated, w_flipped) with stride 1, dilation d, the same groups: "dx".
    Tensors: dy (N, K, *out) / (N, *out, K); w as in forward; dx (N, C, *in) / (N, *in, C).
    Large non-overlapping windows (is_gather_grad_input) are declared by gather_grad_input.
    """
    if is_gather_grad_input(spec):
        return gather_grad_input(spec)
    cl = spec.channels_last
    dy = te.placeholder(spec.output_shape, spec.dtype, name="dy")
    w = te.placeholder(spec.weight_shape, spec.dtype, name="w")
    before = [d * (k - 1) - pb for k, d, pb in zip(spec.kernel, spec.dilation, spec.pad_before)]
    size = [i + d * (k - 1) for i, k, d in zip(spec.in_size, spec.kernel, spec.dilation)]
    dy_dilated = dilate_pad(dy, cl, size, spec.stride, before, name="dy_dilated", pad_name="dy_pad")
    if dy_dilated is dy:  # dilate_pad elides identity views; grad_input keeps the named stage
        dy_dilated = te.compute(dy.shape, lambda *i: dy[i], name="dy_dilated")
    w_flipped = flip_swap(w, spec)
    dx = correlate(dy_dilated, w_flipped, channels_last=cl, groups=spec.groups,
                   out_channels=spec.in_channels, kernel=spec.kernel, out_size=spec.in_size,
                   stride=(1,) * spec.ndim, dilation=spec.dilation, name="dx")
    out = epilogue(dx, spec)
    return make_func([dy, w, out], spec, "grad_input")
