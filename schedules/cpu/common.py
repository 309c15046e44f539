"""Pieces shared by the CPU rules: tile choice, block lookup, operand stages, the local accumulator.

Everything here asks the target (convc.target.info) what it can do; nothing names a CPU.
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir

from convc.target import info

# AVX-512 and NEON-SVE-class CPUs have 32 vector registers, AVX2 16. A register tile must leave
# room for the operands of one step (a weight vector or two, a broadcast), so it is capped below.
def vector_registers(target) -> int:
    return 32 if info(target).vector_bits >= 512 else 16


def index_map(fn, arity: int):
    """A layout map for transform_layout from a Python function of `arity` indices (it may take
    *args): (o, c, *r) -> (*r, c, o) for any rank, written once."""
    return tvm.tirx.IndexMap.from_func(fn, ndim=arity, index_dtype="int32")


def to_hwio(ndim: int, leading: int = 0):
    """(*lead, o, c, *r) -> (*lead, *r, c, o): an OIHW-family weight read as HWIO (`leading`
    extra axes in front, e.g. the chunk axis of partial sums)."""
    def index(*i):
        lead, (o, c, *r) = i[:leading], i[leading:]
        return (*lead, *r, c, o)
    return index_map(index, leading + ndim + 2)


def channels_last_map(ndim: int):
    """(n, c, *p) -> (n, *p, c)."""
    return index_map(lambda n, c, *p: (n, *p, c), ndim + 2)


def channel_vectors(channels: int, per_group: int, groups: int, lanes: int, most: int = 2):
    """The output-channel vector of a register tile -> (width, split into groups?).

    Grouped layers (more than one output channel per group) tile every group exactly: up to `most`
    whole vectors where they divide the group, else half or quarter a register (ResNeXt's and
    RegNet's 4-16 channels per group; the input is then one broadcast per group, where a vector
    across groups would gather it lane by lane: 8-13 GFLOP/s). A vector that ran past its group's
    last channel would write back (garbage) over the next group's first channels, which another
    thread owns: a race, seen with 2 threads in forward (150 channels per group) and grad_weight
    (18 per group with 16 lanes). Ungrouped and depthwise layers, and groups no vector divides,
    take vectors across the whole channel axis: up to `most` that divide it, else one, and the
    last tile is partial (see channel_tail)."""
    def whole(count):  # 1, 2 or 4 vectors (3 = 48 lanes ran at 10 GFLOP/s: LLVM spilled)
        return lanes * max(m for m in (1, 2, 4) if m <= max(1, most)
                           and (m == 1 or count % (m * lanes) == 0))

    if groups > 1 and per_group > 1:
        if per_group % lanes == 0:
            return whole(per_group), True
        for part in (lanes // 2, lanes // 4):
            if part >= 4 and per_group % part == 0:
                return part, True
    return (channels if channels < lanes else whole(channels)), False


def channel_tail(span: int, vo: int, operands_fixed: bool):
    """How the last tile of a channel axis of `span` channels in vectors of `vo` is computed.

    None: the vectors divide the axis. "pad": every operand indexed by the vector's channel is a
    stage the schedule lays out itself (a repacked weight, padded with zeros to whole vectors), so
    the last tile computes whole vectors and only its write-back is cut to the real channels,
    lane by lane. "partition": an operand is read as given (channels-last depthwise reads x along
    the channels; grad_weight reads dy), so the last tile is split off (LoopPartition, see
    partition_hint) and runs vectors of the remainder's width. Either way the full tiles keep
    whole vectors and register accumulators: left to TVM, the lane test of a partial tile made
    it scalarize every tile's write-back and keep the accumulators in memory (37 -> 47 channels
    3x3 NHWC forward, 2 threads: 3.4 GFLOP/s; 250 with a "pad" tail)."""
    if span % vo == 0:
        return None
    return "pad" if operands_fixed else "partition"


def split_phases(sch: s_tir.Schedule, loops, factors):
    """Each loop whose factor is above 1 split into (quotient, phase: the position mod factor)
    -> (the loops with their quotients in place, the phase loops)."""
    quotients, phases = [], []
    for loop, factor in zip(loops, factors):
        if factor > 1:
            quotient, phase = sch.split(loop, [None, factor])
            quotients.append(quotient)
            phases.append(phase)
        else:
            quotients.append(loop)
    return quotients, phases


def partition_hint(sch: s_tir.Schedule, loop) -> None:
    """Ask TVM's LoopPartition pass to split `loop` where its body's conditions change (the full
    tiles of a channel axis and its last tile)."""
    sch.annotate(loop, "pragma_loop_partition_hint", 1)


def label(sch: s_tir.Schedule, block, name: str) -> None:
    """Name the variant a rule took on its reduction block (the `convc.schedule` annotation), so
    that reports can say which schedule a kernel got (convc.bench.zoo.schedule_name)."""
    sch.annotate(block, "convc.schedule", name)


def new_schedule(func) -> s_tir.Schedule:
    return s_tir.Schedule(tvm.IRModule({"main": func}))


def find(sch: s_tir.Schedule, name: str):
    """The block called `name`, or None when the declaration did not create it."""
    try:
        return sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - TVM raises its own error type for an absent block
        return None


def pick_tile(extent: int, limit: int, minimum: int = 1) -> int:
    """A tile for a loop of `extent`: the largest divisor in [minimum, limit] if there is one,
    else the size in [minimum, limit] that wastes the fewest iterations on the remainder (ties go to
    the larger tile). The rules accept any extent; a non-dividing tile leaves a guarded remainder.
    """
    limit = max(1, min(limit, extent))
    minimum = max(1, min(minimum, limit))
    divisors = [t for t in range(minimum, limit + 1) if extent % t == 0]
    if divisors and divisors[-1] * 2 > limit:
        return divisors[-1]
    return min(range(minimum, limit + 1), key=lambda t: (math.ceil(extent / t) * t - extent, -t))


def extent(sch: s_tir.Schedule, loop, unknown: int = 1 << 30) -> int:
    """A loop's trip count; `unknown` when TVM left it symbolic (a clipped accumulator region)."""
    value = sch.get(loop).extent
    return int(value) if isinstance(value, tvm.tirx.IntImm) else unknown


