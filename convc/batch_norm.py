"""Batch norm in inference, folded into the convolution before it.

At test time a batch norm is a per-channel affine map, y = (z - mean) * gamma / sqrt(var + eps) +
beta, so after a convolution z = conv(x, W) + b it folds into the convolution's weight and bias:
with r = 1 / sqrt(var + eps),

    W' = W * (gamma * r)   (per output channel)      b' = (b - mean) * gamma * r + beta

the math of torch.nn.utils.fusion.fuse_conv_bn_weights (bias None counts as 0).
"""

from __future__ import annotations

import numpy as np

from .api import _float_array, _like, _same_dtype
from .spec import LAYOUTS, check_layout


def output_channel_axis(ndim: int, layout, transposed: bool) -> int:
    """The weight's output-channel axis: (O, I/g, *k) -> 0 and (*k, I/g, O) -> -1 for a
    convolution; a transposed convolution's weight (I, O/g, *k) -> 1, channels-last (*k, O/g, I)
    -> -2 (its HWIO-family counterpart)."""
    channels_last = check_layout(layout or LAYOUTS[ndim][0], ndim) == LAYOUTS[ndim][1]
    if transposed:
        return -2 if channels_last else 1
    return -1 if channels_last else 0


def fold_batch_norm(weight, bias, running_mean, running_var, gamma, beta, eps=1e-5, *,
                    layout=None, transposed=False):
    """(weight', bias') of the convolution that computes conv(x, weight) + bias followed by
    batch_norm(running_mean, running_var, gamma, beta, eps) in inference mode.

    weight: (O, I/groups, *k), or (*k, I/groups, O) for a channels-last `layout`; with
    transposed=True a transposed convolution's (I, O/groups, *k) / (*k, O/groups, I) (groups 1:
    the output channels all lie on that axis). bias: (O,) or None; the batch-norm tensors: (O,).
    Arrays of one float dtype; computed in float64, returned in that dtype, as the weight's kind
    (NumPy or torch).
    """
    w = _float_array(weight, "weight")
    if w.ndim not in (3, 4, 5):
        raise ValueError(f"weight has shape {tuple(w.shape)}: expected a 3-D, 4-D or 5-D "
                         "convolution weight")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps={eps!r} is not valid: expected a non-negative number")
    axis = output_channel_axis(w.ndim - 2, layout, bool(transposed))
    channels = w.shape[axis]
    given = {"running_mean": running_mean, "running_var": running_var, "gamma": gamma,
             "beta": beta, "bias": bias}
    vectors = {}
    for name, value in given.items():
        if value is None and name == "bias":
            continue
        if value is None:
            raise TypeError(f"{name} is None: expected an array of shape ({channels},)")
        array = _float_array(value, name)
        _same_dtype(w, "weight", array, name)
        if tuple(array.shape) != (channels,):
            raise ValueError(
                f"{name} has shape {tuple(array.shape)}: expected ({channels},), one entry per "
                f"output channel of weight {tuple(w.shape)} (axis {axis % w.ndim})")
        vectors[name] = array.astype(np.float64)
    if (vectors["running_var"] + eps <= 0).any():
        raise ValueError("running_var + eps must be positive in every channel")
    scale = vectors["gamma"] / np.sqrt(vectors["running_var"] + eps)
    shape = [1] * w.ndim
    shape[axis] = channels
    folded_w = (w.astype(np.float64) * scale.reshape(shape)).astype(w.dtype)
    b = vectors.get("bias", np.zeros(channels))
    folded_b = ((b - vectors["running_mean"]) * scale + vectors["beta"]).astype(w.dtype)
    return _like(weight, folded_w), _like(weight, folded_b)
