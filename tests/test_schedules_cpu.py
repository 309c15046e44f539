"""The hand-written CPU schedules (schedules/cpu/): every rule against the NumPy references.

Correctness only (performance lives in `convc bench`). Shapes are chosen so that no tile the rules
pick divides them: channel counts that are not multiples of the vector width (16 fp32 lanes on
AVX-512, 8 on AVX2), widths that are not multiples of the register tile, and channel counts above
one vector so the vector paths (not only their remainders) run. Each case also asserts that the
hand-written rule, not the default schedule, produced the kernel.
"""

from __future__ import annotations

import pytest

import convc
from conftest import check_spec, make_spec
from convc.ops import declare
from convc.schedules import RULES
from convc.pool_spec import PoolSpec
from convc.spec import ConvSpec
from convc.target import resolve

OPS = ("forward", "grad_input", "grad_weight")

# (id, input_shape (channels-first), weight_shape (OI*k), stride, padding, dilation, groups)
CASES = [
    # family A (channel vectors): 37 output channels = 2 vectors + 5, width 13 (no tile divides)
    ("2d_wide_odd", (2, 19, 9, 13), (37, 19, 3, 3), 1, 1, 1, 1),
    ("2d_strided_dilated", (1, 18, 12, 11), (33, 18, 3, 3), 2, ((1, 0), (2, 1)), 2, 1),
    ("2d_even_kernel_asym", (1, 17, 10, 9), (32, 17, 2, 4), (1, 2), ((0, 1), (2, 1)), 1, 1),
    # 1x1: the GEMM path (spatial axes fused), odd M = 7 * 9 and odd N
    ("2d_gemm_1x1", (2, 24, 7, 9), (35, 24, 1, 1), 1, 0, 1, 1),
    ("2d_1x1_strided", (1, 20, 9, 9), (40, 20, 1, 1), 2, 0, 1, 1),
    # few output channels (stem-like; grad_input's dx has 3 channels): width vectors in NCHW
    ("2d_stem_like", (1, 3, 21, 19), (20, 3, 7, 7), 2, 3, 1, 1),
    # ... with an even width: grad_input's phased width-vector variant (zeros folded away)
    ("2d_stem_even", (2, 3, 20, 22), (5, 3, 7, 7), 2, 3, 1, 1),
    ("2d_thin_strides_3x2", (1, 3, 9, 10), (4, 3, 3, 3), (3, 2), ((0, 1), (1, 0)), (1, 2), 1),
    # few input channels, many output channels (a stem of stride 1; width vectors on large planes)
    ("2d_thin_input", (2, 3, 9, 13), (37, 3, 3, 3), 1, ((1, 2), (0, 1)), 1, 1),
    # grouped with whole vectors per group, and with fewer channels per group than a vector
    ("2d_groups_wide", (1, 34, 8, 11), (36, 17, 3, 3), 1, 1, 1, 2),
    ("2d_groups_narrow", (2, 12, 9, 10), (18, 4, 3, 3), 2, 1, 1, 3),
    # depthwise (multiplier 1 and 2), channels above one vector and not a multiple of it
    ("2d_depthwise", (2, 21, 11, 13), (21, 1, 3, 3), 1, 1, 1, 21),
    ("2d_depthwise_s2", (1, 19, 12, 9), (19, 1, 3, 3), 2, (1, 0), 1, 19),
    ("2d_depth_multiplier", (1, 5, 9, 9), (10, 1, 3, 3), 1, 1, 1, 5),
    # channels-first depthwise rows that take 4- and 8-lane vectors (28, 40 wide) and whole rows
    ("2d_depthwise_rows", (1, 18, 5, 40), (18, 1, 3, 3), 1, ((1, 1), (7, 5)), 1, 18),
    # 1-D and 3-D
    ("1d_odd", (3, 18, 29), (21, 18, 5), 2, 2, 3, 1),
    ("1d_depthwise", (2, 17, 23), (17, 1, 4), 1, ((1, 2),), 1, 17),
    ("3d_odd", (1, 6, 5, 6, 7), (19, 6, 3, 2, 3), 1, ((1, 0), (0, 1), (1, 1)), 1, 1),
    ("3d_strided_grouped", (1, 8, 7, 6, 6), (34, 4, 3, 3, 3), (2, 1, 2), 1, (1, 2, 1), 2),
]


