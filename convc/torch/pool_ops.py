"""convc's pooling kernels as PyTorch operators (namespace `convc`), beside the convolutions of
convc.torch.ops and made the same way (fake kernels, autograd calling the adjoints as ops, the
kernels memoized per call key, tensors through DLPack, channels-last memory run as it is):

    torch.ops.convc.max_pool(input, kernel_size, stride, padding, dilation, ceil_mode)
        F.max_poolNd's values
    torch.ops.convc.max_pool_with_indices(...the same...) -> (values, indices)
        return_indices=True: int64 flat positions in each input plane, as PyTorch's
    torch.ops.convc.max_pool_grad_input(input, grad_output, kernel_size, ..., ceil_mode)
        the gradient from the input (each window's maximum found again)
    torch.ops.convc.max_pool_grad_input_indices(grad_output, indices, input_size, kernel_size,
                                                ..., ceil_mode)
        the gradient from saved indices
    torch.ops.convc.max_pool_gather(input, indices, kernel_size, ..., ceil_mode)
        input at the saved indices (zero where an index is outside its window): the adjoint of
        max_pool_grad_input_indices w.r.t. grad_output
    torch.ops.convc.avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                             divisor_override)
    torch.ops.convc.avg_pool_grad_input(grad_output, input_size, kernel_size, ...the same...)
    torch.ops.convc.adaptive_avg_pool(input, output_size)
    torch.ops.convc.adaptive_avg_pool_grad_input(grad_output, input_size)

One op each for 1-D, 2-D and 3-D; tensors batched (N, C, *spatial); every list has one entry
per spatial axis (stride resolved: PyTorch's default is kernel_size; output_size without None).
The kernels are convc.ops.pool's (PoolSpec's ops, and max pooling's "gather_indices").

Autograd (each backward calls ops, so every gradient is differentiable again):

    max_pool                    -> max_pool_grad_input (input)
    max_pool_grad_input         -> max_pool_gather (grad_output) at max_pool_with_indices'
                                   indices; the input gets none (the gradient is piecewise
                                   constant in it)
    max_pool_with_indices       -> max_pool_grad_input_indices (input)
    max_pool_grad_input_indices -> max_pool_gather (grad_output)
    max_pool_gather             -> max_pool_grad_input_indices (input)
    avg_pool <-> avg_pool_grad_input, adaptive_avg_pool <-> adaptive_avg_pool_grad_input
                                   (each the other's adjoint: both linear)

Only gradients ctx.needs_input_grad asks for are computed; indices are never differentiable.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..pool_spec import PoolSpec, pooled_size
from ..spec import LAYOUTS
from .layout import empty_output, is_channels_last, to_layout
from .ops import (CALLS, NAMESPACE, _KERNELS, _compiled, _in_layout, _indexed, _like_layout,
                  _stored, eager)

BUILDERS = {"max": PoolSpec.max_pool, "avg": PoolSpec.avg_pool,
            "adaptive_avg": PoolSpec.adaptive_avg_pool}


def _kernel(pool: str, op: str, shape, last: bool, dtype, args: tuple):
    """(compiled function, its last argument's shape in the layout) for kernel `op` of a pooling
    of an input of `shape` (in the layout) with the PoolSpec builder's arguments `args`,
    memoized as convc.torch.ops memoizes the convolutions'."""
    args = tuple(tuple(a) if isinstance(a, list) else a for a in args)
    key = ("pool", pool, op, tuple(shape), last, dtype, args)
    found = _KERNELS.get(key)
    if found is not None:
        return found
    layout = LAYOUTS[len(shape) - 2][int(last)]
    spec = BUILDERS[pool](tuple(shape), *args, layout=layout, dtype=str(dtype).split(".")[-1])
    return _compiled(key, spec, op)


def _launch(name: str, pool: str, op: str, size, args: tuple, tensors, last: bool,
            outputs=None) -> Tensor:
    """Run kernel `op` on `tensors` (indexed (N, C, *spatial), stored in any memory: each read in
    the layout `last` names) for an input of `size` (N, C, *spatial); the outputs are allocated
    in that layout: `outputs` [(shape, dtype)], or one of the kernel's own output shape in the
    first tensor's dtype. -> the output (a tuple for several)."""
    dtype = tensors[0].dtype
    function, shape = _kernel(pool, op, _in_layout(size, last), last, dtype, args)
    if outputs is None:
        outputs = [(_indexed(shape, last), dtype)]
    results = [empty_output(tensors[0], out_shape, last, out_dtype)
               for out_shape, out_dtype in outputs]
    function(*[to_layout(t.detach(), last) for t in tensors],
             *[to_layout(r, last) for r in results])
    CALLS[name] += 1
    return results[0] if len(results) == 1 else tuple(results)


def _pooled(input: Tensor, kernel_size, stride, padding, dilation, ceil_mode) -> tuple:
    """The output (N, C, *out) of a max or avg pooling of `input` (PoolSpec's rule)."""
    out = [pooled_size(i, k, s, p, d, ceil_mode) for i, k, s, p, d in
           zip(input.shape[2:], kernel_size, stride, padding, dilation)]
    return (input.shape[0], input.shape[1], *out)


def _register(name: str, impl, fake):
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=(),
                                 device_types="cpu")
    op.register_fake(fake)
    return op


