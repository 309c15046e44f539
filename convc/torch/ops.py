"""convc's kernels as PyTorch operators (namespace `convc`), visible to autograd, torch.compile
and torch.export.

    torch.ops.convc.conv(input, weight, packed_weight, bias, scale, shift, residual, stride,
                         padding, dilation, groups, padding_mode, activation, negative_slope)
        y = activation((conv(input, weight) + bias) * scale + shift + residual): the forward
        with its fused epilogue (scale/shift/residual None and activation "" for a plain conv)
    torch.ops.convc.conv_grad_input(grad_output, weight, packed_weight, input_size, stride,
                                    padding, dilation, groups, padding_mode)
    torch.ops.convc.conv_grad_weight(input, grad_output, weight_size, stride, padding,
                                     dilation, groups, padding_mode)
    torch.ops.convc.conv_grad_bias(grad_output)
    torch.ops.convc.conv_transpose(input, weight, packed_weight, bias, stride, padding,
                                   output_padding, groups, dilation)
        F.conv_transposeNd (arguments in its order, groups before dilation; weight PyTorch's
        (in, out/groups, *k); padding_mode always zeros)
    torch.ops.convc.conv_transpose_grad_input(grad_output, weight, packed_weight, input_size,
                                              stride, padding, output_padding, groups, dilation)
    torch.ops.convc.conv_transpose_grad_weight(input, grad_output, weight_size, stride, padding,
                                               output_padding, groups, dilation)

One op each for 1-D, 2-D and 3-D (the rank is the tensors'). Tensors are batched, indexed as
PyTorch's (N, C, *spatial), weights (O, I/groups, *k); `padding` is (before..., after...), one
pair per spatial axis. An activation stored channels-last runs convc's channels-last kernel on
a view of its memory, and the output is stored the same way (convc.torch.layout);
`packed_weight`, when given, is the weight already repacked for the channels-last kernel (the
modules cache it), else it is repacked per call; conv and conv_grad_input also take from it the
kernel packs a module keeps for the weight's current version (convc.torch.packs).

Autograd: each op's backward calls the others as ops, so every gradient is itself
differentiable (double backward, gradient penalties):

    conv         -> conv_grad_input (input), conv_grad_weight (weight), conv_grad_bias (bias);
                    with an epilogue, the pre-activation is recomputed (conv) and the
                    activation's derivative is aten's (threshold_backward, ...)
    grad_input   -> conv (grad_output), conv_grad_weight (weight)
    grad_weight  -> conv_grad_input (input), conv (grad_output)
    grad_bias    -> grad_output broadcast
    conv_transpose             -> conv_transpose_grad_input (input), conv_transpose_grad_weight
                                  (weight), conv_grad_bias (bias)
    conv_transpose_grad_input  -> conv_transpose (grad_output), conv_transpose_grad_weight (weight)
    conv_transpose_grad_weight -> conv_transpose_grad_input (input), conv_transpose (grad_output)

The transposed ops run the kernels convc.transpose derives from the equivalent convolution:
conv_transpose is its grad_input (+ bias), conv_transpose_grad_input its forward,
conv_transpose_grad_weight its grad_weight with x and dy swapped (no logic of their own).

Only gradients that ctx.needs_input_grad asks for are computed (a frozen layer's weight gets no
conv_grad_weight). `CALLS` counts kernel launches per op (the tests read it).
"""

from __future__ import annotations

import collections
import functools
from typing import List, Optional

import torch
from torch import Tensor

from .. import api, transpose
from ..kernel import compile as compile_kernel
from ..spec import LAYOUTS, ConvSpec, out_size
from ..target import info, resolve
from . import packs
from .layout import (empty_output, empty_weight, from_layout, is_channels_last, pack_weight,
                     to_layout, unpack_weight, weight_destination)

NAMESPACE = "convc"
CALLS: collections.Counter = collections.Counter()
_KERNELS: dict = {}     # call key -> compiled function and its output shape (in the layout)


def _pairs(padding) -> tuple:
    half = len(padding) // 2
    return tuple(zip(padding[:half], padding[half:]))


