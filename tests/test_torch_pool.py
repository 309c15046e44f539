"""Pooling in convc.torch: the custom ops (opcheck), their gradient math (gradcheck and
gradgradcheck in float64: max, avg with count_include_pad both ways, ceil_mode and
divisor_override, adaptive; 1-D to 3-D; both memory formats), the drop-in modules against
torch.nn's (every argument, unbatched, channels_last, return_indices), convert (what it replaces
and what it leaves), torch.compile and torch.export of a converted model with pools, inputs that
need no gradient. Skipped without torch.

Shapes are small and shared between tests (each distinct shape compiles its kernels once, ~0.3 s
each). Max pooling's gradients are checked on random normal inputs: distinct values, so finite
differences never move a window's maximum. Tolerances as in tests/test_torch.py.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import convc.torch as ct  # noqa: E402
from convc.torch import layout  # noqa: E402
from convc.torch import pool_ops as P  # noqa: E402
from test_torch import check_exported  # noqa: E402

TOL = {"atol": 1e-4, "rtol": 1e-4}
CL = {2: torch.channels_last, 3: torch.channels_last_3d}


def _close(a, b, **tol):
    torch.testing.assert_close(a, b, **(tol or TOL))


def _x(shape, seed=0, dtype=torch.float32, last=False, grad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    if last:
        x = _channels_last(x)
    return x.requires_grad_(grad)


def _channels_last(x):
    """x stored (N, *spatial, C) (1-D: a transposed NWC tensor, as convc.torch.layout reads it)."""
    if x.dim() == 3:
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    return x.contiguous(memory_format=CL[x.dim() - 2])


# Per rank: max pool arguments (kernel, stride, padding, dilation, ceil_mode) and an input shape.
MAX = {1: ([3], [2], [1], [2], True), 2: ([3, 2], [2, 1], [1, 1], [1, 2], True),
       3: ([2, 3, 2], [2, 1, 2], [1, 1, 0], [1, 1, 1], False)}
AVG = {1: ([3], [2], [1], True, False, None), 2: ([3, 2], [2, 1], [1, 1], True, True, None),
       3: ([2, 3, 2], [2, 1, 2], [1, 1, 0], False, False, 5)}
SHAPES = {1: (2, 3, 9), 2: (2, 3, 7, 6), 3: (1, 2, 5, 6, 4)}
SMALL = {1: (1, 2, 9), 2: (1, 2, 7, 6), 3: (1, 2, 5, 4, 4)}   # for finite differences
ADAPTIVE = {1: [4], 2: [3, 4], 3: [2, 4, 3]}


# --- opcheck ---------------------------------------------------------------------------------------

def _opcheck_cases():
    x = _x(SHAPES[2])
    xl = _x(SHAPES[2], last=True)
    y, indices = P.max_pool_with_indices(x.detach(), *MAX[2])
    dy = _x(y.shape, 1)
    a = P.avg_pool(x.detach(), *AVG[2])
    da = _x(a.shape, 2)
    g = P.adaptive_avg_pool(x.detach(), ADAPTIVE[2])
    dg = _x(g.shape, 3)
    size = list(x.shape)
    return {
        "max_pool": (P.max_pool, (x, *MAX[2])),
        "max_pool channels_last": (P.max_pool, (xl, *MAX[2])),
        "max_pool_with_indices": (P.max_pool_with_indices, (x, *MAX[2])),
        "max_pool_grad_input": (P.max_pool_grad_input, (x, dy, *MAX[2])),
        "max_pool_grad_input_indices": (P.max_pool_grad_input_indices,
                                        (dy, indices, size, *MAX[2])),
        "max_pool_gather": (P.max_pool_gather, (x, indices, *MAX[2])),
        "avg_pool": (P.avg_pool, (x, *AVG[2])),
        "avg_pool channels_last divisor": (P.avg_pool, (xl, [3, 2], [2, 1], [1, 1], True, True,
                                                        3)),
        "avg_pool_grad_input": (P.avg_pool_grad_input, (da, size, *AVG[2])),
        "adaptive_avg_pool": (P.adaptive_avg_pool, (x, ADAPTIVE[2])),
        "adaptive_avg_pool_grad_input": (P.adaptive_avg_pool_grad_input, (dg, size)),
    }


def test_every_pool_op_has_an_opcheck_case():
    names = {case.split()[0] for case in _opcheck_cases()}
    assert names == set(ct.POOL_OPS)


@pytest.mark.parametrize("case", list(_opcheck_cases()))
def test_pool_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


# --- gradient math -------------------------------------------------------------------------------

@pytest.mark.parametrize("last", [False, True], ids=["first", "last"])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_pool_gradcheck_and_gradgradcheck(ndim, last):
    """Each pooling's gradient and the gradient of that gradient (the ops' own autograd: max
    pooling's gather, the averages each other's adjoint) against finite differences."""
    x = _x(SMALL[ndim], ndim, torch.float64, last)
    cases = [
        lambda x: P.max_pool(x, *MAX[ndim]),
        lambda x: P.avg_pool(x, *AVG[ndim]),
        lambda x: P.adaptive_avg_pool(x, ADAPTIVE[ndim]),
    ]
    if ndim == 2:   # from saved indices; the other count_include_pad and a divisor_override
        cases.append(lambda x: P.max_pool_with_indices(x, *MAX[ndim])[0])
        cases.append(lambda x: P.avg_pool(x, [3, 2], [2, 1], [1, 1], True, False, 3))
    for f in cases:
        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))


def test_max_pool_gradients_of_the_gradients_from_indices():
    """The adjoint pair max_pool_grad_input_indices <-> max_pool_gather, through autograd."""
    x = _x(SMALL[2], 5, torch.float64)
    _, indices = P.max_pool_with_indices(x.detach(), *MAX[2])
    dy = _x(indices.shape, 6, torch.float64)
    size = list(x.shape)
    assert torch.autograd.gradgradcheck(
        lambda dy: P.max_pool_grad_input_indices(dy, indices, size, *MAX[2]), (dy,))
    assert torch.autograd.gradgradcheck(lambda x: P.max_pool_gather(x, indices, *MAX[2]), (x,))
    assert torch.autograd.gradgradcheck(lambda x, dy: P.max_pool_grad_input(x, dy, *MAX[2]),
                                        (x, dy))


# --- modules -------------------------------------------------------------------------------------

MODULES = [
    ("MaxPool1d", dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)),
    ("MaxPool2d", dict(kernel_size=(3, 2), stride=(2, 1), padding=1, return_indices=True)),
    ("MaxPool3d", dict(kernel_size=2, ceil_mode=True)),
    ("AvgPool1d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=4)),
    ("AvgPool3d", dict(kernel_size=(2, 3, 2), padding=(1, 1, 0), count_include_pad=True)),
    ("AdaptiveAvgPool1d", dict(output_size=4)),
    ("AdaptiveAvgPool2d", dict(output_size=(None, 4))),
    ("AdaptiveAvgPool3d", dict(output_size=(2, 4, 3))),
]


@pytest.mark.parametrize("name, kwargs", MODULES, ids=[m for m, _ in MODULES])
def test_module_matches_torch(name, kwargs):
    """Outputs (and indices), input gradients, repr and state_dict as torch's, in both memory
    formats (the output stored as the input was) and unbatched."""
    ndim = int(name[-2])
    ours, theirs = getattr(ct, name)(**kwargs), getattr(nn, name)(**kwargs)
    assert isinstance(ours, type(theirs)) and repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for last in (False, True):
        x = _x(SHAPES[ndim], ndim, last=last)
        xe = x.detach().clone().requires_grad_()
        got, want = ours(x), theirs(xe)
        if kwargs.get("return_indices"):
            assert torch.equal(got[1], want[1]) and got[1].stride() == want[1].stride()
            got, want = got[0], want[0]
        _close(got, want)
        assert layout.is_channels_last(got) == last
        dy = torch.randn_like(want)
        got.backward(dy)
        want.backward(dy)
        _close(x.grad, xe.grad)
    unbatched = _x(SHAPES[ndim][1:], 9, grad=False)
    got, want = ours(unbatched), theirs(unbatched)
    _close(got[0] if isinstance(got, tuple) else got, want[0] if isinstance(want, tuple) else want)


def test_channels_last_runs_on_the_inputs_memory():
    x = _x((2, 16, 9, 8), last=True, grad=False)
    y = ct.MaxPool2d(3, 2, 1)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    a = ct.AvgPool2d(3, 1, 1)(x)
    assert a.is_contiguous(memory_format=torch.channels_last)
    _close(a, F.avg_pool2d(x, 3, 1, 1))


def test_inputs_needing_no_gradient_run_no_gradient_kernel():
    """Data straight into a pool records nothing; no_grad records nothing; a frozen conv before a
    pool still gets the pool's input gradient only if something before needs it."""
    ct.CALLS.clear()
    pool = ct.MaxPool2d(2)
    x = _x((2, 3, 8, 8), grad=False)
    assert not pool(x).requires_grad
    with torch.no_grad():
        pool(x.requires_grad_())
    assert ct.CALLS["max_pool"] == 2 and ct.CALLS["max_pool_grad_input"] == 0
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.AvgPool2d(2), nn.Flatten())
    ct.convert(model)
    model[0].requires_grad_(False)                          # frozen: nothing needs a gradient
    model(x.detach()).sum()
    assert ct.CALLS["avg_pool_grad_input"] == 0
    model[0].bias.requires_grad_(True)
    model(x.detach()).sum().backward()
    assert ct.CALLS["avg_pool_grad_input"] == 1 and ct.CALLS["max_pool_grad_input"] == 1
    assert ct.CALLS["conv_grad_input"] == 0 and ct.CALLS["conv_grad_weight"] == 0


