"""The CUDA toolkit as convc uses it: find nvcc, compile device code (cubin) or a whole
library (.so with an embedded fatbin), and read what ptxas reports per kernel.

Everything here is a subprocess call; nothing needs a GPU or a CUDA driver.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import tvm_ffi.libinfo


# Where a CUDA toolkit usually lives when nvcc is not on PATH.
FALLBACK_HOMES = ("/usr/local/cuda",)


class NvccNotFound(RuntimeError):
    """No CUDA compiler: CUDA kernels cannot be compiled ahead of time on this machine."""


def find_nvcc() -> str:
    """Path of nvcc: $CONVC_NVCC, else $CUDACXX, else nvcc on PATH, else $CUDA_HOME/bin/nvcc or
    /usr/local/cuda/bin/nvcc. Raises NvccNotFound saying where it looked."""
    candidates = [os.environ.get("CONVC_NVCC"), os.environ.get("CUDACXX"), shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), *FALLBACK_HOMES):
        if home:
            candidates.append(os.path.join(home, "bin", "nvcc"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise NvccNotFound(
        "nvcc (the CUDA compiler) was not found: target='cuda' compiles device code ahead of time "
        "and needs the CUDA toolkit. Install it, put nvcc on PATH, or set CONVC_NVCC=/path/to/nvcc "
        "(looked at $CONVC_NVCC, $CUDACXX, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin).")


@functools.lru_cache(maxsize=None)
def nvcc_version(nvcc: str | None = None) -> str:
    """'13.0' style release of the nvcc in use (part of every cache key)."""
    out = subprocess.run([nvcc or find_nvcc(), "--version"], capture_output=True, text=True,
                         check=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else out.strip().splitlines()[-1]


def arch_flags(arch: str) -> list:
    """nvcc flags for `arch` ('sm_90', 'sm_90a', 'sm_80'): SASS for that GPU plus PTX of the
    same version, so a newer GPU can still JIT the library."""
    match = re.fullmatch(r"sm_(\d+[a-z]?)", arch)
    if not match:
        raise ValueError(f"arch={arch!r} is not a CUDA architecture: expected e.g. 'sm_80' or 'sm_90'")
    version = match.group(1)
    return ["-gencode", f"arch=compute_{version},code=[sm_{version},compute_{version}]"]


# Flags for every compile: optimized, no fast-math (convc results must match the reference),
# the warnings TVM's generated code always triggers silenced, ptxas verbose (resources per kernel).
COMMON_FLAGS = ["-O3", "-std=c++17", "-Xptxas", "-v",
                "-diag-suppress=177,174,550,68,186"]


@dataclasses.dataclass(frozen=True)
class Resources:
    """What ptxas reports for one kernel (one __global__ function)."""
    registers: int
    spill_stores: int = 0
    spill_loads: int = 0
    stack_bytes: int = 0
    shared_bytes: int = 0
    barriers: int = 0

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '([^']+)' for '([^']+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"ptxas info\s*: Used (\d+) registers")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict:
    """{kernel name: Resources} from `ptxas -v` output (through nvcc -Xptxas -v)."""
    kernels, name, fields = {}, None, {}
    for line in log.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            name, fields = entry.group(1), {}
            continue
        if name is None:
            continue
        frame = _FRAME.search(line)
        if frame:
            fields.update(stack_bytes=int(frame.group(1)), spill_stores=int(frame.group(2)),
                          spill_loads=int(frame.group(3)))
        used = _USED.search(line)
        if used:
            barriers, smem = _BARRIERS.search(line), _SMEM.search(line)
            kernels[name] = Resources(
                registers=int(used.group(1)), barriers=int(barriers.group(1)) if barriers else 0,
                shared_bytes=int(smem.group(1)) if smem else 0, **fields)
            name = None
    return kernels


class NvccError(RuntimeError):
    """nvcc rejected generated code (a convc bug): the message carries nvcc's own output."""


def run_nvcc(args: list, cwd: str) -> str:
    """Run nvcc with `args` in `cwd`; its combined output (ptxas reports included)."""
    proc = subprocess.run([find_nvcc(), *args], cwd=cwd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise NvccError(f"nvcc {' '.join(args)} failed (exit {proc.returncode}):\n{log[-6000:]}")
    return log


def compile_device(source: str, arch: str, fmt: str = "cubin"):
    """Device code only (no host side): -> (bytes of the cubin/fatbin, {kernel: Resources})."""
    if fmt not in ("cubin", "fatbin", "ptx"):
        raise ValueError(f"fmt={fmt!r}: expected 'cubin', 'fatbin' or 'ptx'")
    with tempfile.TemporaryDirectory(prefix="convc-nvcc-") as tmp:
        Path(tmp, "kernels.cu").write_text(source)
        flags = arch_flags(arch) if fmt == "fatbin" else [f"-arch={arch}"]
        log = run_nvcc([f"--{fmt}", *COMMON_FLAGS, *flags, "kernels.cu", "-o", f"kernels.{fmt}"],
                       tmp)
        return Path(tmp, f"kernels.{fmt}").read_bytes(), parse_ptxas(log)


def compile_library(source: str, arch: str, path) -> dict:
    """Host and device code of one translation unit (tvm.backend.cuda.export_cuda_host) -> a
    shared library at `path` that embeds the device code as a fatbin, links tvm-ffi and the CUDA
    runtime statically (no libcuda stub: driver symbols resolve when it loads on a GPU machine).
    Returns {kernel: Resources}."""
    include = tvm_ffi.libinfo.find_include_path()
    dlpack = tvm_ffi.libinfo.find_dlpack_include_path()
    libtvm_ffi = tvm_ffi.libinfo.find_libtvm_ffi()
    path = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="convc-nvcc-") as tmp:
        Path(tmp, "library.cu").write_text(source)
        log = run_nvcc(["-shared", "-Xcompiler", "-fPIC", *COMMON_FLAGS, *arch_flags(arch),
                        f"-I{include}", f"-I{dlpack}", "library.cu", libtvm_ffi,
                        "-Xlinker", f"-rpath,{Path(libtvm_ffi).parent}", "-o", str(path)], tmp)
    return parse_ptxas(log)
