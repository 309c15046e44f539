"""Targets: what the user says ("llvm", "cuda", a dict, a JSON string) -> a TVM Target, and a
record of what that target can do (TargetInfo), which is all schedules may ask about it."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform

import numpy as np
import tvm

DEFAULT_CUDA_ARCH = "sm_90"
# CUDA limits per block for the architectures convc targets (sm_70 and newer): the static shared
# memory a kernel may declare without opting in, threads per block, warp width.
CUDA_SHARED_MEMORY_PER_BLOCK = 48 * 1024
CUDA_MAX_THREADS_PER_BLOCK = 1024
CUDA_WARP_SIZE = 32
# Streaming multiprocessors of the flagship part of each architecture (the target JSON may say
# otherwise with "multiprocessor_count"): schedules size their grids from it.
CUDA_MULTIPROCESSORS = {"sm_70": 80, "sm_75": 40, "sm_80": 108, "sm_86": 84, "sm_89": 128,
                        "sm_90": 132, "sm_100": 148}


@dataclasses.dataclass(frozen=True)
class TargetInfo:
    kind: str                       # "llvm" or "cuda"
    arch: str                       # LLVM mcpu or CUDA sm_XX
    triple: str
    num_cores: int
    vector_bits: int
    max_threads_per_block: int = 1
    max_shared_memory_per_block: int = 0
    warp_size: int = 1
    multiprocessors: int = 0        # GPU only: streaming multiprocessors

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    def lanes(self, dtype: str) -> int:
        """Elements of `dtype` in one vector register (CPU) or 1 (GPU)."""
        if self.is_gpu:
            return 1
        return max(1, self.vector_bits // (8 * np.dtype(dtype).itemsize))

    @property
    def key(self) -> str:
        """Identity of the target for caches and tuning records."""
        if self.is_gpu:
            return f"cuda-{self.arch}"
        return f"llvm-{self.triple}-{self.arch}-{self.num_cores}c"


def host_triple() -> str:
    machine = platform.machine()
    # The wheel's LLVM reports a conda triple on x86-64; the system's linker wants the plain one.
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(
        machine, tvm.target.codegen.llvm_get_system_triple())


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def host_target_config() -> str:
    return json.dumps({"kind": "llvm", "mtriple": host_triple(),
                       "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                       "num-cores": host_cores()})


def resolve(target=None) -> tvm.target.Target:
    """None / "llvm" / "cpu" -> this CPU; "cuda" -> CUDA sm_90; dict or JSON string -> as given.

    Raises ValueError naming the target when TVM does not know it.
    """
    if isinstance(target, tvm.target.Target):
        return _complete(target)
    if target is None or isinstance(target, str):
        return _resolve_text(target)
    return _resolve_config(target)


@functools.lru_cache(maxsize=64)
def _resolve_text(target) -> tvm.target.Target:
    name = (target or "llvm").strip().lower()
    if name in ("llvm", "cpu", "host"):
        return tvm.target.Target(json.loads(host_target_config()))
    if name == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": DEFAULT_CUDA_ARCH})
    return _resolve_config(target)


def _resolve_config(target) -> tvm.target.Target:
    config = target
    if isinstance(target, str):
        try:
            config = json.loads(target)
        except json.JSONDecodeError:
            raise ValueError(
                f"target={target!r} is not known: expected 'llvm', 'cuda', a dict or a JSON object "
                "such as '{\"kind\": \"llvm\", \"mcpu\": \"skylake-avx512\"}'"
            ) from None
    if not isinstance(config, dict) or "kind" not in config:
        raise ValueError(f"target={target!r} is not valid: expected a dict with a 'kind'")
    if config["kind"] not in ("llvm", "cuda"):
        raise ValueError(f"target={target!r}: kind {config['kind']!r} is not supported, expected 'llvm' or 'cuda'")
    if config.get("mcpu") == "native":
        config = {**config, "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
    if config["kind"] == "llvm" and "mcpu" in config and not tvm.target.codegen.llvm_is_valid_cpu(
            config["mcpu"], config.get("mtriple", host_triple())):
        raise ValueError(f"target={target!r}: LLVM does not know the CPU {config['mcpu']!r}")
    try:
        return _complete(tvm.target.Target(config))
    except Exception as err:  # TVM raises ValueError/TVMError with its own text
        raise ValueError(f"target={target!r} is not valid: {err}") from None


def _complete(target: tvm.target.Target) -> tvm.target.Target:
    """Fill what convc's schedules and MetaSchedule need: an llvm target's triple and core count."""
    if target.kind.name != "llvm":
        return target
    config = dict(target.export()) if hasattr(target, "export") else json.loads(str(target))
    changed = False
    if "mtriple" not in config or not config["mtriple"]:
        config["mtriple"] = host_triple()
        changed = True
    if "num-cores" not in config or not config["num-cores"]:
        config["num-cores"] = host_cores()
        changed = True
    config.pop("tag", None) if not config.get("tag") else None
    return tvm.target.Target(config) if changed else target


def info(target) -> TargetInfo:
    target = resolve(target)
    attrs = target.attrs
    if target.kind.name == "cuda":
        return TargetInfo(
            kind="cuda", arch=str(attrs.get("arch", DEFAULT_CUDA_ARCH)), triple="nvptx64-nvidia-cuda",
            num_cores=1, vector_bits=128,
            max_threads_per_block=int(attrs.get("max_num_threads", CUDA_MAX_THREADS_PER_BLOCK)),
            max_shared_memory_per_block=int(attrs.get("max_shared_memory_per_block",
                                                      CUDA_SHARED_MEMORY_PER_BLOCK)),
            warp_size=int(attrs.get("thread_warp_size", CUDA_WARP_SIZE)),
            multiprocessors=int(attrs.get("multiprocessor_count",
                                          CUDA_MULTIPROCESSORS.get(str(attrs.get("arch")), 108))))
    return TargetInfo(kind="llvm", arch=str(attrs.get("mcpu", "generic")),
                      triple=str(attrs.get("mtriple", host_triple())),
                      num_cores=int(attrs.get("num-cores", host_cores())),
                      vector_bits=int(tvm.target.codegen.llvm_get_vector_width(target)))
