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
    Stages: "pad" (the padding ring: zeros, or copied from x as spec.padding_mode says; absent
    without padding), "conv" (the reduction, accumulated in
    float32 for float16), "output" (bias and/or cast, absent when neither applies).
    """
    cl = spec.channels_last
    x = te.placeholder(spec.input_shape, spec.dtype, name="x")
    w = te.placeholder(spec.weight_shape, spec.dtype, name="w")
    b = te.placeholder(spec.bias_shape, spec.dtype, name="b") if spec.bias else None
    xp = pad(x, cl, spec.pad_before, spec.pad_after, spec.padding_mode)
    conv = correlate(xp, w, channels_last=cl, groups=spec.groups, out_channels=spec.out_channels,
                     kernel=spec.kernel, out_size=spec.out_size, stride=spec.stride,
                     dilation=spec.dilation, name="conv")
    y = epilogue(conv, spec, b)
    params = [x, w] + ([b] if b is not None else []) + [y]
    return make_func(params, spec, "forward")
