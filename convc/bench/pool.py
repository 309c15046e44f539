"""`convc bench --pool`: pooling forward and backward beside PyTorch and a plain copy.

Pooling is memory-bound, so the figure of merit is bandwidth: GB/s = the bytes a kernel must move
at least (every argument read or written once: PoolSpec.bytes) / its time. Beside it, on the same
bytes, a plain copy on this machine (NumPy's copyto, a TVM copy kernel on the same threads and
pool as convc's and, with PyTorch, Tensor.copy_ on the same threads; the fastest of the three):
what moving those bytes costs at best. Each row times, side by side in alternating rounds
(convc.bench.time_side_by_side), convc in NCHW and NHWC, PyTorch in NCHW and channels_last, and
the copies; ratio = PyTorch time / convc time inside each round (the best layout of each),
median over rounds (convc.bench.paired_ratio).

Backward is, for max pooling, the gradient from the saved indices (PyTorch:
max_pool2d_with_indices_backward, what autograd runs; convc: grad_input_indices), for average
pooling avg_pool2d_backward / _adaptive_avg_pool2d_backward against convc's grad_input.

The layers: ResNet's stem max pool (3x3/2 on 112x112x64), VGG-16's five 2x2/2 max pools,
Inception-v3's 3x3/1 average pools (count_include_pad, as torchvision calls them) on its 35x35,
17x17 and 8x8 grids, and ResNet-50's global average pool of 7x7x2048; batch 1 and 8.
"""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np

from . import _fmt, fastest, paired_ratio, time_side_by_side

# name -> (pool, channels, size, arguments as PyTorch takes them)
LAYERS = {
    "resnet_maxpool": ("max", 64, 112, dict(kernel_size=3, stride=2, padding=1)),
    "vgg_pool1": ("max", 64, 224, dict(kernel_size=2, stride=2)),
    "vgg_pool2": ("max", 128, 112, dict(kernel_size=2, stride=2)),
    "vgg_pool3": ("max", 256, 56, dict(kernel_size=2, stride=2)),
    "vgg_pool4": ("max", 512, 28, dict(kernel_size=2, stride=2)),
    "vgg_pool5": ("max", 512, 14, dict(kernel_size=2, stride=2)),
    "inception_avg35": ("avg", 192, 35, dict(kernel_size=3, stride=1, padding=1)),
    "inception_avg17": ("avg", 768, 17, dict(kernel_size=3, stride=1, padding=1)),
    "inception_avg8": ("avg", 2048, 8, dict(kernel_size=3, stride=1, padding=1)),
    "resnet_gap": ("adaptive_avg", 2048, 7, dict(output_size=1)),
}
BATCHES = (1, 8)
DIRECTIONS = ("forward", "backward")
# "Large": workloads moving at least this much, well past the L2 caches (the copy they are held
# against then streams too); the 60 % of copy bandwidth is judged on these.
LARGE_BYTES = 16 * 2 ** 20
COPY_SHARE = 0.6


@dataclasses.dataclass
class Row:
    layer: str
    batch: int
    direction: str
    bytes: int
    convc: float | None = None       # seconds, best layout
    convc_layout: str = ""
    torch: float | None = None
    torch_format: str = ""
    copy: float | None = None
    copy_kind: str = ""
    ratio: float | None = None       # PyTorch time / convc time, paired by round
    how: str = ""

    def gbps(self, seconds):
        return None if not seconds else self.bytes / seconds / 1e9

    @property
    def large(self) -> bool:
        return self.bytes >= LARGE_BYTES

    @property
    def copy_share(self):
        return None if not (self.convc and self.copy) else self.copy / self.convc


def spec(layer: str, batch: int, layout: str = "NCHW"):
    from ..pool_spec import PoolSpec

    pool, channels, size, kwargs = LAYERS[layer]
    shape = (batch, channels, size, size) if layout == "NCHW" else (batch, size, size, channels)
    build = {"max": PoolSpec.max_pool, "avg": PoolSpec.avg_pool,
             "adaptive_avg": PoolSpec.adaptive_avg_pool}[pool]
    return build(shape, **kwargs, layout=layout)


def kernel_op(pool_spec, direction: str) -> str:
    if direction == "forward":
        return "forward"
    return "grad_input_indices" if pool_spec.pool == "max" else "grad_input"


