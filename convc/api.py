"""The functional API, named and ordered like torch.nn.functional.conv{1,2,3}d and
torch.nn.grad.conv{1,2,3}d_{input,weight}.

    convc.conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                 padding_mode="zeros", layout, target)
    convc.conv2d_grad_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                            padding_mode, activation, pre_activation, activation_output, ...)
    convc.conv2d_grad_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *, ...)

NumPy arrays in, NumPy arrays out; other CPU DLPack tensors (e.g. torch) are read zero-copy and
the result comes back as the same kind of tensor. Unbatched inputs (C, *spatial) work as in PyTorch.
layout: channels-first (NCW/NCHW/NCDHW, default; weight O,I/g,*k as PyTorch) or channels-last
(NWC/NHWC/NDHWC; weight *k,I/g,O).

Two paths. The first call with given arguments takes the full one: every argument checked (errors
name the parameter, the value and what was expected), the target resolved, the ConvSpec built,
the kernel compiled or found. It leaves a call plan (convc.plans) in a memo keyed by what the call
passed: the array type, every shape, the dtype, the other arguments exactly as given, the layout
and the target as given. A later call with the same key has passed every one of those checks
already; its plan checks only what a key cannot hold (each array's type, dtype and memory) and
hands the arrays to the compiled function, or declines and the call takes the full path.
"""

from __future__ import annotations

import numpy as np

from .kernel import as_array, memo
from .kernel import compile as compile_kernel
from .plans import plain, plan_for
from .spec import DTYPES, LAYOUTS, WEIGHT_LAYOUTS, ConvSpec, _shape, check_layout, default_layout
from .target import given_key, resolve

_PLANS = memo()      # call key -> plan(*arrays) -> result, or None to take the full path
PLAN_LIMIT = 4096    # more distinct calls than this: start the memo again


def _layout(layout, ndim):
    return check_layout(layout if layout is not None else default_layout(ndim), ndim)


def _float_array(value, name: str) -> np.ndarray:
    array = as_array(value, name)
    if str(array.dtype) not in DTYPES:
        raise TypeError(f"{name} has dtype {array.dtype}: expected one of {DTYPES}")
    return array


def _same_dtype(reference: np.ndarray, ref_name: str, array: np.ndarray, name: str) -> None:
    if array.dtype != reference.dtype:
        raise TypeError(
            f"{name} has dtype {array.dtype} but {ref_name} has dtype {reference.dtype}: "
            "expected both the same"
        )


def _batched(array: np.ndarray, name: str, ndim: int, layout: str):
    """-> (batched array, was_unbatched)."""
    if array.ndim == ndim + 2:
        return array, False
    if array.ndim == ndim + 1:
        return array[None], True
    raise ValueError(
        f"{name} has shape {tuple(array.shape)}: expected a {ndim + 2}-D batched ({layout}) or "
        f"{ndim + 1}-D unbatched ({layout[1:]}) array for a {ndim}-D convolution"
    )


def _batched_size(size, name: str, ndim: int, layout: str):
    size = _shape(size, name)
    if len(size) == ndim + 2:
        return size, False
    if len(size) == ndim + 1:
        return (1, *size), True
    raise ValueError(f"{name}={size} has {len(size)} entries: expected {ndim + 2} ({layout}) "
                     f"or {ndim + 1} (unbatched {layout[1:]})")


def _weight(array: np.ndarray, name: str, ndim: int, layout: str):
    if array.ndim != ndim + 2:
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}: expected a {ndim + 2}-D weight "
            f"({WEIGHT_LAYOUTS[layout]})"
        )
    return array


def _like(template, result: np.ndarray):
    """Return `result` as the same kind of tensor as `template` (NumPy stays NumPy)."""
    if isinstance(template, np.ndarray):
        return result
    module = type(template).__module__.split(".")[0]
    if module == "torch":
        import torch  # optional: only when the caller passed torch tensors

        return torch.from_dlpack(result)
    return result


