"""How PyTorch tensors map onto convc's layouts, without copying.

A PyTorch activation is always indexed (N, C, *spatial); its memory decides the convc layout:
stored contiguously it is channels-first (NCW/NCHW/NCDHW), stored as (N, *spatial, C) (what
`memory_format=torch.channels_last` / `channels_last_3d` give; for 1-D, a transposed NWC tensor)
it is channels-last, and convc's channels-last kernels read a permuted *view* of it: no copy.
A weight is always PyTorch's (O, I/groups, *k); channels-last kernels take the HWIO family
(*k, I/groups, O), a repacked copy (`pack_weight`, cached by the modules). Where the weight is
stored channels_last ((O, *k, I) in memory, what `model.to(memory_format=torch.channels_last)`
gives), that repack and its way back (`unpack_weight`, the weight gradient) are a 2-D transpose,
run by a compiled kernel (convc.build.transpose: 4x faster than aten's permute copy).
"""

from __future__ import annotations

import math
import threading

import torch

from ..spec import LAYOUTS

_TRANSPOSES: dict = {}   # (rows, cols, dtype) -> compiled 2-D transpose (convc.build.transpose)
_TRANSPOSE_DTYPES = (torch.float16, torch.float32, torch.float64)
# Weights smaller than this keep aten's copy: below it, aten copies serially in microseconds and
# waking TVM's pool after PyTorch's ops costs more than the transpose saves (MobileNetV2's 52
# weights, most of them 1x1 or depthwise under 64K values, each packed and unpacked per step:
# paired in one process, 5 rounds, its channels_last step 91-113 ms with the kernel on every
# weight against 85-104 ms with aten's copies, 2026-12-02, Zen 4).
TRANSPOSE_MIN_ELEMENTS = 1 << 16

# Per spatial rank: (N, C, *s) -> (N, *s, C) and back; weight (O, I, *k) -> (*k, I, O) and back.
TO_LAST = {n: (0, *range(2, n + 2), 1) for n in LAYOUTS}
FROM_LAST = {n: (0, n + 1, *range(1, n + 1)) for n in LAYOUTS}
WEIGHT_TO_LAST = {n: (*range(2, n + 2), 1, 0) for n in LAYOUTS}
WEIGHT_FROM_LAST = {n: (n + 1, n, *range(n)) for n in LAYOUTS}


_MEMORY_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def is_channels_last(x: torch.Tensor) -> bool:
    """True when x (N, C, *spatial) is stored as a contiguous (N, *spatial, C) and not also as a
    contiguous (N, C, *spatial) (a tensor with one channel or one position is both: it runs the
    channels-first kernel)."""
    if x.is_contiguous():
        return False
    memory_format = _MEMORY_FORMATS.get(x.dim())
    if memory_format is not None:  # the same stride test as the permuted view's, without the view
        return x.is_contiguous(memory_format=memory_format)
    return x.permute(TO_LAST[x.dim() - 2]).is_contiguous()


def to_layout(x: torch.Tensor, last: bool) -> torch.Tensor:
    """x (N, C, *spatial) as the kernel reads it: itself (channels-first) or its (N, *spatial, C)
    view (channels-last), copied only where its memory is neither."""
    if last:
        view = x.permute(TO_LAST[x.dim() - 2])
        return view if view.is_contiguous() else view.contiguous()
    return x if x.is_contiguous() else x.contiguous()


def from_layout(y: torch.Tensor, last: bool) -> torch.Tensor:
    """A kernel's output back as (N, C, *spatial) (a view: channels-last memory stays so)."""
    return y.permute(FROM_LAST[y.dim() - 2]) if last else y


def empty_output(like: torch.Tensor, shape, last: bool, dtype=None) -> torch.Tensor:
    """A new (N, C, *spatial) tensor of `shape` stored in the layout's memory format: not a view
    (a view made inside an op would trip autograd on a later in-place op, e.g. ReLU(inplace));
    like's dtype unless given (max pooling's int64 indices)."""
    dtype = like.dtype if dtype is None else dtype
    if not last:
        return like.new_empty(shape, dtype=dtype)
    strides = [0] * len(shape)
    step = 1
    for axis in reversed(TO_LAST[len(shape) - 2]):
        strides[axis] = step
        step *= shape[axis]
    return like.new_empty_strided(tuple(shape), tuple(strides), dtype=dtype)


