"""Winograd F(m x m, 3 x 3) on the CPU: forward and grad_input declared by convc.ops.winograd.

Five root stages, each computed in parallel:

* the padded input ("pad" / "dy_dilated"; "wino_pad" after a ring padding), laid out channels-last
  whatever the layout (a channels-first input is transposed once here), so that every read of the
  input transform is a vector of channels;
* the input transform "wino_v" per (tile, channel vector), its row pass "wino_t" computed inside
  it in registers: every (e1, e2) point unrolled, so each is a short sum of vectors with the
  matrices' constants folded in;
* the filter transform "wino_u" (its row pass "wino_g" inside it), per call, the same way: by
  default inside the GEMM's parallel loop over output-channel blocks (alpha^2 x Cg x vo values
  computed just before the GEMM reads them, from L2), else at the root, laid out (e1, e2,
  channel block, c, vo) so that one GEMM tile streams one contiguous slab. Fused against root
  (Zen 5, 2 threads, paired rounds, effective GFLOP/s, NHWC / NCHW): c4 F(2,3) forward 524 ->
  651 / 544 -> 704, grad_input 272 -> 425 / 519 -> 671; c5 F(2,3) forward 166 -> 376 / 141 ->
  252, grad_input 46 -> 118 / 146 -> 330; c3 F(4,3) forward 551 -> 720 / 734 -> 743,
  grad_input 468 -> 492 / 703 -> 742 (direct: c4 390-424, c5 170-432, c3 339-436);
* the batched GEMM "wino_gemm": per (e1, e2) point a (tiles x Cg) x (Cg x K) product with a
  register tile of `tp` tiles x `vo` output channels (24-28 accumulators), the whole reduction
  inside it; the (point, channel block) pairs go parallel and each walks all tiles, so its filter
  slab (Cg x vo) stays in L1/L2;
* the output transform, in the epilogue's (or the untiling stage's) loop nest split into whole m x m
  tiles: the column pass "wino_o" computed per (tile, channel vector), the row pass and the
  epilogue (bias, scale/shift, residual, activation, cast) unrolled into the store.

Blocked (tile_block; layers with >= 1 MiB of transformed input and at least K / 4 tiles, both
sizes set for a 1 MiB L2 per core and scaled down on a smaller one, TargetInfo.l2_bytes): the tiles
go in blocks of whole tiles (a divisor of a tile row, or whole rows; at least one block per core),
the nearest such size to about 768 KiB of transformed input plus one chunk of GEMM product (none,
where the whole transformed input is under 2 MiB and that block would re-read a filter over 4x
its own values: FILTER_CHECKED_BELOW), parallel over blocks; per block the input transform, then per chunk of `vo`
output channels the GEMM and the output transform, so that "wino_v" and "wino_gemm" never leave the
core's L2 (the filter transform stays at the root, computed once). Why: profiled on Zen 4
(2026-12-02, VGG 64ch 224x224 forward NHWC F(4,3), 3136 tiles, 27.6 MiB each of transformed input
and product), the root stages took input transform 2.7 ms (15 GB/s: x read, V written), GEMM 8.1 ms
(114 GFLOP/s of multiplications done, 49 % of peak, operands streamed from memory), output
transform 2.1 ms (20 GB/s): memory-bound. Blocked, the whole call took 7.8 ms against their 12.9
ms. Paired with PyTorch (median of 5, PyTorch's best format / convc NHWC, root -> blocked): VGG
64ch 224x224 forward 0.94-1.16 -> 1.77-1.92, grad_input 1.25 -> 1.85; Inception 80->192 73x73 pad 0
forward 1.63-1.75 -> 2.01 (2 rows of 18 tiles), grad_input 1.28 -> 1.79; batch-8 c3 forward 1.22 ->
2.03, grad_input 1.38 -> 2.28; c2 forward 2.25 -> 2.59; c3 grad_input 1.98 -> 2.25; 128ch 56x56
forward 2.25 -> 2.43; 72ch 40x40 (forced) 1.33 -> 2.49. Where the filter outweighs the tiles it
lost (FILTER_REUSE).

Re-measured on an Intel Xeon VM (2 MiB L2, rocketlake, 2 vCPUs that mostly share one core's FMA
units; 2026-12-03, paired with PyTorch, median of 7, PyTorch best / convc best layout, the 1 MiB
rule -> tile_block's nearest-fit blocks with the per-block filter check): c3 forward 1.10 -> 1.35
and 2.20 -> 2.61 (two runs), grad_input 1.22 -> 1.46 and 1.21 -> 1.36 (root stages now); 144->288
14x14 grad_input 0.84 -> 1.15 (root); batch-8 c3 (7x7 tiles per block, was 1x7) forward 1.51 ->
1.75, grad_input 1.67 -> 1.76; c2 (7x14, was 2x14) 1.97 -> 1.89 / 2.93 -> 2.99; VGG 256ch 56x56 in
7x14 blocks (the filter check then enlarged blocks; it no longer does: 1x14 again) 1.63 -> 1.56 /
1.71 -> 1.63; Inception 80->192 73x73 forward (3x18, was 2x18) 1.85 -> 1.82; Inception 96->96
35x35, VGG 64ch 224x224 and 128ch 112x112 keep their blocks. On Zen 5 (znver5, 1 MiB L2,
2026-12-03, same pairing, NHWC, median of 7-9, a5a9165's rule -> this one): c3 forward 2.38 ->
3.17, grad_input 1.80 -> 1.69 (root stages now); 144->288 14x14 grad_input 1.15 -> 1.43 (root); c2
(7x14, was 2x14) forward 2.31 -> 2.06 and 2.24 -> 2.34, grad_input 1.90 -> 2.39 and 2.31 -> 2.55;
batch-8 c3 (7x7, was 1x7) forward 2.61 -> 2.55, grad_input 2.38 -> 2.63; more at
FILTER_CHECKED_BELOW.

Evidence: see the comment at prefers_winograd (convc/dispatch.py) and README "Winograd". On
Zen 4 (znver4, 2 cores, fp32 peak ~234 GFLOP/s; 2026-12-02, shared VM, paired with PyTorch,
median of 5, per call), effective GFLOP/s NCHW / NHWC: c2 F4 forward 150 / 312 (effective 64 /
133 % of peak; the multiplications done, direct / 4: 16 / 33 %), c3 F4 342 / 492, c4 F2 289 /
326, batch-8 c3 F4 220 / 232, grad_input c2 317 / 394, c3 367 / 370, c4 319 / 218, c5 F2 NCHW
88; Inception 80->192 73x73 F4 forward 168 / 187, grad_input 150 / 152; VGG 64ch 224x224 NHWC
F4 232 / 233 (1.1x PyTorch: the weakest, many tiles of few channels).
"""

