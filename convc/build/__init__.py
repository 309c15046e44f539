"""Lower and compile: (spec, op, Target) -> Artifact, through the on-disk cache.

    mod, how = schedule(spec, op, target)   # the scheduled IRModule and how it was chosen
    made = build(spec, op, target)          # compiled by the target's backend

One backend per code generator: llvm.py (CPUs) and cuda/ (NVIDIA GPUs, device code compiled
ahead of time by nvcc), both through cache.py; artifact.py holds what they make.
"""

from __future__ import annotations

import dataclasses

import tvm

from convc.schedules.default import default

from ..dispatch import choose, resolve_algorithm, untuned
from ..ops import declare, declare_packed, declare_weight_copy, packed_shape, spec_of
from ..ops.common import acc_dtype
from ..spec import ConvSpec
from . import cuda, llvm
from .artifact import Artifact
from .packing import split_weight_stage


def schedule(spec: ConvSpec, op: str, target, log_dir=None):
    """The scheduled IRModule of one kernel (function name = op) and how it was chosen."""
    func = declare(resolve_algorithm(spec, op, target, log_dir), op).with_attr("global_symbol", op)
    sch, how = choose(func, target, log_dir)
    (_, scheduled), = list(sch.mod.functions_items())
    return tvm.IRModule({op: scheduled.with_attr("global_symbol", op)}), how


def build(spec: ConvSpec, op: str, target) -> Artifact:
    """Compile `op` of `spec` for the resolved `target` (a convc.target.Target)."""
    if spec.batch == 0:  # nothing to compute: the Kernel fills its output without a library
        return Artifact(None, "empty", "")
    mod, how = schedule(spec, op, target)
    backend = cuda if target.is_gpu else llvm
    return backend.build(spec, op, target, mod, how)


@dataclasses.dataclass(frozen=True)
class PackedFunctions:
    """A kernel's prepacked form: scheduled "<op>_prepack" (w -> pack) and "<op>_packed" (the op
    with the pack in w's place) PrimFuncs, the pack's shape and dtype, and its kind:

        "winograd"  the transformed filter U (declared: convc.ops.winograd.prepack)
        "direct"    the direct schedule's own weight stage (blocked HWIO, flipped for grad_input),
                    split off the scheduled kernel (convc.build.packing)
        "copy"      the kernel reads w as given: the pack is a copy of w, the packed function
                    the kernel itself
    """

    kind: str
    prepack: object
    packed: object
    shape: tuple
    dtype: str


def packed_functions(spec: ConvSpec, op: str, target, func=None, log_dir=None) -> PackedFunctions:
    """The prepacked form of forward or grad_input of `spec` on the CPU `target`. `func`: the
    kernel's scheduled PrimFunc when the caller has it (an exported Kernel keeps its schedule),
    else it is scheduled here (tuning record > rule, as `schedule`). The algorithm is
    resolve_algorithm's with packed=True, so a layer whose unpacked kernel runs direct may pack
    Winograd's transformed filter instead (convc.dispatch.prefers_winograd: with the transform
    paid once, Winograd pays from fewer tiles); `func` then goes unused. ValueError for other
    ops and for GPU targets."""
    if target.is_gpu:
        raise ValueError("prepacked weights are implemented for CPU (LLVM) targets only")
    if op not in ("forward", "grad_input"):
        raise ValueError(f"op={op!r} takes no weight: prepacked weights are for forward and "
                         "grad_input")
    resolved = resolve_algorithm(spec, op, target, log_dir, packed=True)
    if resolved.algorithm == "winograd":
        made = []
        for declared in declare_packed(resolved, op):
            name = spec_of(declared)[1]
            sch, _ = untuned(declared.with_attr("global_symbol", name), target)
            (_, scheduled), = list(sch.mod.functions_items())
            made.append(scheduled.with_attr("global_symbol", name))
        return PackedFunctions("winograd", *made, packed_shape(resolved, op),
                               acc_dtype(spec.dtype))
    if func is None:
        func = schedule(spec, op, target, log_dir)[0][op]
    split = split_weight_stage(func, name=op)
    if split is not None:
        return PackedFunctions("direct", *split)
    copy = _only(default(declare_weight_copy(spec, op), target).mod)
    return PackedFunctions("copy", copy.with_attr("global_symbol", f"{op}_prepack"),
                           func.with_attr("global_symbol", f"{op}_packed"), spec.weight_shape,
                           spec.dtype)


def build_packed(spec: ConvSpec, op: str, target) -> tuple:
    """(PackedFunctions, the "<op>_prepack" Artifact, the "<op>_packed" Artifact) of `op` of
    `spec` on the CPU `target` (packed_functions; both Artifacts None for a "copy" pack, whose
    packed call is the kernel itself)."""
    functions = packed_functions(spec, op, target)
    if functions.kind == "copy":
        return functions, None, None
    made = [llvm.build(spec, f"{op}_{suffix}", target, tvm.IRModule({f"{op}_{suffix}": func}),
                       "hand-written" if functions.kind == "winograd" else "split")
            for suffix, func in (("prepack", functions.prepack), ("packed", functions.packed))]
    return (functions, *made)


def _only(mod):
    (_, func), = list(mod.functions_items())
    return func


__all__ = ["Artifact", "PackedFunctions", "build", "build_packed", "packed_functions", "schedule"]
