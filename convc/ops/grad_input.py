"""Gradient w.r.t. the input: dx = Ŵᵀ dy, a transposed convolution."""

from __future__ import annotations

from tvm import te

from ..spec import ConvSpec
from .common import correlate, dilate_pad, epilogue, make_func, split_weight_index, weight_index


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


def grad_input(spec: ConvSpec):
    """Declare dx = ∂<conv(x, W), dy>/∂x as a convolution of transformed operands.

    Transform (per spatial axis, k kernel size, s stride, d dilation, p_b padding before):
      * dy is dilated by the stride (s-1 zeros between neighbours) and padded by
        d*(k-1) - p_b in front (negative = cropped) up to in + d*(k-1) elements: "dy_dilated"
        (with s > 1 on some axis: "dy_pad" pads dy and "dy_dilated" inserts the zeros);
      * W is flipped in space and its in/out channels are swapped per group: "w_flipped";
      * dx = correlate(dy_dilated, w_flipped) with stride 1, dilation d, the same groups: "dx".
    Tensors: dy (N, K, *out) / (N, *out, K); w as in forward; dx (N, C, *in) / (N, *in, C).
    """
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