def convc_calls(layer, batch, direction, target=None):
    """{("convc", layout): callable} on 64-byte aligned operands, and how each was scheduled."""
    from ..check_pool import kernel_inputs, operands
    from ..kernel import aligned_copy, aligned_empty
    from ..kernel import compile as compile_kernel

    calls, hows = {}, {}
    for layout in ("NCHW", "NHWC"):
        s = spec(layer, batch, layout)
        op = kernel_op(s, direction)
        kernel = compile_kernel(s, op, target)
        data = operands(s, indices=False)
        if s.pool == "max":
            data["indices"] = compile_kernel(s, "forward_indices", target)(data["x"])[1]
        args = [aligned_copy(a) for a in kernel_inputs(s, op, data)]
        outs = [aligned_empty(shape, dtype) for shape, dtype in
                zip(kernel.arg_shapes[len(args):], kernel.arg_dtypes[len(args):])]
        function = kernel.function
        calls[("convc", layout)] = lambda f=function, a=(*args, *outs): f(*a)
        hows[layout] = kernel.how
    return calls, hows


def torch_calls(layer, batch, direction, threads) -> dict:
    """{("torch", format): callable}: the aten kernels autograd runs; {} without PyTorch."""
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    pool, channels, size, kwargs = LAYERS[layer]
    gen = torch.Generator().manual_seed(0)
    calls = {}
    for name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x = torch.rand((batch, channels, size, size), generator=gen).to(memory_format=fmt)
        forward, backward = _torch_pair(torch, pool, kwargs, x, gen, fmt)
        calls[("torch", name)] = _no_grad(torch, forward if direction == "forward" else backward)
    return calls


def _torch_pair(torch, pool, kwargs, x, gen, fmt):
    """(forward, backward) callables of PyTorch for one pooling on x."""
    F, aten = torch.nn.functional, torch.ops.aten
    if pool == "adaptive_avg":
        out = kwargs["output_size"]
        dy = torch.rand(F.adaptive_avg_pool2d(x, out).shape, generator=gen).to(memory_format=fmt)
        return (lambda: F.adaptive_avg_pool2d(x, out),
                lambda: aten._adaptive_avg_pool2d_backward(dy, x))
    k, s, p = kwargs["kernel_size"], kwargs["stride"], kwargs.get("padding", 0)
    if pool == "max":
        y, indices = F.max_pool2d(x, k, s, p, return_indices=True)
        dy = torch.rand(y.shape, generator=gen).to(memory_format=fmt)
        return (lambda: F.max_pool2d(x, k, s, p),
                lambda: aten.max_pool2d_with_indices_backward(dy, x, [k, k], [s, s], [p, p],
                                                              [1, 1], False, indices))
    dy = torch.rand(F.avg_pool2d(x, k, s, p).shape, generator=gen).to(memory_format=fmt)
    return (lambda: F.avg_pool2d(x, k, s, p),
            lambda: aten.avg_pool2d_backward(dy, x, [k, k], [s, s], [p, p], False, True, None))


def _no_grad(torch, fn):
    def call():
        with torch.no_grad():
            return fn()
    return call


