"""convc on NVIDIA GPUs: kernels whose device code nvcc compiled ahead of time.

    kernel = convc.compile(spec, "forward", target="cuda")      # or {"kind": "cuda", "arch": "sm_80"}
    kernel.library        # .so embedding a fatbin (SASS + PTX); loads with tvm_ffi.load_module
    kernel.stats          # per __global__ kernel: threads, registers, spills, shared memory (ptxas)
    kernel(x, w)          # on a GPU machine: NumPy in/out (copied) or CUDA DLPack tensors (in place)
    convc.cuda.export_cuda_library([k1, k2, k3], "lib.so")    # several kernels, one library

Without a GPU everything up to the library works (nvcc is the only requirement); what the kernels
compute is checked on the CPU through convc.cuda.serialize.
"""

from __future__ import annotations

import json
import re

import numpy as np
import tvm

from ..kernel import Kernel
from .library import (KernelReport, LaunchLimitError, build_library, check_limits,
                      compile_device_code, generate, merge, summary)
from .nvcc import NvccError, NvccNotFound, Resources, find_nvcc, nvcc_version, parse_ptxas
from .serialize import build_serial, serialize

__all__ = [
    "CudaKernel", "KernelReport", "LaunchLimitError", "NvccError", "NvccNotFound", "Resources",
    "build_kernel", "build_serial", "check_limits", "compile_device_code", "export_cuda_library",
    "find_nvcc", "gpu_available", "parse_ptxas", "serialize",
]

# Bumped when the way libraries are produced changes (part of the cache key).
FORMAT = "cuda-host-fatbin-1"


def gpu_available() -> bool:
    """True when TVM's CUDA runtime loaded and sees a device."""
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - no CUDA runtime library, no driver: no GPU
        return False


def build_kernel(spec, op: str, target):
    """Schedule, generate, nvcc-compile and load one op (convc.build.compile calls this for GPU
    targets). The library is cached on disk like CPU kernels (key: TIR, target, nvcc release)."""
    from .. import __version__, cache
    from ..build import schedule

    nvcc = nvcc_version(find_nvcc())  # fail early, with instructions, when there is no nvcc
    mod, how = schedule(spec, op, target)
    tir = mod.script()
    key = cache.digest(__version__, tvm.__version__, str(target), op, spec.key, how, tir,
                       f"nvcc-{nvcc}", FORMAT)
    hit = cache.lookup(key)
    if hit is not None and "cuda" in hit[1]:
        library, metadata = hit
        return CudaKernel(spec, op, target, _load(library), how, tir, library, metadata["cuda"])
    built = {}

    def write(path):
        found, built["unit"] = build_library(mod, target, path)
        metadata["cuda"] = summary(found, target, nvcc)

    metadata = {"convc": __version__, "tvm": tvm.__version__, "target": json.loads(str(target)),
                "op": op, "spec": spec.to_dict(), "how": how}
    library = cache.store(key, write, metadata)
    return CudaKernel(spec, op, target, _load(library), how, tir, library, metadata["cuda"],
                      unit=built["unit"])


def _load(library):
    import tvm_ffi

    return tvm_ffi.load_module(str(library))


def export_cuda_library(kernels, path, *more, names=None) -> dict:
    """Put CUDA kernels into one shared library. Two call forms:

    export_cuda_library(kernels, path, names=None): Kernels from convc.compile(..., target="cuda"),
      all for one arch; names: the exported function name of each, default its op, or
      op_<spec key> when two kernels share an op.
    export_cuda_library(mod, target, path): an IRModule of scheduled functions, exported under
      their global symbols, and its CUDA target (the form convc.export uses).

    -> manifest: {"arch", "nvcc", "functions": {name: {"kernels": [per __global__ kernel:
    threads, registers, spills, shared memory], and for Kernels "op", "spec"}}}.
    Raises NvccNotFound without nvcc, LaunchLimitError when a kernel does not fit its target.
    """
    from ..target import resolve

    nvcc = nvcc_version(find_nvcc())
    if isinstance(kernels, tvm.IRModule):
        if len(more) != 1:
            raise TypeError("export_cuda_library(mod, target, path) takes a target and a path")
        mod, target, path = kernels, resolve(path), more[0]
        if target.kind.name != "cuda":
            raise ValueError(f"export_cuda_library: target {target} is not a CUDA target")
        functions = {str(gv.name_hint): {} for gv, _ in mod.functions_items()}
    else:
        kernels = list(kernels)
        target = _common_target(kernels)
        names = list(names) if names is not None else default_names(kernels)
        if len(names) != len(kernels) or len(set(names)) != len(names):
            raise ValueError(f"export_cuda_library: names={names!r} must be {len(kernels)} "
                             "distinct names")
        mod = merge({n: k.tir for n, k in zip(names, kernels)})
        functions = {n: {"op": k.op, "spec": k.spec.to_dict()} for n, k in zip(names, kernels)}
    found, _ = build_library(mod, target, path)
    for name, entry in functions.items():
        entry["kernels"] = [r.to_dict() for r in found
                            if re.fullmatch(rf"{re.escape(name)}_kernel(_\d+)?", r.name)]
    return {"arch": str(target.attrs.get("arch")), "nvcc": nvcc, "functions": functions}


