"""The CUDA backend (NVIDIA GPUs): kernels whose device code nvcc compiled ahead of time.

    kernel = convc.compile(spec, "forward", target="cuda")   # or {"kind": "cuda", "arch": "sm_80"}
    kernel.library     # .so embedding a fatbin (SASS + PTX); loads with tvm_ffi.load_module
    kernel.stats       # per __global__ kernel: threads, registers, spills, shared memory (ptxas)
    kernel(x, w)       # on a GPU machine: NumPy in/out (copied) or CUDA DLPack tensors (in place)
    convc.build.cuda.export_cuda_library([k1, k2, k3], "lib.so")   # several kernels, one library

Without a GPU everything up to the library works (nvcc is the only requirement); what the kernels
compute is checked on the CPU through convc.build.cuda.serialize.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from pathlib import Path

import tvm
import tvm_ffi

from ...spec import ConvSpec
from ...target import resolved
from .. import cache
from ..artifact import Artifact, entry_key, metadata
from .library import (KernelReport, LaunchLimitError, build_library, check_limits,
                      compile_device_code, generate, merge, summary)
from .nvcc import NvccError, NvccNotFound, Resources, find_nvcc, nvcc_version, parse_ptxas
from .serialize import build_serial, serialize

__all__ = [
    "KernelReport", "LaunchLimitError", "NvccError", "NvccNotFound", "Resources", "build",
    "build_serial", "check_limits", "compile_device_code", "export_cuda_library", "find_nvcc",
    "gpu_available", "parse_ptxas", "serialize", "source",
]

# Bumped when the way libraries are produced changes (part of the cache key).
FORMAT = "cuda-host-fatbin-1"


def gpu_available() -> bool:
    """True when TVM's CUDA runtime loaded and sees a device."""
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - no CUDA runtime library, no driver: no GPU
        return False


def build(spec: ConvSpec, op: str, target, mod: tvm.IRModule, how: str) -> Artifact:
    """Generate, nvcc-compile and load the scheduled `mod` (one function named `op`). The library
    is cached on disk like CPU kernels (key: TIR, target, nvcc release); when the cache cannot be
    written it goes to a directory of this process's own, removed at exit."""
    nvcc = nvcc_version(find_nvcc())  # fail early, with instructions, when there is no nvcc
    tir = mod.script()
    key = entry_key(spec, op, target, how, tir, f"nvcc-{nvcc}", FORMAT)
    hit = cache.load(key, _load)
    if hit is not None and "cuda" in hit[1]:
        library, entry, module = hit
        return Artifact(module, how, tir, library, entry["cuda"])
    built = {}
    entry = metadata(spec, op, target, how)

    def write(path):
        found, built["unit"] = build_library(mod, target, path)
        entry["cuda"] = summary(found, target, nvcc)

    library = cache.store(key, write, entry)
    if library is None:
        library = _private_directory() / f"{key}.so"
        write(library)
    return Artifact(_load(library), how, tir, library, entry["cuda"], built["unit"])


def source(tir: str, target) -> str:
    """The CUDA C++ translation unit (kernels and host wrappers) of a scheduled function given
    as TVMScript."""
    unit, _ = generate(tvm.script.from_source(tir), target)
    return unit


def _load(library):
    return tvm_ffi.load_module(str(library))


_PRIVATE: list = []


def _private_directory() -> Path:
    if not _PRIVATE:
        path = Path(tempfile.mkdtemp(prefix="convc-cuda-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _PRIVATE.append(path)
    return _PRIVATE[0]


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
    nvcc = nvcc_version(find_nvcc())
    if isinstance(kernels, tvm.IRModule):
        if len(more) != 1:
            raise TypeError("export_cuda_library(mod, target, path) takes a target and a path")
        mod, target, path = kernels, resolved(path), more[0]
        if not target.is_gpu:
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
    return {"arch": target.info.arch, "nvcc": nvcc, "functions": functions}


def _common_target(kernels):
    """The one CUDA target of `kernels` (compiled Kernels: anything with .target, .op, .spec,
    .tir)."""
    if not kernels:
        raise ValueError("export_cuda_library: no kernels given")
    for k in kernels:
        if getattr(k, "target", None) is None or not k.target.is_gpu:
            raise ValueError(f"export_cuda_library: {k!r} is not a CUDA kernel: compile it with "
                             "target='cuda'")
    archs = {k.target.info.arch for k in kernels}
    if len(archs) != 1:
        raise ValueError(f"export_cuda_library: the kernels target different GPUs {sorted(archs)}; "
                         "one library holds code for one arch")
    return kernels[0].target


def default_names(kernels) -> list:
    ops = [k.op for k in kernels]
    return [k.op if ops.count(k.op) == 1 else re.sub(r"\W", "_", f"{k.op}_{k.spec.key}")
            for k in kernels]
