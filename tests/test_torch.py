"""convc inside PyTorch (convc.torch): the custom ops (opcheck: schema, fake kernels, autograd
registration, compiled vs eager), their gradient math (gradcheck / gradgradcheck in float64, every
padding mode), the drop-in modules against torch.nn's, convert / fuse, torch.compile and
torch.export of a converted model, channels_last, frozen layers. Skipped without torch.

Tolerances: float64 checks (gradcheck's own defaults) are exact to rounding; float32 module
outputs against PyTorch's oneDNN differ by summation order, ~1e-6 relative on these small layers:
atol/rtol 1e-4 leaves room without hiding a wrong tap (which moves outputs by O(1)).
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import convc.torch as ct  # noqa: E402
from convc.torch import layout, ops  # noqa: E402

MODES = ("zeros", "reflect", "replicate", "circular")
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _close(a, b, **tol):
    torch.testing.assert_close(a, b, **(tol or TOL))


def _conv_args(stride=(1, 1), padding=(1, 0, 1, 1), dilation=(1, 1), groups=1, mode="zeros",
               activation="", slope=0.01):
    return [list(stride), list(padding), list(dilation), groups, mode, activation, slope]


def _reference(x, w, b, stride, padding, dilation, groups, mode):
    """PyTorch's convolution of the same arguments (padding as (before..., after...))."""
    half = len(padding) // 2
    pairs = []
    for before, after in reversed(list(zip(padding[:half], padding[half:]))):
        pairs += [before, after]
    x = F.pad(x, pairs, mode="constant" if mode == "zeros" else mode)
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
    return conv(x, w, b, stride, 0, dilation, groups)


# --- the ops: opcheck -------------------------------------------------------------------------

def _opcheck_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 5, generator=g, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True)
    args = _conv_args(stride=(2, 1), padding=(1, 1, 0, 1), groups=2, mode="reflect")
    y_shape = ops._conv_fake(x, w, None, b, None, None, None, *args).shape
    scale, shift = torch.rand(6, generator=g) + 0.5, torch.randn(6, generator=g)
    residual = torch.randn(y_shape, generator=g, requires_grad=True)
    dy = torch.randn(y_shape, generator=g, requires_grad=True)
    geometry = [[2, 1], [1, 1, 0, 1], [1, 1], 2, "reflect"]
    cl = torch.channels_last
    return {
        "conv": (ops.conv, (x, w, None, b, None, None, None, *args)),
        "conv channels_last": (ops.conv, (x.detach().to(memory_format=cl).requires_grad_(), w,
                                          layout.pack_weight(w.detach(), True), b, None, None,
                                          None, *args)),
        "conv epilogue": (ops.conv, (x, w, None, b, scale.requires_grad_(),
                                     shift.requires_grad_(), residual,
                                     *_conv_args(stride=(2, 1), padding=(1, 1, 0, 1), groups=2,
                                                 mode="reflect", activation="silu"))),
        "grad_input": (ops.conv_grad_input, (dy, w, None, list(x.shape), *geometry)),
        "grad_input channels_last": (ops.conv_grad_input, (
            dy.detach().to(memory_format=cl).requires_grad_(), w, None, list(x.shape), *geometry)),
        "grad_weight": (ops.conv_grad_weight, (x, dy, list(w.shape), *geometry)),
        "grad_weight channels_last": (ops.conv_grad_weight, (
            x.detach().to(memory_format=cl).requires_grad_(), dy, list(w.shape), *geometry)),
        "grad_bias": (ops.conv_grad_bias, (dy,)),
    }


@pytest.mark.parametrize("case", list(_opcheck_cases()))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_ops_compute_pytorchs_convolution_and_its_adjoints():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 7, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 2, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    geometry = ([2, 1], [1, 0, 2, 1], [1, 2], 2, "replicate")
    for fmt in (torch.contiguous_format, torch.channels_last):
        xx = x.to(memory_format=fmt).requires_grad_()
        ww = w.clone().requires_grad_()
        bb = b.clone().requires_grad_()
        expected = _reference(xx, ww, bb, *geometry)
        dy = torch.randn(expected.shape, generator=g, dtype=torch.float64)
        gx, gw, gb = torch.autograd.grad(expected, (xx, ww, bb), dy)
        y = ops.conv(xx, ww, None, bb, None, None, None, *geometry, "", 0.01)
        _close(y, expected)
        assert y.is_contiguous(memory_format=fmt)
        _close(ops.conv_grad_input(dy, ww, None, list(x.shape), *geometry), gx)
        _close(ops.conv_grad_weight(xx, dy, list(w.shape), *geometry), gw)
        _close(ops.conv_grad_bias(dy), gb)


