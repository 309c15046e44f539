"""convc.fold_batch_norm (torch.nn.utils.fusion.fuse_conv_bn_weights' math) and
conv{1,2,3}d_grad_bias, against NumPy and, when installed, PyTorch."""

import numpy as np
import pytest

import convc
from conftest import assert_close, make_spec, operands, torch_or_skip
from convc.check import reference
from convc.reference import to_channels_first


def batch_norm(y, mean, var, gamma, beta, eps):
    """Inference batch norm of a channels-first (N, C, *sp) array, in float64."""
    shape = (1, -1) + (1,) * (y.ndim - 2)
    r = 1 / np.sqrt(var.astype(np.float64) + eps)
    return (y - mean.reshape(shape)) * (gamma * r).reshape(shape) + beta.reshape(shape)


def bn_params(channels, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, channels).astype(dtype), rng.uniform(0.1, 2, channels).astype(dtype),
            rng.uniform(0.5, 1.5, channels).astype(dtype), rng.uniform(-1, 1, channels).astype(dtype))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NCW", "NDHWC"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_folded_conv_equals_conv_then_batch_norm(layout, with_bias):
    """conv(x, W', b') == batch_norm(conv(x, W) + b) (float64, grouped and strided)."""
    ndim = {"NCW": 1, "NCHW": 2, "NHWC": 2, "NDHWC": 3}[layout]
    xs, ws = (2, 4, *[7, 6, 5][:ndim]), (6, 2, *[3, 2, 3][:ndim])
    if layout[-1] == "C":
        xs, ws = (xs[0], *xs[2:], xs[1]), (*ws[2:], ws[1], ws[0])
    spec = make_spec(xs, ws, 2, 1, 1, 2, layout=layout, dtype="float64", bias=True)
    x, w, b, _ = operands(spec)
    mean, var, gamma, beta = bn_params(6, "float64")
    w2, b2 = convc.fold_batch_norm(w, b if with_bias else None, mean, var, gamma, beta, 1e-3,
                                   layout=layout)
    got = reference(spec, "forward", x, w2, b2)
    plain = reference(spec, "forward", x, w, b if with_bias else np.zeros(6))
    expected = batch_norm(to_channels_first(plain) if layout[-1] == "C" else plain,
                          mean, var, gamma, beta, 1e-3)
    assert_close(to_channels_first(got) if layout[-1] == "C" else got, expected, "float64", "fold")
    # through convc's own kernel, with the folded bias
    conv = getattr(convc, f"conv{ndim}d")
    assert_close(conv(x, w2, b2, 2, 1, 1, 2, layout=layout), got, "float64", "convc forward")


def test_transposed_weights_scale_their_second_axis():
    w = np.random.default_rng(1).uniform(-1, 1, (4, 6, 3, 3))  # (in, out, k, k)
    mean, var, gamma, beta = bn_params(6, "float64")
    w2, b2 = convc.fold_batch_norm(w, None, mean, var, gamma, beta, transposed=True)
    scale = gamma / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(w2, w * scale[None, :, None, None])
    np.testing.assert_allclose(b2, -mean * scale + beta)
    hwio = np.transpose(w, (2, 3, 1, 0))  # (*k, out, in): the channels-last counterpart
    w3, _ = convc.fold_batch_norm(hwio, None, mean, var, gamma, beta, layout="NHWC",
                                  transposed=True)
    np.testing.assert_allclose(w3, np.transpose(w2, (2, 3, 1, 0)))


@pytest.mark.parametrize("transposed", [False, True])
def test_against_torch_fuse_conv_bn_weights(transposed):
    torch = torch_or_skip()
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    b = torch.randn(8 if not transposed else 4)
    channels = 4 if transposed else 8
    mean, var = torch.randn(channels), torch.rand(channels) + 0.5
    gamma, beta = torch.randn(channels), torch.randn(channels)
    expected_w, expected_b = fuse_conv_bn_weights(w, b, mean, var, 1e-5, gamma, beta,
                                                  transpose=transposed)
    got_w, got_b = convc.fold_batch_norm(w, b, mean, var, gamma, beta, 1e-5, transposed=transposed)
    assert isinstance(got_w, torch.Tensor) and isinstance(got_b, torch.Tensor)
    assert_close(got_w, expected_w.detach(), "float32", "weight")
    assert_close(got_b, expected_b.detach(), "float32", "bias")


