"""The tuning driver: MetaSchedule (evolutionary search, XGBoost cost model, gradient task
scheduler) over one workload's kernels as one task set, into a :class:`RecordStore`.

One run of :func:`tune_workload`:

1. open (or create) the workload's record directory, take its lock, repair a partial last line
   a killed run may have left, refuse records of another target;
2. measure the hand-written schedule of every kernel with the same builder and runner the search
   uses (written to meta.json at once, so even a killed run leaves the yardstick);
3. tune what is left of each kernel's budget (trials already in the database count: running the
   same command again continues instead of starting over), every measured candidate appended to
   the database as it is measured;
4. measure the best record and the hand-written schedule again, side by side, alternating, and
   record the verdict: the record is used only where it is faster;
5. (hand space, a layer of algorithm "auto" Winograd can compute) measure the direct kernel
   against each Winograd tile side by side and record which dispatch uses (.algorithm).

:class:`Session` holds the warm builder and runner, shared by every workload of a run.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import tvm
import tvm_ffi

from ..build.cache import cache_dir
from ..records import (
    RecordError,
    RecordStore,
    best_record,
    canonical_module,
    replay,
    target_key,
    tvm_version,
)
from ..target import host_cores
from .errors import TuneError
from . import algorithm
from .algorithm import median_of, seconds_to_us
from .intrinsics import load_for
from .progress import INVALID_SECONDS, KernelProgress, ProgressCallback, ProgressLine
from .rpc import rpc_config_for
from .space import measured_hashes, search_strategy, space_generator, unmeasured
from .workers import WarmBuilder, WarmRunner

# Per space: small rounds over the hand grid let the cost model, retrained after each round, rank
# what is left; the generic space's evolutionary search needs larger rounds to pay its search time.
DEFAULT_TRIALS_PER_ITER = {"hand": 8, "generic": 32}
# The evolutionary search's population: MetaSchedule's 512 spends ~20 s per batch searching on
# 2 cores; 256 halves that at no visible cost in final speed on the layers tried (README).
DEFAULT_POPULATION = 256
SIDE_BY_SIDE_ROUNDS = 5
# A record is used only when the side-by-side medians put it this much ahead of the hand-written
# schedule: closer than that is inside this kind of machine's noise (README, "Auto-tuning").
VERDICT_MARGIN = 0.03


@dataclasses.dataclass
class KernelReport:
    name: str
    flops: int
    trials_run: int             # measured in this run
    trials_total: int           # in the database after this run
    hand_written_us: float | None
    tuned_us: float | None
    verdict: str | None         # "tuned" | "hand-written" | None (nothing valid measured)
    reached_90: tuple | None    # (seconds, trials) of this run to 90 % of its final best

    def gflops(self, us: float | None) -> float | None:
        return None if not us else self.flops / us / 1e3


@dataclasses.dataclass
class WorkloadReport:
    workload: str
    path: Path
    kernels: dict
    wall_s: float
    tuning_s: float
    trials: int
    algorithms: dict = dataclasses.field(default_factory=dict)  # op -> algorithm.AlgorithmReport

    @property
    def trials_per_minute(self) -> float:
        return self.trials / self.tuning_s * 60 if self.tuning_s > 0 else 0.0


# --- the builder/runner pair -------------------------------------------------------------------

class Session:
    """Warm build workers and a runner (local, or RPC through a tracker), for a whole run."""

    def __init__(self, target, *, rpc_tracker: str | None = None, rpc_key: str | None = None,
                 builder_workers: int | None = None, build_timeout: float = 60.0,
                 run_timeout: float = 60.0, evaluator=None):
        self.target = target
        rpc_config, servers = None, 1
        if rpc_tracker or rpc_key:
            rpc_config, servers = rpc_config_for(rpc_tracker, rpc_key, timeout=run_timeout)
        elif target.kind.name == "cuda" and not tvm.cuda(0).exist:
            raise TuneError(
                "tuning for CUDA measures every candidate on a GPU, and this machine has none: "
                "run `convc tune` on a machine with an NVIDIA GPU, or measure remotely with "
                "--rpc-tracker HOST:PORT --rpc-key KEY (servers started with "
                "`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` on GPU machines)")
        self.remote = rpc_config is not None
        self.servers = servers
        self.builder = WarmBuilder(max_workers=builder_workers, timeout_sec=build_timeout)
        self.runner = WarmRunner(evaluator_config=evaluator, timeout_sec=run_timeout,
                                 rpc_config=rpc_config, rpc_workers=servers)

    def close(self) -> None:
        self.builder.shutdown()
        self.runner.shutdown()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def measure(self, mods: list, args_infos: list, repeat: int = 1) -> list[list[float | None]]:
        """Build each module once and time it ``repeat`` times, interleaved (a, b, a, b, ...).

        Returns, per module, ``repeat`` mean run times in seconds (None where it failed)."""
        from tvm.s_tir.meta_schedule.builder import BuilderInput  # noqa: PLC0415
        from tvm.s_tir.meta_schedule.runner import RunnerInput  # noqa: PLC0415

        if not mods:
            return []
        builds = self.builder.build([BuilderInput(mod, self.target) for mod in mods])
        times: list[list[float | None]] = [[None] * repeat for _ in mods]
        try:
            device = "cuda" if self.target.kind.name == "cuda" else "cpu"
            jobs = [(i, RunnerInput(b.artifact_path, device, args_infos[i]))
                    for i, b in enumerate(builds) if b.error_msg is None]
            for failed in (b for b in builds if b.error_msg is not None):
                logging.getLogger("convc.tuning").info("build failed: %s", failed.error_msg[:2000])
            for r in range(repeat):
                futures = self.runner.run([job for _, job in jobs])
                for (i, _), future in zip(jobs, futures):
                    result = future.result()
                    if result.error_msg is None and result.run_secs:
                        secs = [float(s) for s in result.run_secs]
                        mean = sum(secs) / len(secs)
                        times[i][r] = mean if mean < INVALID_SECONDS else None
        finally:
            for b in builds:
                if b.artifact_path:
                    shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
        return times


# --- one workload ------------------------------------------------------------------------------

@dataclasses.dataclass
class Kernel:
    """One kernel to tune: name (the op), its PrimFunc, FLOPs, and its hand-written schedule."""

    name: str
    func: object
    flops: int
    hand_written: object          # callable(func, target) -> Schedule; None: no yardstick


def tune_workload(kernels: list[Kernel], target, *, workload: str, log_dir, session: Session,
                  trials: int, spec=None, seed: int | None = None, quiet: bool = False,
                  trials_per_iter: int = DEFAULT_TRIALS_PER_ITER["hand"],
                  population: int = DEFAULT_POPULATION, work_dir=None, keep: int | None = None,
                  stream=None, space: str = "hand") -> WorkloadReport:
    """Tune ``kernels`` (one workload's ops) as one task set; records go under ``log_dir``.

    ``keep``: afterwards prune the database to the ``keep`` best records per kernel."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo  # noqa: PLC0415

    started = time.perf_counter()
    store = RecordStore.create(log_dir, target, workload, spec)
    mods = {k.name: canonical_module(k.func) for k in kernels}
    args_info = {k.name: ArgInfo.from_prim_func(mods[k.name]["main"]) for k in kernels}
    with store.lock():
        store.check_records(target)
        database = store.database()
        done = _trials_done(database, mods, store)
        budgets, known = {}, {}
        for k in kernels:
            # hand-grid schedules measured by earlier runs, kept in meta.json across compaction
            known[k.name] = {int(h, 16) for h in store.kernel(k.name).get("grid_measured", [])
                             if store.kernel(k.name).get("workload_hash") == _hash(mods[k.name])}
            left = unmeasured(space, mods[k.name], target, database, known[k.name])
            # the hand grid: what it holds that was not measured yet; otherwise the trials left
            budgets[k.name] = max(0, trials - done[k.name]) if left is None else min(trials, left)
        progress = ProgressLine(workload, [
            KernelProgress(k.name, k.flops, budgets[k.name]) for k in kernels],
            quiet=quiet, stream=stream)

        # 2. the yardstick, measured before the search starts (none for a peer's kernels).
        hand_mods = {k.name: _scheduled(k.hand_written, k.func, target) for k in kernels
                     if k.hand_written is not None}
        measured = session.measure(list(hand_mods.values()),
                                   [args_info[name] for name in hand_mods])
        seconds_of = {name: seconds for name, (seconds,) in zip(hand_mods, measured)}
        for k in kernels:
            seconds = seconds_of.get(k.name)
            progress.kernels[k.name].hand_written_seconds = seconds
            store.update_kernel(k.name, hand_written_us=seconds_to_us(seconds), verdict=None,
                                flops=k.flops, workload_hash=_hash(mods[k.name]))

        # 3. the search, for what is left of each budget.
        todo = [k for k in kernels if progress.kernels[k.name].budget > 0]
        tuning_started = time.perf_counter()
        if todo:
            _run_search(todo, mods, target, database, session, progress, seed=seed,
                        trials_per_iter=trials_per_iter, population=population, space=space,
                        known=known,
                        log_file=_log_file(work_dir, target, workload))
        tuning_s = time.perf_counter() - tuning_started
        progress.finish()

        # 4. best record against the hand-written schedule, side by side.
        reports = {}
        after = _trials_done(database, mods)
        for k in kernels:
            if space == "hand":
                grid = known[k.name] | measured_hashes(mods[k.name], database)
                store.update_kernel(k.name, grid_measured=sorted(f"{h:016x}" for h in grid))
            total = max(after[k.name], done[k.name] + progress.kernels[k.name].trials)
            reports[k.name] = _verdict(k, mods[k.name], hand_mods.get(k.name), args_info[k.name],
                                       database, session, store, progress, total, target)
        # 5. the algorithm choice: direct against each Winograd tile.
        algorithms = {}
        for k in kernels:
            if space == "hand" and spec is not None and algorithm.takes_choice(spec, k.name,
                                                                               target):
                found = algorithm.measure(spec, k.name, target, session, log_dir=log_dir,
                                          rounds=SIDE_BY_SIDE_ROUNDS, margin=VERDICT_MARGIN)
                algorithm.record(store, found, SIDE_BY_SIDE_ROUNDS)
                algorithms[k.name] = found
        if keep is not None:
            store.compact(keep)
    return WorkloadReport(workload, store.path, reports, time.perf_counter() - started, tuning_s,
                          progress.trials, algorithms)


def _scheduled(hand_written, func, target) -> tvm.IRModule:
    sch = hand_written(canonical_module(func)["main"], target)
    (_, scheduled), = list(sch.mod.functions_items())
    return tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")})


def _hash(mod) -> str:
    return str(tvm_ffi.structural_hash(mod))


def _trials_done(database, mods: dict, store: RecordStore | None = None) -> dict[str, int]:
    """Trials (valid or failed) already spent per kernel: records in the database, or the count
    meta.json kept when the database was compacted."""
    records = database.get_all_tuning_records()
    done = {}
    for name, mod in mods.items():
        done[name] = 0
        if database.has_workload(mod):
            workload = database.commit_workload(mod)
            done[name] = sum(1 for r in records if r.workload.same_as(workload))
        if store is not None and store.kernel(name).get("workload_hash") == _hash(mod):
            done[name] = max(done[name], int(store.kernel(name).get("trials") or 0))
    return done


def _log_file(work_dir, target, workload: str) -> Path:
    if work_dir is None:
        root = cache_dir() or Path(tempfile.gettempdir()) / "convc"  # MetaSchedule's own log
        work_dir = root / "tune" / target_key(target) / f"tvm-{tvm_version()}"
    path = Path(work_dir) / f"{workload}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _run_search(kernels, mods, target, database, session, progress, *, seed, trials_per_iter,
                population, space, known, log_file) -> None:
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415
    from tvm.s_tir.meta_schedule.utils import fork_seed  # noqa: PLC0415

    cores = host_cores()  # the search runs here, whatever device measures
    load_for(target)  # before TuneContext imports every backend's intrinsics (see intrinsics.py)
    with _file_logging(log_file) as logger:
        contexts = [
            ms.TuneContext(
                mod=mods[k.name], target=target, space_generator=space_generator(space, target),
                search_strategy=search_strategy(space, population, known[k.name]),
                task_name=k.name, rand_state=rand, num_threads=cores,
                logger=logger.getChild(k.name),
            ).clone()
            for k, rand in zip(kernels, fork_seed(seed, n=len(kernels)))
        ]
        cost_model = ms.cost_model.XGBModel(num_tuning_cores=cores, num_warmup_samples=0)
        _warm_start(cost_model, contexts, database, logger)
        budgets = [progress.kernels[k.name].budget for k in kernels]
        callbacks = list(ms.MeasureCallback.create("default")) + [
            ProgressCallback(progress, [k.name for k in kernels])]
        progress.draw()
        session.runner.on_measured = progress.runner_measured
        try:
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=[1.0] * len(contexts),
                work_dir=str(log_file.parent), max_trials_global=sum(budgets),
                max_trials_per_task=max(budgets), num_trials_per_iter=trials_per_iter,
                builder=session.builder, runner=session.runner, database=database,
                cost_model=cost_model, measure_callbacks=callbacks,
                task_scheduler=ms.task_scheduler.GradientBased(seed=-1 if seed is None else seed))
        finally:
            session.runner.on_measured = None