def _transpose_2d(source: torch.Tensor, destination: torch.Tensor) -> torch.Tensor:
    """destination (cols, rows) = source (rows, cols) transposed, both C-contiguous CPU tensors
    of one dtype, by convc.build.transpose's kernel (compiled once per shape and dtype)."""
    rows, cols = source.shape
    key = (rows, cols, source.dtype)
    function = _TRANSPOSES.get(key)
    if function is None:
        from ..build.transpose import transpose_function
        from ..target import resolve

        dtype = str(source.dtype).split(".")[-1]
        function = _TRANSPOSES[key] = transpose_function(rows, cols, dtype, resolve(None))
    function(source.detach(), destination)
    return destination


def _transposable(weight: torch.Tensor) -> bool:
    """Whether a weight (O, I/groups, *k) can go to or from the channels-last kernels' (*k,
    I/groups, O) by one 2-D transpose: a CPU float tensor of at least TRANSPOSE_MIN_ELEMENTS values
    stored (O, *k, I/groups)."""
    stored_last = weight.permute(0, *range(2, weight.dim()), 1).is_contiguous()
    return (weight.device.type == "cpu" and weight.dtype in _TRANSPOSE_DTYPES
            and weight.numel() >= max(TRANSPOSE_MIN_ELEMENTS, 1) and stored_last)


def pack_weight(weight: torch.Tensor, last: bool) -> torch.Tensor:
    """PyTorch's weight (O, I/groups, *k) as the kernel takes it: itself (channels-first) or a
    contiguous (*k, I/groups, O) copy (channels-last; a compiled 2-D transpose where the weight is
    stored (O, *k, I/groups), as channels_last weights are, else aten's permute copy)."""
    if last:
        order = WEIGHT_TO_LAST[weight.dim() - 2]
        if _transposable(weight):
            out = torch.empty([weight.shape[i] for i in order], dtype=weight.dtype)
            rows = weight.permute(0, *range(2, weight.dim()), 1).reshape(weight.shape[0], -1)
            _transpose_2d(rows, out.view(-1, weight.shape[0]))
            return out
        return weight.permute(order).contiguous()
    return weight if weight.is_contiguous() else weight.contiguous()


def weight_memory_format(ndim: int, last: bool):
    """The memory format of a weight gradient: channels_last(_3d) beside channels-last kernels
    (what `model.to(memory_format=torch.channels_last)` gives the weights, so autograd's
    AccumulateGrad takes the gradient as it is instead of copying it into the weight's strides),
    else contiguous."""
    if last and ndim in (2, 3):
        return torch.channels_last if ndim == 2 else torch.channels_last_3d
    return torch.contiguous_format


def empty_weight(like: torch.Tensor, size, last: bool) -> torch.Tensor:
    """A new (O, I/groups, *k) weight-shaped tensor in weight_memory_format's layout."""
    return torch.empty(tuple(size), dtype=like.dtype, device=like.device,
                       memory_format=weight_memory_format(len(size) - 2, last))


_SCRATCH = threading.local()   # .buffer: this thread's flat scratch for weight_destination


def weight_destination(shape, dtype, last: bool) -> torch.Tensor:
    """Where a grad_weight kernel writes its (kernel-layout) result. Channels-first: a new tensor,
    which is returned as the gradient. Channels-last: the result is only read by unpack_weight,
    which copies it into a new (O, I/groups, *k) tensor, so it goes to a per-thread scratch
    buffer (flat, grown to the largest weight seen, viewed to `shape`) instead of fresh memory
    every call: a fresh 9.4 MB buffer (ResNet-18's 512x512x3x3) took 2,300 page faults, 2.4-3.0
    ms to fill against 0.2 ms for memory already mapped (AMD EPYC Zen 4 VM, 2026-12-04); in
    ResNet-18's channels-last training step the grad_weight kernel calls took 2,500 faults a
    step. The buffer is reused by the next call on the same thread only after unpack_weight has
    copied this one out (the op implementations do both in one call)."""
    if not last:
        return torch.empty(shape, dtype=dtype)
    count = math.prod(shape)
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < count:
        buffer = _SCRATCH.buffer = torch.empty(max(count, 1), dtype=dtype)
    return buffer[:count].view(shape)


def unpack_weight(weight: torch.Tensor, last: bool) -> torch.Tensor:
    """A kernel's weight-shaped output back as (O, I/groups, *k), stored as empty_weight's."""
    if last:
        view = weight.permute(WEIGHT_FROM_LAST[weight.dim() - 2])
        out = empty_weight(weight, view.shape, True)
        if _transposable(out) and weight.is_contiguous():
            _transpose_2d(weight.view(-1, out.shape[0]),
                          out.permute(0, *range(2, out.dim()), 1).view(out.shape[0], -1))
            return out
        return out.copy_(view)
    return weight
