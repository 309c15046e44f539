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
    """grad_input on CUDA targets; None for anything else. A ring padding (a padding mode other
    than zeros) is refused: its "fold" stage reads the gradient of the padded input, a buffer the
    size of the padded input that the kernel would have to allocate, and the cuda_host libraries
    convc builds cannot allocate device workspace (the CPU rules take it)."""
    spec, op = spec_of(func)
    if op != "grad_input" or not info(target).is_gpu:
        return None
    if spec.ring_padded:
        raise ValueError(
            f"grad_input with padding_mode={spec.padding_mode!r} is not supported on CUDA targets: "
            "folding the padding ring back needs a workspace the size of the padded input, which "
            "convc's CUDA libraries cannot allocate; compile it for a CPU target, or use "
            "padding_mode='zeros'")
    if is_gather_grad_input(spec):
        return None
    return schedule_correlate(func, target, op)