def _activation_arg(activation: str, negative_slope: float):
    if not activation:
        return None
    if activation == "leaky_relu":
        return ("leaky_relu", negative_slope)
    if activation == "gelu_tanh":
        return ("gelu", "tanh")
    return activation


def _kernel(op, x_shape, w_shape, stride, padding, dilation, groups, padding_mode, last, dtype,
            epilogue=(False, False, False, "", 0.01)):
    """(compiled function, destination shape) for one op, memoized by everything it depends on.
    Shapes are in the kernel's layout."""
    key = (op, x_shape, w_shape, tuple(stride), tuple(padding), tuple(dilation), groups,
           padding_mode, last, dtype, epilogue)
    found = _KERNELS.get(key)
    if found is not None:
        return found
    bias, scale_shift, residual, activation, slope = epilogue
    ndim = len(x_shape) - 2
    spec = ConvSpec.from_shapes(x_shape, w_shape, stride, _pairs(padding), dilation, groups,
                                layout=LAYOUTS[ndim][int(last)], dtype=str(dtype).split(".")[-1],
                                bias=bias, padding_mode=padding_mode, scale_shift=scale_shift,
                                residual=residual, activation=_activation_arg(activation, slope))
    return _compiled(key, spec, op)


def _compiled(key, spec, op):
    kernel = compile_kernel(spec, op, resolve(None))
    packs.remember(kernel)
    found = _KERNELS[key] = (kernel.function, kernel.arg_shapes[-1])
    return found


def _transpose_kernel(op, x_shape, w_shape, stride, padding, output_padding, groups, dilation,
                      last, dtype, bias=False):
    """_kernel for the transposed ops ("conv_transpose", "conv_transpose_grad_input",
    "conv_transpose_grad_weight"): the same kernels of the equivalent convolution
    (convc.transpose.from_shapes), keyed by the transposed op's own shapes (in the layout)."""
    key = (op, x_shape, w_shape, tuple(stride), tuple(padding), tuple(output_padding), groups,
           tuple(dilation), last, dtype, bias)
    found = _KERNELS.get(key)
    if found is not None:
        return found
    ndim = len(x_shape) - 2
    spec = transpose.from_shapes(x_shape, w_shape, stride, _pairs(padding), output_padding,
                                 groups, dilation, layout=LAYOUTS[ndim][int(last)],
                                 dtype=str(dtype).split(".")[-1], bias=bias)
    return _compiled(key, spec, op)


def _indexed(shape, last: bool) -> tuple:
    """A kernel's (N, *spatial, C) shape as PyTorch indexes it, (N, C, *spatial)."""
    return (shape[0], shape[-1], *shape[1:-1]) if last else tuple(shape)


def _in_layout(size, last: bool) -> tuple:
    """A (N, C, *spatial) size as the kernel's layout holds it: (N, *spatial, C) if last."""
    size = tuple(size)
    return (size[0], *size[2:], size[1]) if last else size


def _output_size(in_size, kernel, stride, padding, dilation) -> tuple:
    half = len(padding) // 2
    return out_size(in_size, kernel, stride, dilation, padding[:half], padding[half:])


# --- 1x1 channels-last layers: the same GEMM with the channels swapped ------------------------

