"""Winograd F(m x m, 3 x 3) forward and grad_input (convc.ops.winograd, schedules/cpu/winograd.py).

Each m against the float64 NumPy reference with a normwise bound (ERROR_BOUND) and the usual
elementwise tolerance, over shapes that exercise what the tiles make hard: spatial sizes that are
not multiples of m, batch > 1, groups, asymmetric and larger-than-1 padding (grad_input crops dy),
both layouts; the fused epilogue, a ring padding, float16 and float64; `algorithm="auto"`'s choice;
the errors for layers Winograd cannot compute.
"""

from __future__ import annotations

import numpy as np
import pytest

import convc
from convc.check import kernel_inputs, operands, reference, relative_error
from convc import dispatch
from convc.dispatch import resolve_algorithm
from convc.ops.winograd import ERROR_BOUND, matrices
from convc.spec import ConvSpec
from convc.target import resolve

from conftest import assert_close


def normwise(actual, expected) -> float:
    actual = np.asarray(actual, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def spec_of(input_cf, weight_cf, layout, **kw):
    """A spec from channels-first shapes, in `layout`."""
    n, c, *size = input_cf
    k, cg, *kernel = weight_cf
    if layout == "NHWC":
        return ConvSpec.from_shapes((n, *size, c), (*kernel, cg, k), layout="NHWC", **kw)
    return ConvSpec.from_shapes(input_cf, weight_cf, layout="NCHW", **kw)


def check(spec, op, seed=0, bound=None):
    """Compile `op` of `spec`, compare with the reference; returns the kernel."""
    data = operands(spec, seed)
    kernel = convc.compile(spec, op)
    got = kernel(*kernel_inputs(spec, op, data))
    expected = reference(spec, op, **data)
    what = f"{op} {spec.key} [{kernel.how}]"
    assert_close(got, expected, spec.dtype, what)
    if bound is not None:
        err = normwise(got, expected)
        assert err <= bound, f"{what}: normwise error {err:.3g} > {bound}"
    return kernel


def is_winograd_kernel(kernel) -> bool:
    return "wino_gemm" in kernel.tir


# (channels-first input, weight, padding, groups): odd sizes (no m divides 9, 11, 13 or 7 + pad),
# batch 2, groups of 8 and 12 channels, asymmetric and 2-wide padding.
CASES = {
    "forward": ((2, 16, 9, 11), (24, 16, 3, 3), 1, 1),
    "grad_input": ((1, 24, 7, 13), (16, 12, 3, 3), ((0, 2), (2, 1)), 2),
}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("op", ["forward", "grad_input"])
def test_each_tile_against_reference(op, m, layout):
    x, w, padding, groups = CASES[op]
    spec = spec_of(x, w, layout, padding=padding, groups=groups, algorithm="winograd",
                   winograd_m=m)
    kernel = check(spec, op, bound=ERROR_BOUND[m])
    assert kernel.how == "hand-written" and is_winograd_kernel(kernel)
    assert f"winograd{m}" in spec.key


def test_transform_matrices_compute_a_correlation():
    """y = A^T [(G g) * (B^T d)] is the 1-D correlation, for every m (float64)."""
    rng = np.random.default_rng(0)
    for m in (2, 4, 6):
        a, b, g = matrices(m)
        d, taps = rng.standard_normal(m + 2), rng.standard_normal(3)
        expected = [d[i:i + 3] @ taps for i in range(m)]
        np.testing.assert_allclose(a.T @ ((g @ taps) * (b.T @ d)), expected, atol=1e-12)


def test_batch_padding_none_and_epilogue():
    """Batch 3, no padding (the tiles' zero extension alone), bias, scale/shift, residual, relu."""
    spec = ConvSpec.from_shapes((3, 8, 10, 10), (8, 8, 3, 3), padding=0, bias=True,
                                scale_shift=True, residual=True, activation="relu",
                                algorithm="winograd", winograd_m=4)
    data = operands(spec, 1)
    kernel = convc.compile(spec, "forward")
    got = kernel(*kernel_inputs(spec, "forward", data))
    assert is_winograd_kernel(kernel)
    assert_close(got, reference(spec, "forward", **data), "float32", spec.key)


def test_ring_padding_forward():
    spec = ConvSpec.from_shapes((1, 5, 9, 16), (3, 3, 16, 16), padding=(1, 2),
                                layout="NHWC", padding_mode="reflect", algorithm="winograd")
    assert is_winograd_kernel(check(spec, "forward", bound=ERROR_BOUND[2]))


@pytest.mark.parametrize("mode, layout, m, dtype", [
    ("reflect", "NCHW", 2, "float32"), ("replicate", "NHWC", 4, "float32"),
    ("circular", "NCHW", 4, "float64"), ("reflect", "NHWC", 2, "float64")])
def test_ring_padding_grad_input(mode, layout, m, dtype):
    """grad_input of a ring padding: Winograd over the padded domain (whole tiles that do not
    divide it, asymmetric padding), then the fold, corners included."""
    x_shape, w_shape = ((2, 16, 9, 11), (16, 16, 3, 3)) if layout == "NCHW" else \
        ((2, 9, 11, 16), (3, 3, 16, 16))
    spec = ConvSpec.from_shapes(x_shape, w_shape, padding=((1, 2), (2, 1)), layout=layout,
                                dtype=dtype, padding_mode=mode, algorithm="winograd",
                                winograd_m=m)
    kernel = check(spec, "grad_input", bound=ERROR_BOUND[m] if dtype == "float32" else None)
    assert is_winograd_kernel(kernel) and "fold" in kernel.tir


def test_ring_padding_grad_input_follows_zeros_algorithm():
    """algorithm="auto" gives a ring padding the algorithm the zeros mode gets (c4's 3x3 layer:
    Winograd for forward and grad_input alike)."""
    target = resolve(None)
    zeros = ConvSpec.from_shapes((1, 256, 14, 14), (256, 256, 3, 3), padding=1)
    for mode in ("reflect", "replicate", "circular"):
        ring = ConvSpec.from_shapes((1, 256, 14, 14), (256, 256, 3, 3), padding=1,
                                    padding_mode=mode)
        for op in ("forward", "grad_input"):
            assert (resolve_algorithm(ring, op, target).algorithm
                    == resolve_algorithm(zeros, op, target).algorithm), (mode, op)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_dtypes(dtype):
    """float16 is transformed and accumulated in float32; float64 in float64."""
    spec = ConvSpec.from_shapes((1, 16, 10, 10), (16, 16, 3, 3), padding=1, dtype=dtype,
                                algorithm="winograd", winograd_m=4)
    data = operands(spec, 2)
    kernel = convc.compile(spec, "forward")
    got = kernel(*kernel_inputs(spec, "forward", data))
    assert got.dtype == np.dtype(dtype) and is_winograd_kernel(kernel)
    err = normwise(got, reference(spec, "forward", **data))
    assert err <= (1e-3 if dtype == "float16" else 1e-13), f"{dtype}: {err:.3g}"


def test_repeated_calls_agree():
    """Two threads share the tiles: repeated calls give identical results (no race)."""
    spec = ConvSpec.from_shapes((2, 8, 13, 7), (16, 8, 3, 3), padding=1, algorithm="winograd")
    data = operands(spec, 3)
    kernel = convc.compile(spec, "forward")
    first = kernel(*kernel_inputs(spec, "forward", data))
    for _ in range(5):
        np.testing.assert_array_equal(kernel(*kernel_inputs(spec, "forward", data)), first)


def test_functional_api_and_torch():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (2, 16, 12, 12)).astype("float32")
    w = rng.uniform(-1, 1, (32, 16, 3, 3)).astype("float32")
    y = convc.conv2d(x, w, padding=1, algorithm="winograd")
    direct = convc.conv2d(x, w, padding=1, algorithm="direct")
    assert relative_error(y, direct) < 2e-5
    dx = convc.conv2d_grad_input(x.shape, w, y, padding=1, algorithm="winograd")
    assert relative_error(dx, convc.conv2d_grad_input(x.shape, w, y, padding=1)) < 2e-5
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.conv2d(torch.from_numpy(x).double(),
                                          torch.from_numpy(w).double(), padding=1).numpy()
    assert normwise(y, expected) <= ERROR_BOUND[4]


