"""Compiled kernels: ``compile(spec, op, target) -> Kernel``, callable on arrays, memoized in
this process (the disk cache, in convc.build, survives it).

    core.py     Kernel: argument checks, copies only where memory demands, aligned outputs
    cuda.py     CudaKernel: the same on GPU 0 (NumPy copied there and back, or CUDA tensors)
    arrays.py   NumPy views of DLPack tensors, when an array must be copied, aligned allocation
"""

from __future__ import annotations

import threading

from ..build import build
from ..ops import check_kernel_op
from ..pool_spec import PoolSpec
from ..spec import ConvSpec
from ..target import resolved
from .arrays import ALIGNMENT, aligned_copy, aligned_empty, as_array
from .core import Kernel
from .cuda import CudaKernel

_KERNELS: dict = {}          # (spec, op, Target) -> Kernel
_MEMOS: list = [_KERNELS]    # every memo holding kernels: cleared together
_LOCK = threading.Lock()


def memo() -> dict:
    """A new dict for things made from compiled kernels (e.g. the functional API's call plans),
    cleared with them by clear_memory_cache()."""
    table: dict = {}
    _MEMOS.append(table)
    return table


def compile(spec, op: str = "forward", target=None) -> Kernel:  # noqa: A001 - public name
    """Compile `op` of `spec` for `target`: a ConvSpec's "forward", "grad_input" or
    "grad_weight" (for a transposed convolution's equivalent spec, convc.transpose, also
    "conv_transpose", "conv_transpose_grad_input", "conv_transpose_grad_weight"); a PoolSpec's
    kernels (PoolSpec.ops: "forward", "grad_input", and for max pooling "forward_indices" and
    "grad_input_indices").

    target: None (this CPU), "llvm", "cuda", a dict, a JSON string or a resolved Target (see
    convc.target.resolve). The result is cached in memory and on disk; a second call for the
    same arguments returns the same Kernel object.
    """
    if not isinstance(spec, (ConvSpec, PoolSpec)):
        raise TypeError(f"spec={spec!r} is not a ConvSpec or a PoolSpec: build one with "
                        "ConvSpec.from_shapes(...) or PoolSpec.max_pool(...) (avg_pool, "
                        "adaptive_avg_pool)")
    op = check_kernel_op(spec, op)
    target = resolved(target)
    memo_key = (spec, op, target)
    kernel = _KERNELS.get(memo_key)
    if kernel is not None:
        return kernel
    with _LOCK:
        kernel = _KERNELS.get(memo_key)
        if kernel is None:
            kernel = _KERNELS[memo_key] = _kernel(spec, op, target)
    return kernel


def _kernel(spec, op: str, target) -> Kernel:
    made = build(spec, op, target)
    if target.is_gpu and made.module is not None:
        return CudaKernel(spec, op, target, made.module, made.how, made.tir, made.library,
                          made.stats, unit=made.source)
    return Kernel(spec, op, target, made.module, made.how, made.tir, library=made.library,
                  stats=made.stats)


def clear_memory_cache() -> None:
    """Forget compiled kernels held in this process, and everything made from them (the disk
    cache is kept)."""
    with _LOCK:
        for table in _MEMOS:
            table.clear()


__all__ = ["ALIGNMENT", "CudaKernel", "Kernel", "aligned_copy", "aligned_empty", "as_array",
           "clear_memory_cache", "compile", "memo"]