def _unbatch(result: np.ndarray, unbatched: bool) -> np.ndarray:
    return result[0] if unbatched else result


def _check_grad_output(spec: ConvSpec, grad_output: np.ndarray, where: str) -> None:
    if tuple(grad_output.shape) != spec.output_shape:
        raise ValueError(
            f"grad_output has shape {tuple(grad_output.shape)}: expected {spec.output_shape}, the "
            f"output shape of this convolution ({where})"
        )


def _grad_input_arrays(ndim, input_size, weight, grad_output, layout):
    """A grad_input call's arguments checked and batched: (input size, w, dy, unbatched)."""
    size, unbatched = _batched_size(input_size, "input_size", ndim, layout)
    w = _weight(_float_array(weight, "weight"), "weight", ndim, layout)
    dy = _float_array(grad_output, "grad_output")
    _same_dtype(w, "weight", dy, "grad_output")
    if dy.ndim != len(size) - (1 if unbatched else 0):
        raise ValueError(f"grad_output has shape {tuple(dy.shape)}: expected rank "
                         f"{len(size) - (1 if unbatched else 0)}, like input_size={tuple(input_size)}")
    return size, w, dy[None] if unbatched else dy, unbatched


def _grad_weight_arrays(ndim, input, weight_size, grad_output, layout, weight_layouts):
    """A grad_weight call's arrays checked and batched: (x, weight size, dy, unbatched).
    weight_layouts names the weight's axes per layout, for the error message."""
    x = _float_array(input, "input")
    size = _shape(weight_size, "weight_size")
    if len(size) != ndim + 2:
        raise ValueError(f"weight_size={size} has {len(size)} entries: expected {ndim + 2} "
                         f"({weight_layouts[layout]})")
    dy = _float_array(grad_output, "grad_output")
    _same_dtype(x, "input", dy, "grad_output")
    x, unbatched = _batched(x, "input", ndim, layout)
    if dy.ndim != x.ndim - (1 if unbatched else 0):
        raise ValueError(f"grad_output has shape {tuple(dy.shape)}: expected rank "
                         f"{x.ndim - (1 if unbatched else 0)}, like input")
    return x, size, dy[None] if unbatched else dy, unbatched


def _cached(key_of, arrays, *args):
    """(the call's memo key, or None where no key can hold its arguments; the result of the plan
    kept under that key, or None: no plan, or the plan declined these arrays)."""
    try:
        key = key_of(*args)
        plan = _PLANS.get(key)
    except (TypeError, AttributeError):  # not arrays, or arguments no key holds (plans.plain)
        return None, None
    return key, (None if plan is None else plan(*arrays))


# What each op's calls are keyed by: everything the full path checks, as given.

def _forward_key(ndim, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                 fused, layout, target, algorithm):
    scale, shift, residual, activation = fused
    return ("forward", ndim, type(input), input.shape, input.dtype, weight.shape,
            None if bias is None else bias.shape, plain(stride), plain(padding), plain(dilation),
            plain(groups), plain(padding_mode), None if scale is None else scale.shape,
            None if shift is None else shift.shape, None if residual is None else residual.shape,
            plain(activation), layout, given_key(target), plain(algorithm))


def _prologue_key(through):
    activation, pre_activation, activation_output = through
    return (plain(activation), None if pre_activation is None else pre_activation.shape,
            None if activation_output is None else activation_output.shape)


def _grad_input_key(ndim, input_size, weight, grad_output, stride, padding, dilation, groups,
                    padding_mode, through, layout, target, algorithm):
    return ("grad_input", ndim, type(grad_output), plain(input_size), weight.shape,
            grad_output.shape, grad_output.dtype, plain(stride), plain(padding), plain(dilation),
            plain(groups), plain(padding_mode), _prologue_key(through), layout, given_key(target),
            plain(algorithm))


