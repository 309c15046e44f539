"""Targets, resolved once where they enter convc.

What a user passes ("llvm", "cuda", a dict, a JSON string, a tvm.target.Target, None for this
CPU) becomes a :class:`Target`: the TVM target itself (a ``tvm.target.Target`` subclass, so TVM
takes it as it is) carrying what it can do (``.info``, a :class:`TargetInfo`, which is all that
schedules may ask about it) and its identity as text (``.json``, for caches, records and
manifests). Entry points (the functional API, compile, export_library, tune, the CLI, the bench)
call :func:`resolve` once, or :func:`resolved` where a caller above may have done so already;
every layer below takes the Target and never resolves again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import threading

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
KINDS = ("llvm", "cuda")
# L2 per core of CPUs by LLVM CPU name (the vendors' data sheets), for a target that is not this
# machine (whose own L2 is read from sysfs, host_l2_bytes): blocked schedules size their working
# sets from it. Other CPUs get DEFAULT_L2_BYTES.
L2_BYTES = {"znver2": 512 << 10, "znver3": 512 << 10, "znver4": 1 << 20, "znver5": 1 << 20,
            "skylake-avx512": 1 << 20, "cascadelake": 1 << 20, "cooperlake": 1 << 20,
            "icelake-server": 1280 << 10, "sapphirerapids": 2 << 20, "emeraldrapids": 2 << 20,
            "graniterapids": 2 << 20}
DEFAULT_L2_BYTES = 1 << 20
SYSFS_CACHE = "/sys/devices/system/cpu/cpu0/cache"
# Memo sizes: targets are few in any real process; the bound only stops a caller who builds a
# new tvm.target.Target for every call from growing the memos without end.
MEMO_LIMIT = 256


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
    l2_bytes: int = DEFAULT_L2_BYTES  # CPU only: L2 cache per core (not part of the key)

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


class Target(tvm.target.Target):
    """A resolved target: the TVM target, with what it can do (``info``) and its canonical JSON
    text (``json``). Made only by :func:`resolve`; one object per distinct target, so identity
    is equality."""

    __slots__ = ("info", "json")

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def is_gpu(self) -> bool:
        return self.info.is_gpu


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


def parse_cache_size(text: str) -> int | None:
    """sysfs's cache size ("2048K", "1M", "512", with or without a trailing newline) -> bytes, or
    None where the text is not a size."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    return int(digits) * scale if digits.isdigit() and int(digits) > 0 else None


@functools.lru_cache(maxsize=None)
def host_l2_bytes(root: str = SYSFS_CACHE) -> int | None:
    """This CPU's L2 per core as Linux's sysfs describes cpu0's caches (the level-2 data or
    unified one), or None where it does not (not Linux, a container hiding sysfs, no L2 listed).
    A virtual machine's LLVM CPU name can be wrong (here a Xeon with 2 MiB L2 reports
    "rocketlake", whose L2 is 512 KiB), so the host's own description comes first."""
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return None
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            fields = {name: open(os.path.join(root, entry, name)).read().strip()
                      for name in ("level", "type", "size")}
        except (OSError, UnicodeDecodeError):
            continue
        if fields["level"] == "2" and fields["type"] in ("Unified", "Data"):
            return parse_cache_size(fields["size"])
    return None


def l2_bytes(triple: str, mcpu: str | None) -> int:
    """L2 per core of an llvm target: this machine's own (sysfs) when the target is this CPU (its
    triple, and its LLVM CPU name or none), else L2_BYTES by name, else DEFAULT_L2_BYTES."""
    if triple == host_triple() and mcpu in (None, "", tvm.target.codegen.llvm_get_system_cpu()):
        found = host_l2_bytes()
        if found:
            return found
    return L2_BYTES.get(mcpu or "", DEFAULT_L2_BYTES)