# --- gradient math: gradcheck / gradgradcheck in float64 --------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_conv_gradcheck_and_gradgradcheck(mode):
    """Every padding mode, asymmetric padding, stride, dilation and groups: the gradients
    (convc's grad_input / grad_weight / grad_bias) and their gradients (the ops' own autograd)
    against finite differences."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    args = _conv_args(stride=(2, 1), padding=(1, 2, 0, 1), dilation=(1, 2), groups=2, mode=mode)

    def f(x, w, b):
        return ops.conv(x, w, None, b, None, None, None, *args)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("ndim", [1, 3])
def test_conv_gradgradcheck_1d_and_3d(ndim):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, *([4] * ndim), generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, *([2] * ndim), generator=g, dtype=torch.float64, requires_grad=True)
    args = _conv_args(stride=[1] * ndim, padding=[1] * ndim + [0] * ndim, dilation=[1] * ndim,
                      mode="circular")

    def f(x, w):
        return ops.conv(x, w, None, None, None, None, None, *args)

    assert torch.autograd.gradgradcheck(f, (x, w))


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "sigmoid"])
def test_fused_epilogue_gradcheck(activation):
    """The epilogue's backward (recomputed pre-activation, aten's derivative): every operand."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    shift = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    args = _conv_args(padding=(1, 1, 1, 1), activation=activation)

    def f(*t):
        return ops.conv(t[0], t[1], None, *t[2:], *args)

    assert torch.autograd.gradcheck(f, (x, w, b, scale, shift, residual))


# --- modules --------------------------------------------------------------------------------

def _pair(cls, *args, **kwargs):
    torch.manual_seed(0)
    reference = cls(*args, **kwargs)
    ours = getattr(ct, cls.__name__)(*args, **kwargs)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_module_matches_torch_forward_and_gradients(ndim, mode):
    cls = getattr(nn, f"Conv{ndim}d")
    reference, ours = _pair(cls, 4, 6, 3, stride=2, padding=1, dilation=1, groups=2,
                            padding_mode=mode)
    assert repr(ours) == repr(reference)
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 4, *([7] * ndim))
    outputs = []
    for m in (reference, ours):
        xx = x.clone().requires_grad_()
        y = m(xx)
        y.square().sum().backward()
        outputs.append((y, xx.grad, m.weight.grad, m.bias.grad))
    for a, b in zip(*outputs):
        _close(b, a)


def test_module_same_padding_unbatched_and_channels_last_1d():
    reference, ours = _pair(nn.Conv1d, 3, 5, 4, padding="same", dilation=2, bias=False)
    x = torch.randn(3, 11)                                  # unbatched (C, L)
    _close(ours(x), reference(x))
    nwc = torch.randn(2, 11, 3).transpose(1, 2)             # (N, C, L) stored as NWC
    assert layout.is_channels_last(nwc)
    _close(ours(nwc), reference(nwc))


