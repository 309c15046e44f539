"""Forward and both adjoints against the NumPy references, over the workload grid."""

import numpy as np
import pytest

import convc
from conftest import assert_close, check_spec, make_spec, operands, references
from workloads import spec_params


@pytest.mark.parametrize("spec", spec_params("float32"))
def test_float32_grid(spec):
    check_spec(spec)


@pytest.mark.parametrize("spec", spec_params("float64", layouts=("first",),
                                             families=("odd", "asymmetric", "1d", "3d")))
def test_float64(spec):
    check_spec(spec)


@pytest.mark.parametrize("spec", spec_params("float16", layouts=("first", "last"),
                                             families=("resnet", "1d")))
def test_float16(spec):
    kernels = check_spec(spec)
    # float16 accumulates in float32: the reduction stage must be float32 in the scheduled TIR.
    assert '"float32"' in kernels["forward"].tir or "T.float32" in kernels["forward"].tir


@pytest.mark.parametrize("spec", spec_params("float64", layouts=("first", "last"),
                                             families=("odd", "grouped")))
def test_references_agree(spec):
    """The direct and im2col references are independent formulations: they must agree."""
    x, w, b, dy = operands(spec)
    for direct, im2col, what in zip(references(spec, x, w, b, dy),
                                    references(spec, x, w, b, dy, "im2col"),
                                    ("forward", "grad_input", "grad_weight")):
        assert_close(direct, im2col, "float64", what)


def test_reference_detects_a_wrong_kernel():
    """The comparison can fail: a kernel for another stride is caught."""
    spec = make_spec((1, 3, 9, 9), (4, 3, 3, 3), 1, 1)
    other = make_spec((1, 3, 9, 9), (4, 3, 3, 3), 1, 2)
    x, w, b, dy = operands(spec)
    y_ref, *_ = references(spec, x, w, b, dy)
    wrong = convc.compile(other, "forward")(x, w)
    with pytest.raises(AssertionError):
        assert_close(wrong[:, :, :9, :9] if wrong.shape != y_ref.shape else wrong, y_ref,
                     "float32", "wrong kernel")


ADJOINT_CASES = [
    make_spec((2, 4, 11, 10), (6, 2, 3, 3), 2, ((1, 0), (2, 1)), 2, 2, dtype="float64"),
    make_spec((1, 3, 13), (5, 3, 4), 3, 2, 2, 1, dtype="float64"),
    make_spec((1, 2, 5, 6, 4), (4, 1, 2, 3, 2), (1, 2, 1), 1, (2, 1, 1), 2, dtype="float64"),
    make_spec((2, 7, 9, 8), (3, 3, 8, 5), 2, 1, 1, 1, layout="NHWC", dtype="float64"),
] + [  # padding modes: grad_input's fold is the adjoint of the padding ring
    make_spec((2, 5, 6, 4, 4), (3, 2, 3, 2, 4), (2, 1, 1), ((2, 1), (0, 2), (1, 1)), (1, 2, 1), 2,
              layout="NDHWC", dtype="float64", padding_mode=mode)
    for mode in ("reflect", "replicate", "circular")
]


@pytest.mark.parametrize("spec", ADJOINT_CASES, ids=lambda s: s.key)
def test_adjoint_identity(spec):
    """<conv(x, W), v> = <x, grad_input(v, W)> = <W, grad_weight(x, v)> (float64)."""
    x, w, _, v = operands(spec, seed=1)
    y = convc.compile(spec, "forward")(x, w)
    dx = convc.compile(spec, "grad_input")(v, w)
    dw = convc.compile(spec, "grad_weight")(x, v)
    lhs = float(np.vdot(y, v))
    assert lhs == pytest.approx(float(np.vdot(x, dx)), rel=1e-12, abs=1e-12)
    assert lhs == pytest.approx(float(np.vdot(w, dw)), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("spec", ADJOINT_CASES[:3], ids=lambda s: s.key)
def test_finite_differences(spec):
    """Central differences of L = <conv(x, W), v> match grad_input and grad_weight (float64)."""
    x, w, _, v = operands(spec, seed=2)
    forward = convc.compile(spec, "forward")
    dx = convc.compile(spec, "grad_input")(v, w)
    dw = convc.compile(spec, "grad_weight")(x, v)

    def loss(xx, ww):
        return float(np.vdot(forward(xx, ww), v))

    rng = np.random.default_rng(3)
    eps = 1e-6
    for _ in range(6):
        i = tuple(int(rng.integers(n)) for n in x.shape)
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        assert (loss(xp, w) - loss(xm, w)) / (2 * eps) == pytest.approx(dx[i], rel=1e-6, abs=1e-8)
        j = tuple(int(rng.integers(n)) for n in w.shape)
        wp, wm = w.copy(), w.copy()
        wp[j] += eps
        wm[j] -= eps
        assert (loss(x, wp) - loss(x, wm)) / (2 * eps) == pytest.approx(dw[j], rel=1e-6, abs=1e-8)
