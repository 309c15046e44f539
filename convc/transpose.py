"""Transposed convolution as the convolution it is the adjoint of.

torch.nn.functional.conv_transpose{1,2,3}d(x, w, b, stride, padding, output_padding, groups,
dilation) computes, per spatial axis (s stride, p padding, d dilation, k kernel),

    y[n, o, j] = b[o] + sum_{c, q, t: q*s - p + t*d = j} x[n, c, q] * w[c, o', t]

(c in o's group, o' = o mod out/groups) on an output of size (i - 1)*s - 2p + d*(k - 1) +
output_padding + 1. That is the input-gradient of the convolution with the same stride, padding,
dilation and groups whose input has y's shape and whose output has x's: its weight
(O = the transposed input channels, I/groups = the transposed output channels / groups, *k) is
PyTorch's transposed weight (in, out/groups, *k) as it is. convc keeps that convolution, the
*equivalent convolution*, as the ConvSpec of all three transposed ops (TRANSPOSE_OPS):

    conv_transpose              = grad_input  of the equivalent convolution (+ bias, shape (out,))
    conv_transpose_grad_input   = forward     of it (dy of the transposed op is its input)
    conv_transpose_grad_weight  = grad_weight of it with x and dy swapped

so the declarations, schedules (the phased grad_input variants for stride > 1), tuning and export
are the convolution's. The equivalent convolution's padding after is p - output_padding +
min(output_padding, s - 1): with output_padding < s (every decoder) that is p, the convolution
PyTorch pairs with the transposed one; a larger output_padding (allowed when dilation > stride)
leaves trailing positions no window reaches, and the padding after may then be negative (a crop
of the input, which ConvSpec allows for this use only).

Weights: channels-first (in, out/groups, *k), PyTorch's; channels-last (*k, out/groups, in), the
HWIO-family counterpart (PyTorch's weight with its first axis moved last and its second axis
second to last, as for a convolution's OIHW -> HWIO).
"""

from __future__ import annotations

import dataclasses

from .spec import (ConvSpec, _is_int, _shape, check_dtype, expand, resolve_padding,
                   split_input)

# The transposed weight's layout, in the transposed op's words (I = its input channels).
TRANSPOSE_WEIGHT_LAYOUTS = {
    "NCW": "IOW", "NWC": "WOI",
    "NCHW": "IOHW", "NHWC": "HWOI",
    "NCDHW": "IODHW", "NDHWC": "DHWOI",
}


@dataclasses.dataclass(frozen=True)
class Transposed:
    """A transposed convolution's own parameters, as PyTorch names them (for messages and
    manifests), recovered from the equivalent ConvSpec (transposed_of)."""

    input_shape: tuple
    weight_shape: tuple
    output_shape: tuple
    stride: tuple
    padding: tuple          # (before, after) per axis
    output_padding: tuple
    groups: int
    dilation: tuple
    bias: bool

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


def transposed_of(spec: ConvSpec) -> Transposed:
    """The transposed convolution's parameters recovered from its equivalent convolution, in the
    canonical form: output_padding the smallest that gives the output size (below the stride),
    more of it only where the equivalent padding after is negative. (Padding after and
    output_padding beyond the stride offset each other: every split computes the same.)"""
    padding, output_padding = [], []
    for o, i, k, s, d, pb, pa_eq in zip(spec.in_size, spec.out_size, spec.kernel, spec.stride,
                                        spec.dilation, spec.pad_before, spec.pad_after):
        m = pa_eq + pb + o - d * (k - 1) - 1 - (i - 1) * s   # = min(output_padding, s - 1)
        op = m - min(0, pa_eq)
        padding.append((pb, max(0, pa_eq)))
        output_padding.append(op)
    return Transposed(spec.output_shape, spec.weight_shape, spec.input_shape, spec.stride,
                      tuple(padding), tuple(output_padding), spec.groups, spec.dilation, spec.bias)