def swaps_channels(weight_shape, stride, padding, groups, last: bool, dtype) -> bool:
    """Whether a channels-last layer is a plain GEMM over positions (every kernel extent 1,
    stride 1, no padding, one group) whose channel counts both take whole vectors of `dtype`:
    then its three ops run as one another's with input and output channels swapped, on
    PyTorch's own weight memory, with no repacked weight either way.

    Such a conv's weight (O, I, 1, ...) holds an (O, I) matrix, which is the HWIO weight
    (1, ..., O, I) of the conv from O channels to I. With x (P, I), dy (P, O) over positions P:
    forward y = x W^T is that swapped conv's grad_input (from dy' = x); grad_input dx = dy W is
    its forward (of x' = dy); grad_weight dW = dy^T x is its grad_weight (of x' = dy, dy' = x),
    written straight into the gradient's memory (the unswapped kernel writes (I, O), which
    unpack_weight copies out).

    Measured (AMD EPYC Zen 4, 2 cores, 2026-12-04, float32, batch 8, one process, each layer's
    repack + forward + grad_input + grad_weight + copy-out against the swapped three, least of
    5 paired rounds): 30 of the model zoo's 186 1x1 stride-1 layers drawn at random plus 7 chosen
    (MobileNetV2's, odd counts): with both counts multiples of 16, 25 layers at 1.00-1.31x (one
    0.96: 288 -> 48 on 35x35); with one that is not, 0.68-1.92x (96 -> 24 0.90, 144 -> 24 0.94,
    5 -> 37 0.68: the swapped forward, a grad_input kernel, is 0.77-0.84x on such narrow or
    ragged outputs), so those keep the repack. MobileNetV2's channels-last training step, paired
    in one process, median of 7 rounds: 83.3 -> 76.2 ms (PyTorch's 71.2); with every 1x1 layer
    swapped, before this whole-vector condition, 83.0 -> 76.4 and 79.1 -> 77.8 ms."""
    if not (last and groups == 1 and all(k == 1 for k in weight_shape[2:])
            and all(s == 1 for s in stride) and not any(padding)):
        return False
    lanes = _lanes(dtype)
    return weight_shape[0] % lanes == 0 and weight_shape[1] % lanes == 0


@functools.lru_cache(maxsize=None)
def _lanes(dtype) -> int:
    return info(resolve(None)).lanes(str(dtype).split(".")[-1])


def _swapped(weight: Tensor) -> Optional[Tensor]:
    """A swaps_channels layer's weight (O, I, 1, ...) as the swapped conv's (1, ..., O, I): a
    view of its memory, None where its (O, I) matrix is not stored row-major."""
    if not weight.is_contiguous():
        return None
    o, i = weight.shape[:2]
    return weight.detach().view(*[1] * (weight.dim() - 2), o, i)


def _swapped_shape(shape, channels: int) -> tuple:
    """A layout shape (N, *spatial, C) with C replaced."""
    return (*shape[:-1], channels)


# --- forward -----------------------------------------------------------------------------------

def conv_impl(input: Tensor, weight: Tensor, packed_weight: Optional[Tensor], bias: Optional[Tensor],
              scale: Optional[Tensor], shift: Optional[Tensor], residual: Optional[Tensor],
              stride: List[int], padding: List[int], dilation: List[int], groups: int,
              padding_mode: str, activation: str, negative_slope: float) -> Tensor:
    """The kernel call itself (also what the modules call directly when no gradient is wanted)."""
    input = input.detach()
    last = is_channels_last(input)
    x = to_layout(input, last)
    plain = bias is None and scale is None and residual is None and not activation
    if plain and packed_weight is None and swaps_channels(weight.shape, stride, padding, groups,
                                                          last, input.dtype):
        w = _swapped(weight)
        if w is not None:   # y = the channel-swapped conv's grad_input, from dy' = x
            function, shape = _kernel("grad_input", _swapped_shape(x.shape, weight.shape[0]),
                                      tuple(w.shape), stride, padding, dilation, 1, padding_mode,
                                      last, input.dtype)
            y = empty_output(input, _indexed(shape, last), last)
            function(x, w, to_layout(y, last))
            CALLS["conv"] += 1
            return y
    w = (packed_weight if last and packed_weight is not None else pack_weight(weight, last)).detach()
    extra = [t.detach() for t in (bias, scale, shift) if t is not None]
    if residual is not None:
        extra.append(to_layout(residual.detach(), last))
    epilogue = (bias is not None, scale is not None, residual is not None, activation,
                negative_slope)
    function, shape = _kernel("forward", tuple(x.shape), tuple(w.shape), stride, padding, dilation,
                              groups, padding_mode, last, input.dtype, epilogue)
    y = empty_output(input, _indexed(shape, last), last)
    function, w = packs.select(function, w, packed_weight, weight)  # a module's kernel pack
    function(x, w, *extra, to_layout(y, last))
    CALLS["conv"] += 1
    return y


