"""Lower and compile: (spec, op, target) -> Kernel, through an in-memory and an on-disk cache."""

from __future__ import annotations

import json
import threading

import tvm

from . import __version__, cache
from .dispatch import choose
from .kernel import Kernel
from .ops import declare
from .spec import ConvSpec, check_op
from .target import info, resolve

_MEMORY: dict = {}
_LOCK = threading.Lock()


def schedule(spec: ConvSpec, op: str, target, log_dir=None):
    """The scheduled IRModule of one kernel (function name = op) and how it was chosen."""
    func = declare(spec, op).with_attr("global_symbol", op)
    sch, how = choose(func, target, log_dir)
    (_, scheduled), = list(sch.mod.functions_items())
    return tvm.IRModule({op: scheduled.with_attr("global_symbol", op)}), how


def compile(spec: ConvSpec, op: str = "forward", target=None) -> Kernel:  # noqa: A001 - public name
    """Compile `op` ("forward", "grad_input", "grad_weight") of `spec` for `target`.

    target: None (this CPU), "llvm", "cuda", a dict or a JSON string (see convc.target.resolve).
    The result is cached in memory and on disk; a second call for the same arguments returns the
    same Kernel object.
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec={spec!r} is not a ConvSpec: build one with ConvSpec.from_shapes(...)")
    op = check_op(op)
    target = resolve(target)
    memo = (spec, op, str(target))
    kernel = _MEMORY.get(memo)
    if kernel is not None:
        return kernel
    with _LOCK:
        kernel = _MEMORY.get(memo) or _build(spec, op, target)
        _MEMORY[memo] = kernel
    return kernel


def _build(spec: ConvSpec, op: str, target) -> Kernel:
    if spec.batch == 0:  # nothing to compute: the Kernel fills its output without a library
        return Kernel(spec, op, target, module=None, how="empty", tir="")
    if info(target).is_gpu:
        from . import cuda  # the CUDA toolchain (nvcc) is only needed for GPU targets

        return cuda.build_kernel(spec, op, target)
    mod, how = schedule(spec, op, target)
    tir = mod.script()
    key = cache.digest(__version__, tvm.__version__, str(target), op, spec.key, how, tir)
    hit = cache.lookup(key)
    if hit is not None:
        library, _ = hit
        return Kernel(spec, op, target, module=tvm.runtime.load_module(str(library)), how=how,
                      tir=tir, library=library)
    executable = tvm.compile(mod, target=target)
    metadata = {"convc": __version__, "tvm": tvm.__version__, "target": json.loads(str(target)),
                "op": op, "spec": spec.to_dict(), "how": how}
    library = cache.store(key, executable.export_library, metadata)
    return Kernel(spec, op, target, module=executable.mod, how=how, tir=tir, library=library)


def clear_memory_cache() -> None:
    """Forget compiled kernels held in this process (the disk cache is kept)."""
    with _LOCK:
        _MEMORY.clear()