def box_tile(sizes, limit: int) -> int:
    """The largest tile of consecutive positions of a row-major grid `sizes` (innermost last) that
    is <= `limit` and always covers a box: q whole sub-grids of the inner axes, q dividing the next
    axis. Tiles that straddle a row end would make a tile's accumulator region (a bounding box) cover
    positions another tile computes."""
    best, inner = 1, 1
    for size in reversed(tuple(sizes)):
        for q in range(1, size + 1):
            if size % q == 0 and inner * q <= limit:
                best = max(best, inner * q)
        inner *= size
    return best


def box_split(sch: s_tir.Schedule, loops, sizes, limit: int):
    """Cut a row-major grid of positions (`loops` over `sizes`, innermost last, adjacent) into
    boxes of box_tile(sizes, limit) positions: the innermost axes a box covers whole are fused with
    the q-part of the next axis into one loop; the rest stay separate loops.

    -> (outer loops, the fused box loop, box size). Fusing only what a box covers keeps every
    box's region expressible without dividing an outer loop variable, so TVM's region analysis of a
    box-level accumulator is exact (fusing all axes and splitting the result lets it over-cover
    a 3-D box whose rows do not fill a plane, which makes the write-back copy positions the box
    never computed)."""
    tile = box_tile(sizes, limit)
    inner, covered = 1, 0
    for size in reversed(tuple(sizes)):
        if tile % (inner * size) == 0:
            inner *= size
            covered += 1
        else:
            break
    if covered == len(sizes):
        return [], (sch.fuse(*loops) if len(loops) > 1 else loops[0]), tile
    split_axis = len(sizes) - covered - 1
    axis_o, axis_i = sch.split(loops[split_axis], [None, tile // inner])
    inner_loops = [axis_i, *loops[split_axis + 1:]]
    fused = sch.fuse(*inner_loops) if len(inner_loops) > 1 else axis_i
    return [*loops[:split_axis], axis_o], fused, tile


def parallel_outer(sch: s_tir.Schedule, loops, target, min_chunks: int | None = None):
    """Fuse the leading loops (as few as give every core a few chunks) and mark them parallel.

    Returns the fused loop, or None when `loops` is empty."""
    if not loops:
        return None
    want = min_chunks or 16 * info(target).num_cores
    take, chunks = 0, 1
    for loop in loops:
        take += 1
        chunks *= extent(sch, loop)
        if chunks >= want:
            break
    fused = sch.fuse(*loops[:take]) if take > 1 else loops[0]
    sch.parallel(fused)
    return fused


def vector_split(sch: s_tir.Schedule, loop, lanes: int):
    """Vectorize the innermost loop of a copy-like stage -> (the loop outside the vector, or None
    when the whole loop is one vector; whether that loop is partitioned and must stay unfused).

    The vector is the widest of `lanes`, a half or a quarter of it that divides the loop; a loop
    shorter than `lanes` is one vector. Where none divides, vectors of `lanes` with the last one
    cut to the remainder (LoopPartition): a remainder test inside the vector loop made TVM
    scalarize the whole stage (104-channel NHWC padding: ~5x slower than the conv it fed)."""
    size = extent(sch, loop, 0)
    if 0 < size <= lanes:
        sch.vectorize(loop)
        return None, False
    for width in (lanes, lanes // 2, lanes // 4):
        if width >= 4 and size % width == 0:
            outer, inner = sch.split(loop, [None, width])
            sch.vectorize(inner)
            return outer, False
    outer, inner = sch.split(loop, [None, lanes])
    partition_hint(sch, outer)
    partition_hint(sch, inner)
    sch.vectorize(inner)
    return outer, True


def parallel_block(sch: s_tir.Schedule, block, target, lanes: int = 16) -> None:
    """A root-level elementwise stage (padding, packing): outer loops parallel, the innermost loop
    vectorized (vector_split)."""
    loops = sch.get_loops(block)
    if len(loops) > 1:
        rest, partitioned = vector_split(sch, loops[-1], lanes)
        loops = loops[:-1] + ([rest] if rest is not None and not partitioned else [])
    parallel_outer(sch, loops, target)


def finish_output(sch: s_tir.Schedule, copy_block) -> None:
    """Fold the epilogue ("output": bias and/or float16 cast) into the accumulator write-back."""
    from convc.ops import EPILOGUE

    epilogue = find(sch, EPILOGUE)
    if epilogue is not None:
        sch.reverse_compute_inline(epilogue)
