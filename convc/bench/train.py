"""`convc bench --train`: convc inside PyTorch on whole models (needs torch and torchvision).

For torchvision's ResNet-18 and MobileNetV2 (random weights, batch 8, 3x112x112):

    train      one training step, forward + cross-entropy + backward + SGD (momentum 0.9), of
               the model with PyTorch's layers beside a copy after convc.torch.convert (its
               convolutions run convc's forward, grad_input and grad_weight kernels)
    inference  one forward of the model in eval mode (no_grad) with PyTorch's layers (eager)
               beside a copy after convc.torch.fuse (conv + BN (+ ReLU/ReLU6, + residual) in one
               convc kernel each)

in NCHW and channels_last memory; side by side in one process, alternating rounds
(convc.bench.time_side_by_side). The issue's targets: the training step no slower with convc's
layers (ratio PyTorch / convc >= 1), fused inference >= 1.2x faster than eager.

torchvision here: its registry wheel is a CUDA build whose C++ ops do not load beside a CPU
torch, and `import torchvision` then dies registering fake kernels for them
(torchvision/_meta_registrations.py: "operator torchvision::nms does not exist"). The model
definitions are plain Python and need none of those ops, so the import pre-empts that one module
(_torchvision below); nothing else of convc imports torchvision.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import sys
import types

from . import time_side_by_side

MODELS = ("resnet18", "mobilenet_v2")
FORMATS = ("NCHW", "channels_last")
TARGETS = {"train": 1.0, "inference": 1.2}   # PyTorch time / convc time, at least


@dataclasses.dataclass
class Row:
    model: str
    mode: str          # "train" or "inference"
    memory_format: str
    torch_s: float     # seconds per call, PyTorch's layers
    convc_s: float     # seconds per call, convc's (converted / fused)

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


def calls(name: str, mode: str, memory_format: str, batch: int = 8, size: int = 112) -> dict:
    """{"torch": callable, "convc": callable} for one model, mode and memory format."""
    import torch

    from .. import torch as convc_torch

    torch.manual_seed(0)
    model = getattr(_torchvision(), name)(num_classes=10)
    fmt = _memory_format(memory_format)
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size).to(memory_format=fmt)
    ours = copy.deepcopy(model)
    if mode == "train":
        convc_torch.convert(ours)
        labels = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(0))
        found = {}
        for key, m in (("torch", model), ("convc", ours)):
            m.train()
            found[key] = _step(m, x, labels, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9))
        return found
    model.eval()
    ours.eval()
    convc_torch.fuse(ours)
    return {"torch": _inference(model, x), "convc": _inference(ours, x)}


def run(models=MODELS, modes=("train", "inference"), formats=FORMATS, repeat: int = 5,
        threads: int | None = None, progress=None, stat: str = "median") -> list:
    import torch

    if threads:
        torch.set_num_threads(threads)
    statistic = {"median": statistics.median, "min": min}[stat]
    rows = []
    for name in models:
        for mode in modes:
            for fmt in formats:
                times = time_side_by_side(calls(name, mode, fmt), repeat, min_batch=0.3)
                rows.append(Row(name, mode, fmt, statistic(times["torch"]),
                                statistic(times["convc"])))
                if progress:
                    progress(rows[-1])
    return rows


def table(rows) -> str:
    lines = ["| model | step | memory | PyTorch ms | convc ms | PyTorch / convc |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        what = "train (fwd+bwd+SGD)" if r.mode == "train" else "inference (fused vs eager)"
        lines.append(f"| {r.model} | {what} | {r.memory_format} | {r.torch_s * 1e3:.1f} | "
                     f"{r.convc_s * 1e3:.1f} | {r.ratio:.2f} |")
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