def test_auto_chooses_by_measured_rule():
    cpu = resolve(None)
    c3 = ConvSpec.from_shapes((1, 128, 28, 28), (128, 128, 3, 3), padding=1)
    c5 = ConvSpec.from_shapes((1, 512, 7, 7), (512, 512, 3, 3), padding=1)
    strided = ConvSpec.from_shapes((1, 128, 28, 28), (128, 128, 3, 3), stride=2, padding=1)
    c5_last = ConvSpec.from_shapes((1, 7, 7, 512), (3, 3, 512, 512), padding=1, layout="NHWC")
    tiny = ConvSpec.from_shapes((1, 512, 4, 4), (512, 512, 3, 3), padding=1)
    for op in ("forward", "grad_input"):
        assert resolve_algorithm(c5_last, op, cpu) is c5_last    # too few tiles: direct
        assert resolve_algorithm(tiny, op, cpu) is tiny          # (4 tiles, channels-first)
        assert resolve_algorithm(strided, op, cpu) is strided    # not Winograd's
    assert resolve_algorithm(c3, "grad_weight", cpu) is c3
    if convc.target.info(cpu).vector_bits >= 512:  # the rule only covers what was measured
        chosen = resolve_algorithm(c3, "forward", cpu)
        assert (chosen.algorithm, chosen.winograd_m) == ("winograd", 4)
        # ResNet-18's last stages at batch 8, 112x112: 32 tiles (winograd.MIN_TILES) of 4x4 on
        # 7x7, of 2x2 on 4x4.
        for layout in ("NCHW", "NHWC"):
            s7 = spec_of((8, 256, 7, 7), (256, 256, 3, 3), layout, padding=1)
            s4 = spec_of((8, 512, 4, 4), (512, 512, 3, 3), layout, padding=1)
            for op in ("forward", "grad_input"):
                chosen = resolve_algorithm(s7, op, cpu)
                assert (chosen.algorithm, chosen.winograd_m) == ("winograd", 4), (layout, op)
                chosen = resolve_algorithm(s4, op, cpu)
                assert (chosen.algorithm, chosen.winograd_m) == ("winograd", 2), (layout, op)
    forced = ConvSpec.from_shapes((1, 512, 7, 7), (512, 512, 3, 3), padding=1,
                                  algorithm="direct")
    assert resolve_algorithm(forced, "forward", cpu) is forced
    assert forced.key == c5.key  # direct and auto share kernels and tuning records


