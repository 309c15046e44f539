"""One call path: the target resolved once where it enters, cached calls that skip straight to
the compiled function, and a memo that never lets a bad call through. (No timing here: the
overhead figures come from `convc bench --overhead`.)"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import convc
import convc.target
from conftest import assert_close, make_spec, operands, references, torch_or_skip
from convc.spec import ConvSpec


def calls_of(functions, action) -> dict:
    """{function name: calls} of each function in `functions` while `action()` runs (in this
    thread), however the callers imported them."""
    codes = {f.__code__: f.__qualname__ for f in functions}
    counts = dict.fromkeys(codes.values(), 0)

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            counts[codes[frame.f_code]] += 1

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return counts


def resolves(action) -> int:
    return calls_of([convc.target.resolve], action)["resolve"]


# --- the target, resolved once ---------------------------------------------------------------

@pytest.mark.parametrize("target", [None, "llvm", {"kind": "llvm"}])
def test_a_compile_resolves_its_target_once(target):
    spec = make_spec((1, 3, 7, 6), (5, 3, 3, 3), 1, 1)   # a kernel no other test compiles
    convc.kernel.clear_memory_cache()
    assert resolves(lambda: convc.compile(spec, "grad_input", target)) == 1
    assert resolves(lambda: convc.compile(spec, "grad_input", target)) == 1   # memo hit


def test_a_cuda_compile_resolves_its_target_once():
    from convc.build import cuda

    try:
        cuda.find_nvcc()
    except cuda.NvccNotFound:
        pytest.skip("nvcc (the CUDA toolkit) is not installed")
    spec = make_spec((1, 2, 5, 5), (3, 2, 3, 3), 1, 1)
    assert resolves(lambda: convc.compile(spec, "forward", "cuda")) == 1


def test_an_export_resolves_its_target_once(tmp_path):
    spec = make_spec((1, 3, 6, 6), (4, 3, 3, 3), 1, 1)
    assert resolves(lambda: convc.export_library(spec, tmp_path / "a.so", ops=["forward"])) == 1


def test_a_cached_functional_call_resolves_nothing_and_builds_no_spec():
    torch = torch_or_skip()
    spec = make_spec((2, 4, 9, 8), (6, 2, 3, 3), 2, 1, 1, 2, bias=True)
    x, w, b, dy = operands(spec)
    calls = {
        "forward": lambda: convc.conv2d(x, w, b, stride=2, padding=1, groups=2),
        "grad_input": lambda: convc.conv2d_grad_input(x.shape, w, dy, stride=2, padding=1,
                                                      groups=2),
        "grad_weight": lambda: convc.conv2d_grad_weight(x, w.shape, dy, stride=2, padding=1,
                                                        groups=2),
        "forward, torch": lambda: convc.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                               torch.from_numpy(b), stride=2, padding=1, groups=2),
        "forward, unbatched": lambda: convc.conv2d(x[0], w, b, stride=2, padding=1, groups=2),
    }
    watched = [convc.target.resolve, ConvSpec.from_shapes, ConvSpec.validate, convc.compile]
    for name, call in calls.items():
        first = calls_of(watched, call)
        assert first["resolve"] == 1 and first["ConvSpec.from_shapes"] == 1, (name, first)
        again = calls_of(watched, call)
        assert set(again.values()) == {0}, (name, again)


# --- cached calls compute what the full path computes ------------------------------------------

def test_cached_calls_give_the_same_answers_in_every_form():
    torch = torch_or_skip()
    spec = make_spec((2, 3, 8, 7), (4, 3, 3, 3), 1, 1, bias=True)
    x, w, b, dy = operands(spec)
    y_ref, dx_ref, dw_ref = references(spec, x, w, b, dy)
    t = {k: torch.from_numpy(v) for k, v in dict(x=x, w=w, b=b, dy=dy).items()}
    for _ in range(3):   # the first call takes the full path, the others the plan
        assert_close(convc.conv2d(x, w, b, padding=1), y_ref, "float32", "forward")
        assert_close(convc.conv2d_grad_input(x.shape, w, dy, padding=1), dx_ref, "float32", "dx")
        assert_close(convc.conv2d_grad_weight(x, w.shape, dy, padding=1), dw_ref, "float32", "dw")
        y = convc.conv2d(t["x"], t["w"], t["b"], padding=1)
        assert isinstance(y, torch.Tensor) and y.data_ptr() % 64 == 0
        assert_close(y.numpy(), y_ref, "float32", "forward, torch")
        dx = convc.conv2d_grad_input(t["x"].shape, t["w"], t["dy"], padding=1)
        assert isinstance(dx, torch.Tensor)
        assert_close(dx.numpy(), dx_ref, "float32", "dx, torch")
        dw = convc.conv2d_grad_weight(t["x"][0], w.shape, t["dy"][0], padding=1)  # unbatched
        assert isinstance(dw, torch.Tensor) and dw.shape == w.shape
        assert_close(dw.numpy(), convc.conv2d_grad_weight(x[:1], w.shape, dy[:1], padding=1),
                     "float32", "dw, unbatched torch")
        y0 = convc.conv2d(x[1], w, b, padding=1)                                       # unbatched
        assert y0.shape == y_ref.shape[1:] and y0.ctypes.data % 64 == 0
        assert_close(y0, y_ref[1], "float32", "forward, unbatched")


def test_memory_a_plan_cannot_take_goes_the_full_way():
    """After a cached call, arrays whose memory the kernel cannot read in place (read-only,
    Fortran order, a strided view, channels_last tensors, a mix of NumPy and torch) still give
    the right answer, as the same kind of array the input was."""
    torch = torch_or_skip()
    spec = make_spec((1, 3, 8, 8), (4, 3, 3, 3), 1, 1)
    x, w, _, dy = operands(spec)
    y_ref, *_ = references(spec, x, w, None, dy)
    assert_close(convc.conv2d(x, w, padding=1), y_ref, "float32", "first call")
    read_only = x.copy()
    read_only.setflags(write=False)
    strided = np.repeat(x, 2, axis=3)[..., ::2]
    for name, xs in (("read-only", read_only), ("fortran", np.asfortranarray(x)),
                     ("strided", strided)):
        assert_close(convc.conv2d(xs, w, padding=1), y_ref, "float32", name)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    assert_close(convc.conv2d(tx, tw, padding=1).numpy(), y_ref, "float32", "torch")
    last = convc.conv2d(tx.to(memory_format=torch.channels_last), tw, padding=1)
    assert isinstance(last, torch.Tensor)
    assert_close(last.numpy(), y_ref, "float32", "channels_last")
    mixed = convc.conv2d(tx, w, padding=1)
    assert isinstance(mixed, torch.Tensor)
    assert_close(mixed.numpy(), y_ref, "float32", "torch input, NumPy weight")
    assert isinstance(convc.conv2d(x, tw, padding=1), np.ndarray)
    grad = convc.conv2d(tx, torch.nn.Parameter(tw.clone()), padding=1)
    assert not grad.requires_grad
    assert_close(grad.numpy(), y_ref, "float32", "a Parameter weight")


X, W = np.zeros((1, 4, 8, 8), np.float32), np.zeros((6, 2, 3, 3), np.float32)

# Each refused although a call with arguments equal to it (True == 1, 1.0 == 1) was cached.
AFTER_A_GOOD_CALL = [
    (dict(stride=True), TypeError, "stride=True"),
    (dict(stride=1.0), TypeError, "stride=1.0"),
    (dict(stride=np.bool_(True)), TypeError, "stride"),
    (dict(groups=2.0), ValueError, "groups=2.0"),
    (dict(padding=(1.0, 1)), ValueError, "padding"),
    (dict(padding=((True, 1), (1, 1))), ValueError, "padding"),
    (dict(weight=W.astype(np.float64)), TypeError, "weight has dtype float64"),
    (dict(input=X.astype(">f4")), TypeError, "input has dtype >f4"),
    (dict(weight=W[:5]), ValueError, "out_channels=5"),
    (dict(input=X.tolist()), TypeError, "input is a list"),
    (dict(target="opencl"), ValueError, "target='opencl'"),
    (dict(layout="NHWC"), ValueError, "weight_shape"),
]


@pytest.mark.parametrize("change,error,words", AFTER_A_GOOD_CALL,
                         ids=[str(i) for i in range(len(AFTER_A_GOOD_CALL))])
def test_the_memo_lets_no_bad_call_through(change, error, words):
    good = dict(input=X, weight=W, stride=1, padding=1, groups=2)
    for _ in range(2):
        assert convc.conv2d(**good).shape == (1, 6, 8, 8)
    with pytest.raises(error, match=words.replace("(", r"\(")):
        convc.conv2d(**{**good, **change})


def test_grad_input_size_equal_but_not_int_is_refused():
    dy = np.zeros((1, 6, 8, 8), np.float32)
    for _ in range(2):
        assert convc.conv2d_grad_input((1, 4, 8, 8), W, dy, padding=1, groups=2).shape == X.shape
    with pytest.raises(TypeError, match="input_size"):
        convc.conv2d_grad_input((1, 4, 8.0, 8), W, dy, padding=1, groups=2)


def test_plans_are_forgotten_with_the_kernels():
    """clear_memory_cache (as convc.tune calls it when records change) drops the call plans too:
    the next call compiles again and may get another schedule."""
    spec = make_spec((1, 2, 6, 6), (2, 2, 3, 3), 1, 1)
    x, w, _, _ = operands(spec)
    convc.conv2d(x, w, padding=1)
    first = convc.compile(spec, "forward")
    convc.kernel.clear_memory_cache()
    watched = [convc.compile]
    assert calls_of(watched, lambda: convc.conv2d(x, w, padding=1))["compile"] == 1
    assert convc.compile(spec, "forward") is not first
