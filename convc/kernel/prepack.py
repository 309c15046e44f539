"""Prepacked weights: a filter transformed once for one Kernel and taken by later calls in the
weight's place (Kernel.prepack).

Winograd kernels transform their filter (U = G g G^T per channel pair: alpha^2 C K values) on every
call; on layers with few tiles that costs as much as the GEMM (ResNet c4/c5, VGG's 512-channel
14x14 layers). `kernel.prepack(w)` runs the "<op>_prepack" function once and returns a
PackedWeight; `kernel(x, packed)` runs "<op>_packed", which reads the transformed filter.

A PackedWeight is a snapshot of the weight's values when it was packed: writing into the array it
came from afterwards does not change it (pack again), and convc never keeps packs of its own, so a
changed weight is never served from a stale pack. It belongs to one kernel: another kernel refuses
it (ValueError).
"""

from __future__ import annotations

import numpy as np

from ..build import build_packed
from .arrays import aligned_allocator, safe


class PackedWeight:
    """The transformed filter of one Kernel (`array`, float32 for float16 kernels), made by
    Kernel.prepack; pass it where the kernel takes its weight."""

    def __init__(self, kernel, array: np.ndarray, packed_function):
        self.kernel, self.array, self._function = kernel, array, packed_function

    def __repr__(self) -> str:
        return f"<convc.PackedWeight {self.array.shape} for {self.kernel!r}>"

    def run(self, kernel, inputs, out=None):
        """kernel(*inputs) with this pack in the weight's place (inputs[1])."""
        if kernel is not self.kernel:
            raise ValueError(f"this PackedWeight was packed for {self.kernel!r}, not for "
                             f"{kernel!r}: pack the weight with that kernel's prepack()")
        names, shapes = kernel.arg_names[:-1], kernel.arg_shapes
        if len(inputs) != len(names):
            raise TypeError(f"{kernel.op} takes {len(names)} arrays ({', '.join(names)}), "
                            f"got {len(inputs)}")
        arrays = [safe(kernel._check(value, name, shape)) if i != 1 else self.array
                  for i, (value, name, shape) in enumerate(zip(inputs, names, shapes))]
        result = kernel._empty() if out is None else kernel._destination(out)
        target = result if result.flags.carray else kernel._empty()
        self._function(*arrays, target)
        if target is not result:
            result[...] = target
        return result


def pack(kernel, weight) -> PackedWeight:
    """Kernel.prepack: build (once per kernel) and run "<op>_prepack" on `weight`."""
    functions = getattr(kernel, "_packed_functions", None)
    if functions is None:
        prepack_made, packed_made, shape = build_packed(kernel.spec, kernel.op, kernel.target)
        functions = kernel._packed_functions = (prepack_made.module[f"{kernel.op}_prepack"],
                                                packed_made.module[f"{kernel.op}_packed"], shape)
    prepack_fn, packed_fn, shape = functions
    w = safe(kernel._check(weight, kernel.arg_names[1], kernel.arg_shapes[1]))
    dtype = np.float32 if kernel.dtype == np.float16 else kernel.dtype
    u = aligned_allocator(shape, np.dtype(dtype))()
    prepack_fn(w, u)
    return PackedWeight(kernel, u, packed_fn)
