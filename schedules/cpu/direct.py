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
channels): the register tile is a box of positions that may span rows (box_split), so no tile
wastes a row end (7x7 -> tiles of 7, 56x56 -> 14). Layers whose weight slice outgrows the caches
(ResNet c4/c5) take the GEMM-blocked variant (_channel_vector_blocked); strided grad_input takes
the phased variants that never multiply the inserted zeros (_channel_vector_phased, and
_width_vector_phased for thin channels-first layers such as the stem). grad_input of large
non-overlapping windows (patch embeddings) is declared as a gather and takes _gather.

Padding ("pad", "dy_dilated") is folded into the reads for channels-last depthwise layers (a bound
test per row and tap is cheaper than a padded copy written and read again) and stays a separate
root stage, computed in parallel, everywhere else (inlined, it cost 2-4x on batch-8 and
channels-first layers). Weights the schedule computes anyway (grad_input's flipped filter, the
repacked or copied forward filter) are laid out in blocks of the register tile's channels
(block_weights), so one tile streams one contiguous slab.

Evidence (Intel Xeon, LLVM mcpu "emeraldrapids", AVX-512, 2 cores shared with three other jobs;
fp32 peak measured 173 GFLOP/s per core (64 FLOP/cycle at ~2.7 GHz), 346 on both; min of 40 calls):
ResNet c2 3x3 forward NHWC 160 GFLOP/s on one thread = 93% of one core's peak; 200 on two
threads while other jobs held part of the second core. AMD EPYC Zen 4 (mcpu "znver4", 2 cores,
512-bit FMAs issued as two 256-bit halves: 32 FLOP/cycle, 118 GFLOP/s per core measured, 236 on
both; `convc bench`, median of 10, 2026-11-29): c2 3x3 forward NHWC 194 GFLOP/s = 82% of peak,
c3 197 (84%), batch-8 c3 206 (87%), grad_input 186-199 (79-84%). The tile fits the register
file: 14 positions x 2 vectors = 28 accumulators + 2 weight vectors + 1 broadcast = 31 of 32
zmm; each step's 16 loads stay under the 2-3 load ports while its 28 FMAs fill the 2 FMA ports.
Full table: README "Performance (CPU)".

Prepacked weights (Kernel.prepack, exported <op>_prepack / <op>_packed, convc.build.packing): the
weight stages above (the channels-first forward's blocked HWIO copy, grad_input's flipped,
swapped and blocked filter) are split off the scheduled kernel and run once. Zen 5, 2 cores,
2026-12-02, `convc bench --prepacked`, paired rounds, through exported libraries on a shared
machine: c5 (512ch 7x7) grad_input NHWC 65 -> 170 GFLOP/s packed (2.24x; PyTorch best 88).
"""

from __future__ import annotations

import dataclasses
import math

from convc.ops import PROLOGUE, is_winograd, reduction_spec_of
from convc.ops.common import acc_dtype
from convc.ops.grad_input import is_gather_grad_input
from convc.target import info

from .common import (box_split, box_tile, channel_tail, channel_vectors, channels_last_map, extent,
                     find, finish_output, index_map, label, new_schedule, parallel_block,
                     parallel_outer, partition_hint, pick_tile, split_phases, to_hwio,
                     vector_registers)
from .fold import schedule_fold


# Weight bytes of one output-channel slice (all reduction channels and taps x vo) above which the
# blocked variant pays: beyond ~L2/4 the slice no longer stays cached across the tiles that reuse it.
# 128 KiB on the Xeon and Zen 4 (measured there); on Zen 5 (1 MiB L2) slices of 147 KiB ran 1.1-1.8x
# faster unblocked (VGG 128->128 3x3 112x112 NHWC forward 423 -> 458 GFLOP/s, DenseNet 128->32 3x3
# 56x56 226 -> 423, paired rounds, 2 threads), c4 (295 KiB) at par, c5 (590 KiB) 1.18x; the
# tuner's grid has both ways.
WEIGHT_SLICE_BYTES = 256 * 1024
# Blocked variant: output positions per accumulator block (256 x 32 fp32 = 32 KiB, ~L1) and bytes
# of one weight chunk (kc channels x vo), meant to stay in L1 while every tile of the block uses it.
POSITION_BLOCK = 256
MAX_UNROLLED_COPIES = 32
# Phased grad_input unrolls every kernel tap inside the register tile; beyond this many taps the
# unrolled body (taps x tile, before the zero products fold away) costs LLVM too long.
MAX_PHASED_TAPS = 27
# The width-vector phased variant unrolls taps x phases x a few channels of one vector each.
MAX_PHASED_TAPS_B = 64
# Phased family A: one channel vector, and accumulators (phases x positions x vectors) for at
# most half the register file (16 of AVX-512's 32): the unrolled (tap, phase) body keeps the weight vectors and broadcasts
# of several taps live beside the accumulators, and a wider tile of one vector reads fewer
# operands per FMA than a narrower one of two (4x4/2: 31 loads for 64 FMAs, against 41). The
# register-file budget of the other variants (2 vectors, 2 rows x 6 positions = 24 accumulators)
# ran 1.1-1.9x slower. Zen 5, 2 threads, paired rounds, 2026-12-02, GFLOP/s old -> new, NHWC:
# conv_transpose 4x4/2 128->64 16x16 b8 247 -> 411, 256->128 8x8 b8 217 -> 367, 2x2/2 128->64
# 112x112 237 -> 390, 512->256 28x28 258 -> 343, 256->128 56x56 311 -> 291-402 (noise);
# grad_input 3x3/2 128ch 56x56 319 -> 394, batch-8 64->128 312 -> 421, c4 3x3/2 297-335 -> 314-351,
# depthwise 96ch 3x3/2 39 -> 73; NCHW: c4 3x3/2 231 -> 306, 4x4/2 512->256 b8 134 -> 218,
# 2x2/2 128->64 173 -> 282.
PHASED_VECTORS = 1
WEIGHT_CHUNK_BYTES = 16 * 1024
# Family B: most output rows in one register tile (see _width_vector).
MAX_ROWS = 8


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
    zero_stride: tuple = ()  # grad_input: the forward stride, i.e. zeros inserted into dy

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
                    (1,) * spec.ndim, spec.dilation, acc_dtype(spec.dtype), spec.stride)


def is_plain_copy(spec) -> bool:
    """grad_input's "dy_dilated" is dy itself (no zeros inserted, nothing padded or cropped)."""
    before = [d * (k - 1) - pb for k, d, pb in zip(spec.kernel, spec.dilation, spec.pad_before)]
    size = [i + d * (k - 1) for i, k, d in zip(spec.in_size, spec.kernel, spec.dilation)]
    return (all(s == 1 for s in spec.stride) and not any(before)
            and tuple(size) == tuple(spec.out_size))