conv = torch.library.custom_op(f"{NAMESPACE}::conv", conv_impl, mutates_args=(), device_types="cpu")


@conv.register_fake
def _conv_fake(input, weight, packed_weight, bias, scale, shift, residual, stride, padding,
               dilation, groups, padding_mode, activation, negative_slope):
    size = _output_size(input.shape[2:], weight.shape[2:], stride, padding, dilation)
    return empty_output(input, (input.shape[0], weight.shape[0], *size), is_channels_last(input))


# --- adjoints ----------------------------------------------------------------------------------

def grad_input_impl(grad_output: Tensor, weight: Tensor, packed_weight: Optional[Tensor],
                    input_size: List[int], stride: List[int], padding: List[int],
                    dilation: List[int], groups: int, padding_mode: str) -> Tensor:
    grad_output = grad_output.detach()
    last = is_channels_last(grad_output)
    dy = to_layout(grad_output, last)
    size = tuple(input_size)
    if packed_weight is None and swaps_channels(weight.shape, stride, padding, groups, last,
                                                grad_output.dtype):
        w = _swapped(weight)
        if w is not None:   # dx = the channel-swapped conv's forward, of x' = dy
            function, shape = _kernel("forward", tuple(dy.shape), tuple(w.shape), stride,
                                      padding, dilation, 1, padding_mode, last,
                                      grad_output.dtype)
            dx = empty_output(grad_output, size, last)
            function(dy, w, to_layout(dx, last))
            CALLS["conv_grad_input"] += 1
            return dx
    w = (packed_weight if last and packed_weight is not None else pack_weight(weight, last)).detach()
    x_shape = _in_layout(size, last)
    function, shape = _kernel("grad_input", x_shape, tuple(w.shape), stride, padding, dilation,
                              groups, padding_mode, last, grad_output.dtype)
    dx = empty_output(grad_output, size, last)
    function, w = packs.select(function, w, packed_weight, weight)  # a module's kernel pack
    function(dy, w, to_layout(dx, last))
    CALLS["conv_grad_input"] += 1
    return dx


conv_grad_input = torch.library.custom_op(f"{NAMESPACE}::conv_grad_input", grad_input_impl,
                                          mutates_args=(), device_types="cpu")


@conv_grad_input.register_fake
def _grad_input_fake(grad_output, weight, packed_weight, input_size, stride, padding, dilation,
                     groups, padding_mode):
    return empty_output(grad_output, tuple(input_size), is_channels_last(grad_output))


def grad_weight_impl(input: Tensor, grad_output: Tensor, weight_size: List[int], stride: List[int],
                     padding: List[int], dilation: List[int], groups: int,
                     padding_mode: str) -> Tensor:
    input = input.detach()
    last = is_channels_last(input)
    x = to_layout(input, last)
    dy = to_layout(grad_output.detach(), last)
    size = tuple(weight_size)
    if swaps_channels(size, stride, padding, groups, last, input.dtype):
        # dW (O, I) = the channel-swapped conv's grad_weight (x' = dy, dy' = x), in place
        dw = empty_weight(input, size, last)
        swapped = dw.view(*[1] * (len(size) - 2), size[0], size[1])
        function, _ = _kernel("grad_weight", tuple(dy.shape), tuple(swapped.shape), stride,
                              padding, dilation, 1, padding_mode, last, input.dtype)
        function(dy, x, swapped)
        CALLS["conv_grad_weight"] += 1
        return dw
    w_shape = (*size[2:], size[1], size[0]) if last else size
    function, shape = _kernel("grad_weight", tuple(x.shape), w_shape, stride, padding, dilation,
                              groups, padding_mode, last, input.dtype)
    dw = weight_destination(shape, input.dtype, last)
    function(x, dy, dw)
    CALLS["conv_grad_weight"] += 1
    return unpack_weight(dw, last)


conv_grad_weight = torch.library.custom_op(f"{NAMESPACE}::conv_grad_weight", grad_weight_impl,
                                           mutates_args=(), device_types="cpu")