def _grad_weight_key(ndim, input, weight_size, grad_output, stride, padding, dilation, groups,
                     padding_mode, through, layout, target):
    return ("grad_weight", ndim, type(input), input.shape, input.dtype, plain(weight_size),
            grad_output.shape, plain(stride), plain(padding), plain(dilation), plain(groups),
            plain(padding_mode), _prologue_key(through), layout, given_key(target))


def _saved(through):
    """The adjoints' activation prologue as given -> (activation, derivative_from, the saved
    tensor or None, its name), checked: an activation needs exactly one of pre_activation= and
    activation_output=, and either needs an activation."""
    activation, pre_activation, activation_output = through
    given = {name: value for name, value in (("pre_activation", pre_activation),
                                             ("activation_output", activation_output))
             if value is not None}
    if activation is None:
        if given:
            raise ValueError(f"{next(iter(given))} is given but activation=None: expected an "
                             "activation whose derivative it feeds")
        return None, None, None, None
    if len(given) != 1:
        raise ValueError(
            f"activation={activation!r} needs exactly one of pre_activation= (the activation's "
            "input) and activation_output= (its output, the forward's result): got "
            + ("both" if given else "neither"))
    name, value = next(iter(given.items()))
    return (activation, "pre_activation" if name == "pre_activation" else "output",
            _float_array(value, name), name)


def _check_saved(spec: ConvSpec, saved: np.ndarray, name: str, dy: np.ndarray) -> None:
    _same_dtype(dy, "grad_output", saved, name)
    if tuple(saved.shape) != spec.output_shape:
        raise ValueError(f"{name} has shape {tuple(saved.shape)}: expected {spec.output_shape}, "
                         "grad_output's shape")


def _remember(key, kernel, template, expand, drop: bool) -> None:
    """After a full-path call: the plan for calls with the same key."""
    if key is None:
        return
    plan = plan_for(kernel, template, expand, drop)
    if plan is not None:
        if len(_PLANS) >= PLAN_LIMIT:
            _PLANS.clear()
        _PLANS[key] = plan


def _forward(ndim, input, weight, bias, stride, padding, dilation, groups, padding_mode, fused,
             layout, target, algorithm="auto"):
    """fused: (scale, shift, residual, activation) of the epilogue, as given."""
    scale, shift, residual, activation = fused
    named = {"bias": bias, "scale": scale, "shift": shift, "residual": residual}
    arrays = (input, weight, *(a for a in named.values() if a is not None))
    key, result = _cached(_forward_key, arrays, ndim, input, weight, bias, stride, padding,
                          dilation, groups, padding_mode, fused, layout, target, algorithm)
    if result is not None:
        return result
    layout = _layout(layout, ndim)
    x = _float_array(input, "input")
    w = _weight(_float_array(weight, "weight"), "weight", ndim, layout)
    _same_dtype(x, "input", w, "weight")
    x, unbatched = _batched(x, "input", ndim, layout)
    if (scale is None) != (shift is None):
        raise ValueError(f"scale is {'None' if scale is None else 'given'} but shift is "
                         f"{'None' if shift is None else 'given'}: expected both or neither")
    given = {}
    for name, value in named.items():
        if value is not None:
            given[name] = _float_array(value, name)
            _same_dtype(x, "input", given[name], name)
    if "residual" in given and unbatched:
        given["residual"] = given["residual"][None]
    spec = ConvSpec.from_shapes(x.shape, w.shape, stride, padding, dilation, groups,
                                layout=layout, dtype=str(x.dtype), bias=bias is not None,
                                padding_mode=padding_mode, scale_shift=scale is not None,
                                residual=residual is not None, activation=activation,
                                algorithm=algorithm)
    for name, array in given.items():
        expected = spec.output_shape if name == "residual" else spec.bias_shape
        if tuple(array.shape) != expected:
            what = "the output's shape" if name == "residual" else "one entry per output channel"
            raise ValueError(f"{name} has shape {tuple(array.shape)}: expected {expected} ({what})")
    kernel = compile_kernel(spec, "forward", resolve(target))
    result = kernel.run([x, w, *given.values()])
    expand = (unbatched, False, *(unbatched and name == "residual" for name in given))
    _remember(key, kernel, input, expand, unbatched)
    return _like(input, _unbatch(result, unbatched))