def test_channels_last_runs_on_the_inputs_memory():
    reference, ours = _pair(nn.Conv2d, 8, 16, 3, padding=1)
    x = torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last)
    view = layout.to_layout(x, layout.is_channels_last(x))
    assert view.data_ptr() == x.data_ptr()                  # the kernel reads x itself
    y = ours(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _close(y, reference(x))
    x3 = torch.randn(1, 8, 4, 5, 6).to(memory_format=torch.channels_last_3d)
    r3, o3 = _pair(nn.Conv3d, 8, 4, 3, padding=1)
    y3 = o3(x3)
    assert y3.is_contiguous(memory_format=torch.channels_last_3d)
    _close(y3, r3(x3))


def _channels_last(x):
    """x (N, C, *spatial) stored (N, *spatial, C) (1-D: a transposed NWC tensor)."""
    if x.dim() == 3:
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    return x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


def _swapped_keys(before):
    """(op, x shape, w shape) of the kernels compiled since `before` (a set of _KERNELS keys)."""
    return {(k[0], k[1], k[2]) for k in set(ops._KERNELS) - before}


@pytest.mark.parametrize("ndim,channels,bias,unbatched",
                         [(2, (16, 32), False, False), (2, (32, 16), True, False),
                          (1, (48, 16), False, True), (3, (16, 16), False, False),
                          (2, (37, 5), False, False), (2, (16, 21), False, False)])
def test_a_1x1_channels_last_layer_trains_on_the_channel_swapped_kernels(monkeypatch, ndim,
                                                                         channels, bias,
                                                                         unbatched):
    """Training a 1x1 stride-1 channels-last layer: forward = the swapped conv's grad_input,
    grad_input = its forward, grad_weight = its grad_weight, all on the weight's own memory (no
    repack, no weight copy) where both channel counts take whole vectors; the answers are
    PyTorch's, in float64. With a bias (which the swapped grad_input kernel cannot add) forward
    and grad_input keep the repacked weight; grad_weight, which needs none, still writes the
    gradient in place. Ragged counts (37 -> 5, 16 -> 21) keep every repack."""
    ci, co = channels
    lanes = ops._lanes(torch.float64)
    swaps = ci % lanes == 0 and co % lanes == 0
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[ndim]
    reference, ours = _pair(cls, ci, co, 1, bias=bias)
    reference.double()
    ours.double()
    spatial = {1: (13,), 2: (5, 7), 3: (3, 4, 5)}[ndim]
    x = _channels_last(torch.randn(2, ci, *spatial, dtype=torch.float64))
    if unbatched:
        x = x[0]
    before = set(ops._KERNELS)

    def no_repack(*args):
        raise AssertionError("a 1x1 channels-last layer's weight was repacked")

    if swaps:
        monkeypatch.setattr(ops, "unpack_weight", no_repack)
    if swaps and not bias:
        monkeypatch.setattr(ops, "pack_weight", no_repack)
        monkeypatch.setattr(ct.modules, "pack_weight", no_repack)
    grads = []
    for m in (reference, ours):
        xx = x.clone().requires_grad_()
        y = m(xx)
        (y * torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
        grads.append((y, xx.grad, m.weight.grad) + ((m.bias.grad,) if bias else ()))
    for a, b in zip(*grads):
        _close(b, a, atol=1e-10, rtol=1e-10)
    assert unbatched or layout.is_channels_last(grads[1][0])     # stored as its input
    swapped_w = (*[1] * ndim, co, ci)
    found = {(op, w) for op, _, w in _swapped_keys(before)}
    assert (("grad_input", swapped_w) in found) == (swaps and not bias), found
    assert (("forward", swapped_w) in found) == (swaps and not bias), found
    assert (("grad_weight", swapped_w) in found) == swaps, found


def test_the_channel_swapped_ops_have_their_gradients_and_the_pack_path_stays_for_inference():
    """The ops with no module pack (packed_weight None: torch.compile, functional calls) take
    the swapped kernels too: gradcheck and gradgradcheck in float64 through them; a weight whose
    (O, I) matrix is not row-major takes the repacked path; inference keeps the module's pack."""
    g = torch.Generator().manual_seed(3)
    x = _channels_last(torch.randn(2, 16, 4, 3, dtype=torch.float64, generator=g))
    w = torch.randn(32, 16, 1, 1, dtype=torch.float64, generator=g)
    assert ops.swaps_channels(w.shape, [1, 1], [0] * 4, 1, True, w.dtype)
    args = _conv_args(padding=(0, 0, 0, 0))

    def f(x_, w_):
        return torch.ops.convc.conv(x_, w_, None, None, None, None, None, *args)

    inputs = (x.clone().requires_grad_(), w.clone().requires_grad_())
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)
    strided = torch.randn(16, 32, dtype=torch.float64, generator=g).t()[:, :, None, None]
    assert not strided.is_contiguous() and ops._swapped(strided) is None
    _close(f(x, strided), F.conv2d(x, strided), atol=1e-10, rtol=1e-10)
    reference, ours = _pair(nn.Conv2d, 16, 32, 1, bias=False)
    xf = x.float()
    with torch.no_grad():
        _close(ours(xf), reference(xf))
    assert ours.__dict__.get("_convc_packed") is not None      # inference packs (and reuses)


def test_repacked_weight_is_reused_until_the_weight_changes():
    reference, ours = _pair(nn.Conv2d, 4, 4, 3, padding=1)
    x = torch.randn(1, 4, 6, 6).to(memory_format=torch.channels_last)
    ours(x)
    first = ours._convc_packed[1]
    ours(x)
    assert ours._convc_packed[1] is first
    for m in (reference, ours):
        with torch.no_grad():
            m.weight.mul_(-2.0)                              # an in-place update: _version moves
    y = ours(x)
    assert ours._convc_packed[1] is not first
    _close(y, reference(x))


def test_a_graph_recorded_before_an_in_place_weight_update_fails_as_torchs_does():
    """Forward, an in-place weight update, a forward again (a new pack), then the first graph's
    backward: autograd refuses it ("modified by an inplace operation") for convc's layer as for
    PyTorch's, instead of a gradient from the new values; two forwards on an unchanged weight
    keep both graphs valid."""
    for fmt in (torch.channels_last, torch.contiguous_format):
        reference, ours = _pair(nn.Conv2d, 4, 4, 3, padding=1)
        x = torch.randn(2, 4, 6, 6).to(memory_format=fmt).requires_grad_()
        for m in (reference, ours):
            first, second = m(x), m(x)
            (first.sum() + second.sum()).backward()
            y = m(x)
            with torch.no_grad():
                m.weight.add_(1.0)
            m(x)
            with pytest.raises(RuntimeError, match="inplace operation"):
                y.sum().backward()


def test_frozen_layer_computes_no_weight_gradient_and_first_layer_no_input_gradient():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    ct.convert(model)
    model[2].weight.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    x = torch.randn(1, 3, 8, 8)                              # needs no gradient
    before = dict(ops.CALLS)
    model(x).sum().backward()
    counts = {k: ops.CALLS[k] - before.get(k, 0) for k in ops.CALLS}
    assert counts["conv_grad_weight"] == 1                   # model[0] only
    assert counts["conv_grad_input"] == 1                    # model[2] only (model[0]'s x: none)
    assert counts["conv_grad_bias"] == 1
    assert model[2].weight.grad is None and model[0].weight.grad is not None


def test_double_backward_through_a_module_gradient_penalty():
    reference, ours = _pair(nn.Conv2d, 2, 3, 3, padding=1, padding_mode="reflect")
    reference.double()
    ours.double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    grads = []
    for m in (reference, ours):
        xx = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(m(xx).tanh().sum(), xx, create_graph=True)
        gx.square().sum().backward()
        grads.append(m.weight.grad)
    _close(grads[1], grads[0])


def test_eager_backward_calls_the_kernels_and_create_graph_the_adjoint_ops():
    """A module's plain backward runs the adjoint kernels directly (no custom-op dispatch:
    no convc::conv_grad_* event in the profile), a backward with create_graph=True goes through
    the adjoint ops (whose own autograd the second backward needs), and both give PyTorch's
    gradients."""
    reference, ours = _pair(nn.Conv2d, 3, 4, 3, padding=1, bias=True)
    x = torch.randn(2, 3, 6, 6)

    def adjoint_ops(create_graph):
        xx = x.clone().requires_grad_()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            grads = torch.autograd.grad(ours(xx).square().sum(), (xx, ours.weight, ours.bias),
                                        create_graph=create_graph)
        names = {e.key for e in prof.key_averages()}
        return {n for n in names if n.startswith("convc::conv_grad")}, grads

    xx = x.clone().requires_grad_()
    want = torch.autograd.grad(reference(xx).square().sum(),
                               (xx, reference.weight, reference.bias))
    for create_graph, expected in ((False, set()), (True, {"convc::conv_grad_input",
                                                           "convc::conv_grad_weight",
                                                           "convc::conv_grad_bias"})):
        seen, grads = adjoint_ops(create_graph)
        assert seen == expected, create_graph
        for got, ref in zip(grads, want):
            _close(got.detach(), ref)


def test_off_cpu_or_other_dtypes_fall_back_to_torch():
    reference, ours = _pair(nn.Conv2d, 2, 3, 3)
    x = torch.randn(1, 2, 5, 5, dtype=torch.bfloat16)
    before = ops.CALLS["conv"]
    y = ours.to(torch.bfloat16)(x)
    assert ops.CALLS["conv"] == before and y.dtype == torch.bfloat16


# --- convert, fuse --------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """torchvision's BasicBlock, by its attribute names (fuse recognizes the block by them)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def _small_net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        BasicBlock(8, 8, 1), BasicBlock(8, 16, 2),
        nn.MaxPool2d(2), nn.ConvTranspose2d(16, 4, 2), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4),
        nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():  # statistics that are not the identity, so folding is really tested
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


