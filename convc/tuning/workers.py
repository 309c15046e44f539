"""Build and measurement workers that start once and stay warm.

MetaSchedule's stock ``LocalBuilder`` starts a fresh process pool for every batch, and its build
function imports ``tvm.s_tir.tensor_intrin`` inside the build timeout: 20-28 s here, 44 s when
PyTorch is installed (tvm-ffi imports torch at start-up and TVMScript's parser calls
``inspect.stack()``, whose cost grows with ``sys.modules``).  Against the default 30 s timeout
every build then fails and tuning finds nothing.

The pool here fixes that three ways:

* worker processes start once (all in parallel, before the first batch) and are reused;
* they start with ``torch`` blocked (``sys.modules["torch"] = None``: tvm-ffi treats the failed
  import as "not installed"), so they import TVM in about a second whatever else is installed;
* the build function skips the ``tensor_intrin`` import: it lowers an already scheduled module,
  and tensorization, when a trace uses it, happened in the search process.

The timeout then covers one build and nothing else.  Everything is plain TVM/cloudpickle; the
workers import this module (functions travel by reference), and :mod:`convc` only lightly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.runner import (
    EvaluatorConfig,
    PyRunner,
    RPCConfig,
    RunnerFuture,
    RunnerInput,
)
from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
from tvm.s_tir.meta_schedule.runner.local_runner import _worker_func as _local_run
from tvm.s_tir.meta_schedule.runner.rpc_runner import RPCRunnerFuture
from tvm.s_tir.meta_schedule.runner.rpc_runner import _worker_func as _rpc_run
from tvm.support.popen_pool import MapResult, PopenPoolExecutor, PopenWorker, StatusKind

# The worker's entry point: block torch, then run TVM's own popen worker loop.
_BOOT = (
    "import sys\n"
    "sys.modules['torch'] = None\n"
    "from tvm.exec.popen_worker import main\n"
    "try:\n"
    "    main()\n"
    "except (OSError, KeyboardInterrupt):\n"
    "    pass\n"
)


def _package_root() -> str:
    """The directory holding the ``convc`` package, so workers can import it uninstalled."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _TorchFreeWorker(PopenWorker):
    """A :class:`PopenWorker` whose process never imports torch."""

    def _start(self) -> None:
        if self._proc is not None:
            return
        main_read, worker_write = os.pipe()
        worker_read, main_write = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH", "")) if p
        )
        # The popen worker reads its pipes from argv[1:3]; "-c" keeps argv[0] out of the way.
        cmd = [sys.executable, "-c", _BOOT, str(worker_read), str(worker_write)]
        self._proc = subprocess.Popen(
            cmd,
            pass_fds=(worker_read, worker_write),
            stdout=self._stdout,
            stderr=self._stderr,
            env=env,
        )
        os.close(worker_read)
        os.close(worker_write)
        self._reader = os.fdopen(main_read, "rb")
        self._writer = os.fdopen(main_write, "wb")


class WarmPool(PopenPoolExecutor):
    """A :class:`PopenPoolExecutor` of torch-free workers, started together and kept.

    ``timeout`` applies to each submitted call only: process start-up and ``initializer`` are
    outside it.  A worker that times out or dies is replaced lazily by TVM's own logic.
    """

    def _worker_run(self, fn, args, kwargs):
        with self._lock:
            proc = self._worker_map.get(_thread_id())
            if proc is None:
                proc = _TorchFreeWorker(
                    self._initializer,
                    self._initargs,
                    self._maximum_process_uses,
                    self._stdout,
                    self._stderr,
                )
                self._worker_map[_thread_id()] = proc
        proc.send(fn, args, kwargs, self._timeout)
        return proc.recv()

    def warm_up(self, workers: int) -> float:
        """Start ``workers`` processes now, in parallel; returns the seconds it took."""
        start = time.perf_counter()
        futures = [self.submit(time.sleep, 0.2) for _ in range(workers)]
        for future in futures:
            future.result()
        return time.perf_counter() - start


def _thread_id() -> int:
    return threading.get_ident()


def build_without_intrinsics(mod, target, _params):
    """MetaSchedule's default build, minus the ``tensor_intrin`` import (see module doc)."""
    import tvm  # noqa: PLC0415
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock  # noqa: PLC0415

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


def _build_one(job: tuple) -> str:
    from tvm.s_tir.meta_schedule.builder.local_builder import _worker_func  # noqa: PLC0415

    return _worker_func(*job)


