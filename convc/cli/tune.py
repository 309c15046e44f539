"""`convc tune`: auto-tune a convolution's kernels with MetaSchedule (XGBoost cost model).

    convc tune --op conv2d --input 1,64,56,56 --weight 64,64,3,3 --padding 1 --trials 64
    convc tune --layers all --layout NHWC --trials 200 --log-dir tuning_logs     # bench suite

The kernels of each layer are tuned as one task set. --space hand (default) measures the
hand-written rule's alternatives (channel vectors, tile widths, blocking, reduction chunks), best
predicted by the XGBoost cost model first; --space generic runs MetaSchedule's own space under its
evolutionary search. The hand-written schedule is measured in the same run and a record is used
only where it is faster.  Records go to --log-dir (default
$CONVC_TUNING_LOGS or ~/.local/share/convc/tuning_logs), under target/TVM version/workload;
`convc compile` and the Python API apply them.  Running the same command again continues an
interrupted run; a larger --trials tunes further.
"""

from __future__ import annotations

import argparse
import sys

from .compile import (POOL, RANK, add_padding_mode, add_pool_arguments, ints, padding, pool_spec,
                      shape, target_of)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "tune", help="auto-tune kernels (MetaSchedule + XGBoost) into a tuning log directory",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    layer = p.add_argument_group("the convolution or pooling (as for `convc compile`), or --layers")
    layer.add_argument("--op", choices=sorted(RANK) + sorted(POOL),
                       help="convolution or pooling, and its rank")
    layer.add_argument("--input", metavar="SHAPE", help="batched input shape, e.g. 1,64,56,56")
    layer.add_argument("--weight", metavar="SHAPE", help="weight shape, e.g. 64,64,3,3")
    layer.add_argument("--bias", action="store_true", help="forward adds a bias")
    layer.add_argument("--stride", default=None,
                       help="an int or a comma list (default: 1; poolings: the kernel size)")
    layer.add_argument("--padding", default="0",
                       help="an int, a comma list, before:after pairs, 'same' or 'valid'")
    layer.add_argument("--dilation", default="1", help="an int or a comma list (default: %(default)s)")
    layer.add_argument("--groups", default="1", help="(default: %(default)s)")
    add_padding_mode(layer)
    layer.add_argument("--layout", default=None,
                       help="NCW/NCHW/NCDHW (default) or NWC/NHWC/NDHWC; the weight layout follows")
    layer.add_argument("--dtype", default="float32", help="float32 (default), float64 or float16")
    layer.add_argument("--layers", default=None, metavar="NAMES",
                       help="tune layers of the benchmark suite instead: a comma list or 'all'")
    add_pool_arguments(p)
    p.add_argument("--kernels", default=None,
                   help="comma list of forward, grad_input, grad_weight (default: all three); "
                        "for --op conv_transpose*d of conv_transpose, conv_transpose_grad_input, "
                        "conv_transpose_grad_weight; a pooling: all of its kernels")
    p.add_argument("--output-padding", default=None, help="--op conv_transpose*d only (default: 0)")
    p.add_argument("--trials", type=int, default=64,
                   help="measured candidates per kernel, records already logged included "
                        "(default: %(default)s)")
    p.add_argument("--log-dir", default=None, metavar="DIR",
                   help="where records go (default: $CONVC_TUNING_LOGS or "
                        "~/.local/share/convc/tuning_logs)")
    p.add_argument("--target", default=None, help="llvm (this CPU, default), cuda, or a JSON target")
    p.add_argument("--arch", default=None, help="a CUDA sm_XX, or an LLVM CPU name for llvm")
    p.add_argument("--seed", type=int, default=None, help="seed of the search")
    p.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT",
                   help="measure on RPC servers registered at this tracker")
    p.add_argument("--rpc-key", default=None, metavar="KEY", help="the servers' key at the tracker")
    p.add_argument("--space", default="hand", choices=["hand", "generic"],
                   help="what is searched: the hand-written rule's alternatives (default) or "
                        "MetaSchedule's generic space")
    p.add_argument("--peer", default=None, choices=["topi"],
                   help="tune TVM's own topi convolution for the same layers instead (the "
                        "benchmark's second peer; generic space; records beside convc's)")
    p.add_argument("--trials-per-iter", type=int, default=None, metavar="N",
                   help="candidates measured per search round (default: 8 for the hand space, "
                        "32 for the generic one)")
    p.add_argument("--keep", type=int, default=None, metavar="N",
                   help="afterwards keep only the N fastest records per kernel (for shipped logs)")
    p.add_argument("--quiet", action="store_true", help="no progress line, only the summary")
    return p