def test_convert_keeps_outputs_and_reports_what_it_left():
    net = _small_net()
    x = torch.randn(2, 3, 12, 12)
    expected = net(x)
    ids = [id(p) for p in net.parameters()]
    report = ct.convert(net)
    assert [id(p) for p in net.parameters()] == ids         # in place: an optimizer keeps working
    assert len(report.replaced) == 10 and report.left == []
    assert all(type(m) not in (nn.Conv2d, nn.ConvTranspose2d) for m in net.modules())
    assert ("6", "convc.torch.ConvTranspose2d") in report.replaced
    assert ("5", "convc.torch.MaxPool2d") in report.replaced
    assert ("10", "convc.torch.AdaptiveAvgPool2d") in report.replaced
    assert "left 0" in str(report)
    _close(net(x), expected)


def test_fuse_keeps_eval_outputs_in_both_memory_formats():
    net = _small_net().eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        expected = net(x)
    fused = copy.deepcopy(net)
    with pytest.raises(ValueError, match="eval"):
        ct.fuse(copy.deepcopy(net).train())
    report = ct.fuse(fused)
    kinds = [type(m).__name__ for m in fused.modules()]
    assert kinds.count("FusedResidualBlock") == 2 and "BatchNorm2d" not in kinds
    assert any("BasicBlock -> convc.torch.FusedResidualBlock" in what for _, what in report.replaced)
    with torch.no_grad():
        _close(fused(x), expected)
        _close(fused(x.to(memory_format=torch.channels_last)), expected)


