"""The fused forward epilogue: y = activation((conv + bias) * scale + shift + residual), in the
convolution's own write-back, against the NumPy reference (convc.reference.epilogue) over the
workload grid and against PyTorch (F.conv2d -> batch_norm -> add -> activation) when installed."""

import dataclasses

import numpy as np
import pytest

import convc
from conftest import assert_close, make_spec, torch_or_skip
from convc.check import kernel_inputs, operands, reference
from workloads import varied_params

ACTIVATIONS = [None, "relu", "relu6", ("leaky_relu", 0.2), "silu", "gelu", ("gelu", "tanh"),
               "hardswish", "sigmoid"]


def fused(spec, i):
    """`spec` with the i-th combination of the epilogue's parts (every activation in turn;
    scale/shift and residual on two in three)."""
    activation, slope = convc.spec.check_activation(ACTIVATIONS[i % len(ACTIVATIONS)])
    return dataclasses.replace(spec, scale_shift=i % 3 != 1, residual=i % 3 != 2,
                               activation=activation, negative_slope=slope)


def grid(dtype, layouts=("first", "last"), families=None):
    """The workload grid, each workload in one layout (the layouts taking turns)."""
    return varied_params(fused, dtype, layouts, families)


def check_forward(spec):
    data = operands(spec)
    kernel = convc.compile(spec, "forward")
    assert kernel.how == "hand-written", kernel.how
    assert_close(kernel(*kernel_inputs(spec, "forward", data)), reference(spec, "forward", **data),
                 spec.dtype, f"forward {spec.key}")
    return kernel


@pytest.mark.parametrize("spec", grid("float32"))
def test_float32_grid(spec):
    kernel = check_forward(spec)
    assert 'T.sblock("output")' not in kernel.tir  # folded into the write-back, no extra pass


@pytest.mark.parametrize("spec", grid("float64", ("first",), ("odd", "1d", "3d")))
def test_float64(spec):
    check_forward(spec)


@pytest.mark.parametrize("spec", grid("float16", ("first", "last"), ("resnet", "1d")))
def test_float16(spec):
    check_forward(spec)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations_against_pytorch(activation):
    torch = torch_or_skip()
    F = torch.nn.functional
    torch_act = {None: lambda v: v, "relu": F.relu, "relu6": F.relu6, "silu": F.silu,
                 "gelu": F.gelu, "hardswish": F.hardswish, "sigmoid": torch.sigmoid}
    if isinstance(activation, tuple):
        f = (lambda v: F.leaky_relu(v, 0.2)) if activation[0] == "leaky_relu" else \
            (lambda v: F.gelu(v, approximate="tanh"))
    else:
        f = torch_act[activation]
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 8, 9, 9), torch.randn(16, 4, 3, 3), torch.randn(16)
    scale, shift, residual = torch.rand(16) + 0.5, torch.randn(16), torch.randn(2, 16, 5, 5)
    expected = f(F.conv2d(x, w, b, stride=2, padding=1, groups=2) * scale[:, None, None]
                 + shift[:, None, None] + residual)
    got = convc.conv2d(x, w, b, 2, 1, 1, 2, scale=scale, shift=shift, residual=residual,
                       activation=activation)
    assert isinstance(got, torch.Tensor)
    assert_close(got, expected, "float32", str(activation))
    unbatched = convc.conv2d(x[0], w, b, 2, 1, 1, 2, scale=scale, shift=shift,
                             residual=residual[0], activation=activation)
    assert_close(unbatched, expected[0], "float32", f"{activation} unbatched")


def test_resnet_block_against_pytorch_eval():
    """conv -> BatchNorm2d (eval) -> + identity -> ReLU as one convc call, with the batch norm
    folded (fold_batch_norm) or passed as scale and shift; NHWC too."""
    torch = torch_or_skip()
    torch.manual_seed(2)
    conv, bn = torch.nn.Conv2d(16, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-1, 1)
    conv.eval(), bn.eval()
    x = torch.randn(2, 16, 10, 10)
    with torch.no_grad():
        expected = torch.relu(bn(conv(x)) + x)
        w, b = convc.fold_batch_norm(conv.weight, None, bn.running_mean, bn.running_var,
                                     bn.weight, bn.bias, bn.eps)
        got = convc.conv2d(x, w, b, padding=1, residual=x, activation="relu")
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        as_bn = convc.conv2d(x, conv.weight, padding=1, scale=scale, shift=shift, residual=x,
                             activation="relu")
        nhwc = convc.conv2d(x.permute(0, 2, 3, 1).contiguous(),
                            w.permute(2, 3, 1, 0).contiguous(), b, padding=1, layout="NHWC",
                            residual=x.permute(0, 2, 3, 1).contiguous(), activation="relu")
    assert_close(got, expected, "float32", "folded")
    assert_close(as_bn, expected, "float32", "scale/shift")
    assert_close(nhwc.permute(0, 3, 1, 2), expected, "float32", "NHWC")


X, W = np.zeros((1, 4, 6, 6), "f4"), np.zeros((8, 4, 3, 3), "f4")


@pytest.mark.parametrize("call,error,words", [
    (lambda: convc.conv2d(X, W, scale=np.ones(8, "f4")), ValueError, ["scale", "shift", "both"]),
    (lambda: convc.conv2d(X, W, scale=np.ones(7, "f4"), shift=np.ones(7, "f4")), ValueError,
     ["scale", "(7,)", "(8,)"]),
    (lambda: convc.conv2d(X, W, scale=np.ones(8), shift=np.ones(8)), TypeError, ["scale", "float64"]),
    (lambda: convc.conv2d(X, W, residual=np.ones((1, 8, 5, 4), "f4")), ValueError,
     ["residual", "(1, 8, 4, 4)"]),
    (lambda: convc.conv2d(X, W, activation="tanh"), ValueError, ["activation='tanh'", "relu"]),
    (lambda: convc.conv2d(X, W, activation=("leaky_relu", "x")), ValueError, ["activation"]),
    (lambda: convc.conv2d(X, W, activation=("gelu", "fast")), ValueError, ["activation"]),
])
def test_bad_epilogue_arguments(call, error, words):
    with pytest.raises(error) as err:
        call()
    for word in words:
        assert word in str(err.value), str(err.value)


def test_epilogues_never_share_a_kernel():
    base = make_spec((1, 4, 6, 6), (8, 4, 3, 3), 1, 1, bias=True)
    keys = {dataclasses.replace(base, activation=a, negative_slope=s).key
            for a, s in [(None, 0.01), ("relu", 0.01), ("leaky_relu", 0.01), ("leaky_relu", 0.2)]}
    keys |= {dataclasses.replace(base, scale_shift=True).key,
             dataclasses.replace(base, residual=True).key}
    assert len(keys) == 6
    spec = dataclasses.replace(base, activation="relu")
    assert convc.ConvSpec.from_json(spec.to_json()) == spec