def copy_calls(nbytes: int, threads: int, target=None) -> dict:
    """{("copy", kind): callable}: a plain copy moving `nbytes` (half read, half written), three
    ways: NumPy's copyto (glibc memcpy, one thread), a TVM kernel on `threads` threads of the
    pool convc's kernels run on (contiguous halves, 64-byte vectors: what a copy kernel compiled
    like convc's does at best) and, with PyTorch, Tensor.copy_ on `threads` threads. The table
    shows the fastest: the strictest yardstick."""
    from ..kernel import aligned_empty

    count = max(1, nbytes // 8)  # float32 elements per side
    src, dst = aligned_empty((count,), "float32"), aligned_empty((count,), "float32")
    src[...] = 1.0
    calls = {("copy", "numpy"): lambda: np.copyto(dst, src)}
    parallel = _parallel_copy(count, threads, target)
    calls[("copy", f"tvm x{threads}")] = lambda: parallel(src, dst)
    try:
        import torch
    except ImportError:
        return calls
    torch.set_num_threads(threads)
    tsrc, tdst = torch.ones(count), torch.empty(count)
    calls[("copy", "torch")] = lambda: tdst.copy_(tsrc)
    return calls


def _parallel_copy(count: int, threads: int, target):
    """dst[:] = src[:] as a TVM kernel: `threads` contiguous chunks in parallel, each a loop of
    vectors of the target's width (a scalar tail where they do not divide)."""
    import tvm
    from tvm import te

    from ..target import info, resolved

    target = resolved(target)
    lanes = info(target).lanes("float32")
    src = te.placeholder((count,), "float32", name="src")
    dst = te.compute((count,), lambda i: src[i], name="dst")
    sch = tvm.s_tir.Schedule(te.create_prim_func([src, dst]))
    (i,) = sch.get_loops(sch.get_sblock("dst"))
    chunk = -(-count // threads)
    if count % (threads * lanes) == 0:
        outer, inner, vector = sch.split(i, [threads, None, lanes])
        sch.vectorize(vector)
    else:
        outer, inner = sch.split(i, [threads, chunk])
    sch.parallel(outer)
    return tvm.compile(sch.mod, target=target)["main"]


def run(layers=None, batches=BATCHES, directions=DIRECTIONS, repeat=7, target=None,
        threads=None, stat="median", progress=None) -> list:
    """Time every (layer, batch, direction), all contenders side by side; -> list of Row."""
    from ..target import info, resolved

    target = resolved(target)
    threads = threads or info(target).num_cores
    stat_fn = {"median": statistics.median, "min": min}[stat]
    rows = []
    for layer in layers or list(LAYERS):
        for batch in batches:
            for direction in directions:
                s = spec(layer, batch)
                row = Row(layer, batch, direction, s.bytes(kernel_op(s, direction)))
                calls, hows = convc_calls(layer, batch, direction, target)
                calls.update(torch_calls(layer, batch, direction, threads))
                calls.update(copy_calls(row.bytes, threads, target))
                batches_ = time_side_by_side(calls, repeat)
                row.ratio = paired_ratio(batches_, [k for k in calls if k[0] == "torch"],
                                         [k for k in calls if k[0] == "convc"], stat_fn)
                best = fastest({name: stat_fn(samples) for name, samples in batches_.items()})
                row.convc, row.convc_layout = best["convc"]
                row.how = hows[row.convc_layout]
                row.torch, row.torch_format = best.get("torch", (None, ""))
                row.copy, row.copy_kind = best["copy"]
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def table(rows) -> str:
    cols = ["layer", "batch", "direction", "MB", "convc us", "layout", "PyTorch us", "format",
            "ratio", "convc GB/s", "PyTorch GB/s", "copy GB/s", "convc / copy"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.layer, str(r.batch), r.direction, f"{r.bytes / 2 ** 20:.1f}",
                 _fmt(r.convc and r.convc * 1e6, "{:.0f}"), r.convc_layout,
                 _fmt(r.torch and r.torch * 1e6, "{:.0f}"), r.torch_format or "-",
                 _fmt(r.ratio, "{:.2f}"), _fmt(r.gbps(r.convc)), _fmt(r.gbps(r.torch)),
                 _fmt(r.gbps(r.copy)), _fmt(r.copy_share and 100 * r.copy_share, "{:.0f}%")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows) -> str:
    """The issue's targets on these rows: geo-mean ratio >= 1 per direction; >= 60 % of the
    copy's bandwidth on the large workloads."""
    from . import geomean

    lines = []
    for direction in DIRECTIONS:
        rated = [r for r in rows if r.direction == direction and r.ratio]
        if rated:
            g = geomean([r.ratio for r in rated])
            worst = min(rated, key=lambda r: r.ratio)
            lines.append(f"{direction:8s} vs PyTorch: geo-mean {g:.2f} "
                         f"({'reached' if g >= 1.0 else 'NOT reached'} >= 1.0); lowest "
                         f"{worst.ratio:.2f} on {worst.layer} batch {worst.batch}")
    large = [r for r in rows if r.large and r.copy_share is not None]
    if large:
        below = [r for r in large if r.copy_share < COPY_SHARE]
        lines.append(f"large workloads (>= {LARGE_BYTES // 2 ** 20} MB): {len(large) - len(below)} "
                     f"of {len(large)} at >= {COPY_SHARE:.0%} of the copy's bandwidth "
                     f"({'reached' if not below else 'NOT reached'})"
                     + ("; below: " + ", ".join(f"{r.layer} b{r.batch} {r.direction} "
                                                f"{r.copy_share:.0%}" for r in below)
                        if below else ""))
    return "\n".join(lines)


def main(target, repeat: int, threads: int, stat: str = "median", layers=None) -> int:
    """What `convc bench --pool` prints: the table, then the targets."""
    import datetime

    try:
        import torch
        peer = f"PyTorch {torch.__version__}"
    except ImportError:
        peer = "PyTorch not installed"
    print(f"convc bench --pool  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: LLVM mcpu {target.info.arch}, {target.info.num_cores} cores; {peer}; "
          f"{threads} thread(s) each; {stat} of {repeat} paired rounds")
    rows = run(layers=layers, repeat=repeat, target=target, threads=threads, stat=stat,
               progress=lambda r: print(f"  {r.layer:16s} batch {r.batch} {r.direction:8s} "
                                        f"ratio {r.ratio or 0:.2f}", flush=True))
    print()
    print(table(rows))
    print()
    print(summary(rows))
    return 0