def _grad_input(ndim, input_size, weight, grad_output, stride, padding, dilation, groups,
                padding_mode, through, layout, target, algorithm="auto"):
    """through: (activation, pre_activation, activation_output) of the prologue, as given."""
    arrays = (grad_output, *(a for a in through[1:] if a is not None), weight)
    key, result = _cached(_grad_input_key, arrays, ndim, input_size, weight, grad_output, stride,
                          padding, dilation, groups, padding_mode, through, layout, target,
                          algorithm)
    if result is not None:
        return result
    activation, derivative_from, saved, saved_name = _saved(through)
    layout = _layout(layout, ndim)
    size, w, dy, unbatched = _grad_input_arrays(ndim, input_size, weight, grad_output, layout)
    spec = ConvSpec.from_shapes(size, w.shape, stride, padding, dilation, groups,
                                layout=layout, dtype=str(w.dtype), padding_mode=padding_mode,
                                activation=activation, derivative_from=derivative_from,
                                algorithm=algorithm)
    _check_grad_output(spec, dy, f"input_size={tuple(input_size)}, weight {tuple(w.shape)}")
    saved = [] if saved is None else [saved[None] if unbatched else saved]
    if saved:
        _check_saved(spec, saved[0], saved_name, dy)
    kernel = compile_kernel(spec, "grad_input", resolve(target))
    result = kernel.run([dy, *saved, w])
    _remember(key, kernel, grad_output, (unbatched, *(unbatched for _ in saved), False), unbatched)
    return _like(grad_output, _unbatch(result, unbatched))


def _grad_weight(ndim, input, weight_size, grad_output, stride, padding, dilation, groups,
                 padding_mode, through, layout, target):
    """through: (activation, pre_activation, activation_output) of the prologue, as given."""
    arrays = (input, grad_output, *(a for a in through[1:] if a is not None))
    key, result = _cached(_grad_weight_key, arrays, ndim, input, weight_size, grad_output, stride,
                          padding, dilation, groups, padding_mode, through, layout, target)
    if result is not None:
        return result
    activation, derivative_from, saved, saved_name = _saved(through)
    layout = _layout(layout, ndim)
    x, size, dy, unbatched = _grad_weight_arrays(ndim, input, weight_size, grad_output, layout,
                                                 WEIGHT_LAYOUTS)
    spec = ConvSpec.from_shapes(x.shape, size, stride, padding, dilation, groups,
                                layout=layout, dtype=str(x.dtype), padding_mode=padding_mode,
                                activation=activation, derivative_from=derivative_from)
    _check_grad_output(spec, dy, f"input {tuple(x.shape)}, weight_size={size}")
    saved = [] if saved is None else [saved[None] if unbatched else saved]
    if saved:
        _check_saved(spec, saved[0], saved_name, dy)
    kernel = compile_kernel(spec, "grad_weight", resolve(target))
    result = kernel.run([x, dy, *saved])
    _remember(key, kernel, input, (unbatched, unbatched, *(unbatched for _ in saved)), False)
    return _like(input, result)


def _grad_bias(ndim, grad_output, layout):
    """The bias gradient: grad_output summed over batch and space, one entry per output channel
    (float16 accumulated in float32)."""
    layout = _layout(layout, ndim)
    dy, _ = _batched(_float_array(grad_output, "grad_output"), "grad_output", ndim, layout)
    channel = dy.ndim - 1 if layout[-1] == "C" else 1
    axes = tuple(a for a in range(dy.ndim) if a != channel)
    acc = np.float32 if dy.dtype == np.float16 else dy.dtype
    return _like(grad_output, dy.sum(axis=axes, dtype=acc).astype(dy.dtype))


