"""grad_input of a ring padding: the "fold" stage, which adds the gradient of the ring (reflected,
replicated or wrapped input elements) back onto the input positions it copies.

The fold reads the padded gradient at the position itself and, near an edge, at the ring
positions that copy it (convc.ops.grad_input.ring_copies); each ring term is guarded by a test on
the spatial index. Every spatial loop carries a partition hint, so that TVM's LoopPartition cuts
off the few edge positions and the interior is a plain copy with no test left. Channels-last: the
vector runs along the channels (a test then holds for the whole vector), in the widest of 1, 1/2,
1/4 vector that divides them. Channels-first: the schedule vectorizes nothing; the partitioned
pieces of each row are plain loops that LLVM vectorizes itself (vectorized by TVM across a row,
each lane carried its own test and TVM scalarized the whole stage; a vector loop under a
partitioned one was left with a symbolic extent, which TVM's vectorizer refuses). The same for
channel counts no vector divides. Parallel over images and channel blocks only, never over a
spatial loop (a fused loop is not partitioned).

Measured (AMD EPYC Zen 4, LLVM znver4, 2 threads, 2026-12-02, paired rounds against the zeros
mode in one process): MobileNetV2's 144-channel depthwise 3x3 56x56 grad_input NCHW, reflect /
replicate / circular, 12.5 / 1.6 / 6.0x the zeros kernel with the fold vectorized as one root
stage, 1.16-1.56 / 1.52 / 1.27-1.59x partitioned; the reduction over the padded domain alone is
0.95-1.31x there, so the fold is now a fraction of the rest. NHWC is 2.1-2.4x either way (the
reduction over the padded domain alone 1.43-1.59x; the rest is the fold, a memory-bound pass
over the padded gradient): fusing it into the reduction's write-back is what is left (README
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
    """Split `loop` into (outer, inner, vectorize inner?): vectors of the widest of lanes,
    lanes/2, lanes/4 that divides it, or the whole loop as one vector where it is no longer than
    `lanes`; where none divides, a unit outer loop and the whole loop inside, left to LLVM (a
    partitioned remainder under the fused parallel loop has a symbolic extent, which TVM's
    vectorizer refuses)."""
    size = extent(sch, loop)
    for width in (lanes, lanes // 2, lanes // 4):
        if width >= 4 and size % width == 0 and size > lanes:
            return (*sch.split(loop, [None, width]), True)
    return (*sch.split(loop, [1, size]), size <= lanes)