@conv_grad_weight.register_fake
def _grad_weight_fake(input, grad_output, weight_size, stride, padding, dilation, groups,
                      padding_mode):
    return empty_weight(input, weight_size, is_channels_last(input))


def grad_bias_impl(grad_output: Tensor) -> Tensor:
    grad_output = grad_output.detach()
    last = is_channels_last(grad_output)
    ndim = grad_output.dim() - 2
    layout = LAYOUTS[ndim][int(last)]
    CALLS["conv_grad_bias"] += 1
    return api._grad_bias(ndim, to_layout(grad_output, last), layout)


conv_grad_bias = torch.library.custom_op(f"{NAMESPACE}::conv_grad_bias", grad_bias_impl,
                                         mutates_args=(), device_types="cpu")


@conv_grad_bias.register_fake
def _grad_bias_fake(grad_output):
    return grad_output.new_empty((grad_output.shape[1],))


# --- autograd ----------------------------------------------------------------------------------

def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """(C,) -> (1, C, 1, ...) for broadcasting over (N, C, *spatial)."""
    return v.reshape(1, -1, *([1] * ndim))


def _sum_per_channel(t: Tensor) -> Tensor:
    return t.sum(dim=[d for d in range(t.dim()) if d != 1])


def _activation_backward(dy: Tensor, z: Tensor, activation: str, slope: float) -> Tensor:
    """dy * activation'(z), with aten's own derivative ops (each differentiable again)."""
    aten = torch.ops.aten
    if not activation:
        return dy
    if activation == "relu":
        return aten.threshold_backward(dy, z, 0)
    if activation == "relu6":
        return aten.hardtanh_backward(dy, z, 0.0, 6.0)
    if activation == "leaky_relu":
        return aten.leaky_relu_backward(dy, z, slope, False)
    if activation == "silu":
        return aten.silu_backward(dy, z)
    if activation in ("gelu", "gelu_tanh"):
        return aten.gelu_backward(dy, z, approximate="tanh" if activation == "gelu_tanh" else "none")
    if activation == "hardswish":
        return aten.hardswish_backward(dy, z)
    if activation == "sigmoid":
        return aten.sigmoid_backward(dy, torch.sigmoid(z))
    raise ValueError(f"activation={activation!r} has no derivative here")


def _stored(t: Tensor, last: bool) -> Tensor:
    """t (N, C, *spatial) stored channels-last if `last`, else contiguous (a copy only where it
    is not)."""
    return t if is_channels_last(t) == last else from_layout(to_layout(t, last), last)


def _like_layout(t: Tensor, template: Tensor) -> Tensor:
    """t stored in template's layout (gradients arrive in whatever memory the next op made)."""
    return _stored(t, is_channels_last(template))


def _conv_setup(ctx, inputs, output):
    input, weight, packed, bias, scale, shift, residual, *params = inputs
    ctx.save_for_backward(input, weight, packed, bias, scale, shift, residual)
    ctx.params = params


def _conv_backward(ctx, dy, eager=False):
    """conv's gradients, by the adjoint ops (so that they have gradients again: double backward).
    `eager` (conv_eager's autograd.Function, never traced): where no graph is recorded (a
    backward without create_graph) the kernel calls themselves, without the custom ops' wrapper
    (~65 us a call on torch 2.13, see eager; in MobileNetV2's step, 52 layers x 2-3 adjoints)."""
    input, weight, packed, bias, scale, shift, residual = ctx.saved_tensors
    if eager and not torch.is_grad_enabled():
        forward, grad_input, grad_weight, grad_bias = (conv_impl, grad_input_impl,
                                                       grad_weight_impl, grad_bias_impl)
    else:
        forward, grad_input, grad_weight, grad_bias = (conv, conv_grad_input, conv_grad_weight,
                                                       conv_grad_bias)
    stride, padding, dilation, groups, mode, activation, slope = ctx.params
    need = ctx.needs_input_grad
    ndim = input.dim() - 2
    dy = _like_layout(dy, input)
    d_scale = d_shift = d_residual = None
    du = dy
    if scale is not None or residual is not None or activation:
        u = forward(input, weight, packed, bias, None, None, None, stride, padding, dilation,
                    groups, mode, "", slope)
        z = u if scale is None else u * _per_channel(scale, ndim) + _per_channel(shift, ndim)
        z = z if residual is None else z + residual
        dz = _activation_backward(dy, z, activation, slope)
        d_residual = dz if need[6] else None
        du = dz
        if scale is not None:
            d_shift = _sum_per_channel(dz) if need[5] else None
            d_scale = _sum_per_channel(dz * u) if need[4] else None
            du = dz * _per_channel(scale, ndim)
        du = _like_layout(du, input)
    dx = dw = db = None
    if need[0]:
        dx = grad_input(du, weight, packed, list(input.shape), stride, padding, dilation, groups,
                        mode)
    if need[1]:
        dw = grad_weight(input, du, list(weight.shape), stride, padding, dilation, groups, mode)
    if bias is not None and need[3]:
        db = grad_bias(du)
    return dx, dw, None, db, d_scale, d_shift, d_residual, None, None, None, None, None, None, None