# --- max pooling ---------------------------------------------------------------------------------

def max_pool_impl(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                  dilation: List[int], ceil_mode: bool) -> Tensor:
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    return _launch("max_pool", "max", "forward", input.shape, args, [input],
                   is_channels_last(input))


def _max_pool_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pooled(input, kernel_size, stride, padding, dilation, ceil_mode)
    return empty_output(input, shape, is_channels_last(input))


max_pool = _register("max_pool", max_pool_impl, _max_pool_fake)


def max_pool_with_indices_impl(input: Tensor, kernel_size: List[int], stride: List[int],
                               padding: List[int], dilation: List[int],
                               ceil_mode: bool) -> Tuple[Tensor, Tensor]:
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    shape = _pooled(input, *args)
    return _launch("max_pool_with_indices", "max", "forward_indices", input.shape, args, [input],
                   is_channels_last(input), [(shape, input.dtype), (shape, torch.int64)])


def _max_pool_with_indices_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pooled(input, kernel_size, stride, padding, dilation, ceil_mode)
    last = is_channels_last(input)
    return empty_output(input, shape, last), empty_output(input, shape, last, torch.int64)


max_pool_with_indices = _register("max_pool_with_indices", max_pool_with_indices_impl,
                                  _max_pool_with_indices_fake)


def max_pool_grad_input_impl(input: Tensor, grad_output: Tensor, kernel_size: List[int],
                             stride: List[int], padding: List[int], dilation: List[int],
                             ceil_mode: bool) -> Tensor:
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    return _launch("max_pool_grad_input", "max", "grad_input", input.shape, args,
                   [input, grad_output], is_channels_last(input), [(input.shape, input.dtype)])


def _max_pool_grad_input_fake(input, grad_output, kernel_size, stride, padding, dilation,
                              ceil_mode):
    return empty_output(input, input.shape, is_channels_last(input))


max_pool_grad_input = _register("max_pool_grad_input", max_pool_grad_input_impl,
                                _max_pool_grad_input_fake)


def max_pool_grad_input_indices_impl(grad_output: Tensor, indices: Tensor, input_size: List[int],
                                     kernel_size: List[int], stride: List[int],
                                     padding: List[int], dilation: List[int],
                                     ceil_mode: bool) -> Tensor:
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    return _launch("max_pool_grad_input_indices", "max", "grad_input_indices", input_size, args,
                   [grad_output, indices], is_channels_last(indices),
                   [(tuple(input_size), grad_output.dtype)])


def _max_pool_grad_input_indices_fake(grad_output, indices, input_size, kernel_size, stride,
                                      padding, dilation, ceil_mode):
    return empty_output(grad_output, tuple(input_size), is_channels_last(indices))


max_pool_grad_input_indices = _register("max_pool_grad_input_indices",
                                        max_pool_grad_input_indices_impl,
                                        _max_pool_grad_input_indices_fake)


def max_pool_gather_impl(input: Tensor, indices: Tensor, kernel_size: List[int],
                         stride: List[int], padding: List[int], dilation: List[int],
                         ceil_mode: bool) -> Tensor:
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    return _launch("max_pool_gather", "max", "gather_indices", input.shape, args,
                   [input, indices], is_channels_last(indices),
                   [(tuple(indices.shape), input.dtype)])


