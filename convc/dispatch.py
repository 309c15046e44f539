"""Which schedule a convc function gets. The order is fixed, and this is the only place it lives:

    1. a tuning record for this workload on this target (tuning_logs/ or the user's log dir),
    2. the first hand-written rule for the target's kind that accepts the function,
    3. the default schedule (correct everywhere, fast nowhere).

`target` is a resolved convc.target.Target (a tvm.target.Target, as the rules take it).
"""

from __future__ import annotations

from convc.schedules import RULES
from convc.schedules.default import default

from .target import info
from .records import find_record


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
