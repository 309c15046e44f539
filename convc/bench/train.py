"""`convc bench --train`: convc inside PyTorch on whole models (needs torch and torchvision).

For torchvision's ResNet-18 and MobileNetV2 (random weights, batch 8, 3x112x112):

    train      one training step, forward + cross-entropy + backward + SGD (momentum 0.9), of
               the model with PyTorch's layers beside a copy after convc.torch.convert (its
               convolutions run convc's forward, grad_input and grad_weight kernels)
    inference  one forward of the model in eval mode (no_grad) with PyTorch's layers (eager)
               beside a copy after convc.torch.fuse (conv + BN (+ ReLU/ReLU6, + residual) in one
               convc kernel each)

in NCHW and channels_last memory. The issue's targets: the training step no slower with convc's
layers (ratio PyTorch / convc >= 1), fused inference >= 1.2x faster than eager.

Two ways to time them (`convc bench --train --processes N`):

* processes (N > 0, the default): each side in a process of its own, as a user runs one model
  — N processes a side, started alternately (PyTorch, convc, convc, PyTorch, ...), each
  building its one model, warming up and timing `steps` calls; a row is the median over the
  processes of each process's median (or least) call. Why: a training step allocates and frees
  a few hundred MB of activations and gradients, and glibc's malloc returns the top of the heap
  to the system once a step (its trim threshold), so the next step faults its pages back in —
  on the VMs measured here ~2-5 us a fault, up to a third of a MobileNetV2 step. In one shared
  process both models' tensors and frees share that heap, and each step pays for the trims the
  other model's step set off. Measured (AMD EPYC Zen 5, 2 cores, 2026-12-04, MobileNetV2
  channels_last training step, median ms / page faults per step): alone, PyTorch 69-116 ms
  with 12,400-22,500 faults, convc 56-83 ms with 6,700-8,700 (not traced to a source; convc's
  kernels take their scratch space from TVM's workspace pool, which keeps it); in one process,
  paired rounds, PyTorch 57-71 ms, convc 66-72, both 0-9,700 faults a step depending on what
  the other side freed last.
* rounds (N = 0): both models in this process, alternating rounds
  (convc.bench.time_side_by_side), `repeat` rounds; what the kernels and their Python cost,
  with the allocator's faults shared out between the sides as above.

torchvision here: its registry wheel is a CUDA build whose C++ ops do not load beside a CPU
torch, and `import torchvision` then dies registering fake kernels for them
(torchvision/_meta_registrations.py: "operator torchvision::nms does not exist"). The model
definitions are plain Python and need none of those ops, so the import pre-empts that one module
(_torchvision below); nothing else of convc imports torchvision.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import subprocess
import sys
import time
import types

from . import time_side_by_side

MODELS = ("resnet18", "mobilenet_v2")
FORMATS = ("NCHW", "channels_last")
SIDES = ("torch", "convc")
TARGETS = {"train": 1.0, "inference": 1.2}   # PyTorch time / convc time, at least
PROCESSES = 6   # timing processes a side (the CLI's default; ~16 minutes for both models)
STEPS = 15      # timed calls a process
WARMUP = 5      # untimed calls first (compiles, first-touch, the thread team)
STATISTICS = {"median": statistics.median, "min": min}   # --stat, over calls or rounds


@dataclasses.dataclass
class Row:
    model: str
    mode: str          # "train" or "inference"
    memory_format: str
    torch_s: float     # seconds per call, PyTorch's layers
    convc_s: float     # seconds per call, convc's (converted / fused)
    # processes mode: side -> seconds per call in each process, "<side> faults" -> page faults
    runs: dict | None = None

    @property
    def ratio(self) -> float:
        return self.torch_s / self.convc_s


def _torchvision():
    """torchvision.models, importable beside a CPU torch (see the module docstring)."""
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    try:
        import torchvision.models as models
    except ImportError as err:
        raise ValueError(f"convc bench --train needs torchvision ({err}): pip install -e "
                         "'.[torch,torchvision]'") from None
    return models


def _memory_format(name: str):
    import torch

    return {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}[name]


def _step(model, x, labels, optimizer):
    import torch.nn.functional as F

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def _inference(model, x):
    import torch

    def infer():
        with torch.no_grad():
            return model(x)

    return infer


def calls(name: str, mode: str, memory_format: str, batch: int = 8, size: int = 112,
          sides=SIDES) -> dict:
    """{side: callable} for one model, mode and memory format, side "torch" (PyTorch's layers)
    and/or "convc" (a copy converted, or fused for inference); the same seeded weights each."""
    import torch

    from .. import torch as convc_torch

    torch.manual_seed(0)
    model = getattr(_torchvision(), name)(num_classes=10)
    fmt = _memory_format(memory_format)
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size).to(memory_format=fmt)
    models = {}
    for side in sides:
        m = model if side == "torch" else copy.deepcopy(model)
        if side == "convc" and mode == "train":
            convc_torch.convert(m)
        elif side == "convc":
            convc_torch.fuse(m.eval())
        models[side] = m
    if mode == "train":
        labels = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(0))
        return {side: _step(m.train(), x, labels,
                            torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9))
                for side, m in models.items()}
    return {side: _inference(m.eval(), x) for side, m in models.items()}


def run(models=MODELS, modes=("train", "inference"), formats=FORMATS, repeat: int = 5,
        threads: int | None = None, progress=None, stat: str = "median", processes: int = 0,
        steps: int = STEPS) -> list:
    """Rows of (model, mode, format): `processes` > 0 times each side in processes of its own
    (measure_in_processes), 0 in this process by paired rounds (the module docstring)."""
    statistic = STATISTICS[stat]
    if not processes:
        import torch

        if threads:
            torch.set_num_threads(threads)
    rows = []
    for name in models:
        for mode in modes:
            for fmt in formats:
                if processes:
                    runs = measure_in_processes(name, mode, fmt, processes, steps, threads, stat)
                    rows.append(Row(name, mode, fmt, statistics.median(runs["torch"]),
                                    statistics.median(runs["convc"]), runs))
                else:
                    times = time_side_by_side(calls(name, mode, fmt), repeat, min_batch=0.3)
                    rows.append(Row(name, mode, fmt, statistic(times["torch"]),
                                    statistic(times["convc"])))
                if progress:
                    progress(rows[-1])
    return rows


def measure_in_processes(name: str, mode: str, memory_format: str, processes: int, steps: int,
                         threads: int | None = None, stat: str = "median") -> dict:
    """{side: [per process: the median (or least) of `steps` timed calls]}: `processes` Python
    processes a side, started one at a time, alternately (PyTorch first in even pairs, convc
    first in odd ones), each building only its side's model (`python -m convc.bench.train`)."""
    runs = {side: [] for side in SIDES}
    for p in range(processes):
        for side in SIDES if p % 2 == 0 else SIDES[::-1]:
            job = {"model": name, "mode": mode, "memory_format": memory_format, "side": side,
                   "steps": steps, "threads": threads, "stat": stat}
            done = subprocess.run([sys.executable, "-m", __name__, json.dumps(job)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"the timing process for {side} {name} {mode} "
                                   f"{memory_format} failed ({done.returncode}):\n"
                                   f"{done.stderr[-2000:]}")
            found = json.loads(done.stdout.strip().splitlines()[-1])
            runs[side].append(found["seconds"])
            runs.setdefault(f"{side} faults", []).append(found["faults"])
    return runs


def time_one_side(job: dict) -> dict:
    """A timing process's work: one side's model, WARMUP untimed calls, then job["steps"] timed
    one by one: {"seconds": their median (or least, job["stat"]), "faults": the median of the
    page faults (minor, this process) a call took}."""
    import resource

    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    fn = calls(job["model"], job["mode"], job["memory_format"], sides=(job["side"],))[job["side"]]
    for _ in range(WARMUP):
        fn()
    times, faults = [], []
    for _ in range(job["steps"]):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"seconds": STATISTICS[job.get("stat", "median")](times),
            "faults": statistics.median(faults)}


def table(rows) -> str:
    per_process = any(r.runs for r in rows)
    lines = ["| model | step | memory | PyTorch ms | convc ms | PyTorch / convc |"
             + (" PyTorch ms per process | convc ms per process | page faults a call, PyTorch"
                " / convc |" if per_process else ""),
             "|---|---|---|---|---|---|" + ("---|---|---|" if per_process else "")]
    for r in rows:
        what = "train (fwd+bwd+SGD)" if r.mode == "train" else "inference (fused vs eager)"
        line = (f"| {r.model} | {what} | {r.memory_format} | {r.torch_s * 1e3:.1f} | "
                f"{r.convc_s * 1e3:.1f} | {r.ratio:.2f} |")
        if per_process:
            runs = r.runs or {}
            line += "".join(f" {' '.join(f'{t * 1e3:.1f}' for t in runs.get(side, []))} |"
                            for side in SIDES)
            line += " " + " / ".join(f"{statistics.median(runs[f'{side} faults']):.0f}"
                                     if runs.get(f"{side} faults") else "-"
                                     for side in SIDES) + " |"
        lines.append(line)
    return "\n".join(lines)


def summary(rows) -> str:
    """Per model and mode: PyTorch's fastest memory format against convc's fastest (best time
    against best time, not the best per-format ratio, which one slow PyTorch run would flatter)."""
    lines = []
    for mode, target in TARGETS.items():
        for model in sorted({r.model for r in rows if r.mode == mode}):
            mine = [r for r in rows if r.mode == mode and r.model == model]
            peer = min(mine, key=lambda r: r.torch_s)
            ours = min(mine, key=lambda r: r.convc_s)
            ratio = peer.torch_s / ours.convc_s
            verdict = "reached" if ratio >= target else "NOT reached"
            lines.append(f"{model} {mode}: PyTorch / convc {ratio:.2f} (best time each side: "
                         f"PyTorch {peer.memory_format} {peer.torch_s * 1e3:.1f} ms, convc "
                         f"{ours.memory_format} {ours.convc_s * 1e3:.1f} ms); target >= {target} "
                         f"{verdict}")
    return "\n".join(lines)


if __name__ == "__main__":   # a timing process of measure_in_processes: one JSON job argument
    # (run as `python -m convc.bench.train`, so convc is imported before torch, as it must be)
    print(json.dumps(time_one_side(json.loads(sys.argv[1]))), flush=True)
