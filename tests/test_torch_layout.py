"""convc.torch.layout's weight repacks: channels_last weights go to and from the channels-last
kernels' (*k, I/groups, O) through convc's compiled 2-D transpose (convc.build.transpose); the
result must equal PyTorch's own permute copy bit for bit, in every dtype, on sizes the transpose's
tiles do not divide, and a weight gradient must come back in the weight's channels_last strides.
Skipped without torch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from convc.torch import layout  # noqa: E402

CL, CL3 = torch.channels_last, torch.channels_last_3d
SHAPES = [((64, 32, 3, 3), CL), ((5, 3, 3, 3), CL), ((7, 1, 3, 3), CL), ((17, 6, 1, 1), CL),
          ((6, 4, 2, 3, 3), CL3), ((8, 3, 3), None), ((4, 4, 3, 3), None)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("shape,memory_format", SHAPES)
def test_pack_and_unpack_equal_the_permute_copy(shape, memory_format, dtype, monkeypatch):
    monkeypatch.setattr(layout, "TRANSPOSE_MIN_ELEMENTS", 0)   # the kernel on every size
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    if memory_format is not None:
        w = w.to(memory_format=memory_format)
    ndim = w.dim() - 2
    packed = layout.pack_weight(w, True)
    assert packed.is_contiguous()
    assert torch.equal(packed, w.permute(layout.WEIGHT_TO_LAST[ndim]).contiguous())
    back = layout.unpack_weight(packed, True)
    assert torch.equal(back, w)
    assert back.stride() == layout.empty_weight(w, w.shape, True).stride()


def test_the_transpose_runs_for_large_channels_last_weights_only():
    layout._TRANSPOSES.clear()
    big = (64, 128, 3, 3)
    assert torch.Size(big).numel() >= layout.TRANSPOSE_MIN_ELEMENTS
    layout.pack_weight(torch.randn(big), True)               # contiguous OIHW: aten's copy
    layout.pack_weight(torch.randn(4, 4, 3, 3).to(memory_format=CL), True)   # small: aten's
    assert not layout._TRANSPOSES
    w = torch.randn(big).to(memory_format=CL)
    packed = layout.pack_weight(w, True)
    assert (64, 1152, torch.float32) in layout._TRANSPOSES
    assert torch.equal(layout.unpack_weight(packed, True), w)
    assert (1152, 64, torch.float32) in layout._TRANSPOSES


def test_a_weight_that_requires_grad_is_packed():
    w = torch.randn(64, 128, 3, 3).to(memory_format=CL).requires_grad_()
    assert torch.equal(layout.pack_weight(w, True), w.detach().permute(2, 3, 1, 0).contiguous())


def test_channels_last_weight_gradients_share_a_scratch_but_never_each_other():
    """Channels-last grad_weight kernels write into one per-thread scratch buffer that
    unpack_weight copies out of: consecutive gradients of different shapes and dtypes (the
    buffer grows, then is reused) each equal PyTorch's, and an earlier one is not overwritten by
    a later call. Channels-first gradients are new tensors."""
    import torch.nn.functional as F

    from convc.torch import ops

    g = torch.Generator().manual_seed(3)
    grads, expected = [], []
    for c, k, dtype in ((8, 16, torch.float64), (32, 64, torch.float32), (8, 16, torch.float32),
                        (32, 64, torch.float32)):
        x = torch.randn(2, c, 6, 5, generator=g, dtype=dtype).to(memory_format=CL)
        dy = torch.randn(2, k, 6, 5, generator=g, dtype=dtype).to(memory_format=CL)
        w = torch.zeros(k, c, 3, 3, dtype=dtype, requires_grad=True)
        F.conv2d(x, w, padding=1).backward(dy)
        grads.append(ops.grad_weight_impl(x, dy, [k, c, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1,
                                          "zeros"))
        expected.append(w.grad.clone())
    for got, want in zip(grads, expected):
        assert got.is_contiguous(memory_format=CL)
        torch.testing.assert_close(got, want)
    pointers = {t.untyped_storage().data_ptr() for t in grads}
    assert len(pointers) == len(grads)
    assert layout.weight_destination((4, 4), torch.float32, True)._base is not None  # scratch
    assert layout.weight_destination((4, 4), torch.float32, False)._base is None     # new


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 3, 1, 5), (2, 1, 4, 5), (2, 3, 1, 1),
                                   (1, 1, 1, 1), (2, 3, 2, 4, 5), (1, 4, 1, 1, 3), (2, 3, 5)])
def test_is_channels_last_is_the_permuted_views_contiguity(shape):
    """is_channels_last (PyTorch's memory-format test for 4-D and 5-D) agrees with its
    definition, the (N, *spatial, C) view being contiguous and (N, C, *spatial) not, on tensors
    with size-1 axes (whose strides neither test reads), transposed and sliced ones."""
    ndim = len(shape) - 2
    base = torch.randn(shape)
    candidates = [base, base.permute(layout.TO_LAST[ndim]).contiguous().permute(
        layout.FROM_LAST[ndim]), base.transpose(-1, -2), base[..., ::2]]
    if len(shape) in (4, 5):
        candidates.append(base.to(memory_format=CL if len(shape) == 4 else CL3))
    for t in candidates:
        definition = (not t.is_contiguous()
                      and t.permute(layout.TO_LAST[ndim]).is_contiguous())
        assert layout.is_channels_last(t) == definition, (shape, t.stride())
