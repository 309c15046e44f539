"""Hostile input: every public entry raises ValueError/TypeError naming the parameter, before TVM
sees anything."""

import numpy as np
import pytest

import convc

f32 = np.float32


def z(*shape, dtype=f32):
    return np.zeros(shape, dtype)


X, W, DY = z(1, 4, 8, 8), z(6, 2, 3, 3), z(1, 6, 8, 8)

CASES = [
    # (call, exception, words the message must contain)
    (lambda: convc.conv2d(X, z(6, 3, 3, 3)), ValueError, ["weight_shape", "4 channels"]),
    (lambda: convc.conv2d(X, z(6, 2, 3, 3), groups=3), ValueError, ["groups"]),
    (lambda: convc.conv2d(X, z(5, 2, 3, 3), groups=2), ValueError, ["out_channels", "groups"]),
    (lambda: convc.conv2d(X, W, groups=0), ValueError, ["groups=0"]),
    (lambda: convc.conv2d(X, W, groups=2, stride=0), ValueError, ["stride=0", "positive"]),
    (lambda: convc.conv2d(X, W, groups=2, stride=(1, -2)), ValueError, ["stride"]),
    (lambda: convc.conv2d(X, W, groups=2, stride=(1, 2, 3)), ValueError, ["stride", "2 ints"]),
    (lambda: convc.conv2d(X, W, groups=2, stride=1.5), TypeError, ["stride=1.5"]),
    (lambda: convc.conv2d(X, W, groups=2, stride=True), TypeError, ["stride=True"]),
    (lambda: convc.conv2d(X, W, groups=2, dilation=0), ValueError, ["dilation=0"]),
    (lambda: convc.conv2d(X, W, groups=2, padding=-1), ValueError, ["padding=-1", "non-negative"]),
    (lambda: convc.conv2d(X, W, groups=2, padding=((1, -1), (0, 0))), ValueError, ["padding"]),
    (lambda: convc.conv2d(X, W, groups=2, padding="full"), ValueError, ["padding='full'"]),
    (lambda: convc.conv2d(X, W, groups=2, padding="same", stride=2), ValueError, ["same", "stride"]),
    (lambda: convc.conv2d(z(1, 4, 2, 2), W, groups=2), ValueError, ["kernel size", "padded input"]),
    (lambda: convc.conv2d(z(1, 4, 5, 5), W, groups=2, dilation=3), ValueError, ["dilation"]),
    (lambda: convc.conv2d(z(4, 8), W, groups=2), ValueError, ["input", "shape (4, 8)"]),
    (lambda: convc.conv2d(z(1, 1, 4, 8, 8), W, groups=2), ValueError, ["input", "4-D"]),
    (lambda: convc.conv2d(X, z(6, 2, 3), groups=2), ValueError, ["weight", "4-D"]),
    (lambda: convc.conv2d(X.astype(np.int32), W.astype(np.int32), groups=2), TypeError, ["input", "int32"]),
    (lambda: convc.conv2d(X, W.astype(np.float64), groups=2), TypeError, ["weight", "float64", "float32"]),
    (lambda: convc.conv2d(X, W, z(6, dtype=np.float64), groups=2), TypeError, ["bias", "float64"]),
    (lambda: convc.conv2d(X, W, z(5), groups=2), ValueError, ["bias", "(5,)", "(6,)"]),
    (lambda: convc.conv2d(X.astype(np.complex64), W, groups=2), TypeError, ["input", "complex64"]),
    (lambda: convc.conv2d([[1.0]], W, groups=2), TypeError, ["input", "list"]),
    (lambda: convc.conv2d("x", W, groups=2), TypeError, ["input"]),
    (lambda: convc.conv2d(X, W, groups=2, layout="NCW"), ValueError, ["layout='NCW'", "NCHW"]),
    (lambda: convc.conv1d(z(1, 4, 8), z(6, 2, 3), groups=2, layout="NHWC"), ValueError, ["layout"]),
    (lambda: convc.conv2d(X, W, groups=2, target="opencl"), ValueError, ["target='opencl'"]),
    (lambda: convc.conv2d(X, W, groups=2, target={"kind": "llvm", "mcpu": "z80"}), ValueError, ["z80"]),
    (lambda: convc.conv2d(X, W, groups=2, target=7), ValueError, ["target=7"]),
    # gradients
    (lambda: convc.conv2d_grad_input((1, 4, 8, 8), W, z(1, 6, 7, 8), padding=1, groups=2),
     ValueError, ["grad_output", "(1, 6, 7, 8)", "(1, 6, 8, 8)"]),
    (lambda: convc.conv2d_grad_input((1, 4, 8), W, DY, padding=1, groups=2), ValueError, ["input_size"]),
    (lambda: convc.conv2d_grad_input((1, 4, -8, 8), W, DY, padding=1, groups=2), ValueError, ["input_size", "negative"]),
    (lambda: convc.conv2d_grad_input((1, 4, 8.0, 8), W, DY, padding=1, groups=2), TypeError, ["input_size"]),
    (lambda: convc.conv2d_grad_input(X.shape, W, DY.astype(np.float16), padding=1, groups=2), TypeError, ["grad_output", "float16"]),
    (lambda: convc.conv2d_grad_input((1, 5, 8, 8), W, DY, padding=1, groups=2), ValueError, ["5 channels"]),
    (lambda: convc.conv2d_grad_input((4, 8, 8), W, DY, padding=1, groups=2), ValueError, ["grad_output", "rank"]),
    (lambda: convc.conv2d_grad_weight(X, (6, 2, 3, 3), z(1, 6, 8, 9), padding=1, groups=2), ValueError, ["grad_output"]),
    (lambda: convc.conv2d_grad_weight(X, (6, 4, 3, 3), DY, padding=1, groups=2), ValueError, ["weight_shape", "groups=2"]),
    (lambda: convc.conv2d_grad_weight(X, (6, 2, 3), DY, padding=1, groups=2), ValueError, ["weight_size"]),
    (lambda: convc.conv2d_grad_weight(X, "6,2,3,3", DY, padding=1, groups=2), TypeError, ["weight_size"]),
    (lambda: convc.conv2d_grad_weight(X, (6, 2, 3, 3), DY.astype(np.float64), padding=1, groups=2), TypeError, ["grad_output"]),
    # compile and kernels
    (lambda: convc.compile("conv2d", "forward"), TypeError, ["ConvSpec"]),
    (lambda: convc.compile(convc.ConvSpec.from_shapes((1, 4, 8, 8), (6, 2, 3, 3), groups=2), "backward"),
     ValueError, ["op='backward'"]),
    (lambda: convc.ConvSpec.from_shapes((1, 4, 8, 8), (6, 2, 3, 3), groups=2, dtype="int8"), TypeError, ["dtype='int8'"]),
    (lambda: convc.ConvSpec.from_shapes((1, 4), (6, 2, 3, 3)), ValueError, ["input_shape", "rank 2"]),
]


@pytest.mark.parametrize("call,error,words", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_input_is_refused_with_a_clear_message(call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_kernel_checks_its_arguments():
    spec = convc.ConvSpec.from_shapes((1, 4, 8, 8), (6, 2, 3, 3), padding=1, groups=2)
    kernel = convc.compile(spec, "forward")
    with pytest.raises(TypeError, match="takes 2 arrays"):
        kernel(X)
    with pytest.raises(ValueError, match=r"w has shape \(6, 2, 3, 2\)"):
        kernel(X, z(6, 2, 3, 2))
    with pytest.raises(TypeError, match="x has dtype float64"):
        kernel(X.astype(np.float64), W)
    with pytest.raises(ValueError, match="read-only"):
        out = z(*spec.output_shape)
        out.setflags(write=False)
        kernel(X, W, out=out)
