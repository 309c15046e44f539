"""GPU rule for every pooling kernel (convc.ops.pool): one thread per output element.

Pooling reads each input a few times and computes almost nothing, so the GPU layout is the one
that moves memory well: the reduction block's spatial axes fused in memory order (innermost =
contiguous: channels in channels-last, width in channels-first) and cut into blocks of
`threads`, so consecutive threads write consecutive elements and read neighbouring ones
(coalesced); each thread keeps its window's accumulator in a register ("local") and writes it
once, avg's divisor and float16's cast folded into that write. Padding and the divisor tables
are computed inline. Max pooling's positions ("argmax", "indices") are found by the same thread
right after its maximum, from the values it just read (cached in L1/L2): one kernel.

max grad_input from the input is two kernels: the positions (as forward_indices, into a
temporary), then the gather. Not measured on a GPU (none was available): the block size is the
usual 256 threads, capped by the target's limit.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from convc.ops.pool import REDUCTION, pool_spec_of
from convc.target import info

from .common import TARGET_THREADS, block_by_name

INLINED = ("pad", "scale")


def rule(func, target):
    """Every pooling kernel on CUDA targets; None for anything else."""
    spec, op = pool_spec_of(func)
    if spec is None or not info(target).is_gpu:
        return None
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    for name in INLINED:
        stage = block_by_name(sch, name)
        if stage is not None:
            sch.compute_inline(stage)
    threads = max(info(target).warp_size,
                  min(TARGET_THREADS, info(target).max_threads_per_block))
    positions = op == "forward_indices" or (op == "grad_input" and spec.pool == "max")
    if positions:
        _per_thread(sch, sch.get_sblock("pool"), threads, after=("argmax", "indices"))
    if op != "forward_indices":
        _per_thread(sch, sch.get_sblock(REDUCTION[op]), threads)
    return sch


def _per_thread(sch: s_tir.Schedule, block, threads: int, after=()) -> None:
    """One thread per element of `block`'s output, its reduction in a register; the blocks named
    in `after` (consumers of that element) computed by the same thread."""
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)
    spatial = [lp for lp, kind in zip(loops, kinds) if kind == 0]
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    bx, tx = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, tx, preserve_unit_loops=True)
    epilogue = block_by_name(sch, "output")
    if epilogue is not None:
        sch.reverse_compute_inline(epilogue)
    for name in after:
        sch.reverse_compute_at(sch.get_sblock(name), tx, preserve_unit_loops=True)
