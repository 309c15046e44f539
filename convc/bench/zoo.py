"""`convc bench --zoo`: every distinct convolution of torchvision's classification models, convc
beside PyTorch, forward and both adjoints.

The corpus (zoo.json, beside this file) was extracted once by benchmarks/extract_zoo.py: each model
built with `weights=None`, run on one batch-1 input of its own size, a forward hook on every
nn.Conv2d recording its arguments and input shape, and how often it ran. Here it needs only
PyTorch (for the peer), no torchvision.

Each (layer, op) is timed side by side in paired rounds (convc.bench.time_side_by_side): convc in
NCHW and NHWC, PyTorch in contiguous and channels_last. Two ratios (PyTorch time / convc time, the
median over rounds of the ratio inside each round): the best format on each side, and NCHW against
contiguous PyTorch (the format PyTorch users have by default). Per model, the time of all its convs,
each counted as often as it runs: forward alone, and a training step (forward + grad_input +
grad_weight of every conv; the first layer's grad_input counts too, though training needs none).
Layers with bias are timed without it on both sides.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import time
from pathlib import Path

from . import (OPS, STATS, Conv2d, convc_calls, fastest, geomean, paired_ratio,
               time_side_by_side, torch_calls)

TABLE = Path(__file__).with_name("zoo.json")
# Shorter batches than the suite's: the corpus has ~390 layers x 3 ops x 4 contenders.
MIN_BATCH_SECONDS = 0.02
SETTLE_SECONDS = 0.03
# Layers whose PyTorch call is shorter than this are bound by per-call overhead (reported apart).
OVERHEAD_BOUND_SECONDS = 20e-6
# The targets (ratio = PyTorch time / convc time).
TARGETS = {"geomean_best": 1.0, "geomean_nchw": 0.9, "floor": 0.5, "share_at": 0.8,
           "share": 0.9, "compile_seconds": 1.5}


@dataclasses.dataclass(frozen=True)
class ZooLayer:
    """A distinct convolution of the corpus and where it occurs: {model: count}."""

    layer: Conv2d
    models: tuple  # ((model, count), ...)

    @property
    def name(self) -> str:
        lay = self.layer
        kernel = "x".join(map(str, lay.kernel))
        text = f"{lay.c}->{lay.k} {kernel} {lay.h}x{lay.w}"
        if lay.stride != (1, 1):
            text += "/" + "x".join(map(str, lay.stride)) if len(set(lay.stride)) > 1 \
                else f"/{lay.stride[0]}"
        if lay.dilation != (1, 1):
            text += f" d{lay.dilation[0]}"
        if lay.groups > 1:
            text += " dw" if lay.groups == lay.c == lay.k else f" g{lay.groups}"
        return text

    @property
    def where(self) -> str:
        return ", ".join(f"{m}x{c}" if c > 1 else m for m, c in self.models)


def load(models=None, path: Path = TABLE) -> tuple[list[ZooLayer], dict]:
    """The corpus -> (distinct layers in first-seen order, {model: input size}). `models`: a list
    of model names to keep (ValueError naming any the table lacks)."""
    table = json.loads(Path(path).read_text())
    known = table["models"]
    wanted = list(known) if models is None else list(models)
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise ValueError(f"models={unknown}: not in the zoo table; expected some of {list(known)}")
    seen: dict[Conv2d, dict] = {}
    for model in wanted:
        for conv in known[model]["convs"]:
            n, c, h, w = conv["input"]
            layer = Conv2d(n, c, h, w, conv["out_channels"], tuple(conv["kernel"]),
                           tuple(conv["stride"]), tuple(conv["padding"]), tuple(conv["dilation"]),
                           conv["groups"])
            counts = seen.setdefault(layer, {})
            counts[model] = counts.get(model, 0) + conv["count"]
    layers = [ZooLayer(layer, tuple(counts.items())) for layer, counts in seen.items()]
    return layers, {m: known[m]["input_size"] for m in wanted}


@dataclasses.dataclass
class ZooRow:
    layer: ZooLayer
    op: str
    flops: int
    convc: float | None = None          # seconds, best layout
    convc_layout: str = ""
    convc_nchw: float | None = None
    torch: float | None = None          # seconds, best format
    torch_format: str = ""
    torch_nchw: float | None = None
    ratio: float | None = None          # best vs best, paired by round
    ratio_nchw: float | None = None     # NCHW vs contiguous, paired by round
    schedule: dict = dataclasses.field(default_factory=dict)   # layout -> schedule name
    compile_seconds: dict = dataclasses.field(default_factory=dict)

    def gflops(self, seconds):
        return None if not seconds else self.flops / seconds / 1e9

    @property
    def overhead_bound(self) -> bool:
        return self.torch is not None and self.torch < OVERHEAD_BOUND_SECONDS


def schedule_name(kernel) -> str:
    """Which schedule a kernel got: the rule's variant (the `convc.schedule` annotation the
    hand-written rules leave on their reduction block), else how dispatch chose it."""
    found = re.search(r'"convc\.schedule": "([^"]+)"', kernel.tir or "")
    name = found.group(1) if found else kernel.how
    return name if kernel.how == "hand-written" else f"{kernel.how}:{name}"


def run(layers, ops=OPS, repeat=3, target=None, threads=None, stat="median", progress=None):
    """Time every (layer, op) of `layers` (ZooLayer list) side by side; -> list of ZooRow."""
    from ..target import info, resolve

    target = resolve(target)
    threads = threads or info(target).num_cores
    pick = STATS[stat]
    rows = []
    for zl in layers:
        for op in ops:
            row = ZooRow(zl, op, zl.layer.spec().flops)
            calls, built = convc_calls(zl.layer, op, ("NCHW", "NHWC"), target,
                                       describe=schedule_name)
            for layout, (seconds, name) in built.items():
                row.compile_seconds[layout], row.schedule[layout] = seconds, name
            calls.update(torch_calls(zl.layer, op, threads))
            batches = time_side_by_side(calls, repeat, MIN_BATCH_SECONDS, SETTLE_SECONDS)
            times = {key: pick(samples) for key, samples in batches.items()}
            torch_keys = [k for k in calls if k[0] == "torch"]
            row.ratio = paired_ratio(batches, torch_keys, [k for k in calls if k[0] == "convc"],
                                     pick)
            row.ratio_nchw = paired_ratio(batches, [("torch", "NCHW")], [("convc", "NCHW")], pick)
            row.convc_nchw = times.get(("convc", "NCHW"))
            row.torch_nchw = times.get(("torch", "NCHW"))
            best = fastest(times)
            row.convc, row.convc_layout = best.get("convc", (None, ""))
            row.torch, row.torch_format = best.get("torch", (None, ""))
            rows.append(row)
            if progress:
                progress(row)
    return rows


# --- reports ----------------------------------------------------------------------------------

def _fmt(value, spec="{:.1f}"):
    return "-" if value is None else spec.format(value)


def table(rows, limit=None) -> str:
    """Rows sorted by ratio, worst first (`limit`: only the first so many)."""
    cols = ["layer", "op", "convc GFLOP/s", "layout", "schedule", "PyTorch GFLOP/s", "format",
            "ratio", "NCHW ratio", "PyTorch us", "models"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    ordered = sorted(rows, key=lambda r: (r.ratio is None, r.ratio or 0))
    for r in ordered[:limit]:
        cells = [r.layer.name, r.op, _fmt(r.gflops(r.convc)), r.convc_layout,
                 r.schedule.get(r.convc_layout, "-"), _fmt(r.gflops(r.torch)),
                 r.torch_format or "-", _fmt(r.ratio, "{:.2f}"), _fmt(r.ratio_nchw, "{:.2f}"),
                 _fmt(r.torch and r.torch * 1e6, "{:.0f}"), r.layer.where]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def distribution(values) -> str:
    """Quantiles and a histogram of ratios, in text."""
    values = sorted(v for v in values if v)
    if not values:
        return "no ratios"
    q = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
    bins = [0, 0.5, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, math.inf]
    counts = [sum(lo <= v < hi for v in values) for lo, hi in zip(bins, bins[1:])]
    hist = "  ".join(f"[{lo:g},{hi:g}): {c}" for lo, hi, c in zip(bins, bins[1:], counts))
    p25 = statistics.quantiles(values, n=4)[0] if len(values) > 1 else values[0]
    return (f"n={len(values)} min {values[0]:.2f}  p10 {q[0]:.2f}  p25 {p25:.2f}  "
            f"median {statistics.median(values):.2f}  p90 {q[-1]:.2f}  max {values[-1]:.2f}\n"
            f"  {hist}")


def per_model(rows, models) -> list[dict]:
    """Per model: convc's and PyTorch's total conv time (each layer times its count), forward
    alone and a training step (all three ops). Best format on each side, and NCHW vs NCHW."""
    out = []
    for model in models:
        entry = {"model": model}
        for label, ops in (("forward", ("forward",)), ("train", OPS)):
            sums = {"convc": 0.0, "torch": 0.0, "convc_nchw": 0.0, "torch_nchw": 0.0}
            complete = True
            for r in rows:
                count = dict(r.layer.models).get(model, 0)
                if not count or r.op not in ops:
                    continue
                for key in sums:
                    value = getattr(r, key)
                    if value is None:
                        complete = False
                    else:
                        sums[key] += count * value
            covered = {op for r in rows for op in [r.op] if dict(r.layer.models).get(model)}
            entry[label] = sums if complete and set(ops) <= covered else None
        out.append(entry)
    return out


def model_table(entries) -> str:
    cols = ["model", "forward convc ms", "forward PyTorch ms", "ratio", "NCHW ratio",
            "train step convc ms", "train step PyTorch ms", "ratio", "NCHW ratio"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in entries:
        cells = [e["model"]]
        for label in ("forward", "train"):
            s = e[label]
            if s is None:
                cells += ["-"] * 4
                continue
            cells += [f"{1e3 * s['convc']:.2f}", f"{1e3 * s['torch']:.2f}",
                      _fmt(s["torch"] / s["convc"] if s["convc"] else None, "{:.2f}"),
                      _fmt(s["torch_nchw"] / s["convc_nchw"] if s["convc_nchw"] else None,
                           "{:.2f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "reached" if ok else "NOT reached"


def summary(rows, models) -> str:
    """The zoo issue's targets, checked on these rows."""
    t = TARGETS
    lines = []
    for op in OPS:
        rated = [r for r in rows if r.op == op and r.ratio]
        if not rated:
            continue
        best, nchw = geomean([r.ratio for r in rated]), geomean([r.ratio_nchw for r in rated])
        timed = [r for r in rated if not r.overhead_bound]
        lines.append(
            f"{op:12s} geo-mean {best:.2f} best format ({_verdict(best >= t['geomean_best'])} "
            f">= {t['geomean_best']}), {_fmt(nchw, '{:.2f}')} NCHW vs NCHW "
            f"({_verdict(bool(nchw) and nchw >= t['geomean_nchw'])} >= {t['geomean_nchw']}); "
            f"without the {len(rated) - len(timed)} overhead-bound layers "
            f"{_fmt(geomean([r.ratio for r in timed]), '{:.2f}')} / "
            f"{_fmt(geomean([r.ratio_nchw for r in timed]), '{:.2f}')}")
    timed = [r for r in rows if not r.overhead_bound]
    for label, pool in (("all layers", rows), ("layers with PyTorch >= 20 us", timed)):
        rated = [r for r in pool if r.ratio]
        if not rated:
            continue
        worst = min(rated, key=lambda r: r.ratio)
        share = sum(r.ratio >= t["share_at"] for r in rated) / len(rated)
        lines.append(
            f"{label}: lowest {worst.ratio:.2f} ({worst.layer.name} {worst.op}; "
            f"{_verdict(worst.ratio >= t['floor'])} >= {t['floor']}); "
            f"{100 * share:.0f}% of {len(rated)} kernels at >= {t['share_at']} "
            f"({_verdict(share >= t['share'])} >= {100 * t['share']:.0f}%); "
            f"{sum(r.ratio < t['floor'] for r in rated)} below {t['floor']}")
    entries = per_model(rows, models)
    for label in ("forward", "train"):
        done = [e for e in entries if e[label]]
        behind = [e["model"] for e in done if e[label]["convc"] > e[label]["torch"]]
        if done:
            lines.append(f"per model, {'training step' if label == 'train' else 'forward'}: "
                         f"convc's total <= PyTorch's on {len(done) - len(behind)} of {len(done)} "
                         f"models ({_verdict(not behind)})"
                         + (f"; behind: {', '.join(behind)}" if behind else ""))
    compiled = [(s, r, layout) for r in rows for layout, s in r.compile_seconds.items()
                if s is not None]
    if compiled:
        slowest, row, layout = max(compiled, key=lambda item: item[0])
        lines.append(f"compile: slowest {slowest:.2f} s ({row.layer.name} {row.op} {layout}; "
                     f"{_verdict(slowest <= t['compile_seconds'])} <= {t['compile_seconds']} s; "
                     f"cached kernels count ~0 s)")
    schedules = {}
    for r in rows:
        for name in r.schedule.values():
            schedules[name] = schedules.get(name, 0) + 1
    lines.append("schedules: " + ", ".join(f"{n} {c}" for n, c in
                                           sorted(schedules.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def plot(rows, models, path: str) -> None:
    """Histogram of ratios per op and the per-model totals (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in OPS if any(r.op == op for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    bins = [2 ** (i / 4) for i in range(-12, 13)]
    for op in ops:
        axes[0].hist([r.ratio for r in rows if r.op == op and r.ratio], bins=bins, alpha=0.5,
                     label=op)
    axes[0].set_xscale("log")
    ratios = [r.ratio for r in rows if r.ratio]
    if ratios:
        axes[0].set_xlim(min(ratios) / 1.2, max(ratios) * 1.2)
    ticks = [t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32) if not ratios
             or min(ratios) / 1.2 <= t <= max(ratios) * 1.2]
    axes[0].set_xticks(ticks, [f"{t:g}" for t in ticks])
    axes[0].minorticks_off()
    axes[0].axvline(1.0, color="k", linewidth=0.8)
    axes[0].set_xlabel("PyTorch time / convc time (best format each)")
    axes[0].set_ylabel("kernels")
    axes[0].legend()
    entries = [e for e in per_model(rows, models) if e["forward"] or e["train"]]
    xs = range(len(entries))
    for offset, label in ((-0.2, "forward"), (0.2, "train")):
        values = [e[label]["torch"] / e[label]["convc"] if e[label] else 0 for e in entries]
        axes[1].bar([x + offset for x in xs], values, 0.4, label=label)
    axes[1].axhline(1.0, color="k", linewidth=0.8)
    axes[1].set_xticks(list(xs), [e["model"] for e in entries], rotation=60, ha="right",
                       fontsize=8)
    axes[1].set_ylabel("PyTorch total / convc total")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def save(rows, path: str) -> None:
    """The rows as JSON (one object per kernel), for later analysis or plots."""
    out = [{"layer": r.layer.name, "models": dict(r.layer.models), "op": r.op, "flops": r.flops,
            "convc": r.convc, "convc_layout": r.convc_layout, "convc_nchw": r.convc_nchw,
            "torch": r.torch, "torch_format": r.torch_format, "torch_nchw": r.torch_nchw,
            "ratio": r.ratio, "ratio_nchw": r.ratio_nchw, "schedule": r.schedule,
            "compile_seconds": r.compile_seconds, "conv": dataclasses.asdict(r.layer.layer)}
           for r in rows]
    Path(path).write_text(json.dumps(out, indent=1) + "\n")


def header(target, threads) -> str:
    from ..target import info

    tinfo = info(target)
    return (f"convc bench --zoo  {time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
            f"LLVM mcpu {tinfo.arch}, {tinfo.num_cores} cores, {tinfo.vector_bits}-bit vectors; "
            f"{threads} thread(s) each")
