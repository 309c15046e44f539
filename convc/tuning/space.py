"""Design spaces the tuner searches, and how.

``"hand"`` (the default): the hand-written rule of the kernel's target kind, with each of the
alternatives it lists for its own choices (``rule.knobs``: channel vectors, tile width, blocking,
reduction chunks) as one complete schedule, the rule's own choice first. :class:`GridSearch` measures
them in the order MetaSchedule's XGBoost cost model ranks them (trained on every measurement of the
task set as it comes in), the rule's own choice in the first batch, until the grid or the trial
budget is spent. The hand-written schedule is one of the candidates, so the best record is at least
as fast as it, up to the noise of measurement (the side-by-side verdict decides).

``"generic"``: MetaSchedule's own space for the target (post-order-apply of its schedule rules:
multi-level tiling, parallel-vectorize-unroll, ...) under its evolutionary search. On this
project's layers it loses to the hand-written schedules at 200 trials per kernel (README).

Why a grid of fixed schedules and not one space with sampled knobs under the evolutionary search:
MetaSchedule explores by replaying a design space's trace with new random decisions, not by running
the Python that made it, and mutates only tile sizes, unroll factors, parallel extents and compute
locations. Every choice the rules derive in Python (tile widths from register budgets, which
variant) would be frozen into the trace as literals and go stale on replay; a fixed schedule per
alternative has nothing to go stale and nothing to mutate.
"""

from __future__ import annotations

import tvm_ffi

from ..dispatch import rules
from ..records import replay
from ..schedules.default import default

SPACES = ("hand", "generic")


def check_space(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"space={space!r}: expected one of {', '.join(SPACES)}")
    return space


def hand_grid(func, target) -> list:
    """[(knobs, schedule)] for every alternative of the first rule that takes ``func``; one entry
    (knobs None) with the default schedule when no rule takes it."""
    for rule in rules(target):
        grid = getattr(rule, "knobs", None)
        alternatives = grid(func, target) if grid is not None else [{}]
        if not alternatives:
            continue
        out = []
        for knobs in alternatives:
            sch = rule(func, target, knobs) if knobs else rule(func, target)
            if sch is not None:
                out.append((knobs, sch))
        if out:
            return out
    return [(None, default(func, target))]


def space_generator(space: str, target):
    """The MetaSchedule space generator for ``space`` (see the module docstring)."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    if check_space(space) == "generic":
        return "post-order-apply"

    def schedules(sch):
        return [s for _, s in hand_grid(sch.mod["main"], target)]

    # The schedules are complete: no rules, postprocessors or mutators for MetaSchedule to add.
    return ms.space_generator.ScheduleFn(schedules, sch_rules=[], postprocs=[], mutator_probs={})


def search_strategy(space: str, population: int, measured=frozenset()):
    """The search strategy for ``space``; ``measured``: structural hashes of schedules measured
    before whose records are gone (a compacted log), which the hand space does not measure again."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    if check_space(space) == "generic":
        return ms.search_strategy.EvolutionarySearch(population_size=population)
    return GridSearch(measured)


def _grid_search_class():
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo  # noqa: PLC0415
    from tvm.s_tir.meta_schedule.search_strategy import (  # noqa: PLC0415
        MeasureCandidate,
        PySearchStrategy,
    )
    from tvm.ir.utils import derived_object  # noqa: PLC0415

    @derived_object
    class GridSearch(PySearchStrategy):
        """Measure a finite set of complete schedules (the design spaces), best predicted first."""

        def __init__(self, measured=frozenset()):
            self.measured = set(measured)

        def _initialize_with_tune_context(self, context) -> None:
            self.context = context

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None,
                       cost_model=None) -> None:
            mod = self.context.mod
            done = set(self.measured)
            if database is not None:
                done |= measured_hashes(mod, database)
            self.pending, seen = [], set(done)
            for sch in design_spaces:
                key = tvm_ffi.structural_hash(sch.mod)
                if key not in seen:
                    seen.add(key)
                    self.pending.append(sch)
            self.left = max_trials
            self.per_iter = num_trials_per_iter
            self.cost_model = cost_model
            self.first = True

        def post_tuning(self) -> None:
            self.pending = []

        def generate_measure_candidates(self):
            if self.left <= 0 or not self.pending:
                return None
            take = min(self.per_iter, self.left, len(self.pending))
            candidates = [MeasureCandidate(sch, ArgInfo.from_entry_func(sch.mod, True))
                          for sch in self.pending]
            order = list(range(len(candidates)))
            if self.cost_model is not None and len(candidates) > take:
                scores = list(self.cost_model.predict(self.context, candidates))
                order.sort(key=lambda i: -scores[i])
            if self.first:  # the rule's own choice is always measured, in the first batch
                order.remove(0)
                order.insert(0, 0)
                self.first = False
            chosen = order[:take]
            self.pending = [sch for i, sch in enumerate(self.pending) if i not in chosen]
            self.left -= take
            return [candidates[i] for i in chosen]

        def notify_runner_results(self, measure_candidates, results) -> None:
            pass

        def clone(self):
            return GridSearch(self.measured)

    return GridSearch


def GridSearch(measured=frozenset()):  # noqa: N802 - reads as the class it builds
    """A MetaSchedule search strategy over the hand grid (see the module docstring)."""
    global _GRID_SEARCH  # noqa: PLW0603
    if _GRID_SEARCH is None:
        _GRID_SEARCH = _grid_search_class()
    return _GRID_SEARCH(measured)


_GRID_SEARCH = None


def measured_hashes(mod, database) -> set:
    """Structural hashes of the scheduled modules the database holds records of for ``mod``."""
    hashes = set()
    if not database.has_workload(mod):
        return hashes
    workload = database.commit_workload(mod)
    for record in database.get_all_tuning_records():
        if not record.workload.same_as(workload):
            continue
        try:
            hashes.add(tvm_ffi.structural_hash(replay(mod, record).mod))
        except Exception:  # noqa: BLE001 - a record of another space that no longer replays
            continue
    return hashes


def unmeasured(space: str, mod, target, database, measured=frozenset()) -> int | None:
    """How many of the hand grid's schedules for ``mod`` neither the database nor ``measured``
    (hashes kept from a compacted log) holds yet; None for the generic space (no fixed size)."""
    if check_space(space) != "hand":
        return None
    pending = {tvm_ffi.structural_hash(sch.mod) for _, sch in hand_grid(mod["main"], target)}
    return len(pending - measured_hashes(mod, database) - set(measured))
