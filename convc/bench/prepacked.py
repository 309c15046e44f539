"""convc bench --prepacked: packed calls against unpacked ones, through exported libraries.

Per layer, op (forward, grad_input) and layout, one library exported with prepacked=True
(convc.export) and loaded back; its kernel runs with the weight (`plain`: the weight stage or
filter transform inside the call) and with a pack made once by "<op>_prepack" (`packed`), in the
same paired rounds as PyTorch's NCHW and channels_last calls (time_side_by_side). Ratios are
paired by round: packed / plain speed-up per layout, and PyTorch / convc for the best format of
each side, plain and packed.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from . import as_layer, layer_spec, paired_ratio, time_side_by_side, torch_calls


def _library_calls(spec, op, target, directory: Path) -> tuple[dict, str]:
    """{"plain": call, "packed": call} of `op` through an exported library, and the pack's kind."""
    from ..check import kernel_inputs, operands
    from ..export import export_library, load
    from ..kernel import aligned_copy, aligned_empty

    # one file name per library: dlopen hands back an already loaded library for a path it saw
    path = export_library(spec, directory / f"{spec.key}-{op}.so", ops=(op,), target=target,
                          prepacked=True)
    kernel = load(path)[op]
    args = [aligned_copy(a) for a in kernel_inputs(spec, op, operands(spec))]
    at = kernel.arg_names.index("w")
    packed = kernel.prepack(args[at])
    out = aligned_empty(kernel.arg_shapes[-1], spec.dtype)
    packed_args = [packed if i == at else a for i, a in enumerate(args)]
    return ({"plain": functools.partial(kernel, *args, out=out),
             "packed": functools.partial(kernel, *packed_args, out=out)}, packed.kind)


def prepacked_costs(layers, ops=("forward", "grad_input"), layouts=("NCHW", "NHWC"), repeat=7,
                    target=None, threads=None, progress=None) -> list[dict]:
    """[{layer, op, gflops: {contender: GFLOP/s}, kinds: {layout: pack kind}, speedup: {layout:
    plain time / packed time}, torch_plain, torch_packed: best PyTorch time / best convc time}]"""
    from ..target import info, resolve

    target = resolve(target)
    threads = threads or info(target).num_cores
    rows = []
    with tempfile.TemporaryDirectory(prefix="convc-prepacked-") as work:
        for name in layers:
            for op in ops:
                calls, kinds = {}, {}
                for layout in layouts:
                    spec = layer_spec(name, layout)
                    made, kinds[layout] = _library_calls(spec, op, target, Path(work))
                    calls.update({f"{kind}-{layout}": fn for kind, fn in made.items()})
                rivals = {f"torch-{fmt}": fn for (_, fmt), fn in
                          torch_calls(name, op, threads).items()}
                calls.update(rivals)
                batches = time_side_by_side(calls, repeat)
                flops = as_layer(name).spec().flops
                gflops = {k: flops / sorted(v)[len(v) // 2] / 1e9 for k, v in batches.items()}
                plain = [f"plain-{l}" for l in layouts]
                packed = [f"packed-{l}" for l in layouts]
                row = {"layer": name, "op": op, "gflops": gflops, "kinds": kinds,
                       "speedup": {l: paired_ratio(batches, [f"plain-{l}"], [f"packed-{l}"])
                                   for l in layouts},
                       "torch_plain": paired_ratio(batches, list(rivals), plain) if rivals else None,
                       "torch_packed": paired_ratio(batches, list(rivals), packed) if rivals
                       else None}
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def _f(value, spec="{:.2f}"):
    return "-" if value is None else spec.format(value)


def prepacked_table(rows, layouts=("NCHW", "NHWC")) -> str:
    head = " ".join(f"{'plain ' + l:>11s} {'packed ' + l:>12s} {'x':>5s}" for l in layouts)
    lines = [f"{'layer':10s} {'op':11s} {head} {'torch best':>10s} {'torch/plain':>11s} "
             f"{'torch/packed':>12s}  packs"]
    for r in rows:
        g = r["gflops"]
        cells = " ".join(f"{_f(g.get(f'plain-{l}'), '{:.0f}'):>11s} "
                         f"{_f(g.get(f'packed-{l}'), '{:.0f}'):>12s} {_f(r['speedup'][l]):>5s}"
                         for l in layouts)
        torch_best = max((v for k, v in g.items() if k.startswith("torch")), default=None)
        lines.append(f"{str(r['layer']):10s} {r['op']:11s} {cells} {_f(torch_best, '{:.0f}'):>10s} "
                     f"{_f(r['torch_plain']):>11s} {_f(r['torch_packed']):>12s}  "
                     + ", ".join(f"{l} {k}" for l, k in r["kinds"].items()))
    lines.append("GFLOP/s (direct FLOPs / median time) through exported libraries; x: packed / "
                 "plain speed-up, paired by round; torch/...: best PyTorch format / best convc "
                 "layout, paired (> 1: convc faster)")
    return "\n".join(lines)