def _spec(case, layout, dtype="float32", bias=False):
    _, x_shape, w_shape, stride, padding, dilation, groups = case
    ndim = len(x_shape) - 2
    if layout == "last":
        x_shape = (x_shape[0], *x_shape[2:], x_shape[1])
        w_shape = (*w_shape[2:], w_shape[1], w_shape[0])
    names = {1: ("NCW", "NWC"), 2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}[ndim]
    return make_spec(x_shape, w_shape, stride, padding, dilation, groups,
                     layout=names[layout == "last"], dtype=dtype, bias=bias)


def _assert_hand_written(kernels):
    for op, kernel in kernels.items():
        assert kernel.how == "hand-written", f"{op} {kernel.spec.key}: got the {kernel.how} schedule"


@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rules_match_reference(case, layout):
    spec = _spec(case, layout, bias=case[0].startswith("2d_wide"))
    _assert_hand_written(check_spec(spec, ops=OPS))


@pytest.mark.parametrize("dtype", ["float64", "float16"])
@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("case_id", ["2d_wide_odd", "2d_depthwise", "1d_odd"])
def test_rules_other_dtypes(case_id, layout, dtype):
    """float64 has half the lanes; float16 accumulates in float32 and casts in the write-back."""
    case = next(c for c in CASES if c[0] == case_id)
    spec = _spec(case, layout, dtype=dtype, bias=True)
    _assert_hand_written(check_spec(spec, ops=OPS))


def test_row_vector_divides_the_row():
    from convc.schedules.cpu.direct import row_vector

    assert [row_vector(w, 16) for w in (112, 64, 56, 40, 28, 14, 7, 37, 8)] == \
        [16, 32, 8, 8, 4, 14, 7, 16, 8]
    assert all(w % row_vector(w, 16) == 0 for w in range(1, 129) if w % 4 == 0 or w <= 16)


def test_batch_larger_than_one_and_bias():
    spec = _spec(("b", (3, 20, 6, 7), (33, 20, 3, 3), 1, 1, 1, 1), "first", bias=True)
    _assert_hand_written(check_spec(spec, ops=("forward",)))


def test_rules_decline_foreign_functions():
    """A PrimFunc convc did not declare is not the rules' business."""
    from tvm import te

    a = te.placeholder((8,), "float32", name="a")
    b = te.compute((8,), lambda i: a[i] * 2, name="b")
    func = te.create_prim_func([a, b])
    target = resolve("llvm")
    assert all(rule(func, target) is None for rule in RULES["cpu"])


def test_each_rule_takes_only_its_op():
    target = resolve("llvm")
    spec = _spec(CASES[0], "last")
    winograd = ConvSpec.from_shapes((1, 8, 8, 16), (3, 3, 16, 16), padding=1, layout="NHWC",
                                    algorithm="winograd")
    pool = PoolSpec.max_pool((1, 8, 8, 16), 3, 2, 1, layout="NHWC")
    kernels = [(s, op) for s in (spec, winograd) for op in OPS] + [(pool, op) for op in pool.ops]
    for rule in RULES["cpu"]:
        taken = [op for s, op in kernels if rule(declare(s, op), target) is not None]
        assert taken, f"{rule.__name__} took no op"
    for op in OPS:
        takers = [rule.__name__ for rule in RULES["cpu"] if rule(declare(spec, op), target) is not None]
        assert takers, f"no CPU rule takes {op}"


def test_scheduled_tir_is_vectorized_and_parallel():
    """The hand-written kernels carry the structure they are meant to have."""
    spec = _spec(CASES[0], "last")
    for op in OPS:
        tir = convc.compile(spec, op).tir
        assert "T.parallel" in tir and "T.vectorized" in tir, op
        assert 'scope="local"' in tir, f"{op}: no register (local) accumulator"


# The variants that only large layers select (blocked direct convolution for weights beyond
# ~L2/4, rfactor chunks for long grad_weight reductions), forced on small odd shapes by shrinking
# their thresholds.
FORCED = ["2d_wide_odd", "2d_strided_dilated", "2d_gemm_1x1", "2d_groups_wide", "2d_depthwise",
          "1d_odd", "3d_odd"]


def _run_rule(spec, op, data):
    import numpy as np
    import tvm

    from convc.check import kernel_inputs

    func = declare(spec, op).with_attr("global_symbol", "main")
    target = resolve("llvm")
    sch = next(s for s in (rule(func, target) for rule in RULES["cpu"]) if s is not None)
    runner = tvm.compile(sch.mod, target=target)["main"]
    out = np.zeros(spec.weight_shape if op == "grad_weight" else
                   spec.output_shape if op == "forward" else spec.input_shape, spec.dtype)
    runner(*kernel_inputs(spec, op, data), out)
    return out


