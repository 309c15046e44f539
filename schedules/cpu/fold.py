"""grad_input of a ring padding: the "fold" stage, which adds the gradient of the ring (reflected,
replicated or wrapped input elements) back onto the input positions it copies.

The fold reads the padded gradient at the position itself and, near an edge, at the ring
positions that copy it (convc.ops.grad_input.ring_copies); each ring term is guarded by a test on
the spatial index. Every spatial loop carries a partition hint, so that TVM's LoopPartition cuts
off the few edge positions and the interior is a plain vectorized copy with no test left: left in
one vectorized loop (channels-first: the vector runs along the row, each lane its own test), the
tests made TVM scalarize the whole stage. The vector runs along the channels in channels-last
layouts (whose tests then hold for the whole vector) and along the innermost spatial axis in
channels-first ones (cut into vectors that divide the row where one does; the edge vectors split
off by the partition). Parallel over images and channel blocks only, never over a spatial loop
(a fused or parallel loop is not partitioned).
"""

from __future__ import annotations

from convc.ops import FOLD, spec_of
from convc.ops.common import acc_dtype
from convc.target import info

from .common import extent, find, partition_hint


def schedule_fold(sch, target) -> None:
    """Schedule the "fold" stage of `sch` where the declaration has one (see the module
    docstring)."""
    fold = find(sch, FOLD)
    if fold is None:
        return
    spec, _ = spec_of(sch.mod["main"])
    lanes = info(target).lanes(acc_dtype(spec.dtype))
    loops = sch.get_loops(fold)
    if spec.channels_last:
        n, *spatial, c = loops
        c_o, c_i, whole = _vector(sch, c, lanes)
        sch.reorder(n, c_o, *spatial, c_i)
        outer = sch.fuse(n, c_o)
        hinted = spatial
        vector = c_i if whole else None
    else:
        n, c, *spatial = loops
        outer = sch.fuse(n, c)
        hinted = spatial
        vector = None
    sch.parallel(outer)
    for loop in hinted:
        partition_hint(sch, loop)
    if vector is not None:
        sch.vectorize(vector)


def _vector(sch, loop, lanes: int):
    """Split `loop` into (outer, inner, inner is whole vectors?): vectors of the widest of lanes, lanes/2, lanes/4 that
    divides it (or the whole loop where it is shorter than `lanes`); where none divides, outer is
    a unit loop and inner the whole loop, left to LLVM to vectorize (a partitioned remainder
    inside the fused parallel loop left a vector loop of symbolic extent, which TVM refuses)."""
    size = extent(sch, loop)
    for width in (lanes, lanes // 2, lanes // 4):
        if width >= 4 and size % width == 0 and size > lanes:
            return (*sch.split(loop, [None, width]), True)
    return (*sch.split(loop, [1, size]), size <= lanes)
