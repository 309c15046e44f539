"""Benchmark convc's CPU kernels beside PyTorch (oneDNN), TVM's own topi tuned, and NumPy im2col.

Every op of every layer is timed side by side in one run: a warm-up call first (excluded), then
`repeat` timed batches, each long enough (>= ~50 ms) to dwarf the timer; the median batch is the
result. PyTorch runs with the same number of threads as convc's target has cores, in the better
of NCHW and channels_last; convc runs in the layouts asked for (both by default) and reports the
better one, on operands aligned to 64 bytes like PyTorch's. ratio = PyTorch time / convc time
(> 1: convc is faster), taken inside each round (the best format of each in that round) and then
the median over rounds. "% peak" is convc's GFLOP/s over the FMA peak measured on this machine by
a TVM microbenchmark (measure_peak).

The second peer is TVM's own convolution (topi) with the best record `convc tune --peer topi`
left for it (convc/bench/topi_peer.py; 2-D NCHW only, "-" where it has no record or no such op);
"vs topi" = topi time / convc time, paired by round like the PyTorch ratio.

PyTorch and matplotlib are optional: imported lazily, only here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time

import numpy as np

from ..spec import ConvSpec

# name -> (N, C, H, W, K, kernel, stride, pad, groups): the layer suite of issue 3.
LAYERS = {
    "c2_3x3": (1, 64, 56, 56, 64, 3, 1, 1, 1),
    "c3_3x3": (1, 128, 28, 28, 128, 3, 1, 1, 1),
    "c4_3x3": (1, 256, 14, 14, 256, 3, 1, 1, 1),
    "c5_3x3": (1, 512, 7, 7, 512, 3, 1, 1, 1),
    "1x1": (1, 256, 56, 56, 128, 1, 1, 0, 1),
    "stem_7x7s2": (1, 3, 224, 224, 64, 7, 2, 3, 1),
    "c4_3x3s2": (1, 256, 28, 28, 256, 3, 2, 1, 1),
    "mbv2_dw": (1, 144, 56, 56, 144, 3, 1, 1, 144),
    "c3_b8": (8, 128, 28, 28, 128, 3, 1, 1, 1),
}
OPS = ("forward", "grad_input", "grad_weight")
LAYOUTS = ("NCHW", "NHWC")
MIN_BATCH_SECONDS = 0.05
# Every library's workers poll for a while after a parallel region (OpenBLAS ~2^28 cycles,
# libgomp 300,000 spins, TVM as set in convc/__init__.py): wait them out before the next contender.
SETTLE_SECONDS = 0.1


@dataclasses.dataclass
class Row:
    layer: str
    op: str
    flops: int
    convc: float | None = None          # seconds
    convc_layout: str = ""
    torch: float | None = None
    torch_format: str = ""
    numpy: float | None = None
    topi: float | None = None            # seconds, TVM topi with its tuned record
    topi_trials: int = 0
    topi_ratio: float | None = None      # topi time / convc time, paired by round
    compile_seconds: float | None = None
    how: str = ""
    ratio: float | None = None          # PyTorch time / convc time, paired by round (paired_ratio)

    def gflops(self, seconds):
        return None if not seconds else self.flops / seconds / 1e9


@dataclasses.dataclass(frozen=True)
class Conv2d:
    """One 2-D convolution layer to time: the input (N, C, H, W), K output channels and PyTorch's
    per-axis arguments."""

    n: int
    c: int
    h: int
    w: int
    k: int
    kernel: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1

    def spec(self, layout="NCHW", dtype="float32") -> ConvSpec:
        args = (self.stride, self.padding, self.dilation, self.groups)
        if layout == "NCHW":
            return ConvSpec.from_shapes((self.n, self.c, self.h, self.w),
                                        (self.k, self.c // self.groups, *self.kernel), *args,
                                        dtype=dtype)
        return ConvSpec.from_shapes((self.n, self.h, self.w, self.c),
                                    (*self.kernel, self.c // self.groups, self.k), *args,
                                    layout=layout, dtype=dtype)


def as_layer(layer) -> Conv2d:
    """A suite name, a suite tuple (N, C, H, W, K, kernel, stride, pad, groups) or a Conv2d."""
    if isinstance(layer, Conv2d):
        return layer
    n, c, h, w, k, r, s, p, g = LAYERS[layer] if isinstance(layer, str) else layer
    return Conv2d(n, c, h, w, k, (r, r), (s, s), (p, p), (1, 1), g)


def layer_spec(layer, layout="NCHW", dtype="float32") -> ConvSpec:
    return as_layer(layer).spec(layout, dtype)


def time_side_by_side(fns: dict, repeat: int, min_batch: float | None = None,
                      settle: float | None = None) -> dict:
    """{name: callable} -> {name: [seconds per call in each round]} (`repeat` rounds).

    Every callable is warmed up (not counted); then each of `repeat` rounds times one batch of
    every callable in turn (a batch lasts >= MIN_BATCH_SECONDS), so that a change in the load of a
    shared machine hits all contenders alike. Between two callables the process sleeps
    SETTLE_SECONDS: each library's worker threads spin a while after a parallel region, and no one
    should be timed against its rival's spinning threads (NumPy's OpenBLAS threads, ~0.1 s).
    Each batch starts with one untimed call: after the pause every library's threads sleep, and
    on a virtual machine the first call wakes an idle vCPU (seen here: PyTorch's first calls after
    a pause at half speed, so 20 ms batches put it at 36-80 GFLOP/s where it runs 200-300). The
    steady state is what a training loop sees. `min_batch` / `settle` override MIN_BATCH_SECONDS /
    SETTLE_SECONDS (the zoo's hundreds of layers use shorter ones)."""
    min_batch = MIN_BATCH_SECONDS if min_batch is None else min_batch
    settle = SETTLE_SECONDS if settle is None else settle
    numbers = {}
    for name, fn in fns.items():
        fn()
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        numbers[name] = max(1, math.ceil(min_batch / max(once, 1e-6)))
        time.sleep(settle)
    batches = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(repeat):
        # Each round starts one contender later: whoever runs right after a rival's batch meets
        # what that rival leaves behind (spinning threads, a cold cache), ~10 % seen here.
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            fn()
            start = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            batches[name].append((time.perf_counter() - start) / numbers[name])
            time.sleep(settle)
    return batches


def paired_ratio(batches: dict, rivals, ours, stat=statistics.median) -> float | None:
    """`stat` over the rounds of (best rival time / best of ours time) *within* each round.

    The machines this runs on are shared: a neighbour's job can halve the speed of a core for
    seconds, so two medians taken over different rounds can disagree by 2x (seen here: PyTorch's
    c2 3x3 at 136 and 236 GFLOP/s in two consecutive runs). Rounds alternate the contenders, so
    the ratio inside one round compares them under the same load; its median is what the
    targets are checked on."""
    rivals = [batches[k] for k in rivals]
    ours = [batches[k] for k in ours]
    if not rivals or not ours:
        return None
    rounds = zip(zip(*rivals), zip(*ours))
    return stat([min(r) / min(o) for r, o in rounds])


# --- peak -------------------------------------------------------------------------------------

def measure_peak(target=None, tries: int = 7) -> float:
    """fp32 FMA peak of the target in GFLOP/s: one core's peak, measured, times the core count.

    One thread runs 24 independent chains of vector FMAs held in registers (acc = acc * a + b;
    more chains than FMA latency x ports), best of `tries` runs of ~0.1 s. One core is measured
    and scaled because on a shared machine the other jobs hold the second core: measured on two
    threads directly, the figure halves (seen here: 173 GFLOP/s on one thread, 178 on two while
    three other jobs ran), which would make every share of peak look twice as good as it is.
    measure_parallel_peak says what all cores give at once."""
    from ..target import info, resolved

    target = resolved(target)
    return max(_fma_runs(target, 1, tries)) * info(target).num_cores


def measure_parallel_peak(target=None, tries: int = 7, threads: int | None = None
                          ) -> tuple[float, float]:
    """(median, best) of `tries` runs of the same FMA chains on `threads` threads at once (default
    every core), GFLOP/s.

    Where it falls well below measure_peak, the cores share FMA units (a virtual machine's vCPUs
    on one physical core's hyperthreads, or a neighbour's job on them). Seen on an Intel Xeon VM
    with 2 vCPUs (2026-12-03): one core 137 x 2 = 273, both at once 130 in 8 of 10 runs (230-261 in
    the other two); two processes pinned to the two vCPUs got 67 and 70 each."""
    from ..target import info, resolved

    target = resolved(target)
    runs = _fma_runs(target, threads or info(target).num_cores, tries)
    return statistics.median(runs), max(runs)


def _fma_runs(target, threads: int, tries: int) -> list[float]:
    """GFLOP/s of each of `tries` runs of 24 register-held FMA chains per thread on `threads`
    threads (a parallel loop over them)."""
    import tvm
    from tvm.script import tirx as T

    from ..target import info

    lanes, chains, steps = info(target).lanes("float32"), 24, 200_000
    width = chains * lanes

    @T.prim_func
    def fma(a: T.Buffer((threads, width), "float32"), out: T.Buffer((threads, width), "float32")):
        for t in T.parallel(threads):
            acc = T.alloc_buffer((width,), "float32", scope="local")
            for j in T.serial(width):
                acc[j] = a[t, j]
            for _ in T.serial(steps):
                for j in T.unroll(chains):
                    for v in T.vectorized(lanes):
                        acc[j * lanes + v] = acc[j * lanes + v] * T.float32(0.9999999) \
                            + T.float32(1e-7)
            for j in T.serial(width):
                out[t, j] = acc[j]

    runner = tvm.compile(tvm.IRModule({"main": fma}), target=target)["main"]
    # TVM-allocated (64-byte aligned) arrays: a TVMScript buffer assumes that alignment.
    data = tvm.runtime.tensor(np.ones((threads, width), "float32"))
    result = tvm.runtime.tensor(np.zeros((threads, width), "float32"))
    flops = 2 * width * steps * threads
    runs = []
    for _ in range(tries):
        start = time.perf_counter()
        runner(data, result)
        runs.append(flops / (time.perf_counter() - start) / 1e9)
    return runs


# --- convc -----------------------------------------------------------------------------------

def convc_calls(layer, op, layouts, target=None, describe=None) -> dict:
    """{("convc", layout): callable}, plus {layout: (compile seconds, how the kernel was
    scheduled)}; `describe(kernel)` names the schedule (default: kernel.how)."""
    from ..kernel import compile as compile_kernel
    from ..check import kernel_inputs, operands
    from ..kernel import aligned_copy, aligned_empty

    calls, info = {}, {}
    for layout in layouts:
        spec = layer_spec(layer, layout)
        start = time.perf_counter()
        kernel = compile_kernel(spec, op, target)
        info[layout] = (time.perf_counter() - start,
                        describe(kernel) if describe else kernel.how)
        # 64-byte aligned, as PyTorch's allocator aligns its tensors (NumPy's 16 bytes cost
        # convc up to 30 % on depthwise layers: see convc.kernel.ALIGNMENT).
        args = [aligned_copy(a) for a in kernel_inputs(spec, op, operands(spec))]
        out = aligned_empty(kernel.arg_shapes[-1], spec.dtype)
        calls[("convc", layout)] = functools.partial(kernel, *args, out=out)
    return calls, info


def topi_calls(layer, op, target=None) -> dict:
    """{("topi", "NCHW"): callable} when a tuned topi record exists for the layer; and its trials."""
    from . import topi_peer
    from ..check import operands

    spec = layer_spec(layer, "NCHW")
    library, trials = topi_peer.best_module(spec, op, target)
    if library is None:
        return {}, 0
    fn, _ = topi_peer.call(spec, op, library, operands(spec))
    return {("topi", "NCHW"): fn}, trials


def torch_calls(layer, op, threads) -> dict:
    """{("torch", format): callable} for NCHW and channels_last; {} without PyTorch."""
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    layer = as_layer(layer)
    spec = layer.spec()
    gen = torch.Generator().manual_seed(0)
    calls = {}
    for name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x = torch.rand((layer.n, layer.c, layer.h, layer.w), generator=gen).to(memory_format=fmt)
        wt = torch.rand((layer.k, layer.c // layer.groups, *layer.kernel),
                        generator=gen).to(memory_format=fmt)
        dy = torch.rand((layer.n, layer.k, *spec.out_size), generator=gen).to(memory_format=fmt)
        calls[("torch", name)] = _no_grad(torch, _torch_op(torch, op, x, wt, dy, layer))
    return calls


def _no_grad(torch, fn):
    def call():
        with torch.no_grad():
            return fn()
    return call


def _torch_op(torch, op, x, w, dy, layer: Conv2d):
    """The aten kernel autograd itself calls (oneDNN on x86), one gradient at a time."""
    stride, pad, dilation = list(layer.stride), list(layer.padding), list(layer.dilation)
    if op == "forward":
        return lambda: torch.nn.functional.conv2d(x, w, None, stride, pad, dilation, layer.groups)
    mask = [op == "grad_input", op == "grad_weight", False]
    return lambda: torch.ops.aten.convolution_backward(
        dy, x, w, None, stride, pad, dilation, False, [0, 0], layer.groups, mask)


# --- NumPy im2col + GEMM ---------------------------------------------------------------------

def numpy_call(layer, op):
    n, c, h, w, k, r, s, p, g = LAYERS[layer]
    rng = np.random.default_rng(0)
    x = rng.random((n, c, h, w), dtype=np.float32)
    wt = rng.random((k, c // g, r, r), dtype=np.float32)
    oh, ow = (h + 2 * p - r) // s + 1, (w + 2 * p - r) // s + 1
    dy = rng.random((n, k, oh, ow), dtype=np.float32)
    fns = {"forward": lambda: _np_forward(x, wt, s, p, g),
           "grad_input": lambda: _np_grad_input(x.shape, wt, dy, s, p, g),
           "grad_weight": lambda: _np_grad_weight(x, wt.shape, dy, s, p, g)}
    return {("numpy", "NCHW"): fns[op]}


def _np_cols(x, r, s, p, g):
    """(N, C, H, W) -> (N, G, Cg*r*r, OH*OW), copied (im2col)."""
    n, c = x.shape[:2]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (r, r), axis=(2, 3))[:, :, ::s, ::s]
    oh, ow = win.shape[2:4]
    cols = np.ascontiguousarray(win.transpose(0, 1, 4, 5, 2, 3)).reshape(n, g, c // g * r * r, oh * ow)
    return cols, oh, ow


def _np_forward(x, w, s, p, g):
    k, _, r, _ = w.shape
    cols, oh, ow = _np_cols(x, r, s, p, g)
    return np.matmul(w.reshape(g, k // g, -1), cols).reshape(x.shape[0], k, oh, ow)


def _np_grad_weight(x, w_shape, dy, s, p, g):
    k, cg, r, _ = w_shape
    cols, _, _ = _np_cols(x, r, s, p, g)
    n = x.shape[0]
    dym = dy.reshape(n, g, k // g, -1)
    return np.matmul(dym, cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(w_shape)


def _np_grad_input(x_shape, w, dy, s, p, g):
    n, c, h, w_size = x_shape
    k, cg, r, _ = w.shape
    oh, ow = dy.shape[2:]
    cols = np.matmul(w.reshape(g, k // g, -1).transpose(0, 2, 1), dy.reshape(n, g, k // g, -1))
    cols = cols.reshape(n, c, r, r, oh, ow)
    dxp = np.zeros((n, c, h + 2 * p, w_size + 2 * p), np.float32)
    for i in range(r):
        for j in range(r):
            dxp[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s] += cols[:, :, i, j]
    return dxp[:, :, p:p + h, p:p + w_size]


# --- driver ----------------------------------------------------------------------------------

STATS = {"median": statistics.median, "min": min}


def run(layers=None, ops=OPS, layouts=LAYOUTS, repeat=10, target=None, numpy_baseline=True,
        progress=None, threads=None, stat="median", topi=True):
    """Time every (layer, op), all contenders side by side; -> list of Row.

    threads: PyTorch's thread count; convc's is set by TVM_NUM_THREADS before its first kernel
    runs (the CLI does that), default the target's cores."""
    from ..target import info, resolved

    target = resolved(target)
    threads = threads or info(target).num_cores
    rows = []
    for layer in layers or list(LAYERS):
        for op in ops:
            row = Row(layer, op, layer_spec(layer).flops)
            calls, built = convc_calls(layer, op, layouts, target)
            calls.update(torch_calls(layer, op, threads))
            if topi:
                peer, row.topi_trials = topi_calls(layer, op, target)
                calls.update(peer)
            if numpy_baseline:
                calls.update(numpy_call(layer, op))
            batches = time_side_by_side(calls, repeat)
            times = {name: STATS[stat](samples) for name, samples in batches.items()}
            ours = [k for k in calls if k[0] == "convc"]
            row.ratio = paired_ratio(batches, [k for k in calls if k[0] == "torch"], ours,
                                     STATS[stat])
            row.topi_ratio = paired_ratio(batches, [k for k in calls if k[0] == "topi"], ours,
                                          STATS[stat])
            for (who, layout), seconds in sorted(times.items(), key=lambda item: item[1]):
                if who == "convc" and row.convc is None:
                    row.convc, row.convc_layout = seconds, layout
                    row.compile_seconds, row.how = built[layout]
                elif who == "torch" and row.torch is None:
                    row.torch, row.torch_format = seconds, layout
                elif who == "numpy":
                    row.numpy = seconds
                elif who == "topi":
                    row.topi = seconds
            rows.append(row)
            if progress:
                progress(row)
    return rows


def fastest(times: dict) -> dict:
    """{(contender, kind): seconds} -> {contender: (seconds, kind)}: each contender's best kind
    (layout, memory format)."""
    best = {}
    for (who, kind), seconds in sorted(times.items(), key=lambda item: item[1]):
        best.setdefault(who, (seconds, kind))
    return best


def geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _fmt(value, spec="{:.1f}"):
    return "-" if value is None else spec.format(value)


def table(rows, peak: float) -> str:
    cols = ["layer", "op", "convc GFLOP/s", "layout", "schedule", "PyTorch GFLOP/s", "format",
            "ratio", "topi GFLOP/s", "vs topi", "NumPy im2col GFLOP/s", "% peak", "compile s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        convc = r.gflops(r.convc)
        cells = [r.layer, r.op, _fmt(convc), r.convc_layout, r.how or "-", _fmt(r.gflops(r.torch)),
                 r.torch_format if r.torch else "-", _fmt(r.ratio, "{:.2f}"),
                 _fmt(r.gflops(r.topi)), _fmt(r.topi_ratio, "{:.2f}"), _fmt(r.gflops(r.numpy)),
                 _fmt(convc and 100 * convc / peak, "{:.0f}%"), _fmt(r.compile_seconds, "{:.2f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "reached" if ok else "NOT reached"


def summary(rows, peak: float | None = None) -> str:
    """The issues' targets, checked on these rows: the hand-written schedules' (issue 3) and the
    tuned kernels' (issue 5: with the shipped records, against PyTorch and against topi tuned)."""
    lines = []
    for op in OPS:
        rated = [r for r in rows if r.op == op and r.ratio]
        if not rated:
            continue
        g = geomean([r.ratio for r in rated])
        worst = min(rated, key=lambda r: r.ratio)
        lines.append(f"{op:12s} vs PyTorch: geo-mean {g:.2f} ({_verdict(g >= 1.3)} >= 1.3 tuned, "
                     f"{_verdict(g >= 0.8)} >= 0.8 hand-written); lowest {worst.ratio:.2f} on "
                     f"{worst.layer} ({_verdict(worst.ratio >= 0.9)} >= 0.9, "
                     f"{_verdict(worst.ratio >= 0.4)} >= 0.4)")
    for layer, op in (("mbv2_dw", None), ("c4_3x3", "grad_weight"), ("c5_3x3", "grad_weight")):
        for r in rows:
            if r.layer == layer and (op is None or r.op == op) and r.ratio:
                lines.append(f"{layer} {r.op}: ratio {r.ratio:.2f} ({_verdict(r.ratio >= 1.0)} "
                             f">= 1.0)")
    if peak:
        timed = [r for r in rows if r.convc]
        if timed:
            best = max(timed, key=lambda r: r.gflops(r.convc))
            share = best.gflops(best.convc) / peak
            over = sum(r.gflops(r.convc) / peak > 0.7 for r in timed)
            lines.append(f"best layer {best.layer} {best.op}: {100 * share:.0f}% of peak "
                         f"({_verdict(share > 0.7)} > 70%; {over} of {len(timed)} kernels above)")
    peered = [r for r in rows if r.topi_ratio]
    if peered:
        behind = [f"{r.layer} {r.op} {r.topi_ratio:.2f}" for r in peered if r.topi_ratio < 1.0]
        lines.append(f"vs topi tuned: {len(peered) - len(behind)} of {len(peered)} kernels at or "
                     f"above ({_verdict(not behind)} >= 1.0 on every kernel); geo-mean "
                     f"{geomean([r.topi_ratio for r in peered]):.2f}"
                     + (f"; behind: {', '.join(behind)}" if behind else ""))
    return "\n".join(lines)


def plot(rows, path: str, peak: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in OPS if any(r.op == op for r in rows)]
    fig, axes = plt.subplots(len(ops), 1, figsize=(11, 3.4 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        sel = [r for r in rows if r.op == op]
        xs = np.arange(len(sel))
        series = [("convc", [r.gflops(r.convc) or 0 for r in sel]),
                  ("PyTorch", [r.gflops(r.torch) or 0 for r in sel]),
                  ("topi tuned", [r.gflops(r.topi) or 0 for r in sel]),
                  ("NumPy im2col", [r.gflops(r.numpy) or 0 for r in sel])]
        width = 0.8 / len(series)
        for i, (name, values) in enumerate(series):
            ax.bar(xs + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        ax.axhline(peak, color="gray", linestyle="--", linewidth=0.8, label=f"peak {peak:.0f}")
        ax.set_xticks(xs, [r.layer for r in sel], fontsize=8)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(op)
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