@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("case_id", FORCED)
def test_large_layer_variants_on_small_shapes(case_id, layout, monkeypatch):
    from conftest import assert_close

    from convc.check import operands, reference
    from convc.schedules.cpu import direct, grad_weight

    monkeypatch.setattr(direct, "WEIGHT_SLICE_BYTES", 0)      # always the blocked variant
    monkeypatch.setattr(direct, "POSITION_BLOCK", 24)         # several position blocks
    monkeypatch.setattr(direct, "WEIGHT_CHUNK_BYTES", 256)    # several channel chunks
    monkeypatch.setattr(grad_weight, "CHUNK_BYTES", 1)        # one rfactor chunk per row
    case = next(c for c in CASES if c[0] == case_id)
    spec = _spec(case, layout, bias=True)
    data = operands(spec)
    for op in OPS:
        got = _run_rule(spec, op, data)
        assert_close(got, reference(spec, op, **data), spec.dtype, f"{op} {spec.key} (forced)")


def test_strided_grad_input_skips_the_zeros():
    """Strided grad_input reads dy through "dy_pad" and folds the zero-insertion test away (the
    phased variants): no "dy_dilated" stage is left, in both vector families (thin channels-first
    layers vectorize along the width, the others along the channels)."""
    from convc.check import check_kernel, operands

    for xs, ws in (((1, 3, 20, 22), (5, 3, 7, 7)), ((1, 20, 9, 10), (24, 20, 3, 3))):
        spec = make_spec(xs, ws, 2, 3 if ws[-1] == 7 else 1)
        kernel = convc.compile(spec, "grad_input")
        assert kernel.how == "hand-written"
        assert 'T.sblock("dy_pad")' in kernel.tir and 'T.sblock("dy_dilated")' not in kernel.tir
        assert check_kernel(kernel, operands(spec)) <= 2e-5


def test_thin_input_channels_first_forward_takes_width_vectors(monkeypatch):
    """Channels-first forward with <= 8 input channels and a large output (stems at 224x224)
    vectorizes along the width (family B); small outputs, strides, 9+ input channels and
    channels-last keep the channel vectors. Both families are in the tuner's grid and compute
    the right thing on odd shapes (37 output channels, 13 wide, a remainder row tile), the rule's
    family first; 2 threads, repeated."""
    from convc.check import check_kernel, operands
    from convc.schedules.cpu import direct

    target = resolve("llvm")

    def family(xs, ws, stride=1, layout="NCHW"):
        spec = make_spec(xs, ws, stride, 1, layout=layout)
        return "A" if direct.plan(spec, "forward", target).family_a else "B"

    assert family((1, 3, 224, 224), (64, 3, 3, 3)) == "B"
    assert family((1, 8, 224, 224), (64, 8, 3, 3)) == "B"
    assert family((1, 3, 56, 56), (64, 3, 3, 3)) == "A"      # 200K output values
    assert family((1, 9, 224, 224), (64, 9, 3, 3)) == "A"
    assert family((1, 3, 224, 224), (32, 3, 3, 3), stride=2) == "A"
    assert family((1, 224, 224, 3), (3, 3, 3, 64), layout="NHWC") == "A"
    monkeypatch.setattr(direct, "WIDE_OUTPUT", 0)             # small shapes take the rule here
    for xs, ws in (((2, 3, 9, 13), (37, 3, 3, 3)), ((1, 5, 10, 7), (20, 5, 5, 5))):
        spec = make_spec(xs, ws, 1, ((1, 2), (0, 1)), bias=True)
        assert not direct.plan(spec, "forward", target).family_a
        kernel, data = convc.compile(spec, "forward"), operands(spec)
        assert kernel.how == "hand-written" and "width-vector" in kernel.tir
        for _ in range(4):
            assert check_kernel(kernel, data) <= 2e-5, spec.key
        grid = direct.direct_knobs(declare(spec, "forward"), target)
        assert grid[0] == {} and len(grid) > 1
        assert all(knobs["width_vector"] is False for knobs in grid[1:])
    monkeypatch.setattr(direct, "WIDE_OUTPUT", 1 << 30)
    grid = direct.direct_knobs(declare(spec, "forward"), target)
    assert grid[-1] == {"width_vector": True} and "width_vector" not in grid[0]
    for wide in (0, 1 << 30):           # every alternative of both grids, against the reference
        monkeypatch.setattr(direct, "WIDE_OUTPUT", wide)
        _check_grid("2d_thin_input", "first", 1, monkeypatch, ops=("forward",))


