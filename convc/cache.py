"""The on-disk kernel cache: compiled libraries keyed by everything that shapes their code.

Location: $CONVC_CACHE_DIR, else $XDG_CACHE_HOME/convc, else ~/.cache/convc. Entries are written to
a temporary file and renamed into place, so two processes compiling the same kernel at once both
succeed and a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("CONVC_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "convc")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def lookup(key: str):
    """(library path, metadata) of a cached kernel, or None."""
    base = cache_dir() / key
    lib, meta = base.with_suffix(".so"), base.with_suffix(".json")
    if not (lib.exists() and meta.exists()):
        return None
    try:
        return lib, json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def store(key: str, write_library, metadata: dict) -> Path:
    """Write a library with `write_library(path)` and its metadata atomically; returns the path."""
    directory = cache_dir()
    lib = directory / f"{key}.so"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=".so")
    os.close(fd)
    try:
        write_library(tmp)
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _write_text(directory / f"{key}.json", json.dumps(metadata, indent=1, sort_keys=True))
    return lib


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