def _max_pool_gather_fake(input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return empty_output(input, tuple(indices.shape), is_channels_last(indices))


max_pool_gather = _register("max_pool_gather", max_pool_gather_impl, _max_pool_gather_fake)


# --- average pooling -----------------------------------------------------------------------------

def avg_pool_impl(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                  ceil_mode: bool, count_include_pad: bool,
                  divisor_override: Optional[int]) -> Tensor:
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return _launch("avg_pool", "avg", "forward", input.shape, args, [input],
                   is_channels_last(input))


def _avg_pool_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                   divisor_override):
    shape = _pooled(input, kernel_size, stride, padding, [1] * len(kernel_size), ceil_mode)
    return empty_output(input, shape, is_channels_last(input))


avg_pool = _register("avg_pool", avg_pool_impl, _avg_pool_fake)


def avg_pool_grad_input_impl(grad_output: Tensor, input_size: List[int], kernel_size: List[int],
                             stride: List[int], padding: List[int], ceil_mode: bool,
                             count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return _launch("avg_pool_grad_input", "avg", "grad_input", input_size, args, [grad_output],
                   is_channels_last(grad_output), [(tuple(input_size), grad_output.dtype)])


def _avg_pool_grad_input_fake(grad_output, input_size, *args):
    return empty_output(grad_output, tuple(input_size), is_channels_last(grad_output))


avg_pool_grad_input = _register("avg_pool_grad_input", avg_pool_grad_input_impl,
                                _avg_pool_grad_input_fake)


def adaptive_avg_pool_impl(input: Tensor, output_size: List[int]) -> Tensor:
    return _launch("adaptive_avg_pool", "adaptive_avg", "forward", input.shape, (output_size,),
                   [input], is_channels_last(input))


def _adaptive_avg_pool_fake(input, output_size):
    return empty_output(input, (*input.shape[:2], *output_size), is_channels_last(input))


adaptive_avg_pool = _register("adaptive_avg_pool", adaptive_avg_pool_impl,
                              _adaptive_avg_pool_fake)


def adaptive_avg_pool_grad_input_impl(grad_output: Tensor, input_size: List[int]) -> Tensor:
    return _launch("adaptive_avg_pool_grad_input", "adaptive_avg", "grad_input", input_size,
                   (tuple(grad_output.shape[2:]),), [grad_output], is_channels_last(grad_output),
                   [(tuple(input_size), grad_output.dtype)])


def _adaptive_avg_pool_grad_input_fake(grad_output, input_size):
    return empty_output(grad_output, tuple(input_size), is_channels_last(grad_output))


adaptive_avg_pool_grad_input = _register("adaptive_avg_pool_grad_input",
                                         adaptive_avg_pool_grad_input_impl,
                                         _adaptive_avg_pool_grad_input_fake)


# --- autograd ------------------------------------------------------------------------------------

def _call(name: str, *args):
    """Op `name` as a backward calls it: in plain eager mode (real tensors, no tracing or
    dispatch mode: not inside torch.compile / torch.export) through its autograd.Function (see
    convc.torch.ops.eager: the same autograd, without the custom-op wrapper's ~65 us a call),
    else the custom op itself (what the tracers record)."""
    plain = (not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
             and all(type(a) in (Tensor, torch.nn.Parameter) for a in args
                     if isinstance(a, Tensor)))
    return (EAGER if plain else POOL_OPS)[name](*args)


def _save_input(ctx, inputs, output):
    """Save the first argument (the input, or grad_output) and keep the rest as parameters."""
    ctx.save_for_backward(inputs[0])
    ctx.params = inputs[1:]


def _max_pool_backward(ctx, dy):
    (input,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    dx = _call("max_pool_grad_input", input, _like_layout(dy, input), *ctx.params)
    return dx, None, None, None, None, None


def _max_pool_grad_input_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.params = inputs[2:]


def _max_pool_grad_input_backward(ctx, g):
    (input,) = ctx.saved_tensors
    d_dy = None
    if ctx.needs_input_grad[1]:
        _, indices = _call("max_pool_with_indices", input, *ctx.params)
        d_dy = _call("max_pool_gather", _like_layout(g, input), indices, *ctx.params)
    return None, d_dy, None, None, None, None, None


def _with_indices_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.size, ctx.params = list(inputs[0].shape), inputs[1:]


def _with_indices_backward(ctx, dy, _):
    (indices,) = ctx.saved_tensors
    dx = None
    if ctx.needs_input_grad[0]:
        dx = _call("max_pool_grad_input_indices", _like_layout(dy, indices), indices, ctx.size,
                                         *ctx.params)
    return dx, None, None, None, None, None


def _indices_setup(ctx, inputs, output):
    """max_pool_grad_input_indices and max_pool_gather: (tensor, indices, ...)."""
    ctx.save_for_backward(inputs[1])
    ctx.size = list(inputs[0].shape)
    ctx.params = inputs[3:] if len(inputs) == 8 else inputs[2:]


def _grad_input_indices_backward(ctx, g):
    (indices,) = ctx.saved_tensors
    d_dy = None
    if ctx.needs_input_grad[0]:
        d_dy = _call("max_pool_gather", _like_layout(g, indices), indices, *ctx.params)
    return d_dy, None, None, None, None, None, None, None


def _gather_backward(ctx, g):
    (indices,) = ctx.saved_tensors
    d_x = None
    if ctx.needs_input_grad[0]:
        d_x = _call("max_pool_grad_input_indices", _like_layout(g, indices), indices, ctx.size,
                                          *ctx.params)
    return d_x, None, None, None, None, None, None


def _shape_setup(ctx, inputs, output):
    """The averages: linear, so only the first argument's shape and layout, and the rest."""
    ctx.size, ctx.params = list(inputs[0].shape), inputs[1:]
    ctx.last = is_channels_last(inputs[0])


def _avg_pool_backward(ctx, dy):
    dx = None
    if ctx.needs_input_grad[0]:
        dx = _call("avg_pool_grad_input", _stored(dy, ctx.last), ctx.size, *ctx.params)
    return dx, None, None, None, None, None, None


def _avg_pool_grad_input_backward(ctx, g):
    d_dy = None
    if ctx.needs_input_grad[0]:
        d_dy = _call("avg_pool", _stored(g, ctx.last), *ctx.params[1:])
    return d_dy, None, None, None, None, None, None, None


def _adaptive_backward(ctx, dy):
    dx = None
    if ctx.needs_input_grad[0]:
        dx = _call("adaptive_avg_pool_grad_input", _stored(dy, ctx.last), ctx.size)
    return dx, None


def _adaptive_grad_input_backward(ctx, g):
    d_dy = None
    if ctx.needs_input_grad[0]:
        d_dy = _call("adaptive_avg_pool", _stored(g, ctx.last), ctx.size[2:])
    return d_dy, None


AUTOGRAD = {  # op -> (implementation, setup_context, backward)
    "max_pool": (max_pool, max_pool_impl, _save_input, _max_pool_backward),
    "max_pool_grad_input": (max_pool_grad_input, max_pool_grad_input_impl,
                            _max_pool_grad_input_setup, _max_pool_grad_input_backward),
    "max_pool_with_indices": (max_pool_with_indices, max_pool_with_indices_impl,
                              _with_indices_setup, _with_indices_backward),
    "max_pool_grad_input_indices": (max_pool_grad_input_indices,
                                    max_pool_grad_input_indices_impl, _indices_setup,
                                    _grad_input_indices_backward),
    "max_pool_gather": (max_pool_gather, max_pool_gather_impl, _indices_setup,
                        _gather_backward),
    "avg_pool": (avg_pool, avg_pool_impl, _shape_setup, _avg_pool_backward),
    "avg_pool_grad_input": (avg_pool_grad_input, avg_pool_grad_input_impl, _shape_setup,
                            _avg_pool_grad_input_backward),
    "adaptive_avg_pool": (adaptive_avg_pool, adaptive_avg_pool_impl, _shape_setup,
                          _adaptive_backward),
    "adaptive_avg_pool_grad_input": (adaptive_avg_pool_grad_input,
                                     adaptive_avg_pool_grad_input_impl, _shape_setup,
                                     _adaptive_grad_input_backward),
}
POOL_OPS = {name: op for name, (op, _, _, _) in AUTOGRAD.items()}
# Each op with its autograd in eager mode (convc.torch.ops.eager): what the modules and the
# backwards call outside torch.compile / torch.export.
EAGER = {}
for _name, (_op, _impl, _setup, _backward) in AUTOGRAD.items():
    _op.register_autograd(_backward, setup_context=_setup)
    EAGER[_name] = eager(_name, _impl, _setup, _backward)