def transposed_size(in_size, kernel, stride, dilation, pad_before, pad_after, output_padding):
    """PyTorch's output size of a transposed convolution, per axis."""
    return tuple((i - 1) * s - pb - pa + d * (k - 1) + op + 1
                 for i, k, s, d, pb, pa, op in zip(in_size, kernel, stride, dilation, pad_before,
                                                   pad_after, output_padding))


def from_shapes(input_shape, weight_shape, stride=1, padding=0, output_padding=0, groups=1,
                dilation=1, *, layout=None, dtype="float32", bias=False,
                padding_mode="zeros") -> ConvSpec:
    """The equivalent convolution (a ConvSpec) of a transposed convolution given PyTorch's way:
    a batched input shape and a weight shape in `layout`'s convention ((in, out/groups, *k)
    channels-first, (*k, out/groups, in) channels-last), then F.conv_transposeNd's arguments in
    its order (groups before dilation). Errors name the transposed op's parameters."""
    input_shape = _shape(input_shape, "input_shape")
    ndim, layout, batch, in_channels, in_size = split_input(input_shape, layout)
    weight_shape = _shape(weight_shape, "weight_shape")
    if padding_mode != "zeros":
        raise ValueError(f"padding_mode={padding_mode!r} is not supported for a transposed "
                         "convolution: only 'zeros', as torch.nn.ConvTransposeNd")
    if len(weight_shape) != ndim + 2:
        raise ValueError(f"weight_shape={weight_shape} has rank {len(weight_shape)}: expected "
                         f"{ndim + 2} ({TRANSPOSE_WEIGHT_LAYOUTS[layout]}) for a {ndim}-D "
                         "transposed convolution")
    if layout[-1] == "C":
        *kernel, out_per_group, w_in = weight_shape
    else:
        w_in, out_per_group, *kernel = weight_shape
    stride = expand(stride, ndim, "stride", 1)
    dilation = expand(dilation, ndim, "dilation", 1)
    given_output_padding = output_padding
    output_padding = expand(output_padding, ndim, "output_padding", 0)
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups={groups!r} is not valid: expected a positive int")
    if isinstance(padding, str):
        raise ValueError(f"padding={padding!r} is not valid for a transposed convolution: expected "
                         "an int or a tuple (as F.conv_transposeNd; no 'same' or 'valid')")
    pad_before, pad_after = resolve_padding(padding, ndim, tuple(kernel), stride, dilation)
    for axis, (op, s, d) in enumerate(zip(output_padding, stride, dilation)):
        if op >= max(s, d):
            raise ValueError(f"output_padding={given_output_padding!r} is not valid: it must be smaller "
                             f"than either stride or dilation (axis {axis}: stride {s}, dilation "
                             f"{d}), as in PyTorch")
    if w_in != in_channels:
        raise ValueError(f"weight_shape={weight_shape} does not fit input_shape={input_shape}: the "
                         f"input has {in_channels} channels, the weight's "
                         f"{'last' if layout[-1] == 'C' else 'first'} axis (in) {w_in}")
    if in_channels % groups:
        raise ValueError(f"groups={groups}: the input's {in_channels} channels must be divisible "
                         "by groups")
    out_size = transposed_size(in_size, kernel, stride, dilation, pad_before, pad_after,
                               output_padding)
    if any(o < 1 for o in out_size):
        raise ValueError(f"padding={padding!r} is too large: the output size would be "
                         f"{out_size} for input size {tuple(in_size)}, kernel {tuple(kernel)}, "
                         f"stride {stride}, dilation {dilation}, output_padding {output_padding}")
    # The equivalent convolution's padding after: its output must be exactly the input (module doc).
    equivalent_after = tuple(pa - op + min(op, s - 1)
                             for pa, op, s in zip(pad_after, output_padding, stride))
    return ConvSpec(layout=layout, batch=batch, in_channels=out_per_group * groups,
                    out_channels=in_channels, in_size=out_size, kernel=tuple(kernel),
                    stride=stride, dilation=dilation, pad_before=pad_before,
                    pad_after=equivalent_after, groups=int(groups), dtype=check_dtype(dtype),
                    bias=bool(bias))