def test_auto_takes_f4_for_few_channels_last_on_large_planes_only():
    """Channels-last layers with 16-63 channels a side: F(4, 3) where the plane has MIN_TILES
    tiles of 4x4, direct on smaller planes (no F(2, 3)), on channel counts no vector divides and
    channels-first (FEW_CHANNELS_LAST: what was measured)."""
    cpu = resolve(None)

    def spec(hw, c, k, layout="NHWC"):
        if layout == "NHWC":
            return ConvSpec.from_shapes((1, hw, hw, c), (3, 3, c, k), padding=1, layout=layout)
        return ConvSpec.from_shapes((1, c, hw, hw), (k, c, 3, 3), padding=1)

    direct = [spec(14, 32, 128), spec(7, 32, 128), spec(28, 24, 64), spec(55, 8, 64),
              spec(55, 16, 64, "NCHW")]
    for op in ("forward", "grad_input"):
        for layer in direct:
            assert resolve_algorithm(layer, op, cpu) is layer, (layer.key, op)
        if convc.target.info(cpu).vector_bits >= 512:
            for layer in (spec(55, 16, 64), spec(28, 32, 96), spec(56, 128, 32)):
                chosen = resolve_algorithm(layer, op, cpu)
                assert (chosen.algorithm, chosen.winograd_m) == ("winograd", 4), (layer.key, op)


