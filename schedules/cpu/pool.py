"""Hand-written CPU schedule for every pooling kernel (convc.ops.pool): forward, forward with
indices, and the gathers of the adjoints.

All of them are one reduction block over a window (forward: the taps; adjoint: the outputs
covering an input position) with an output in a data layout. The schedule:

* vector along the channels in channels-last layouts (the window's bounds and the divisor are
  then the same for every lane), along the innermost spatial axis in channels-first ones;
* a register tile of `vectors` vectors x `width` positions along the innermost spatial axis,
  accumulated in registers ("local" cache) across the unrolled window, written back once (the
  epilogue: avg's divisor and float16's cast, folded into the write-back);
* padding inlined into the reads (a bound test per tap, uniform across the vector in
  channels-last), divisor tables ("scale") computed once at the root;
* a strided gather whose windows overlap (ResNet's 3x3/2 backward) split by the stride along
  every axis (the width: _phases in channels-first; the rows and planes: _row_phases), each
  phase an unrolled loop, so which windows cover a position is a constant, not a test;
* the outer loops fused and parallel.

Memory-bound: each element is read about once (k/s)^d times from cache and once from memory; the
figures for this machine are in the README's pooling section (`convc bench --pool`).
"""

from __future__ import annotations

import math

from tvm import s_tir

from convc.ops.pool import REDUCTION, pool_spec_of
from convc.target import info

from .common import (extent, find, finish_output, index_map, label, new_schedule, parallel_outer,
                     partition_hint, pick_tile, split_phases)
from .direct import inner_loops, vectorize_tile

# Register tile: vectors x positions, at most this many accumulators.
MAX_ACCUMULATORS = 8
# Workloads moving at least this many bytes stream from memory rather than the caches (see
# _choice: they take a different tile).
STREAMING_BYTES = 24 * 2 ** 20
# A channels-first row narrower than this is no vector: vectors run across channels instead.
MIN_WIDTH_VECTOR = 4


def pool_knobs(func, target) -> list[dict]:
    """The rule's alternatives for the tuner (convc.tuning.space): its own choice first, then
    other vector counts and tile widths (with the rule's row phases: see _choice)."""
    spec, op = pool_spec_of(func)
    if spec is None:
        return []
    own = _choice(spec, op, target)
    rows = _rows(spec, op) if own.get("rows") == "tile" else 1
    grid = [own]
    for vectors in (1, 2, 4):
        for width in (1, 2, 4):
            knobs = {**own, "vectors": vectors, "width": width}
            if knobs != own and vectors * width * rows <= MAX_ACCUMULATORS:
                grid.append(knobs)
    return grid


def _rows(spec, op) -> int:
    """How many row phases a gather's register tile would hold (_row_phases), 1 for others."""
    if op not in ("grad_input", "grad_input_indices"):
        return 1
    return math.prod(_row_phases(spec, "dx"))


