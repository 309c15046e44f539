"""The hand space's algorithm choice: direct against each Winograd tile, side by side.

For a forward or grad_input kernel of a layer declared with algorithm="auto" that Winograd can
compute (3x3, stride 1, dilation 1, ...; convc.ops.winograd.unsupported), :func:`measure` times
the direct kernel (its tuned record where one won, else the hand-written rule: what dispatch
would give it) and the hand-written Winograd kernel of every tile m the layer takes
(convc.dispatch.winograd_tiles), alternating, and writes the verdict beside the kernel's tuning
records (meta.json, ``kernels[op]["algorithm"]``)::

    {"choice": "winograd", "m": 4, "direct_us": 61.2, "winograd_us": {"2": 40.1, "4": 33.0},
     "rounds": 5, "measured": "2026-12-02T12:00:00+00:00"}

Winograd is chosen only where its median beat direct's by the verdict margin, and of the tiles
within the margin of the fastest the smallest, the most accurate (:func:`decide`); convc.dispatch
(recorded_algorithm) follows the verdict for that layer and target, and falls back to its rule
where there is none (or it no longer makes sense).
"""

from __future__ import annotations

import dataclasses
import datetime
import statistics

from ..dispatch import choose, winograd_tiles
from ..ops import declare
from ..records import canonical_module

OPS = ("forward", "grad_input")


@dataclasses.dataclass
class AlgorithmReport:
    op: str
    direct_us: float | None
    winograd_us: dict          # m -> median us (None: failed)
    choice: str | None         # "direct" | "winograd" | None (direct failed to measure)
    m: int

    def as_record(self, rounds: int) -> dict:
        return {"choice": self.choice, "m": self.m, "direct_us": self.direct_us,
                "winograd_us": {str(m): us for m, us in self.winograd_us.items()},
                "rounds": rounds,
                "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds")}


def seconds_to_us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 3)


def median_of(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def takes_choice(spec, op: str, target) -> bool:
    """Whether the algorithm choice is part of the hand space for `op` of `spec` on `target`."""
    return (op in OPS and getattr(spec, "algorithm", None) == "auto" and not target.is_gpu
            and spec.batch > 0 and bool(winograd_tiles(spec, op)))


def candidates(spec, op: str) -> list[tuple[int, object]]:
    """[(m, declared PrimFunc)]: m = 0 for the direct kernel, then each Winograd tile."""
    out = [(0, declare(spec, op))]
    for m in winograd_tiles(spec, op):
        out.append((m, declare(dataclasses.replace(spec, algorithm="winograd", winograd_m=m), op)))
    return out


def measure(spec, op: str, target, session, *, log_dir, rounds: int,
            margin: float) -> AlgorithmReport:
    """Time direct and each Winograd tile of `op` of `spec` alternately (``rounds`` each) and
    return the verdict (not yet written; see :func:`record`)."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo  # noqa: PLC0415


    tiles, mods, infos = [], [], []
    for m, func in candidates(spec, op):
        sch, _ = choose(canonical_module(func)["main"], target, log_dir)
        (_, scheduled), = list(sch.mod.functions_items())
        mod = canonical_module(scheduled)
        tiles.append(m)
        mods.append(mod)
        infos.append(ArgInfo.from_prim_func(mod["main"]))
    times = session.measure(mods, infos, repeat=rounds)
    medians = dict(zip(tiles, (seconds_to_us(median_of(t)) for t in times)))
    direct = medians.pop(0)
    return AlgorithmReport(op, direct, medians, *decide(direct, medians, margin))


def decide(direct_us, winograd_us: dict, margin: float) -> tuple:
    """(choice, m) from the medians: Winograd's fastest tile where it beat direct by ``margin``,
    and of the tiles within ``margin`` of that one the smallest (the more accurate: F(2,3) <
    F(4,3) < F(6,3) in error, README "Accuracy"); (None, 0) where direct has no time."""
    if direct_us is None:
        return None, 0
    valid = {m: us for m, us in winograd_us.items() if us is not None}
    if not valid or min(valid.values()) >= direct_us * (1 - margin):
        return "direct", 0
    fastest = min(valid.values())
    return "winograd", min(m for m, us in valid.items() if us * (1 - margin) <= fastest)


def record(store, report: AlgorithmReport, rounds: int) -> None:
    """Write ``report`` into ``store``'s meta.json (nothing when direct failed to measure: no
    verdict, dispatch's rule decides)."""
    if report.choice is not None:
        store.update_kernel(report.op, algorithm=report.as_record(rounds))
