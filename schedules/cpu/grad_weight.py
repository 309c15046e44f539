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
pass adds them.
"""

from __future__ import annotations

import math

from convc.ops import spec_of
from convc.ops.common import acc_dtype
from convc.target import info

from .common import (find, finish_output, new_schedule, parallel_block, parallel_outer, pick_tile,
                     vector_registers)
from .direct import channels_last_map, inner_loops, to_hwio, vectorize_tile


def schedule_grad_weight(func, target):
    spec, op = spec_of(func)
    if spec is None or op != "grad_weight":
        return None
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
        parallel_block(sch, packed_dy, target)
    if pad is not None:
        parallel_block(sch, pad, target)

    loops = sch.get_loops(block)
    if cl:
        *taps, c, o = loops[:nd + 2]
    else:
        o, c, *taps = loops[:nd + 2]
    rn, *rp = loops[nd + 2:]

    # Output-channel vector: within a group when groups are at least a vector wide; across groups
    # for depthwise (x is then a vector load too); plain otherwise (gathers, but correct).
    outer = []
    if groups > 1 and kg >= lanes:
        g, o = sch.split(o, [groups, kg])
        outer.append(g)
        channels = kg
    else:
        channels = spec.out_channels
    m = 2 if channels % (2 * lanes) == 0 and channels >= 2 * lanes else 1
    vo = min(channels, m * lanes)
    vectors = math.ceil(vo / lanes)
    o_o, o_i = sch.split(o, [None, vo])
    budget = max(1, (regs - vectors - 3) // vectors)

    # Register tile: input channels first, then the kernel taps from the innermost out.
    tile_loops, tiled = [], 1
    c_tile = pick_tile(cg, budget) if cg > 1 else 1
    c_o, c_i = sch.split(c, [None, c_tile])
    tiled *= c_tile
    free_taps = []
    for tap, extent in reversed(list(zip(taps, spec.kernel))):
        if extent > 1 and tiled * extent <= budget and not free_taps:
            tile_loops.insert(0, tap)
            tiled *= extent
        else:
            free_taps.insert(0, tap)
    sch.reorder(*outer, o_o, c_o, *free_taps, rn, *rp, *tile_loops, c_i, o_i)
    spatial_outer = outer + [o_o, c_o] + free_taps

    write_back = sch.cache_write(block, 0, "local")
    if not cl:
        sch.transform_layout(block, ("write", 0), to_hwio(nd))
    tile_loop = spatial_outer[-1]
    sch.reverse_compute_at(write_back, tile_loop, preserve_unit_loops=True)
    finish_output(sch, write_back)
    parallel_outer(sch, spatial_outer, target)
    for loop in tile_loops + [c_i]:
        sch.unroll(loop)
    sch.vectorize(o_i)
    vectorize_tile(sch, inner_loops(sch, write_back, block))
    init = sch.decompose_reduction(block, rn)
    vectorize_tile(sch, inner_loops(sch, init, block))
    return sch
