"""grad_weight on the CPU: dW[o, c, *r] = sum_{n, *p} x_pad[n, g(o)*Cg + c, *(r*d + p*s)] * dy[n, o, *p].

The output is weight-sized and the reduction runs over batch and space, so the register tile is
taken from the *output*: `vo` output channels (one or two vectors) x a tile of input channels and/or
kernel taps, accumulated in registers over the whole (n, *p) reduction. Each reduction step loads
`vo/lanes` vectors of dy and broadcasts one x scalar per tile row. dy and the padded x are read
channels-last (o and c innermost); channels-first operands are repacked once per call (the padded x
is written channels-last by the "pad" stage itself, dy goes through a packed copy). Depthwise takes
the same path: with Cg = 1 the tile is the kernel taps, and x is loaded as a vector.

Parallelism: output tiles (groups x channel tiles x taps outside the register tile). When they are
too few for the cores (small weights: depthwise, the stem), the reduction is split across cores
instead: each core accumulates partial sums over its share of the batch/rows (rfactor) and a final
pass adds them. The same split blocks long reductions GEMM-style (CHUNK_BYTES): each chunk's rows
of x and dy stay in L2 while every output tile passes over them.

Evidence (Intel Xeon "emeraldrapids", AVX-512, 2 shared cores, peak 173 GFLOP/s per core; min of
40 calls): c2 3x3 NHWC 146-151 GFLOP/s; 1x1 256->128 38 -> 75-112 with the reduction chunks;
stem 7x7/2 20 -> 54-68; depthwise 3x3 21 -> 61 with positions unrolled beside the taps. The tile
is vo = 32 channels (2 zmm) x 4 input channels x 3 taps = 24 accumulators (channel_tile), leaving
registers for the 2 dy vectors of a step; 4 divides the usual channel counts, so no tile has a
remainder. (8 channels x 1 tap, the earlier choice, lost to it in the tuner's side-by-side checks.)
Inputs with 2-3 channels (RGB stems) take vo = 64 (4 zmm) x 3 channels instead: ResNet stem
7x7/2 NHWC 1.27x faster (default_vectors). AMD EPYC Zen 4 ("znver4", 2 cores, 236 GFLOP/s peak;
`convc bench`, median of 10, 2026-11-29): c2 3x3 NHWC 211 GFLOP/s = 89% of peak, c4 174 (74%),
stem 181 (77%), depthwise 79 (34%).
"""

from __future__ import annotations

import math

from convc.ops import spec_of
from convc.ops.common import acc_dtype
from convc.target import info

from .common import (channel_tail, channel_vectors, channels_last_map, find, finish_output, label,
                     new_schedule, parallel_block, parallel_outer, partition_hint, pick_tile,
                     to_hwio, vector_registers)
from .direct import inner_loops, transpose_stage, vectorize_tile


