"""The one GPU tiling every convc reduction goes through, and the budget it is sized from.

Every convc op is a reduction block whose spatial axes index the result and whose reduction axes
run over (channels × taps) or (batch × space). The GPU layout of such a block:

    for block in blockIdx.x:                      # one output tile per block
      for thread in threadIdx.x:                  # one register tile per thread
        acc[inner] = 0                            # "local": registers (inner loops unrolled)
        for r_outer:                              # one shared-memory stage per step
          operand_shared = operand[tile region]   # cooperative fetch, all threads, padding and
          (sync)                                  # dilation/flip stages computed on the fly
          for r_inner: for inner: acc += a * b    # reads shared memory only, unrolled
        result[thread tile] = epilogue(acc)       # bias / cast fused into the write-back

The per-op rules (forward.py, grad_input.py, grad_weight.py) only decide the tile sizes (a Plan),
from a Budget derived from the target's limits; `fit` tries plans in order of preference and keeps
the first whose shared-memory footprint fits.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import tvm
from tvm import s_tir

from convc.target import info

# Blocks per streaming multiprocessor the grid should at least give (TargetInfo.multiprocessors:
# 132 on an H100 SXM, 108 on an A100); it decides when to shrink tiles or split K.
MIN_BLOCKS_PER_SM = 2
# Threads per block the rules aim for: 8 warps. With <= 64 registers per thread this leaves room
# for 4 resident blocks per SM on sm_80/sm_90 (64K registers per SM) and hides shared-memory latency.
TARGET_THREADS = 256
# Outputs per thread (register tile) for 4-byte accumulators; 8-byte ones take two registers.
ACCUMULATOR_REGISTERS = 16
# Shared memory a block may use when the rules have a choice: half the per-block limit, so two
# blocks fit on one SM.
SHARED_FRACTION = 0.5
# Inner loop nests up to this many iterations are unrolled in the IR (the register tile always):
# 64 keeps ptxas time per kernel at about half of 256 and, on the layer suite and test grid, no
# kernel spills (at 256 one did); nvcc unrolls the remaining short reduction loops itself.
UNROLL_STEPS = 64
# Reduction loops outside that nest get `#pragma unroll 2`: left alone, nvcc unrolls them fully
# too and ptxas then hoists so many shared-memory loads that kernels spill (the ResNet stem's
# grad_input on sm_80: 255 registers and 916 bytes of spills without it, none with it).
NVCC_UNROLL = 2


@dataclasses.dataclass(frozen=True)
class Budget:
    """What one thread block may use, from the target's limits (convc.target.TargetInfo)."""
    threads: int          # threads per block to aim for (a multiple of the warp size)
    max_threads: int      # the target's hard limit
    shared_bytes: int     # shared memory to aim for
    max_shared_bytes: int  # the target's hard limit (static shared memory)
    warp: int
    accumulators: int     # register-tile outputs per thread for this accumulator type
    min_blocks: int       # a grid smaller than this leaves multiprocessors idle

    @classmethod
    def of(cls, target, acc_dtype: str) -> "Budget":
        ti = info(target)
        warp = max(1, ti.warp_size)
        threads = max(warp, min(TARGET_THREADS, ti.max_threads_per_block) // warp * warp)
        acc_words = max(1, np.dtype(acc_dtype).itemsize // 4)
        return cls(threads=threads, max_threads=ti.max_threads_per_block,
                   shared_bytes=int(ti.max_shared_memory_per_block * SHARED_FRACTION),
                   max_shared_bytes=ti.max_shared_memory_per_block, warp=warp,
                   accumulators=max(1, ACCUMULATOR_REGISTERS // acc_words),
                   min_blocks=MIN_BLOCKS_PER_SM * max(1, ti.multiprocessors))


@dataclasses.dataclass(frozen=True)
class Tile:
    """One spatial axis: `threads` threads, each owning `inner` consecutive outputs."""
    threads: int = 1
    inner: int = 1

    @property
    def size(self) -> int:
        return self.threads * self.inner


@dataclasses.dataclass(frozen=True)
class Plan:
    """Tile sizes of one reduction block.

    spatial: a Tile per spatial axis of the block (block iteration order).
    chunk:   per reduction axis, the extent staged in shared memory per step (the rest is the
             outer, sequential part of the loop).
    split_k: blocks sharing the outer reduction (results combined by atomic adds), 1 = none.
    """
    spatial: tuple
    chunk: tuple
    split_k: int = 1

    @property
    def threads(self) -> int:
        return math.prod(t.threads for t in self.spatial)

    def blocks(self, extents) -> int:
        return math.prod(-(-e // t.size) for e, t in zip(extents, self.spatial)) * self.split_k


def pow2_floor(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def divisor_at_most(extent: int, cap: int) -> int:
    """The largest divisor of `extent` that is <= cap: a register tile that never needs a bounds
    predicate inside its unrolled loops (where ptxas would otherwise keep both paths alive)."""
    return max(d for d in range(1, max(1, min(cap, extent)) + 1) if extent % d == 0)


def chunk_of(extent: int, cap: int) -> int:
    """Reduction chunk <= cap: the largest divisor of extent not below cap/2 (no remainder
    predicate in the inner loop), else cap itself."""
    cap = max(1, min(cap, extent))
    for c in range(cap, max(1, cap // 2) - 1, -1):
        if extent % c == 0:
            return c
    return cap


def assign_threads(extents, inner, order, caps, budget: int) -> list:
    """Threads per axis: axes in `order` take, from what is left of `budget`, either exactly what
    covers the axis (when that is within their cap) or the largest power of two that is."""
    threads = [1] * len(extents)
    left = budget
    for axis in order:
        want = -(-extents[axis] // inner[axis])
        limit = max(1, min(caps.get(axis, budget), left))
        t = want if want <= limit else pow2_floor(limit)
        threads[axis] = t
        left //= t
    return threads


def block_by_name(sch: s_tir.Schedule, name: str):
    try:
        return sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - TVM raises its own error type for an absent block
        return None


@dataclasses.dataclass
class Tiled:
    """Handles and figures of a tiled reduction, for the rules that continue from it."""
    block_loop: object
    thread_loop: object
    writeback: object
    shared_bytes: int
    threads: int


def tile_reduction(sch: s_tir.Schedule, block, spatial_loops, tiles, reduce_outer, reduce_inner,
                   *, operand_stages=(), epilogue=None) -> Tiled:
    """Lay one reduction block on the GPU as the module docstring draws it.

    spatial_loops/tiles: the block's spatial loops and a Tile for each.
    reduce_outer/reduce_inner: its reduction loops, already split; shared memory is filled once per
    iteration of the last outer loop. operand_stages: blocks that only rearrange an operand (pad,
    dilate, flip), computed inside the shared-memory fetch. epilogue: the block that consumes the
    result element-wise (bias, cast), fused into the write-back; None when there is none.
    """
    if not reduce_outer:
        raise ValueError("tile_reduction: the shared-memory stage needs an outer reduction loop")
    reads = len(sch.get(block).reads)
    shared = [sch.cache_read(block, i, "shared") for i in range(reads)]
    for name in operand_stages:
        stage = block_by_name(sch, name)
        if stage is not None:
            sch.compute_inline(stage)
    writeback = sch.cache_write(block, 0, "local")
    if epilogue is not None:
        sch.compute_inline(writeback)
        writeback = epilogue

    outer, threads, inner = [], [], []
    for loop, tile in zip(spatial_loops, tiles):
        o, t, i = sch.split(loop, [None, tile.threads, tile.inner])
        outer.append(o)
        threads.append(t)
        inner.append(i)
    sch.reorder(*outer, *threads, *reduce_outer, *reduce_inner, *inner)
    block_loop = sch.fuse(*outer)
    sch.bind(block_loop, "blockIdx.x")
    thread_loop = sch.fuse(*threads)
    sch.bind(thread_loop, "threadIdx.x")
    nthreads = math.prod(t.threads for t in tiles)

    shared_bytes = 0
    for cache in shared:
        sch.compute_at(cache, reduce_outer[-1])
        shared_bytes += cooperative_fetch(sch, cache, depth=2 + len(reduce_outer), threads=nthreads)
    sch.reverse_compute_at(writeback, thread_loop)
    sch.decompose_reduction(block, reduce_outer[0])
    for loop in inner:
        sch.unroll(loop)
    for loop in reduce_inner[:-1]:
        if int(sch.get(loop).extent) > 1:  # a unit loop vanishes and would leave a stray pragma
            sch.annotate(loop, "pragma_unroll", NVCC_UNROLL)
    sch.annotate(thread_loop, "pragma_auto_unroll_max_step", UNROLL_STEPS)
    sch.annotate(thread_loop, "pragma_unroll_explicit", 1)
    return Tiled(block_loop, thread_loop, writeback, shared_bytes, nthreads)


def cooperative_fetch(sch: s_tir.Schedule, cache, depth: int, threads: int) -> int:
    """All threads of the block copy the cache block's region: its loops below `depth` fused,
    consecutive threads on consecutive elements of the innermost (contiguous) axis, so global
    reads coalesce. Returns the bytes of shared memory the region takes."""
    loops = sch.get_loops(cache)[depth:]
    elements = math.prod(int(sch.get(loop).extent) for loop in loops)
    dtype = sch.get(cache).writes[0].source.dtype
    fused = sch.fuse(*loops)
    _, lane = sch.split(fused, [None, threads])
    sch.bind(lane, "threadIdx.x")
    return elements * np.dtype(str(dtype)).itemsize


def fit(make, plans, budget: Budget):
    """The schedule of the first plan whose shared memory fits the budget (the target's hard limit
    for the last resort). `make(plan) -> (Schedule, Tiled)`."""
    plans = list(plans)
    last_error = None
    for limit in (budget.shared_bytes, budget.max_shared_bytes):
        for plan in plans:
            if plan.threads > budget.max_threads:
                continue
            try:
                sch, tiled = make(plan)
            except s_tir.ScheduleError as err:  # a plan TVM cannot apply: try the next one
                last_error = err
                continue
            if tiled.shared_bytes <= limit:
                return sch
    if last_error is not None:
        raise last_error
    return None


_ACCUMULATE = re.compile(r"^(\s*)(\w+)\[([^\]]*)\] = \2\[\3\] \+ (.*)$")


def atomic_accumulate(sch: s_tir.Schedule, name: str) -> s_tir.Schedule:
    """The schedule's module with block `name`'s update `buf[i] = buf[i] + v` made atomic
    (`atomicAdd(&buf[i], v)`), for blocks of different blockIdx adding into one output.

    No schedule primitive turns a store atomic and TVM 0.27 has no Python IR mutator, so this goes
    through a TVMScript round trip of the one line; convc.cuda.serialize maps it back to the plain
    update for the CPU check of the schedule's semantics.
    """
    lines = sch.mod.script().splitlines()
    header = f'with T.sblock("{name}"):'
    starts = [i for i, line in enumerate(lines) if line.strip() == header]
    if len(starts) != 1:
        raise ValueError(f"atomic_accumulate: expected one block {name!r}, found {len(starts)}")
    for i in range(starts[0] + 1, len(lines)):
        if lines[i].strip().startswith("with T.sblock("):
            break
        match = _ACCUMULATE.match(lines[i])
        if match:
            indent, buf, index, value = match.groups()
            lines[i] = f"{indent}T.cuda.atomic_add(T.address_of({buf}[{index}]), {value})"
            return s_tir.Schedule(tvm.script.from_source("\n".join(lines)))
    raise ValueError(f"atomic_accumulate: block {name!r} has no `x[i] = x[i] + v` update")