def _choice(spec, op, target) -> dict:
    lanes = info(target).lanes(spec.dtype)
    rows = _rows(spec, op)
    if spec.channels_last:
        vectors = max(1, min(4, spec.channels // lanes))
        if op == "forward" and spec.pool == "max" and spec.padding[-1] > 0 and spec.ndim > 1:
            # one position per tile, the padded columns peeled off (no bound test per tap in
            # the others): ResNet's 3x3/2 max pool, 8x112x112x64 NHWC, 2 threads, Zen 4
            # (2026-12-02, paired): 1125 us against 1458 with two positions and the test, 66 %
            # of a 2-thread copy of the same bytes (744 us) against 51 %
            return {"vectors": vectors, "width": 1, "peel": True}
        if op == "forward" and not spec.adaptive and spec.bytes(op) >= STREAMING_BYTES \
                and spec.kernel[-1] * spec.dilation[-1] <= spec.stride[-1]:
            # windows that do not overlap along the width (VGG's 2x2/2) share no input between
            # positions; on a workload streaming from memory, one position per tile and two
            # vectors. VGG-16's 2x2/2 max pools NHWC, batch 8, 2 threads, Zen 4 (2026-12-02,
            # paired, median of 5) against the 4 x 2 tile: pool1 5130 / 6849 us (83 / 62 % of a
            # copy of the same bytes), pool2 2986 / 4566 (77 / 50 %), pool3 1850 / 2185 (43 /
            # 37 %; another run 1376 / 2197). Cache-sized ones run slower so: pool4 at batch 8
            # (15 MB) 946 / 234 us, pool3 at batch 1 74 / 55, pool5 at batch 1 9 / 6
            return {"vectors": min(2, vectors), "width": 1}
        if rows > 1:
            # a strided gather: its row phases inside the register tile (each covering window's
            # dy and saved position loaded once for the rows sharing it), at most
            # MAX_ACCUMULATORS vectors; one position where the channels fill two whole vectors,
            # else two. ResNet's 3x3/2 max pool backward from indices, 8x112x112x64 NHWC, 2
            # threads, Zen 4 (2026-12-02, paired, median of 7, two runs): 2 vectors x 1 position
            # x 2 rows 1931 / 1995 us, 64-66 % of a 2-thread copy of the same bytes (1240 / 1311
            # us); 2 x 2 x 2 2123 / 2018; the rule before (4 x 2, rows unsplit) 2528 / 2721 us,
            # 48-49 %; 4 x 2 x 2 (16 accumulators) 2788. Channels in one vector and a tail (the
            # same pool at 2x56x56x17, median of 7): 14 us with 2 positions, 27 with 1, 30 before
            # (from x: 55 / 73 / 60); avg 3x3/2 at 4x28x28x33: 9 / 15 / 13
            vectors = max(1, min(2, vectors, MAX_ACCUMULATORS // rows))
            whole = vector_tile(spec.channels, lanes, vectors)[1]
            width = 1 if whole > 1 else max(1, min(2, MAX_ACCUMULATORS // (vectors * rows)))
            return {"vectors": vectors, "width": width, "rows": "tile"}
        return {"vectors": vectors, "width": max(1, min(2, MAX_ACCUMULATORS // vectors))}
    if rows > 1:
        # as channels-last; the tile is vectors x the width's phases x the row phases. The same
        # layer NCHW: 3113 us against 3881 with the rows outside the tile (NHWC is its best)
        vectors = max(1, min(2, MAX_ACCUMULATORS // (rows * _phases(spec, "dx"))))
        return {"vectors": vectors, "width": 1, "rows": "tile"}
    return {"vectors": 2, "width": 1}


def schedule_pool(func, target, knobs=None):
    """The rule: every kernel of convc.ops.pool; None for anything else."""
    spec, op = pool_spec_of(func)
    if spec is None:
        return None
    knobs = {**_choice(spec, op, target), **(knobs or {})}
    sch = new_schedule(func)
    pad = find(sch, "pad")
    if pad is not None:
        sch.compute_inline(pad)
    scale = find(sch, "scale")
    if scale is not None and op == "forward":  # divided in the write-back (one per output)
        sch.compute_inline(scale)
    elif scale is not None:  # a table the gather reads per covering window
        parallel_outer(sch, sch.get_loops(scale), target)
    if op == "grad_input" and spec.pool == "max":  # the positions first, as forward_indices
        _with_positions(sch, spec, target, knobs)
    main = sch.get_sblock(REDUCTION[op])
    if op == "forward_indices":
        _with_positions(sch, spec, target, knobs)
    else:
        _tile(sch, main, spec, target, knobs)
    label(sch, main, f"pool {'channels' if spec.channels_last else 'width'} "
                     f"{knobs['vectors']}x{knobs['width']}")
    return sch


def _with_positions(sch: s_tir.Schedule, spec, target, knobs) -> None:
    """Max pooling's values ("pool") tiled as the forward, and in each tile, right after, where
    each maximum came from ("argmax", "indices"): the window is read again from cache."""
    _tile(sch, sch.get_sblock("pool"), spec, target, knobs, attach=("argmax", "indices"),
          epilogue=False)


def _inner_vectorized(sch: s_tir.Schedule, block, tile_block) -> None:
    """A block placed inside another's tile: its own reduction loops outermost, its innermost
    spatial loop vectorized, the rest unrolled."""
    own = inner_loops(sch, block, tile_block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars][-len(own):] if own else []
    spatial = [lp for lp, kind in zip(own, kinds) if kind == 0]
    reduction = [lp for lp, kind in zip(own, kinds) if kind != 0]
    if reduction:
        sch.reorder(*reduction, *spatial)
    for loop in reduction:
        if extent(sch, loop, 0) > 1:
            sch.unroll(loop)
    vectorize_tile(sch, spatial)
    if reduction:
        init = sch.decompose_reduction(block, reduction[0])
        vectorize_tile(sch, inner_loops(sch, init, tile_block))


def vector_tile(size: int, lanes: int, most: int):
    """(vector width, vectors per tile, tail?) for an axis of `size`: the widest of a whole,
    half or quarter register that divides it, as many as `most` vectors that divide it too; else
    whole registers and a last, partial tile (peeled off: see _tile). A tile running past the
    axis's end puts a lane-dependent predicate in the vector loop, and TVM then runs it lane by
    lane (56-wide rows in vectors of 16: every load scalar)."""
    if size <= lanes:
        return size, 1, False
    for width in (lanes, lanes // 2, lanes // 4):
        if width >= 4 and size % width == 0:
            count = max(m for m in range(1, most + 1) if size % (m * width) == 0)
            return width, count, False
    return lanes, 1, True


def _phases(spec, block_name: str) -> int:
    """The stride to split a channels-first gather's width by (1: none). The outputs covering
    input p are floor((p + pad)/s) - j: along a vector of consecutive p that index is no ramp,
    and TVM loads it lane by lane (ResNet's 3x3/2 max pool NCHW backward: 1.4 ms, 12x slower than
    NHWC). Split p = s*q + phase, the vector along q: each (phase, j) reads a contiguous vector
    and its tap test is a constant."""
    if spec.channels_last or block_name != "dx" or spec.adaptive:
        return 1
    stride = spec.stride[-1]
    return stride if stride > 1 and spec.in_size[-1] % stride == 0 else 1


def _row_phases(spec, block_name: str) -> list:
    """The stride to split each outer spatial axis (all but the innermost: rows, planes) of a
    gather by, 1 for none. As along the width (_phases), the outputs covering row p depend on
    p's phase p mod s: which of the `covers` candidate windows hold p is a runtime test per row,
    and the Select loads dy and the saved position of every candidate whatever it says. With the
    phase an unrolled loop the test is a constant, and the windows that cannot hold p vanish
    (3x3/2: 2.25 candidates read per element on average instead of 4)."""
    if block_name != "dx" or spec.adaptive:
        return [1] * (spec.ndim - 1)
    # only where windows overlap (more than one can cover p): VGG's 2x2/2 have one, no test
    return [s if s > 1 and size % s == 0 and (k - 1) * d // s > 0 else 1
            for s, size, k, d in zip(spec.stride[:-1], spec.in_size[:-1], spec.kernel[:-1],
                                     spec.dilation[:-1])]


def _tile(sch: s_tir.Schedule, block, spec, target, knobs, attach=(), epilogue=True) -> None:
    """Register tile, vector, parallel outer loops (see the module docstring). `attach`: blocks
    consuming the tile computed inside it, right after it (_inner_vectorized). `epilogue`: fold
    the function's "output" stage into this block's write-back (not for the positions a max
    pool's grad_input finds first: its "output" is dx's)."""
    lanes = info(target).lanes(spec.dtype)
    loops = sch.get_loops(block)
    nsp = spec.ndim + 2
    spatial, reduction = loops[:nsp], loops[nsp:]
    phases = _phases(spec, sch.get(block).name_hint)
    phase = None
    if spec.channels_last:
        n, *sp, c = spatial
        vector_axis, width_axis, outer_sp = c, sp[-1], sp[:-1]
    else:
        n, c, *sp = spatial
        if extent(sch, sp[-1]) < MIN_WIDTH_VECTOR and extent(sch, c) >= lanes:
            # rows too short for a vector (a global pool's 1x1 output): across the channels,
            # each lane a channel of its own (strided loads, independent sums)
            vector_axis, width_axis, outer_sp, c = c, sp[-1], sp[:-1], None
        else:
            vector_axis, width_axis, outer_sp = sp[-1], None, sp[:-1]
        if phases > 1:
            vector_axis, phase = sch.split(vector_axis, [None, phases])
    outer_sp, row_phases = split_phases(sch, outer_sp, _row_phases(spec,
                                                                    sch.get(block).name_hint))
    outer_sp = [*outer_sp, *row_phases]
    size = extent(sch, vector_axis)
    vl, vectors, tail = vector_tile(size, lanes, knobs["vectors"])
    v_o, v_m, v_l = sch.split(vector_axis, [None, vectors, vl])
    # LoopPartition peels the tiles where a condition depends on the lane (the last, partial
    # tile; in channels-first rows the padding at both ends), so the others are whole vectors
    # with no test (a hint on the vector loop itself split it by tap: not vectorizable). The
    # hinted loop stays out of the parallel fusion (fuse refuses annotated loops).
    peel = (tail or not spec.channels_last) and c is not None
    if width_axis is not None:
        width = pick_tile(extent(sch, width_axis), max(1, knobs["width"]))
        w_o, w_i = sch.split(width_axis, [None, width])
        if c is None:  # channels-first, vectors across the channels: they go outermost
            outer = [n, v_o, *outer_sp, w_o]
            order = [*outer, *reduction, w_i, v_m, v_l]
            tile_loop, parallel, unrolled = w_o, outer, [w_i]
        else:
            order = [n, *outer_sp, w_o, v_o, *reduction, w_i, v_m, v_l]
            tile_loop, parallel, unrolled = v_o, [n, *outer_sp, w_o, v_o], [w_i]
            if knobs.get("peel") and not peel:  # the padded columns' tiles peeled off
                partition_hint(sch, w_o)
                parallel = [n, *outer_sp]
    else:
        order = [n, c, *outer_sp, v_o, *reduction, *([phase] if phase else []), v_m, v_l]
        tile_loop, parallel, unrolled = v_o, [n, c, *outer_sp, v_o], [phase] if phase else []
    if peel:
        partition_hint(sch, v_o)
        parallel = parallel[:-1]
    if row_phases:  # the phases unrolled (constant tests), outside the parallel fusion
        first = next((i for i, lp in enumerate(parallel) if lp.same_as(row_phases[0])),
                     len(parallel))
        parallel = parallel[:first]
        unrolled = [*row_phases, *unrolled]
        if knobs.get("rows") == "tile":  # inside the register tile, after the covering windows
            order = [lp for lp in order if not any(lp.same_as(r) for r in row_phases)]
            at = next(i for i, lp in enumerate(order) if lp.same_as(reduction[-1])) + 1
            order[at:at] = row_phases
    sch.reorder(*order)
    write_back = sch.cache_write(block, 0, "local")
    if phase is not None:  # the accumulator phase-major: each phase's vector is contiguous
        sch.transform_layout(block, ("write", 0), index_map(
            lambda *i: (*i[:-1], i[-1] % phases, i[-1] // phases), nsp))
    sch.reverse_compute_at(write_back, tile_loop, preserve_unit_loops=True)
    if epilogue:
        finish_output(sch, write_back)
    consumers = [sch.get_sblock(name) for name in attach]
    for consumer in consumers:
        sch.reverse_compute_at(consumer, tile_loop, preserve_unit_loops=True)
    parallel_outer(sch, parallel, target)
    for consumer in consumers:
        _inner_vectorized(sch, consumer, block)
    for loop in [*reduction, *unrolled, v_m]:
        if extent(sch, loop, 0) > 1:
            sch.unroll(loop)
    sch.vectorize(v_l)
    if reduction:
        init = sch.decompose_reduction(block, reduction[0])
        vectorize_tile(sch, inner_loops(sch, init, block))
    copy = inner_loops(sch, write_back, block)
    if phase is not None:  # write-back phase by phase: contiguous reads, stores with stride s
        *copy, last = copy
        last_q, last_p = sch.split(last, [None, phases])
        sch.reorder(last_p, last_q)
        copy += [last_p, last_q]
    vectorize_tile(sch, copy)
