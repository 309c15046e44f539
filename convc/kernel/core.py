"""A compiled kernel: one op of one ConvSpec for one target, callable on arrays."""

from __future__ import annotations

import time as _time

import numpy as np

from ..build import llvm
from ..ops import arguments, dtypes, outputs, shapes
from .arrays import aligned_allocator, as_array, ready, safe
from .prepack import PackedWeight, pack


def _fill_zeros(*arrays) -> None:
    """An empty batch: nothing to compute (every array is empty; the output is all zeros)."""
    arrays[-1][...] = 0


class Kernel:
    """One compiled op. Call it with the op's inputs (in parameter order, batched, in the spec's
    layout); it returns the output (a tuple where the op has several: max pooling's
    forward_indices), written into `out` (an array, or a tuple of arrays) when given.

    Attributes: spec (a ConvSpec or a PoolSpec), op, target (a convc.target.Target), how
    ("tuned" / "hand-written" / "default"), tir (the scheduled TIR as TVMScript), source
    (generated code), module (the TVM runtime module), library (path of the cached shared
    library; None when it was built in memory), stats (per-kernel resource figures where the
    backend reports them); arg_names, arg_shapes, arg_dtypes (every parameter, outputs last),
    outputs (how many).
    """

    def __init__(self, spec, op: str, target, module, how: str, tir: str,
                 library=None, stats=None):
        self.spec, self.op, self.target, self.how = spec, op, target, how
        self.tir, self.module, self.library = tir, module, library
        self.stats = dict(stats or {})
        self.arg_names = arguments(spec, op)
        self.arg_shapes = shapes(spec, op)
        self.arg_dtypes = tuple(np.dtype(d) for d in dtypes(spec, op))
        self.outputs = outputs(spec, op)
        self.function = module[op] if module is not None else _fill_zeros
        self.dtype = np.dtype(spec.dtype)
        self._input_shapes = self.arg_shapes[:-self.outputs]
        self._input_dtypes = self.arg_dtypes[:-self.outputs]
        self._empty, *self._more = [aligned_allocator(shape, dtype) for shape, dtype in
                                    zip(self.arg_shapes[-self.outputs:],
                                        self.arg_dtypes[-self.outputs:])]

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
        for value in inputs[1:3]:   # the weight's place: second, or third after a saved array
            if type(value) is PackedWeight:
                return value.run(self, inputs, out)
        if out is None and len(inputs) == len(self._input_shapes):
            for array, shape, dtype in zip(inputs, self._input_shapes, self._input_dtypes):
                if not (ready(array, dtype) and array.shape == shape):
                    break
            else:
                return self.launch(inputs)
        return self.run(self.checked(inputs), out)

    def prepack(self, weight) -> PackedWeight:
        """The weight packed once for this kernel (forward and grad_input on CPUs: Winograd's
        transformed filter, the direct schedules' blocked or flipped layout, or a plain copy where
        the kernel reads w as given; see convc.kernel.prepack): a PackedWeight that later calls
        take in the weight's place, `kernel(x, packed)`. A snapshot of the weight's values: pack
        again after changing the weight. ValueError for grad_weight and CUDA kernels."""
        return pack(self, weight)

    def launch(self, arrays):
        """Run on NumPy arrays known to fit (this kernel's shapes and dtypes, and `ready`: used
        as they are) into fresh 64-byte aligned outputs."""
        result = self._empty()
        if self._more:
            rest = [allocate() for allocate in self._more]
            self.function(*arrays, result, *rest)
            return (result, *rest)
        self.function(*arrays, result)
        return result

    def run(self, arrays, out=None):
        """Run on NumPy arrays of this kernel's shapes and dtypes, copying those that are not
        `ready`; the results go to `out` (checked: an array, a tuple of them for several
        outputs) or to fresh aligned outputs."""
        allocators = [self._empty, *self._more]
        if out is None:
            results = [allocate() for allocate in allocators]
        else:
            results = self._destinations(out)
        targets = [r if ready(r, r.dtype) else allocate()
                   for r, allocate in zip(results, allocators)]
        self.function(*[safe(a) for a in arrays], *targets)
        for result, target in zip(results, targets):
            if target is not result:
                result[...] = target
        return results[0] if self.outputs == 1 else tuple(results)

    def checked(self, inputs) -> list:
        """The inputs as NumPy arrays, each checked against this kernel's parameters."""
        names = self.arg_names[:-self.outputs]
        if len(inputs) != len(names):
            raise TypeError(f"{self.op} takes {len(names)} arrays ({', '.join(names)}), got {len(inputs)}")
        return [self._check(value, name, shape, dtype) for value, name, shape, dtype
                in zip(inputs, names, self.arg_shapes, self.arg_dtypes)]

    def time(self, *inputs, repeat: int = 10, min_seconds: float = 0.2) -> float:
        """Median seconds of one call on these inputs (a PackedWeight among them: the packed call;
        warm-up excluded; each sample loops until
        it lasts at least min_seconds / repeat, so short kernels are timed over many calls)."""
        out = self(*inputs)                      # warm-up; also validates the inputs once
        packs = [a for a in inputs if type(a) is PackedWeight]   # a PackedWeight: its packed call
        arrays = [a.array if type(a) is PackedWeight else safe(as_array(a, "input"))
                  for a in inputs]
        arrays += list(out) if self.outputs > 1 else [out]
        function = packs[0].function if packs else self.function
        start = _time.perf_counter()
        function(*arrays)
        once = max(_time.perf_counter() - start, 1e-7)
        number = max(1, int(min_seconds / repeat / once))
        samples = []
        for _ in range(repeat):
            start = _time.perf_counter()
            for _ in range(number):
                function(*arrays)
            samples.append((_time.perf_counter() - start) / number)
        return float(np.median(samples))

    def _check(self, value, name: str, shape, dtype=None) -> np.ndarray:
        array = as_array(value, name)
        dtype = self.dtype if dtype is None else dtype
        if array.dtype != dtype:
            raise TypeError(f"{name} has dtype {array.dtype}: expected {dtype}")
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(array.shape)}: expected {tuple(shape)}")
        return array

    def _destinations(self, out) -> list:
        """`out` (an array; a tuple of arrays for several outputs), each checked."""
        if self.outputs > 1:
            if not isinstance(out, (tuple, list)) or len(out) != self.outputs:
                raise TypeError(f"out must be a tuple of {self.outputs} NumPy arrays "
                                f"({', '.join(self.arg_names[-self.outputs:])}), got "
                                f"{type(out).__name__}")
            return [self._destination(o, i) for i, o in enumerate(out, len(self.arg_names) -
                                                                  self.outputs)]
        return [self._destination(out, len(self.arg_names) - 1)]

    def _destination(self, out, index: int = -1) -> np.ndarray:
        name, shape = self.arg_names[index], self.arg_shapes[index]
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
        checked = self._check(out, f"out ({name})", shape, self.arg_dtypes[index])
        if not checked.flags.writeable:
            raise ValueError(f"out ({name}) is read-only")
        return checked
