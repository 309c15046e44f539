"""The LLVM backend (CPUs): a scheduled module -> a runtime module, through the disk cache."""

from __future__ import annotations

import tvm

from ..spec import ConvSpec
from . import cache
from .artifact import Artifact, entry_key, metadata


def build(spec: ConvSpec, op: str, target, mod: tvm.IRModule, how: str) -> Artifact:
    """Compile the scheduled `mod` (one function named `op`) for the CPU `target`. A cached
    library is loaded when one is there and checks out; otherwise the kernel is compiled and
    stored (kept in memory only when the cache cannot be written)."""
    tir = mod.script()
    key = entry_key(spec, op, target, how, tir)
    hit = cache.load(key, lambda path: tvm.runtime.load_module(str(path)))
    if hit is not None:
        library, _, module = hit
        return Artifact(module, how, tir, library)
    executable = tvm.compile(mod, target=target)
    library = cache.store(key, executable.export_library, metadata(spec, op, target, how))
    return Artifact(executable.mod, how, tir, library)


def source(tir: str, target) -> str:
    """The LLVM IR of a scheduled function given as TVMScript (for kernels whose library came
    from the disk cache, which keeps no source)."""
    return tvm.compile(tvm.script.from_source(tir), target=target).mod.inspect_source()