def test_packed_forms_take_winograd_from_fewer_tiles(monkeypatch):
    """A kernel's prepacked form pays the filter transform once, so channels-last layers below
    the tile floor take Winograd there (dispatch.PACKED_MIN_TILES: a batch-1 7x7 plane with 128
    or more channels a side), F(4, 3) while its filter stays small, F(2, 3) beyond: the packed
    call agrees with the reference and with the unpacked (direct) call within Winograd's bound.
    Smaller planes, fewer channels, a tuner verdict and a forced algorithm keep theirs."""
    cpu = resolve(None)
    few = ConvSpec.from_shapes((1, 7, 7, 64), (3, 3, 64, 64), padding=1, layout="NHWC")
    tiny = ConvSpec.from_shapes((1, 4, 4, 256), (3, 3, 256, 256), padding=1, layout="NHWC")
    forced = ConvSpec.from_shapes((1, 7, 7, 128), (3, 3, 128, 128), padding=1, layout="NHWC",
                                  algorithm="direct")
    for op in ("forward", "grad_input"):
        for layer in (few, tiny, forced):
            assert resolve_algorithm(layer, op, cpu, packed=True) is layer, (layer.key, op)
    with monkeypatch.context() as patch:              # a tuner's verdict "direct" is kept
        patch.setattr(dispatch, "recorded_algorithm", lambda *a: 0)
        auto = ConvSpec.from_shapes((1, 7, 7, 128), (3, 3, 128, 128), padding=1, layout="NHWC")
        assert resolve_algorithm(auto, "forward", cpu, packed=True) is auto
    if convc.target.info(cpu).vector_bits < 512:  # the rule only covers what was measured
        return
    cases = [(ConvSpec.from_shapes((1, 7, 7, 128), (3, 3, 128, 128), padding=1, layout="NHWC",
                                   bias=True), 4),
             (ConvSpec.from_shapes((1, 8, 8, 512), (3, 3, 512, 256), padding=1, layout="NHWC"),
              2)]
    for spec, m in cases:
        for op in ("forward", "grad_input"):
            assert resolve_algorithm(spec, op, cpu) is spec     # unpacked: direct
            chosen = resolve_algorithm(spec, op, cpu, packed=True)
            assert (chosen.algorithm, chosen.winograd_m) == ("winograd", m), (spec.key, op)
            data = operands(spec, 3)
            kernel = convc.compile(spec, op)
            assert not is_winograd_kernel(kernel)
            args = kernel_inputs(spec, op, data)
            packed = kernel.prepack(data["w"])
            assert packed.kind == "winograd" and packed.array.shape[:2] == (m + 2, m + 2)
            got = kernel(args[0], packed, *args[2:])
            expected = reference(spec, op, **data)
            assert_close(got, expected, "float32", f"packed {op} {spec.key}")
            assert normwise(got, expected) <= ERROR_BOUND[m]
            assert normwise(got, kernel(*args)) <= ERROR_BOUND[m]


@pytest.mark.parametrize("kwargs, words", [
    (dict(input_shape=(1, 16, 9, 9), weight_shape=(16, 16, 3, 3), stride=2), "stride"),
    (dict(input_shape=(1, 16, 9, 9), weight_shape=(16, 16, 5, 5)), "kernel size"),
    (dict(input_shape=(1, 16, 9, 9), weight_shape=(16, 16, 3, 3), dilation=2), "dilation"),
    (dict(input_shape=(1, 16, 9, 9), weight_shape=(16, 1, 3, 3), groups=16), "groups=16"),
    (dict(input_shape=(1, 16, 9), weight_shape=(16, 16, 3)), "1-D"),
])
def test_forced_winograd_on_unsupported_layer(kwargs, words):
    with pytest.raises(ValueError, match=f"algorithm='winograd' cannot compute.*{words}"):
        ConvSpec.from_shapes(**kwargs, algorithm="winograd")


def test_argument_errors():
    shapes = ((1, 16, 9, 9), (16, 16, 3, 3))
    with pytest.raises(ValueError, match="algorithm='fast' is not an algorithm"):
        ConvSpec.from_shapes(*shapes, algorithm="fast")
    with pytest.raises(ValueError, match="winograd_m=3 is not a Winograd tile"):
        ConvSpec.from_shapes(*shapes, algorithm="winograd", winograd_m=3)
    with pytest.raises(ValueError, match="winograd_m=4 needs algorithm='winograd'"):
        ConvSpec.from_shapes(*shapes, winograd_m=4)
    x, w = np.zeros(shapes[0], "float32"), np.zeros(shapes[1], "float32")
    with pytest.raises(ValueError, match="algorithm='fast'"):
        convc.conv2d(x, w, algorithm="fast")
    with pytest.raises(ValueError, match="stride"):
        convc.conv2d(x, w, stride=2, algorithm="winograd")
    ring = ConvSpec.from_shapes(*shapes, padding=1, algorithm="winograd")
    with pytest.raises(ValueError, match="CPU"):
        resolve_algorithm(ring, "forward", resolve("cuda"))