def specs_of(args) -> list:
    """The ConvSpecs the flags describe: one layer, or --layers of the benchmark suite."""
    from convc.spec import ConvSpec

    if args.layers:
        if args.op or args.input or args.weight:
            raise ValueError("--layers replaces --op/--input/--weight: give one or the other")
        return _suite(args.layers, args.layout, args.dtype)
    if args.op in POOL:
        if not args.input:
            raise ValueError("--input missing: describe the pooling")
        return [pool_spec(args)]
    missing = [f"--{name}" for name in ("op", "input", "weight") if not getattr(args, name)]
    if missing:
        raise ValueError(f"{', '.join(missing)} missing: describe the convolution, or give --layers")
    rank = RANK[args.op]
    if args.op.startswith("conv_transpose"):
        from convc import transpose

        return [transpose.from_shapes(
            shape(args.input, "input", rank, args.op), shape(args.weight, "weight", rank, args.op),
            ints(args.stride or "1", "stride"), padding(args.padding),
            ints(args.output_padding or "0", "output-padding"), ints(args.groups, "groups"),
            ints(args.dilation, "dilation"), layout=args.layout, dtype=args.dtype, bias=args.bias,
            padding_mode=args.padding_mode)]
    if args.output_padding is not None:
        raise ValueError(f"--output-padding applies to conv_transpose1d/2d/3d, not --op {args.op}")
    return [ConvSpec.from_shapes(
        shape(args.input, "input", rank, args.op), shape(args.weight, "weight", rank, args.op),
        ints(args.stride or "1", "stride"), padding(args.padding), ints(args.dilation, "dilation"),
        ints(args.groups, "groups"), layout=args.layout, dtype=args.dtype, bias=args.bias,
        padding_mode=args.padding_mode)]


def _suite(names: str, layout, dtype) -> list:
    from convc.bench import LAYERS
    from convc.spec import ConvSpec

    wanted = list(LAYERS) if names.strip() == "all" else [n.strip() for n in names.split(",")]
    unknown = [n for n in wanted if n not in LAYERS]
    if unknown:
        raise ValueError(f"--layers: {', '.join(unknown)} not in the suite ({', '.join(LAYERS)})")
    layout = (layout or "NCHW").upper()
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"--layout={layout!r}: the suite is 2-D, expected NCHW or NHWC")
    specs = []
    for name in wanted:
        n, c, h, w, k, r, s, p, g = LAYERS[name]
        if layout == "NCHW":
            x, wt = (n, c, h, w), (k, c // g, r, r)
        else:
            x, wt = (n, h, w, c), (r, r, c // g, k)
        specs.append(ConvSpec.from_shapes(x, wt, s, p, 1, g, layout=layout, dtype=dtype))
    return specs


def run(args) -> int:
    import convc.tuning as tuning
    from convc.target import resolve

    from convc.spec import OPS, TRANSPOSE_OPS

    specs = specs_of(args)
    transposed = bool(args.op and args.op.startswith("conv_transpose"))
    if args.kernels is None:  # None: all the spec has (a pooling's own kernels)
        kernels = list(TRANSPOSE_OPS) if transposed else None
    else:
        kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    target = resolve(target_of(args.target, args.arch))
    try:
        if args.peer == "topi":
            from convc.bench import topi_peer

            reports = topi_peer.tune(specs, kernels or OPS, trials=args.trials,
                                     log_dir=args.log_dir, target=target, quiet=args.quiet,
                                     seed=args.seed, keep=args.keep)
        else:
            reports = tuning.tune(
                specs, kernels, target=target, trials=args.trials,
                log_dir=args.log_dir, seed=args.seed, quiet=args.quiet,
                rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key,
                trials_per_iter=args.trials_per_iter, keep=args.keep, space=args.space)
    except (tuning.TuneError, tuning.RecordError) as err:
        print(f"convc tune: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nconvc tune: interrupted; finished records are kept, run the same command "
              "again to continue", file=sys.stderr)
        return 130
    for report in reports:
        _summary(report)
    return 0


def _summary(report) -> None:
    print(f"{report.workload}: {report.trials} trials in {report.tuning_s:.0f} s "
          f"({report.trials_per_minute:.1f}/min); records in {report.path}")
    width = max([12] + [len(k.name) for k in report.kernels.values()])
    print(f"  {'kernel':<{width}} {'trials':>6} {'hand-written':>13} {'tuned':>13}  {'uses':<12} "
          "90% at")
    for k in report.kernels.values():
        reached = (f"{k.reached_90[1]} trials, {k.reached_90[0]:.0f} s" if k.reached_90
                   else "-")
        print(f"  {k.name:<{width}} {k.trials_total:>6} {_gflops(k, k.hand_written_us):>13} "
              f"{_gflops(k, k.tuned_us):>13}  {k.verdict or '-':<12} {reached}")
    for a in report.algorithms.values():
        tiles = ", ".join(f"m={m} {_us(us)}" for m, us in a.winograd_us.items())
        uses = "direct" if a.choice == "direct" else f"winograd m={a.m}" if a.choice else "-"
        print(f"  {a.op} algorithm: direct {_us(a.direct_us)}, winograd {tiles}: uses {uses}")


def _us(us) -> str:
    return "-" if us is None else f"{us:.1f} us"


def _gflops(kernel, us) -> str:
    value = kernel.gflops(us)
    return "-" if value is None else f"{value:.1f} GFLOP/s"
