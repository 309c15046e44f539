"""Direct convolution on the CPU: forward and grad_input (a convolution of transformed operands).

Both ops reduce one block (`conv` / `dx`) of the shape

    out[n, o, *p] = sum_{c, *r} data[n, g(o)*Cg + c, *(p*s + r*d)] * weight[o, c, *r]

which is scheduled as a register-blocked micro-kernel, one of two families:

* **channel-vector** (family A, the usual case): the accumulator tile is `tw` output positions
  along the innermost spatial axis x `vo` output channels (one or two vector registers). Each
  reduction step loads `vo/lanes` weight vectors, broadcasts `tw` input scalars and issues
  `tw * vo/lanes` FMAs. The weight is read as (*r, c, o) — HWIO, the channels-last layout as
  declared; channels-first weights are repacked to it once per call (weight-sized, cheap). This is
  also how depthwise runs in channels-last layouts (the input is then loaded as a vector too).
* **width-vector** (family B): when an op has fewer output channels per group than a vector holds
  (depthwise and thin layers in channels-first layouts): vectors along the output width, a tile
  of `to` channels x `th` rows, the weight broadcast.

1x1 stride-1 convolutions without padding are GEMMs (M = positions, N = out channels, K = in
channels): their spatial axes are fused into one M axis before tiling, so no tile wastes a row end.

Padding ("pad", "dy_dilated") stays a separate root stage computed in parallel: the inner loop then
reads a plain array, with no bounds test per tap.

Measured (Intel Xeon "emeraldrapids", 2 cores shared with other jobs, AVX-512, fp32 peak measured
~170 GFLOP/s on 2 cores): see README "Performance (CPU)" for the full table.
"""

from __future__ import annotations

import dataclasses
import math

from convc.ops import spec_of
from convc.ops.common import acc_dtype
from convc.target import info