@pytest.mark.parametrize("layout, op", [("NCHW", "forward"), ("NHWC", "grad_input")])
def test_prepack_round_trip_and_no_stale_pack(layout, op):
    """kernel(x, kernel.prepack(w)) == kernel(x, w); a pack is a snapshot of the weight it was
    made from: after the weight changes, the plain call follows the new values and the old pack
    keeps the old ones (convc keeps no packs of its own that could go stale)."""
    x, w = (2, 16, 9, 11), (24, 8, 3, 3)
    spec = spec_of(x, w, layout, padding=1, groups=2, algorithm="winograd", bias=op == "forward")
    data = operands(spec, 5)
    kernel = convc.compile(spec, op)
    args = kernel_inputs(spec, op, data)
    weight = data["w"].copy()
    packed = kernel.prepack(weight)
    expected = reference(spec, op, **data)
    assert_close(kernel(args[0], packed, *args[2:]), expected, "float32", "packed")
    weight *= -2.0  # the same array, changed in place after packing
    changed = reference(spec, op, **{**data, "w": weight})
    assert_close(kernel(args[0], weight, *args[2:]), changed, "float32", "unpacked after change")
    assert_close(kernel(args[0], kernel.prepack(weight), *args[2:]), changed, "float32", "repacked")
    assert_close(kernel(args[0], packed, *args[2:]), expected, "float32", "old pack: a snapshot")


def test_prepack_errors():
    spec = ConvSpec.from_shapes((1, 16, 8, 8), (16, 16, 3, 3), padding=1, algorithm="winograd")
    other = ConvSpec.from_shapes((1, 16, 8, 8), (16, 16, 3, 3), padding=2, algorithm="winograd")
    w = np.ones(spec.weight_shape, "float32")
    packed = convc.compile(spec, "forward").prepack(w)
    with pytest.raises(ValueError, match="packed for"):
        convc.compile(other, "forward")(np.ones(other.input_shape, "float32"), packed)
    direct = ConvSpec.from_shapes((1, 16, 8, 8), (16, 16, 3, 3), padding=1, algorithm="direct")
    assert convc.compile(direct, "forward").prepack(w).kind == "direct"  # tests/test_prepack.py
    with pytest.raises(ValueError, match="shape"):
        convc.compile(spec, "forward").prepack(np.ones((16, 16, 5, 5), "float32"))


def test_cli_compile_algorithm(tmp_path):
    """--algorithm winograd --winograd-m 4 reaches the spec, the manifest and the library."""
    from convc import cli as convc_cli
    from convc.export import load

    out = tmp_path / "wino.so"
    assert convc_cli.main(["compile", "--op", "conv2d", "--input", "2,9,10,16",
                           "--weight", "3,3,16,16", "--layout", "NHWC", "--padding", "1",
                           "--algorithm", "winograd", "--winograd-m", "4",
                           "--kernels", "forward,grad_input", "-o", str(out)]) == 0
    lib = load(out)
    spec = ConvSpec.from_dict(lib.manifest["functions"]["forward"]["spec"])
    assert (spec.algorithm, spec.winograd_m) == ("winograd", 4)
    data = operands(spec, 6)
    for op in ("forward", "grad_input"):
        assert_close(lib[op](*kernel_inputs(spec, op, data)), reference(spec, op, **data),
                     "float32", f"cli winograd {op}")
    assert convc_cli.main(["compile", "--op", "conv2d", "--input", "1,16,9,9", "--weight",
                           "16,16,3,3", "--stride", "2", "--algorithm", "winograd",
                           "-o", str(out)]) != 0


@pytest.mark.parametrize("fuse_filter", [False, True])
def test_filter_transform_at_root_and_fused(fuse_filter):
    """Both places of the filter transform (the rule's knob) compute the same convolution."""
    import tvm

    from convc.ops import declare
    from convc.schedules.cpu import winograd_rule

    spec = ConvSpec.from_shapes((2, 7, 10, 32), (3, 3, 32, 64), padding=1, layout="NHWC",
                                algorithm="winograd", winograd_m=2)
    target = resolve(None)
    for op in ("forward", "grad_input"):
        sch = winograd_rule(declare(spec, op), target, {"fuse_filter": fuse_filter})
        assert sch is not None
        function = tvm.compile(sch.mod, target=target)["main"]
        data = operands(spec, 7)
        inputs = kernel_inputs(spec, op, data)
        out = np.empty(spec.output_shape if op == "forward" else spec.input_shape, "float32")
        function(*inputs, out)
        assert_close(out, reference(spec, op, **data), "float32", f"{op} fuse={fuse_filter}")


