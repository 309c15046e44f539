"""A compiled CUDA kernel: an nvcc-built library (device code inside, ahead of time), called on
GPU 0 with NumPy arrays (copied there and back) or CUDA DLPack tensors (used in place)."""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi

from ..build import cuda
from .core import Kernel


class CudaKernel(Kernel):
    """A convc.Kernel whose module is an nvcc-built library.

    stats: {"arch", "nvcc", "kernels": [{name, threads, registers, spill_stores, spill_loads,
    stack_bytes, shared_bytes, barriers}], "threads", "registers", "shared_bytes", "spill_bytes"}.
    """

    def __init__(self, spec, op, target, module, how, tir, library, stats, unit=None):
        super().__init__(spec, op, target, module, how, tir, library=library, stats=stats)
        self._unit = unit

    @property
    def source(self) -> str:
        """The CUDA C++ translation unit nvcc compiled (kernels, then their host wrappers)."""
        if self._unit is None:
            self._unit = cuda.source(self.tir, self.target)
        return self._unit

    def __call__(self, *inputs, out=None):
        """Run on GPU 0. NumPy arrays are copied to the GPU and the result comes back as NumPy;
        CUDA DLPack tensors (torch.cuda, cupy, tvm) are used in place and the result stays there."""
        if not cuda.gpu_available():
            where = self.library or "the library (export it with convc.export.export_library)"
            raise RuntimeError(
                f"{self!r} needs an NVIDIA GPU and none is visible here. Its device code is "
                f"compiled: deploy {where} and load it with tvm_ffi.load_module on a GPU "
                "machine, or compile for the CPU (target='llvm').")
        count = self.outputs
        names = self.arg_names[:-count]
        if len(inputs) != len(names):
            raise TypeError(f"{self.op} takes {len(names)} arrays ({', '.join(names)}), got {len(inputs)}")
        several = count > 1
        outs = None if out is None else (list(out) if several else [out])
        on_host = all(isinstance(v, np.ndarray) for v in inputs) and (
            outs is None or all(isinstance(o, np.ndarray) for o in outs))
        device = tvm.cuda(0)
        shapes, dtypes = self.arg_shapes[-count:], [str(d) for d in self.arg_dtypes[-count:]]
        if on_host:
            arrays = [tvm.runtime.tensor(np.ascontiguousarray(self._check(v, n, s, d)), device)
                      for v, n, s, d in zip(inputs, names, self.arg_shapes, self.arg_dtypes)]
            results = [tvm.runtime.empty(s, d, device) for s, d in zip(shapes, dtypes)]
            self.function(*arrays, *results)
            host = [r.numpy() for r in results]
            if outs is None:
                return tuple(host) if several else host[0]
            for o, h, index in zip(outs, host, range(len(self.arg_names) - count,
                                                     len(self.arg_names))):
                self._destination(o, index)[...] = h
            return out
        arrays = [self._device(v, n, s, d)
                  for v, n, s, d in zip(inputs, names, self.arg_shapes, self.arg_dtypes)]
        if outs is None:
            results = [tvm.runtime.empty(s, d, device) for s, d in zip(shapes, dtypes)]
        else:
            results = [self._device(o, f"out ({n})", s, d) for o, n, s, d in
                       zip(outs, self.arg_names[-count:], shapes, dtypes)]
        self.function(*arrays, *results)
        if out is not None:
            return out
        return tuple(results) if several else results[0]

    def run(self, arrays, out=None):
        """As Kernel.run, through the GPU (NumPy arrays copied there and back)."""
        return self(*arrays, out=out)

    def _device(self, value, name, shape, dtype=None):
        if not hasattr(value, "__dlpack__"):
            raise TypeError(f"{name} is a {type(value).__name__}: expected a NumPy array or a CUDA "
                            "DLPack tensor")
        tensor = tvm_ffi.from_dlpack(value)
        dtype = self.spec.dtype if dtype is None else str(dtype)
        if tuple(tensor.shape) != tuple(shape) or str(tensor.dtype) != dtype:
            raise ValueError(f"{name} is {tuple(tensor.shape)} {tensor.dtype}: expected "
                             f"{tuple(shape)} {dtype}")
        return tensor
