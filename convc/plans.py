"""Call plans: how a functional call whose arguments were all checked before reaches the compiled
function directly.

convc.api makes a plan after a call took the full path and keeps it under that call's key (see
convc.api). The plan checks what a key cannot hold, for every array of the call: that it is of the
family the plan was made for (NumPy arrays, or CPU torch tensors), of the kernel's dtype, and
ready to be read in place (C-contiguous, element-aligned; NumPy: writeable, since NumPy refuses
to export read-only arrays through DLPack). Then it allocates the output of the same family
(64-byte aligned: convc's NumPy allocation, PyTorch's allocator) and calls the function, torch
tensors through DLPack without a detour through NumPy. When a check fails it returns None and the
call takes the full path, which copies or explains.

GPU kernels have no plan: they copy NumPy arrays to the device on every call anyway.
"""

from __future__ import annotations

import math

import numpy as np


def plain(value):
    """`value` as part of a memo key, where equality is meaning: None, an int, a str, or a
    (nested) tuple or list of those (a list becomes a tuple). TypeError for anything else: a bool,
    a float or a NumPy scalar may compare equal to an int of another meaning (True == 1 and
    1.0 == 1, while stride=True and stride=1.0 are errors), so a call passing one takes the full
    path every time."""
    kind = type(value)
    if kind is int or kind is str or value is None:
        return value
    if isinstance(value, (tuple, list)):  # torch.Size is a tuple
        return tuple(plain(v) for v in value)
    raise TypeError(f"{value!r} is not a plain key")


def plan_for(kernel, template, expand: tuple, drop: bool):
    """The plan for calls like this one: arrays in the kernel's parameter order, those marked in
    `expand` given unbatched (a batch axis is added), the result (each result, for kernels with
    several outputs) unbatched when `drop`. None where there is none (GPU kernels; arrays
    neither NumPy nor torch)."""
    if kernel.target.is_gpu:
        return None
    expand = expand if any(expand) else None
    if type(template) is np.ndarray:
        return _numpy_plan(kernel, expand, drop)
    if type(template).__module__.split(".")[0] == "torch":
        return _torch_plan(kernel, expand, drop)
    return None


def _batched(arrays, expand):
    return [a[None] if add else a for a, add in zip(arrays, expand)]


def _unbatched(result, several: bool):
    return tuple(r[0] for r in result) if several else result[0]


def _numpy_plan(kernel, expand, drop: bool):
    launch, ndarray, several = kernel.launch, np.ndarray, kernel.outputs > 1
    dtypes = kernel.arg_dtypes[:-kernel.outputs]
    if len(set(dtypes)) == 1:
        dtype = dtypes[0]

        def plan(*arrays):
            for a in arrays:
                if type(a) is not ndarray or a.dtype is not dtype or not a.flags.carray:
                    return None
            result = launch(_batched(arrays, expand) if expand else arrays)
            return _unbatched(result, several) if drop else result

        return plan

    def mixed(*arrays):  # inputs of several dtypes (a max pool's saved indices)
        for a, dtype in zip(arrays, dtypes):
            if type(a) is not ndarray or a.dtype is not dtype or not a.flags.carray:
                return None
        result = launch(_batched(arrays, expand) if expand else arrays)
        return _unbatched(result, several) if drop else result

    return mixed


def _torch_plan(kernel, expand, drop: bool):
    import torch  # optional: only for callers who pass torch tensors

    function, count = kernel.function, kernel.outputs
    dtypes = [getattr(torch, str(d)) for d in kernel.arg_dtypes]
    inputs = dtypes[:-count]
    outputs = [(shape, tuple(math.prod(shape[i + 1:]) for i in range(len(shape))), dtype)  # C order
               for shape, dtype in zip(kernel.arg_shapes[-count:], dtypes[-count:])]
    families, strided, empty = (torch.Tensor, torch.nn.Parameter), torch.strided, torch.empty_strided
    if count == 1 and len(set(inputs)) == 1:
        dtype, ((shape, strides, _),) = inputs[0], outputs

        def plan(*arrays):
            for a in arrays:
                if (type(a) not in families or a.dtype is not dtype or not a.is_cpu
                        or a.layout is not strided or not a.is_contiguous()):
                    return None
            out = empty(shape, strides, dtype=dtype)  # PyTorch's allocator aligns to 64 bytes
            function(*(_batched(arrays, expand) if expand else arrays), out)
            return out[0] if drop else out

        return plan

    def mixed(*arrays):  # several dtypes or outputs (max pooling's indices)
        for a, dtype in zip(arrays, inputs):
            if (type(a) not in families or a.dtype is not dtype or not a.is_cpu
                    or a.layout is not strided or not a.is_contiguous()):
                return None
        outs = [empty(shape, strides, dtype=dtype) for shape, strides, dtype in outputs]
        function(*(_batched(arrays, expand) if expand else arrays), *outs)
        result = outs[0] if count == 1 else tuple(outs)
        return _unbatched(result, count > 1) if drop else result

    return mixed
