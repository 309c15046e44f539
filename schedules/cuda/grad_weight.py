"""GPU rule for the gradient w.r.t. the weight, with split-K across blocks.

dW[o, c, r] = sum over (n, p) of x_pad[n, g(o)·Cg + c, r·d + p·s] · dy[n, o, p]  (convc.ops.grad_weight)

The result is small (the weight) and the reduction big (batch × output pixels), the opposite of
forward. The tiling (convc.schedules.cuda.common.tile_reduction) is the same:

* register tile: up to 4 output channels (each x value serves them all, when a group has that
  many) × up to 2 input channels (each dy value serves them all); with one channel per group
  (depthwise) the taps of the innermost kernel axis instead (each dy value serves them all);
* threads over (o, c, taps), the axis contiguous in the weight's layout first;
* shared memory per step: a run of `chunk` output pixels along the innermost axis of one image and
  one row: dy (o tile × chunk) and x (c tile × its receptive field);
* split-K: when the output tiles alone give fewer than Budget.min_blocks blocks, the outer reduction
  (n × outer pixels × chunks) is split over `split_k` blocks (rfactor). Each block reduces its
  part in registers and adds its tile into dW with atomicAdd, after a separate zero-fill kernel;
  no workspace is needed (the cuda_host library convc exports cannot allocate one). float16 keeps
  split_k = 1: its float32 accumulator is not the output, and a float16 atomic add would lose the
  float32 accumulation.

Not measured on a GPU (none was available where this was written): see README "CUDA".
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir

from convc.ops import OPERAND_STAGES, spec_of
from convc.ops.common import acc_dtype
from convc.target import info

from .common import (Budget, Plan, Tile, assign_threads, atomic_accumulate,
                     block_by_name, chunk_of, divisor_at_most, fit, tile_reduction)

PIXEL_CHUNKS = (32, 16, 8, 4, 2, 1)
# Each block of a split reduction keeps at least this many outer steps (shared-memory stages), so
# the atomic adds and the zero fill stay small next to the work.
MIN_STEPS_PER_SPLIT = 4


def weight_axes(spec):
    """(o axis, c axis, tap axes) positions in the weight layout."""
    ndim = spec.ndim
    if spec.channels_last:  # (*taps, c, o)
        return ndim + 1, ndim, list(range(ndim))
    return 0, 1, list(range(2, ndim + 2))  # (o, c, *taps)


def plans(spec, budget: Budget, splittable: bool):
    extents = list(spec.weight_shape)
    o_axis, c_axis, tap_axes = weight_axes(spec)
    kg, cg = spec.out_channels // spec.groups, spec.in_channels // spec.groups
    inner = [1] * len(extents)
    inner[o_axis] = divisor_at_most(kg, min(4, budget.accumulators))
    inner[c_axis] = divisor_at_most(cg, min(2, max(1, budget.accumulators // (2 * inner[o_axis]))))
    if inner[o_axis] * inner[c_axis] == 1:  # depthwise: reuse dy across the taps instead
        inner[tap_axes[-1]] = divisor_at_most(extents[tap_axes[-1]], 4)
    # One channel per group (depthwise): the output channels are the only wide axis.
    o_cap = 64 if cg == 1 else 32 if spec.channels_last else 16
    if spec.channels_last:
        order, caps = [o_axis, c_axis, *reversed(tap_axes)], {o_axis: o_cap, c_axis: 8}
    else:
        order = [tap_axes[-1], c_axis, o_axis, *reversed(tap_axes[:-1])]
        caps = {c_axis: 16, o_axis: o_cap}
    tiles = tuple(Tile(t, i) for t, i in
                  zip(assign_threads(extents, inner, order, caps, budget.threads), inner))
    blocks = Plan(tiles, ()).blocks(extents)
    *outer_pixels, last = spec.out_size
    for cap in PIXEL_CHUNKS:
        chunk = chunk_of(last, cap)
        steps = spec.batch * math.prod(outer_pixels) * -(-last // chunk)
        split = 1
        if splittable and blocks < budget.min_blocks:
            split = max(1, min(-(-budget.min_blocks // blocks), steps // MIN_STEPS_PER_SPLIT))
        yield Plan(tiles, (1, *([1] * len(outer_pixels)), chunk), split)


def schedule(func, target):
    spec, _ = spec_of(func)
    budget = Budget.of(target, acc_dtype(spec.dtype))
    splittable = acc_dtype(spec.dtype) == spec.dtype
    nsp = len(spec.weight_shape)

    def make(plan: Plan):
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        block = sch.get_sblock("dw")
        loops = sch.get_loops(block)
        outer, inner = [], []
        for loop, chunk in zip(loops[nsp:], plan.chunk):
            o, i = sch.split(loop, [None, chunk])
            outer.append(o)
            inner.append(i)
        sch.reorder(*outer, *inner)
        if plan.split_k == 1:
            tiled = tile_reduction(sch, block, loops[:nsp], plan.spatial, outer, inner,
                                   operand_stages=OPERAND_STAGES["grad_weight"], epilogue=block_by_name(sch, "output"))
            return sch, tiled
        steps = sch.fuse(*outer)
        split, _ = sch.split(steps, [plan.split_k, None])
        partial = sch.rfactor(split, 0)  # "dw_rf": the split index becomes a spatial axis
        loops = sch.get_loops(partial)  # rfactor made new loops: (*spatial, split, rest, *inner)
        tiled = tile_reduction(sch, partial, loops[:nsp + 1], (*plan.spatial, Tile()),
                               loops[nsp + 1:nsp + 2], loops[nsp + 2:], operand_stages=OPERAND_STAGES["grad_weight"])
        # The sum over the splits: per thread, right after its partial tile, atomically; the zero
        # fill hoisted out in front as its own kernel (decompose_reduction copies the bindings).
        final = sch.get_sblock("dw")
        sch.reverse_compute_at(final, tiled.thread_loop)
        sch.decompose_reduction(final, tiled.block_loop)
        sch.compute_inline(tiled.writeback)
        return atomic_accumulate(sch, "dw_update"), tiled

    return fit(make, plans(spec, budget, splittable), budget)


def rule(func, target):
    """grad_weight on CUDA targets; None for anything else."""
    spec, op = spec_of(func)
    if op != "grad_weight" or not info(target).is_gpu:
        return None
    return schedule(func, target)
