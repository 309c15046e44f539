"""TVM's own convolution (topi), tuned by MetaSchedule: the benchmark's second peer.

convc's claim is that its declarations and schedules beat what TVM gives a user out of the box
when both are tuned. The peer is topi's compute, tuned with MetaSchedule's generic space and the
same driver, builder and runner as convc (``convc tune --peer topi``), records kept beside convc's
under the workload ``topi-<layer key>``. Which topi op stands for each kernel (2-D, NCHW; topi has
no NHWC transposed convolution and no weight gradient):

    forward      topi.nn.conv2d_nchw, group_conv2d_nchw, depthwise_conv2d_nchw
    grad_input   topi.nn.conv2d_transpose_nchw / group_conv2d_transpose_nchw (dilation 1), with
                 the output padding that recovers the input size
    grad_weight  topi.nn.conv2d_nchw of the input and the output gradient with batch and channels
                 swapped (stride and dilation trading places), cropped to the kernel: the usual
                 way to get the weight gradient from a forward convolution (groups 1)

Layers topi cannot express this way (NHWC, dilation in grad_input, groups in grad_weight) have no
peer ("-" in the benchmark).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, topi

from ..records import (RecordStore, best_record, canonical_module, layer_path, replay,
                       search_roots, user_log_dir)
from ..target import resolved

WORKLOAD_PREFIX = "topi-"


def declare(spec, op):
    """The topi PrimFunc standing for convc's ``op`` on ``spec`` (arguments: convc's kernel
    inputs, then the output), or None where topi has no such op."""
    if (spec.ndim != 2 or spec.layout != "NCHW" or spec.bias or spec.fused
            or spec.padding_mode != "zeros"):  # topi has zero padding and no epilogue
        return None
    stride, dilation, groups = spec.stride, spec.dilation, spec.groups
    pad = (*spec.pad_before, *spec.pad_after)  # top, left, bottom, right
    x = te.placeholder(spec.input_shape, spec.dtype, name="x")
    w = te.placeholder(spec.weight_shape, spec.dtype, name="w")
    dy = te.placeholder(spec.output_shape, spec.dtype, name="dy")
    if op == "forward":
        if groups == 1:
            out = topi.nn.conv2d_nchw(x, w, stride, pad, dilation, spec.dtype)
        elif groups == spec.in_channels == spec.out_channels:
            depthwise = topi.reshape(w, (spec.in_channels, 1, *spec.kernel))
            out = topi.nn.depthwise_conv2d_nchw(x, depthwise, stride, pad, dilation, spec.dtype)
        else:
            out = topi.nn.group_conv2d_nchw(x, w, stride, pad, dilation, groups, spec.dtype)
        return te.create_prim_func([x, w, out])
    if op == "grad_input":
        if any(d != 1 for d in dilation):
            return None
        natural = [(o - 1) * s - pb - pa + k for o, s, pb, pa, k in zip(
            spec.out_size, stride, spec.pad_before, spec.pad_after, spec.kernel)]
        extra = [i - n for i, n in zip(spec.in_size, natural)]
        if any(e < 0 or e >= s for e, s in zip(extra, stride)):
            return None
        if groups == 1:
            out = topi.nn.conv2d_transpose_nchw(dy, w, stride, pad, spec.dtype, extra)
        else:
            out = topi.nn.group_conv2d_transpose_nchw(dy, w, stride, pad, spec.dtype, extra,
                                                      groups)
        return te.create_prim_func([dy, w, out])
    if op == "grad_weight":
        if groups != 1:
            return None
        x_t = topi.transpose(x, (1, 0, 2, 3))      # (C, N, H, W): batch as the channels
        dy_t = topi.transpose(dy, (1, 0, 2, 3))    # (K, N, OH, OW): the "filter"
        full = topi.nn.conv2d_nchw(x_t, dy_t, dilation, pad, stride, spec.dtype)  # (C, K, *, *)
        if any(int(e) < k for e, k in zip(full.shape[2:], spec.kernel)):
            return None
        out = te.compute(spec.weight_shape, lambda k, c, i, j: full[c, k, i, j], name="dw")
        return te.create_prim_func([x, dy, out])
    raise ValueError(f"op={op!r}: expected forward, grad_input or grad_weight")


def tune(specs, ops, *, trials: int, log_dir=None, target=None, quiet=False, seed=None,
         keep=None, stream=None):
    """Tune topi's kernels for ``specs`` (MetaSchedule's generic space, evolutionary search)."""
    from ..tuning import driver  # noqa: PLC0415 - MetaSchedule: only when tuning starts

    target = resolved(target)
    log_dir = log_dir if log_dir is not None else user_log_dir()
    reports = []
    with driver.Session(target) as session:
        for spec in specs:
            kernels = [driver.Kernel(op, func, spec.flops, None)
                       for op in ops if (func := declare(spec, op)) is not None]
            if not kernels:
                continue
            reports.append(driver.tune_workload(
                kernels, target, workload=WORKLOAD_PREFIX + spec.key, spec=spec, log_dir=log_dir,
                session=session, trials=trials, seed=seed, quiet=quiet, stream=stream,
                space="generic", trials_per_iter=driver.DEFAULT_TRIALS_PER_ITER["generic"],
                population=driver.DEFAULT_POPULATION, keep=keep))
    return reports


def best_module(spec, op, target=None, log_dir=None):
    """(the tuned topi module, trials behind it) from the first log directory holding records
    for it, or (None, 0)."""
    func = declare(spec, op)
    if func is None:
        return None, 0
    target = resolved(target)
    mod = canonical_module(func)
    for root in search_roots(log_dir):
        path = layer_path(root, target, WORKLOAD_PREFIX + spec.key)
        if not path.exists():
            continue
        store = RecordStore(path)
        record = best_record(store.database(), mod)
        if record is not None:
            trials = int(store.kernel(op).get("trials") or 0)
            return tvm.compile(replay(mod, record).mod, target=target), trials
    return None, 0


def call(spec, op, library, data: dict):
    """A no-argument callable running ``library`` on ``data`` (convc.check.operands)."""
    names = {"forward": ("x", "w"), "grad_input": ("dy", "w"), "grad_weight": ("x", "dy")}[op]
    shape = {"forward": spec.output_shape, "grad_input": spec.input_shape,
             "grad_weight": spec.weight_shape}[op]
    args = [tvm.runtime.tensor(np.ascontiguousarray(data[n])) for n in names]
    out = tvm.runtime.tensor(np.zeros(shape, spec.dtype))
    main = library["main"]
    return lambda: main(*args, out), out
