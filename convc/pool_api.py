"""The pooling half of the functional API, named and ordered like torch.nn.functional:

    convc.max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                     return_indices=False, *, layout=None, target=None)
    convc.max_pool2d_grad_input(input, grad_output, kernel_size, stride=None, padding=0,
                                dilation=1, ceil_mode=False, *, indices=None, layout, target)
    convc.avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True, divisor_override=None, *, layout, target)
    convc.avg_pool2d_grad_input(input_size, grad_output, kernel_size, ...same...)
    convc.adaptive_avg_pool2d(input, output_size, *, layout, target)
    convc.adaptive_avg_pool2d_grad_input(input_size, grad_output, *, layout, target)

and the 1-D and 3-D forms (avg_pool1d has no divisor_override, as in PyTorch). Arrays, layouts,
unbatched inputs, dtypes, the memo of call plans and the errors work as for convolution
(convc.api, whose helpers this module uses). max_pool*d_grad_input computes the gradient from the
input and grad_output (each window's maximum found again), or, given `indices=` (what
max_pool*d(..., return_indices=True) returned), from grad_output and the indices alone; `input` is
then only asked for its shape (an array or a shape). An index that does not point into its own
window contributes nothing (PyTorch's kernels would add it wherever it points).
"""

from __future__ import annotations

from .api import (_PLANS, _batched, _batched_size, _cached, _float_array, _layout, _like,
                  _remember, _same_dtype, _unbatch)
from .kernel import as_array
from .kernel import compile as compile_kernel
from .plans import plain
from .pool_spec import INDEX_DTYPE, PoolSpec, check_flag
from .spec import LAYOUTS
from .target import given_key, resolve

__all__ = [f"{name}{n}d{suffix}" for n in (1, 2, 3)
           for name in ("max_pool", "avg_pool", "adaptive_avg_pool")
           for suffix in ("", "_grad_input")]

_ = _PLANS  # the memo lives in convc.api: one for every functional call


def _key(value):
    """`value` in a memo key: a bool as itself (True and 1 mean the same to every flag here),
    anything else as convc.plans.plain takes it."""
    return value if type(value) is bool else plain(value)


def _results(template, result, unbatched: bool):
    if isinstance(result, tuple):
        return tuple(_like(template, _unbatch(r, unbatched)) for r in result)
    return _like(template, _unbatch(result, unbatched))


def _grad_output(spec: PoolSpec, grad_output, unbatched: bool, x=None):
    """grad_output checked against the spec (and x's dtype), batched."""
    dy = _float_array(grad_output, "grad_output")
    if x is not None:
        _same_dtype(x, "input", dy, "grad_output")
    expected = spec.output_shape[1:] if unbatched else spec.output_shape
    if tuple(dy.shape) != expected:
        raise ValueError(f"grad_output has shape {tuple(dy.shape)}: expected {expected}, the "
                         f"output shape of this pooling (input {spec.input_shape[unbatched:]})")
    return dy[None] if unbatched else dy


def _indices(spec: PoolSpec, indices, unbatched: bool):
    array = as_array(indices, "indices")
    if str(array.dtype) != INDEX_DTYPE:
        raise TypeError(f"indices has dtype {array.dtype}: expected {INDEX_DTYPE} (what "
                        "max_pool*d(..., return_indices=True) returns)")
    expected = spec.output_shape[1:] if unbatched else spec.output_shape
    if tuple(array.shape) != expected:
        raise ValueError(f"indices has shape {tuple(array.shape)}: expected {expected}, like "
                         "grad_output")
    return array[None] if unbatched else array


def _run(key, spec: PoolSpec, op: str, target, arrays, template, expand, unbatched: bool):
    kernel = compile_kernel(spec, op, resolve(target))
    result = kernel.run(arrays)
    _remember(key, kernel, template, expand, unbatched)
    return _results(template, result, unbatched)


# --- max -----------------------------------------------------------------------------------------

def _max_pool(ndim, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
              layout, target):
    key, result = _cached(
        lambda: ("max_pool", ndim, type(input), input.shape, input.dtype, plain(kernel_size),
                 plain(stride), plain(padding), plain(dilation), _key(ceil_mode),
                 _key(return_indices), layout, given_key(target)), (input,))
    if result is not None:
        return result
    layout = _layout(layout, ndim)
    x, unbatched = _batched(_float_array(input, "input"), "input", ndim, layout)
    return_indices = check_flag(return_indices, "return_indices")
    spec = PoolSpec.max_pool(x.shape, kernel_size, stride, padding, dilation, ceil_mode,
                             layout=layout, dtype=str(x.dtype))
    op = "forward_indices" if return_indices else "forward"
    return _run(key, spec, op, target, [x], input, (unbatched,), unbatched)


