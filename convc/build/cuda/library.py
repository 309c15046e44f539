"""Scheduled CUDA TIR -> device code compiled ahead of time, launch-limit checks, libraries.

The route (DESIGN.md §2): build with host "cuda_host", so TVM emits the host wrappers as CUDA C++
next to the kernels; tvm.backend.cuda.export_cuda_host joins them into one translation unit; nvcc
compiles it into a shared library that embeds the kernels as a fatbin (SASS for the arch + PTX)
and exports `__tvm_ffi_<name>` like a CPU library: `tvm_ffi.load_module(path)` loads it, no TVM
compiler and no nvcc needed where it runs.

Why not TVM's default route: with an LLVM host, TVM 0.27 keeps the kernels as CUDA *source* in
the module (the compiler never calls `tvm_callback_cuda_compile`; only the CUDA runtime does, when
the module is loaded on a GPU machine, with NVRTC by default). That is compilation at load time,
not ahead of time, and it needs a GPU to even try.
"""

from __future__ import annotations

import dataclasses
import re
import struct

import tvm

from ...target import info
from .nvcc import Resources, compile_device, compile_library

# The register file a block may use on sm_70 ... sm_90 (64K 32-bit registers per SM) and the
# most registers one thread may have.
REGISTERS_PER_BLOCK = 64 * 1024
REGISTERS_PER_THREAD = 255


class LaunchLimitError(ValueError):
    """A kernel would not launch on the target: too many threads, registers or shared memory."""


@dataclasses.dataclass(frozen=True)
class KernelReport:
    """One __global__ kernel: its launch shape and what ptxas says it uses."""
    name: str
    threads: int          # threads per block (the __launch_bounds__ TVM compiled in)
    resources: Resources

    def to_dict(self) -> dict:
        return {"name": self.name, "threads": self.threads, **self.resources.to_dict()}


def aot_target(target) -> tvm.target.Target:
    """`target` (a CUDA target) with the cuda_host host that export_cuda_host needs."""
    config = dict(target.export())
    config.pop("host", None)
    config["host"] = {"kind": "cuda_host"}
    return tvm.target.Target(config)


def generate(mod: tvm.IRModule, target):
    """(one translation unit with host and device code, device code alone) for `mod`."""
    executable = tvm.compile(mod, target=aot_target(target))
    host = executable.mod
    device = "\n\n".join(m.inspect_source("cuda") for m in host.imports if m.kind == "cuda")
    return tvm.backend.cuda.export_cuda_host(host), device


_LAUNCH_BOUNDS = re.compile(r'__global__ void __launch_bounds__\((\d+)\) (\w+)\(')


def launch_bounds(device_source: str) -> dict:
    """{kernel name: threads per block} from the generated CUDA."""
    return {name: int(n) for n, name in _LAUNCH_BOUNDS.findall(device_source)}


def reports(device_source: str, resources: dict) -> list:
    threads = launch_bounds(device_source)
    missing = sorted(set(threads) - set(resources))
    if missing:
        raise RuntimeError(f"ptxas reported nothing for kernels {missing}")
    return [KernelReport(name, threads[name], resources[name]) for name in sorted(threads)]


def check_limits(kernel_reports, target) -> None:
    """Raise LaunchLimitError unless every kernel fits the target's per-block limits."""
    ti = info(target)
    problems = []
    for r in kernel_reports:
        res = r.resources
        if r.threads > ti.max_threads_per_block:
            problems.append(f"{r.name}: {r.threads} threads per block > {ti.max_threads_per_block}")
        if res.shared_bytes > ti.max_shared_memory_per_block:
            problems.append(f"{r.name}: {res.shared_bytes} bytes of shared memory > "
                            f"{ti.max_shared_memory_per_block}")
        if res.registers > REGISTERS_PER_THREAD:
            problems.append(f"{r.name}: {res.registers} registers per thread > {REGISTERS_PER_THREAD}")
        if res.registers * r.threads > REGISTERS_PER_BLOCK:
            problems.append(f"{r.name}: {res.registers} registers x {r.threads} threads > "
                            f"{REGISTERS_PER_BLOCK} per block")
    if problems:
        raise LaunchLimitError(f"kernels do not fit {ti.key}: " + "; ".join(problems))


def summary(kernel_reports, target, nvcc: str) -> dict:
    """The figures a Kernel records (kernel.stats) and a library manifest repeats."""
    ti = info(target)
    return {
        "arch": ti.arch, "nvcc": nvcc,
        "kernels": [r.to_dict() for r in kernel_reports],
        "threads": max((r.threads for r in kernel_reports), default=0),
        "registers": max((r.resources.registers for r in kernel_reports), default=0),
        "shared_bytes": max((r.resources.shared_bytes for r in kernel_reports), default=0),
        "spill_bytes": sum(r.resources.spills for r in kernel_reports),
    }


def compile_device_code(mod: tvm.IRModule, target) -> list:
    """nvcc -cubin of `mod`'s kernels (no host code: fast): [KernelReport], limits checked."""
    _, device = generate(mod, target)
    _, resources = compile_device(device, info(target).arch)
    found = reports(device, resources)
    check_limits(found, target)
    return found


def build_library(mod: tvm.IRModule, target, path):
    """Compile `mod` (every PrimFunc exported under its global symbol) into a CUDA library at
    `path`. -> ([KernelReport], the CUDA C++ translation unit)."""
    unit, device = generate(mod, target)
    resources = compile_library(unit, info(target).arch, path)
    found = reports(device, resources)
    check_limits(found, target)
    return found, unit


def merge(modules: dict) -> tvm.IRModule:
    """{exported name: IRModule or TVMScript of one function} -> one IRModule, each function
    renamed to its exported name."""
    functions = {}
    for name, mod in modules.items():
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise ValueError(f"kernel name {name!r} is not a C identifier")
        if isinstance(mod, str):
            mod = tvm.script.from_source(mod)
        if isinstance(mod, tvm.tirx.PrimFunc):
            func = mod
        else:
            (_, func), = list(mod.functions_items())
        functions[name] = func.with_attr("global_symbol", name)
    return tvm.IRModule(functions)


EM_CUDA = 190  # ELF machine number of NVIDIA device code


def embedded_device_code(path) -> list:
    """SM versions of the device-code ELFs (cubins) embedded in a host library's .nv_fatbin
    section, e.g. [90] for a library built for sm_90; [] when it carries no compiled device code.
    Plain ELF64 parsing: no readelf or cuobjdump needed."""
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError(f"{path} is not a 64-bit ELF library")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = sections[shstrndx][4]

    def name(section):
        start = names_offset + section[0]
        return data[start:data.index(b"\0", start)].decode()

    versions = []
    for section in sections:
        if name(section) != ".nv_fatbin":
            continue
        blob = data[section[4]:section[4] + section[5]]
        at = blob.find(b"\x7fELF")
        while at >= 0:
            machine, = struct.unpack_from("<H", blob, at + 18)
            flags, = struct.unpack_from("<I", blob, at + 48)
            if machine == EM_CUDA:
                versions.append((flags >> 8) & 0xFF)
            at = blob.find(b"\x7fELF", at + 4)
    return versions
