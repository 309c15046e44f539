"""The functional transposed convolution, named and ordered like
torch.nn.functional.conv_transpose{1,2,3}d (note: groups before dilation), and its two adjoints.

    convc.conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                           groups=1, dilation=1, *, padding_mode="zeros", layout, target)
    convc.conv_transpose2d_grad_input(input_size, weight, grad_output, stride=1, padding=0,
                                      output_padding=0, groups=1, dilation=1, *, ...)
    convc.conv_transpose2d_grad_weight(input, weight_size, grad_output, stride=1, padding=0,
                                       output_padding=0, groups=1, dilation=1, *, ...)

The weight is PyTorch's (in, out/groups, *k) in channels-first layouts, (*k, out/groups, in) in
channels-last ones. Each compiles the matching op of the equivalent convolution
(convc.transpose): the forward is that convolution's grad_input, its grad_input that
convolution's forward, its grad_weight that convolution's grad_weight. Same two paths as
convc.api: the first call checks everything and leaves a plan; a call with the same key runs it.
"""

from __future__ import annotations

from . import transpose
from .api import (_batched, _cached, _float_array, _grad_input_arrays,
                  _grad_weight_arrays, _layout, _like, _remember, _same_dtype, _unbatch, _weight)
from .kernel import compile as compile_kernel
from .plans import plain
from .spec import LAYOUTS
from .target import given_key, resolve


def _key(op, ndim, first, second, size, args, layout, target, third=None):
    """What a call is keyed by (see convc.api): the arrays' shapes, the first one's type and
    dtype, every other argument as given."""
    return (op, ndim, type(first), first.shape, first.dtype, second.shape,
            None if third is None else third.shape, plain(size), *(plain(a) for a in args),
            layout, given_key(target))


def _spec(input_shape, weight_shape, args, layout, dtype, bias=False):
    stride, padding, output_padding, groups, dilation, padding_mode = args
    return transpose.from_shapes(input_shape, weight_shape, stride, padding, output_padding,
                                 groups, dilation, layout=layout, dtype=dtype, bias=bias,
                                 padding_mode=padding_mode)


def _check_grad_output(expected, grad_output, where):
    if tuple(grad_output.shape) != tuple(expected):
        raise ValueError(f"grad_output has shape {tuple(grad_output.shape)}: expected "
                         f"{tuple(expected)}, the output shape of this transposed convolution "
                         f"({where})")


def _forward(ndim, input, weight, bias, args, layout, target):
    arrays = (input, weight) + (() if bias is None else (bias,))
    key, result = _cached(_key, arrays, "conv_transpose", ndim, input, weight, None, args,
                          layout, target, bias)
    if result is not None:
        return result
    layout = _layout(layout, ndim)
    x = _float_array(input, "input")
    w = _weight(_float_array(weight, "weight"), "weight", ndim, layout)
    _same_dtype(x, "input", w, "weight")
    x, unbatched = _batched(x, "input", ndim, layout)
    b = None
    if bias is not None:
        b = _float_array(bias, "bias")
        _same_dtype(x, "input", b, "bias")
    spec = _spec(x.shape, w.shape, args, layout, str(x.dtype), bias=b is not None)
    if b is not None and tuple(b.shape) != (spec.in_channels,):
        raise ValueError(f"bias has shape {tuple(b.shape)}: expected ({spec.in_channels},) (one "
                         "entry per output channel)")
    kernel = compile_kernel(spec, "conv_transpose", resolve(target))
    result = kernel.run([x, w] + ([] if b is None else [b]))
    _remember(key, kernel, input, (unbatched, False, False)[:len(arrays)], unbatched)
    return _like(input, _unbatch(result, unbatched))


def _grad_input(ndim, input_size, weight, grad_output, args, layout, target):
    key, result = _cached(_key, (grad_output, weight), "conv_transpose_grad_input", ndim,
                          grad_output, weight, input_size, args, layout, target)
    if result is not None:
        return result
    layout = _layout(layout, ndim)
    size, w, dy, unbatched = _grad_input_arrays(ndim, input_size, weight, grad_output, layout)
    spec = _spec(size, w.shape, args, layout, str(w.dtype))
    _check_grad_output(spec.input_shape, dy, f"input_size={tuple(input_size)}, weight "
                                             f"{tuple(w.shape)}")
    kernel = compile_kernel(spec, "conv_transpose_grad_input", resolve(target))
    result = kernel.run([dy, w])
    _remember(key, kernel, grad_output, (unbatched, False), unbatched)
    return _like(grad_output, _unbatch(result, unbatched))


