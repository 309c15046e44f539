"""Which schedule a convc function gets. The order is fixed, and this is the only place it lives:

    1. a tuning record for this workload on this target (tuning_logs/ or the user's log dir),
    2. the first hand-written rule for the target's kind that accepts the function,
    3. the default schedule (correct everywhere, fast nowhere).

`target` is a resolved convc.target.Target (a tvm.target.Target, as the rules take it).
"""

from __future__ import annotations

import dataclasses

from convc.schedules import RULES
from convc.schedules.default import default
from convc.schedules.cpu.winograd import blocked as winograd_blocked

from .ops import winograd
from .spec import ConvSpec
from .target import info
from .records import algorithm_verdict, find_record, warn_once


def resolve_algorithm(spec, op: str, target, log_dir=None, packed: bool = False):
    """The spec to declare `op` of `spec` with on `target`: spec.algorithm "auto" becomes
    "winograd" (with its tile) where Winograd was measured faster, else stays (declared direct):
    the tuner's side-by-side verdict for this layer and target where one is recorded
    (recorded_algorithm: `convc tune` measures direct against each Winograd tile), else the
    rule over past measurements (prefers_winograd). `packed`: the choice for the kernel's
    prepacked form (convc.build.packed_functions), where the filter transform is paid once
    (prefers_winograd's `packed`). A forced "winograd" on a GPU target is a
    ValueError: the Winograd schedules are CPU-only."""
    if not isinstance(spec, ConvSpec):  # a PoolSpec: one algorithm
        return spec
    if spec.algorithm == "winograd" and op != "grad_weight" and info(target).is_gpu:
        raise ValueError("algorithm='winograd' is implemented for CPU (LLVM) targets only: "
                         f"target {info(target).key} is a GPU")
    if spec.algorithm != "auto" or op == "grad_weight" or info(target).is_gpu:
        return spec
    if winograd.unsupported(spec, op) is not None or spec.batch == 0:
        return spec
    m = recorded_algorithm(spec, op, target, log_dir)
    if m is None:
        m = prefers_winograd(spec, op, target, packed)
    return dataclasses.replace(spec, algorithm="winograd", winograd_m=m) if m else spec


def winograd_tiles(spec, op: str) -> list[int]:
    """The Winograd tiles m that can compute `op` of `spec` (each checked as the spec it would
    be declared with); empty where Winograd cannot."""
    if winograd.unsupported(spec, op) is not None:
        return []
    allowed = []
    for m in winograd.TILES:
        try:
            forced = dataclasses.replace(spec, algorithm="winograd", winograd_m=m)
        except ValueError:  # this tile's limits (accuracy, sizes) refuse the layer
            continue
        if winograd.unsupported(forced, op) is None:
            allowed.append(m)
    return allowed


def recorded_algorithm(spec, op: str, target, log_dir=None) -> int | None:
    """The tuner's verdict for `op` of `spec` (algorithm "auto") on `target`: the Winograd tile it
    measured fastest, 0 where direct was, None where no usable verdict is recorded (then the
    rule decides). A verdict that no longer makes sense (an unknown choice, a tile this layer
    cannot take, a damaged entry) is ignored, with a warning."""
    found = algorithm_verdict(spec.key, op, target, log_dir)
    if found is None:
        return None
    verdict, where = found
    choice = verdict.get("choice") if isinstance(verdict, dict) else None
    m = verdict.get("m") if isinstance(verdict, dict) else None
    if choice == "direct":
        return 0
    if choice == "winograd" and type(m) is int and m in winograd_tiles(spec, op):
        return m
    warn_once(f"{op}: the algorithm verdict {verdict!r} in {where} is stale or damaged (not "
              f"'direct' or a Winograd tile this layer takes: {winograd_tiles(spec, op)}); it is "
              "ignored and the built-in rule decides; run `convc tune` again to renew it")
    return None


