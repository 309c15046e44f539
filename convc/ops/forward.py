"""Forward convolution: y = conv(x, W) (+ b)."""

from __future__ import annotations

from tvm import te

from ..spec import ConvSpec
from .common import correlate, dilate_pad, epilogue, make_func


def forward(spec: ConvSpec):
    """Declare y = conv(x, W) + b.

    Tensors (channels-first / channels-last):
      x: (N, C, *in)  / (N, *in, C)          w: (K, C/g, *k) / (*k, C/g, K)
      b: (K,) when spec.bias                 y: (N, K, *out) / (N, *out, K)
    Stages: "pad" (zero padding, absent without padding), "conv" (the reduction, accumulated in
    float32 for float16), "output" (bias and/or cast, absent when neither applies).
    """
    cl = spec.channels_last
    x = te.placeholder(spec.input_shape, spec.dtype, name="x")
    w = te.placeholder(spec.weight_shape, spec.dtype, name="w")
    b = te.placeholder(spec.bias_shape, spec.dtype, name="b") if spec.bias else None
    padded_size = [i + pb + pa for i, pb, pa in zip(spec.in_size, spec.pad_before, spec.pad_after)]
    xp = dilate_pad(x, cl, padded_size, (1,) * spec.ndim, spec.pad_before, name="pad")
    conv = correlate(xp, w, channels_last=cl, groups=spec.groups, out_channels=spec.out_channels,
                     kernel=spec.kernel, out_size=spec.out_size, stride=spec.stride,
                     dilation=spec.dilation, name="conv")
    y = epilogue(conv, spec, b)
    params = [x, w] + ([b] if b is not None else []) + [y]
    return make_func(params, spec, "forward")
