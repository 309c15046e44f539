"""The benchmark's second peer (convc/bench/topi_peer.py): TVM's own topi ops standing for convc's three
kernels must compute the same thing as the NumPy references, or the comparison means nothing.
Built unscheduled (the records only change the schedule, not the computation)."""

from __future__ import annotations

import pytest
import tvm

import convc
from convc.bench import topi_peer
from convc.check import operands, reference, relative_error
from convc.target import resolve

OPS = ("forward", "grad_input", "grad_weight")

# (input, weight, stride, padding, dilation, groups) and the ops topi has no formulation for
CASES = [
    ((1, 4, 9, 9), (6, 4, 3, 3), 1, 1, 1, 1, ()),
    ((2, 4, 11, 10), (6, 4, 3, 3), 2, 1, 1, 1, ()),          # output padding recovers the size
    ((2, 4, 11, 10), (6, 4, 3, 3), 3, 1, 1, 1, ()),
    ((1, 3, 23, 23), (8, 3, 7, 7), 2, 3, 1, 1, ()),          # stem-like
    ((1, 8, 12, 9), (8, 1, 3, 3), 1, 1, 1, 8, ("grad_weight",)),               # depthwise
    ((2, 4, 11, 10), (6, 2, 3, 3), 2, 1, 1, 2, ("grad_weight",)),              # groups
    ((1, 4, 10, 10), (6, 4, 3, 3), 1, 2, 2, 1, ("grad_input",)),               # dilation
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-s{c[2]}-d{c[4]}-g{c[5]}")
def test_topi_ops_match_the_references(case):
    xs, ws, s, p, d, g, missing = case
    spec = convc.ConvSpec.from_shapes(xs, ws, s, p, d, g)
    data, target = operands(spec), resolve(None)
    for op in OPS:
        func = topi_peer.declare(spec, op)
        assert (func is None) == (op in missing), op
        if func is None:
            continue
        library = tvm.compile(tvm.IRModule({"main": func}), target=target)
        run, out = topi_peer.call(spec, op, library, data)
        run()
        assert relative_error(out.numpy(), reference(spec, op, **data)) < 1e-5, op


def test_no_peer_outside_2d_nchw():
    nhwc = convc.ConvSpec.from_shapes((1, 9, 9, 4), (3, 3, 4, 6), 1, 1, layout="NHWC")
    conv1d = convc.ConvSpec.from_shapes((1, 4, 9), (6, 4, 3), 1, 1)
    assert all(topi_peer.declare(spec, op) is None for spec in (nhwc, conv1d) for op in OPS)
    assert topi_peer.best_module(nhwc, "forward") == (None, 0)
