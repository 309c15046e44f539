"""The live progress line of a tuning run, fed by MetaSchedule after every measured batch.

    tune NCHW_float32_n1_c64_k64_i56x56_r3x3... 96/192 trials | forward 85.2 GFLOP/s (hand 40.1)
        | grad_input 60.3 (35.0) | grad_weight 22.0 (18.1) | 3m12s, ETA 3m12s

On a terminal the line is redrawn in place; otherwise (CI logs, pipes) one line per batch.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

INVALID_SECONDS = 1e9  # MetaSchedule stores failed candidates with a huge run time


@dataclasses.dataclass
class KernelProgress:
    """What one kernel's tuning has reached in this run."""

    name: str
    flops: int
    budget: int
    trials: int = 0
    failed: int = 0
    best_seconds: float | None = None
    hand_written_seconds: float | None = None
    # (seconds since the run started, trials so far, best seconds so far) after every batch
    history: list = dataclasses.field(default_factory=list)

    def gflops(self, seconds: float | None) -> float | None:
        return None if not seconds else self.flops / seconds / 1e9

    def reached(self, fraction: float = 0.9) -> tuple | None:
        """(elapsed s, trials) when the best speed first reached ``fraction`` of the final best."""
        if self.best_seconds is None:
            return None
        for elapsed, trials, best in self.history:
            if best is not None and self.best_seconds / best >= fraction:
                return elapsed, trials
        return None


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _fmt_gflops(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


class ProgressLine:
    """Tracks every kernel of one run and draws the line (unless ``quiet``)."""

    def __init__(self, title: str, kernels: list[KernelProgress], *, quiet: bool = False,
                 stream=None):
        self.title = title
        self.kernels = {k.name: k for k in kernels}
        self.order = [k.name for k in kernels]
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = False
        self._measured = 0  # candidates the runner finished, before MetaSchedule reports them

    # numbers --------------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def trials(self) -> int:
        return max(self._measured, sum(k.trials for k in self.kernels.values()))

    @property
    def budget(self) -> int:
        return sum(k.budget for k in self.kernels.values())

    def eta(self) -> float | None:
        done = self.trials
        if not done:
            return None
        return self.elapsed / done * max(0, self.budget - done)

    # events ---------------------------------------------------------------------------------
    def runner_measured(self, count: int) -> None:
        """The runner finished ``count`` candidates (not yet attributed to a kernel)."""
        self._measured += count
        self.draw()

    def measured(self, name: str, run_secs: list) -> None:
        kernel = self.kernels[name]
        kernel.trials += len(run_secs)
        for seconds in run_secs:
            if seconds is None or seconds >= INVALID_SECONDS:
                kernel.failed += 1
            elif kernel.best_seconds is None or seconds < kernel.best_seconds:
                kernel.best_seconds = seconds
        kernel.history.append((self.elapsed, kernel.trials, kernel.best_seconds))
        self.draw()

    def line(self) -> str:
        parts = [f"tune {self.title}: {self.trials}/{self.budget} trials"]
        for name in self.order:
            k = self.kernels[name]
            hand = k.gflops(k.hand_written_seconds)
            text = f"{name} {_fmt_gflops(k.gflops(k.best_seconds))} GFLOP/s"
            if hand is not None:
                text += f" (hand {_fmt_gflops(hand)})"
            parts.append(text)
        eta = self.eta()
        parts.append(fmt_duration(self.elapsed) + (f", ETA {fmt_duration(eta)}" if eta is not None
                                                     else ""))
        return " | ".join(parts)

    def draw(self) -> None:
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line())
            self._drawn = True
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A line of its own (the progress line is redrawn after it)."""
        if self.quiet:
            return
        self.finish()
        self.stream.write(message + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._drawn and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False


@derived_object
class ProgressCallback(PyMeasureCallback):
    """MetaSchedule measure callback that reports each batch to a :class:`ProgressLine`."""

    def __init__(self, progress: ProgressLine, task_names: list[str]) -> None:
        super().__init__()
        self.progress = progress
        self.task_names = list(task_names)

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
              runner_results) -> None:
        run_secs = []
        for result in runner_results:
            secs = result.run_secs
            if result.error_msg or not secs:
                run_secs.append(None)
            else:
                run_secs.append(sum(float(s) for s in secs) / len(secs))
        self.progress.measured(self.task_names[task_id], run_secs)