def prefers_winograd(spec, op: str, target, packed: bool = False) -> int:
    """The Winograd tile measured faster than the direct schedules for layers like this on CPUs
    like `target`, or 0 (direct). A conservative rule over what was measured:

    Zen 5 (LLVM znver5, AVX-512, 2 cores, fp32 peak ~500 GFLOP/s), 2026-12-02, paired rounds,
    median of 7, effective GFLOP/s (direct FLOPs / time) direct -> Winograd, forward NCHW / NHWC:
    c2 (64ch 56x56, 196 tiles of 4x4) 244 -> 648 / 397 -> 888 (m=4); c3 (128ch 28x28, 49 tiles)
    236 -> 658 / 403 -> 776 (m=4); batch-8 c3 (392 tiles) 313 -> 752 / 433 -> 973 (m=4); c4
    (256ch 14x14: 16 tiles of 4x4, 49 of 2x2) 225 -> 497 / 417 -> 481 (m=2; m=4 332-339); c5
    (512ch 7x7, 16 tiles of 2x2) 176 -> 146 / 344 -> 143 (m=2: slower). grad_input alike: c2
    306 -> 666 / 410 -> 953, c3 231 -> 463 / 328 -> 479, c4 146 -> 321 / 187 -> 191 (m=2;
    a second run 240 -> 427 / 383 -> 303 with the filter transform at the root; fused into the
    GEMM 424 -> 671 / 390 -> 425), batch-8 c3 241 -> 524 / 389 -> 705. c5 with the fused filter
    transform: NCHW 202 -> 252 forward, 219 -> 330 grad_input, NHWC 432 -> 376, 170 -> 118
    (below MIN_TILES: direct). The filter transform runs per call (alpha^2 C K values
    written and read again), so Winograd pays from about MIN_TILES tiles: m=4 from 32 tiles of
    4x4, else m=2 from 32 tiles of 2x2, else direct. Only where measured: float32, ungrouped, 64
    or more channels each side in whole vectors (channel counts no vector divides leave the
    transforms scalar; channels-last from 16 with F(4, 3) only, FEW_CHANNELS_LAST), 512-bit vectors (other CPUs and dtypes keep direct;
    algorithm="winograd" forces it anywhere it is supported). A ring padding (reflect, replicate,
    circular) gets the verdict the zeros mode of the layer gets (decided on the same tiles), so
    the two are compared like with like; its grad_input computes the padded domain's tiles and
    folds the ring back (convc.ops.winograd.grad_input).

    `packed` (a kernel's prepacked form: Kernel.prepack, exported `<op>_packed`, the PyTorch
    modules' kernel packs): the filter transform is then paid once, not per call, so Winograd
    pays from fewer tiles: layers below the tile floor with PACKED_MIN_TILES tiles of 2x2 and
    PACKED_MIN_CHANNELS channels each side take packed_tile's m (see PACKED_MIN_TILES)."""
    cpu = info(target)
    lanes = cpu.lanes("float32")
    channels = min(spec.in_channels, spec.out_channels)
    if (spec.dtype != "float32" or spec.groups != 1
            or channels < (FEW_CHANNELS_LAST if spec.channels_last else 64)
            or spec.in_channels % lanes or spec.out_channels % lanes or cpu.vector_bits < 512):
        return 0
    m = winograd.choose_tile(spec, op)
    if channels < 64 and m != 4:   # few channels: F(4, 3) on large planes only (FEW_CHANNELS_LAST)
        return 0
    if (not spec.channels_last and winograd.transformed_input_bytes(spec, op, m) > LARGE_TRANSFORM
            and not winograd_blocked(spec, op, target)):
        return 0
    least = winograd.MIN_TILES if spec.channels_last else MIN_TILES_CHANNELS_FIRST
    if winograd.tiles(spec, op, m) >= least:
        return m
    if (packed and channels >= PACKED_MIN_CHANNELS
            and winograd.tiles(spec, op, 2) >= PACKED_MIN_TILES):
        return packed_tile(spec, op)
    return 0


def packed_tile(spec, op: str) -> int:
    """The Winograd tile of a packed layer below the unpacked rule's tile floor: F(4, 3) while its
    transformed filter (36 C K values) stays within PACKED_F4_BYTES, else F(2, 3) (16 C K). On a
    batch-1 7x7 plane (4 tiles of 4x4) the GEMM reads the whole filter once per call, so its size
    is what the call costs: 512 channels' F(4, 3) filter (37.7 MB, beyond the 32 MiB L3) ran 2x
    slower than F(2, 3)'s (16.8 MB)."""
    f4 = 36 * spec.in_channels * spec.out_channels * 4   # float32 (prefers_winograd's floor)
    return 4 if f4 <= PACKED_F4_BYTES and 4 in winograd_tiles(spec, op) else 2