def test_state_dict_round_trip():
    net = _small_net()
    converted = copy.deepcopy(net)
    ct.convert(converted)
    assert list(converted.state_dict()) == list(net.state_dict())
    fresh = _small_net()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(converted.state_dict())
    ct.convert(fresh)
    x = torch.randn(1, 3, 12, 12)
    _close(fresh(x), net(x))


# --- transposed convolution -------------------------------------------------------------------

def _transpose_geometry(ndim=2):
    """stride 2, padding 1 / 0 (before / after on the last axis), output_padding 1, groups 2,
    dilation 2 on the last axis: the op's argument lists (stride, padding, output_padding,
    groups, dilation)."""
    return ([2] * ndim, [1] * ndim + [1] * (ndim - 1) + [0], [1] * ndim, 2,
            [1] * (ndim - 1) + [2])


def _transpose_reference(x, w, b, stride, padding, output_padding, groups, dilation):
    """F.conv_transposeNd of the op's arguments, padding (before..., after...) maybe unequal:
    F's unpadded output (output_padding included) with `before` cropped from the front of each
    axis and `after` from its end."""
    half = len(padding) // 2
    f = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[x.dim()]
    y = f(x, w, b, stride, 0, output_padding, groups, dilation)
    index = [slice(None), slice(None)]
    index += [slice(before, size - after) for before, after, size in
              zip(padding[:half], padding[half:], y.shape[2:])]
    return y[tuple(index)]


def _transpose_opcheck_cases():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 4, 3, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True)
    geometry = list(_transpose_geometry())
    y_shape = ops._conv_transpose_fake(x, w, None, b, *geometry).shape
    dy = torch.randn(y_shape, generator=g, requires_grad=True)
    cl = torch.channels_last

    def last(t):
        return t.detach().to(memory_format=cl).requires_grad_()

    return {
        "conv_transpose": (ops.conv_transpose, (x, w, None, b, *geometry)),
        "conv_transpose channels_last": (ops.conv_transpose, (
            last(x), w, layout.pack_weight(w.detach(), True), b, *geometry)),
        "grad_input": (ops.conv_transpose_grad_input, (dy, w, None, list(x.shape), *geometry)),
        "grad_input channels_last": (ops.conv_transpose_grad_input, (
            last(dy), w, None, list(x.shape), *geometry)),
        "grad_weight": (ops.conv_transpose_grad_weight, (x, dy, list(w.shape), *geometry)),
        "grad_weight channels_last": (ops.conv_transpose_grad_weight, (
            last(x), dy, list(w.shape), *geometry)),
    }


