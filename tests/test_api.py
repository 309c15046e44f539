"""The functional API: PyTorch's semantics, unbatched inputs, awkward memory, DLPack, caching."""

import os
import subprocess
import sys

import numpy as np
import pytest

import convc
from conftest import assert_close, make_spec, operands, references, torch_or_skip
from convc import reference as ref
from convc.kernel import ALIGNMENT, aligned_copy, aligned_empty

FUNCS = {1: (convc.conv1d, convc.conv1d_grad_input, convc.conv1d_grad_weight),
         2: (convc.conv2d, convc.conv2d_grad_input, convc.conv2d_grad_weight),
         3: (convc.conv3d, convc.conv3d_grad_input, convc.conv3d_grad_weight)}


def _check_api(x, w, b, dy, kwargs, layout=None, dtype="float32"):
    """Call the three functions and compare with the direct reference (channels-first data)."""
    ndim = w.ndim - 2
    conv, grad_input, grad_weight = FUNCS[ndim]
    unbatched = x.ndim == ndim + 1
    spec = make_spec(x[None].shape if unbatched else x.shape, w.shape, layout=layout,
                     dtype=dtype, bias=b is not None, **kwargs)
    xb = x[None] if unbatched else x
    dyb = dy[None] if unbatched else dy
    y_ref, dx_ref, dw_ref = references(spec, xb, w, b, dyb)
    if unbatched:
        y_ref, dx_ref = y_ref[0], dx_ref[0]
    assert_close(conv(x, w, b, layout=layout, **kwargs), y_ref, dtype, "forward")
    assert_close(grad_input(x.shape, w, dy, layout=layout, **kwargs), dx_ref, dtype, "grad_input")
    assert_close(grad_weight(x, w.shape, dy, layout=layout, **kwargs), dw_ref, dtype, "grad_weight")


def test_unbatched_2d_and_1d():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 9, 8)).astype("float32")
    w = rng.standard_normal((4, 3, 3, 3)).astype("float32")
    b = rng.standard_normal(4).astype("float32")
    kwargs = dict(stride=2, padding=1)
    dy = rng.standard_normal((4, 5, 4)).astype("float32")
    _check_api(x, w, b, dy, kwargs)
    x1 = rng.standard_normal((3, 10)).astype("float32")
    w1 = rng.standard_normal((6, 1, 3)).astype("float32")
    dy1 = rng.standard_normal((6, 10)).astype("float32")
    _check_api(x1, w1, None, dy1, dict(padding="same", groups=3))


def test_unbatched_channels_last():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 6, 5)).astype("float32")         # (H, W, C)
    w = rng.standard_normal((3, 3, 5, 4)).astype("float32")      # HWIO
    y = convc.conv2d(x, w, padding=1, layout="NHWC")
    expected = ref.to_channels_last(ref.forward(ref.to_channels_first(x[None]), ref.weight_to_oi(w),
                                                (1, 1), [(1, 1), (1, 1)], (1, 1), 1))[0]
    assert_close(y, expected, "float32", "unbatched NHWC")


def _awkward(array, kind):
    """The same values in awkward but legal memory."""
    if kind == "unaligned":
        raw = np.empty(array.size * array.itemsize + 64 + array.itemsize, np.uint8)
        offset = (-raw.ctypes.data) % 64 + array.itemsize    # one element past a 64-byte boundary
        view = raw[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
        view[...] = array
        assert view.ctypes.data % 64 != 0
        return view
    if kind == "fortran":
        return np.asfortranarray(array)
    if kind == "strided":
        big = np.zeros(tuple(2 * s for s in array.shape), array.dtype)
        big[tuple(slice(None, None, 2) for _ in array.shape)] = array
        return big[tuple(slice(None, None, 2) for _ in array.shape)]
    if kind == "reversed":
        flipped = np.ascontiguousarray(array[..., ::-1])
        return flipped[..., ::-1]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["unaligned", "fortran", "strided", "reversed"])
