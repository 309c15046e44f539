"""Kernel packs kept by the convc.torch modules (convc.torch.packs): made on a weight version's
second use, used while the weight's version and storage are unchanged, and never served for a
changed weight (in-place update, .data assignment, load_state_dict, optimizer steps)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import convc  # noqa: E402
import convc.torch as ct  # noqa: E402
from convc.torch import ops as convc_ops  # noqa: E402
from convc.torch.packs import ATTRIBUTE  # noqa: E402

F = torch.nn.functional


def packs_of(module):
    cached = module.__dict__.get("_convc_packed")
    return None if cached is None else getattr(cached[1], ATTRIBUTE, None)


def made(module) -> list:
    packs = packs_of(module)
    return [] if packs is None else [p.kind for p in packs.packs.values() if p]


def conv_module(channels_last: bool):
    torch.manual_seed(0)
    module = ct.Conv2d(16, 32, 3, padding=1)  # direct NCHW forward: a "direct" pack
    x = torch.randn(2, 16, 9, 9)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return module, x


def expected(module, x):
    return F.conv2d(x, module.weight.detach(), module.bias.detach(), 1, 1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_packs_once_and_follows_every_change(channels_last):
    module, x = conv_module(channels_last)
    with torch.no_grad():
        first = module(x)
        assert made(module) == []                       # one use: no pack yet
        second = module(x)
        kinds = made(module)
        assert channels_last or kinds == ["direct"], kinds
        torch.testing.assert_close(first, expected(module, x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(second, first, rtol=0, atol=0)
        # in place (an optimizer's step bumps _version the same way)
        module.weight.mul_(-0.5)
        for _ in range(3):
            torch.testing.assert_close(module(x), expected(module, x), rtol=1e-4, atol=1e-4)
        # .data assignment: new storage, same Parameter object
        module.weight.data = torch.randn_like(module.weight)
        for _ in range(3):
            torch.testing.assert_close(module(x), expected(module, x), rtol=1e-4, atol=1e-4)
        # load_state_dict copies into the same storage
        state = {k: torch.randn_like(v) for k, v in module.state_dict().items()}
        module.load_state_dict(state)
        for _ in range(3):
            torch.testing.assert_close(module(x), expected(module, x), rtol=1e-4, atol=1e-4)


def test_a_stale_pack_is_refused_even_if_held():
    """A pack whose weight changed behind the module's back (the same tensor, written in place
    without the module seeing a call in between) is not used: the version is checked per call."""
    module, x = conv_module(False)
    with torch.no_grad():
        module(x), module(x)
        assert made(module) == ["direct"]
        carrier = module.__dict__["_convc_packed"][1]
        module.weight.add_(1.0)
        y = convc_ops.conv_impl(x, module.weight, carrier, module.bias, None, None, None, [1, 1],
                                [1, 1, 1, 1], [1, 1], 1, "zeros", "", 0.01)
        torch.testing.assert_close(y, expected(module, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_training_steps_match_torch(channels_last):
    """SGD steps (the weight updated in place every step): convc's module and torch's agree on
    outputs and gradients at every step, packs or not."""
    module, x = conv_module(channels_last)
    reference = torch.nn.Conv2d(16, 32, 3, padding=1)
    reference.load_state_dict(module.state_dict())
    x = x.requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    opt = torch.optim.SGD(module.parameters(), lr=0.01)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.01)
    for _ in range(3):
        for model, inp, o in ((module, x, opt), (reference, x_ref, opt_ref)):
            o.zero_grad()
            inp.grad = None
            model(inp).square().sum().backward()
        # float32 sums of ~10^3 products in another order: relative 1e-3 of gradients ~40
        torch.testing.assert_close(module.weight.grad, reference.weight.grad, rtol=2e-3, atol=5e-2)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=2e-3, atol=5e-2)
        # again on the same weight version (packed from its second use): the same gradients
        grad = module.weight.grad.clone()
        module.zero_grad()
        x.grad = None
        module(x).square().sum().backward()
        torch.testing.assert_close(module.weight.grad, grad, rtol=1e-5, atol=1e-5)
        opt.step()
        opt_ref.step()
    with torch.no_grad():
        torch.testing.assert_close(module(x), reference(x_ref), rtol=2e-3, atol=5e-2)


def test_grad_input_packs_on_reuse():
    """Two backward passes on one weight version: the second grad_input runs packed (a flipped
    "direct" pack) and gives the same dx."""
    torch.manual_seed(1)
    module = ct.Conv2d(16, 32, 3, padding=1)
    module.weight.requires_grad_(False)
    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    grads = []
    for _ in range(3):
        x.grad = None
        module(x).square().sum().backward()
        grads.append(x.grad.clone())
    assert sorted(made(module)) == ["direct", "direct"]  # forward's and grad_input's
    torch.testing.assert_close(grads[2], grads[0], rtol=0, atol=0)
