"""Hand-written GPU rules (CUDA targets): one per op, each declining anything else (pool.py:
every pooling kernel, one thread per output).

RULES["cuda"] in convc.schedules lists them; shared machinery (the tiling, the budget from the
target's limits, split-K) lives in common.py.
"""

from . import forward, grad_input, grad_weight, pool

RULES = [pool.rule, forward.rule, grad_input.rule, grad_weight.rule]
