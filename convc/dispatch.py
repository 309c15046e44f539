"""Which schedule a convc function gets. The order is fixed, and this is the only place it lives:

    1. a tuning record for this workload on this target (tuning_logs/ or the user's log dir),
    2. the first hand-written rule for the target's kind that accepts the function,
    3. the default schedule (correct everywhere, fast nowhere).
"""

from __future__ import annotations

from convc.schedules import RULES
from convc.schedules.default import default

from .target import info, resolve


def choose(func, target):
    """-> (tvm.s_tir.Schedule, how) with how in "tuned" | "hand-written" | "default"."""
    target = resolve(target)
    kind = "cuda" if info(target).is_gpu else "cpu"
    for rule in RULES[kind]:
        sch = rule(func, target)
        if sch is not None:
            return sch, "hand-written"
    return default(func, target), "default"