conv.register_autograd(_conv_backward, setup_context=_conv_setup)


def eager(name: str, impl, setup, backward, doc: str = ""):
    """An op's registered autograd as a plain function for eager calls that record a graph:
    an autograd.Function running `impl` with the op's own `setup` and `backward` (so the
    gradients, and their own gradients, since the backward calls the ops, are the op's), without
    the custom-op wrapper's cost: torch 2.13's wrapper re-reads the op's schema on every call
    (torch._library.utils.fill_defaults, ~65 us of a ~100 us call on a tiny conv layer)."""

    def forward(ctx, *inputs):
        output = impl(*inputs)
        setup(ctx, inputs, output)
        return output

    function = type(f"_Eager_{name}", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward)})

    def call(*inputs):
        return function.apply(*inputs)

    call.__name__ = call.__qualname__ = f"{name}_eager"
    call.__doc__ = doc or f"torch.ops.convc.{name}'s forward and autograd, in eager mode (eager)."
    return call


conv_eager = eager("conv", conv_impl, _conv_setup, functools.partial(_conv_backward, eager=True))


def _grad_input_setup(ctx, inputs, output):
    grad_output, weight, packed, input_size, *params = inputs
    ctx.save_for_backward(grad_output, weight, packed)
    ctx.params = params


def _grad_input_backward(ctx, g):
    grad_output, weight, packed = ctx.saved_tensors
    stride, padding, dilation, groups, mode = ctx.params
    need = ctx.needs_input_grad
    g = _like_layout(g, grad_output)
    d_dy = d_w = None
    if need[0]:
        d_dy = conv(g, weight, packed, None, None, None, None, stride, padding, dilation, groups,
                    mode, "", 0.01)
    if need[1]:
        d_w = conv_grad_weight(g, grad_output, list(weight.shape), stride, padding, dilation,
                               groups, mode)
    return d_dy, d_w, None, None, None, None, None, None, None


conv_grad_input.register_autograd(_grad_input_backward, setup_context=_grad_input_setup)


def _grad_weight_setup(ctx, inputs, output):
    input, grad_output, weight_size, *params = inputs
    ctx.save_for_backward(input, grad_output)
    ctx.params = params


def _grad_weight_backward(ctx, g):
    input, grad_output = ctx.saved_tensors
    stride, padding, dilation, groups, mode = ctx.params
    need = ctx.needs_input_grad
    d_x = d_dy = None
    if need[0]:
        d_x = conv_grad_input(_like_layout(grad_output, input), g, None, list(input.shape), stride,
                              padding, dilation, groups, mode)
    if need[1]:
        d_dy = conv(input, g, None, None, None, None, None, stride, padding, dilation, groups,
                    mode, "", 0.01)
    return d_x, d_dy, None, None, None, None, None, None


conv_grad_weight.register_autograd(_grad_weight_backward, setup_context=_grad_weight_setup)


def _grad_bias_setup(ctx, inputs, output):
    ctx.shape = tuple(inputs[0].shape)


