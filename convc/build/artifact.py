"""What a backend makes of one scheduled op, and what the disk cache records about it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import tvm

from ..spec import ConvSpec
from ..version import __version__
from . import cache


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One compiled op: its runtime module (None for an empty batch, which computes nothing),
    how its schedule was chosen, the scheduled TIR, the cached library (None when it was built
    in memory), the backend's figures (CUDA: ptxas per kernel) and the generated source when the
    backend kept it."""

    module: object
    how: str
    tir: str
    library: Path | None = None
    stats: dict = dataclasses.field(default_factory=dict)
    source: str | None = None


def entry_key(spec: ConvSpec, op: str, target, how: str, tir: str, *extra: str) -> str:
    """The disk-cache key of a kernel: everything that shapes its code."""
    return cache.digest(__version__, tvm.__version__, target.json, op, spec.key, how, tir, *extra)


def metadata(spec: ConvSpec, op: str, target, how: str) -> dict:
    """What a cache entry records about its kernel (the cache adds the library's size and hash)."""
    return {"convc": __version__, "tvm": tvm.__version__, "target": json.loads(target.json),
            "op": op, "spec": spec.to_dict(), "how": how}
