"""Files written whole or not at all, and their hashes: the cache, tuning records and exported
manifests all write this way."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def sha256(path) -> str:
    """Hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path, text: str, *, fsync: bool = False) -> None:
    """Replace `path` with `text` in one step: written beside it under a temporary name (synced
    to disk first when `fsync`), then renamed, so a reader sees the old file or the new one and a
    crash leaves no half file. The file gets the permissions the umask gives a new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
