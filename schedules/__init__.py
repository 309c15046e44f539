"""Hand-written schedules, installed as `convc.schedules`.

A rule is `rule(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> tvm.s_tir.Schedule | None`;
None means "not mine". convc.dispatch tries RULES[kind] in order after any tuning record and
before the default schedule.
"""

from .cpu import RULES as CPU_RULES
from .cuda import RULES as CUDA_RULES

RULES = {
    "cpu": CPU_RULES,
    "cuda": CUDA_RULES,
}
