"""GPU rule for the forward convolution, and the tile planner it shares with grad_input.

Both ops are the same correlation (convc.ops.common.correlate): an output in a data layout,
(n, o, *p) or (n, *p, o), reduced over (input channel of the group, *taps). The planner:

* register tile: up to 4 output channels per thread (each input value read from shared memory
  serves them all) when a group has that many, times up to 4 output pixels along the innermost
  pixel axis (each weight value serves them all); with one output channel per group (depthwise)
  the whole register tile goes to pixels;
* threads: first along the axis that is contiguous in memory (width for channels-first, channels
  for channels-last) so the write-back and the cooperative fetches coalesce, then the other;
* shared memory: one input-channel chunk with all taps per step (the input tile with its halo and
  the weight tile), the chunk shrunk until both fit the budget, then the outer tap axes staged one
  at a time;
* fewer threads per block when the grid would leave SMs idle (Budget.min_blocks, from
  TargetInfo.multiprocessors).

Not measured on a GPU: no GPU was available where these rules were written (see README "CUDA"),
so the tile sizes follow the usual register/shared-memory arithmetic, not measurements.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from convc.ops import OPERAND_STAGES, REDUCTION, spec_of
from convc.ops.common import acc_dtype
from convc.target import info

from .common import (Budget, Plan, Tile, assign_threads, block_by_name, chunk_of,
                     divisor_at_most, fit, tile_reduction)

CHANNEL_CHUNKS = (16, 8, 4, 2, 1)


def correlate_plans(extents, channel_axis: int, pixel_axes, reduce_extents, out_per_group: int,
                    budget: Budget, channels_last: bool):
    """Plans for a correlation block, most preferred first."""
    pixel_inner = pixel_axes[-1]  # innermost pixel axis (width)
    inner = [1] * len(extents)
    inner[channel_axis] = divisor_at_most(out_per_group, min(4, budget.accumulators))
    per_pixel = max(1, budget.accumulators // (2 * inner[channel_axis]))
    inner[pixel_inner] = divisor_at_most(extents[pixel_inner], min(4, per_pixel))
    if channels_last:
        order = [channel_axis, pixel_inner, *reversed(pixel_axes[:-1]), 0]
        caps = {channel_axis: 32, pixel_inner: 8}
    else:
        order = [pixel_inner, channel_axis, *reversed(pixel_axes[:-1]), 0]
        caps = {pixel_inner: 16, channel_axis: 16}

    tiles = None
    threads = budget.threads
    while True:
        counts = assign_threads(extents, inner, order, caps, threads)
        tiles = tuple(Tile(t, i) for t, i in zip(counts, inner))
        probe = Plan(tiles, (1,) * len(reduce_extents))
        if probe.blocks(extents) >= budget.min_blocks or threads <= 2 * budget.warp:
            break
        threads //= 2

    channels, *taps = reduce_extents
    for cap in CHANNEL_CHUNKS:
        rc = chunk_of(channels, cap)
        yield Plan(tiles, (rc, *taps))
    for staged in range(1, len(taps) + 1):  # outer tap axes one step at a time
        for cap in CHANNEL_CHUNKS[1:]:
            rc = chunk_of(channels, cap)
            yield Plan(tiles, (rc, *([1] * staged), *taps[staged:]))


def schedule_correlate(func, target, op: str):
    """Schedule a forward or grad_input PrimFunc (the `correlate` reduction block)."""
    spec, _ = spec_of(func)
    name = REDUCTION[op]
    extents = list(spec.output_shape if op == "forward" else spec.input_shape)
    ndim = spec.ndim
    channel_axis = ndim + 1 if spec.channels_last else 1
    pixel_axes = list(range(1, ndim + 1)) if spec.channels_last else list(range(2, ndim + 2))
    channels = spec.out_channels if op == "forward" else spec.in_channels
    reduce_extents = [(spec.in_channels if op == "forward" else spec.out_channels) // spec.groups,
                      *spec.kernel]
    budget = Budget.of(target, acc_dtype(spec.dtype))
    plans = correlate_plans(extents, channel_axis, pixel_axes, reduce_extents,
                            channels // spec.groups, budget, spec.channels_last)

    def make(plan: Plan):
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)
        nsp = len(extents)
        outer, inner = [], []
        for loop, chunk in zip(loops[nsp:], plan.chunk):
            o, i = sch.split(loop, [None, chunk])
            outer.append(o)
            inner.append(i)
        tiled = tile_reduction(sch, block, loops[:nsp], plan.spatial, outer, inner,
                               operand_stages=OPERAND_STAGES[op],
                               epilogue=block_by_name(sch, "output"))
        return sch, tiled

    return fit(make, plans, budget)


def rule(func, target):
    """forward on CUDA targets; None for anything else."""
    spec, op = spec_of(func)
    if op != "forward" or not info(target).is_gpu:
        return None
    return schedule_correlate(func, target, op)