def schedule_grad_weight(func, target, knobs=None):
    """The rule; `knobs` (see grad_weight_knobs) overrides the choices it makes itself."""
    spec, op = spec_of(func)
    if spec is None or op != "grad_weight":
        return None
    knobs = knobs or {}
    sch = new_schedule(func)
    nd, cl = spec.ndim, spec.channels_last
    groups = spec.groups
    cg, kg = spec.in_channels // groups, spec.out_channels // groups
    lanes = info(target).lanes(acc_dtype(spec.dtype))
    regs = vector_registers(target)
    block = sch.get_sblock("dw")

    pad = find(sch, "pad")
    if not cl:
        if pad is None:  # no padding: a packed, channels-last copy of x
            pad = sch.cache_read(block, "x", "global")
        sch.transform_layout(pad, ("write", 0), channels_last_map(nd))
        packed_dy = sch.cache_read(block, "dy", "global")
        sch.transform_layout(packed_dy, ("write", 0), channels_last_map(nd))
        # (n, c, *p) -> (n, *p, c): tiled transpositions of the channel and innermost axes.
        transpose_stage(sch, packed_dy, write_axis=1, other_axis=-1, target=target)
        transpose_stage(sch, pad, write_axis=1, other_axis=-1, target=target)
    elif pad is not None and cg == 1 and kg == 1:
        # Depthwise reads x as vectors: the padding folded into the reads pays (3x3 NHWC 49 -> 67
        # GFLOP/s); elsewhere a bound test per broadcast cost a third (c4 3x3 219 -> 146).
        sch.compute_inline(pad)
    elif pad is not None:
        parallel_block(sch, pad, target)

    chunks = knobs.get("chunks", reduction_chunks(spec, target))
    final = None
    if chunks > 1:
        final, block = _split_reduction(sch, block, spec, chunks)
    loops = sch.get_loops(block)
    chunk = [loops[0]] if final is not None else []
    loops = loops[len(chunk):]
    if cl:
        *taps, c, o = loops[:nd + 2]
    else:
        o, c, *taps = loops[:nd + 2]
    reduction = loops[nd + 2:]

    # Output-channel vector (channel_vectors): within a group when the vectors tile each group
    # exactly; across groups otherwise (depthwise: x is then a vector load too; else gathers).
    outer = list(chunk)
    vo, by_group = channel_vectors(spec.out_channels, kg, groups, lanes,
                                   knobs.get("vectors", default_vectors(cg)))
    if by_group:
        g, o = sch.split(o, [groups, kg])
        outer.append(g)
    vectors = math.ceil(vo / lanes)
    # A partial last channel tile runs vectors of the remainder's width (dy is read as given in
    # channels-last layouts); its write-back is made before the split, so that its domain stays
    # the real channels (see channel_tail).
    tail = channel_tail(kg if by_group else spec.out_channels, vo, operands_fixed=False)
    write_back = sch.cache_write(block, 0, "local") if tail else None
    label(sch, block, f"grad-weight tile v{vo}" + (f" split{chunks}" if chunks > 1 else "")
          + (f" tail:{tail}" if tail else ""))
    o_o, o_i = sch.split(o, [None, vo])
    budget = tile_rows(vectors, regs, tail)

    # Register tile: input channels first, then the kernel taps from the innermost out.
    tile_loops, tiled = [], 1
    c_tile = min(knobs.get("c_tile", channel_tile(cg, budget, spec.kernel)), cg, budget)
    c_o, c_i = sch.split(c, [None, c_tile])
    tiled *= c_tile
    free_taps = []
    for tap, extent in reversed(list(zip(taps, spec.kernel))):
        if extent > 1 and tiled * extent <= budget and not free_taps:
            tile_loops.insert(0, tap)
            tiled *= extent
        else:
            free_taps.insert(0, tap)
    position_unroll = []
    if tile_loops and tile_loops[-1] is taps[-1] and spec.stride[-1] == 1 and cg == 1:
        # Depthwise: all innermost taps in the tile; unrolling a few positions beside them lets
        # LLVM load each x vector once for the taps that share it (x[p + r]): 6 loads instead of
        # 12 for 4 positions x 3 taps.
        last_o, last_i = sch.split(reduction[-1], [None, POSITION_UNROLL])
        reduction = reduction[:-1] + [last_o]
        position_unroll = [last_i]
    if tail:
        # The channel tiles innermost of the output tiles and serial, so that LoopPartition can
        # split the last one off (in a fused parallel loop it could not).
        spatial_outer = outer + [c_o] + free_taps + [o_o]
        partition_hint(sch, o_o)
        partition_hint(sch, o_i)
    else:
        spatial_outer = outer + [o_o, c_o] + free_taps
    sch.reorder(*spatial_outer, *reduction, *position_unroll, *tile_loops, c_i, o_i)

    write_back = write_back or sch.cache_write(block, 0, "local")
    if not cl:
        sch.transform_layout(block, ("write", 0), to_hwio(nd, leading=len(chunk)))
    tile_loop = spatial_outer[-1]
    sch.reverse_compute_at(write_back, tile_loop, preserve_unit_loops=True)
    if final is None:
        finish_output(sch, write_back)
    parallel_outer(sch, spatial_outer[:-1] if tail else spatial_outer, target)
    for loop in position_unroll + tile_loops + [c_i]:
        sch.unroll(loop)
    sch.vectorize(o_i)
    copy = inner_loops(sch, write_back, block)
    vectorize_tile(sch, copy)
    if tail and cl and copy:  # channels-last dW: the copy's vector loop is the channel loop
        partition_hint(sch, copy[-1])
    init = sch.decompose_reduction(block, reduction[0])
    vectorize_tile(sch, inner_loops(sch, init, block))
    if final is not None:
        _schedule_final(sch, final, spec, target)
    return sch