@functools.lru_cache(maxsize=None)
def host_target_config() -> str:
    return json.dumps({"kind": "llvm", "mtriple": host_triple(),
                       "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                       "num-cores": host_cores()})


# --- resolving ---------------------------------------------------------------------------------

_RESOLVED: dict = {}    # given_key(what the user passed) -> Target
_CANONICAL: dict = {}   # Target.json -> Target: one object per distinct target
_DESCRIBED: dict = {}   # tvm.target.Target (hashed by its handle) -> TargetInfo
_LOCK = threading.Lock()


def given_key(target):
    """A hashable key for a target as the user gave it (memo keys): the value itself for None, a
    string or a tvm.target.Target; a dict by its JSON text. TypeError for anything else."""
    kind = type(target)
    if target is None or kind is str or kind is Target or isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, dict):
        try:
            return ("json", json.dumps(target, sort_keys=True))
        except ValueError:  # a circular dict
            raise TypeError(f"target={target!r} cannot be keyed") from None
    raise TypeError(f"target of type {type(target).__name__} cannot be keyed")


def resolve(target=None) -> Target:
    """None / "llvm" / "cpu" -> this CPU; "cuda" -> CUDA sm_90; a dict, JSON string or
    tvm.target.Target -> as given, completed (an llvm target's triple and core count).

    Memoized by what was given. Raises ValueError naming the target when it is not usable.
    """
    try:
        key = given_key(target)
        found = _RESOLVED.get(key)
    except TypeError:  # not a kind of target (an int, a list): _config says so
        key = found = None
    if found is not None:
        return found
    result = _canonical(_config(target), target)
    if key is not None:
        _remember(_RESOLVED, key, result)
    return result


def resolved(target) -> Target:
    """`target` if it is already a Target (resolved by a caller above), else resolve(target): for
    entry points that are also called by other entry points."""
    return target if type(target) is Target else resolve(target)


def info(target) -> TargetInfo:
    """What `target` can do. A Target carries it; another tvm.target.Target (one TVM or a test
    made) is described without being resolved; anything else is resolved first."""
    if type(target) is Target:
        return target.info
    if isinstance(target, tvm.target.Target):
        found = _DESCRIBED.get(target)
        if found is None:
            found = _describe(target)
            _remember(_DESCRIBED, target, found)
        return found
    return resolve(target).info


def _remember(memo: dict, key, value) -> None:
    if len(memo) >= MEMO_LIMIT:
        memo.clear()
    memo[key] = value


def _canonical(config: dict, given) -> Target:
    try:
        target = Target(config)
    except Exception as err:  # TVM raises ValueError/TVMError with its own text
        raise ValueError(f"target={given!r} is not valid: {err}") from None
    text = str(target)
    with _LOCK:
        found = _CANONICAL.get(text)
        if found is not None:
            return found
        target.json = text
        target.info = _describe(target)
        _CANONICAL[text] = target
        _DESCRIBED[target] = target.info
    return target


def _config(target) -> dict:
    """What the user gave -> a complete TVM target config, checked."""
    if isinstance(target, tvm.target.Target):
        config = dict(target.export())
    elif target is None or isinstance(target, str):
        name = (target or "llvm").strip().lower()
        if name in ("llvm", "cpu", "host"):
            return json.loads(host_target_config())
        if name == "cuda":
            return {"kind": "cuda", "arch": DEFAULT_CUDA_ARCH}
        try:
            config = json.loads(target)
        except json.JSONDecodeError:
            raise ValueError(
                f"target={target!r} is not known: expected 'llvm', 'cuda', a dict or a JSON object "
                "such as '{\"kind\": \"llvm\", \"mcpu\": \"skylake-avx512\"}'"
            ) from None
    else:
        config = target
    if not isinstance(config, dict) or "kind" not in config:
        raise ValueError(f"target={target!r} is not valid: expected a dict with a 'kind'")
    if config["kind"] not in KINDS:
        raise ValueError(f"target={target!r}: kind {config['kind']!r} is not supported, expected "
                         "'llvm' or 'cuda'")
    config = dict(config)
    if not config.get("tag"):
        config.pop("tag", None)
    if config["kind"] == "llvm":
        _complete_llvm(config, target)
    return config


def _complete_llvm(config: dict, given) -> None:
    """Fill what convc's schedules and MetaSchedule need (the triple, the core count) and check
    the CPU name against LLVM."""
    if config.get("mcpu") == "native":
        config["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
    if not config.get("mtriple"):
        config["mtriple"] = host_triple()
    if not config.get("num-cores"):
        config["num-cores"] = host_cores()
    if "mcpu" in config and not tvm.target.codegen.llvm_is_valid_cpu(config["mcpu"],
                                                                       config["mtriple"]):
        raise ValueError(f"target={given!r}: LLVM does not know the CPU {config['mcpu']!r}")


def _describe(target: tvm.target.Target) -> TargetInfo:
    attrs = target.attrs
    if target.kind.name == "cuda":
        arch = str(attrs.get("arch", DEFAULT_CUDA_ARCH))
        return TargetInfo(
            kind="cuda", arch=arch, triple="nvptx64-nvidia-cuda", num_cores=1, vector_bits=128,
            max_threads_per_block=int(attrs.get("max_num_threads", CUDA_MAX_THREADS_PER_BLOCK)),
            max_shared_memory_per_block=int(attrs.get("max_shared_memory_per_block",
                                                      CUDA_SHARED_MEMORY_PER_BLOCK)),
            warp_size=int(attrs.get("thread_warp_size", CUDA_WARP_SIZE)),
            multiprocessors=int(attrs.get("multiprocessor_count",
                                          CUDA_MULTIPROCESSORS.get(str(attrs.get("arch")), 108))))
    mcpu = attrs.get("mcpu")
    triple = str(attrs.get("mtriple", host_triple()))
    return TargetInfo(kind="llvm", arch=str(mcpu or "generic"), triple=triple,
                      num_cores=int(attrs.get("num-cores", host_cores())),
                      vector_bits=int(tvm.target.codegen.llvm_get_vector_width(target)),
                      l2_bytes=l2_bytes(triple, str(mcpu) if mcpu else None))