@pytest.mark.parametrize("case", list(_transpose_opcheck_cases()))
def test_conv_transpose_opcheck(case):
    op, args = _transpose_opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_conv_transpose_ops_compute_pytorchs_and_its_adjoints():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 4, 5, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 2, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    geometry = _transpose_geometry()
    for fmt in (torch.contiguous_format, torch.channels_last):
        xx = x.to(memory_format=fmt).requires_grad_()
        ww = w.clone().requires_grad_()
        bb = b.clone().requires_grad_()
        expected = _transpose_reference(xx, ww, bb, *geometry)
        dy = torch.randn(expected.shape, generator=g, dtype=torch.float64)
        gx, gw, gb = torch.autograd.grad(expected, (xx, ww, bb), dy)
        y = ops.conv_transpose(xx, ww, None, bb, *geometry)
        _close(y, expected)
        assert y.is_contiguous(memory_format=fmt)
        dy = dy.to(memory_format=fmt)
        _close(ops.conv_transpose_grad_input(dy, ww, None, list(x.shape), *geometry), gx)
        _close(ops.conv_transpose_grad_weight(xx, dy, list(w.shape), *geometry), gw)
        _close(ops.conv_grad_bias(dy), gb)


@pytest.mark.parametrize("ndim, geometry", [
    (2, _transpose_geometry()),
    (1, ([1], [1, 1], [1], 2, [2])),          # output_padding >= stride (dilation 2 > stride 1)
    (3, ([2, 1, 2], [0, 1, 1, 0, 1, 0], [1, 0, 1], 1, [1, 1, 1])),
])
def test_conv_transpose_gradcheck_and_gradgradcheck(ndim, geometry):
    """The transposed op's gradients (conv_transpose_grad_input / _grad_weight / conv_grad_bias)
    and their gradients (the transposed ops' own autograd) against finite differences."""
    g = torch.Generator().manual_seed(7)
    size = {1: [4], 2: [3, 3], 3: [2, 2, 2]}[ndim]
    x = torch.randn(1, 4, *size, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, *([2] * ndim), generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(geometry[3], generator=g, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return ops.conv_transpose(x, w, None, b, *geometry)

    _close(f(x, w, b), _transpose_reference(x, w, b, *geometry))
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_conv_transpose_module_matches_torch(ndim):
    cls = getattr(nn, f"ConvTranspose{ndim}d")
    reference, ours = _pair(cls, 4, 6, 3, stride=2, padding=1, output_padding=1, groups=2,
                            dilation=2)
    assert isinstance(ours, cls)
    assert repr(ours) == repr(reference)
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 4, *([4] * ndim))
    outputs = []
    for m in (reference, ours):
        xx = x.clone().requires_grad_()
        y = m(xx)
        y.square().sum().backward()
        outputs.append((y, xx.grad, m.weight.grad, m.bias.grad))
    for a, b in zip(*outputs):
        _close(b, a)
    # output_size picks the output_padding, as torch's; unbatched inputs; torch's errors.
    reference, ours = _pair(cls, 4, 2, 3, stride=2, padding=1, bias=False)
    for size in ([7] * ndim, [8] * ndim, [2, 2, *([8] * ndim)]):
        _close(ours(x, output_size=size), reference(x, output_size=size))
    _close(ours(x[0]), reference(x[0]))
    with pytest.raises(ValueError, match="output size"):
        ours(x, output_size=[9] * ndim)


def test_conv_transpose_channels_last_runs_on_the_inputs_memory():
    reference, ours = _pair(nn.ConvTranspose2d, 8, 4, 3, stride=2, padding=1, output_padding=1)
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    y = ours(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _close(y, reference(x))
    first = ours._convc_packed[1]
    ours(x)
    assert ours._convc_packed[1] is first                    # the repacked weight, reused
    r3, o3 = _pair(nn.ConvTranspose3d, 4, 2, 2, stride=2)
    x3 = torch.randn(1, 4, 3, 2, 3).to(memory_format=torch.channels_last_3d)
    y3 = o3(x3)
    assert y3.is_contiguous(memory_format=torch.channels_last_3d)
    _close(y3, r3(x3))


def _decoder():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1, groups=2, bias=False))