def tile_rows(vectors: int, registers: int, tail) -> int:
    """Rows (input channels x taps) of the register tile: the accumulators the registers hold
    beside a step's dy vectors and broadcast. A partitioned tail compiles the body twice and
    LLVM's time grows faster than the body: 26 rows took 1.3-2.0 s for one kernel (RegNet
    104->26 1x1 channels-first), 13 rows 0.17 s; so at most MAX_TAIL_ROWS then."""
    rows = max(1, (registers - vectors - 3) // vectors)
    return min(rows, MAX_TAIL_ROWS) if tail else rows


def channel_tile(cg: int, budget: int, kernel) -> int:
    """Input channels in the register tile: as many accumulators as the budget holds, counting
    the innermost kernel taps, which join the tile when the channels leave room (vo = 32 with a
    3-wide kernel: 4 channels x 3 taps = 12 rows beat 8 channels x 1). The tuner's records chose
    that over 8 x 1 on 12 of 18 suite kernels (c4 3x3 NCHW 117 -> 176 GFLOP/s, c5 111 -> 150)."""
    if cg <= 1:
        return 1
    plain = pick_tile(cg, budget)
    last = kernel[-1]
    if last > 1 and budget // last >= 2:
        with_tap = pick_tile(cg, budget // last)
        if with_tap * last > plain:
            return with_tap
    return plain


def default_vectors(cg: int) -> int:
    """Output-channel vectors in the register tile. Two, unless the input has so few channels
    per group that the tile has few rows (RGB stems): then four, so that each broadcast of x
    feeds four FMAs (ResNet stem 7x7/2 NHWC, 3 channels: 1.27x over two vectors, paired rounds
    on 2 threads; c2/c3_b8/1x1/c5 within noise of two)."""
    return 4 if 1 < cg < 4 else 2


def grad_weight_knobs(func, target) -> list[dict]:
    """The rule's choices as a grid of alternatives for the tuner (convc.tuning.space), its own
    choice first: one, two or four output-channel vectors, the input-channel tile, and how many
    pieces the reduction is cut into."""
    spec, op = spec_of(func)
    if spec is None or op != "grad_weight":
        return []
    lanes = info(target).lanes(acc_dtype(spec.dtype))
    cg, kg = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    rows = spec.batch * math.prod(spec.out_size[:-1])
    cores = info(target).num_cores
    default = reduction_chunks(spec, target)
    chunk_counts = [c for c in dict.fromkeys([default, 1, 2 * cores, 4 * cores, 2 * default])
                    if 1 <= c <= min(rows, MAX_CHUNKS)]
    grid = []
    widths = set()
    for vectors in dict.fromkeys((default_vectors(cg), 4, 2, 1)):
        vo, by_group = channel_vectors(spec.out_channels, kg, spec.groups, lanes, vectors)
        if vo in widths:
            continue
        widths.add(vo)
        count = math.ceil(vo / lanes)
        tail = channel_tail(kg if by_group else spec.out_channels, vo, operands_fixed=False)
        budget = tile_rows(count, vector_registers(target), tail)
        tiles = dict.fromkeys([channel_tile(cg, budget, spec.kernel), pick_tile(cg, budget),
                               pick_tile(cg, max(1, budget // 2))]) if cg > 1 else [1]
        for c_tile in tiles:
            for chunks in chunk_counts:
                grid.append({"vectors": vectors, "c_tile": c_tile, "chunks": chunks})
    return grid


# Bytes of x and dy rows that one reduction chunk streams: small enough to stay in L2 while every
# output tile of the chunk passes over them (GEMM-style blocking of the reduction).
CHUNK_BYTES = 1 << 20
# Partial sums of the split reduction (a weight-sized array per chunk) at most this share of the
# operands (x and dy) whose caching the chunks buy; past it the reduction is not split. Zen 5, 2
# threads, paired rounds, no split against the split CHUNK_BYTES picks: 512->256 1x1 28x28 (3 x
# 512 KB of partials, 2.4 MB of operands) 1.76x NCHW / 1.45x NHWC, VGG 256->512 3x3 28x28 (3 x
# 4.7 MB) 2.23x / 1.69x, DeepLab 2048->256 1x1 33x33 (11 x 2 MB) 4.2x / 1.00x, its 3x3 d12 ASPP
# 3.3x / 0.90x; with the partials small beside the operands the split held or paid (VGG 64->64
# 3x3 224x224: 16 x 147 KB beside 26 MB, unsplit 0.5x; c2 3x3, 128->256 and 256->64 1x1 56x56:
# 0.92-1.1x either way).
PARTIAL_SHARE = 0.25


def reduction_chunks(spec, target) -> int:
    """How many pieces to cut the (batch x rows) reduction into: enough for the chunk's operands
    to fit CHUNK_BYTES unless the partial sums (a weight-sized array per chunk) outgrow
    PARTIAL_SHARE of the operands, and at least two per core when the weight has too few tiles
    to keep the cores busy (depthwise, the stem). 1 = no split."""
    itemsize = 8 if spec.dtype == "float64" else 4
    rows = spec.batch * math.prod(spec.out_size[:-1])
    row_bytes = spec.out_size[-1] * (spec.in_channels + spec.out_channels) * itemsize
    chunks = min(math.ceil(rows / max(1, CHUNK_BYTES // row_bytes)), rows, MAX_CHUNKS)
    weight = spec.out_channels * spec.in_channels // spec.groups * math.prod(spec.kernel)
    operands = spec.batch * (spec.in_channels * math.prod(spec.in_size)
                             + spec.out_channels * math.prod(spec.out_size))
    if chunks * weight > operands * PARTIAL_SHARE:
        chunks = 1
    cores = info(target).num_cores
    lanes = info(target).lanes(acc_dtype(spec.dtype))
    if weight // (lanes * 16) < 4 * cores:
        chunks = max(chunks, 2 * cores)
    return max(1, min(chunks, rows, MAX_CHUNKS))


MAX_CHUNKS = 16
POSITION_UNROLL = 4
MAX_TAIL_ROWS = 16


def _split_reduction(sch, block, spec, chunks):
    """rfactor the (batch x rows) reduction into `chunks` partial sums.

    -> (final block: sums the partials into dw, partial block: spatial loops [chunk, *weight],
    reductions [rows in chunk, last spatial axis])."""
    loops = sch.get_loops(block)
    nd = spec.ndim
    reduction = loops[nd + 2:]
    rows = sch.fuse(*reduction[:-1]) if len(reduction) > 2 else reduction[0]
    chunk, _ = sch.split(rows, [chunks, None])
    partial = sch.rfactor(chunk, 0)
    loops = sch.get_loops(partial)  # [*weight axes, chunk, rows in chunk, last axis]
    sch.reorder(loops[nd + 2], *loops[:nd + 2])
    return block, partial


def _schedule_final(sch, final, spec, target):
    """dw = sum of the partials: weight axes in parallel, the output channel vectorized, the chunk
    reduction just outside it; the float16 cast (if any) as its own elementwise stage."""
    from convc.ops import EPILOGUE

    loops = sch.get_loops(final)
    nd = spec.ndim
    weight, (chunk,) = loops[:nd + 2], loops[nd + 2:]
    o = weight[-1] if spec.channels_last else weight[0]
    others = [lp for lp in weight if not sch.get(lp).same_as(sch.get(o))]
    lanes = 16
    o_o, o_i = sch.split(o, [None, min(lanes, spec.out_channels)])
    sch.reorder(*others, o_o, chunk, o_i)
    sch.vectorize(o_i)
    parallel_outer(sch, others + [o_o], target)
    sch.decompose_reduction(final, chunk)
    epilogue = find(sch, EPILOGUE)
    if epilogue is not None:
        parallel_block(sch, epilogue, target)
