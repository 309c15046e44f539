"""`convc bench --transpose`: convc's transposed convolution beside PyTorch's F.conv_transpose2d
on decoder layers (U-Net's 2x2 stride-2 up-convolutions, DCGAN's 4x4 stride-2 generator layers),
batch 1 and 8, paired rounds as in convc.bench.

convc runs in NCHW and NHWC (weights (in, out, kh, kw) and (kh, kw, out, in)), PyTorch in
contiguous and channels_last; each round compares the best of each, and the ratio (PyTorch time /
convc time) is the median over rounds. --ops adds the adjoints (PyTorch: the aten backward of
conv_transpose2d, one gradient at a time).
"""

from __future__ import annotations

import dataclasses
import functools

from . import STATS, geomean, paired_ratio, time_side_by_side
from .zoo import schedule_name

# name -> (N, C_in, H, W, C_out, kernel, stride, padding, output_padding)
DECODER_LAYERS = {
    "unet_up_512": (1, 512, 28, 28, 256, 2, 2, 0, 0),
    "unet_up_256": (1, 256, 56, 56, 128, 2, 2, 0, 0),
    "unet_up_128": (1, 128, 112, 112, 64, 2, 2, 0, 0),
    "dcgan_512": (1, 512, 4, 4, 256, 4, 2, 1, 0),
    "dcgan_256": (1, 256, 8, 8, 128, 4, 2, 1, 0),
    "dcgan_128": (1, 128, 16, 16, 64, 4, 2, 1, 0),
}
DECODER_LAYERS.update({f"{name}_b8": (8, *rest) for name, (_, *rest) in
                       list(DECODER_LAYERS.items())})
OPS = ("conv_transpose", "conv_transpose_grad_input", "conv_transpose_grad_weight")
LAYOUTS = ("NCHW", "NHWC")


@dataclasses.dataclass
class Row:
    layer: str
    op: str
    flops: int
    convc: float | None = None
    convc_layout: str = ""
    how: str = ""
    torch: float | None = None
    torch_format: str = ""
    ratio: float | None = None

    def gflops(self, seconds):
        return None if not seconds else self.flops / seconds / 1e9


def layer_spec(name, layout="NCHW"):
    from ..transpose import from_shapes

    n, c, h, w, k, r, s, p, op = DECODER_LAYERS[name]
    if layout == "NCHW":
        return from_shapes((n, c, h, w), (c, k, r, r), s, p, op, layout=layout)
    return from_shapes((n, h, w, c), (r, r, k, c), s, p, op, layout=layout)


def convc_calls(name, op, layouts, target=None):
    from ..check import kernel_inputs, transpose_operands
    from ..kernel import aligned_copy, aligned_empty
    from ..kernel import compile as compile_kernel

    calls, hows = {}, {}
    for layout in layouts:
        spec = layer_spec(name, layout)
        kernel = compile_kernel(spec, op, target)
        hows[layout] = schedule_name(kernel)
        args = [aligned_copy(a) for a in kernel_inputs(spec, op, transpose_operands(spec))]
        out = aligned_empty(kernel.arg_shapes[-1], spec.dtype)
        calls[("convc", layout)] = functools.partial(kernel, *args, out=out)
    return calls, hows


def torch_calls(name, op, threads):
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    n, c, h, w, k, r, s, p, op_pad = DECODER_LAYERS[name]
    gen = torch.Generator().manual_seed(0)
    oh, ow = (h - 1) * s - 2 * p + r + op_pad, (w - 1) * s - 2 * p + r + op_pad
    calls = {}
    for label, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x = torch.rand((n, c, h, w), generator=gen).to(memory_format=fmt)
        wt = torch.rand((c, k, r, r), generator=gen).to(memory_format=fmt)
        dy = torch.rand((n, k, oh, ow), generator=gen).to(memory_format=fmt)
        if op == "conv_transpose":
            def fn(x=x, wt=wt):
                return torch.nn.functional.conv_transpose2d(x, wt, None, s, p, op_pad)
        else:
            mask = [op == "conv_transpose_grad_input", op == "conv_transpose_grad_weight", False]

            def fn(x=x, wt=wt, dy=dy, mask=mask):
                return torch.ops.aten.convolution_backward(
                    dy, x, wt, None, [s, s], [p, p], [1, 1], True, [op_pad, op_pad], 1, mask)

        def call(fn=fn):
            with torch.no_grad():
                return fn()

        calls[("torch", label)] = call
    return calls


def run(layers=None, ops=("conv_transpose",), layouts=LAYOUTS, repeat=10, target=None,
        threads=None, stat="median", progress=None):
    from ..target import info, resolved

    target = resolved(target)
    threads = threads or info(target).num_cores
    rows = []
    for name in layers or list(DECODER_LAYERS):
        for op in ops:
            row = Row(name, op, layer_spec(name).flops)
            calls, hows = convc_calls(name, op, layouts, target)
            calls.update(torch_calls(name, op, threads))
            batches = time_side_by_side(calls, repeat)
            times = {key: STATS[stat](samples) for key, samples in batches.items()}
            ours = [key for key in calls if key[0] == "convc"]
            row.ratio = paired_ratio(batches, [key for key in calls if key[0] == "torch"], ours,
                                     STATS[stat])
            for (who, layout), seconds in sorted(times.items(), key=lambda item: item[1]):
                if who == "convc" and row.convc is None:
                    row.convc, row.convc_layout, row.how = seconds, layout, hows[layout]
                elif who == "torch" and row.torch is None:
                    row.torch, row.torch_format = seconds, layout
            rows.append(row)
            if progress:
                progress(row)
    return rows


def _fmt(value, spec="{:.1f}"):
    return "-" if value is None else spec.format(value)


def table(rows, peak=None) -> str:
    cols = ["layer", "op", "convc GFLOP/s", "layout", "schedule", "PyTorch GFLOP/s", "format",
            "ratio", "% peak"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        convc = r.gflops(r.convc)
        lines.append("| " + " | ".join([
            r.layer, r.op, _fmt(convc), r.convc_layout, r.how or "-", _fmt(r.gflops(r.torch)),
            r.torch_format if r.torch else "-", _fmt(r.ratio, "{:.2f}"),
            _fmt(convc and peak and 100 * convc / peak, "{:.0f}%")]) + " |")
    return "\n".join(lines)


def summary(rows) -> str:
    lines = []
    for op in OPS:
        rated = [r for r in rows if r.op == op and r.ratio]
        if not rated:
            continue
        g = geomean([r.ratio for r in rated])
        worst = min(rated, key=lambda r: r.ratio)
        verdict = "reached" if g >= 1.0 else "NOT reached"
        lines.append(f"{op} vs PyTorch on {len(rated)} decoder layers: geo-mean {g:.2f} "
                     f"({verdict} >= 1.0); lowest {worst.ratio:.2f} on {worst.layer}")
    return "\n".join(lines)
