"""Auto-tuning: MetaSchedule with the XGBoost cost model over convc's own declarations.

    import convc
    spec = convc.ConvSpec.from_shapes((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    convc.tune(spec, trials=64)               # forward, grad_input, grad_weight as one task set
    convc.compile(spec, "grad_weight").how     # "tuned" where the record beat the hand-written one

Pieces: :mod:`convc.records` (tuning_logs/ layout, target checks, lookup: ``find_record``;
beside convc.dispatch, which asks it first),
:mod:`.driver` (one workload's run), :mod:`.workers` (warm, torch-free build workers),
:mod:`.progress` (the live line), :mod:`.rpc` (tracker/servers), :mod:`.errors`.  Importing
this package is cheap: MetaSchedule is only imported when tuning starts or a record directory
exists.
"""

from __future__ import annotations

from ..dispatch import untuned
from ..kernel import clear_memory_cache
from ..ops import check_kernel_op, declare, kernel_ops
from ..pool_spec import PoolSpec
from ..records import (RecordError, RecordMismatchWarning, find_record, lookup, search_roots,
                       user_log_dir)
from ..spec import OPS, ConvSpec
from ..target import resolved
from .errors import TuneError
from .space import check_space


def tune(specs, ops=None, *, target=None, trials: int = 64, log_dir=None, seed=None,
         quiet: bool = False, rpc_tracker: str | None = None, rpc_key: str | None = None,
         trials_per_iter: int | None = None, population: int | None = None,
         builder_workers: int | None = None, build_timeout: float = 60.0,
         run_timeout: float = 60.0, keep: int | None = None, stream=None, space: str = "hand"):
    """Tune the ``ops`` of each ConvSpec or PoolSpec in ``specs`` and store the records under
    ``log_dir``.

    Parameters
    ----------
    specs : ConvSpec, PoolSpec or a sequence of them
        The layers; each layer's ops are tuned as one task set (one database).
    ops : sequence of str or None
        Kernels to tune: any of "forward", "grad_input", "grad_weight" (a pooling: of
        PoolSpec.ops); None: every kernel of each spec.
    target : None, str, dict or tvm.target.Target
        As for :func:`convc.compile`; records are kept per target.
    trials : int
        Measured candidates per kernel.  Records already in the log count: running the same call
        again continues an interrupted run, and a larger ``trials`` tunes further.  The hand
        space has a fixed size (up to a few dozen schedules per kernel); it ends when all of them
        are measured.
    log_dir : path or None
        Where records go: default ``$CONVC_TUNING_LOGS`` or ``~/.local/share/convc/tuning_logs``,
        which :func:`convc.compile` searches before the shipped ``tuning_logs/``.
    seed : int or None
        Seeds the search (measurements stay noisy, so runs are not bit-reproducible).
    quiet : bool
        No progress line.
    rpc_tracker, rpc_key : str or None
        Measure on the servers registered under ``rpc_key`` at tracker ``"HOST:PORT"``.
    space : "hand" or "generic"
        What is searched (convc.tuning.space): the hand-written rule's alternatives to its own
        choices, ranked by the XGBoost cost model, or MetaSchedule's generic space under its
        evolutionary search.
    trials_per_iter, population : int or None
        Candidates measured per search round (default 8 for the hand space, 32 for the generic
        one) and the evolutionary search's population (default 256).
    builder_workers, build_timeout, run_timeout
        Build processes (default: one per core) and limits for one build / one measurement.
    keep : int or None
        Afterwards keep only the ``keep`` fastest records per kernel (shipping logs small; the
        trial counts stay in meta.json, so reruns still continue).
    stream : file or None
        Where the progress line goes (default stderr).

    Returns
    -------
    list of convc.tuning.driver.WorkloadReport, one per spec.
    """
    from . import driver  # noqa: PLC0415 - MetaSchedule: only when tuning starts

    specs = [specs] if isinstance(specs, (ConvSpec, PoolSpec)) else list(specs)
    for i, spec in enumerate(specs):
        if not isinstance(spec, (ConvSpec, PoolSpec)):
            raise TypeError(f"specs[{i}]={spec!r} is not a ConvSpec: build one with "
                            "ConvSpec.from_shapes(...) (or a PoolSpec: PoolSpec.max_pool(...))")
    asked = None if ops is None else ([ops] if isinstance(ops, str) else list(ops))
    if asked is not None and not asked:
        raise ValueError("ops is empty: give at least one of " + ", ".join(OPS))
    per_spec = {spec: [check_kernel_op(spec, op) for op in dict.fromkeys(
        kernel_ops(spec) if asked is None else asked)] for spec in specs}
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials={trials!r}: expected a positive number of trials per kernel")
    check_space(space)
    if keep is not None and (not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep={keep!r}: expected a positive number of records per kernel")
    target = resolved(target)
    log_dir = log_dir if log_dir is not None else user_log_dir()
    reports = []
    with driver.Session(target, rpc_tracker=rpc_tracker, rpc_key=rpc_key,
                        builder_workers=builder_workers, build_timeout=build_timeout,
                        run_timeout=run_timeout) as session:
        for spec in specs:
            kernels = [driver.Kernel(op, declare(spec, op), spec.flops, hand_written)
                       for op in per_spec[spec]]
            reports.append(driver.tune_workload(
                kernels, target, workload=spec.key, spec=spec, log_dir=log_dir, session=session,
                trials=trials, seed=seed, quiet=quiet, stream=stream,
                trials_per_iter=trials_per_iter or driver.DEFAULT_TRIALS_PER_ITER[space],
                population=population or driver.DEFAULT_POPULATION, keep=keep, space=space))
    clear_memory_cache()  # kernels compiled earlier in this process may now have a tuned schedule
    return reports


def hand_written(func, target):
    """The schedule convc uses without a tuning record (hand-written rule, else the default)."""
    return untuned(func, target)[0]


__all__ = ["OPS", "RecordError", "RecordMismatchWarning", "TuneError", "find_record",
           "hand_written", "lookup", "search_roots", "tune", "user_log_dir"]
