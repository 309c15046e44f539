"""Arrays as compiled kernels take them: NumPy views of DLPack tensors, the memory rules that
decide when an input must be copied, and output allocation on cache-line boundaries."""

from __future__ import annotations

import ctypes
import math

import numpy as np

# Vector loads and stores that straddle cache lines cost: MobileNetV2's 3x3 depthwise NHWC forward
# ran 65 us per call on NumPy's 16-byte-aligned arrays and 46 us on 64-byte-aligned ones (AMD EPYC
# Zen 4, 2 threads). Outputs convc allocates are aligned to a cache line; so are PyTorch's tensors.
ALIGNMENT = 64

_CHAR_AT = ctypes.c_char.from_buffer  # the address of a writable buffer, in ~0.2 us


def as_array(value, name: str) -> np.ndarray:
    """NumPy array view of `value` (NumPy array or any CPU DLPack tensor), without copying."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__dlpack__"):
        if getattr(value, "requires_grad", False):
            value = value.detach()
        try:
            return np.from_dlpack(value)
        except (RuntimeError, BufferError, TypeError) as err:
            raise TypeError(f"{name} could not be read as a CPU array through DLPack: {err}") from None
    if isinstance(value, (list, tuple)) or np.isscalar(value):
        raise TypeError(
            f"{name} is a {type(value).__name__}: expected a NumPy array or a DLPack tensor"
        )
    raise TypeError(f"{name} of type {type(value).__name__} is not an array: expected a NumPy "
                    "array or a DLPack tensor")


def ready(array: np.ndarray, dtype: np.dtype) -> bool:
    """True when `array` can go to a compiled function as it is: a NumPy array of exactly this
    dtype, C-contiguous, aligned to its element size and writeable (NumPy refuses to export a
    read-only array through DLPack)."""
    return type(array) is np.ndarray and array.dtype is dtype and array.flags.carray


def safe(array: np.ndarray) -> np.ndarray:
    """`array` itself when it is ready to be passed, else a C-contiguous aligned copy.

    Kernels are declared without any alignment assumption beyond the element size, so an array
    one element off a 64-byte boundary is used in place; a non-contiguous, byte-misaligned or
    read-only one is copied.
    """
    if array.flags.carray:
        return array
    return np.array(array, order="C", copy=True)


def aligned_allocator(shape, dtype, alignment: int = ALIGNMENT):
    """A function of no arguments returning a new aligned_empty(shape, dtype): what a kernel
    calls for every output it allocates, with the sizes worked out once."""
    dtype, shape = np.dtype(dtype), tuple(shape)
    size = math.prod(shape) * dtype.itemsize + alignment
    empty, uint8, ndarray, address = np.empty, np.uint8, np.ndarray, ctypes.addressof

    def allocate() -> np.ndarray:
        raw = empty(size, uint8)
        return ndarray(shape, dtype, raw, -address(_CHAR_AT(raw)) % alignment)

    return allocate


def aligned_empty(shape, dtype, alignment: int = ALIGNMENT) -> np.ndarray:
    """np.empty whose data starts on an `alignment`-byte boundary (NumPy only promises 16)."""
    return aligned_allocator(shape, dtype, alignment)()


def aligned_copy(array: np.ndarray, alignment: int = ALIGNMENT) -> np.ndarray:
    """A C-contiguous copy of `array` on an `alignment`-byte boundary."""
    out = aligned_empty(array.shape, array.dtype, alignment)
    out[...] = array
    return out