def _grad_weight(ndim, input, weight_size, grad_output, args, layout, target):
    # The kernel takes dy first (the equivalent convolution's input): see convc.ops.ARGUMENTS.
    key, result = _cached(_key, (grad_output, input), "conv_transpose_grad_weight", ndim, input,
                          grad_output, weight_size, args, layout, target)
    if result is not None:
        return result
    layout = _layout(layout, ndim)
    x, size, dy, unbatched = _grad_weight_arrays(ndim, input, weight_size, grad_output, layout,
                                                 transpose.TRANSPOSE_WEIGHT_LAYOUTS)
    spec = _spec(x.shape, size, args, layout, str(x.dtype))
    _check_grad_output(spec.input_shape, dy, f"input {tuple(x.shape)}, weight_size={size}")
    kernel = compile_kernel(spec, "conv_transpose_grad_weight", resolve(target))
    result = kernel.run([dy, x])
    _remember(key, kernel, input, (unbatched, unbatched), False)
    return _like(input, result)


def _make(ndim: int):
    def conv_transpose(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                       dilation=1, *, padding_mode="zeros", layout=None, target=None):
        return _forward(ndim, input, weight, bias,
                        (stride, padding, output_padding, groups, dilation, padding_mode), layout,
                        target)

    def grad_input(input_size, weight, grad_output, stride=1, padding=0, output_padding=0,
                   groups=1, dilation=1, *, padding_mode="zeros", layout=None, target=None):
        return _grad_input(ndim, input_size, weight, grad_output,
                           (stride, padding, output_padding, groups, dilation, padding_mode),
                           layout, target)

    def grad_weight(input, weight_size, grad_output, stride=1, padding=0, output_padding=0,
                    groups=1, dilation=1, *, padding_mode="zeros", layout=None, target=None):
        return _grad_weight(ndim, input, weight_size, grad_output,
                            (stride, padding, output_padding, groups, dilation, padding_mode),
                            layout, target)

    first, last = LAYOUTS[ndim]
    wf, wl = transpose.TRANSPOSE_WEIGHT_LAYOUTS[first], transpose.TRANSPOSE_WEIGHT_LAYOUTS[last]
    name = f"conv_transpose{ndim}d"
    conv_transpose.__name__ = conv_transpose.__qualname__ = name
    conv_transpose.__doc__ = (
        f"{ndim}-D transposed convolution, as torch.nn.functional.{name} (groups before "
        f"dilation).\n\ninput: ({first}) or unbatched; weight: (in, out/groups, *k) ({wf}) for "
        f"{first}, (*k, out/groups, in) ({wl}) for {last}; bias: (out,) or None.\n"
        "Output size per axis: (i - 1)*stride - 2*padding + dilation*(k - 1) + output_padding + 1;"
        " output_padding < max(stride, dilation). padding: an int or a tuple (per-side "
        "(before, after) pairs also work); padding_mode: only 'zeros', as nn.ConvTransposeNd.")
    grad_input.__name__ = grad_input.__qualname__ = f"{name}_grad_input"
    grad_input.__doc__ = (f"Gradient of {name} w.r.t. its input (of shape input_size): a forward "
                          "convolution of grad_output with the same weight, stride, padding, "
                          "dilation and groups.")
    grad_weight.__name__ = grad_weight.__qualname__ = f"{name}_grad_weight"
    grad_weight.__doc__ = (f"Gradient of {name} w.r.t. its weight (of shape weight_size): the "
                           "convolution's weight gradient with the roles of input and "
                           "grad_output swapped.")
    return conv_transpose, grad_input, grad_weight


conv_transpose1d, conv_transpose1d_grad_input, conv_transpose1d_grad_weight = _make(1)
conv_transpose2d, conv_transpose2d_grad_input, conv_transpose2d_grad_weight = _make(2)
conv_transpose3d, conv_transpose3d_grad_input, conv_transpose3d_grad_weight = _make(3)
