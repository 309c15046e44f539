"""The adjoints through an activation: grad_input and grad_weight multiply dy by the activation's
derivative (taken from the forward's pre-activation or output) in the same kernel, against the
NumPy reference (convc.reference.activation_derivative) over the workload grid and against PyTorch
autograd of conv -> activation when installed."""

import dataclasses

import numpy as np
import pytest

import convc
from conftest import assert_close, make_spec, torch_or_skip
from convc.check import kernel_inputs, operands, reference
from convc.ops import SAVED
from convc.spec import FROM_OUTPUT, check_activation
from workloads import varied_params

ACTIVATIONS = ["relu", "relu6", ("leaky_relu", 0.2), "silu", "gelu", ("gelu", "tanh"),
               "hardswish", "sigmoid"]
OPS = ("grad_input", "grad_weight")


def through(spec, i):
    """`spec` through the i-th activation, its derivative from the output where that serves
    (every other time), else from the pre-activation."""
    activation, slope = check_activation(ACTIVATIONS[i % len(ACTIVATIONS)])
    source = "output" if activation in FROM_OUTPUT and (i // len(ACTIVATIONS)) % 2 == 0 \
        else "pre_activation"
    return dataclasses.replace(spec, activation=activation, negative_slope=slope,
                               derivative_from=source)


def grid(dtype, layouts=("first", "last"), families=None):
    """The workload grid, each workload in one layout (the layouts taking turns)."""
    return varied_params(through, dtype, layouts, families)


def check_adjoints(spec):
    data = operands(spec)
    for op in OPS:
        kernel = convc.compile(spec, op)
        assert kernel.how == "hand-written", f"{op}: {kernel.how}"
        assert kernel.arg_names[1 if op == "grad_input" else 2] == SAVED[spec.derivative_from]
        assert_close(kernel(*kernel_inputs(spec, op, data)), reference(spec, op, **data),
                     spec.dtype, f"{op} {spec.key}")


@pytest.mark.parametrize("spec", grid("float32"))
def test_float32_grid(spec):
    check_adjoints(spec)


@pytest.mark.parametrize("spec", grid("float64", ("first",), ("odd", "1d", "3d")))
def test_float64(spec):
    check_adjoints(spec)


@pytest.mark.parametrize("spec", grid("float16", ("first", "last"), ("resnet",)))
def test_float16(spec):
    check_adjoints(spec)


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_with_padding_modes(mode):
    """The prologue on dy and the fold of the ring on dx in one grad_input."""
    for i, layout in enumerate(("NCHW", "NHWC")):
        base = make_spec((2, 5, 9, 8), (6, 5, 3, 3), 2, 1) if layout == "NCHW" else \
            make_spec((2, 9, 8, 5), (3, 3, 5, 6), 2, 1, layout="NHWC")
        check_adjoints(through(dataclasses.replace(base, padding_mode=mode), 3 + i))


def test_reference_derivative_is_the_slope():
    """activation_derivative against central differences of the reference activations, away from
    the kinks: the reference itself is right."""
    from convc import reference as ref

    z = np.linspace(-5, 7, 241)
    z = z[np.min(np.abs(z[:, None] - np.array([-3, 0, 3, 6])[None]), axis=1) > 1e-3]
    h = 1e-6
    for activation in ACTIVATIONS:
        name, slope = check_activation(activation)
        numeric = (ref.activation(z + h, name, slope) - ref.activation(z - h, name, slope)) / (2 * h)
        np.testing.assert_allclose(ref.activation_derivative(z, name, slope), numeric,
                                   atol=1e-6, err_msg=name)
        if name in FROM_OUTPUT:
            np.testing.assert_allclose(
                ref.activation_derivative(ref.activation(z, name, slope), name, slope, True),
                numeric, atol=1e-6, err_msg=f"{name} from its output")


def torch_activation(torch, activation):
    F = torch.nn.functional
    if isinstance(activation, tuple):
        return (lambda v: F.leaky_relu(v, activation[1])) if activation[0] == "leaky_relu" else \
            (lambda v: F.gelu(v, approximate="tanh"))
    return {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "gelu": F.gelu,
            "hardswish": F.hardswish, "sigmoid": torch.sigmoid}[activation]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_against_pytorch_autograd(activation):
    """x.grad and w.grad of activation(conv2d(x, w)) under torch autograd, against convc's
    adjoints given grad_output = dL/dy and the pre-activation, the output (where it serves), with
    zeros or replicate padding, unbatched; convc's own fused forward supplies the saved output."""
    torch = torch_or_skip()
    F, act = torch.nn.functional, torch_activation(torch, activation)
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 9, 9) * 2).requires_grad_()
    w = torch.randn(16, 4, 3, 3).requires_grad_()
    args = (2, 1, 1, 2)  # stride, padding, dilation, groups
    # zeros and a ring mode take turns over the activations (each pair of kernels compiles once)
    for mode in (("zeros",) if ACTIVATIONS.index(activation) % 2 else ("replicate",)):
        xp = x if mode == "zeros" else F.pad(x, (1, 1, 1, 1), mode=mode)
        z = F.conv2d(xp, w, None, 2, 0 if mode != "zeros" else 1, 1, 2)
        y = act(z)
        dy = torch.randn_like(y)
        dx, dw = torch.autograd.grad(y, (x, w), dy)
        z, y = z.detach(), y.detach()
        name = check_activation(activation)[0]
        saved = [{"pre_activation": z}] + ([{"activation_output": y}] if name in FROM_OUTPUT
                                           else [])
        for given in saved:
            what = f"{activation} {mode} {next(iter(given))}"
            kw = dict(padding_mode=mode, activation=activation, **given)
            got_dx = convc.conv2d_grad_input(x.shape, w.detach(), dy, *args, **kw)
            got_dw = convc.conv2d_grad_weight(x.detach(), w.shape, dy, *args, **kw)
            assert isinstance(got_dx, torch.Tensor)
            assert_close(got_dx, dx, "float32", f"grad_input {what}")
            assert_close(got_dw, dw, "float32", f"grad_weight {what}")
            kw = {k: v[0] for k, v in given.items()}
            unbatched = convc.conv2d_grad_input(x.shape[1:], w.detach(), dy[0], *args,
                                                padding_mode=mode, activation=activation, **kw)
            assert_close(unbatched, dx[0], "float32", f"grad_input unbatched {what}")
    if name in FROM_OUTPUT:  # the training step's own forward saves y
        y_convc = convc.conv2d(x.detach(), w.detach(), None, *args, activation=activation)
        z = F.conv2d(x, w, None, *args)
        dy = torch.randn_like(z)
        dx, = torch.autograd.grad(act(z), x, dy)
        assert_close(convc.conv2d_grad_input(x.shape, w.detach(), dy, *args, activation=activation,
                                             activation_output=y_convc), dx, "float32",
                     f"{activation} after convc's forward")


