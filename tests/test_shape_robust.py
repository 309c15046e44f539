"""Shapes nobody here chose: a sample of the torchvision model-zoo corpus (convc/bench/zoo.json),
and random channel counts, groups and depthwise layers over every vectorized path of the CPU
rules. Each kernel must be hand-written (never the default schedule), vectorized, match the NumPy
reference, and give the same answer five calls in a row with the threads convc runs (2 on CI):
the races found earlier came from tiles whose write-back over-covers, and only show some runs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convc
from conftest import assert_close, make_spec
from convc.bench import zoo
from convc.check import kernel_inputs, operands, reference

OPS = ("forward", "grad_input", "grad_weight")
REPEATS = 5


def check_robust(spec, ops=OPS):
    """Every op of `spec`: hand-written and vectorized, right, and stable over REPEATS calls."""
    data = operands(spec)
    for op in ops:
        kernel = convc.compile(spec, op)
        what = f"{op} {spec.key}"
        assert kernel.how == "hand-written", f"{what}: got the {kernel.how} schedule"
        assert "T.vectorized" in kernel.tir, f"{what}: not vectorized"
        args = kernel_inputs(spec, op, data)
        first = kernel(*args)
        assert_close(first, reference(spec, op, **data), spec.dtype, what)
        for _ in range(REPEATS - 1):
            again = kernel(*args)
            assert np.array_equal(again, first), f"{what}: results differ between calls (a race)"


def _awkwardness(layer) -> tuple:
    """Ranks a zoo layer by how far it is from the suite's layers: channel counts off the vector
    width, few channels per group, depthwise, non-square kernels, strides, small images."""
    score = ((layer.c % 16 != 0) + (layer.k % 16 != 0) + 2 * (1 < layer.groups < layer.c)
             + (layer.groups == layer.c > 1) + 2 * (len(set(layer.kernel)) > 1)
             + (layer.stride != (1, 1)) + (layer.h <= 7) - (layer.c <= 3))
    return score, -(layer.c + layer.k)  # ties: the cheaper layer


def zoo_sample(per_model: int = 1):
    """The `per_model` most awkward distinct layers of each model, each at most once overall."""
    layers, models = zoo.load()
    chosen = []
    for model in models:
        own = [z.layer for z in layers if dict(z.models).get(model) and z.layer not in chosen]
        chosen += sorted(own, key=_awkwardness, reverse=True)[:per_model]
    return chosen


def shrink(layer, batch: int = 2):
    """The layer with batch 2 and a spatial size cut to a few output positions per axis (all
    channels, kernel, stride, padding, dilation and groups kept)."""
    import dataclasses

    sizes = []
    for size, k, s, p, d in zip((layer.h, layer.w), layer.kernel, layer.stride, layer.padding,
                                layer.dilation):
        span = d * (k - 1) + 1
        sizes.append(min(size, max(span - 2 * p, 1) + 3 * s + 2))
    return dataclasses.replace(layer, n=batch, h=sizes[0], w=sizes[1])


SAMPLE = zoo_sample()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("layer", SAMPLE, ids=[zoo.ZooLayer(lay, ()).name for lay in SAMPLE])
def test_zoo_sample(layer, layout):
    check_robust(shrink(layer).spec(layout))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("layer", [lay for lay in zoo_sample(3) if lay not in SAMPLE],
                         ids=lambda lay: zoo.ZooLayer(lay, ()).name)
def test_zoo_sample_more(layer, layout):
    check_robust(shrink(layer).spec(layout))


# Every vectorized path: dense (vectors across the channels, a partial last tile where they do not
# divide), grouped (whole, half or quarter vectors per group; across the channels where none
# divides), depthwise (channels-last: vectors of channels; channels-first: along the width),
# 1x1 (GEMM tiles), strided (grad_input's phased variants), 1-D and 3-D.
KINDS = ("dense", "grouped", "depthwise")


@st.composite
def layers(draw):
    kind = draw(st.sampled_from(KINDS))
    ndim = draw(st.sampled_from((1, 2, 2, 2, 3)))
    if kind == "depthwise":
        channels = draw(st.integers(1, 67))
        groups, out_channels = channels, channels
    elif kind == "grouped":
        groups = draw(st.integers(2, 8))
        channels = groups * draw(st.integers(1, 16))
        out_channels = groups * draw(st.integers(2, 16))
    else:
        groups, channels, out_channels = 1, draw(st.integers(1, 67)), draw(st.integers(1, 67))
    kernel = draw(st.sampled_from((1, 3) if ndim < 3 else (1, 2, 3)))
    stride = draw(st.sampled_from((1, 1, 2)))
    padding = kernel // 2
    size = draw(st.integers(kernel + stride, 12 if ndim < 3 else 6))
    layout = draw(st.sampled_from(("first", "last")))
    spatial = (size,) * ndim
    x_shape = (2, channels, *spatial)
    w_shape = (out_channels, channels // groups, *(kernel,) * ndim)
    if layout == "last":
        x_shape = (2, *spatial, channels)
        w_shape = ((kernel,) * ndim + (channels // groups, out_channels))
    names = {1: ("NCW", "NWC"), 2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}[ndim]
    return make_spec(x_shape, w_shape, stride, padding, 1, groups,
                     layout=names[layout == "last"])


@settings(deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=layers())
def test_random_channel_counts(spec):
    check_robust(spec)


@pytest.mark.parametrize("channels", [1, 2, 3, 5, 8, 13, 17, 24, 31, 40, 47, 61, 67])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_every_channel_count_class(channels, layout):
    """Dense 3x3 and depthwise 3x3 at channel counts below, at and around the vector width (and
    primes): the partial last tile in both tail kinds ("pad" and "partition")."""
    for groups, k in ((1, channels + 2), (channels, channels)):
        if layout == "NCHW":
            spec = make_spec((1, channels, 7, 9), (k, channels // groups, 3, 3), 1, 1, 1, groups)
        else:
            spec = make_spec((1, 7, 9, channels), (3, 3, channels // groups, k), 1, 1, 1, groups,
                             layout="NHWC")
        check_robust(spec)


# Large non-overlapping windows (patch embeddings): grad_input is declared as a gather
# (convc.ops.grad_input.gather_grad_input) and scheduled by schedule_direct's gather variant.
GATHER_CASES = [
    # (input NC*, weight OI*, stride, padding, dtype): exact windows, a remainder that no window
    # reaches, kernel < stride (gaps), padding, 1-D and 3-D, batch 3, float64 / float16.
    ((1, 3, 64, 48), (24, 3, 16, 16), 16, 0, "float32"),
    ((3, 5, 37, 30), (7, 5, 7, 6), (9, 6), (2, 0), "float32"),
    ((2, 6, 70), (9, 6, 32), 32, 3, "float32"),
    ((1, 4, 9, 10, 12), (5, 4, 3, 3, 4), (3, 4, 5), 0, "float32"),
    ((2, 2, 28, 28), (70, 2, 14, 14), 14, 0, "float64"),
    ((1, 3, 32, 32), (17, 3, 8, 8), 8, 0, "float16"),
    # channels-last (tap, channel) = 2 x 17 lanes: more than 4 vectors of a dividing width
    ((1, 17, 8, 8, 6), (9, 17, 4, 4, 2), (4, 4, 2), 0, "float32"),
    ((1, 64, 16, 16), (8, 64, 8, 8), 8, 0, "float32"),
]


@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("case", GATHER_CASES, ids=lambda c: f"{c[1][2:]}s{c[2]}p{c[3]}{c[4]}")
def test_patch_grad_input_gather(case, layout):
    from convc.ops.grad_input import is_gather_grad_input

    x, w, stride, padding, dtype = case
    if layout == "last":
        layouts = {3: "NWC", 4: "NHWC", 5: "NDHWC"}
        x, w = (x[0], *x[2:], x[1]), (*w[2:], w[1], w[0])
        spec = make_spec(x, w, stride, padding, layout=layouts[len(x)], dtype=dtype)
    else:
        spec = make_spec(x, w, stride, padding, dtype=dtype)
    assert is_gather_grad_input(spec)
    check_robust(spec, ops=("grad_input",))
    assert '"convc.schedule": "gather' in convc.compile(spec, "grad_input").tir


def test_patch_grad_input_unbatched_matches_batched():
    """The functional API on an unbatched patch-embedding gradient (C, H, W)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 3, 16, 16)).astype("float32")
    dy = rng.standard_normal((12, 2, 3)).astype("float32")
    dx = convc.conv2d_grad_input((3, 32, 48), w, dy, stride=16)
    batched = convc.conv2d_grad_input((1, 3, 32, 48), w, dy[None], stride=16)
    assert dx.shape == (3, 32, 48)
    np.testing.assert_allclose(dx, batched[0], rtol=1e-6)
