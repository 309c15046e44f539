"""Plain NumPy references for convolution and its two adjoints. Imports nothing from TVM or convc.

Two independent formulations of each op:
  * direct: a loop over kernel taps, each tap a strided slice of the padded input and an einsum;
    grad_input scatters into a padded buffer (the adjoint read literally, not as a transposed conv);
  * im2col: the column matrix X̂ (one row per (channel, tap), one column per output position);
    forward = W X̂, grad_input = col2im(Wᵀ dy), grad_weight = dy X̂ᵀ.
They are slow and obvious on purpose. Arguments follow PyTorch's channels-first conventions:
x (N, C, *in), w (K, C/groups, *k), dy (N, K, *out); `pad` is a list of (before, after) pairs;
`mode` is the padding mode ("zeros", "reflect", "replicate", "circular", as nn.ConvNd names them).
The adjoint of a padding that copies input elements into the ring adds the ring's gradient back
onto the elements it copied (pad_adjoint), as F.pad's backward does. Computation is in float64 (or the input dtype if wider); callers cast the result.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def out_size(in_size, kernel, stride, dilation, pad):
    return tuple((i + pb + pa - d * (k - 1) - 1) // s + 1
                 for i, k, s, d, (pb, pa) in zip(in_size, kernel, stride, dilation, pad))


# nn.ConvNd's padding modes as np.pad modes.
NP_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad_input(x, pad, mode="zeros"):
    """(N, C, *in) -> (N, C, *padded): the ring filled as `mode` says."""
    return np.pad(x, [(0, 0), (0, 0), *pad], mode=NP_PAD_MODES[mode])


def pad_adjoint(xp, in_size, pad, mode="zeros"):
    """The adjoint of pad_input: (N, C, *padded) -> (N, C, *in), every padded element added onto
    the input element it is a copy of (zeros: the ring is dropped, a crop)."""
    if mode == "zeros":
        crop = tuple(slice(pb, pb + i) for i, (pb, _) in zip(in_size, pad))
        return xp[(slice(None), slice(None)) + crop]
    n, c = xp.shape[:2]
    source = np.pad(np.arange(int(np.prod(in_size))).reshape(in_size), pad,
                    mode=NP_PAD_MODES[mode])  # flat input index of every padded element
    dx = np.zeros((n, c, int(np.prod(in_size))), dtype=xp.dtype)
    np.add.at(dx, (slice(None), slice(None), source.ravel()), xp.reshape(n, c, -1))
    return dx.reshape(n, c, *in_size)


def _tap_slices(tap, out, stride, dilation):
    """Slices of the padded input that tap `tap` reads for every output position."""
    return tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                 for t, o, s, d in zip(tap, out, stride, dilation))


def _grouped(a, groups, axis=1):
    """(N, G*Cg, ...) -> (N, G, Cg, ...)"""
    shape = a.shape
    return a.reshape(shape[:axis] + (groups, shape[axis] // groups) + shape[axis + 1:])


def forward(x, w, stride, pad, dilation, groups, bias=None, mode="zeros"):
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, c, *in_size = x.shape
    k, cg, *kernel = w.shape
    out = out_size(in_size, kernel, stride, dilation, pad)
    xp = pad_input(x, pad, mode)
    wg = w.reshape(groups, k // groups, cg, *kernel)
    y = np.zeros((n, groups, k // groups, *out))
    for tap in itertools.product(*[range(kk) for kk in kernel]):
        patch = _grouped(xp[(slice(None), slice(None)) + _tap_slices(tap, out, stride, dilation)], groups)
        y += np.einsum("ngc...,gkc->ngk...", patch, wg[(Ellipsis, *tap)])
    y = y.reshape(n, k, *out)
    if bias is not None:
        y += np.asarray(bias, np.float64).reshape((1, k) + (1,) * len(out))
    return y


def grad_input(input_size, w, dy, stride, pad, dilation, groups, mode="zeros"):
    w = np.asarray(w, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    n, c, *in_size = input_size
    k, cg, *kernel = w.shape
    out = dy.shape[2:]
    padded = [i + pb + pa for i, (pb, pa) in zip(in_size, pad)]
    dxp = np.zeros((n, groups, cg, *padded))
    wg = w.reshape(groups, k // groups, cg, *kernel)
    dyg = _grouped(dy, groups)
    for tap in itertools.product(*[range(kk) for kk in kernel]):
        region = (slice(None),) * 3 + _tap_slices(tap, out, stride, dilation)
        dxp[region] += np.einsum("ngk...,gkc->ngc...", dyg, wg[(Ellipsis, *tap)])
    return pad_adjoint(dxp.reshape(n, c, *padded), in_size, pad, mode)


def grad_weight(x, weight_size, dy, stride, pad, dilation, groups, mode="zeros"):
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    k, cg, *kernel = weight_size
    out = dy.shape[2:]
    xp = pad_input(x, pad, mode)
    dyg = _grouped(dy, groups)
    dw = np.zeros((groups, k // groups, cg, *kernel))
    for tap in itertools.product(*[range(kk) for kk in kernel]):
        patch = _grouped(xp[(slice(None), slice(None)) + _tap_slices(tap, out, stride, dilation)], groups)
        dw[(Ellipsis, *tap)] = np.einsum("ngcp,ngkp->gkc", patch.reshape(patch.shape[:3] + (-1,)),
                                         dyg.reshape(dyg.shape[:3] + (-1,)))
    return dw.reshape(k, cg, *kernel)


def activation(y, name, negative_slope=0.01):
    """PyTorch's activations (F.relu, F.relu6, F.leaky_relu, F.silu, F.gelu exact and tanh,
    F.hardswish, F.sigmoid), in float64."""
    if name is None:
        return y
    if name == "relu":
        return np.maximum(y, 0)
    if name == "relu6":
        return np.clip(y, 0, 6)
    if name == "leaky_relu":
        return np.where(y >= 0, y, y * negative_slope)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-y))
    if name == "silu":
        return y / (1 + np.exp(-y))
    if name == "gelu":
        return 0.5 * y * (1 + np.vectorize(math.erf)(y / math.sqrt(2)))
    if name == "gelu_tanh":
        return 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))
    if name == "hardswish":
        return y * np.clip(y + 3, 0, 6) / 6
    raise ValueError(f"activation={name!r}")


def epilogue(y, scale=None, shift=None, residual=None, act=None, negative_slope=0.01):
    """The fused forward epilogue on a channels-first (N, K, *out) result: y * scale + shift (per
    channel), + residual, then the activation."""
    shape = (1, -1) + (1,) * (y.ndim - 2)
    if scale is not None:
        y = y * np.asarray(scale, np.float64).reshape(shape) + np.asarray(shift, np.float64).reshape(shape)
    if residual is not None:
        y = y + np.asarray(residual, np.float64)
    return activation(y, act, negative_slope)


# --- im2col formulation ---------------------------------------------------------------------------

def im2col(x, kernel, stride, pad, dilation, mode="zeros"):
    """(N, C, *in) -> (N, C, prod(kernel), prod(out)): column j holds the receptive field of
    output position j, row (c, tap) one input element of it."""
    x = np.asarray(x, dtype=np.float64)
    n, c, *in_size = x.shape
    out = out_size(in_size, kernel, stride, dilation, pad)
    xp = pad_input(x, pad, mode)
    taps = list(itertools.product(*[range(kk) for kk in kernel]))
    cols = np.empty((n, c, len(taps), int(np.prod(out))))
    for t, tap in enumerate(taps):
        cols[:, :, t] = xp[(slice(None), slice(None)) + _tap_slices(tap, out, stride, dilation)].reshape(n, c, -1)
    return cols, out


def col2im(cols, input_size, kernel, stride, pad, dilation, mode="zeros"):
    """Adjoint of im2col: scatter-add columns back into an (N, C, *in) array."""
    n, c, *in_size = input_size
    out = out_size(in_size, kernel, stride, dilation, pad)
    padded = [i + pb + pa for i, (pb, pa) in zip(in_size, pad)]
    xp = np.zeros((n, c, *padded))
    for t, tap in enumerate(itertools.product(*[range(kk) for kk in kernel])):
        xp[(slice(None), slice(None)) + _tap_slices(tap, out, stride, dilation)] += cols[:, :, t].reshape(n, c, *out)
    return pad_adjoint(xp, in_size, pad, mode)


def forward_im2col(x, w, stride, pad, dilation, groups, bias=None, mode="zeros"):
    w = np.asarray(w, dtype=np.float64)
    k, cg, *kernel = w.shape
    cols, out = im2col(x, kernel, stride, pad, dilation, mode)
    n = cols.shape[0]
    cols = cols.reshape(n, groups, cg * cols.shape[2], -1)           # (N, G, Cg*T, P)
    wm = w.reshape(groups, k // groups, -1)                            # (G, Kg, Cg*T)
    y = np.einsum("gkr,ngrp->ngkp", wm, cols).reshape(n, k, *out)
    if bias is not None:
        y += np.asarray(bias, np.float64).reshape((1, k) + (1,) * len(out))
    return y


def grad_input_im2col(input_size, w, dy, stride, pad, dilation, groups, mode="zeros"):
    w = np.asarray(w, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    k, cg, *kernel = w.shape
    n = dy.shape[0]
    taps = int(np.prod(kernel))
    wm = w.reshape(groups, k // groups, cg * taps)
    dym = dy.reshape(n, groups, k // groups, -1)
    cols = np.einsum("gkr,ngkp->ngrp", wm, dym).reshape(n, groups * cg, taps, -1)
    return col2im(cols, input_size, kernel, stride, pad, dilation, mode)


def grad_weight_im2col(x, weight_size, dy, stride, pad, dilation, groups, mode="zeros"):
    dy = np.asarray(dy, dtype=np.float64)
    k, cg, *kernel = weight_size
    cols, _ = im2col(x, kernel, stride, pad, dilation, mode)
    n = cols.shape[0]
    cols = cols.reshape(n, groups, cg * cols.shape[2], -1)
    dym = dy.reshape(n, groups, k // groups, -1)
    return np.einsum("ngkp,ngrp->gkr", dym, cols).reshape(k, cg, *kernel)


# --- layout helpers -------------------------------------------------------------------------------

def to_channels_first(a):
    """(N, *sp, C) -> (N, C, *sp)"""
    return np.moveaxis(a, -1, 1)


def to_channels_last(a):
    """(N, C, *sp) -> (N, *sp, C)"""
    return np.moveaxis(a, 1, -1)


def weight_to_oi(w):
    """(*k, I, O) -> (O, I, *k)"""
    nd = w.ndim
    return np.transpose(w, (nd - 1, nd - 2, *range(nd - 2)))


def weight_to_hwio(w):
    """(O, I, *k) -> (*k, I, O)"""
    nd = w.ndim
    return np.transpose(w, (*range(2, nd), 1, 0))