def test_against_torch_fuse_conv_bn_eval():
    """nn.Conv2d + nn.BatchNorm2d in eval mode == torch's fused conv == convc with folded
    weights."""
    torch = torch_or_skip()
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(1)
    conv, bn = torch.nn.Conv2d(6, 8, 3, padding=1, groups=2), torch.nn.BatchNorm2d(8)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(-1, 1)
    bn.bias.data.uniform_(-1, 1)
    conv.eval(), bn.eval()
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        expected = bn(conv(x))
        fused = fuse_conv_bn_eval(conv, bn)(x)
        w, b = convc.fold_batch_norm(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                     bn.weight, bn.bias, bn.eps)
        got = convc.conv2d(x, w, b, padding=1, groups=2)
    assert_close(got, expected, "float32", "convc folded")
    assert_close(fused, expected, "float32", "torch fused")


@pytest.mark.parametrize("call,error,words", [
    (lambda: convc.fold_batch_norm(np.zeros((4, 2, 3, 3)), None, np.zeros(3), np.ones(4),
                                   np.ones(4), np.zeros(4)), ValueError, ["running_mean", "(3,)", "(4,)"]),
    (lambda: convc.fold_batch_norm(np.zeros((4, 2, 3, 3)), None, np.zeros(4), np.ones(4),
                                   np.ones(4), np.zeros(4), layout="NHWC"), ValueError, ["expected (3,)", "axis 3"]),
    (lambda: convc.fold_batch_norm(np.zeros((4, 2, 3, 3)), None, np.zeros(4), None,
                                   np.ones(4), np.zeros(4)), TypeError, ["running_var"]),
    (lambda: convc.fold_batch_norm(np.zeros((4, 2, 3, 3)), None, np.zeros(4, "f4"), np.ones(4),
                                   np.ones(4), np.zeros(4)), TypeError, ["running_mean", "float32"]),
    (lambda: convc.fold_batch_norm(np.zeros((4, 2, 3, 3)), None, np.zeros(4), np.ones(4),
                                   np.ones(4), np.zeros(4), eps=-1), ValueError, ["eps=-1"]),
    (lambda: convc.fold_batch_norm(np.zeros((4, 2)), None, np.zeros(4), np.ones(4),
                                   np.ones(4), np.zeros(4)), ValueError, ["weight", "(4, 2)"]),
    (lambda: convc.fold_batch_norm(np.zeros((4, 2, 3)), None, np.zeros(4), np.ones(4),
                                   np.ones(4), np.zeros(4), layout="NHWC"), ValueError, ["layout='NHWC'"]),
    (lambda: convc.conv2d_grad_bias(np.zeros((3, 4))), ValueError, ["grad_output", "(3, 4)"]),
    (lambda: convc.conv2d_grad_bias(np.zeros((2, 3, 4, 4), "i4")), TypeError, ["grad_output", "int32"]),
    (lambda: convc.conv2d_grad_bias(np.zeros((2, 3, 4, 4)), layout="NCW"), ValueError, ["layout"]),
])
def test_bad_arguments(call, error, words):
    with pytest.raises(error) as err:
        call()
    for word in words:
        assert word in str(err.value), str(err.value)


@pytest.mark.parametrize("layout,shape", [("NCW", (2, 5, 7)), ("NWC", (2, 7, 5)),
                                          ("NCHW", (3, 5, 4, 6)), ("NHWC", (3, 4, 6, 5)),
                                          ("NCDHW", (1, 5, 3, 4, 2)), ("NDHWC", (2, 3, 4, 2, 5))])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_grad_bias(layout, shape, dtype):
    """The sum of grad_output over batch and space, per channel; unbatched too."""
    dy = np.random.default_rng(0).uniform(-1, 1, shape).astype(dtype)
    ndim = len(shape) - 2
    f = getattr(convc, f"conv{ndim}d_grad_bias")
    cf = to_channels_first(dy) if layout[-1] == "C" else dy
    expected = cf.astype(np.float64).sum(axis=(0, *range(2, cf.ndim)))
    assert_close(f(dy, layout=layout), expected, dtype, "grad_bias")
    assert f(dy, layout=layout).dtype == dtype
    assert_close(f(dy[0], layout=layout), cf[0].astype(np.float64).sum(
        axis=tuple(range(1, cf.ndim - 1))), dtype, "unbatched")


def test_grad_bias_against_pytorch_autograd():
    torch = torch_or_skip()
    conv = torch.nn.Conv3d(3, 4, 2)
    x = torch.randn(2, 3, 5, 4, 4)
    y = conv(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    got = convc.conv3d_grad_bias(dy)
    assert isinstance(got, torch.Tensor)
    assert_close(got, conv.bias.grad, "float32", "grad_bias")
    nhwc = convc.conv3d_grad_bias(dy.permute(0, 2, 3, 4, 1).contiguous(), layout="NDHWC")
    assert_close(nhwc, conv.bias.grad, "float32", "grad_bias NDHWC")