def _max_pool_grad_input(ndim, input, grad_output, kernel_size, stride, padding, dilation,
                         ceil_mode, indices, layout, target):
    from_indices = indices is not None
    arrays = (grad_output, indices) if from_indices else (input, grad_output)
    key, result = _cached(
        lambda: ("max_pool_grad_input", ndim, type(grad_output),
                 (type(input), input.shape, input.dtype) if hasattr(input, "shape")
                 else plain(input), grad_output.shape, grad_output.dtype,
                 None if indices is None else indices.shape, plain(kernel_size), plain(stride),
                 plain(padding), plain(dilation), _key(ceil_mode), layout, given_key(target)),
        arrays)
    if result is not None:
        return result
    layout = _layout(layout, ndim)
    if from_indices:
        size = tuple(input.shape) if hasattr(input, "shape") else input
        size, unbatched = _batched_size(size, "input", ndim, layout)
        x = None
    else:
        x, unbatched = _batched(_float_array(input, "input"), "input", ndim, layout)
        size = x.shape
    dtype = str(x.dtype) if x is not None else str(_float_array(grad_output, "grad_output").dtype)
    spec = PoolSpec.max_pool(size, kernel_size, stride, padding, dilation, ceil_mode,
                             layout=layout, dtype=dtype)
    dy = _grad_output(spec, grad_output, unbatched, x)
    if from_indices:
        return _run(key, spec, "grad_input_indices", target, [dy, _indices(spec, indices,
                    unbatched)], grad_output, (unbatched, unbatched), unbatched)
    return _run(key, spec, "grad_input", target, [x, dy], grad_output, (unbatched, unbatched),
                unbatched)


# --- avg -----------------------------------------------------------------------------------------

def _avg_pool(ndim, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override, layout, target):
    key, result = _cached(
        lambda: ("avg_pool", ndim, type(input), input.shape, input.dtype, plain(kernel_size),
                 plain(stride), plain(padding), _key(ceil_mode), _key(count_include_pad),
                 plain(divisor_override), layout, given_key(target)), (input,))
    if result is not None:
        return result
    layout = _layout(layout, ndim)
    x, unbatched = _batched(_float_array(input, "input"), "input", ndim, layout)
    spec = PoolSpec.avg_pool(x.shape, kernel_size, stride, padding, ceil_mode,
                             count_include_pad, divisor_override, layout=layout,
                             dtype=str(x.dtype))
    return _run(key, spec, "forward", target, [x], input, (unbatched,), unbatched)


def _avg_pool_grad_input(ndim, input_size, grad_output, kernel_size, stride, padding, ceil_mode,
                         count_include_pad, divisor_override, layout, target):
    key, result = _cached(
        lambda: ("avg_pool_grad_input", ndim, type(grad_output), plain(input_size),
                 grad_output.shape, grad_output.dtype, plain(kernel_size), plain(stride),
                 plain(padding), _key(ceil_mode), _key(count_include_pad),
                 plain(divisor_override), layout, given_key(target)), (grad_output,))
    if result is not None:
        return result
    layout = _layout(layout, ndim)
    size, unbatched = _batched_size(input_size, "input_size", ndim, layout)
    dtype = str(_float_array(grad_output, "grad_output").dtype)
    spec = PoolSpec.avg_pool(size, kernel_size, stride, padding, ceil_mode, count_include_pad,
                             divisor_override, layout=layout, dtype=dtype)
    dy = _grad_output(spec, grad_output, unbatched)
    return _run(key, spec, "grad_input", target, [dy], grad_output, (unbatched,), unbatched)


def _adaptive_avg_pool(ndim, input, output_size, layout, target):
    key, result = _cached(
        lambda: ("adaptive_avg_pool", ndim, type(input), input.shape, input.dtype,
                 plain(output_size), layout, given_key(target)), (input,))
    if result is not None:
        return result
    layout = _layout(layout, ndim)
    x, unbatched = _batched(_float_array(input, "input"), "input", ndim, layout)
    spec = PoolSpec.adaptive_avg_pool(x.shape, output_size, layout=layout, dtype=str(x.dtype))
    return _run(key, spec, "forward", target, [x], input, (unbatched,), unbatched)


def _adaptive_avg_pool_grad_input(ndim, input_size, grad_output, layout, target):
    key, result = _cached(
        lambda: ("adaptive_avg_pool_grad_input", ndim, type(grad_output), plain(input_size),
                 grad_output.shape, grad_output.dtype, layout, given_key(target)),
        (grad_output,))
    if result is not None:
        return result
    layout = _layout(layout, ndim)
    size, unbatched = _batched_size(input_size, "input_size", ndim, layout)
    dy = _float_array(grad_output, "grad_output")
    if dy.ndim != ndim + 2 - unbatched:
        raise ValueError(f"grad_output has shape {tuple(dy.shape)}: expected rank "
                         f"{ndim + 2 - unbatched}, like input_size={tuple(input_size)}")
    batched = dy.shape if not unbatched else (1, *dy.shape)
    out = batched[1:-1] if layout[-1] == "C" else batched[2:]  # the output size is dy's
    spec = PoolSpec.adaptive_avg_pool(size, tuple(out), layout=layout, dtype=str(dy.dtype))
    dy = _grad_output(spec, grad_output, unbatched)
    return _run(key, spec, "grad_input", target, [dy], grad_output, (unbatched,), unbatched)


