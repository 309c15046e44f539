"""Lower and compile: (spec, op, Target) -> Artifact, through the on-disk cache.

    mod, how = schedule(spec, op, target)   # the scheduled IRModule and how it was chosen
    made = build(spec, op, target)          # compiled by the target's backend

One backend per code generator: llvm.py (CPUs) and cuda/ (NVIDIA GPUs, device code compiled
ahead of time by nvcc), both through cache.py; artifact.py holds what they make.
"""

from __future__ import annotations

import tvm

from ..dispatch import choose, resolve_algorithm
from ..ops import declare
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


__all__ = ["Artifact", "build", "schedule"]