def test_convert_a_decoder_outputs_gradients_state_dict_and_frozen_layers():
    net = _decoder()
    converted = copy.deepcopy(net)
    report = ct.convert(converted)
    assert [what for _, what in report.replaced] == [
        "convc.torch.Conv2d", "convc.torch.ConvTranspose2d", "convc.torch.ConvTranspose2d"]
    assert report.left == []
    x = torch.randn(2, 3, 6, 6)
    results = []
    for m in (net, converted):
        xx = x.clone().requires_grad_()
        y = m(xx)
        y.square().sum().backward()
        results.append((y, xx.grad, *(p.grad for p in m.parameters())))
    for a, b in zip(*results):
        _close(b, a)
    # state_dict round trip
    assert list(converted.state_dict()) == list(net.state_dict())
    fresh = _decoder()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(converted.state_dict())
    ct.convert(fresh)
    _close(fresh(x), net(x))
    # a frozen transposed layer computes no weight gradient
    fresh[4].weight.requires_grad_(False)
    before = dict(ops.CALLS)
    fresh(x).sum().backward()
    counts = {k: ops.CALLS[k] - before.get(k, 0) for k in ops.CALLS}
    assert counts["conv_transpose_grad_weight"] == 1         # fresh[2] only
    assert counts["conv_transpose_grad_input"] == 2
    assert fresh[4].weight.grad is None


def test_conv_transpose_torch_compile_and_export():
    net = _decoder()
    ct.convert(net)
    x = torch.randn(1, 3, 6, 6)
    program = torch.export.export(net, (x,))
    assert "torch.ops.convc.conv_transpose.default" in program.graph_module.code
    _close(program.module()(x), net(x))


# --- torch.compile, torch.export ---------------------------------------------------------------

def _converted_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                          nn.Conv2d(6, 4, 3, stride=2, groups=2, bias=False), nn.Flatten())
    ct.convert(model)
    return model


def test_torch_compile_fullgraph_matches_eager_outputs_and_gradients():
    model = _converted_model()
    x = torch.randn(2, 3, 9, 9)
    results = []
    for m in (model, torch.compile(model, fullgraph=True)):
        xx = x.clone().requires_grad_()
        model.zero_grad()
        y = m(xx)
        y.square().sum().backward()
        results.append((y, xx.grad, model[0].weight.grad, model[0].bias.grad,
                        model[2].weight.grad))
    for a, b in zip(*results):
        _close(b, a)


def test_torch_export_matches_eager_and_holds_the_convc_ops():
    model = _converted_model()
    x = torch.randn(2, 3, 9, 9)
    program = torch.export.export(model, (x,))
    assert "torch.ops.convc.conv.default" in program.graph_module.code
    check_exported(program, model, x)


def check_exported(program, model, x):
    """The exported program's outputs are the model's, and so are its input gradients (the graph
    is differentiable through the ops' registered autograd)."""
    _close(program.module()(x), model(x))
    xx = x.clone().requires_grad_()
    program.module()(xx).sum().backward()
    xe = x.clone().requires_grad_()
    model(xe).sum().backward()
    _close(xx.grad, xe.grad)


# --- the digits example, short -----------------------------------------------------------------

def test_train_digits_short_form_matches_pytorch():
    """examples/train_digits.py for 60 steps: the convc-converted model's (convolutions and max
    pools) loss curve is
    PyTorch's (1e-3 relative, the example's own bound) and the loss falls."""
    pytest.importorskip("sklearn")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    lines = []
    results = example.run(epochs=2, max_steps=60, out=lines.append)
    assert results["parity"] <= example.PARITY_RTOL
    losses = results["convc"]["losses"]
    assert len(losses) == 60 and sum(losses[-10:]) < 0.7 * sum(losses[:10])
    assert any("convc.torch.MaxPool2d" in line for line in lines)       # the pools too
