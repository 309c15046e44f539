"""Padding modes (nn.ConvNd's padding_mode): forward and both adjoints against the NumPy
references (which pad with np.pad and fold the ring back with np.add.at, convc.reference), over
the workload grid, and against PyTorch's nn.ConvNd under autograd when it is installed."""

import dataclasses

import numpy as np
import pytest

import convc
from conftest import assert_close, check_spec, make_spec, operands, torch_or_skip
from convc.spec import ConvSpec
from workloads import spec_params

RING_MODES = ("reflect", "replicate", "circular")


def with_mode(spec: ConvSpec, mode: str) -> ConvSpec:
    """`spec` in `mode`, or in replicate where the padding is beyond what `mode` allows (reflect:
    padding < input size; circular: <= input size; replicate has no limit)."""
    try:
        return dataclasses.replace(spec, padding_mode=mode)
    except ValueError:
        return dataclasses.replace(spec, padding_mode="replicate")


def grid(dtype, layouts=("first", "last"), families=None, alternate=False):
    """The workload grid, the three ring modes taking turns, skipping workloads without padding
    (their padding mode changes nothing). alternate: each workload in one of the layouts, the
    layouts taking turns (half the kernels)."""
    params = []
    for i, param in enumerate(spec_params(dtype, layouts, families)):
        spec = param.values[0]
        workload, layout = divmod(i, len(layouts))
        if alternate and workload % len(layouts) != layout:
            continue
        if not any(spec.pad_before + spec.pad_after):
            continue
        spec = with_mode(spec, RING_MODES[workload % 3])
        params.append(pytest.param(spec, id=f"{param.id}-{spec.padding_mode}"))
    return params


def check_hand_written(spec):
    kernels = check_spec(spec)
    assert all(k.how == "hand-written" for k in kernels.values()), \
        {op: k.how for op, k in kernels.items()}


@pytest.mark.parametrize("spec", grid("float32", alternate=True))
def test_float32_grid(spec):
    check_hand_written(spec)


@pytest.mark.slow
@pytest.mark.parametrize("spec", grid("float32"))
def test_float32_grid_both_layouts(spec):
    check_hand_written(spec)


@pytest.mark.parametrize("spec", grid("float64", ("first",), ("odd", "asymmetric", "1d", "3d")))
def test_float64(spec):
    check_spec(spec)


@pytest.mark.parametrize("spec", grid("float16", ("first", "last"), ("resnet", "1d")))
def test_float16(spec):
    check_spec(spec)


@pytest.mark.parametrize("mode", RING_MODES)
def test_unbatched_functional_calls(mode):
    """Unbatched (C, *spatial) arrays through the functional API, both layouts."""
    spec = make_spec((1, 4, 9, 8), (6, 2, 3, 3), 2, ((2, 1), (0, 3)), 1, 2, padding_mode=mode)
    x, w, _, dy = operands(spec)
    args = dict(stride=2, padding=((2, 1), (0, 3)), groups=2, padding_mode=mode)
    assert_close(convc.conv2d(x[0], w, **args), convc.check.reference(spec, "forward", x, w)[0],
                 "float32", "forward")
    assert_close(convc.conv2d_grad_input(x.shape[1:], w, dy[0], **args),
                 convc.check.reference(spec, "grad_input", w=w, dy=dy)[0], "float32", "grad_input")
    assert_close(convc.conv2d_grad_weight(x[0], w.shape, dy[0], **args),
                 convc.check.reference(spec, "grad_weight", x=x, dy=dy), "float32", "grad_weight")


def test_modes_never_share_a_kernel():
    """The same shapes in two modes: different keys, kernels and functional results (the call
    memo keys on padding_mode too)."""
    x, w, _, _ = operands(make_spec((1, 3, 6, 6), (4, 3, 3, 3), 1, 1))
    results = {}
    for mode in ("zeros", *RING_MODES):
        spec = make_spec((1, 3, 6, 6), (4, 3, 3, 3), 1, 1, padding_mode=mode)
        assert (mode == "zeros") == ("reflect" not in spec.key and "circular" not in spec.key
                                     and "replicate" not in spec.key)
        for _ in range(2):  # the second call takes the memoized plan
            results[mode] = convc.conv2d(x, w, padding=1, padding_mode=mode)
        assert_close(results[mode], convc.check.reference(spec, "forward", x, w), "float32", mode)
    assert len({r.tobytes() for r in results.values()}) == 4


@pytest.mark.parametrize("call,words", [
    (lambda: convc.conv2d(np.zeros((1, 2, 4, 4), "f4"), np.zeros((3, 2, 3, 3), "f4"), padding=1,
                          padding_mode="mirror"), ["padding_mode='mirror'", "reflect"]),
    (lambda: convc.conv2d(np.zeros((1, 2, 3, 5), "f4"), np.zeros((3, 2, 3, 3), "f4"), padding=3,
                          padding_mode="reflect"), ["reflect", "padding < the input size"]),
    (lambda: convc.conv1d(np.zeros((1, 2, 3), "f4"), np.zeros((3, 2, 3), "f4"), padding=4,
                          padding_mode="circular"), ["circular", "<= the input size"]),
    (lambda: convc.conv2d_grad_input((1, 2, 2, 8), np.zeros((3, 2, 3, 3), "f4"),
                                     np.zeros((1, 3, 2, 8), "f4"), padding=((2, 2), (1, 1)),
                                     padding_mode="reflect"), ["reflect", "axis 0"]),
    (lambda: convc.ConvSpec.from_shapes((1, 2, 4, 4), (3, 2, 3, 3), padding=1,
                                        padding_mode=None), ["padding_mode=None"]),
])
def test_bad_padding_modes_are_refused(call, words):
    with pytest.raises(ValueError) as err:
        call()
    for word in words:
        assert word in str(err.value), str(err.value)


