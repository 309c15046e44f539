"""Prepacked weights: a weight transformed once for one Kernel and taken by later calls in the
weight's place (Kernel.prepack).

Kernels that transform their weight on every call do it in a stage the pack runs once
(convc.build.packed_functions says which, as PackedWeight.kind):

* "winograd": Winograd kernels transform their filter (U = G g G^T per channel pair: alpha^2 C K
  values); on layers with few tiles that costs as much as the GEMM (ResNet c4/c5, VGG's
  512-channel 14x14 layers);
* "direct": the direct schedules' weight stage, split off the scheduled kernel
  (convc.build.packing): channels-first forward repacks OIHW into blocks of HWIO, grad_input
  flips the filter and swaps its channels into the same blocks (ResNet c5: 9.4 MB per call);
* "copy": kernels that read the weight as given (channels-last forward, 1x1 channels-first
  grad_input): the pack is an aligned copy and the packed call the kernel itself, so that
  `kernel.prepack(w)` works for every forward and grad_input kernel on CPUs.

The packed form chooses its algorithm itself (convc.dispatch.resolve_algorithm with packed=True):
with the filter transform paid once, a channels-last layer whose plain kernel runs direct may
pack Winograd's filter (its packed results then agree with the plain call within Winograd's
error bound, convc.ops.winograd.ERROR_BOUND).

`kernel.prepack(w)` builds "<op>_prepack" and "<op>_packed" once per kernel, runs the first and
returns a PackedWeight; `kernel(x, packed)` runs the second. A PackedWeight is a snapshot of the
weight's values when it was packed: writing into the array it came from afterwards does not change
it (pack again), and convc never keeps packs of its own, so a changed weight is never served from
a stale pack. It belongs to one kernel: another kernel refuses it (ValueError). grad_weight takes
no weight and CUDA kernels have no packs: their prepack raises ValueError.
"""

from __future__ import annotations

import numpy as np

from ..build import build_packed
from .arrays import aligned_allocator, safe


class PackedWeight:
    """The packed weight of one Kernel (`array`: its layout is the kernel's, `kind` says which:
    "winograd", "direct" or "copy"), made by Kernel.prepack; pass it where the kernel takes its
    weight. `function` is the raw "<op>_packed" (no checks: the op's arrays with `array` in the
    weight's place, destination last)."""

    def __init__(self, kernel, array: np.ndarray, packed_function, kind: str):
        self.kernel, self.array, self.function, self.kind = kernel, array, packed_function, kind

    def __repr__(self) -> str:
        return f"<convc.PackedWeight {self.kind} {self.array.shape} for {self.kernel!r}>"

    def run(self, kernel, inputs, out=None):
        """kernel(*inputs) with this pack in the weight's place (inputs[weight_index])."""
        if kernel is not self.kernel:
            raise ValueError(f"this PackedWeight was packed for {self.kernel!r}, not for "
                             f"{kernel!r}: pack the weight with that kernel's prepack()")
        names, shapes = kernel.arg_names[:-1], kernel.arg_shapes
        if len(inputs) != len(names):
            raise TypeError(f"{kernel.op} takes {len(names)} arrays ({', '.join(names)}), "
                            f"got {len(inputs)}")
        at = weight_index(kernel)
        arrays = [safe(kernel._check(value, name, shape)) if i != at else self.array
                  for i, (value, name, shape) in enumerate(zip(inputs, names, shapes))]
        result = kernel._empty() if out is None else kernel._destination(out)
        target = result if result.flags.carray else kernel._empty()
        self.function(*arrays, target)
        if target is not result:
            result[...] = target
        return result


def weight_index(kernel) -> int:
    """Where the weight goes among the kernel's arguments (after dy and a saved tensor)."""
    return kernel.arg_names.index("w")


def pack(kernel, weight) -> PackedWeight:
    """Kernel.prepack: build (once per kernel) and run "<op>_prepack" on `weight`."""
    if kernel.target.is_gpu or kernel.op not in ("forward", "grad_input") or \
            "w" not in kernel.arg_names:
        raise ValueError(f"{kernel!r} has no prepacked form: prepacked weights are for forward "
                         "and grad_input kernels of a convolution on CPU (LLVM) targets")
    functions = getattr(kernel, "_packed_functions", None)
    if functions is None:
        made, prepack_made, packed_made = build_packed(kernel.spec, kernel.op, kernel.target)
        if made.kind == "copy":
            functions = (None, kernel.function, made)
        else:
            functions = (prepack_made.module[f"{kernel.op}_prepack"],
                         packed_made.module[f"{kernel.op}_packed"], made)
        kernel._packed_functions = functions
    prepack_fn, packed_fn, made = functions
    w = safe(kernel._check(weight, "w", kernel.arg_shapes[weight_index(kernel)]))
    u = aligned_allocator(made.shape, np.dtype(made.dtype))()
    if prepack_fn is None:
        u[...] = w
    else:
        prepack_fn(w, u)
    return PackedWeight(kernel, u, packed_fn, made.kind)
