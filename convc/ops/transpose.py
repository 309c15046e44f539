"""The transposed convolution and its adjoints: the three declarations of its equivalent
convolution (convc.transpose), under the transposed ops' names.

Each PrimFunc records "convc.op" = the convolution op it computes, so the schedules (which read
it) treat it as that op, "convc.kernel" = the transposed op, so tuning records and exported
libraries keep it apart from the convolution's own kernels, and "convc.spec" = the spec as given
(its bias is conv_transpose's; the adjoints have none), so the three kernels of a layer share one
tuning-record directory, as the convolution's do.
"""

from __future__ import annotations

import dataclasses

from tvm import te

from ..spec import ConvSpec
from .common import epilogue, make_func
from .forward import forward
from .grad_input import gather_grad_input, is_gather_grad_input, transposed
from .grad_weight import grad_weight

KERNEL_ATTR = "convc.kernel"


def conv_transpose(spec: ConvSpec):
    """Declare y = conv_transpose(x, W) + b: grad_input of the equivalent convolution `spec`
    (its stages "dy_pad", "dy_dilated", "w_flipped", "dx", or the gather "dx" for large
    non-overlapping windows), then "output" adding b (per output channel) and casting.

    Tensors (channels-first / channels-last), named as grad_input's: dy = the transposed input
    (N, C_in, *i) / (N, *i, C_in); w (C_in, C_out/g, *k) / (*k, C_out/g, C_in); b (C_out,) when
    spec.bias; dx = y (N, C_out, *o) / (N, *o, C_out)."""
    dy = te.placeholder(spec.output_shape, spec.dtype, name="dy")
    w = te.placeholder(spec.weight_shape, spec.dtype, name="w")
    b = te.placeholder((spec.in_channels,), spec.dtype, name="b") if spec.bias else None
    dx = (gather_grad_input if is_gather_grad_input(spec) else transposed)(dy, w, spec)
    out = epilogue(dx, spec, bias=b)
    params = [dy, w, *([b] if b is not None else []), out]
    return make_func(params, spec, "grad_input").with_attr(KERNEL_ATTR, "conv_transpose")


def conv_transpose_grad_input(spec: ConvSpec):
    """Declare dx = ∂<conv_transpose(x, W), dy>/∂x: forward of the equivalent convolution, whose
    input is the transposed op's dy and whose output is its dx (parameters x, w, y)."""
    func = forward(dataclasses.replace(spec, bias=False))
    return _named(func, spec, "conv_transpose_grad_input")


def conv_transpose_grad_weight(spec: ConvSpec):
    """Declare dW = ∂<conv_transpose(x, W), dy>/∂W: grad_weight of the equivalent convolution with
    the operands' roles swapped (its parameter "x" is the transposed op's dy, its "dy" the
    transposed op's x)."""
    func = grad_weight(dataclasses.replace(spec, bias=False))
    return _named(func, spec, "conv_transpose_grad_weight")


def _named(func, spec: ConvSpec, kernel: str):
    return func.with_attr(KERNEL_ATTR, kernel).with_attr("convc.spec", spec.to_json())