def _make(ndim: int):
    def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
             padding_mode="zeros", scale=None, shift=None, residual=None, activation=None,
             layout=None, target=None, algorithm="auto"):
        return _forward(ndim, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                        (scale, shift, residual, activation), layout, target, algorithm)

    def grad_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                   padding_mode="zeros", activation=None, pre_activation=None,
                   activation_output=None, layout=None, target=None, algorithm="auto"):
        return _grad_input(ndim, input_size, weight, grad_output, stride, padding, dilation, groups,
                           padding_mode, (activation, pre_activation, activation_output), layout,
                           target, algorithm)

    def grad_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                    padding_mode="zeros", activation=None, pre_activation=None,
                    activation_output=None, layout=None, target=None):
        return _grad_weight(ndim, input, weight_size, grad_output, stride, padding, dilation, groups,
                            padding_mode, (activation, pre_activation, activation_output), layout,
                            target)

    def grad_bias(grad_output, *, layout=None):
        return _grad_bias(ndim, grad_output, layout)

    first, last = LAYOUTS[ndim]
    conv.__name__, conv.__qualname__ = f"conv{ndim}d", f"conv{ndim}d"
    conv.__doc__ = (f"{ndim}-D convolution, as torch.nn.functional.conv{ndim}d.\n\n"
                    f"input: ({first}) or unbatched; weight: (O, I/groups, *k) for {first}, "
                    f"(*k, I/groups, O) for {last}; bias: (O,) or None.\n"
                    "padding: int, tuple, tuple of (before, after) pairs, 'same' or 'valid'; "
                    "padding_mode: 'zeros', 'reflect', 'replicate' or 'circular', as nn.ConvNd.\n"
                    "Fused epilogue, in the same kernel: y = activation((conv + bias) * scale + "
                    "shift + residual); scale, shift: (O,) (both or neither); residual: y's "
                    "shape; activation: None, 'relu', 'relu6', 'leaky_relu' or ('leaky_relu', "
                    "slope), 'silu', 'gelu' or ('gelu', 'tanh'), 'hardswish', 'sigmoid'.\n"
                    "algorithm: 'auto' (Winograd where measured faster), 'direct' or 'winograd' "
                    "(2-D 3x3 stride-1 only; ValueError elsewhere).")
    grad_input.__name__ = grad_input.__qualname__ = f"conv{ndim}d_grad_input"
    through = ("\n\nThrough an activation after the convolution (y = activation(z), z the "
               "conv's result): activation= names it as conv{n}d's does, and exactly one of "
               "pre_activation=z or activation_output=y (grad_output's shape) is the tensor its "
               "derivative is taken from; grad_output is then dL/dy and the kernel multiplies it "
               "by activation'(z) before the convolution, in the same kernel. activation_output "
               "serves relu, relu6, leaky_relu (slope >= 0) and sigmoid; silu, gelu and "
               "hardswish need pre_activation.").format(n=ndim)
    grad_input.__doc__ = (f"Gradient of conv{ndim}d w.r.t. its input, as "
                          f"torch.nn.grad.conv{ndim}d_input: a transposed convolution of grad_output."
                          + through)
    grad_weight.__name__ = grad_weight.__qualname__ = f"conv{ndim}d_grad_weight"
    grad_weight.__doc__ = (f"Gradient of conv{ndim}d w.r.t. its weight, as "
                           f"torch.nn.grad.conv{ndim}d_weight: a correlation of input with grad_output."
                           + through)
    grad_bias.__name__ = grad_bias.__qualname__ = f"conv{ndim}d_grad_bias"
    grad_bias.__doc__ = (f"Gradient of conv{ndim}d w.r.t. its bias: grad_output ({first}, {last} "
                         "or unbatched) summed over batch and space, shape (O,).")
    return conv, grad_input, grad_weight, grad_bias


conv1d, conv1d_grad_input, conv1d_grad_weight, conv1d_grad_bias = _make(1)
conv2d, conv2d_grad_input, conv2d_grad_weight, conv2d_grad_bias = _make(2)
conv3d, conv3d_grad_input, conv3d_grad_weight, conv3d_grad_bias = _make(3)
