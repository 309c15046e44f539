"""A compiled kernel: one op of one ConvSpec for one target, callable on arrays."""

from __future__ import annotations

import math

import numpy as np

from .ops import arguments, shapes
from .spec import ConvSpec


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


def safe(array: np.ndarray) -> np.ndarray:
    """C-contiguous and aligned to its element size (a copy only when the input is neither).

    Kernels are declared without any alignment assumption beyond the element size, so an array
    one element off a 64-byte boundary is used in place; only a byte-misaligned buffer is copied.
    """
    if not array.flags.aligned:  # NumPy's flag: data and strides multiples of the element size
        return array.copy(order="C")
    return np.ascontiguousarray(array)


# Vector loads and stores that straddle cache lines cost: MobileNetV2's 3x3 depthwise NHWC forward
# ran 65 us per call on NumPy's 16-byte-aligned arrays and 46 us on 64-byte-aligned ones (AMD EPYC
# Zen 4, 2 threads). Outputs convc allocates are aligned to a cache line; so are PyTorch's tensors.
ALIGNMENT = 64


def aligned_empty(shape, dtype, alignment: int = ALIGNMENT) -> np.ndarray:
    """np.empty whose data starts on an `alignment`-byte boundary (NumPy only promises 16)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned_copy(array: np.ndarray, alignment: int = ALIGNMENT) -> np.ndarray:
    """A C-contiguous copy of `array` on an `alignment`-byte boundary."""
    out = aligned_empty(array.shape, array.dtype, alignment)
    out[...] = array
    return out


class Kernel:
    """One compiled op. Call it with the op's inputs (in parameter order, batched, in the spec's
    layout); it returns the output, written into `out` when given.

    Attributes: spec, op, target, how ("tuned" / "hand-written" / "default"), tir (the scheduled
    TIR as TVMScript), source (generated code), module (the TVM runtime module), library (path of
    the cached shared library), stats (per-kernel resource figures where the backend reports them).
    """

    def __init__(self, spec: ConvSpec, op: str, target, module, how: str, tir: str,
                 library=None, stats=None):
        self.spec, self.op, self.target, self.how = spec, op, target, how
        self.tir, self.module, self.library = tir, module, library
        self.stats = dict(stats or {})
        self.arg_names = arguments(spec, op)
        self.arg_shapes = shapes(spec, op)
        self._function = module[op] if module is not None else None

    def __repr__(self) -> str:
        return f"<convc.Kernel {self.op} {self.spec.key} on {self.target.kind.name} ({self.how})>"

    @property
    def source(self) -> str:
        """Generated code: LLVM IR for CPU targets, CUDA C for GPU targets."""
        if self.module is None:
            return ""
        modules = [self.module, *getattr(self.module, "imports", [])]
        for module in modules[::-1] if self.target.kind.name == "cuda" else modules:
            try:
                text = module.inspect_source()
            except Exception:  # noqa: BLE001 - a loaded .so keeps no source
                continue
            if text:
                return text
        import tvm  # re-lower from the stored TIR when the library came from the disk cache

        return tvm.compile(tvm.script.from_source(self.tir), target=self.target).mod.inspect_source()

    @property
    def flops(self) -> int:
        return self.spec.flops

    def __call__(self, *inputs, out=None):
        names = self.arg_names[:-1]
        if len(inputs) != len(names):
            raise TypeError(f"{self.op} takes {len(names)} arrays ({', '.join(names)}), got {len(inputs)}")
        arrays = [self._check(value, name, shape)
                  for value, name, shape in zip(inputs, names, self.arg_shapes)]
        result = self._destination(out)
        if self._function is None:  # empty batch
            result.fill(0)
            return result
        target = result if result.flags.c_contiguous and result.flags.aligned \
            else aligned_empty(result.shape, result.dtype)
        self._function(*[safe(a) for a in arrays], target)
        if target is not result:
            result[...] = target
        return result

    def time(self, *inputs, repeat: int = 10, min_seconds: float = 0.2) -> float:
        """Median seconds of one call on these inputs (warm-up excluded; each sample loops until
        it lasts at least min_seconds / repeat, so short kernels are timed over many calls)."""
        import time

        out = self(*inputs)                      # warm-up; also validates the inputs once
        arrays = [safe(as_array(a, "input")) for a in inputs]
        function = self._function or (lambda *args: None)
        start = time.perf_counter()
        function(*arrays, out)
        once = max(time.perf_counter() - start, 1e-7)
        number = max(1, int(min_seconds / repeat / once))
        samples = []
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(number):
                function(*arrays, out)
            samples.append((time.perf_counter() - start) / number)
        return float(np.median(samples))

    def _check(self, value, name: str, shape) -> np.ndarray:
        array = as_array(value, name)
        if array.dtype != np.dtype(self.spec.dtype):
            raise TypeError(f"{name} has dtype {array.dtype}: expected {self.spec.dtype}")
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(array.shape)}: expected {tuple(shape)}")
        return array

    def _destination(self, out) -> np.ndarray:
        name, shape = self.arg_names[-1], self.arg_shapes[-1]
        if out is None:
            return aligned_empty(shape, self.spec.dtype)
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
        checked = self._check(out, f"out ({name})", shape)
        if not checked.flags.writeable:
            raise ValueError(f"out ({name}) is read-only")
        return checked
