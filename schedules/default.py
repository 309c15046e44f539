"""The fallback schedule: correct for every convc function on every target, fast on none.

CPU: operand stages inlined, the two outermost loops of every remaining block fused and parallel.
GPU: operand stages inlined, every block's spatial loops fused and bound to blockIdx/threadIdx,
reductions serial inside each thread.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from convc.target import info


def inline_operand_stages(sch: s_tir.Schedule, names) -> None:
    """compute_inline every named block that exists (pad/dilate/flip views)."""
    for name in names:
        try:
            block = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - TVM raises its own error type for an absent block
            continue
        sch.compute_inline(block)


def blocks(sch: s_tir.Schedule):
    """The top-level blocks of the function, in program order."""
    return sch.get_child_blocks(sch.get_sblock("root"))


def spatial_loops(sch: s_tir.Schedule, block):
    """The block's outer loops that iterate over spatial (non-reduction) block axes."""
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    return [loop for loop, kind in zip(loops, kinds) if kind == 0]  # 0 = data parallel


def default_cpu(sch: s_tir.Schedule, target) -> s_tir.Schedule:
    for block in blocks(sch):
        outer = spatial_loops(sch, block)[:2]
        if outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    return sch


def default_gpu(sch: s_tir.Schedule, target) -> s_tir.Schedule:
    threads = min(256, info(target).max_threads_per_block)
    for block in blocks(sch):
        loops = spatial_loops(sch, block)
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        bx, tx = sch.split(fused, [None, threads])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
    return sch


def default(func, target) -> s_tir.Schedule:
    from convc.ops import OPERAND_STAGES, spec_of

    _, op = spec_of(func)
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    inline_operand_stages(sch, OPERAND_STAGES.get(op, ()))
    if info(target).is_gpu:
        return default_gpu(sch, target)
    return default_cpu(sch, target)