def _common_target(kernels):
    if not kernels:
        raise ValueError("export_cuda_library: no kernels given")
    for k in kernels:
        if getattr(k, "target", None) is None or k.target.kind.name != "cuda":
            raise ValueError(f"export_cuda_library: {k!r} is not a CUDA kernel: compile it with "
                             "target='cuda'")
    archs = {str(k.target.attrs.get("arch")) for k in kernels}
    if len(archs) != 1:
        raise ValueError(f"export_cuda_library: the kernels target different GPUs {sorted(archs)}; "
                         "one library holds code for one arch")
    return kernels[0].target


def default_names(kernels) -> list:
    ops = [k.op for k in kernels]
    return [k.op if ops.count(k.op) == 1 else re.sub(r"\W", "_", f"{k.op}_{k.spec.key}")
            for k in kernels]


class CudaKernel(Kernel):
    """A convc.Kernel whose module is an nvcc-built library (device code inside, ahead of time).

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
            self._unit, _ = generate(tvm.script.from_source(self.tir), self.target)
        return self._unit

    def __call__(self, *inputs, out=None):
        """Run on GPU 0. NumPy arrays are copied to the GPU and the result comes back as NumPy;
        CUDA DLPack tensors (torch.cuda, cupy, tvm) are used in place and the result stays there."""
        if not gpu_available():
            raise RuntimeError(
                f"{self!r} needs an NVIDIA GPU and none is visible here. Its device code is "
                f"compiled: deploy {self.library} and load it with tvm_ffi.load_module on a GPU "
                "machine, or compile for the CPU (target='llvm').")
        names = self.arg_names[:-1]
        if len(inputs) != len(names):
            raise TypeError(f"{self.op} takes {len(names)} arrays ({', '.join(names)}), got {len(inputs)}")
        on_host = all(isinstance(v, np.ndarray) for v in inputs) and (
            out is None or isinstance(out, np.ndarray))
        device = tvm.cuda(0)
        if on_host:
            arrays = [tvm.runtime.tensor(np.ascontiguousarray(self._check(v, n, s)), device)
                      for v, n, s in zip(inputs, names, self.arg_shapes)]
            result = tvm.runtime.empty(self.arg_shapes[-1], self.spec.dtype, device)
            self._function(*arrays, result)
            host = result.numpy()
            if out is None:
                return host
            self._destination(out)[...] = host
            return out
        arrays = [self._device(v, n, s) for v, n, s in zip(inputs, names, self.arg_shapes)]
        result = (tvm.runtime.empty(self.arg_shapes[-1], self.spec.dtype, device) if out is None
                  else self._device(out, f"out ({self.arg_names[-1]})", self.arg_shapes[-1]))
        self._function(*arrays, result)
        return result if out is None else out

    def _device(self, value, name, shape):
        import tvm_ffi

        if not hasattr(value, "__dlpack__"):
            raise TypeError(f"{name} is a {type(value).__name__}: expected a NumPy array or a CUDA "
                            "DLPack tensor")
        tensor = tvm_ffi.from_dlpack(value)
        if tuple(tensor.shape) != tuple(shape) or str(tensor.dtype) != self.spec.dtype:
            raise ValueError(f"{name} is {tuple(tensor.shape)} {tensor.dtype}: expected "
                             f"{tuple(shape)} {self.spec.dtype}")
        return tensor
