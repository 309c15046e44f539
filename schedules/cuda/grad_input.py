"""GPU rule for the gradient w.r.t. the input.

grad_input is declared as the same correlation as forward, on transformed operands (dy dilated by
the stride and padded, the filter flipped with its channels swapped per group; see
convc.ops.grad_input). Its schedule is forward's (convc.schedules.cuda.forward): the transforms
("dy_dilated", "w_flipped") are computed inside the cooperative fetch into shared memory, so
neither transformed operand ever exists in global memory.

Large non-overlapping windows (ViT's 16x16/16 patch embedding) are declared as a gather instead
(convc.ops.grad_input.gather_grad_input); this rule leaves them to the default GPU schedule (one
thread per dx element; correct, not tuned).

Known cost: with stride s > 1 the dilated dy holds (s^d - 1)/s^d zeros, and this schedule
multiplies them like any other value (a sub-pixel decomposition would skip them; not done).
"""

from __future__ import annotations

from convc.ops import spec_of
from convc.ops.grad_input import is_gather_grad_input
from convc.target import info

from .forward import schedule_correlate


def rule(func, target):
    """grad_input on CUDA targets; None for anything else."""
    spec, op = spec_of(func)
    if op != "grad_input" or not info(target).is_gpu or is_gather_grad_input(spec):
        return None
    return schedule_correlate(func, target, op)
