"""Hand-written CPU (LLVM) schedules for forward, grad_input and grad_weight.

Each rule has the signature `rule(func, target, knobs=None) -> tvm.s_tir.Schedule | None` and
declines (None) for functions that are not its op. `rule.knobs(func, target)` lists alternatives to
the choices the rule makes by itself (tile widths, vectors, blocking), its own choice first: the
grid convc.tuning.space hands MetaSchedule to measure. The rules cover every spec convc declares
(ranks 1-3, both layout families, stride, dilation, asymmetric padding, groups, depthwise,
float16/32/64, bias); a schedule primitive that refuses an unforeseen shape makes the rule
decline, so dispatch falls back to the default schedule instead of failing.

    direct.py       forward and grad_input: register-blocked direct convolution (1x1 as GEMM)
    winograd.py     forward and grad_input declared by Winograd: transforms and a batched GEMM
    grad_weight.py  grad_weight: output-stationary register tile, reduction over batch and space
    pool.py         every pooling kernel (convc.ops.pool): vectors along channels or width
    common.py       tile choice, parallel outer loops, the local accumulator
"""

from __future__ import annotations

import functools
import warnings

from .direct import direct_knobs, schedule_direct
from .grad_weight import grad_weight_knobs, schedule_grad_weight
from .winograd import schedule_winograd, winograd_knobs
from .pool import pool_knobs, schedule_pool


def declining(rule, grid):
    """Turn an error inside `rule` into "not mine" (None), with a warning naming it: a shape the
    rule did not foresee then gets the default schedule instead of failing the compile. The tests
    assert that every case they cover is hand-written, so a declining rule does not go unseen.
    `grid` (the rule's alternatives to its own choices) rides along as `wrapper.knobs`."""

    @functools.wraps(rule)
    def wrapper(func, target, knobs=None):
        try:
            return rule(func, target, knobs)
        except Exception as err:  # noqa: BLE001 - TVM's ScheduleError, ValueError, TVMError
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(f"convc: CPU rule {rule.__name__} declined: {first}", RuntimeWarning,
                          stacklevel=2)
            return None

    wrapper.knobs = grid
    return wrapper


direct_rule = declining(schedule_direct, direct_knobs)
grad_weight_rule = declining(schedule_grad_weight, grad_weight_knobs)
winograd_rule = declining(schedule_winograd, winograd_knobs)
pool_rule = declining(schedule_pool, pool_knobs)

# In dispatch order; each declines what is not its op (pooling first: the conv rules never see
# a pooling function, whose spec they could not read; direct declines Winograd declarations).
RULES = [pool_rule, winograd_rule, direct_rule, grad_weight_rule]