def test_pool_off_cpu_dtypes_fall_back_to_torch():
    x = torch.randint(0, 9, (1, 2, 6, 6)).to(torch.bfloat16)
    ct.CALLS.clear()
    _close(ct.MaxPool2d(2)(x), F.max_pool2d(x, 2))
    assert ct.CALLS["max_pool"] == 0


# --- convert, torch.compile, torch.export --------------------------------------------------------

def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))


def test_convert_replaces_pools_keeps_outputs_and_leaves_what_convc_cannot_take():
    net = _net()
    net.append(nn.Unflatten(1, (1, 5, 1)))
    net.append(nn.AdaptiveAvgPool2d((0, 1)))     # an empty output: torch's, not convc's
    x = torch.randn(2, 3, 11, 10)
    expected = net(x)
    report = ct.convert(net)
    kinds = [type(m) for m in net]
    assert kinds[2] is ct.MaxPool2d and kinds[5] is ct.AvgPool2d and kinds[6] is ct.AdaptiveAvgPool2d
    assert type(net[10]) is nn.AdaptiveAvgPool2d
    (name, kind, reason), = report.left
    assert (name, kind) == ("10", "AdaptiveAvgPool2d") and "output_size" in reason
    _close(net(x), expected)
    with pytest.raises(ValueError, match="output_size"):
        ct.AdaptiveAvgPool2d((0, 1))(x)


def test_torch_compile_and_export_of_a_converted_model_with_pools():
    """fullgraph compile and export trace the pool ops as nodes; outputs and gradients are
    eager's (and PyTorch's own layers')."""
    reference = _net()
    model = copy.deepcopy(reference)
    ct.convert(model)
    x = torch.randn(2, 3, 11, 10)
    results = []
    for m in (reference, model, torch.compile(model, fullgraph=True)):
        xx = x.clone().requires_grad_()
        m.zero_grad()
        y = m(xx)
        y.square().sum().backward()
        owner = reference if m is reference else model
        results.append((y, xx.grad, owner[0].weight.grad, owner[3].weight.grad))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            _close(b, a)
    program = torch.export.export(model, (x,))
    code = program.graph_module.code
    for op in ("max_pool", "avg_pool", "adaptive_avg_pool"):
        assert f"torch.ops.convc.{op}.default" in code
    check_exported(program, model, x)