def test_kernels_differ_by_source_and_round_trip():
    base = make_spec((1, 4, 6, 6), (8, 4, 3, 3), 1, 1)
    specs = [dataclasses.replace(base, activation="relu", derivative_from=f)
             for f in ("pre_activation", "output")] + [base]
    assert len({s.key for s in specs}) == 3
    assert all(convc.ConvSpec.from_json(s.to_json()) == s for s in specs)
    assert convc.compile(specs[1], "grad_weight").arg_names == ("x", "dy", "activation_output", "dw")


X, W = np.zeros((1, 4, 6, 6), "f4"), np.zeros((8, 4, 3, 3), "f4")
DY, Z = np.zeros((1, 8, 4, 4), "f4"), np.zeros((1, 8, 4, 4), "f4")


@pytest.mark.parametrize("call,error,words", [
    (lambda: convc.conv2d_grad_input(X.shape, W, DY, activation="relu"), ValueError,
     ["activation='relu'", "pre_activation=", "activation_output=", "neither"]),
    (lambda: convc.conv2d_grad_weight(X, W.shape, DY, activation="relu", pre_activation=Z,
                                      activation_output=Z), ValueError, ["both"]),
    (lambda: convc.conv2d_grad_input(X.shape, W, DY, pre_activation=Z), ValueError,
     ["pre_activation", "activation=None"]),
    (lambda: convc.conv2d_grad_input(X.shape, W, DY, activation="silu", activation_output=Z),
     ValueError, ["'silu'", "pre-activation"]),
    (lambda: convc.conv2d_grad_weight(X, W.shape, DY, activation=("leaky_relu", -0.5),
                                      activation_output=Z), ValueError, ["negative_slope=-0.5"]),
    (lambda: convc.conv2d_grad_input(X.shape, W, DY, activation="relu",
                                     pre_activation=np.zeros((1, 8, 4, 5), "f4")), ValueError,
     ["pre_activation", "(1, 8, 4, 5)", "(1, 8, 4, 4)"]),
    (lambda: convc.conv2d_grad_weight(X, W.shape, DY, activation="relu", pre_activation=Z[0]),
     ValueError, ["pre_activation", "(8, 4, 4)"]),
    (lambda: convc.conv2d_grad_input(X.shape, W, DY, activation="relu",
                                     activation_output=Z.astype("f8")), TypeError,
     ["activation_output", "float64"]),
    (lambda: convc.conv2d_grad_input(X.shape, W, DY, activation="tanh", pre_activation=Z),
     ValueError, ["activation='tanh'"]),
])
def test_bad_prologue_arguments(call, error, words):
    with pytest.raises(error) as err:
        call()
    for word in words:
        assert word in str(err.value), str(err.value)


def test_declarations_refuse_what_they_cannot_compute():
    base = make_spec((1, 4, 6, 6), (8, 4, 3, 3), 1, 1)
    with pytest.raises(ValueError, match="derivative_from"):
        convc.compile(dataclasses.replace(base, activation="relu"), "grad_input")
    with pytest.raises(ValueError, match="fold_batch_norm"):
        convc.compile(dataclasses.replace(base, activation="relu", derivative_from="output",
                                          scale_shift=True), "grad_weight")
    with pytest.raises(ValueError, match="needs an activation"):
        dataclasses.replace(base, derivative_from="output")