# --- the public functions, per rank ------------------------------------------------------------

def _make(ndim: int):
    first, last = LAYOUTS[ndim]

    def max_pool(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False, *, layout=None, target=None):
        return _max_pool(ndim, input, kernel_size, stride, padding, dilation, ceil_mode,
                         return_indices, layout, target)

    def max_pool_grad_input(input, grad_output, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode=False, *, indices=None, layout=None, target=None):
        return _max_pool_grad_input(ndim, input, grad_output, kernel_size, stride, padding,
                                    dilation, ceil_mode, indices, layout, target)

    if ndim == 1:
        def avg_pool(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True, *, layout=None, target=None):
            return _avg_pool(ndim, input, kernel_size, stride, padding, ceil_mode,
                             count_include_pad, None, layout, target)

        def avg_pool_grad_input(input_size, grad_output, kernel_size, stride=None, padding=0,
                                ceil_mode=False, count_include_pad=True, *, layout=None,
                                target=None):
            return _avg_pool_grad_input(ndim, input_size, grad_output, kernel_size, stride,
                                        padding, ceil_mode, count_include_pad, None, layout,
                                        target)
    else:
        def avg_pool(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True, divisor_override=None, *, layout=None, target=None):
            return _avg_pool(ndim, input, kernel_size, stride, padding, ceil_mode,
                             count_include_pad, divisor_override, layout, target)

        def avg_pool_grad_input(input_size, grad_output, kernel_size, stride=None, padding=0,
                                ceil_mode=False, count_include_pad=True, divisor_override=None,
                                *, layout=None, target=None):
            return _avg_pool_grad_input(ndim, input_size, grad_output, kernel_size, stride,
                                        padding, ceil_mode, count_include_pad, divisor_override,
                                        layout, target)

    def adaptive_avg_pool(input, output_size, *, layout=None, target=None):
        return _adaptive_avg_pool(ndim, input, output_size, layout, target)

    def adaptive_avg_pool_grad_input(input_size, grad_output, *, layout=None, target=None):
        return _adaptive_avg_pool_grad_input(ndim, input_size, grad_output, layout, target)

    where = (f"input: ({first}) or unbatched ({first[1:]}); layout={last!r} for "
             f"channels-last ({last}).")
    docs = [
        (max_pool, f"max_pool{ndim}d",
         f"{ndim}-D max pooling, as torch.nn.functional.max_pool{ndim}d: the window's maximum "
         "(padding -inf, NaN propagates); with return_indices, also its flat position in the "
         f"input's spatial plane (int64). {where}"),
        (max_pool_grad_input, f"max_pool{ndim}d_grad_input",
         f"Gradient of max_pool{ndim}d w.r.t. its input: grad_output added where each window's "
         "maximum came from (ties: the first in scan order), found again from `input`, or taken "
         "from `indices=` (then `input` may be its shape)."),
        (avg_pool, f"avg_pool{ndim}d",
         f"{ndim}-D average pooling, as torch.nn.functional.avg_pool{ndim}d. {where}"),
        (avg_pool_grad_input, f"avg_pool{ndim}d_grad_input",
         f"Gradient of avg_pool{ndim}d w.r.t. its input: each grad_output element spread over "
         "its window, divided by the same divisor."),
        (adaptive_avg_pool, f"adaptive_avg_pool{ndim}d",
         f"{ndim}-D adaptive average pooling, as torch.nn.functional.adaptive_avg_pool{ndim}d "
         f"(None in output_size: keep that size). {where}"),
        (adaptive_avg_pool_grad_input, f"adaptive_avg_pool{ndim}d_grad_input",
         f"Gradient of adaptive_avg_pool{ndim}d w.r.t. its input (the output size is "
         "grad_output's)."),
    ]
    for fn, name, doc in docs:
        fn.__name__ = fn.__qualname__ = name
        fn.__doc__ = doc
    return tuple(fn for fn, _, _ in docs)


(max_pool1d, max_pool1d_grad_input, avg_pool1d, avg_pool1d_grad_input, adaptive_avg_pool1d,
 adaptive_avg_pool1d_grad_input) = _make(1)
(max_pool2d, max_pool2d_grad_input, avg_pool2d, avg_pool2d_grad_input, adaptive_avg_pool2d,
 adaptive_avg_pool2d_grad_input) = _make(2)
(max_pool3d, max_pool3d_grad_input, avg_pool3d, avg_pool3d_grad_input, adaptive_avg_pool3d,
 adaptive_avg_pool3d_grad_input) = _make(3)
