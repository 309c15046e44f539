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
* the outer loops fused and parallel.

Memory-bound: each element is read about once (k/s)^d times from cache and once from memory; the
figures for this machine are in the README's pooling section (`convc bench --pool`).
"""

from __future__ import annotations

from tvm import s_tir

from convc.ops.pool import REDUCTION, pool_spec_of
from convc.target import info

from .common import extent, find, finish_output, label, new_schedule, parallel_outer, pick_tile
from .direct import inner_loops, vectorize_tile

# Register tile: vectors x positions, at most this many accumulators.
MAX_ACCUMULATORS = 8


def pool_knobs(func, target) -> list[dict]:
    """The rule's alternatives for the tuner (convc.tuning.space): its own choice first, then
    other vector counts and tile widths."""
    spec, op = pool_spec_of(func)
    if spec is None:
        return []
    own = _choice(spec, op, target)
    grid = [own]
    for vectors in (1, 2, 4):
        for width in (1, 2, 4):
            knobs = {"vectors": vectors, "width": width}
            if knobs != own and vectors * width <= MAX_ACCUMULATORS:
                grid.append(knobs)
    return grid


def _choice(spec, op, target) -> dict:
    lanes = info(target).lanes(spec.dtype)
    if spec.channels_last:
        vectors = max(1, min(4, spec.channels // lanes))
        return {"vectors": vectors, "width": max(1, min(2, MAX_ACCUMULATORS // vectors))}
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
    _tile(sch, sch.get_sblock("pool"), spec, target, knobs, attach=("argmax", "indices"))


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


def _tile(sch: s_tir.Schedule, block, spec, target, knobs, attach=()) -> None:
    """Register tile, vector, parallel outer loops (see the module docstring). `attach`: blocks
    consuming the tile computed inside it, right after it (_inner_vectorized)."""
    lanes = info(target).lanes(spec.dtype)
    loops = sch.get_loops(block)
    nsp = spec.ndim + 2
    spatial, reduction = loops[:nsp], loops[nsp:]
    if spec.channels_last:
        n, *sp, c = spatial
        vector_axis, width_axis, outer_sp = c, sp[-1], sp[:-1]
    else:
        n, c, *sp = spatial
        vector_axis, width_axis, outer_sp = sp[-1], None, sp[:-1]
    size = extent(sch, vector_axis)
    vl = min(lanes, size)
    vectors = max(1, min(knobs["vectors"], size // vl))
    v_o, v_m, v_l = sch.split(vector_axis, [None, vectors, vl])
    if width_axis is not None:
        width = pick_tile(extent(sch, width_axis), max(1, knobs["width"]))
        w_o, w_i = sch.split(width_axis, [None, width])
        order = [n, *outer_sp, w_o, v_o, *reduction, w_i, v_m, v_l]
        tile_loop, parallel = v_o, [n, *outer_sp, w_o, v_o]
    else:
        order = [n, c, *outer_sp, v_o, *reduction, v_m, v_l]
        tile_loop, parallel = v_o, [n, c, *outer_sp, v_o]
        w_i = None
    sch.reorder(*order)
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, tile_loop, preserve_unit_loops=True)
    finish_output(sch, write_back)
    consumers = [sch.get_sblock(name) for name in attach]
    for consumer in consumers:
        sch.reverse_compute_at(consumer, tile_loop, preserve_unit_loops=True)
    parallel_outer(sch, parallel, target)
    for consumer in consumers:
        _inner_vectorized(sch, consumer, block)
    for loop in [*reduction, *([w_i] if w_i is not None else []), v_m]:
        if extent(sch, loop, 0) > 1:
            sch.unroll(loop)
    sch.vectorize(v_l)
    if reduction:
        init = sch.decompose_reduction(block, reduction[0])
        vectorize_tile(sch, inner_loops(sch, init, block))
    vectorize_tile(sch, inner_loops(sch, write_back, block))