def channel_vector_ok(geo: Geometry, lanes: int) -> bool:
    """Family A pays when a vector of output channels reads one broadcast input (whole groups of at
    least a vector), or when it reads a vector of inputs (depthwise in a channels-last layout)."""
    if geo.out_per_group >= lanes:
        return True
    return geo.channels_last and geo.in_per_group == 1 and geo.out_per_group == 1


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which variant the rule takes for a spec: family A (channel-vector) or B, phased or not."""

    geo: Geometry
    family_a: bool
    strided_grad: bool
    phased: bool


# Channels-first forward with few input channels (stems: 3 colour planes) writing a large output:
# family A's tile stores `tw` positions of each of its `vo` channels, one strided run per channel
# plane, and on large planes those stores, not the short reduction, set the speed; family B
# stores whole vectors along a row. Zen 5, 2 threads, paired rounds, 2026-12-03, stride 1, NCHW,
# A -> B: 3->64 3x3 224x224 3223 -> 605 us (PyTorch NCHW 1150), 4->64 3455 -> 676, 8->64 3791 ->
# 1237, 3->64 5x5 3738 -> 1213, batch-8 3->64 27511 -> 8965, 3->32 3x3 299x299 pad 0 1010 ->
# 524, 3->64 112x112 280 -> 201, 3->16 224x224 231 -> 193; A kept: 3->64 56x56 57 vs 72, 8->32
# 112x112 221 vs 281, 16->32 112x112 426 vs 686 (16->32 224x224 1354 vs 1292: at par; 32 channels
# and up A wins, 32->64 147x147 2109 vs 3676), stride 2 (3->32 3x3/2 224x224 142 vs 420; the 7x7/2
# stem at par), 1->32 5x5 28x28 13 vs 17. So: groups 1, stride 1, <= THIN_INPUT input channels
# and an output of >= WIDE_OUTPUT values per image (3 MiB of fp32).
THIN_INPUT = 8
WIDE_OUTPUT = 768 * 1024


def thin_input(op, geo: Geometry, lanes: int) -> bool:
    """A channels-first 2-D forward of stride 1 and groups 1 with few input channels, which either
    family can run (the tuner's grid has both)."""
    return (op == "forward" and not geo.channels_last and geo.ndim == 2 and geo.groups == 1
            and all(s == 1 for s in geo.stride) and geo.in_per_group <= THIN_INPUT
            and channel_vector_ok(geo, lanes))


def plan(spec, op, target, width_vector=None) -> Plan:
    """`width_vector` (a tuner knob) overrides the rule's family for thin_input layers: family B
    where the output of one image has >= WIDE_OUTPUT values."""
    geo = geometry(spec, op)
    lanes = info(target).lanes(geo.acc)
    family_a = geo.channels_last or channel_vector_ok(geo, lanes)
    if thin_input(op, geo, lanes):
        wide = geo.out_channels * math.prod(geo.out_size) >= WIDE_OUTPUT
        family_a = not (wide if width_vector is None else width_vector)
    strided_grad = op == "grad_input" and any(s > 1 for s in spec.stride)
    phased = strided_grad and (
        math.prod(spec.kernel) <= MAX_PHASED_TAPS if family_a
        else spec.in_size[-1] % spec.stride[-1] == 0 and math.prod(spec.kernel) <= MAX_PHASED_TAPS_B)
    return Plan(geo, family_a, strided_grad, phased)


def schedule_direct(func, target, knobs=None):
    """The rule; `knobs` (see direct_knobs) overrides the tile choices the rule makes itself."""
    spec, op = reduction_spec_of(func)
    if spec is None or op not in ("forward", "grad_input") or is_winograd(func):
        return None
    knobs = knobs or {}
    p = plan(spec, op, target, knobs.get("width_vector"))
    geo, family_a, strided_grad, phased = p.geo, p.family_a, p.strided_grad, p.phased
    sch = new_schedule(func)
    reduction = sch.get_sblock("conv" if op == "forward" else "dx")
    if op == "grad_input" and is_gather_grad_input(spec):
        _gather(sch, reduction, spec, target)
        return finish_fold(sch, target)
    # Operand stages: padding / zero insertion, computed once in parallel at the root or inlined.
    dy_pad = find(sch, "dy_pad")  # strided grad_input: dy padded, zeros inserted by dy_dilated
    if dy_pad is not None and phased:
        parallel_block(sch, dy_pad, target)  # read in place of dy; the zero test folds away
    elif dy_pad is not None:
        sch.compute_inline(dy_pad)           # one dy_dilated stage, zeros and padding together
    for name in ("pad", "dy_dilated"):
        stage = find(sch, name)
        if stage is not None and name == "dy_dilated" and (phased or is_plain_copy(spec)):
            sch.compute_inline(stage)  # phased: zeros folded away; 1x1 stride 1: dy itself
        elif (stage is not None and geo.channels_last and geo.in_per_group == 1
              and geo.out_per_group == 1 and not (strided_grad and name == "dy_dilated")):
            # Channels-last depthwise: padding folded into the vector reads (a bound test per row
            # and tap beats writing and re-reading a padded copy: 3x3 NHWC 32 -> 99 GFLOP/s).
            # Elsewhere the root stage stays: inlined, batch-8 c3 3x3 NHWC fell from ~300 to
            # ~115 GFLOP/s (forward and grad_input) and batch-1 layers gained nothing measurable;
            # channels-first c4 3x3 fell from 254 to 117; zeros inserted but not folded away
            # (stem 7x7/2 grad_input NHWC) from 13.5 to 7.
            sch.compute_inline(stage)
        elif stage is not None:
            parallel_block(sch, stage, target)
    # The weight stage in HWIO order, which block_weights lays out in channel blocks. Channels-last
    # forward reads w as given unless it is copied: on the Xeon the copy (weight-sized, once per
    # call) paid (ResNet c4 3x3 NHWC 162 -> 259 GFLOP/s, 1x1 213 -> 238, c5 161 -> 183; none
    # slower); on Zen 4 it cost c5 (9.4 MB of weights) 152 -> 133 GFLOP/s (median of 18 runs), and
    # on Zen 5 (2 threads, paired rounds) every layer tried ran faster without it: c5 208 -> 380,
    # c4 1.13x, 960->240 1x1 7x7 1.5x, 480->120 1x1 on 1x1 (SE) 18.4 -> 4.9 us. So by default the
    # weights are read as given; the tuner's grid has both (knob copy_weights).
    weights = None
    if op == "forward" and not geo.channels_last and family_a:
        weights = sch.cache_read(reduction, "w", "global")
        sch.transform_layout(weights, ("write", 0), to_hwio(geo.ndim))
        transpose_stage(sch, weights, write_axis=0, other_axis=1, target=target)
    elif may_copy_weights(op, geo) and knobs.get("copy_weights", False):
        weights = sch.cache_read(reduction, "w", "global")
        parallel_block(sch, weights, target)
    if op == "grad_input":
        flipped = sch.get_sblock("w_flipped")
        if in_place_flip(geo, family_a, phased) and knobs.get("flip_in_place", True):
            sch.compute_inline(flipped)
        elif not geo.channels_last and family_a:
            sch.transform_layout(flipped, ("write", 0), to_hwio(geo.ndim))
            transpose_stage(sch, flipped, write_axis=0, other_axis=1, target=target)
            weights = flipped
        elif geo.channels_last:
            transpose_stage(sch, flipped, write_axis=-1, other_axis=-2, target=target)
            weights = flipped
        else:
            parallel_block(sch, flipped, target)
    if family_a:
        _channel_vector(sch, reduction, geo, target, phased, weights, knobs)
    elif phased:
        label(sch, reduction, "width-vector phased")
        _width_vector_phased(sch, reduction, geo, target)
    else:
        label(sch, reduction, "width-vector")
        _width_vector(sch, reduction, geo, target)
    return finish_fold(sch, target)


def finish_prologue(sch, target) -> None:
    """grad_input's activation-derivative prologue ("dy_act"): computed inside the padding /
    zero-insertion stage where that stage is a root pass over dy anyway (act' once per element,
    no extra pass); where the reduction reads dy itself (1x1 stride 1, phased reads of dy_pad
    aside, channels-last depthwise, the gather) one vectorized parallel pass at the root, so a
    costly derivative (silu, gelu: exp / erf) is not recomputed per tap and channel tile."""
    stage = find(sch, PROLOGUE)
    if stage is None:
        return
    consumers = [sch.get(block).name_hint for block in sch.get_consumers(stage)]
    if consumers and all(name in ("dy_pad", "dy_dilated") for name in consumers):
        sch.compute_inline(stage)
    else:
        parallel_block(sch, stage, target)


def finish_fold(sch, target):
    """grad_input of a ring padding: its "fold" (the ring added back) at the root (schedule_fold);
    the prologue on dy (finish_prologue)."""
    finish_prologue(sch, target)
    schedule_fold(sch, target)
    return sch


def _gather(sch, block, spec, target):
    """grad_input of large non-overlapping windows (ViT's 16x16/16 patch embedding), declared as
    a gather (convc.ops.grad_input.gather_grad_input): per window, a GEMM of dy's channels
    against the weight's (c, taps). The last spatial axis is split into (window, tap) where the
    windows tile it exactly; the vector runs along the tap (channels-first: w[k, c, .., tap] is
    contiguous) or along (tap, channel) fused (channels-last, weights repacked to (k, *taps, c)),
    and the register tile is a few windows (x channels, channels-first) x those vectors, each
    reduction step one weight vector per vector and one dy broadcast per window. A tile holds
    its vector axis whole, or one window, so its accumulator region is exactly the positions it
    computes. ViT-B/16 patch embedding (3->768, 224x224) grad_input, Zen 5, 2 threads, paired
    rounds: 0.4 GFLOP/s as a correlation multiplying the inserted zeros; 218 GFLOP/s (43 % of
    peak) NCHW, PyTorch 47-53."""
    cl, nd = spec.channels_last, spec.ndim
    lanes = info(target).lanes(acc_dtype(spec.dtype))
    loops = sch.get_loops(block)
    n, rk = loops[0], loops[-1]
    c, spatial = (loops[1 + nd], loops[1:1 + nd]) if cl else (loops[1], loops[2:2 + nd])
    # Axes the windows tile exactly split into (window, tap); the outer axes' taps go outermost,
    # so consecutive tiles reuse one tap row's weights (ViT's weight is 2.4 MB, a tap row's 147 KB:
    # in row order the weights streamed from memory: 62 -> 98 GFLOP/s NCHW, 47 -> 134 NHWC).
    rows, row_taps, windows = [], [], None
    for axis, loop in enumerate(spatial):
        stride, size = spec.stride[axis], spec.in_size[axis]
        exact = spec.pad_before[axis] == 0 and size % stride == 0 and size > stride
        if axis == nd - 1:
            if exact:
                windows, tap = sch.split(loop, [None, stride])
        elif exact:
            window, row_tap = sch.split(loop, [None, stride])
            rows.append(window)
            row_taps.append(row_tap)
        else:
            rows.append(loop)
    if cl:
        weights = sch.cache_read(block, "w", "global")
        sch.transform_layout(weights, ("write", 0),
                             index_map(lambda *i: (i[-1], *i[:-2], i[-2]), nd + 2))
        parallel_block(sch, weights, target)
        # (tap, channel) as one vector axis where at most 4 vectors cover it (a tile holds it
        # whole); else vectors along the channels, one window per tile.
        span = spec.stride[-1] * spec.in_channels
        fuse = windows is not None and math.ceil(span / pick_tile(span, lanes)) <= 4
        vec = sch.fuse(tap, c) if fuse else c
    else:
        vec = tap if windows is not None else spatial[-1]
    span = extent(sch, vec)
    width = pick_tile(span, lanes)
    v_o, v_i = sch.split(vec, [None, width])
    count = extent(sch, v_o)
    whole = count <= 4 and (not cl or windows is None or vec is not c)
    per_tile = count if whole else pick_tile(count, 4)
    v_oo, v_oi = sch.split(v_o, [None, per_tile])
    channels = pick_tile(spec.in_channels, 4) if not cl else 1
    budget = vector_registers(target) - channels * per_tile - 2
    tile_windows = 1
    if windows is not None and whole:
        tile_windows = pick_tile(extent(sch, windows), max(1, budget // (channels * per_tile)))
    outer = [n]
    inner = []
    if not cl:
        c_o, c_i = sch.split(c, [None, channels])
        outer.append(c_o)
        inner.append(c_i)
    outer += row_taps + rows
    if windows is not None:
        w_o, w_i = sch.split(windows, [None, tile_windows])
        outer.append(w_o)
        inner.append(w_i)
    if cl and vec is c and windows is not None:
        outer.append(tap)
    sch.reorder(*outer, v_oo, rk, *inner, v_oi, v_i)
    label(sch, block, f"gather v{width}x{per_tile}" + (f" w{tile_windows}" if windows else ""))
    _finish(sch, block, outer, v_oo, rk,
            target, unroll=[*inner, v_oi], vector=v_i, ndim=nd)


def in_place_flip(geo: Geometry, family_a: bool, phased: bool) -> bool:
    """grad_input of an ungrouped 1x1 channels-first layer: the flipped, swapped filter is w
    itself read as (out, in) = HWIO of the transposed problem, the vector's channels contiguous;
    no stage needs to copy it. Zen 5, 2 threads, paired rounds: 240->960 on 1x1 (squeeze-and-
    excitation) 23.5 -> 15.7 us, 960->240 on 7x7 1.13x, 56x56 and 14x14 layers at par; strided
    (phased) ones 0.6x, so not those."""
    return (family_a and not phased and not geo.channels_last and geo.groups == 1
            and all(k == 1 for k in geo.kernel))


def may_copy_weights(op, geo: Geometry) -> bool:
    """Channels-last forward reads w as declared (HWIO) and may copy it into channel blocks."""
    return op == "forward" and geo.channels_last and geo.in_per_group > 1


def direct_knobs(func, target) -> list[dict]:
    """The choices schedule_direct makes from rules of thumb, as a grid of alternatives for the
    tuner to measure (convc.tuning.space): the rule's own choice first. Family A only (the other
    variants have no knob worth a trial): one, two or four channel vectors (four: 1x1 NHWC
    forward 1.09x, c2 3x3 0.56x, so left to the tuner), the tile width, for layers with large
    weight slices the GEMM-style blocking with its position block and weight chunk, and for
    channels-last forward whether the weights are copied per call, for 1x1 grad_input whether
    the flipped filter is read in place. Each entry is a complete
    schedule; see direct_knobs' use in convc.tuning.space."""
    spec, op = reduction_spec_of(func)
    if spec is None or op not in ("forward", "grad_input"):
        return []
    p = plan(spec, op, target)
    if p.family_a and p.phased:
        # the phased tile: one channel vector (the rule's) or two, each at the width the
        # accumulator budget gives (the rule's) or at two and one strides
        s = spec.stride[-1]
        return [{}, {"vectors": 2}, {"vectors": 1, "tw": 2 * s}, {"vectors": 2, "tw": s}]
    both = thin_input(op, p.geo, info(target).lanes(p.geo.acc))   # the rule's family first
    if not p.family_a:
        family_a = plan(spec, op, target, width_vector=False)
        return [{}] + ([dict(knobs, width_vector=False)
                        for knobs in _channel_vector_grid(op, family_a, target)] if both else [])
    if op == "grad_input" and is_gather_grad_input(spec):
        return [{}]
    return _channel_vector_grid(op, p, target) + ([{"width_vector": True}] if both else [])


def _channel_vector_grid(op, p: Plan, target) -> list[dict]:
    """direct_knobs' alternatives for family A (not phased), the rule's own choice first."""
    geo, grid, seen = p.geo, [], set()
    # How the weights are read: the rule's way, and the other one where there is a choice (the
    # per-call copy of channels-last forward weights; grad_input's flipped copy of 1x1 weights).
    readings = [{}] + ([{"copy_weights": True}] if may_copy_weights(op, geo) else []) \
        + ([{"flip_in_place": False}] if op == "grad_input" and in_place_flip(geo, True, False)
           else [])
    for vectors in dict.fromkeys((default_vectors(geo, target), 2, 4, 1)):
        vo, _, tw_max = channel_tile(geo, target, vectors)
        if vo in seen:
            continue
        seen.add(vo)
        widths = dict.fromkeys([default_width(geo, tw_max, target), tw_max,
                                pick_tile(geo.out_size[-1], tw_max), max(1, tw_max // 2)])
        blocked = weight_slice_bytes(geo, vo) > WEIGHT_SLICE_BYTES
        # Blocking is worth a trial from a quarter of the slice threshold up.
        ways = [blocked, not blocked] if weight_slice_bytes(geo, vo) * 4 > WEIGHT_SLICE_BYTES \
            else [False]
        for block in ways:
            for tw in widths:
                if not block:
                    grid.append({"vectors": vectors, "blocked": False, "tw": tw})
                    continue
                for position_block in (POSITION_BLOCK, POSITION_BLOCK // 2):
                    for chunk_bytes in (WEIGHT_CHUNK_BYTES, WEIGHT_CHUNK_BYTES * 2):
                        grid.append({"vectors": vectors, "blocked": True, "tw": tw,
                                     "position_block": position_block,
                                     "chunk_bytes": chunk_bytes})
    return [dict(knobs, **reading) for reading in readings for knobs in grid]


def transpose_stage(sch, block, write_axis, other_axis, target, tile=16):
    """A weight repacking stage that swaps two channel axes (flip/swap for grad_input, OIHW ->
    HWIO): 16 x 16 channel tiles innermost, so that both the strided reads and the contiguous,
    vectorized writes (along `write_axis`) stay within a few cache lines; tiles in parallel.
    The vector along `write_axis` divides it where a half or quarter tile does (see
    vector_split); else its last tile is partitioned off, and then runs serially inside the
    parallel tiles of the other axis."""
    loops = sch.get_loops(block)
    a, b = loops[write_axis], loops[other_axis]
    taps = [lp for lp in loops if not sch.get(lp).same_as(sch.get(a))
            and not sch.get(lp).same_as(sch.get(b))]
    size = extent(sch, a)
    width = next((w for w in (tile, tile // 2, tile // 4) if w >= 4 and size % w == 0),
                 min(tile, size))
    partitioned = size % width != 0
    a_o, a_i = sch.split(a, [None, width])
    b_o, b_i = sch.split(b, [None, min(tile, extent(sch, b))])
    if partitioned:
        sch.reorder(b_o, *taps, a_o, b_i, a_i)
        partition_hint(sch, a_o)
        partition_hint(sch, a_i)
        parallel = [b_o, *taps]
    else:
        sch.reorder(b_o, a_o, *taps, b_i, a_i)
        parallel = [b_o, a_o]
    sch.vectorize(a_i)
    parallel_outer(sch, parallel, target)


def _split_loops(sch, block, geo):
    loops = sch.get_loops(block)
    nd = geo.ndim
    if geo.channels_last:
        n, *sp, o = loops[:nd + 2]
    else:
        n, o, *sp = loops[:nd + 2]
    rc, *rk = loops[nd + 2:]
    return n, o, sp, rc, rk


def block_weights(sch, weights, geo: Geometry, vo: int, taps_outer: bool) -> None:
    """Lay a computed HWIO weight stage out in blocks of `vo` output channels, in the order the
    micro-kernel reads it: (o // vo, *r, c, o % vo) when the taps loop outside the channels,
    (o // vo, c, *r, o % vo) otherwise. One register tile then streams one contiguous slab
    instead of taps x channels vectors strided by whole HWIO planes (9 streams 256 KiB apart
    for a 3x3 layer with 256 channels), which the prefetchers follow and L1 holds."""
    if weights is None:
        return
    if taps_outer:
        layout = index_map(lambda *r_c_o: (r_c_o[-1] // vo, *r_c_o[:-1], r_c_o[-1] % vo),
                           geo.ndim + 2)
    else:
        layout = index_map(lambda *r_c_o: (r_c_o[-1] // vo, r_c_o[-2], *r_c_o[:-2], r_c_o[-1] % vo),
                           geo.ndim + 2)
    # A partial last block is padded with zeros (channel_tail "pad" computes it whole).
    pad = 0.0 if geo.out_channels % vo else None
    sch.transform_layout(weights, ("write", 0), layout, pad_value=pad)


def channel_tile(geo: Geometry, target, vectors: int = 2):
    """Family A's register tile -> (vo output channels, split by group?, tw_max positions)."""
    lanes = info(target).lanes(geo.acc)
    vo, by_group = channel_vectors(geo.out_channels, geo.out_per_group, geo.groups, lanes,
                                   most=vectors)
    count = max(1, math.ceil(vo / lanes))
    return vo, by_group, max(1, min(16, (vector_registers(target) - count - 2) // count))


# Family A takes four channel vectors (a tile of 6 positions x 64 channels) where the weight slice
# of those channels stays this small: each step then loads 4 weight vectors and broadcasts 6 inputs
# for 24 FMAs, where 2 x 14 needs 16 loads for 28. Zen 5, 2 threads, paired rounds, forward NHWC:
# 3->64 3x3/2 stems 1.42-1.49x, 256->64 1x1 56x56 1.15x, c2 3x3 (147 KiB) 1.05x, c5 (1.2 MiB) 0.69x.
FOUR_VECTOR_SLICE_BYTES = 64 * 1024


# ... except a channels-last stride-1 forward whose reduction per output is this short (stems of
# stride 1: 3 channels x 3x3 taps): one channel vector x SHORT_TILE positions, for which each
# step loads one weight vector and broadcasts 8 inputs. Zen 5, 2 threads, paired rounds,
# 2026-12-03, NHWC, 4 x 4 (the rule before) -> 1 x 8: 3->64 3x3 224x224 569-698 -> 477-499 us
# (three runs; PyTorch 502-542), batch 8 6855 -> 5674, 112x112 142 -> 119, 3->32 299x299 pad 0
# 617 -> 455 (4 x 7: 513); 1 x 16 in between (462-605, 6606, 135, 529). Not for 8 channels
# (8->64 224x224: 4 x 4 1324, 1 x 8 1537) nor strides (3x3/2 stems at par, 7x7/2 4 x 4 better).
SHORT_REDUCTION = 27
SHORT_TILE = 8


def short_reduction(geo: Geometry) -> bool:
    return (geo.channels_last and not geo.zero_stride and geo.ndim == 2 and geo.groups == 1
            and not geo.is_gemm and all(s == 1 for s in geo.stride)
            and geo.in_per_group * math.prod(geo.kernel) <= SHORT_REDUCTION)


# ... and channels-last depthwise layers (one input and one output channel per group): one
# channel vector. Their inputs are vectors, not broadcasts (each output channel reads its own
# input channel), so a tile of 2-4 vectors x tw positions holds its inputs beside 2-4x the
# accumulators and LLVM spilled. MobileNetV2's depthwise 3x3 at batch 8 (AMD EPYC Zen 4, 2
# threads, 2026-12-04, NHWC, least of 5 x 20 calls, the rule's 2-4 vectors -> 1 vector x 8-16
# positions): 32ch 56x56 forward 0.51 -> 0.08 ms (PyTorch 0.19), grad_input 0.40 -> 0.08;
# 192ch 14x14 0.145 -> 0.031; 384ch 7x7 0.057 -> 0.015; 960ch 4x4 0.042 -> 0.014; 576ch 7x7
# grad_input 0.082 -> 0.025; 144ch 28x28 (one vector already) 0.11. The row tile: as wide as
# the registers hold its accumulators and the tw + kw - 1 input vectors its unrolled taps share
# (depthwise_width: 14 for 3x3, 12 for 7x7 on 32 registers), divided as default_width divides.
# Medians of 7 paired rounds, ms, by tile width: 7x7 192ch 28x28 batch 4 (ConvNeXt) 7: 0.281,
# 14: 0.41; 5x5 816ch 10x10 (EfficientNet-B3) 5: 0.037, 10: 0.043; 3x3 192ch 14x14 7: 0.038, 14:
# 0.039; 3x3 144ch 28x28 7: 0.125, 14: 0.118. On the zoo's 26 depthwise stride-1 layers, NHWC
# forward and grad_input paired against the rule before (2-4 vectors): see README "Depthwise".
def depthwise_width(geo: Geometry, tw_max: int, target) -> int:
    budget = vector_registers(target) - 2 - (geo.kernel[-1] - 1)
    return max(1, min(tw_max, budget // 2))


def depthwise_last(geo: Geometry) -> bool:
    return geo.channels_last and geo.groups > 1 and geo.in_per_group == 1 and geo.out_per_group == 1


def default_vectors(geo: Geometry, target) -> int:
    if short_reduction(geo) or depthwise_last(geo):
        return 1
    lanes = info(target).lanes(geo.acc)
    return 4 if weight_slice_bytes(geo, 4 * lanes) <= FOUR_VECTOR_SLICE_BYTES else 2


def default_width(geo: Geometry, tw_max: int, target) -> int:
    if depthwise_last(geo):
        most = depthwise_width(geo, tw_max, target)
        return pick_tile(geo.out_size[-1], most, minimum=max(1, most // 2))
    if short_reduction(geo) and tw_max >= SHORT_TILE:
        return pick_tile(geo.out_size[-1], SHORT_TILE, minimum=SHORT_TILE)
    return pick_tile(geo.out_size[-1], tw_max, minimum=max(1, tw_max // 2))


def weight_slice_bytes(geo: Geometry, vo: int) -> int:
    return geo.in_per_group * math.prod(geo.kernel) * vo * (8 if geo.acc == "float64" else 4)


def _channel_vector(sch, block, geo: Geometry, target, phased=False, weights=None, knobs=None):
    knobs = knobs or {}
    most = knobs.get("vectors", PHASED_VECTORS if phased else default_vectors(geo, target))
    vo, by_group, tw_max = channel_tile(geo, target, most)
    # A partial last channel tile: the accumulator's write-back is made before the split, so that
    # its domain stays the real channels (made after, it would cover the padded lanes too).
    tail = channel_tail(geo.out_per_group if by_group else geo.out_channels, vo,
                        weights is not None and geo.groups == 1)
    write_back = sch.cache_write(block, 0, "local") if tail else None
    n, o, sp, rc, rk = _split_loops(sch, block, geo)
    outer = [n]
    if by_group:
        g, o = sch.split(o, [geo.groups, geo.out_per_group])
        outer.append(g)
    o_o, o_i = sch.split(o, [None, vo], disable_predication=tail == "pad")
    vectors = max(1, math.ceil(vo / info(target).lanes(geo.acc)))
    block_weights(sch, weights, geo, vo, taps_outer=not phased)
    blocked = knobs.get("blocked", weight_slice_bytes(geo, vo) > WEIGHT_SLICE_BYTES)
    variant = "phased" if phased else "blocked" if blocked else "gemm" if geo.is_gemm else "direct"
    label(sch, block, f"channel-vector {variant} v{vo}" + (f" tail:{tail}" if tail else ""))
    if phased:
        _channel_vector_phased(sch, block, geo, target, outer, o_o, o_i, sp, rc, rk, vectors,
                               write_back, tail, knobs.get("tw"))
        return
    if blocked:
        _channel_vector_blocked(sch, block, geo, target, outer, o_o, o_i, sp, rc, rk, vo, tw_max,
                                knobs, write_back)
        return
    tw_max = min(tw_max, knobs.get("tw", tw_max))
    tw = knobs.get("tw", default_width(geo, tw_max, target))
    if geo.is_gemm and len(sp) > 1 and box_tile(geo.out_size, tw_max) >= tw:
        # GEMM: the register tile is a box of positions that may span rows (7x7 -> 7, 56x56 -> 14)
        sp, w_i, tw = box_split(sch, sp, geo.out_size, tw_max)
        sp = sp or [sch.add_unit_loop(w_i)]
        w_o, ragged = sp[-1], False
    else:
        w_o, w_i = sch.split(sp[-1], [None, tw])
        sp, ragged = [*sp[:-1], w_o], geo.out_size[-1] % tw != 0
    unroll = [w_i]
    if geo.in_per_group == 1 and rk and geo.stride[-1] == 1:
        # Depthwise: the input is a vector load per position and tap. With the innermost taps
        # unrolled beside the tile, neighbouring taps read the same vectors (x[w + r]) and LLVM
        # loads each once: tw + k - 1 loads for tw * k FMAs instead of tw * k.
        reduction = [*rk[:-1], rc, rk[-1]]
        unroll = [rk[-1], w_i]
    else:
        reduction = [*rk, rc]
    if tail == "partition":
        # The channel tiles run inside one position tile (serial, so LoopPartition can split the
        # last one off); the position tiles go parallel.
        parallel_loops, tile_loop = outer + list(sp), o_o
    elif geo.in_per_group == 1 and geo.channels_last:
        # Depthwise reads no weight slab worth keeping cached: walk rows outermost, all channel
        # slabs of a row together, so the input rows stream contiguously.
        parallel_loops, tile_loop = outer + list(sp[:-1]) + [o_o], w_o
    else:
        parallel_loops, tile_loop = outer + [o_o] + list(sp[:-1]), w_o
    sch.reorder(*parallel_loops, tile_loop, *reduction, w_i, o_i)
    partition_tail(sch, tail, o_o, o_i)
    if ragged and tile_loop is w_o:
        # A row the position tiles do not divide: the last tile split off, so the others test no
        # position (Inception's 80->192 3x3 on 73x73, 71 wide in tiles of 12: NHWC forward
        # 149 -> 395 GFLOP/s with the weights read in place).
        partition_hint(sch, w_o)
    _finish(sch, block, parallel_loops, tile_loop, reduction[0], target, unroll=unroll, vector=o_i,
            channels_innermost=not geo.channels_last, ndim=geo.ndim, write_back=write_back,
            tail=tail)


def partition_tail(sch, tail, o_o, o_i) -> None:
    """A "partition" tail (channel_tail): the last channel tile split off (LoopPartition) and
    its vector loop cut to the remainder's width."""
    if tail == "partition":
        partition_hint(sch, o_o)
        partition_hint(sch, o_i)


def _channel_vector_blocked(sch, block, geo, target, outer, o_o, o_i, sp, rc, rk, vo, tw_max,
                            knobs, write_back=None):
    """Family A for layers whose weights outgrow the caches (many channels, small images: ResNet
    c4/c5): GEMM-style blocking. A block of up to POSITION_BLOCK output positions keeps its
    accumulators in L1 (a local buffer) while the reduction runs outside the register tiles, in
    chunks of `kc` channels whose weights (kc x vo) stay in L1 across every tile of the block.
    Each weight is then fetched from memory once per position block instead of once per tile.
    Measured on c5 (7x7, 512->512): 60 -> 80-105 GFLOP/s; c4 (14x14, 256): 100 -> 145 GFLOP/s
    (min of 40 runs, one thread, i.e. ~50-85% of one core's 173 GFLOP/s)."""
    itemsize = 8 if geo.acc == "float64" else 4
    blocks, p, block_extent = box_split(sch, sp, geo.out_size,
                                        knobs.get("position_block", POSITION_BLOCK))
    tw = min(knobs.get("tw", pick_tile(block_extent, tw_max, minimum=max(1, tw_max // 2))),
             block_extent)
    p_o, p_i = sch.split(p, [None, tw])
    chunk_bytes = knobs.get("chunk_bytes", WEIGHT_CHUNK_BYTES)
    kc = pick_tile(geo.in_per_group, max(1, chunk_bytes // (vo * itemsize)))
    rc_o, rc_i = sch.split(rc, [None, kc])
    sch.reorder(*outer, o_o, *blocks, *rk, rc_o, p_o, rc_i, p_i, o_i)
    first_reduction = rk[0] if rk else rc_o
    # Parallel over channel blocks, and in 1-D and 2-D over position blocks too (with one channel
    # block, DenseNet's 128->32 3x3 ran on one thread). Never over 3-D position blocks: where a
    # box's accumulator region over-covers (3-D boxes whose rows do not fill a plane), its
    # write-back stores positions of the next box, which must then run after it on the same
    # thread (with 3-D position blocks in parallel this raced: wrong results with 2 threads);
    # 1-D and 2-D boxes are whole rows or parts of one row, exact.
    # (A partial last channel tile stays in the parallel loop, unpartitioned: its lane predicate
    # scalarizes the write-back of a 256-position block, which is small beside the > 2048
    # multiply-adds per accumulator of a layer this variant takes.)
    parallel = outer + [o_o] + (list(blocks) if geo.ndim <= 2 else [])
    _finish(sch, block, parallel, ([o_o] + blocks)[-1], first_reduction, target,
            unroll=[p_i], vector=o_i, channels_innermost=not geo.channels_last, ndim=geo.ndim,
            write_back=write_back)


def _channel_vector_phased(sch, block, geo, target, outer, o_o, o_i, sp, rc, rk, vectors,
                           write_back=None, tail=None, width=None):
    """Family A for grad_input of a strided convolution, without the zeros.

    dy_dilated holds s-1 zeros between neighbours on every strided axis, so a plain schedule
    multiplies zeros most of the time (3 taps in 4 for 3x3 stride 2). Here dy_dilated is inlined
    (its "is this a real element" test moves into the reduction), every strided axis is split by
    its stride with the phase innermost, and the kernel taps and phases are unrolled inside the
    register tile: for each (phase, tap) pair the test is then a constant, TVM's simplifier folds
    the zero products away, and only the taps that meet a real dy element remain (the sub-pixel
    decomposition of a transposed convolution, left to the simplifier). Measured on c4 3x3/2
    (28x28, 256 ch): 47 -> 98-110 GFLOP/s (one shared core, AVX-512)."""
    strides = geo.zero_stride
    budget = max(1, vector_registers(target) // 2 // vectors)   # PHASED_VECTORS' comment
    mid, phases, phase_count = [], [], 1
    for axis, stride in zip(sp[:-1], strides[:-1]):
        if stride > 1 and phase_count * stride * strides[-1] <= budget:
            axis_o, axis_p = sch.split(axis, [None, stride])
            mid.append(axis_o)
            phases.append(axis_p)
            phase_count *= stride
        else:
            mid.append(axis)
    # The widest tile the registers hold (a multiple of the stride), its last one partitioned off
    # where it does not divide the row: Zen 5, 128->256 3x3/2 NHWC grad_input (56 wide, tiles of
    # 6): 215 -> 344 GFLOP/s with the partition; tiles of 4 that divide the row: 262.
    tw = strides[-1] * max(1, budget // (phase_count * strides[-1]))
    tw = width or min(tw, strides[-1] * math.ceil(geo.out_size[-1] / strides[-1]))
    w_o, w_i = sch.split(sp[-1], [None, tw])
    if tail == "partition":  # a partial last channel tile: channel tiles serial, partitioned
        parallel_loops, tile_loop = outer + mid + [w_o], o_o
    else:
        parallel_loops, tile_loop = outer + [o_o] + mid, w_o
    sch.reorder(*parallel_loops, tile_loop, rc, *rk, *phases, w_i, o_i)
    partition_tail(sch, tail, o_o, o_i)
    if tile_loop is w_o and geo.out_size[-1] % tw:
        partition_hint(sch, w_o)  # a ragged row: its last tile split off (as in _channel_vector)
    _finish(sch, block, parallel_loops, tile_loop, rc, target, unroll=[*rk, *phases, w_i],
            vector=o_i, channels_innermost=not geo.channels_last, ndim=geo.ndim,
            write_back=write_back, tail=tail)


def _width_vector(sch, block, geo: Geometry, target):
    lanes = info(target).lanes(geo.acc)
    regs = vector_registers(target)
    n, o, sp, rc, rk = _split_loops(sch, block, geo)
    vw = row_vector(geo.out_size[-1], lanes)
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
        # Rows share only the broadcast weight: beyond ~8 the extra accumulators cost more than
        # they save (MobileNetV2 3x3 depthwise NCHW, one thread: 28 rows 20 GFLOP/s, 14 25, 7 28).
        th = pick_tile(geo.out_size[-2], max(1, min(MAX_ROWS, budget // to)))
        h_o, h_i = sch.split(sp[-2], [None, th])
        mid, rows = list(sp[:-2]) + [h_o], [h_i]
    else:
        mid = []
    sch.reorder(*outer, o_o, *mid, w_o, *rk, rc, o_i, *rows, w_i)
    first_reduction = rk[0] if rk else rc
    ragged = geo.out_size[-1] % vw != 0
    if ragged:
        # A row the vectors do not divide (odd widths: 299, 147): the last vector split off and cut
        # to the remainder; a lane test left in the vector loop made TVM scalarize the whole
        # kernel (Inception's 3->32 3x3/2 grad_input NCHW, 299 wide: 2 GFLOP/s).
        partition_hint(sch, w_o)
        partition_hint(sch, w_i)
    _finish(sch, block, outer + [o_o] + mid, w_o, first_reduction, target,
            unroll=[o_i, *rows], vector=w_i, partition_copy=ragged)


def row_vector(width: int, lanes: int) -> int:
    """Family B's vector along the output rows: the widest power-of-two vector that divides the
    row. A tile that overhangs the row end leaves a bound test inside the vector loop, which TVM
    lowers to scalar code or gathers; LLVM's split of odd-sized vectors longer than one register
    is slow too. MobileNetV2 3x3 depthwise NCHW forward, one thread (Xeon "emeraldrapids",
    AVX-512): 112 wide 5.5 -> 29 GFLOP/s (16 lanes instead of 32 + remainder), 56 wide 10 -> 28
    (8 lanes), 28 wide 7 -> 30 (4 lanes; 28 lanes whole: 7). Rows shorter than a vector are taken
    whole (14: 25 GFLOP/s; 7: 16)."""
    if width <= lanes:
        return width
    for vw in (2 * lanes, lanes, lanes // 2, lanes // 4):
        if vw and width % vw == 0 and width >= 2 * vw:
            return vw
    return lanes


def _width_vector_phased(sch, block, geo: Geometry, target):
    """Family B for grad_input of a strided convolution (thin channels-first layers: the stem's 3
    input channels), without the zeros, as _channel_vector_phased does for family A.

    The innermost spatial axis is split by its stride into (w_q, w_p) and the vector runs along
    w_q: for a fixed phase w_p and tap, dx[.., s*w_q + w_p] reads dy_pad[.., w_q + const], a
    contiguous vector. The other strided axes are split by their stride too; taps, phases and a
    few channels are unrolled around the vector, so every (phase, tap) zero test is a constant
    that the simplifier folds, leaving 1 product in s^2 (stride 2: 4x fewer FMAs than family B).
    This needs the padding out of the test ("dy_pad" at the root): a bound test that depends on
    the vector lane made TVM scalarize the whole body (5.5 GFLOP/s on the stem). The accumulator
    is laid out phase-major ((w mod s, w div s)) so its vectors are registers; the write-back
    stores each phase with stride s. ResNet stem 7x7/2 grad_input (3 channels, NCHW): 25-32 ->
    167 GFLOP/s on 2 threads (48% of peak; PyTorch 40)."""
    lanes = info(target).lanes(geo.acc)
    regs = vector_registers(target)
    n, o, sp, rc, rk = _split_loops(sch, block, geo)
    strides = geo.zero_stride
    mid, phases = split_phases(sch, sp[:-1], strides[:-1])
    sw = strides[-1]
    w_q, w_p = sch.split(sp[-1], [None, sw])
    # Vectors that divide the phase's row where one does (row_vector), else the last one split
    # off (ConvNeXt's 4x4/4 patchify stem: 56 per phase, 16 lanes ran scalar).
    vw = row_vector(geo.out_size[-1] // sw, lanes)
    w_qo, w_qi = sch.split(w_q, [None, vw])
    if (geo.out_size[-1] // sw) % vw:
        partition_hint(sch, w_qo)
        partition_hint(sch, w_qi)
    budget = max(1, (regs - 4) // math.prod(strides))
    if geo.groups > 1 and geo.out_per_group > 1:
        g, o = sch.split(o, [geo.groups, geo.out_per_group])
        outer = [n, g]
    else:
        outer = [n]
    to = pick_tile(geo.out_per_group if geo.groups > 1 else geo.out_channels, budget)
    o_o, o_i = sch.split(o, [None, to])
    sch.reorder(*outer, o_o, *mid, w_qo, rc, *rk, o_i, *phases, w_p, w_qi)
    write_back = sch.cache_write(block, 0, "local")
    sch.transform_layout(block, ("write", 0), index_map(
        lambda *i: (*i[:-1], i[-1] % sw, i[-1] // sw), geo.ndim + 2))
    sch.reverse_compute_at(write_back, w_qo, preserve_unit_loops=True)
    finish_output(sch, write_back)
    parallel_outer(sch, outer + [o_o] + mid, target)
    for loop in [*rk, o_i, *phases, w_p]:
        sch.unroll(loop)
    sch.vectorize(w_qi)
    # write-back: phase-major like the accumulator (contiguous reads, stores with stride sw)
    *copy, last = inner_loops(sch, write_back, block)
    last_q, last_p = sch.split(last, [None, sw])
    sch.reorder(last_p, last_q)
    for loop in [*copy, last_p]:
        if extent(sch, loop, 0) > 1:
            sch.unroll(loop)
    sch.vectorize(last_q)
    init = sch.decompose_reduction(block, rc)
    vectorize_tile(sch, inner_loops(sch, init, block))


def _finish(sch, block, parallel_loops, tile_loop, first_reduction, target, unroll, vector,
            channels_innermost=False, ndim=2, write_back=None, tail=None, partition_copy=False):
    """Local accumulator at the tile, init before the reduction, epilogue folded into the write-back,
    outer loops parallel, micro-kernel unrolled and vectorized. `channels_innermost`: lay the
    accumulator of a channels-first op out channels-last, so that its vectors are registers.
    `write_back`: the accumulator's write-back when the caller made it (a partial channel tile,
    whose kind is `tail`: see channel_tail). `partition_copy`: the write-back's vector loop is cut
    like a partitioned tile's."""
    write_back = write_back or sch.cache_write(block, 0, "local")
    if channels_innermost:
        sch.transform_layout(block, ("write", 0), channels_last_map(ndim))
    sch.reverse_compute_at(write_back, tile_loop, preserve_unit_loops=True)
    finish_output(sch, write_back)
    parallel_outer(sch, parallel_loops, target)
    for loop in unroll:
        sch.unroll(loop)
    sch.vectorize(vector)
    copy = inner_loops(sch, write_back, block)
    if tail == "pad" and not channels_innermost:
        # Channels-last write-back of a tile whose last lanes lie past the channels: every lane
        # stored on its own, unrolled. Vectorized, the lane test made TVM scalarize it into a
        # loop indexing the accumulator, which then stayed in memory instead of registers;
        # unrolled, each lane is an extract from a register (480->120 1x1 on 1x1 NHWC forward
        # 20.6 -> 10.7 us, 37->47 3x3 1.12x; the partitioned loop order instead was 0.76-0.9x).
        for loop in copy:
            if extent(sch, loop, 0) > 1:
                sch.unroll(loop)
    else:
        vectorize_tile(sch, copy)
    if copy and (partition_copy or tail == "partition" and not channels_innermost):
        partition_hint(sch, copy[-1])  # the copy's vector loop (channels-last: the channels)
    init = sch.decompose_reduction(block, first_reduction)
    vectorize_tile(sch, inner_loops(sch, init, block))


def inner_loops(sch, stage, outer_block):
    """The loops of `stage` below those it shares with `outer_block` (its own tile loops)."""
    mine, theirs = sch.get_loops(stage), sch.get_loops(outer_block)
    shared = 0
    for a, b in zip(mine, theirs):
        if not sch.get(a).same_as(sch.get(b)):
            break
        shared += 1
    return mine[shared:]


def vectorize_tile(sch, loops, lanes: int = 16) -> None:
    """A tile's copy loops (init, write-back): the innermost vectorized, the others unrolled.

    An innermost loop longer than a vector is cut into vectors that divide it where one does: a
    write-back that transposes (channels-first grad_weight reads an HWIO accumulator) as one
    28-lane vector took LLVM 1.6 s to compile for one kernel (672->28 1x1), 4-lane ones 0.06 s."""
    loops = [lp for lp in loops if extent(sch, lp, 0) > 1]
    if not loops:
        return
    size = extent(sch, loops[-1])
    width = next((w for w in (lanes, lanes // 2, lanes // 4) if w > 1 and size % w == 0), size)
    if size > lanes and width < size:
        rest, inner = sch.split(loops[-1], [None, width])
        sch.vectorize(inner)
        loops = [*loops[:-1], rest, inner]
    else:
        sch.vectorize(loops[-1])
    # Unroll the copy loops only while the unrolled body stays small: a blocked accumulator covers
    # hundreds of positions, and unrolling all of them costs LLVM seconds for nothing.
    copies = 1
    for loop in reversed(loops[:-1]):
        copies *= extent(sch, loop)
        if copies > MAX_UNROLLED_COPIES:
            break
        sch.unroll(loop)