def test_auto_keeps_grad_input_through_an_activation_direct():
    """Winograd's grad_input has no activation-derivative prologue: auto must not choose it for a
    spec with one (it would drop dy * act'), and forcing it names derivative_from."""
    cpu = resolve(None)
    through = ConvSpec.from_shapes((1, 128, 28, 28), (128, 128, 3, 3), padding=1,
                                   activation="relu", derivative_from="pre_activation")
    assert resolve_algorithm(through, "grad_input", cpu) is through
    forced = ConvSpec.from_shapes((1, 128, 28, 28), (128, 128, 3, 3), padding=1,
                                  activation="relu", derivative_from="pre_activation",
                                  algorithm="winograd")
    with pytest.raises(ValueError, match="derivative_from"):
        convc.ops.declare(forced, "grad_input")


# (channels-first input, weight, padding, groups, op, m): no m divides the sizes; batch 2; groups
# of 16 channels; a tile row that no block size divides (13 tiles of 2 with m=2 on 25 columns).
BLOCKED = [
    ((2, 16, 9, 13), (32, 16, 3, 3), 1, 1, "forward", 4),
    ((2, 32, 11, 25), (32, 16, 3, 3), ((0, 2), (2, 1)), 2, "grad_input", 2),
    ((1, 16, 26, 27), (48, 16, 3, 3), 0, 1, "forward", 6),
    ((2, 48, 9, 13), (16, 48, 3, 3), 1, 1, "grad_input", 4),
]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", BLOCKED, ids=lambda c: f"{c[4]}-m{c[5]}-{c[1][0]}x{c[1][1]}")
@pytest.mark.parametrize("block_bytes", [20 << 10, 200 << 10])
def test_blocked_schedule_against_reference(monkeypatch, case, layout, block_bytes):
    """The blocked schedule (tiles in blocks of part of a row or of whole rows, the GEMM in chunks
    of output channels inside each) against the reference, with 2 threads, repeated: the layers it
    is chosen for are large, so the thresholds are lowered here to reach it on small ones."""
    from convc.schedules.cpu import winograd as schedule

    monkeypatch.setattr(schedule, "BLOCKED_FROM", 0)
    monkeypatch.setattr(schedule, "FILTER_CHECKED_BELOW", 0)
    monkeypatch.setattr(schedule, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(schedule, "MEASURED_L2", resolve(None).info.l2_bytes)  # unscaled here
    x, w, padding, groups, op, m = case
    spec = spec_of(x, w, layout, padding=padding, groups=groups, algorithm="winograd",
                   winograd_m=m, bias=op == "forward", activation="relu" if op == "forward" else None)
    kernel = check(spec, op, bound=ERROR_BOUND[m])
    assert is_winograd_kernel(kernel) and " block " in kernel.tir, kernel.tir[:2000]
    data = operands(spec, 3)
    inputs = kernel_inputs(spec, op, data)
    first = kernel(*inputs)
    for _ in range(3):
        np.testing.assert_array_equal(kernel(*inputs), first)
    packed = kernel.prepack(inputs[1])  # the filter transform out of the call: same result
    np.testing.assert_allclose(kernel(inputs[0], packed, *inputs[2:]), first, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", ["forward", "grad_input"])
def test_gemm_tile_that_divides_no_run_of_tiles(op, layout):
    """A register tile of tiles that leaves a remainder (5 of 24 tiles at the root; 5 of 12 per
    block of whole rows), whose last tile the schedule partitions off: against the reference,
    2 threads, repeated."""
    import tvm

    from convc.ops import declare
    from convc.schedules.cpu.winograd import schedule_winograd

    spec = spec_of((2, 16, 9, 13), (32, 16, 3, 3), layout, padding=1, algorithm="winograd",
                   winograd_m=4)
    data, target = operands(spec, 5), resolve(None)
    inputs = kernel_inputs(spec, op, data)
    expected = reference(spec, op, **data)
    func = declare(spec, op).with_attr("global_symbol", "main")
    for knobs in ({"tp": 5}, {"tp": 5, "block": (3, 4)}, {"tp": 7, "block": (1, 4)}):
        sch = schedule_winograd(func, target, knobs)
        script = sch.mod.script()
        assert f" t{knobs['tp']}" in script and "pragma_loop_partition_hint" in script
        run = tvm.compile(sch.mod, target=target)["main"]
        for _ in range(3):
            out = np.zeros(expected.shape, spec.dtype)
            run(*inputs, out)
            assert_close(out, expected, spec.dtype, f"{op} {spec.key} {knobs}")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_blocked_schedule_with_a_ring_padding(monkeypatch, mode, layout):
    """A ring padding under the blocked rule: its forward is blocked (the ring is the padded
    input's index map); its grad_input computes the padded domain in blocks and folds the ring
    back; replicate's corners collect from both axes. Both against the reference, 2 threads,
    repeated."""
    from convc.schedules.cpu import winograd as schedule

    monkeypatch.setattr(schedule, "BLOCKED_FROM", 0)
    monkeypatch.setattr(schedule, "FILTER_CHECKED_BELOW", 0)
    monkeypatch.setattr(schedule, "BLOCK_BYTES", 20 << 10)
    monkeypatch.setattr(schedule, "MEASURED_L2", resolve(None).info.l2_bytes)  # unscaled here
    spec = spec_of((2, 16, 9, 13), (32, 16, 3, 3), layout, padding=1, padding_mode=mode,
                   algorithm="winograd", winograd_m=2)
    for op in ("forward", "grad_input"):
        kernel = check(spec, op, bound=ERROR_BOUND[2])
        assert is_winograd_kernel(kernel) and " block " in kernel.tir, op
        inputs = kernel_inputs(spec, op, operands(spec, 3))
        first = kernel(*inputs)
        for _ in range(3):
            np.testing.assert_array_equal(kernel(*inputs), first)


def test_tile_block_is_a_run_of_whole_tiles():
    """Blocks are divisors of a tile row, or whole rows (several where they fit), >= 2 tiles, at
    least one per core, the one nearest the budget; none for small transformed inputs, few tiles
    beside a large filter, or blocks that would re-read a filter > 4x their size where the root
    stages' transformed input is under 2 MiB."""
    from convc.schedules.cpu import winograd as schedule

    def block(h, w, c, m=4, l2=1 << 20, cores=2, batch=1):
        spec = ConvSpec.from_shapes((batch, h, w, c), (3, 3, c, c), padding=1, layout="NHWC")
        return schedule.tile_block(spec, "forward", m, 2 * c, l2, cores)

    assert block(224, 224, 64) == (1, 56)   # 56 tiles per row: the row is nearest the budget
    assert block(224, 224, 64, l2=512 << 10) == (1, 28)  # a divisor of it on a smaller L2
    assert block(73, 73, 96) == (1, 19)     # 19 tiles per row, a prime: the whole row
    assert block(8, 8, 64) is None          # a small transformed input keeps the root stages
    assert block(14, 14, 512, m=2) is None  # few tiles, a large filter: read once per block
    assert block(28, 28, 128) is None       # c3: 0.86 MiB, under BLOCKED_FROM
    assert block(28, 28, 128, batch=8) == (7, 7)
    assert block(28, 28, 128, batch=8, cores=64) is None  # no block shape gives 64 cores work
    # 160ch 28x28 (1.1 MiB): a row of 7 tiles, nearest the budget, would read a filter 11x its
    # own values; the whole image as one block would leave the second core idle
    assert block(28, 28, 160) is None
    assert block(28, 28, 160, cores=1) is None  # the check does not enlarge the nearest block
    assert block(40, 40, 80) == (5, 10)     # 10x10 tiles: 50 is nearest the budget of ~33
    # 256ch 56x56, 7 MiB at the root: the row of 14 tiles, though its filter is 9x its values (the
    # check does not enlarge the block to the 7x14 that would pass it)
    assert block(56, 56, 256) == (1, 14)


def test_tile_block_scales_with_the_l2():
    """Both sizes follow the L2 per core downwards only: a 64ch 32x32 layer (590 KiB of
    transformed input) is blocked on a 512 KiB L2, not on 1 or 2 MiB; VGG's 64ch 224x224 keeps
    its blocks on 2 MiB and halves them on 512 KiB."""
    from convc.schedules.cpu import winograd as schedule

    small = ConvSpec.from_shapes((1, 32, 32, 64), (3, 3, 64, 64), padding=1, layout="NHWC")
    vgg = ConvSpec.from_shapes((1, 224, 224, 64), (3, 3, 64, 64), padding=1, layout="NHWC")
    assert [schedule.tile_block(small, "forward", 4, 96, l2, 2)
            for l2 in (512 << 10, 1 << 20, 2 << 20)] == [(4, 8), None, None]
    assert [schedule.tile_block(vgg, "forward", 4, 96, l2, 2)
            for l2 in (512 << 10, 1 << 20, 2 << 20)] == [(1, 28), (1, 56), (1, 56)]
    big, zen3 = (resolve({"kind": "llvm", "mcpu": cpu, "num-cores": 2})
                 for cpu in ("emeraldrapids", "znver3"))
    assert not schedule.blocked(small, "forward", big) and schedule.blocked(small, "forward", zen3)


def test_l2_size_of_a_target(tmp_path):
    """This CPU's L2 comes from sysfs (level 2, data or unified); another CPU's from the table by
    LLVM name, else 1 MiB; a sysfs that says nothing usable gives None, never an error; the L2 is
    not part of the target's key (records stay keyed as they were)."""
    from convc import target as targets

    assert [targets.parse_cache_size(t) for t in ("2048K\n", "1M", "512", "0K", "big", "", "K")] \
        == [2 << 20, 1 << 20, 512, None, None, None, None]
    cache = tmp_path / "cache"
    caches = [("1", "Data", "48K"), ("1", "Instruction", "32K"), ("2", "Unified", "1280K"),
              ("3", "Unified", "96M")]
    for index, (level, kind, size) in enumerate(caches):
        folder = cache / f"index{index}"
        folder.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(value + "\n")
    read = targets.host_l2_bytes.__wrapped__   # not the memo: this sysfs changes below
    assert read(str(cache)) == 1280 << 10
    (cache / "index2" / "size").write_text("garbage\n")
    assert read(str(cache)) is None
    (cache / "index2" / "size").unlink()       # an entry that cannot be read is skipped
    assert read(str(cache)) is None
    assert read(str(tmp_path / "nothing")) is None
    assert resolve({"kind": "llvm", "mcpu": "znver4"}).info.l2_bytes == 1 << 20
    assert resolve({"kind": "llvm", "mcpu": "sapphirerapids"}).info.l2_bytes == 2 << 20
    assert resolve({"kind": "llvm", "mcpu": "haswell"}).info.l2_bytes == targets.DEFAULT_L2_BYTES
    host = resolve(None).info
    assert host.l2_bytes == (targets.host_l2_bytes() or targets.L2_BYTES.get(
        host.arch, targets.DEFAULT_L2_BYTES))
    assert "l2" not in host.key and str(host.l2_bytes) not in host.key


@pytest.mark.parametrize("layout, groups", [("NCHW", 1), ("NHWC", 1), ("NHWC", 2), ("NHWC", 6),
                                           ("NHWC", 4)])
def test_grad_input_flipped_filter_is_transposed_at_the_root_channels_last(layout, groups):
    """Channels-last grad_input computes the flipped, channel-swapped filter at the root in
    transposed tiles where both channel axes take whole vectors (96 channels; 48 per group in 2
    groups, 16 in 6); 24 per group (4 groups) and channels-first read it inline. Against the
    reference, prepacked too, 2 threads, repeated."""
    import tvm

    from convc.ops import declare
    from convc.schedules.cpu.winograd import schedule_winograd

    spec = spec_of((2, 96, 6, 7), (96, 96 // groups, 3, 3), layout, padding=1, groups=groups,
                   algorithm="winograd", winograd_m=2)
    data, target = operands(spec, 6), resolve(None)
    inputs = kernel_inputs(spec, "grad_input", data)
    expected = reference(spec, "grad_input", **data)
    sch = schedule_winograd(declare(spec, "grad_input").with_attr("global_symbol", "main"), target)
    lanes = resolve(None).info.lanes("float32")
    whole = (96 // groups) % lanes == 0
    assert ('T.sblock("w_flipped")' in sch.mod.script()) == (layout == "NHWC" and whole)
    run = tvm.compile(sch.mod, target=target)["main"]
    for _ in range(3):
        out = np.zeros(expected.shape, spec.dtype)
        run(*inputs, out)
        assert_close(out, expected, spec.dtype, f"grad_input {spec.key}")
    kernel = convc.compile(spec, "grad_input")
    packed = kernel.prepack(inputs[1])
    for _ in range(3):
        assert_close(kernel(inputs[0], packed), expected, spec.dtype, f"prepacked {spec.key}")
