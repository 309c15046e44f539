"""A compiled kernel: one op of one ConvSpec for one target, callable on arrays."""

from __future__ import annotations

import time as _time

import numpy as np

from ..build import llvm
from ..ops import arguments, shapes
from ..spec import ConvSpec
from .arrays import aligned_allocator, as_array, ready, safe
from .prepack import PackedWeight, pack


def _fill_zeros(*arrays) -> None:
    """An empty batch: nothing to compute, the output (the last array) is all zeros."""
    arrays[-1][...] = 0


class Kernel:
    """One compiled op. Call it with the op's inputs (in parameter order, batched, in the spec's
    layout); it returns the output, written into `out` when given.

    Attributes: spec, op, target (a convc.target.Target), how ("tuned" / "hand-written" /
    "default"), tir (the scheduled TIR as TVMScript), source (generated code), module (the TVM
    runtime module), library (path of the cached shared library; None when it was built in
    memory), stats (per-kernel resource figures where the backend reports them).
    """

    def __init__(self, spec: ConvSpec, op: str, target, module, how: str, tir: str,
                 library=None, stats=None):
        self.spec, self.op, self.target, self.how = spec, op, target, how
        self.tir, self.module, self.library = tir, module, library
        self.stats = dict(stats or {})
        self.arg_names = arguments(spec, op)
        self.arg_shapes = shapes(spec, op)
        self.function = module[op] if module is not None else _fill_zeros
        self.dtype = np.dtype(spec.dtype)
        self._input_shapes = self.arg_shapes[:-1]
        self._empty = aligned_allocator(self.arg_shapes[-1], self.dtype)

    def __repr__(self) -> str:
        return f"<convc.Kernel {self.op} {self.spec.key} on {self.target.kind.name} ({self.how})>"

    @property
    def source(self) -> str:
        """Generated code: LLVM IR (CPU targets)."""
        if self.module is None:
            return ""
        for module in (self.module, *getattr(self.module, "imports", [])):
            try:
                text = module.inspect_source()
            except Exception:  # noqa: BLE001 - a loaded .so keeps no source
                continue
            if text:
                return text
        return llvm.source(self.tir, self.target)  # the library came from the disk cache

    @property
    def flops(self) -> int:
        return self.spec.flops

    def __call__(self, *inputs, out=None):
        if len(inputs) > 1 and type(inputs[1]) is PackedWeight:
            return inputs[1].run(self, inputs, out)
        dtype = self.dtype
        if out is None and len(inputs) == len(self._input_shapes):
            for array, shape in zip(inputs, self._input_shapes):
                if not (ready(array, dtype) and array.shape == shape):
                    break
            else:
                return self.launch(inputs)
        return self.run(self.checked(inputs), out)

    def prepack(self, weight) -> PackedWeight:
        """The weight transformed once for this kernel (Winograd forward and grad_input on CPUs;
        ValueError for kernels of the direct schedules): a PackedWeight that later calls take in
        the weight's place, `kernel(x, packed)`. A snapshot of the weight's values: pack again
        after changing the weight."""
        return pack(self, weight)

    def launch(self, arrays):
        """Run on NumPy arrays known to fit (this kernel's shapes and dtype, and `ready`: used as
        they are) into a fresh 64-byte aligned output."""
        result = self._empty()
        self.function(*arrays, result)
        return result

    def run(self, arrays, out=None):
        """Run on NumPy arrays of this kernel's shapes and dtype, copying those that are not
        `ready`; the result goes to `out` (checked) or a fresh aligned output."""
        result = self._empty() if out is None else self._destination(out)
        target = result if ready(result, self.dtype) else self._empty()
        self.function(*[safe(a) for a in arrays], target)
        if target is not result:
            result[...] = target
        return result

    def checked(self, inputs) -> list:
        """The inputs as NumPy arrays, each checked against this kernel's parameters."""
        names = self.arg_names[:-1]
        if len(inputs) != len(names):
            raise TypeError(f"{self.op} takes {len(names)} arrays ({', '.join(names)}), got {len(inputs)}")
        return [self._check(value, name, shape)
                for value, name, shape in zip(inputs, names, self.arg_shapes)]

    def time(self, *inputs, repeat: int = 10, min_seconds: float = 0.2) -> float:
        """Median seconds of one call on these inputs (warm-up excluded; each sample loops until
        it lasts at least min_seconds / repeat, so short kernels are timed over many calls)."""
        out = self(*inputs)                      # warm-up; also validates the inputs once
        arrays = [safe(as_array(a, "input")) for a in inputs]
        function = self.function
        start = _time.perf_counter()
        function(*arrays, out)
        once = max(_time.perf_counter() - start, 1e-7)
        number = max(1, int(min_seconds / repeat / once))
        samples = []
        for _ in range(repeat):
            start = _time.perf_counter()
            for _ in range(number):
                function(*arrays, out)
            samples.append((_time.perf_counter() - start) / number)
        return float(np.median(samples))

    def _check(self, value, name: str, shape) -> np.ndarray:
        array = as_array(value, name)
        if array.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {array.dtype}: expected {self.spec.dtype}")
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(array.shape)}: expected {tuple(shape)}")
        return array

    def _destination(self, out) -> np.ndarray:
        name, shape = self.arg_names[-1], self.arg_shapes[-1]
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
        checked = self._check(out, f"out ({name})", shape)
        if not checked.flags.writeable:
            raise ValueError(f"out ({name}) is read-only")
        return checked