# Prepacked kernels (prefers_winograd's `packed`): channels-last layers with fewer tiles than
# winograd.MIN_TILES but at least this many of 2x2 (a batch-1 7x7 or 8x8 plane) and
# PACKED_MIN_CHANNELS channels each side take Winograd in their packed form. AMD EPYC Zen 5
# (znver5, 2 cores), 2026-12-04, NHWC, batch 1, 3x3 pad 1, packed calls (Kernel.prepack) paired
# by round, median of 9 x 10 calls, three runs, us, the direct pack (the rule's, a tuned record
# where one is shipped) -> the Winograd pack packed_tile picks: 512->512 7x7 (c5) forward
# 625-644 -> 541-594 (F(2, 3)), grad_input 577-660 -> 483-682 (two runs of three faster);
# 256->256 7x7 144-161 -> 109-159 / 135-145 -> 100-113 (F(2, 3)); 128->128 7x7 34-71 -> 23-48 /
# 33-71 -> 23-55 (F(4, 3)); 160->320 7x7 106-122 -> 62-100 / 121-171 -> 67-140 (F(4, 3)). Not
# taken: 64->64 and 32->128 7x7 (one run: direct within 10 % of the best Winograd pack, F(2, 3)
# 1.1-1.4x slower than direct), 512->512
# 4x4 (4 tiles: direct 218-240 against F(2, 3) 274-309). Channels-first layers already take
# Winograd from 16 tiles (MIN_TILES_CHANNELS_FIRST).
PACKED_MIN_TILES = 16
PACKED_MIN_CHANNELS = 128
# packed_tile: 160->320 (7.4 MB) ran faster with F(4, 3), 256->256 (9.4 MB) level with F(2, 3).
PACKED_F4_BYTES = 8 << 20


# Channels-last layers with fewer than 64 channels on a side (whole vectors, from 16) take F(4, 3)
# where the plane has MIN_TILES tiles of 4x4 (28x28 and up), never F(2, 3). Measured on the zoo
# corpus's 3x3 stride-1 layers (AMD EPYC Zen 4, 2 threads, 2026-12-02, NHWC, paired rounds, median
# of 5, PyTorch best format / convc, direct -> Winograd): forward / grad_input 16->64 55x55
# 0.94 -> 1.52 / 1.27 -> 2.07, 32->64 147x147 0.99 -> 1.45 / 1.02 -> 1.71, 32->32 149x149
# 1.05 -> 1.61 / 1.04 -> 1.62, 32->128 27x27 0.62 -> 1.89 / 1.14 -> 2.13, 128->32 56x56
# 1.05 -> 2.47 / 0.98 -> 2.55, 128->32 28x28 0.90 -> 2.14 / 1.12 -> 2.33, 32->96 28x28
# 1.29 -> 2.02 / 1.13 -> 0.99 and, a second run, 1.11 -> 2.01 / 1.43 -> 2.62. On 14x14 (F(2, 3))
# direct held: 16->48 1.57 -> 1.30 / 2.07 -> 1.36, 32->128 1.33 -> 1.33 / 1.27 -> 1.07, 32->64
# 1.26 -> 1.33 / 1.48 -> 1.68; on 7x7 direct won each (32->128, 48->128, 160->320). Channels-first
# with few channels was not measured: it keeps the 64-channel floor.
FEW_CHANNELS_LAST = 16
# Channels-first direct schedules are slower on small layers (c5 NCHW 140-200 GFLOP/s against
# 370-430 NHWC), so Winograd with its fused filter transform pays there from fewer tiles: c5's 16
# tiles of 2x2, forward 202 -> 252, grad_input 219 -> 330 (NHWC: 432 -> 376, 170 -> 118).
MIN_TILES_CHANNELS_FIRST = 16
# Channels-first layers whose transformed input (alpha^2 x tiles x C values) outgrows this stay
# direct: VGG's 64ch 224x224 (29 MiB) grad_input NCHW ran at 224 effective GFLOP/s against the
# direct schedules' 265 (NHWC 513 against 396) -- unless the schedule blocks the tiles: blocked,
# the same layer NCHW (Zen 4, 2026-12-02, paired, PyTorch best / convc) forward 1.07 against
# direct 0.83, grad_input 1.26 against 0.95.
LARGE_TRANSFORM = 16 << 20


def choose(func, target, log_dir=None):
    """-> (tvm.s_tir.Schedule, how) with how in "tuned" | "hand-written" | "default".

    log_dir: a directory of tuning records searched before the user's and the shipped ones.
    """
    sch = find_record(func, target, log_dir)
    if sch is not None:
        return sch, "tuned"
    return untuned(func, target)


def rules(target) -> list:
    """The hand-written rules for `target`'s kind, in the order they are tried."""
    return RULES["cuda" if info(target).is_gpu else "cpu"]


def untuned(func, target):
    """No tuning record: the first hand-written rule that accepts, else the default (convc.tune
    measures this as the yardstick a record must beat)."""
    for rule in rules(target):
        sch = rule(func, target)
        if sch is not None:
            return sch, "hand-written"
    return default(func, target), "default"
