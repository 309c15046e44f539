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
(a fused or parallel loop is not partitioned). The channels-first rows are not split into
vectors by the schedule: the partitioned pieces are plain loops that LLVM vectorizes itself (a
hinted vector loop inside a partitioned one was left with a symbolic extent, which TVM's
vectorizer refuses); likewise channels-last channel counts that no vector divides.

Measured (AMD EPYC Zen 4, LLVM znver4, 2 threads, 2026-12-02, paired rounds against the zeros
mode in one process): MobileNetV2's 144-channel depthwise 3x3 56x56 grad_input NCHW, reflect /
replicate / circular, 12.5 / 1.6 / 6.0x the zeros kernel with the fold vectorized as one root
stage, 1.16-1.56 / 1.52 / 1.27-1.59x partitioned; the reduction over the padded domain alone is
0.95-1.31x there, so the fold is now a fraction of the rest. NHWC is 2.1-2.4x either way (the
reduction over the padded domain alone 1.43-1.59x; the fold, a pass over the padded gradient at
~45 GB/s, the rest): fusing it into the reduction's write-back is what is left (README
"Padding modes").
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
