"""Variants of one layer side by side: what a feature costs against the plain kernel.

    convc bench --padding-modes    grad_input (or --ops) with reflect / replicate / circular
                                   padding against the zeros mode, per layer and layout
    convc bench --fused            forward + BN (scale/shift) + ReLU, and + residual, against the
                                   plain convc forward; PyTorch's eval conv -> batch_norm ->
                                   (add ->) relu against the fused convc kernel

Every contender of one layer is timed in the same rounds (time_side_by_side) and each ratio is
paired by round (paired_ratio): > 1 means the variant is slower than plain (cost) or PyTorch is
slower than convc (speed-up).
"""

from __future__ import annotations

import dataclasses
import functools

from . import LAYERS, as_layer, geomean, layer_spec, paired_ratio, time_side_by_side

RING_MODES = ("reflect", "replicate", "circular")


def _call(spec, op, target):
    from ..check import kernel_inputs, operands
    from ..kernel import aligned_copy, aligned_empty
    from ..kernel import compile as compile_kernel

    kernel = compile_kernel(spec, op, target)
    args = [aligned_copy(a) for a in kernel_inputs(spec, op, operands(spec))]
    out = aligned_empty(kernel.arg_shapes[-1], spec.dtype)
    return functools.partial(kernel, *args, out=out)


def padding_mode_costs(layers=None, ops=("grad_input",), layouts=("NCHW", "NHWC"), repeat=7,
                       target=None, modes=RING_MODES, progress=None) -> list[dict]:
    """[{layer, op, layout, mode: cost}]: ring-padded kernel time / zeros-mode time, paired."""
    rows = []
    for name in layers or LAYERS:
        for op in ops:
            for layout in layouts:
                spec = layer_spec(name, layout)
                if not any(spec.pad_before + spec.pad_after):
                    continue  # no ring: every mode is the zeros mode
                calls = {"zeros": _call(spec, op, target)}
                for mode in modes:
                    calls[mode] = _call(dataclasses.replace(spec, padding_mode=mode), op, target)
                batches = time_side_by_side(calls, repeat)
                row = {"layer": name, "op": op, "layout": layout}
                row.update({mode: paired_ratio(batches, [mode], ["zeros"]) for mode in modes})
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def _torch_fused(torch, layer, spec, residual: bool):
    """PyTorch's eval conv -> batch_norm -> (+ residual) -> relu in the better memory format."""
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    calls = {}
    k = layer.k
    mean, var = torch.rand(k, generator=gen), torch.rand(k, generator=gen) + 0.5
    gamma, beta = torch.rand(k, generator=gen) + 0.5, torch.rand(k, generator=gen)
    for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x = torch.rand((layer.n, layer.c, layer.h, layer.w), generator=gen).to(memory_format=fmt)
        w = torch.rand((k, layer.c // layer.groups, *layer.kernel), generator=gen).to(
            memory_format=fmt)
        skip = torch.rand((layer.n, k, *spec.out_size), generator=gen).to(memory_format=fmt)

        def call(x=x, w=w, skip=skip):
            with torch.no_grad():
                y = F.batch_norm(F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation,
                                          layer.groups), mean, var, gamma, beta, False)
                return F.relu(y + skip if residual else y)

        calls[f"torch-{fmt_name}"] = call
    return calls


def fused_costs(layers=None, layouts=("NCHW", "NHWC"), repeat=7, target=None,
                progress=None) -> list[dict]:
    """[{layer, bn_relu: {layout: fused/plain}, bn_add_relu: {...}, torch_bn_relu: PyTorch /
    best convc fused, torch_bn_add_relu}] (torch_* None without PyTorch)."""
    try:
        import torch

        from ..target import info, resolve

        torch.set_num_threads(info(resolve(target)).num_cores)
    except ImportError:
        torch = None
    rows = []
    for name in layers or LAYERS:
        layer = as_layer(name)
        row = {"layer": name, "bn_relu": {}, "bn_add_relu": {}}
        for residual, key in ((False, "bn_relu"), (True, "bn_add_relu")):
            calls = {}
            for layout in layouts:
                spec = layer_spec(name, layout)
                calls[f"plain-{layout}"] = _call(spec, "forward", target)
                calls[f"fused-{layout}"] = _call(dataclasses.replace(
                    spec, scale_shift=True, residual=residual, activation="relu"), "forward",
                    target)
            if torch is not None:
                calls.update(_torch_fused(torch, layer, layer_spec(name), residual))
            batches = time_side_by_side(calls, repeat)
            for layout in layouts:
                row[key][layout] = paired_ratio(batches, [f"fused-{layout}"], [f"plain-{layout}"])
            rivals = [k for k in batches if k.startswith("torch")]
            row[f"torch_{key}"] = (paired_ratio(batches, rivals, [f"fused-{l}" for l in layouts])
                                   if rivals else None)
        rows.append(row)
        if progress:
            progress(row)
    return rows


def _f(value):
    return "-" if value is None else f"{value:.2f}"


def padding_table(rows, modes=RING_MODES) -> str:
    lines = [f"{'layer':12s} {'op':11s} {'layout':6s} " + " ".join(f"{m:>9s}" for m in modes)]
    for r in rows:
        lines.append(f"{str(r['layer']):12s} {r['op']:11s} {r['layout']:6s} "
                     + " ".join(f"{_f(r[m]):>9s}" for m in modes))
    worst = max((r[m] for r in rows for m in modes if r[m] is not None), default=None)
    lines.append(f"ring / zeros: geo-mean {_f(geomean([r[m] for r in rows for m in modes]))}, "
                 f"worst {_f(worst)} (target <= 1.1)")
    return "\n".join(lines)


def fused_table(rows) -> str:
    layouts = list(rows[0]["bn_relu"]) if rows else []
    head = " ".join(f"{'BN+ReLU ' + l:>13s}" for l in layouts) + " " + \
        " ".join(f"{'+add ' + l:>10s}" for l in layouts)
    lines = [f"{'layer':12s} {head} {'torch/BN+ReLU':>14s} {'torch/+add':>11s}"]
    for r in rows:
        lines.append(f"{str(r['layer']):12s} "
                     + " ".join(f"{_f(r['bn_relu'][l]):>13s}" for l in layouts) + " "
                     + " ".join(f"{_f(r['bn_add_relu'][l]):>10s}" for l in layouts)
                     + f" {_f(r['torch_bn_relu']):>14s} {_f(r['torch_bn_add_relu']):>11s}")
    for key, what in (("bn_relu", "BN+ReLU"), ("bn_add_relu", "BN+add+ReLU")):
        costs = [r[key][l] for r in rows for l in layouts]
        torch_ratio = [r[f"torch_{key}"] for r in rows if r[f"torch_{key}"] is not None]
        lines.append(f"{what}: fused / plain geo-mean {_f(geomean(costs))}, worst "
                     f"{_f(max((c for c in costs if c is not None), default=None))} (target <= 1.05); "
                     f"PyTorch / convc geo-mean {_f(geomean(torch_ratio) if torch_ratio else None)}"
                     " (target >= 1.2)")
    return "\n".join(lines)