def test_padding_mode_is_keyword_only():
    x, w = np.zeros((1, 2, 4, 4), "f4"), np.zeros((3, 2, 3, 3), "f4")
    with pytest.raises(TypeError):
        convc.conv2d(x, w, None, 1, 1, 1, 1, "reflect")


@pytest.mark.parametrize("mode", RING_MODES)
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_against_pytorch_autograd(mode, ndim):
    """nn.ConvNd(padding_mode=mode) forward and backward (autograd) against convc's three ops,
    strided, grouped, dilated, float64 channels-first."""
    torch = torch_or_skip()
    torch.manual_seed(ndim)
    size, padding = [9, 8, 6][:ndim], [2, 1, 1][:ndim]
    conv = getattr(torch.nn, f"Conv{ndim}d")(4, 6, 3, stride=2, padding=tuple(padding),
                                              dilation=(2, 1, 1)[:ndim], groups=2,
                                              padding_mode=mode, dtype=torch.float64)
    x = torch.randn(2, 4, *size, dtype=torch.float64, requires_grad=True)
    y = conv(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    args = dict(stride=2, padding=tuple(padding), dilation=(2, 1, 1)[:ndim], groups=2,
                padding_mode=mode)
    w, b = conv.weight.detach(), conv.bias.detach()
    f = getattr(convc, f"conv{ndim}d")
    assert_close(f(x.detach(), w, b, **args), y.detach(), "float64", "forward")
    gi = getattr(convc, f"conv{ndim}d_grad_input")(tuple(x.shape), w, dy, **args)
    assert_close(gi, x.grad, "float64", "grad_input")
    gw = getattr(convc, f"conv{ndim}d_grad_weight")(x.detach(), tuple(w.shape), dy, **args)
    assert_close(gw, conv.weight.grad, "float64", "grad_weight")


def test_channels_last_float32_against_pytorch():
    """An NHWC float32 layer against nn.Conv2d(padding_mode="reflect")."""
    torch = torch_or_skip()
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect")
    x = torch.randn(2, 8, 10, 11, requires_grad=True)
    y = conv(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    hwio = conv.weight.detach().permute(2, 3, 1, 0).contiguous()
    nhwc = x.detach().permute(0, 2, 3, 1).contiguous()
    got = convc.conv2d(nhwc, hwio, conv.bias.detach(), padding=1, padding_mode="reflect",
                       layout="NHWC")
    assert_close(got.permute(0, 3, 1, 2), y.detach(), "float32", "forward")
    gi = convc.conv2d_grad_input(tuple(nhwc.shape), hwio, dy.permute(0, 2, 3, 1).contiguous(),
                                 padding=1, padding_mode="reflect", layout="NHWC")
    assert_close(gi.permute(0, 3, 1, 2), x.grad, "float32", "grad_input")


@pytest.mark.parametrize("mode", RING_MODES)
def test_patch_embedding_gather_with_a_ring(mode):
    """Large non-overlapping windows take grad_input's gather variant; with a ring padding it
    computes the padded input's gradient and the fold adds the ring back."""
    from convc.ops.grad_input import is_gather_grad_input, ring_unpadded

    spec = make_spec((2, 5, 37, 30), (7, 5, 7, 6), (9, 6), (2, 3), padding_mode=mode)
    assert is_gather_grad_input(ring_unpadded(spec))
    kernels = check_spec(spec, ops=("grad_input",))
    assert '"convc.schedule": "gather' in kernels["grad_input"].tir


@pytest.mark.parametrize("mode", RING_MODES)
@pytest.mark.parametrize("x_shape, w_shape, padding, layout", [
    ((2, 7, 21, 17), (3, 3, 17, 17), ((2, 1), (3, 2)), "NHWC"),  # no vector divides 17 channels
    ((1, 9, 6, 3), (3, 3, 3, 5), 2, "NHWC"),                     # fewer channels than a vector
    ((1, 5, 6, 64), (3, 3, 1, 64), 1, "NHWC"),                   # whole vectors, depthwise
    ((1, 4, 9, 37), (4, 1, 3, 3), ((1, 2), (3, 1)), "NCHW"),     # a row no vector divides
    ((1, 3, 4, 5, 19), (3, 3, 3, 3, 3), 2, "NCDHW"),
])
def test_fold_edges_and_partial_vectors(mode, x_shape, w_shape, padding, layout):
    """grad_input's fold (the ring added back, its edges partitioned off the interior copy) on
    channel counts and rows the vectors do not divide, padding up to the reflect limit, 2-D and
    3-D, both layouts; depthwise where the weight says so."""
    last = layout.endswith("C")
    channels, per_group = (x_shape[-1], w_shape[-2]) if last else (x_shape[1], w_shape[1])
    groups = channels // per_group
    spec = ConvSpec.from_shapes(x_shape, w_shape, padding=padding, groups=groups, layout=layout,
                                padding_mode=mode)
    check_spec(spec, ops=("grad_input",))