def test_short_reduction_channels_last_takes_one_vector_by_eight():
    """Channels-last stride-1 forward with <= 27 products per output (3 channels x 3x3) takes one
    channel vector x 8 positions; 8 channels, strides, depthwise and 1x1 keep the rule's tiles;
    the short tile is right on a ragged width and a partial channel vector (37 = 2 x 16 + 5)."""
    from convc.check import check_kernel, operands
    from convc.schedules.cpu import direct

    def short(xs, ws, stride=1, groups=1):
        spec = make_spec(xs, ws, stride, 1, 1, groups, layout="NHWC")
        return direct.short_reduction(direct.geometry(spec, "forward"))

    assert short((1, 224, 224, 3), (3, 3, 3, 64))
    assert not short((1, 224, 224, 8), (3, 3, 8, 64))
    assert not short((1, 224, 224, 3), (3, 3, 3, 64), stride=2)
    assert not short((1, 56, 56, 16), (3, 3, 1, 16), groups=16)
    assert not short((1, 56, 56, 24), (1, 1, 24, 144))
    spec = make_spec((2, 11, 21, 3), (3, 3, 3, 37), 1, 1, layout="NHWC", bias=True)
    kernel, data = convc.compile(spec, "forward"), operands(spec)
    lanes = resolve("llvm").info.lanes("float32")
    assert kernel.how == "hand-written" and f"channel-vector direct v{lanes}" in kernel.tir
    for _ in range(4):
        assert check_kernel(kernel, data) <= 2e-5


