"""The on-disk kernel cache: compiled libraries keyed by everything that shapes their code.

Location: $CONVC_CACHE_DIR, else $XDG_CACHE_HOME/convc, else ~/.cache/convc. An entry is
<key>.so and <key>.json; the metadata is written last (both files written to a temporary name
and renamed into place, so two processes compiling the same kernel at once both succeed and a
reader never sees half a file) and records the library's size and sha256.

What is loaded is checked. A library whose size or hash differs from its metadata (a full
disk, an interrupted copy, a restored backup), metadata that cannot be read, or a library the
loader refuses: the entry is removed with a CacheWarning and the kernel is built again. A cache
directory that cannot be created or written (a read-only home, $CONVC_CACHE_DIR under a file)
gives one CacheWarning; kernels are then built in memory and still run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path

from ..files import sha256, write_text_atomic

# Part of every key: entries of an older layout are never read.
FORMAT = "convc-cache/2"

_WARNED: set = set()
_UNWRITABLE: set = set()
_LOCK = threading.Lock()


class CacheWarning(UserWarning):
    """The kernel cache could not be used as it is; convc went on without it (the message says
    what happened and what it did)."""


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in (FORMAT, *parts):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def location() -> Path:
    """Where the cache lives (it may not exist, or not be usable)."""
    root = os.environ.get("CONVC_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                            "convc")
    return Path(root)


def cache_dir() -> Path | None:
    """The cache directory, created if needed; None (after one CacheWarning) when it cannot be."""
    path = location()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _warn_once(f"convc's kernel cache {str(path)!r} cannot be created ({_reason(err)}): "
                   "kernels are built in memory and not kept (set $CONVC_CACHE_DIR to a "
                   "writable directory to keep them)")
        return None
    if not path.is_dir():
        _warn_once(f"convc's kernel cache {str(path)!r} is not a directory: kernels are built in "
                   "memory and not kept (set $CONVC_CACHE_DIR to a writable directory)")
        return None
    return path


def load(key: str, open_library):
    """The cached entry of `key`, checked and opened: (library path, metadata,
    open_library(path)), or None when there is none usable (a damaged entry is removed, with a
    CacheWarning; the caller builds the kernel again)."""
    directory = cache_dir()
    if directory is None:
        return None
    library, meta = directory / f"{key}.so", directory / f"{key}.json"
    checked = _check(library, meta)
    if checked is not None and checked[1] is not None:
        checked = _check(library, meta)  # another process may be replacing the entry just now
    if checked is None:
        return None
    metadata, problem = checked
    if problem is None:
        try:
            return library, metadata, open_library(library)
        except Exception as err:  # noqa: BLE001 - dlopen failures come back as TVM/FFI errors
            problem = f"it does not load ({_reason(err)})"
    _discard(directory, key, problem)
    return None


def store(key: str, write_library, metadata: dict) -> Path | None:
    """Write a library with `write_library(path)`, then its metadata (with the library's size and
    sha256), atomically; -> the library's path. None when the cache directory cannot be written
    (after one CacheWarning): the caller keeps what it built in memory. Errors of
    `write_library` itself (a linker, nvcc) are the caller's and propagate."""
    directory = cache_dir()
    if directory is None or directory in _UNWRITABLE:
        return None
    library = directory / f"{key}.so"
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=".so")
        os.close(fd)
    except OSError as err:
        return _unwritable(directory, err)
    try:
        write_library(tmp)
        entry = {**metadata, "size": os.path.getsize(tmp), "sha256": sha256(tmp)}
        os.replace(tmp, library)
        write_text_atomic(directory / f"{key}.json", json.dumps(entry, indent=1, sort_keys=True))
    except OSError as err:
        return _unwritable(directory, err)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


def _check(library: Path, meta: Path):
    """-> None when there is no entry, else (metadata, None) or (metadata or None, the
    problem)."""
    if not meta.exists():
        return None
    try:
        metadata = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"its metadata is unreadable ({_reason(err)})"
    if not (isinstance(metadata, dict) and isinstance(metadata.get("size"), int)
            and isinstance(metadata.get("sha256"), str)):
        return None, "its metadata records no library size and hash"
    if not library.exists():
        return None  # deleted by hand, or being rewritten: built again
    return metadata, _mismatch(library, metadata)


def _mismatch(library: Path, metadata: dict) -> str | None:
    size = library.stat().st_size
    if size != metadata["size"]:
        return f"the library has {size} bytes, its metadata records {metadata['size']}"
    if sha256(library) != metadata["sha256"]:
        return "the library's sha256 differs from the one its metadata records"
    return None


def _discard(directory: Path, key: str, problem: str) -> None:
    removed = True
    for suffix in (".json", ".so"):
        try:
            (directory / f"{key}{suffix}").unlink(missing_ok=True)
        except OSError:
            removed = False
    what = "removed it and built the kernel again" if removed else \
        "could not remove it, built the kernel again"
    _warn_once(f"convc's kernel cache entry {str(directory / key)}.so is damaged: {problem}; "
               f"{what}")


def _unwritable(directory: Path, err: OSError) -> None:
    with _LOCK:
        _UNWRITABLE.add(directory)
    _warn_once(f"convc's kernel cache {str(directory)!r} cannot be written ({_reason(err)}): "
               "kernels are built in memory and not kept (set $CONVC_CACHE_DIR to a writable "
               "directory to keep them)")
    return None


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _warn_once(message: str) -> None:
    with _LOCK:
        if message in _WARNED:
            return
        _WARNED.add(message)
    warnings.warn(message, CacheWarning, stacklevel=4)
