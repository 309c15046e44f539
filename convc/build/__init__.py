"""Lower and compile: (spec, op, Target) -> Artifact, through the on-disk cache.

    mod, how = schedule(spec, op, target)   # the scheduled IRModule and how it was chosen
    made = build(spec, op, target)          # compiled by the target's backend

One backend per code generator: llvm.py (CPUs) and cuda/ (NVIDIA GPUs, device code compiled
ahead of time by nvcc), both through cache.py; artifact.py holds what they make.
"""

from __future__ import annotations

import tvm

from ..dispatch import choose, resolve_algorithm, untuned
from ..ops import declare, declare_packed, packed_shape, spec_of
from ..spec import ConvSpec
from . import cuda, llvm
from .artifact import Artifact


def schedule(spec: ConvSpec, op: str, target, log_dir=None):
    """The scheduled IRModule of one kernel (function name = op) and how it was chosen."""
    func = declare(resolve_algorithm(spec, op, target), op).with_attr("global_symbol", op)
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


def build_packed(spec: ConvSpec, op: str, target) -> tuple:
    """(the "<op>_prepack" Artifact: w -> u, the "<op>_packed" Artifact: op with u in w's place,
    u's shape)
    for `op` of `spec` on the CPU `target`, where its algorithm resolves to Winograd (ValueError
    elsewhere: the direct schedules' weight layouts are not prepacked). Hand-written schedules
    (no tuning records exist for these functions)."""
    if target.is_gpu:
        raise ValueError("prepacked weights are implemented for CPU (LLVM) targets only")
    made, resolved = [], resolve_algorithm(spec, op, target)
    for func in declare_packed(resolved, op):
        name = spec_of(func)[1]
        sch, how = untuned(func.with_attr("global_symbol", name), target)
        (_, scheduled), = list(sch.mod.functions_items())
        mod = tvm.IRModule({name: scheduled.with_attr("global_symbol", name)})
        made.append(llvm.build(spec, name, target, mod, how))
    return (*made, packed_shape(resolved, op))


__all__ = ["Artifact", "build", "build_packed", "schedule"]