@derived_object
class WarmBuilder(PyBuilder):
    """Builds candidates in persistent, torch-free worker processes.

    Parameters
    ----------
    max_workers : int
        Worker processes (default: logical CPUs).
    timeout_sec : float
        Limit for one build; start-up never counts against it.
    max_uses : int or None
        Recycle a worker after this many builds (TVM notes a slow leak in long-lived build
        workers; a restart costs about a second because no intrinsics are imported).
    f_build : callable or None
        ``(IRModule, Target, params) -> Module``; default :func:`build_without_intrinsics`.
    """

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        timeout_sec: float = 60.0,
        max_uses: int | None = 256,
        f_build: Callable | None = None,
    ) -> None:
        super().__init__()
        self.max_workers = max_workers or os.cpu_count() or 1
        self.timeout_sec = timeout_sec
        self.f_build = f_build or build_without_intrinsics
        self.pool = WarmPool(
            max_workers=self.max_workers,
            timeout=timeout_sec,
            maximum_process_uses=max_uses,
        )
        self.startup_sec = self.pool.warm_up(self.max_workers)

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        jobs = [
            (self.f_build, None, item.mod, item.target, None)
            for item in build_inputs
        ]
        return [
            _builder_result(r, self.timeout_sec)
            for r in self.pool.map_with_error_catching(_build_one, jobs)
        ]

    def shutdown(self) -> None:
        self.pool.shutdown()


def _builder_result(result: MapResult, timeout_sec: float) -> BuilderResult:
    if result.status == StatusKind.COMPLETE:
        return BuilderResult(result.value, None)
    if result.status == StatusKind.TIMEOUT:
        return BuilderResult(None, f"WarmBuilder: timeout, killed after {timeout_sec} s")
    return BuilderResult(None, "WarmBuilder: an exception occurred\n" + str(result.value))


@derived_object
class WarmRunner(PyRunner):
    """Measures candidates locally (one process) or over TVM RPC (one connection per server).

    Parameters
    ----------
    evaluator_config : EvaluatorConfig or None
        How each candidate is timed (MetaSchedule's defaults if None).
    timeout_sec : float
        Limit for one measurement (local) / one RPC session.
    rpc_config : RPCConfig or None
        Measure through a tracker instead of locally.
    rpc_workers : int
        Parallel RPC connections: the number of servers under the key.
    """

    def __init__(
        self,
        *,
        evaluator_config: EvaluatorConfig | None = None,
        timeout_sec: float = 60.0,
        rpc_config: RPCConfig | None = None,
        rpc_workers: int = 1,
    ) -> None:
        super().__init__()
        self.evaluator_config = EvaluatorConfig._normalized(evaluator_config)
        self.timeout_sec = timeout_sec
        self.rpc_config = rpc_config
        if rpc_config is not None:
            self.rpc_config = RPCConfig(
                tracker_host=rpc_config.tracker_host,
                tracker_port=rpc_config.tracker_port,
                tracker_key=rpc_config.tracker_key,
                session_priority=rpc_config.session_priority,
                session_timeout_sec=int(timeout_sec),
            )
        workers = max(1, rpc_workers) if rpc_config is not None else 1
        # Local measurement must be serial; RPC runs one connection per remote server.
        self.pool = WarmPool(
            max_workers=workers,
            timeout=None if rpc_config is not None else timeout_sec,
            stderr=subprocess.DEVNULL,
        )
        self.startup_sec = self.pool.warm_up(workers)
        # Called with the number of candidates measured, as soon as a local batch is done
        # (MetaSchedule's own callbacks see a batch only when the scheduler next joins it).
        self.on_measured: Callable[[int], None] | None = None

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        if self.rpc_config is None:
            futures = [self._run_local(item) for item in runner_inputs]
            if self.on_measured is not None:
                self.on_measured(len(futures))
            return futures
        return [
            RPCRunnerFuture(
                self.pool.submit(
                    _rpc_run,
                    None, None, None, None, None,
                    self.rpc_config,
                    self.evaluator_config,
                    1,
                    str(item.artifact_path),
                    str(item.device_type),
                    _args_info(item),
                ),
                timeout_sec=self.timeout_sec,
            )
            for item in runner_inputs
        ]

    def _run_local(self, item: RunnerInput) -> RunnerFuture:
        future = self.pool.submit(
            _local_run,
            None, None, None,
            self.evaluator_config,
            1,
            str(item.artifact_path),
            str(item.device_type),
            _args_info(item),
        )
        try:
            return LocalRunnerFuture(res=future.result(), error_message=None)
        except TimeoutError:
            message = f"WarmRunner: timeout, killed after {self.timeout_sec} s"
        except Exception as error:  # noqa: BLE001 (the message is the result)
            message = "WarmRunner: an exception occurred\n" + str(error)
        return LocalRunnerFuture(res=None, error_message=message)

    def shutdown(self) -> None:
        self.pool.shutdown()


def _args_info(item: RunnerInput) -> tuple[Any, ...]:
    return tuple(info.as_json() for info in item.args_info)
