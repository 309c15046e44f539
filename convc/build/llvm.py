"""The LLVM backend (CPUs): a scheduled module -> a runtime module, through the disk cache.

Every library this backend hands out is loaded from its file in the cache (a kernel built just
now is stored, then loaded like a cached one), so that `on_load` hooks see each one: convc.torch
points the libraries' thread-pool entry at PyTorch's own pool (convc/torch/threads.py). A module
stays in memory, on TVM's pool, only where the cache cannot be written.

The dynamic loader finds a library it has loaded by its name: a cache entry this process loaded,
then found damaged and rebuilt, would come back as the old file's mapping (pages of a file cut
short in place raise SIGBUS). Such a file, replaced since it was loaded here, is loaded from a
private copy instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import tvm

from ..spec import ConvSpec
from ..version import __version__
from . import cache
from .artifact import Artifact, entry_key, metadata

_LOADED: dict = {}      # path of every library loaded in this process -> its file's (dev, inode)
_HOOKS: list = []       # callables run on each of them (on_load)
_LOCK = threading.Lock()


def on_load(hook) -> None:
    """Call `hook(path)` for every CPU library this process has loaded and will load (right
    after TVM's loader filled the library's runtime pointers, before any of its functions
    runs)."""
    with _LOCK:
        _HOOKS.append(hook)
        loaded = list(_LOADED)   # the paths
    for path in loaded:
        hook(path)


def _open(path: Path):
    info = os.stat(path)
    with _LOCK:
        seen = _LOADED.get(path)
    if seen is not None and seen != (info.st_dev, info.st_ino):
        return _open_copy(path)
    module = tvm.runtime.load_module(str(path))
    with _LOCK:
        _LOADED[path] = (info.st_dev, info.st_ino)
        hooks = list(_HOOKS)
    for hook in hooks:
        hook(path)
    return module


def _open_copy(path: Path):
    """Load the library at `path` under a fresh name (a copy beside it, removed once loaded: the
    mapping outlives the name)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".so")
    os.close(fd)
    try:
        shutil.copyfile(path, name)
        return _open(Path(name))
    finally:
        os.unlink(name)


def compiled(key: str, mod: tvm.IRModule, target, meta: dict):
    """(runtime module, library path or None) of the scheduled `mod` for the CPU `target`: the
    cached library of `key` when there is one and it checks out; otherwise `mod` is compiled,
    stored and loaded from its file (kept in memory only when the cache cannot be written)."""
    hit = cache.load(key, _open)
    if hit is not None:
        library, _, module = hit
        return module, library
    executable = tvm.compile(mod, target=target)
    library = cache.store(key, executable.export_library, meta)
    if library is None:
        return executable.mod, None
    try:
        return _open(library), library
    except Exception:  # noqa: BLE001 - the file went bad under us: keep the built module
        return executable.mod, library


def build(spec: ConvSpec, op: str, target, mod: tvm.IRModule, how: str) -> Artifact:
    """Compile the scheduled `mod` (one function named `op`) for the CPU `target`."""
    tir = mod.script()
    module, library = compiled(entry_key(spec, op, target, how, tir), mod, target,
                               metadata(spec, op, target, how))
    return Artifact(module, how, tir, library)


def helper(name: str, mod: tvm.IRModule, target, meta: dict):
    """The runtime module of a helper kernel that is no convolution (convc.build.transpose),
    through the same cache, keyed by its scheduled TIR and `name`."""
    key = cache.digest(__version__, tvm.__version__, target.json, name, mod.script())
    return compiled(key, mod, target, {"convc": __version__, "tvm": tvm.__version__,
                                       "helper": name, **meta})[0]


def source(tir: str, target) -> str:
    """The LLVM IR of a scheduled function given as TVMScript (for kernels whose library came
    from the disk cache, which keeps no source)."""
    return tvm.compile(tvm.script.from_source(tir), target=target).mod.inspect_source()