def test_depthwise_channels_last_takes_one_vector_by_a_short_row_tile():
    """Channels-last depthwise stride-1 forward and grad_input take one channel vector x a row
    tile whose accumulators and shared input vectors fit the registers (7 of 28 for 7x7 on 32
    registers); stride 2 (phased), grouped
    layers with 2 channels per group and channels-first keep their rules. Against the reference
    on 48 channels (3 vectors), a ragged channel count (37), 2 threads, repeated."""
    from convc.check import check_kernel, operands
    from convc.schedules.cpu import direct

    def geo(xs, ws, groups, stride=1, layout="NHWC", op="forward"):
        k = ws[0] if layout == "NHWC" else ws[-1]
        return direct.geometry(make_spec(xs, ws, stride, k // 2, 1, groups, layout=layout), op)

    lanes = resolve("llvm").info.lanes("float32")
    target = resolve("llvm")
    registers = direct.vector_registers(target)
    for width, k in ((14, 3), (28, 7), (56, 3), (56, 7), (10, 5)):
        g = geo((1, width, width, 48), (k, k, 1, 48), 48)
        assert direct.depthwise_last(g) and direct.default_vectors(g, target) == 1
        _, _, tw_max = direct.channel_tile(g, target, 1)
        tw = direct.default_width(g, tw_max, target)
        # accumulators + the input vectors the unrolled taps share + a weight and a spare
        assert 2 * tw + k - 1 + 2 <= registers and width % tw == 0, (width, k, tw)
    if registers == 32:
        assert direct.default_width(geo((1, 28, 28, 48), (7, 7, 1, 48), 48), 16, target) == 7
    assert direct.depthwise_last(geo((1, 14, 14, 48), (3, 3, 1, 48), 48, op="grad_input"))
    assert not direct.depthwise_last(geo((1, 14, 14, 48), (3, 3, 1, 96), 48))   # 2 per group
    assert not direct.depthwise_last(geo((1, 48, 14, 14), (48, 1, 3, 3), 48, layout="NCHW"))
    for channels, size in ((48, (2, 14, 10)), (37, (1, 9, 11))):
        spec = make_spec((size[0], size[1], size[2], channels), (3, 3, 1, channels), 1, 1, 1,
                         channels, layout="NHWC")
        data = operands(spec)
        for op in ("forward", "grad_input"):
            kernel = convc.compile(spec, op)
            assert kernel.how == "hand-written" and f"channel-vector direct v{lanes}" in kernel.tir
            for _ in range(4):
                assert check_kernel(kernel, data) <= 2e-5, f"{op} {channels}"


def test_group_tiles_do_not_race():
    """Groups whose channel count is not a multiple of the vector tile (24 per group, tiles of 16):
    a tile running past its group wrote over the next group's channels from another thread
    (forward and grad_input, and grad_weight with 18 per group: wrong about one run in three).
    Repeated calls, because a race shows only some of the time."""
    from convc.check import check_kernel, operands

    for layout, xs, ws in (("NCHW", (1, 48, 9, 13), (48, 24, 3, 3)),
                           ("NHWC", (1, 9, 13, 48), (3, 3, 24, 48))):
        spec = make_spec(xs, ws, 1, 1, 1, 2, layout=layout)
        data = operands(spec)
        for op in ("forward", "grad_input", "grad_weight"):
            kernel = convc.compile(spec, op)
            assert kernel.how == "hand-written"
            for _ in range(8):
                assert check_kernel(kernel, data) <= 2e-5, f"{op} {layout}"
    spec = make_spec((1, 34, 8, 11), (36, 17, 3, 3), 1, 1, 1, 2)   # 18 output channels per group
    kernel, data = convc.compile(spec, "grad_weight"), operands(spec)
    assert kernel.how == "hand-written"
    for _ in range(12):
        assert check_kernel(kernel, data) <= 2e-5, "grad_weight, 18 channels per group"


# The tuner's hand space (convc.tuning.space): every alternative a rule lists for its own choices
# (channel vectors, tile widths, blocking, position block, weight chunk, reduction chunks) is a
# schedule a tuning record can select, so each must compute the right thing. The blocked variant
# is offered from a smaller weight slice here so that its knobs are exercised on small shapes.
GRID_CASES = ["2d_wide_odd", "2d_gemm_1x1", "2d_groups_wide", "2d_groups_narrow", "2d_depthwise",
              "1d_odd", "3d_odd"]


def _check_grid(case_id, layout, every, monkeypatch, ops=OPS):
    import numpy as np
    import tvm

    from conftest import assert_close
    from convc.check import kernel_inputs, operands, reference
    from convc.schedules.cpu import direct
    from convc.tuning.space import hand_grid

    monkeypatch.setattr(direct, "WEIGHT_SLICE_BYTES", 4096)
    spec = _spec(next(c for c in CASES if c[0] == case_id), layout, bias=True)
    data, target = operands(spec), resolve("llvm")
    for op in ops:
        want = reference(spec, op, **data)
        grid = hand_grid(declare(spec, op).with_attr("global_symbol", "main"), target)
        assert grid[0][0] is not None, f"{op}: no hand-written rule took it"
        for i, (knobs, sch) in enumerate(grid):
            if i % every:
                continue
            out = np.zeros(want.shape, spec.dtype)
            tvm.compile(sch.mod, target=target)["main"](*kernel_inputs(spec, op, data), out)
            assert_close(out, want, spec.dtype, f"{op} {spec.key} knobs={knobs}")


@pytest.mark.parametrize("layout", ["first", "last"])
def test_hand_grid_alternatives_compute_the_right_thing(layout, monkeypatch):
    """Every fourth alternative of the grid on two shapes with remainders (the rest: -m slow)."""
    for case_id in ("2d_wide_odd", "3d_odd"):
        _check_grid(case_id, layout, 4, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("case_id", GRID_CASES)
def test_every_hand_grid_alternative_computes_the_right_thing(case_id, layout, monkeypatch):
    _check_grid(case_id, layout, 1, monkeypatch)


def test_hand_grid_starts_with_the_rules_own_choice():
    """The first alternative is the schedule the rule makes without knobs (the tuner always
    measures it), and the alternatives are distinct schedules where the rule has choices."""
    import tvm_ffi

    from convc.tuning.space import hand_grid

    target = resolve("llvm")
    for layout in ("first", "last"):
        spec = _spec(CASES[0], layout)
        for op in OPS:
            func = declare(spec, op).with_attr("global_symbol", "main")
            grid = hand_grid(func, target)
            own = next(s for s in (rule(func, target) for rule in RULES["cpu"]) if s is not None)
            assert tvm_ffi.structural_hash(grid[0][1].mod) == tvm_ffi.structural_hash(own.mod)
            assert len({tvm_ffi.structural_hash(s.mod) for _, s in grid}) > 1, op