def test_awkward_memory(kind):
    spec = make_spec((2, 3, 10, 9), (5, 3, 3, 2), 2, 1, bias=True)
    x, w, b, dy = operands(spec)
    y_ref, dx_ref, dw_ref = references(spec, x, w, b, dy)
    for _ in range(20):   # the alignment crash was intermittent: call many times
        y = convc.conv2d(_awkward(x, kind), _awkward(w, kind), _awkward(b, kind), stride=2, padding=1)
        assert_close(y, y_ref, "float32", f"forward {kind}")
    dx = convc.conv2d_grad_input(x.shape, _awkward(w, kind), _awkward(dy, kind), stride=2, padding=1)
    assert_close(dx, dx_ref, "float32", f"grad_input {kind}")
    dw = convc.conv2d_grad_weight(_awkward(x, kind), w.shape, _awkward(dy, kind), stride=2, padding=1)
    assert_close(dw, dw_ref, "float32", f"grad_weight {kind}")


def test_kernel_out_argument_including_awkward_destinations():
    spec = make_spec((1, 3, 8, 8), (4, 3, 3, 3), 1, 1)
    x, w, _, dy = operands(spec)
    y_ref, *_ = references(spec, x, w, None, dy)
    kernel = convc.compile(spec, "forward")
    out = np.empty(spec.output_shape, "float32")
    assert kernel(x, w, out=out) is out
    assert_close(out, y_ref, "float32", "out=")
    for kind in ("unaligned", "fortran", "strided"):
        dest = _awkward(np.zeros(spec.output_shape, "float32"), kind)
        assert kernel(x, w, out=dest) is dest
        assert_close(dest, y_ref, "float32", f"out= {kind}")
    with pytest.raises(ValueError, match="out"):
        kernel(x, w, out=np.empty((1, 4, 8, 9), "float32"))
    with pytest.raises(TypeError, match="dtype"):
        kernel(x, w, out=np.empty(spec.output_shape, "float64"))


@pytest.mark.parametrize("shape,dtype", [((3, 5, 7), "float32"), ((1,), "float64"),
                                         ((2, 0, 4), "float16"), ((), "float32")])
def test_aligned_empty(shape, dtype):
    for _ in range(8):    # NumPy's own allocations land on varying 16-byte offsets
        array = aligned_empty(shape, dtype)
        assert array.shape == shape and array.dtype == np.dtype(dtype)
        assert array.flags.c_contiguous
        assert array.size == 0 or array.ctypes.data % ALIGNMENT == 0
        array[...] = 1
        source = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
        copy = aligned_copy(source)
        assert copy.size == 0 or copy.ctypes.data % ALIGNMENT == 0
        np.testing.assert_array_equal(copy, source)


def test_outputs_convc_allocates_are_cache_line_aligned():
    spec = make_spec((1, 3, 8, 8), (4, 3, 3, 3), 1, 1)
    x, w, _, dy = operands(spec)
    y_ref, *_ = references(spec, x, w, None, dy)
    for _ in range(8):
        y = convc.compile(spec, "forward")(x, w)
        assert y.ctypes.data % ALIGNMENT == 0
        assert_close(y, y_ref, "float32", "aligned output")


def test_empty_batch():
    x = np.zeros((0, 3, 8, 8), "float32")
    w = np.ones((4, 3, 3, 3), "float32")
    assert convc.conv2d(x, w, padding=1).shape == (0, 4, 8, 8)
    dy = np.zeros((0, 4, 8, 8), "float32")
    assert convc.conv2d_grad_input(x.shape, w, dy, padding=1).shape == (0, 3, 8, 8)
    dw = convc.conv2d_grad_weight(x, w.shape, dy, padding=1)
    assert dw.shape == w.shape and not dw.any()


