"""Forward convolution: y = conv(x, W) (+ b)."""

from __future__ import annotations

from tvm import te

from ..spec import ConvSpec
from .common import correlate, epilogue, make_func, pad


def forward(spec: ConvSpec):
    """Declare y = conv(x, W) + b.

    Tensors (channels-first / channels-last):
      x: (N, C, *in)  / (N, *in, C)          w: (K, C/g, *k) / (*k, C/g, K)
      b: (K,) when spec.bias                 y: (N, K, *out) / (N, *out, K)
    The fused epilogue (spec.scale_shift, spec.residual, spec.activation): scale, shift (K,) and
    residual (y's shape), in that parameter order after b; y = act((conv + b) * scale + shift +
    residual), computed in "output" (convc.ops.common.epilogue).
    Stages: "pad" (the padding ring: zeros, or copied from x as spec.padding_mode says; absent
    without padding), "conv" (the reduction, accumulated in
    float32 for float16), "output" (bias and/or cast, absent when neither applies).
    """
    cl = spec.channels_last
    x = te.placeholder(spec.input_shape, spec.dtype, name="x")
    w = te.placeholder(spec.weight_shape, spec.dtype, name="w")
    b = te.placeholder(spec.bias_shape, spec.dtype, name="b") if spec.bias else None
    scale, shift = ((te.placeholder(spec.bias_shape, spec.dtype, name="scale"),
                     te.placeholder(spec.bias_shape, spec.dtype, name="shift"))
                    if spec.scale_shift else (None, None))
    residual = (te.placeholder(spec.output_shape, spec.dtype, name="residual") if spec.residual
                else None)
    xp = pad(x, cl, spec.pad_before, spec.pad_after, spec.padding_mode)
    conv = correlate(xp, w, channels_last=cl, groups=spec.groups, out_channels=spec.out_channels,
                     kernel=spec.kernel, out_size=spec.out_size, stride=spec.stride,
                     dilation=spec.dilation, name="conv")
    y = epilogue(conv, spec, b, scale, shift, residual)
    extra = [t for t in (b, scale, shift, residual) if t is not None]
    params = [x, w, *extra, y]
    return make_func(params, spec, "forward")