def _warm_start(cost_model, contexts, database, logger) -> None:
    """Train the cost model on records a previous run left, so a resumed run starts informed."""
    from tvm.s_tir.meta_schedule.runner import RunnerResult  # noqa: PLC0415

    for context in contexts:
        if not database.has_workload(context.mod):
            continue
        records = database.get_top_k(database.commit_workload(context.mod), 1 << 20)
        if not records:
            continue
        try:
            candidates = [r.as_measure_candidate() for r in records]
            results = [RunnerResult([float(s) for s in r.run_secs], None) for r in records]
            cost_model.update(context, candidates, results)
        except Exception as err:  # noqa: BLE001 (a cold model is only slower, never wrong)
            logger.warning("cost model warm start skipped for %s: %s", context.task_name, err)


class _file_logging:  # noqa: N801 (used as a context manager, reads as one)
    """Send MetaSchedule's log (and XGBoost's) to one file instead of the console."""

    NAME = "tvm.s_tir.meta_schedule"

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> logging.Logger:
        root = logging.getLogger(self.NAME)
        self.saved = (root.level, root.propagate)
        self.handler = logging.FileHandler(self.path, mode="a")
        self.handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
        root.addHandler(self.handler)
        root.setLevel(logging.INFO)
        root.propagate = False
        return logging.getLogger(self.NAME + ".convc")

    def __exit__(self, *exc) -> None:
        root = logging.getLogger(self.NAME)
        root.removeHandler(self.handler)
        self.handler.close()
        root.setLevel(self.saved[0])
        root.propagate = self.saved[1]