from .common import (find, finish_output, new_schedule, parallel_block, parallel_outer, pick_tile,
                     vector_registers)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The reduction block of forward / grad_input seen as one correlation."""

    channels_last: bool
    ndim: int
    out_channels: int       # output channels of the block (C for grad_input)
    in_per_group: int       # reduction channels
    groups: int
    out_size: tuple
    kernel: tuple
    stride: tuple
    dilation: tuple
    acc: str                # accumulator dtype

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def is_gemm(self) -> bool:
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride)


def geometry(spec, op) -> Geometry:
    if op == "forward":
        return Geometry(spec.channels_last, spec.ndim, spec.out_channels,
                        spec.in_channels // spec.groups, spec.groups, spec.out_size, spec.kernel,
                        spec.stride, spec.dilation, acc_dtype(spec.dtype))
    return Geometry(spec.channels_last, spec.ndim, spec.in_channels,
                    spec.out_channels // spec.groups, spec.groups, spec.in_size, spec.kernel,
                    (1,) * spec.ndim, spec.dilation, acc_dtype(spec.dtype))


def to_hwio(ndim: int):
    """Index map (o, c, *r) -> (*r, c, o) for an OIHW-family weight."""
    if ndim == 1:
        return lambda o, c, r0: (r0, c, o)
    if ndim == 2:
        return lambda o, c, r0, r1: (r0, r1, c, o)
    return lambda o, c, r0, r1, r2: (r0, r1, r2, c, o)


def channel_vector_ok(geo: Geometry, lanes: int) -> bool:
    """Family A pays when a vector of output channels reads one broadcast input (whole groups of at
    least a vector), or when it reads a vector of inputs (depthwise in a channels-last layout)."""
    if geo.out_per_group >= lanes:
        return True
    return geo.channels_last and geo.in_per_group == 1 and geo.out_per_group == 1


def schedule_direct(func, target):
    spec, op = spec_of(func)
    if spec is None or op not in ("forward", "grad_input"):
        return None
    geo = geometry(spec, op)
    sch = new_schedule(func)
    reduction = sch.get_sblock("conv" if op == "forward" else "dx")
    lanes = info(target).lanes(geo.acc)
    family_a = geo.channels_last or channel_vector_ok(geo, lanes)
    # Operand stages: padding / zero insertion computed once, in parallel, at the root.
    for name in ("pad", "dy_dilated"):
        stage = find(sch, name)
        if stage is not None:
            parallel_block(sch, stage, target)
    if op == "forward" and not geo.channels_last and family_a:
        packed = sch.cache_read(reduction, "w", "global")
        sch.transform_layout(packed, ("write", 0), to_hwio(geo.ndim))
        parallel_block(sch, packed, target)
    if op == "grad_input":
        flipped = sch.get_sblock("w_flipped")
        if not geo.channels_last and family_a:
            sch.transform_layout(flipped, ("write", 0), to_hwio(geo.ndim))
        parallel_block(sch, flipped, target)
    if family_a:
        _channel_vector(sch, reduction, geo, target)
    else:
        _width_vector(sch, reduction, geo, target)
    return sch


def _split_loops(sch, block, geo):
    loops = sch.get_loops(block)
    nd = geo.ndim
    if geo.channels_last:
        n, *sp, o = loops[:nd + 2]
    else:
        n, o, *sp = loops[:nd + 2]
    rc, *rk = loops[nd + 2:]
    return n, o, sp, rc, rk


def _channel_vector(sch, block, geo: Geometry, target):
    lanes = info(target).lanes(geo.acc)
    regs = vector_registers(target)
    n, o, sp, rc, rk = _split_loops(sch, block, geo)
    outer = [n]
    if geo.groups > 1 and geo.out_per_group >= lanes:
        g, o = sch.split(o, [geo.groups, geo.out_per_group])
        outer.append(g)
        channels = geo.out_per_group
    else:
        channels = geo.out_channels
    m = 2 if channels >= 2 * lanes and channels % (2 * lanes) == 0 else 1
    if channels < lanes:
        vo = channels
    else:
        vo = m * lanes
    o_o, o_i = sch.split(o, [None, vo])
    vectors = max(1, math.ceil(vo / lanes))
    tw_max = max(1, min(16, (regs - vectors - 2) // vectors))
    if geo.is_gemm and len(sp) > 1:
        sp = [sch.fuse(*sp)]
        extent = math.prod(geo.out_size)
    else:
        extent = geo.out_size[-1]
    tw = pick_tile(extent, tw_max, minimum=max(1, tw_max // 2))
    w_o, w_i = sch.split(sp[-1], [None, tw])
    sch.reorder(*outer, o_o, *sp[:-1], w_o, *rk, rc, w_i, o_i)
    first_reduction = rk[0] if rk else rc
    _finish(sch, block, outer + [o_o] + list(sp[:-1]), w_o, first_reduction, target,
            unroll=[w_i], vector=o_i, channels_innermost=not geo.channels_last, ndim=geo.ndim)


def _width_vector(sch, block, geo: Geometry, target):
    lanes = info(target).lanes(geo.acc)
    regs = vector_registers(target)
    n, o, sp, rc, rk = _split_loops(sch, block, geo)
    width = geo.out_size[-1]
    mw = 2 if width > lanes * 1.5 else 1
    vw = min(mw * lanes, width)
    w_o, w_i = sch.split(sp[-1], [None, vw])
    vectors = math.ceil(vw / lanes)
    budget = max(1, (regs - 4) // vectors)
    to = pick_tile(geo.out_per_group if geo.groups > 1 else geo.out_channels, min(4, budget))
    if geo.groups > 1 and geo.out_per_group > 1:
        g, o = sch.split(o, [geo.groups, geo.out_per_group])
        outer = [n, g]
    else:
        outer = [n]
    o_o, o_i = sch.split(o, [None, to])
    rows = []
    if len(sp) >= 2:
        th = pick_tile(geo.out_size[-2], max(1, budget // to))
        h_o, h_i = sch.split(sp[-2], [None, th])
        mid, rows = list(sp[:-2]) + [h_o], [h_i]
    else:
        mid = []
    sch.reorder(*outer, o_o, *mid, w_o, *rk, rc, o_i, *rows, w_i)
    first_reduction = rk[0] if rk else rc
    _finish(sch, block, outer + [o_o] + mid, w_o, first_reduction, target,
            unroll=[o_i, *rows], vector=w_i)


def _finish(sch, block, parallel_loops, tile_loop, first_reduction, target, unroll, vector,
            channels_innermost=False, ndim=2):
    """Local accumulator at the tile, init before the reduction, epilogue folded into the write-back,
    outer loops parallel, micro-kernel unrolled and vectorized. `channels_innermost`: lay the
    accumulator of a channels-first op out channels-last, so that its vectors are registers."""
    write_back = sch.cache_write(block, 0, "local")
    if channels_innermost:
        sch.transform_layout(block, ("write", 0), channels_last_map(ndim))
    sch.reverse_compute_at(write_back, tile_loop, preserve_unit_loops=True)
    finish_output(sch, write_back)
    parallel_outer(sch, parallel_loops, target)
    for loop in unroll:
        sch.unroll(loop)
    sch.vectorize(vector)
    vectorize_tile(sch, inner_loops(sch, write_back, block))
    init = sch.decompose_reduction(block, first_reduction)
    vectorize_tile(sch, inner_loops(sch, init, block))


def channels_last_map(ndim: int):
    """Index map (n, c, *p) -> (n, *p, c)."""
    if ndim == 1:
        return lambda n, c, p0: (n, p0, c)
    if ndim == 2:
        return lambda n, c, p0, p1: (n, p0, p1, c)
    return lambda n, c, p0, p1, p2: (n, p0, p1, p2, c)


def inner_loops(sch, stage, outer_block):
    """The loops of `stage` below those it shares with `outer_block` (its own tile loops)."""
    mine, theirs = sch.get_loops(stage), sch.get_loops(outer_block)
    shared = 0
    for a, b in zip(mine, theirs):
        if not sch.get(a).same_as(sch.get(b)):
            break
        shared += 1
    return mine[shared:]


def vectorize_tile(sch, loops) -> None:
    """A tile's copy loops (init, write-back): the innermost vectorized, the others unrolled."""
    loops = [lp for lp in loops if int(sch.get(lp).extent) > 1]
    if not loops:
        return
    sch.vectorize(loops[-1])
    for loop in loops[:-1]:
        sch.unroll(loop)
