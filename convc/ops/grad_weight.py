"""Gradient w.r.t. the weight: dW = X̂ᵀ dy through the im2col view."""

from __future__ import annotations

from tvm import te

from ..spec import ConvSpec
from .common import acc_dtype, data_index, epilogue, make_func, pad, split_weight_index


def grad_weight(spec: ConvSpec):
    """Declare dW = ∂<conv(x, W), dy>/∂W as a correlation of x with dy.

    dW[o, c, r] = sum_{n, p} x_pad[n, g(o)*Cg + c, r*d + p*s] * dy[n, o, p]

    Read as a convolution, the roles of the operands move: the padded input is the data, dy is the
    filter (its spatial extent is the output size), the kernel taps r are the output positions,
    and stride and dilation swap roles (taps step by the dilation, dy's elements by the stride).
    The batch joins the reduction. Stages: "pad", "dw" (reduction), "output" (float16 only).
    Tensors: x as in forward, dy (N, K, *out) / (N, *out, K), dw in the weight's layout.
    """
    cl, groups = spec.channels_last, spec.groups
    cg, kg = spec.in_channels // groups, spec.out_channels // groups
    x = te.placeholder(spec.input_shape, spec.dtype, name="x")
    dy = te.placeholder(spec.output_shape, spec.dtype, name="dy")
    xp = pad(x, cl, spec.pad_before, spec.pad_after, spec.padding_mode)
    acc = acc_dtype(spec.dtype)
    rn = te.reduce_axis((0, spec.batch), name="rn")
    rp = [te.reduce_axis((0, o), name=f"rp{i}") for i, o in enumerate(spec.out_size)]

    def element(*idx):
        o, c, taps = split_weight_index(cl, idx)
        channel = c if groups == 1 else (o // kg) * cg + c
        pos = [t * d + p * s for t, d, p, s in zip(taps, spec.dilation, rp, spec.stride)]
        xv = xp[data_index(cl, rn, channel, pos)]
        dyv = dy[data_index(cl, rn, o, rp)]
        return te.sum(xv.astype(acc) * dyv.astype(acc), axis=[rn, *rp])

    dw = te.compute(spec.weight_shape, element, name="dw")
    out = epilogue(dw, spec)
    return make_func([x, dy, out], spec, "grad_weight")