def _verdict(kernel: Kernel, mod, hand_mod, args_info, database, session, store, progress,
             trials_total: int, target) -> KernelReport:
    """Time the best record and the hand-written schedule alternately; keep the faster."""
    state = progress.kernels[kernel.name]
    best = best_record(database, mod)
    best_mod = None if best is None else replay(mod, best).mod
    hand_us = tuned_us = None
    if best_mod is not None and hand_mod is None:   # a peer's kernel: nothing to compare with
        (tuned,) = session.measure([best_mod], [args_info], repeat=SIDE_BY_SIDE_ROUNDS)
        tuned_us = seconds_to_us(median_of(tuned))
    elif best_mod is not None:
        hand, tuned = session.measure([hand_mod, best_mod], [args_info, args_info],
                                      repeat=SIDE_BY_SIDE_ROUNDS)
        hand_us, tuned_us = seconds_to_us(median_of(hand)), seconds_to_us(median_of(tuned))
    elif state.hand_written_seconds is not None:
        hand_us = seconds_to_us(state.hand_written_seconds)
    if tuned_us is None:
        verdict = None if best_mod is None else "hand-written"
    elif hand_us is None or tuned_us < hand_us * (1 - VERDICT_MARGIN):
        verdict = "tuned"
    else:
        verdict = "hand-written"
    reached = state.reached(0.9)
    fields = {}
    if state.trials:  # a run that only re-checks keeps the previous run's search statistics
        fields["run"] = {"trials": state.trials, "failed": state.failed,
                         "reached_90": list(reached) if reached else None}
    store.update_kernel(
        kernel.name, hand_written_us=hand_us, tuned_us=tuned_us, verdict=verdict,
        trials=trials_total,
        measured=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **fields)
    return KernelReport(kernel.name, kernel.flops, state.trials, trials_total, hand_us, tuned_us,
                        verdict, reached)


__all__ = ["Kernel", "KernelReport", "RecordError", "Session", "TuneError", "WorkloadReport",
           "tune_workload"]