class _DLPackOnly:
    """A tensor that offers nothing but the DLPack protocol."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_dlpack_inputs():
    spec = make_spec((1, 3, 6, 6), (2, 3, 3, 3), 1, 1)
    x, w, _, dy = operands(spec)
    y_ref, *_ = references(spec, x, w, None, dy)
    y = convc.conv2d(_DLPackOnly(x), _DLPackOnly(w), padding=1)
    assert_close(y, y_ref, "float32", "DLPack inputs")


def test_caches_return_the_same_kernel_and_reuse_the_disk(monkeypatch):
    spec = make_spec((1, 2, 5, 5), (3, 2, 3, 3), 1, 1)
    kernel = convc.compile(spec, "grad_weight")
    assert convc.compile(spec, "grad_weight") is kernel
    assert kernel.how in ("tuned", "hand-written", "default")
    assert "T.sblock" in kernel.tir and kernel.source
    assert kernel.library is not None and kernel.library.exists()
    from convc.build import llvm

    convc.kernel.clear_memory_cache()

    def no_compile(*args, **kwargs):
        raise AssertionError("the disk cache should have served this kernel")

    monkeypatch.setattr(llvm.tvm, "compile", no_compile)
    again = convc.compile(spec, "grad_weight")
    assert again is not kernel and again.library == kernel.library
    x, _, _, dy = operands(spec)
    np.testing.assert_array_equal(again(x, dy), kernel(x, dy))


def test_two_processes_compiling_at_once(tmp_path):
    """Two processes compiling the same kernel into one fresh cache directory both succeed."""
    script = (
        "import numpy as np, convc\n"
        "spec = convc.ConvSpec.from_shapes((1, 3, 7, 7), (5, 3, 3, 3), padding=1)\n"
        "k = convc.compile(spec, 'forward')\n"
        "y = k(np.ones(spec.input_shape, 'float32'), np.ones(spec.weight_shape, 'float32'))\n"
        "assert abs(float(y[0, 0, 3, 3]) - 27.0) < 1e-4\n"
        "print('ok')\n")
    env = {**os.environ, "CONVC_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert out.strip() == "ok"
    assert len(list(tmp_path.glob("*.so"))) == 1
    assert not list(tmp_path.glob(".*"))     # no temporary files left behind


# --- PyTorch parity (optional extra) -----------------------------------------------------------

TORCH_CASES = [
    (2, (2, 4, 11, 10), (6, 2, 3, 3), dict(stride=2, padding=1, dilation=2, groups=2)),
    (2, (1, 3, 7, 8), (4, 3, 4, 2), dict(padding="same")),
    (2, (3, 9, 8), (4, 3, 3, 3), dict(stride=(2, 1), padding=(0, 1))),        # unbatched
    (1, (2, 4, 19), (6, 4, 5), dict(stride=2, padding=2, dilation=3)),
    (3, (1, 4, 6, 5, 7), (4, 1, 3, 3, 3), dict(padding="same", groups=4)),
    (2, (1, 6, 9, 9), (6, 6, 3, 3), dict(padding="valid", stride=3)),
]


@pytest.mark.parametrize("ndim,xs,ws,kwargs", TORCH_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_pytorch(ndim, xs, ws, kwargs, dtype):
    torch = torch_or_skip()
    import torch.nn.functional as F

    rng = np.random.default_rng(4)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    conv_t = getattr(F, f"conv{ndim}d")
    y_t = conv_t(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **kwargs).numpy()
    conv, grad_input, grad_weight = FUNCS[ndim]
    assert_close(conv(x, w, b, **kwargs), y_t, dtype, "forward vs torch")
    dy = rng.standard_normal(y_t.shape).astype(dtype)
    if kwargs.get("padding") in ("same", "valid"):
        # torch.nn.grad takes no string padding: take the gradients from autograd instead.
        xt = torch.from_numpy(x).requires_grad_()
        wt = torch.from_numpy(w).requires_grad_()
        conv_t(xt, wt, **kwargs).backward(torch.from_numpy(dy))
        gi, gw = xt.grad.numpy(), wt.grad.numpy()
    else:
        # torch.nn.grad takes batched tensors only: compare unbatched calls with batch-of-one.
        unbatched = x.ndim == ndim + 1
        xb, dyb = (x[None], dy[None]) if unbatched else (x, dy)
        gi = getattr(torch.nn.grad, f"conv{ndim}d_input")(xb.shape, torch.from_numpy(w),
                                                           torch.from_numpy(dyb), **kwargs).numpy()
        gw = getattr(torch.nn.grad, f"conv{ndim}d_weight")(torch.from_numpy(xb), w.shape,
                                                            torch.from_numpy(dyb), **kwargs).numpy()
        gi = gi[0] if unbatched else gi
    assert_close(grad_input(x.shape, w, dy, **kwargs), gi, dtype, "grad_input vs torch")
    assert_close(grad_weight(x, w.shape, dy, **kwargs), gw, dtype, "grad_weight vs torch")


def test_torch_tensors_in_torch_tensors_out():
    torch = torch_or_skip()
    x = torch.randn(1, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    y = convc.conv2d(x, w, padding=1)
    assert isinstance(y, torch.Tensor)
    expected = torch.nn.functional.conv2d(x, w.detach(), padding=1)
    assert torch.allclose(y, expected, atol=1e-5)
