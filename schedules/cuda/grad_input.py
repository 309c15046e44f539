"""GPU rule for the gradient w.r.t. the input.

grad_input is declared as the same correlation as forward, on transformed operands (dy dilated by
the stride and padded, the filter flipped with its channels swapped per group; see
convc.ops.grad_input). Its schedule is forward's (convc.schedules.cuda.forward): the transforms
("dy_dilated", "w_flipped") are computed inside the cooperative fetch into shared memory, so
neither transformed operand ever exists in global memory.

Large non-overlapping windows (ViT's 16x16/16 patch embedding) are declared as a gather instead
(convc.ops.grad_input.gather_grad_input); this rule leaves them to the default GPU schedule (one
thread per dx element; correct, not tuned).

A ring padding (a padding mode other than zeros) adds a "fold" after the reduction: the gradient
of the padded input, ring included, folded back onto the input. cuda_host libraries cannot
allocate device workspace (TVMBackendAllocWorkspace), so that gradient never goes to global
memory: one block per (image, channel) plane computes the plane's padded gradient into shared
memory, synchronizes and folds it into dx (schedule_ring). A plane whose padded gradient does not
fit the target's shared memory (e.g. 230x230 float32, 211 KB, a 224x224 stem) is refused with a
ValueError naming its size. Correct, not tuned: the reduction reads its operands from global
memory (through the cache), one padded position per thread and step.

Known cost: with stride s > 1 the dilated dy holds (s^d - 1)/s^d zeros, and this schedule
multiplies them like any other value (a sub-pixel decomposition would skip them; not done).
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import s_tir

from convc.ops import FOLD, OPERAND_STAGES, REDUCTION, spec_of
from convc.ops.common import acc_dtype
from convc.ops.grad_input import is_gather_grad_input, ring_unpadded
from convc.schedules.default import inline_operand_stages
from convc.target import info

from .common import TARGET_THREADS
from .forward import schedule_correlate

WARP = 32


def rule(func, target):
    """grad_input on CUDA targets; None for anything else."""
    spec, op = spec_of(func)
    if op != "grad_input" or not info(target).is_gpu:
        return None
    if spec.ring_padded:
        return schedule_ring(func, spec, target)
    if is_gather_grad_input(spec):
        return None
    return schedule_correlate(func, target, op)


def schedule_ring(func, spec, target):
    """grad_input of a ring padding without device workspace (see the module docstring): per
    (image, channel) plane, "dx" (the padded plane's gradient) in shared memory, then "fold"."""
    inner = ring_unpadded(spec)
    plane = math.prod(inner.in_size)
    shared = plane * np.dtype(acc_dtype(spec.dtype)).itemsize
    if shared > info(target).max_shared_memory_per_block:
        raise ValueError(
            f"grad_input with padding_mode={spec.padding_mode!r} on a padded plane of "
            f"{'x'.join(map(str, inner.in_size))} needs {shared} bytes of shared memory, more than "
            f"this target's {info(target).max_shared_memory_per_block} per block: compile it for a CPU target, or use "
            "padding_mode='zeros'")
    threads = min(TARGET_THREADS, info(target).max_threads_per_block, -(-plane // WARP) * WARP)
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    inline_operand_stages(sch, OPERAND_STAGES["grad_input"])
    fold, dx = sch.get_sblock(FOLD), sch.get_sblock(REDUCTION["grad_input"])
    nd = spec.ndim
    planes = _plane_loops(sch, fold, nd, spec.channels_last)
    block = sch.fuse(*planes[:2])
    sch.bind(block, "blockIdx.x")
    _thread_loop(sch, planes[2:], threads)
    sch.compute_at(dx, block, preserve_unit_loops=True)
    sch.set_scope(dx, 0, "shared")
    # Each thread sums in a register and stores its position once: the barrier then only
    # separates the stores from the fold's reads.
    acc = sch.cache_write(dx, 0, "local")
    dx_loops = sch.get_loops(dx)[1:]
    spatial = _plane_loops(sch, dx, nd, spec.channels_last, dx_loops)[2:]
    thread = _thread_loop(sch, spatial, threads)
    sch.reverse_compute_at(acc, thread)
    return sch


def _plane_loops(sch, block, nd, channels_last, loops=None):
    """The block's (n, c, *spatial) loops, reordered so for channels-last layouts."""
    loops = list(loops if loops is not None else sch.get_loops(block))
    n, c, sp = (loops[0], loops[nd + 1], loops[1:nd + 1]) if channels_last else \
        (loops[0], loops[1], loops[2:nd + 2])
    if channels_last:
        sch.reorder(n, c, *sp)
    return [n, c, *sp]


def _thread_loop(sch, spatial, threads: int):
    """The plane's positions fused, in steps of `threads` (the same count for "dx" and "fold":
    one thread extent per kernel). -> the thread loop."""
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    _, thread = sch.split(fused, [None, threads])
    sch.bind(thread, "threadIdx.x")
    return thread