def _grad_bias_backward(ctx, g):
    return _per_channel(g, len(ctx.shape) - 2).expand(ctx.shape)


conv_grad_bias.register_autograd(_grad_bias_backward, setup_context=_grad_bias_setup)


# --- transposed convolution --------------------------------------------------------------------
# Weights are PyTorch's transposed ones, (in, out/groups, *k); the channels-last kernels take
# (*k, out/groups, in), the same permutation as a convolution's weight (pack_weight). Each op is
# the kernel convc.transpose names: conv_transpose = the equivalent convolution's grad_input
# (+ bias), conv_transpose_grad_input = its forward, conv_transpose_grad_weight = its grad_weight
# with x and dy swapped.

def _transpose_size(in_size, kernel, stride, padding, output_padding, dilation) -> tuple:
    half = len(padding) // 2
    return transpose.transposed_size(in_size, kernel, stride, dilation, padding[:half],
                                     padding[half:], output_padding)


def conv_transpose_impl(input: Tensor, weight: Tensor, packed_weight: Optional[Tensor],
                        bias: Optional[Tensor], stride: List[int], padding: List[int],
                        output_padding: List[int], groups: int, dilation: List[int]) -> Tensor:
    input = input.detach()
    last = is_channels_last(input)
    x = to_layout(input, last)
    w = (packed_weight if last and packed_weight is not None else pack_weight(weight, last)).detach()
    extra = [] if bias is None else [bias.detach()]
    function, shape = _transpose_kernel("conv_transpose", tuple(x.shape), tuple(w.shape), stride,
                                        padding, output_padding, groups, dilation, last,
                                        input.dtype, bias is not None)
    y = empty_output(input, _indexed(shape, last), last)
    function(x, w, *extra, to_layout(y, last))
    CALLS["conv_transpose"] += 1
    return y


conv_transpose = torch.library.custom_op(f"{NAMESPACE}::conv_transpose", conv_transpose_impl,
                                         mutates_args=(), device_types="cpu")


@conv_transpose.register_fake
def _conv_transpose_fake(input, weight, packed_weight, bias, stride, padding, output_padding,
                         groups, dilation):
    size = _transpose_size(input.shape[2:], weight.shape[2:], stride, padding, output_padding,
                           dilation)
    return empty_output(input, (input.shape[0], weight.shape[1] * groups, *size),
                        is_channels_last(input))


def conv_transpose_grad_input_impl(grad_output: Tensor, weight: Tensor,
                                   packed_weight: Optional[Tensor], input_size: List[int],
                                   stride: List[int], padding: List[int],
                                   output_padding: List[int], groups: int,
                                   dilation: List[int]) -> Tensor:
    grad_output = grad_output.detach()
    last = is_channels_last(grad_output)
    dy = to_layout(grad_output, last)
    w = (packed_weight if last and packed_weight is not None else pack_weight(weight, last)).detach()
    size = tuple(input_size)
    x_shape = _in_layout(size, last)
    function, shape = _transpose_kernel("conv_transpose_grad_input", x_shape, tuple(w.shape),
                                        stride, padding, output_padding, groups, dilation, last,
                                        grad_output.dtype)
    dx = empty_output(grad_output, size, last)
    function(dy, w, to_layout(dx, last))
    CALLS["conv_transpose_grad_input"] += 1
    return dx


conv_transpose_grad_input = torch.library.custom_op(
    f"{NAMESPACE}::conv_transpose_grad_input", conv_transpose_grad_input_impl, mutates_args=(),
    device_types="cpu")


@conv_transpose_grad_input.register_fake
def _conv_transpose_grad_input_fake(grad_output, weight, packed_weight, input_size, stride,
                                    padding, output_padding, groups, dilation):
    return empty_output(grad_output, tuple(input_size), is_channels_last(grad_output))


