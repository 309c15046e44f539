"""GPU rule for every pooling kernel (convc.ops.pool): one thread per output element.

Pooling reads each input a few times and computes almost nothing, so the GPU layout is the one
that moves memory well: the reduction block's spatial axes fused in memory order (innermost =
contiguous: channels in channels-last, width in channels-first) and cut into blocks of
`threads`, so consecutive threads write consecutive elements and read neighbouring ones
(coalesced); each thread keeps its window's accumulator in a register ("local") and writes it
once, avg's divisor and float16's cast folded into that write. Padding and the divisor tables
are computed inline. Max pooling's positions ("argmax", "indices") are found by the same thread
right after its maximum, from the values it just read (cached in L1/L2), its key in a register:
one kernel.

max grad_input from the input is one kernel too: each thread of the gather finds again the
maxima and positions of the few windows covering its element (the loop over those windows
unrolled, the taps' not: see rule), in registers (no temporary: an exported library's host
code, cuda_host, has no workspace allocator, and a kernel cannot allocate global memory). Not measured on a GPU (none was available): the block size is the
usual 256 threads, capped by the target's limit.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from convc.ops.pool import REDUCTION, pool_spec_of
from convc.target import info

from .common import TARGET_THREADS, block_by_name, divisor_at_most

INLINED = ("pad", "scale")
# Max pooling's positions: the window's maximum, its key, its flat index.
POSITIONS = ("pool", "argmax", "indices")


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
    if op == "forward_indices":
        _per_thread(sch, sch.get_sblock("pool"), threads, after=("argmax", "indices"))
        sch.set_scope(sch.get_sblock("argmax"), 0, "local")
        return sch
    _per_thread(sch, sch.get_sblock(REDUCTION[op]), threads)
    if op == "grad_input" and spec.pool == "max":
        # each covering window's position found inside the gather's innermost loop: one value
        # per stage, in registers (at the thread, a window of dilated 3x3 max pool windows went
        # to the stack: 560 bytes, spilled)
        covers = sch.get_loops(sch.get_sblock(REDUCTION[op]))[-spec.ndim:]
        for name in POSITIONS[::-1]:  # consumers first: each lands before the one it feeds
            stage = sch.get_sblock(name)
            sch.compute_at(stage, covers[-1], preserve_unit_loops=True)
            sch.set_scope(stage, 0, "local")
        # the covering windows unrolled (their loops over the taps kept): with both loops
        # rolled, ptxas held the thread's index arithmetic in 32 registers and spilled (ResNet's
        # 3x3/2 NCHW float32 on sm_90: 4 bytes; 3-D NDHWC float32 and float16 on sm_80); the
        # taps unrolled too spilled float64 on sm_80 (24 bytes). Covers unrolled: no spill on
        # the test grid, at most 40 (sm_90) / 46 (sm_80) registers.
        for loop in covers:
            sch.unroll(loop)
    return sch


def _per_thread(sch: s_tir.Schedule, block, threads: int, after=()) -> None:
    """One thread per element of `block`'s output, its reduction in a register; the blocks named
    in `after` (consumers of that element) computed by the same thread; the function's "output"
    stage (float16's cast), if any, folded into the write-back.

    The block size divides the element count (the largest divisor up to `threads`: 256 for
    every layer of the bench): with a remainder, the register's write-back and the blocks
    computed after it are not predicated like the reduction (TVM's region of a tile that
    does not divide its loop over-covers) and the last block's idle threads wrote past the
    output (seen in the guarded CPU run of a 5x6x6 output)."""
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)
    spatial = [lp for lp, kind in zip(loops, kinds) if kind == 0]
    total = 1
    for loop in spatial:
        total *= int(sch.get(loop).extent)
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    bx, tx = sch.split(fused, [None, divisor_at_most(total, threads)])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, tx, preserve_unit_loops=True)
    stage = block_by_name(sch, "output")
    if stage is not None:
        sch.reverse_compute_inline(stage)
    for name in after:
        sch.reverse_compute_at(sch.get_sblock(name), tx, preserve_unit_loops=True)