from __future__ import annotations

from convc.ops import EPILOGUE, base_op, is_winograd, spec_of
from convc.ops.grad_input import ring_unpadded
from convc.ops.winograd import choose_tile, tiles, transformed_input_bytes
from convc.target import info

from .common import (channels_last_map, extent, find, index_map, label, new_schedule,
                     parallel_outer, partition_hint, pick_tile, vector_registers)
from .fold import schedule_fold


def _vector(size: int, lanes: int) -> int:
    """The widest of lanes, lanes/2, lanes/4 that divides `size` (1 where none does)."""
    for width in (lanes, lanes // 2, lanes // 4):
        if width >= 2 and size % width == 0:
            return width
    return 1


def _split_vector(sch, loop, width: int):
    outer, inner = sch.split(loop, [None, width])
    if width > 1:
        sch.vectorize(inner)
    return outer, inner


def _input_transform(sch, target, lanes: int, channels: int, at_root: bool = True):
    v, t = sch.get_sblock("wino_v"), sch.get_sblock("wino_t")
    e1, e2, p, c = sch.get_loops(v)[-4:]
    co, ci = sch.split(c, [None, _vector(channels, lanes)])
    sch.reorder(p, co, e1, e2, ci)
    sch.compute_at(t, co)
    for loop in sch.get_loops(t)[-3:-1]:
        sch.unroll(loop)
    if _vector(channels, lanes) > 1:
        sch.vectorize(sch.get_loops(t)[-1])
        sch.vectorize(ci)
    sch.unroll(e1)
    sch.unroll(e2)
    if at_root:
        parallel_outer(sch, [p, co], target)


def _filter_transform(sch, target, lanes: int, out_channels: int, vo: int):
    u, g = sch.get_sblock("wino_u"), sch.get_sblock("wino_g")
    e1, e2, c, k = sch.get_loops(u)
    if out_channels % vo == 0 and find(sch, "wino_gemm") is not None:
        # (e1, e2, c, k) -> (e1, e2, k // vo, c, k % vo): one GEMM tile's slab is contiguous
        sch.transform_layout(u, ("write", 0), index_map(
            lambda a, b, c_, k_: (a, b, k_ // vo, c_, k_ % vo), 4))
    ko, ki = sch.split(k, [None, _vector(out_channels, lanes)])
    sch.reorder(c, ko, e1, e2, ki)
    sch.compute_at(g, ko)
    for loop in sch.get_loops(g)[-3:-1]:
        sch.unroll(loop)
    if _vector(out_channels, lanes) > 1:
        sch.vectorize(sch.get_loops(g)[-1])
        sch.vectorize(ki)
    sch.unroll(e1)
    sch.unroll(e2)
    parallel_outer(sch, [c, ko], target)


def _flipped_filter(sch, spec, target, lanes: int) -> None:
    """grad_input's flipped, channel-swapped filter "w_flipped": read inline by the filter
    transform, except channels-last, where it is computed at the root by 2-D transposes of
    lanes x lanes tiles (per tap, (C, K) -> (K, C)), written a vector at a time.

    Why: channels-last, the swap puts the filter transform's vector (the correlation's output
    channels, the layer's input channels) on the weight's second-last axis (HWIO), so inline
    every lane was a load of its own, alpha times per weight element (once per e1). Measured
    (AMD EPYC Zen 4, 2 threads, 2026-12-04, least of 5 x 20 calls), 512ch 3x3 4x4 batch 8
    grad_input NHWC (ResNet-18's last stage at 112x112): F(2,3) 4.05 ms against 1.50 ms with the
    filter prepacked (the prepack alone 7.0 ms, NCHW's 0.57 ms). Inline -> transposed at the root,
    NHWC grad_input, paired, median of 7 x 10 calls, ms: 64ch 56x56 F(4,3) 0.387 -> 0.381,
    128ch 28x28 F(4,3) 0.494 -> 0.376, 256ch 14x14 F(2,3) 0.873 -> 0.658, batch-8 128ch 28x28
    2.74 -> 2.67, 96ch 35x35 0.440 -> 0.434, 192ch 17x17 F(2,3) 0.637 -> 0.578, batch-8 256ch
    7x7 F(4,3) 2.00 -> 1.27, batch-8 512ch 4x4 F(2,3) 4.02 -> 2.84 (the larger the filter
    against the tiles, the more it saved; none of these slower).

    Only where both channel axes take whole vectors of `lanes`: channel counts that leave
    half or quarter vectors (forced Winograd only; the auto rule needs whole vectors) ran slower
    transposed, paired old / new 0.86-0.89 (72->200 9x9, 40->24 13x11, 96ch in 4 groups 14x14),
    where whole-vector layers of that size were 0.93-1.17 (80->208 9x9, 64ch 9x9, 48ch 13x11
    batch 2, 96ch in 2 groups)."""
    flipped = sch.get_sblock("w_flipped")
    *taps, k, c = sch.get_loops(flipped)
    k_width, c_width = _vector(extent(sch, k), lanes), _vector(extent(sch, c), lanes)
    if not spec.channels_last or min(k_width, c_width) < lanes:
        sch.compute_inline(flipped)
        return
    k_o, k_i = sch.split(k, [None, k_width])
    c_o, c_i = sch.split(c, [None, c_width])
    sch.reorder(*taps, k_o, c_o, k_i, c_i)
    sch.vectorize(c_i)
    parallel_outer(sch, [*taps, k_o], target)


def gemm_tile(out_per_group: int, tiles: int, lanes: int, target) -> tuple[int, int]:
    """(vo, tp): output channels (two vectors where they divide the group, else one, else the
    widest part of one that does) x tiles per register tile: 2 x 14 = 28 accumulators + 2 filter
    vectors + 1 broadcast of 32 vector registers (half that on 16)."""
    if out_per_group % (2 * lanes) == 0:
        vo = 2 * lanes
    else:
        vo = lanes if out_per_group % lanes == 0 else _vector(out_per_group, lanes)
    accumulators = vector_registers(target) - 4
    most = min(14 if accumulators > 16 else 6, accumulators // max(1, vo // lanes))
    return vo, pick_tile(tiles, most, minimum=max(1, most // 2))


def _fused_filter(sch, ko, vo: int):
    """The filter transform of one output-channel block, computed inside the GEMM's loop over
    those blocks: its alpha^2 x Cg x vo values go from registers to L2 and are read there."""
    u, g = sch.get_sblock("wino_u"), sch.get_sblock("wino_g")
    sch.compute_at(u, ko)
    e1, e2, c, k = sch.get_loops(u)[-4:]
    sch.reorder(c, e1, e2, k)
    sch.compute_at(g, c)
    for loop in sch.get_loops(g)[-3:-1]:
        sch.unroll(loop)
    if vo > 1:
        sch.vectorize(sch.get_loops(g)[-1])
        sch.vectorize(k)
    sch.unroll(e1)
    sch.unroll(e2)


def _gemm(sch, target, vo: int, tp: int, fuse_filter: bool = False, at_root: bool = True,
          note: str = ""):
    block = sch.get_sblock("wino_gemm")
    e1, e2, p, k, rc = sch.get_loops(block)[-5:]
    e = sch.fuse(e1, e2)
    ko, ki = sch.split(k, [None, vo])
    ragged = extent(sch, p) % tp != 0
    po, pi = sch.split(p, [None, tp])
    if ragged:
        # The last register tile of a run of tiles no tile divides (a block of 19, a prime) is
        # split off: with the guard on each unrolled accumulator inside the reduction, LLVM ran
        # 80->192 73x73 grad_input (1x19 blocks, 10 tiles) at 0.66x its 14-tile speed.
        partition_hint(sch, po)
    if fuse_filter:
        sch.reorder(ko, e, po, rc, pi, ki)
    else:
        sch.reorder(e, ko, po, rc, pi, ki)
    accumulator = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulator, po)
    if fuse_filter:
        sch.parallel(ko)
        _fused_filter(sch, ko, vo)
    elif at_root:
        parallel_outer(sch, [e, ko], target)
    sch.unroll(pi)
    if vo > 1:
        sch.vectorize(ki)
        sch.vectorize(sch.get_loops(accumulator)[-1])
    sch.decompose_reduction(block, rc)
    label(sch, block, f"winograd gemm v{vo} t{tp}{note}")


def _output_transform(sch, target, spec, m: int, lanes: int, out_channels: int, name: str,
                      block: tuple | None = None, chunk: int = 0):
    """The output transform in the final stage's loops split into whole m x m tiles, parallel over
    tiles; `block` = (rows, columns) of tiles: parallel over those blocks instead, and (the fused
    loop over them, the loop over chunks of `chunk` output channels inside it, or None) returned
    (the input transform goes into the first, the GEMM into the second where there is one)."""
    final = find(sch, EPILOGUE)
    if final is not None:
        sch.compute_inline(sch.get_sblock(name))
    else:
        final = sch.get_sblock(name)
    n, *rest = sch.get_loops(final)
    if spec.channels_last:
        h, w, k = rest
    else:
        k, h, w = rest
    th, i1 = sch.split(h, [None, m])
    tw, i2 = sch.split(w, [None, m])
    width = _vector(out_channels, lanes)
    kc = None
    if chunk:
        kc, k = sch.split(k, [None, chunk])
    ko, ki = sch.split(k, [None, width])
    if block is None:
        outer, tile_loops = [n, th, tw], []
    elif block[1] < extent(sch, tw):  # part of a row of tiles
        twb, twi = sch.split(tw, [None, block[1]])
        outer, tile_loops = [n, th, twb], [twi]
    else:  # whole rows
        thb, thi = sch.split(th, [None, block[0]])
        outer, tile_loops = [n, thb], [thi, tw]
    sch.reorder(*outer, *([kc] if kc is not None else []), *tile_loops, ko, i1, i2, ki)
    o = sch.get_sblock("wino_o")
    sch.compute_at(o, ko)
    for loop in sch.get_loops(o)[-3:-1]:
        sch.unroll(loop)
    if width > 1:
        sch.vectorize(sch.get_loops(o)[-1])
        if spec.channels_last:
            sch.vectorize(ki)
    sch.unroll(i1)
    sch.unroll(i2)
    if block is None:
        parallel_outer(sch, outer, target)
        return None
    fused = sch.fuse(*outer)
    sch.parallel(fused)
    return fused, kc


def _padded_input(sch, target, spec, lanes: int):
    """The padded input stage, channels-last, computed in parallel (channels vectorized)."""
    block = find(sch, "wino_pad")  # a ring padding, zero-extended to whole tiles
    if block is not None:
        sch.compute_inline(sch.get_sblock("pad"))  # the ring read straight into that copy
    else:
        block = find(sch, "pad")
        block = block if block is not None else sch.get_sblock("dy_dilated")
    if not spec.channels_last:
        sch.transform_layout(block, ("write", 0), channels_last_map(2))
    n, *rest = sch.get_loops(block)
    c, h, w = (rest[2], rest[0], rest[1]) if spec.channels_last else rest
    sch.reorder(n, h, w, c)
    channels = extent(sch, c)
    width = _vector(channels, lanes)
    if width > 1:
        outer, inner = sch.split(c, [None, width])
        sch.vectorize(inner)
    parallel_outer(sch, [n, h, w], target)


# Bytes of one block's transformed input and GEMM product (alpha^2 x tiles x (C + K) values) that
# a core keeps in its L2 beside its share of the transformed filter, set on Zen 4's 1 MiB
# (MEASURED_L2); scaled down on a smaller L2 (TargetInfo.l2_bytes), not up on a larger one: on
# the 2 MiB Xeon below, twice the size lost (VGG 64ch 224x224 NHWC forward 2.15 -> 1.94x
# PyTorch, 128ch 112x112 2.37 -> 1.94), and so did twice the threshold (Inception 96->96 35x35,
# root instead of 3x9 blocks: forward 1.46 -> 1.29, grad_input 1.38 -> 1.25).
BLOCK_BYTES = 768 << 10
# Layers whose whole transformed input is smaller than this (scaled alike) keep the root stages
# (it stays in L2/L3). 832 KiB until 2026-12-03; at 0.86 MiB (49 tiles x 36 x 128 channels) the
# root stages were as fast or faster on Zen 5 (paired, NHWC, blocked -> root): 32->128 27x27
# grad_input 1.50 -> 1.96 and 1.43 -> 1.75x PyTorch, 128->32 28x28 forward 1.81 -> 1.98,
# 128->32 56x56 grad_input 2.20 -> 2.13.
BLOCKED_FROM = 1 << 20
MEASURED_L2 = 1 << 20   # the L2 per core the two sizes were set on
# Every block reads the whole transformed filter (alpha^2 x Cg x K) once: layers with fewer than
# K / FILTER_REUSE tiles keep the root stages and the filter transform fused into the GEMM (blocked,
# 512ch 14x14 F(2,3) forward fell from 1.81x to 1.38x PyTorch, 384->256 13x13 F(4,3) 1.72 -> 1.12,
# 1024ch 7x7 grad_input 1.04 -> 0.44). And where the whole transformed input is under
# FILTER_CHECKED_BELOW (scaled alike: it stays in L2/L3 at the root), the root stages are kept
# too when the block would read a filter more than FILTER_REUSE times its own transformed input
# and product (Cg x K > 4 x tiles x channels). Measured, paired with PyTorch, NHWC, median of
# 7-9, root -> blocks: on the Xeon (2 MiB L2) c3 (1x7, the filter 14.6x a block, 0.9 MiB) forward
# 1.35 -> 1.10, grad_input 1.46 -> 1.22, 144->288 14x14 grad_input (19.5x) 1.15 -> 0.84; on
# Zen 5 (1 MiB L2, 2026-12-03) c3 forward 3.17 -> 2.38, grad_input 1.69 -> 1.80, 144->288 14x14
# grad_input 1.43 -> 1.15, 160->320 14x14 grad_input (1.0 MiB) 1.17 -> 0.93, 128->192 28x28
# grad_input (1.3 MiB) 3.89 -> 3.78; but with 4-7 MiB at the root the blocks win though they
# re-read the filter 7-16x: Inception 80->192 73x73 padding 1 (1x19) 1.54 -> 1.94, VGG 256ch
# 56x56 (1x14) forward 2.23 -> 2.35, grad_input 2.03 -> 2.38. The check never enlarges a block
# past the nearest fit: VGG 256ch 56x56 in 7x14 blocks (the smallest that passes it, 4 MiB) ran
# 2.29 / 2.15 on Zen 5 and 1.56 / 1.63 against 1.63 / 1.71 on the Xeon.
FILTER_REUSE = 4
FILTER_CHECKED_BELOW = 2 << 20


def tile_block(spec, op: str, m: int, channels: int, l2_bytes: int = MEASURED_L2,
               cores: int = 1):
    """(rows, columns) of output tiles per block for the blocked schedule, or None (root stages).

    A block is whole rows of tiles (a divisor of the rows) or part of one row (a divisor of its
    tiles), so that it is a contiguous run of tile indices, with >= 2 tiles; the image has at
    least `cores` blocks (counting the batch). Of those, the one whose size is nearest (by ratio)
    to about BLOCK_BYTES of alpha^2 x `channels` values per tile. Nearest, not the largest under
    it: with few divisors (7 tiles per row) the largest under it can be a seventh of it (batch-8
    c3 on the Xeon, 1x7 -> 7x7 tiles: forward 1.51 -> 1.75x PyTorch, grad_input 1.67 -> 1.76).
    None where the transformed input is under BLOCKED_FROM bytes, where no block qualifies, and
    where it is under FILTER_CHECKED_BELOW and the block would read a filter more than
    FILTER_REUSE times its own values (all sizes follow `l2_bytes`, the L2 per core, downwards:
    see BLOCK_BYTES)."""
    out_channels = spec.out_channels if op == "forward" else spec.in_channels
    in_group = (spec.in_channels if op == "forward" else spec.out_channels) // spec.groups
    scale = min(1.0, l2_bytes / MEASURED_L2)
    transformed = transformed_input_bytes(spec, op, m)
    if transformed < BLOCKED_FROM * scale or FILTER_REUSE * tiles(spec, op, m) < out_channels:
        return None
    size = spec.out_size if op == "forward" else spec.in_size
    rows, cols = (-(-s // m) for s in size)
    per_tile = (m + 2) ** 2 * channels * (8 if spec.dtype == "float64" else 4)
    fit = max(1.0, BLOCK_BYTES * scale / per_tile)
    blocks = [((d, cols), spec.batch * rows // d) for d in range(1, rows + 1) if rows % d == 0]
    blocks += [((1, d), spec.batch * rows * cols // d) for d in range(1, cols) if cols % d == 0]
    fitting = [block for block, count in blocks if block[0] * block[1] >= 2 and count >= cores]
    if not fitting:
        return None
    block = min(fitting, key=lambda b: (max(b[0] * b[1] / fit, fit / (b[0] * b[1])), b[0] * b[1]))
    if (transformed < FILTER_CHECKED_BELOW * scale
            and in_group * out_channels > FILTER_REUSE * block[0] * block[1] * channels):
        return None
    return block


def _plan(spec, op: str, m: int, lanes: int, target, chunk: bool = True):
    """-> (vo, tp, block or None, chunked): the GEMM tile over all tiles and the rule's block. A
    ring padding's grad_input computes the padded domain's tiles (blocked by the same rule), then
    folds the ring back (a root stage reading the whole padded gradient). Blocked against root,
    ring / zeros grad_input paired on Zen 5 (2026-12-03, reflect, NHWC / NCHW): VGG 64ch 224x224
    1.98 -> 1.25 / 0.90 -> 0.88, 128ch 112x112 1.59 -> 1.22 / 1.64 -> 1.28; c2, c3, c4, batch-8
    c3 within the noise of two runs (1.15-1.53 either way)."""
    forward = op == "forward"
    in_channels = spec.in_channels if forward else spec.out_channels
    out_channels = spec.out_channels if forward else spec.in_channels
    computed = ring_unpadded(spec) if op == "grad_input" else spec
    vo, tp = gemm_tile(out_channels // spec.groups, tiles(computed, op, m), lanes, target)
    chunked = chunk and out_channels % vo == 0 and vo < out_channels
    block = tile_block(computed, op, m, in_channels + (vo if chunked else out_channels),
                       info(target).l2_bytes, info(target).num_cores)
    return vo, tp, block, chunked


def blocked(spec, op: str, target) -> bool:
    """Whether the rule schedules `op` of `spec` in blocks of tiles (tile_block)."""
    lanes = info(target).lanes("float64" if spec.dtype == "float64" else "float32")
    return _plan(spec, op, choose_tile(spec, op), lanes, target)[2] is not None


def schedule_winograd(func, target, knobs=None):
    """The rule: Winograd declarations only (forward, grad_input and their _prepack / _packed
    functions); `knobs` may give {"vo": .., "tp": .., "fuse_filter": ..}."""
    if not is_winograd(func) or info(target).is_gpu:
        return None
    spec, op = spec_of(func)
    op = base_op(op)
    knobs = knobs or {}
    m = choose_tile(spec, op)
    forward = op == "forward"
    in_channels = spec.in_channels if forward else spec.out_channels
    out_channels = spec.out_channels if forward else spec.in_channels
    lanes = info(target).lanes("float64" if spec.dtype == "float64" else "float32")
    vo, tp, block, chunked = _plan(spec, op, m, lanes, target, knobs.get("chunk", True))
    block = knobs.get("block", block)
    if block is not None:
        vo, tp = gemm_tile(out_channels // spec.groups, block[0] * block[1], lanes, target)
    vo, tp = knobs.get("vo", vo), knobs.get("tp", tp)
    sch = new_schedule(func)
    if find(sch, "w_flipped") is not None:
        _flipped_filter(sch, spec, target, lanes)
    # The filter transform inside the GEMM's loop over output-channel blocks wherever those blocks
    # give every core work (see the module docstring for the measurements).
    fuse_filter = (block is None
                   and knobs.get("fuse_filter", out_channels // vo >= info(target).num_cores)
                   and find(sch, "wino_gemm") is not None and find(sch, "wino_u") is not None)
    if find(sch, "wino_u") is not None and not fuse_filter:  # absent where the filter comes prepacked
        _filter_transform(sch, target, lanes, out_channels, vo)
    if find(sch, "wino_gemm") is None:   # "<op>_prepack": the filter transform alone
        return sch
    _padded_input(sch, target, spec, lanes)
    name = "conv" if forward else "dx"
    if block is None:
        _input_transform(sch, target, lanes, in_channels)
        _gemm(sch, target, vo, tp, fuse_filter)
        _output_transform(sch, target, spec, m, lanes, out_channels, name)
        schedule_fold(sch, target)  # grad_input of a ring padding: the ring added back
        return sch
    # One block of tiles at a time per core: its transformed input, its GEMM and its output
    # transform, so that the intermediates stay in L2 (see the module docstring).
    loop, kc = _output_transform(sch, target, spec, m, lanes, out_channels, name, block,
                                 vo if chunked else 0)
    sch.compute_at(sch.get_sblock("wino_gemm"), kc if kc is not None else loop)
    sch.compute_at(sch.get_sblock("wino_v"), loop)
    _input_transform(sch, target, lanes, in_channels, at_root=False)
    _gemm(sch, target, vo, tp, at_root=False,
          note=f" block {block[0]}x{block[1]}" + (f" chunk {vo}" if chunked else ""))
    schedule_fold(sch, target)  # grad_input of a ring padding: the ring added back
    return sch


def winograd_knobs(func, target) -> list:
    """Alternatives to the rule's own choices (its own first): the filter transform at the root,
    and the stages at the root where the rule blocks them."""
    if not is_winograd(func):
        return []
    spec, op = spec_of(func)
    return [{}, {"fuse_filter": False}] + ([{"block": None}] if blocked(spec, base_op(op), target)
                                           else [])