def conv_transpose_grad_weight_impl(input: Tensor, grad_output: Tensor, weight_size: List[int],
                                    stride: List[int], padding: List[int],
                                    output_padding: List[int], groups: int,
                                    dilation: List[int]) -> Tensor:
    input = input.detach()
    last = is_channels_last(input)
    x = to_layout(input, last)
    dy = to_layout(grad_output.detach(), last)
    size = tuple(weight_size)
    w_shape = (*size[2:], size[1], size[0]) if last else size
    function, shape = _transpose_kernel("conv_transpose_grad_weight", tuple(x.shape), w_shape,
                                        stride, padding, output_padding, groups, dilation, last,
                                        input.dtype)
    dw = weight_destination(shape, input.dtype, last)
    function(dy, x, dw)            # dy first: the equivalent convolution's input (convc.ops)
    CALLS["conv_transpose_grad_weight"] += 1
    return unpack_weight(dw, last)


conv_transpose_grad_weight = torch.library.custom_op(
    f"{NAMESPACE}::conv_transpose_grad_weight", conv_transpose_grad_weight_impl, mutates_args=(),
    device_types="cpu")


@conv_transpose_grad_weight.register_fake
def _conv_transpose_grad_weight_fake(input, grad_output, weight_size, stride, padding,
                                     output_padding, groups, dilation):
    return empty_weight(input, weight_size, is_channels_last(input))


def _conv_transpose_setup(ctx, inputs, output):
    input, weight, packed, bias, *params = inputs
    ctx.save_for_backward(input, weight, packed, bias)
    ctx.params = params


def _conv_transpose_backward(ctx, dy):
    input, weight, packed, bias = ctx.saved_tensors
    params = ctx.params
    need = ctx.needs_input_grad
    dy = _like_layout(dy, input)
    dx = dw = db = None
    if need[0]:
        dx = conv_transpose_grad_input(dy, weight, packed, list(input.shape), *params)
    if need[1]:
        dw = conv_transpose_grad_weight(input, dy, list(weight.shape), *params)
    if bias is not None and need[3]:
        db = conv_grad_bias(dy)
    return dx, dw, None, db, None, None, None, None, None


conv_transpose.register_autograd(_conv_transpose_backward, setup_context=_conv_transpose_setup)


conv_transpose_eager = eager("conv_transpose", conv_transpose_impl, _conv_transpose_setup,
                             _conv_transpose_backward)


def _transpose_grad_input_setup(ctx, inputs, output):
    grad_output, weight, packed, input_size, *params = inputs
    ctx.save_for_backward(grad_output, weight, packed)
    ctx.params = params


def _transpose_grad_input_backward(ctx, g):
    grad_output, weight, packed = ctx.saved_tensors
    params = ctx.params
    need = ctx.needs_input_grad
    g = _like_layout(g, grad_output)
    d_dy = d_w = None
    if need[0]:
        d_dy = conv_transpose(g, weight, packed, None, *params)
    if need[1]:
        d_w = conv_transpose_grad_weight(g, grad_output, list(weight.shape), *params)
    return d_dy, d_w, None, None, None, None, None, None, None


conv_transpose_grad_input.register_autograd(_transpose_grad_input_backward,
                                            setup_context=_transpose_grad_input_setup)


def _transpose_grad_weight_setup(ctx, inputs, output):
    input, grad_output, weight_size, *params = inputs
    ctx.save_for_backward(input, grad_output)
    ctx.params = params


def _transpose_grad_weight_backward(ctx, g):
    input, grad_output = ctx.saved_tensors
    params = ctx.params
    need = ctx.needs_input_grad
    d_x = d_dy = None
    if need[0]:
        d_x = conv_transpose_grad_input(_like_layout(grad_output, input), g, None,
                                        list(input.shape), *params)
    if need[1]:
        d_dy = conv_transpose(input, g, None, None, *params)
    return d_x, d_dy, None, None, None, None, None, None


conv_transpose_grad_weight.register_autograd(_transpose_grad_weight_backward,
                                             setup_context=_transpose_grad_weight_setup)

OPS = {"conv": conv, "conv_grad_input": conv_grad_input, "conv_grad_weight": conv_grad_weight,
       "conv_grad_bias": conv_grad_bias, "conv_transpose": conv_transpose,
       "conv_transpose_grad_input": conv_transpose_grad_input,
       "conv_transpose_grad_weight": conv_transpose_grad_weight}
