"""`convc bench`: convc's CPU kernels beside PyTorch (oneDNN) and NumPy im2col on the layer suite.

Prints one row per (layer, op): GFLOP/s of convc (best layout; "tuned" where a record beat the
hand-written schedule), PyTorch (best of NCHW and channels_last, same thread count, when torch is
installed), TVM's topi with its tuned record (`convc tune --peer topi`) and NumPy im2col + GEMM;
the ratios PyTorch time / convc time and topi time / convc time, and convc's share of the
measured FMA peak; then the issues' targets checked on the run.
"""

from __future__ import annotations

import datetime
import platform
import time


def add_parser(subparsers):
    from convc.bench import LAYERS, OPS

    p = subparsers.add_parser("bench", help="time convc against PyTorch and NumPy on a layer suite",
                              description=__doc__)
    p.add_argument("--ops", default=",".join(OPS), help="comma list of ops (default: all three)")
    p.add_argument("--layers", default=",".join(LAYERS),
                   help=f"comma list of layers (default: all): {', '.join(LAYERS)}")
    p.add_argument("--layouts", default="NCHW,NHWC",
                   help="convc layouts to try, the best is reported (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=10, help="timed batches per kernel, median taken")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for convc and PyTorch alike (default: the target's cores)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic over the timed batches (default: %(default)s; 'min' shows what "
                        "each library does when a shared machine leaves it alone)")
    p.add_argument("--peak", type=float, default=None,
                   help="fp32 peak in GFLOP/s for '%% peak' (default: measured here)")
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy im2col baseline")
    p.add_argument("--no-topi", action="store_true",
                   help="skip TVM's topi peer (run only where `convc tune --peer topi` left records)")
    p.add_argument("--plot", default=None, metavar="PNG", help="bar chart per op (needs matplotlib)")
    p.add_argument("--target", default=None, help="llvm target (default: this CPU)")
    p.add_argument("--overhead", action="store_true",
                   help="instead: what a call costs beyond the compiled function (direct call, "
                        "Kernel, cached convc.conv2d with NumPy and torch, PyTorch's F.conv2d) on "
                        "a tiny conv, the SE 1x1 convs on 1x1 inputs and MobileNetV2's depthwise")
    p.add_argument("--train", action="store_true",
                   help="instead: convc inside PyTorch on torchvision's ResNet-18 and MobileNetV2 "
                        "(batch 8, 112x112): one training step with convc's layers "
                        "(convc.torch.convert) vs PyTorch's, one inference of the fused model "
                        "(convc.torch.fuse) vs PyTorch eager; needs torch and torchvision "
                        "(--models picks models)")
    p.add_argument("--processes", type=int, default=None,
                   help="--train: timing processes a side, started alternately, each running one "
                        "side's model alone as a user would (default: 6); 0 = both models in this "
                        "process, --repeat paired rounds (convc/bench/train.py says why)")
    p.add_argument("--steps", type=int, default=None,
                   help="--train with processes: timed calls a process (default: 15)")
    p.add_argument("--transpose", action="store_true",
                   help="instead: conv_transpose2d on decoder layers (U-Net 2x2/2, DCGAN 4x4/2, "
                        "64-512 channels, batch 1 and 8) beside F.conv_transpose2d; --ops may "
                        "add conv_transpose_grad_input, conv_transpose_grad_weight")
    p.add_argument("--padding-modes", action="store_true",
                   help="time --ops (default here: grad_input) with each ring padding mode against "
                        "the zeros mode, paired by round (convc/bench/variants.py)")
    p.add_argument("--fused", action="store_true",
                   help="time the fused forward (conv+BN+ReLU, and + residual) against the plain "
                        "forward and PyTorch's eval conv -> batch_norm -> relu")
    p.add_argument("--prepacked", action="store_true",
                   help="forward and grad_input (or --ops) through exported libraries with the "
                        "weight packed once against the plain call, beside PyTorch "
                        "(convc/bench/prepacked.py)")
    p.add_argument("--pool", action="store_true",
                   help="instead: pooling forward and backward in GB/s beside PyTorch and a plain "
                        "copy (convc/bench/pool.py); --layers then names its layers")
    zoo = p.add_argument_group("zoo", "--zoo: every distinct convolution of torchvision's "
                               "classification models (convc/bench/zoo.json), convc in NCHW and "
                               "NHWC beside PyTorch contiguous and channels_last")
    zoo.add_argument("--zoo", action="store_true", help="time the model-zoo corpus, not the suite")
    zoo.add_argument("--models", default=None,
                     help="comma list of zoo models (default: all in the table)")
    zoo.add_argument("--max-layers", type=int, default=None,
                     help="time only the first N distinct layers (after --models)")
    zoo.add_argument("--save", default=None, metavar="JSON",
                     help="also write every row (kernel) to this JSON file")
    zoo.add_argument("--compile-only", action="store_true",
                     help="only compile every kernel (both layouts) and report compile times; "
                          "point $CONVC_CACHE_DIR at an empty directory for cold figures")
    zoo.add_argument("--worst", type=int, default=30,
                     help="rows of the worst-first table to print (default: %(default)s; 0 = all)")
    return p


def _list(text, allowed, name):
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ValueError(f"--{name}={text!r}: unknown {unknown}, expected a comma list of {list(allowed)}")
    return values


def _peak(args, target, threads: int) -> tuple[float, str]:
    """(the peak shares of peak are taken of, how it was found): --peak, or one core measured x
    `threads`; beside it what `threads` threads measured at once give (lower where the cores
    share FMA units: bench.measure_parallel_peak)."""
    from convc import bench
    from convc.target import info

    if args.peak:
        return args.peak, "given"
    peak = bench.measure_peak(target) * threads / info(target).num_cores
    if threads == 1:
        return peak, "one core measured"
    median, best = bench.measure_parallel_peak(target, threads=threads)
    return peak, (f"one core measured x {threads}; {threads} threads at once: median "
                  f"{median:.0f}, best {best:.0f}")


def run(args) -> int:
    import os

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads={args.threads} must be at least 1")
    from convc import bench
    from convc.target import info, resolve

    target = resolve(args.target)
    if args.zoo:
        return run_zoo(args, target)
    if args.transpose:
        return run_transpose(args, target)
    # TVM's thread pool reads TVM_NUM_THREADS when the first kernel runs (none has yet). Without
    # it, TVM 0.27 takes half the logical CPUs on x86 ("ignore hyper-threading"): 1 thread on a
    # 2-vCPU machine, where PyTorch would get 2.
    os.environ["TVM_NUM_THREADS"] = str(args.threads or info(target).num_cores)
    if info(target).is_gpu:
        raise ValueError(f"--target={args.target!r}: convc bench times CPU kernels only")
    if args.repeat < 1:
        raise ValueError(f"--repeat={args.repeat} must be at least 1")
    threads = args.threads or info(target).num_cores
    if args.pool:
        from convc.bench import pool

        given = args.layers != ",".join(bench.LAYERS)  # --layers names pooling layers here
        return pool.main(target, args.repeat, threads, args.stat,
                         _list(args.layers, pool.LAYERS, "layers") if given else None)
    ops = _list(args.ops, bench.OPS, "ops")
    layers = _list(args.layers, bench.LAYERS, "layers")
    layouts = _list(args.layouts, bench.LAYOUTS, "layouts")
    if args.overhead:
        return _overhead(target, args.repeat, threads, args.stat)
    if args.train:
        return _train(target, args.models, args.repeat, threads, args.stat, args.processes,
                      args.steps)
    if args.padding_modes or args.fused:
        return _variants(args, layers, ops, layouts, target)
    if args.prepacked:
        return _prepacked(args, layers, ops, layouts, target, threads)
    peak, how = _peak(args, target, threads)
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    tinfo = info(target)
    print(f"convc bench  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.processor() or platform.machine()} ({_cpu_name()}), LLVM mcpu "
          f"{tinfo.arch}, {tinfo.num_cores} cores, {tinfo.vector_bits}-bit vectors")
    print(f"fp32 FMA peak of {threads} core(s): {peak:.1f} GFLOP/s "
          f"({how}); PyTorch {torch_version}; "
          f"{threads} thread(s) each; {args.stat} of {args.repeat} batches")
    rows = bench.run(layers, ops, layouts, args.repeat, target, not args.no_numpy,
                     progress=lambda r: print(f"  {r.layer:11s} {r.op:11s} done", flush=True),
                     threads=threads, stat=args.stat, topi=not args.no_topi)
    print()
    print(bench.table(rows, peak))
    print()
    print(bench.summary(rows, peak))
    if args.plot:
        bench.plot(rows, args.plot, peak)
        print(f"plot: {args.plot}")
    return 0


def _train(target, models, repeat: int, threads: int, stat: str, processes=None,
           steps=None) -> int:
    from convc.bench import train
    from convc.target import resolve

    if target.json != resolve(None).json:
        raise ValueError("--train runs convc.torch, which compiles for this machine's CPU: "
                         "leave --target unset")
    processes = train.PROCESSES if processes is None else processes
    steps = train.STEPS if steps is None else steps
    if processes < 0:
        raise ValueError(f"--processes={processes} must be 0 (one process) or more")
    if steps < 1:
        raise ValueError(f"--steps={steps} must be at least 1")
    models = _list(models, train.MODELS, "models") if models else list(train.MODELS)
    import torch

    how = (f"{processes} processes a side, started alternately, {stat} of {steps} calls each "
           f"after {train.WARMUP} untimed, median over the processes" if processes else
           f"one process, {stat} of {repeat} rounds, side by side")
    print(f"convc bench --train  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {_cpu_name()}, LLVM mcpu {target.info.arch}, {target.info.num_cores} cores; "
          f"PyTorch {torch.__version__}; {threads} thread(s) each; {how}; batch 8, 3x112x112, "
          "10 classes")
    rows = train.run(models, repeat=repeat, threads=threads, stat=stat, processes=processes,
                     steps=steps,
                     progress=lambda r: print(f"  {r.model} {r.mode} {r.memory_format} done",
                                              flush=True))
    print()
    print(train.table(rows))
    print()
    print(train.summary(rows))
    return 0


def run_transpose(args, target) -> int:
    import os

    from convc import bench
    from convc.bench import transpose
    from convc.target import info

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads={args.threads} must be at least 1")
    threads = args.threads or info(target).num_cores
    os.environ["TVM_NUM_THREADS"] = str(threads)
    if info(target).is_gpu:
        raise ValueError(f"--target={args.target!r}: convc bench times CPU kernels only")
    ops = (["conv_transpose"] if args.ops == ",".join(bench.OPS)
           else _list(args.ops, transpose.OPS, "ops"))
    layers = (list(transpose.DECODER_LAYERS) if args.layers == ",".join(bench.LAYERS)
              else _list(args.layers, transpose.DECODER_LAYERS, "layers"))
    layouts = _list(args.layouts, transpose.LAYOUTS, "layouts")
    if args.repeat < 1:
        raise ValueError(f"--repeat={args.repeat} must be at least 1")
    peak, how = _peak(args, target, threads)
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    print(f"convc bench --transpose  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {_cpu_name()}, LLVM mcpu {info(target).arch}, {info(target).num_cores} "
          f"cores; fp32 peak {peak:.1f} GFLOP/s ({how}); PyTorch {torch_version}; {threads} "
          f"thread(s) each; {args.stat} of {args.repeat} paired rounds")
    rows = transpose.run(layers, ops, layouts, args.repeat, target, threads, args.stat,
                         progress=lambda r: print(f"  {r.layer:14s} {r.op:26s} ratio "
                                                  f"{r.ratio or 0:5.2f}", flush=True))
    print()
    print(transpose.table(rows, peak))
    print()
    print(transpose.summary(rows))
    return 0


def _variants(args, layers, ops, layouts, target) -> int:
    from convc import bench
    from convc.bench import variants

    print(f"convc bench {'--fused' if args.fused else '--padding-modes'}  "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}; {_cpu_name()}, "
          f"{target.info.num_cores} cores; median of {args.repeat} paired rounds")
    if args.fused:
        print(variants.fused_table(variants.fused_costs(layers, layouts, args.repeat, target,
                                                        progress=_progress)))
    else:
        ops = ["grad_input"] if args.ops == ",".join(bench.OPS) else ops  # the one that folds
        print(variants.padding_table(variants.padding_mode_costs(
            layers, ops, layouts, args.repeat, target, progress=_progress)))
    return 0


def _prepacked(args, layers, ops, layouts, target, threads) -> int:
    from convc import bench
    from convc.bench import prepacked

    ops = [op for op in ops if op != "grad_weight"] if args.ops != ",".join(bench.OPS) \
        else ["forward", "grad_input"]
    print(f"convc bench --prepacked  {datetime.datetime.now().isoformat(timespec='seconds')}; "
          f"{_cpu_name()}, {target.info.num_cores} cores, {threads} thread(s); median of "
          f"{args.repeat} paired rounds")
    rows = prepacked.prepacked_costs(layers, ops, layouts, args.repeat, target, threads,
                                     progress=lambda r: print(f"  {r}", flush=True))
    print(prepacked.prepacked_table(rows, layouts))
    return 0


def _progress(row) -> None:
    print(f"  {row}", flush=True)


def _overhead(target, repeat: int, threads: int, stat: str) -> int:
    from convc.bench import overhead

    tinfo = target.info
    print(f"convc bench --overhead  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {_cpu_name()}, LLVM mcpu {tinfo.arch}, {tinfo.num_cores} cores; "
          f"{threads} thread(s); {stat} of {repeat} rounds, side by side")
    rows = overhead.run(target, repeat, threads, stat=stat,
                        progress=lambda r: print(f"  {r.layer} done", flush=True))
    print()
    print(overhead.table(rows))
    print()
    print(overhead.summary(rows))
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def run_zoo(args, target) -> int:
    import os

    from convc import bench
    from convc.bench import zoo
    from convc.target import info

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads={args.threads} must be at least 1")
    threads = args.threads or info(target).num_cores
    os.environ["TVM_NUM_THREADS"] = str(threads)
    if info(target).is_gpu:
        raise ValueError(f"--target={args.target!r}: convc bench times CPU kernels only")
    ops = _list(args.ops, bench.OPS, "ops")
    if args.repeat < 1:
        raise ValueError(f"--repeat={args.repeat} must be at least 1")
    if args.max_layers is not None and args.max_layers < 1:
        raise ValueError(f"--max-layers={args.max_layers} must be at least 1")
    models = None if args.models is None else [m.strip() for m in args.models.split(",")
                                               if m.strip()]
    layers, sizes = zoo.load(models)
    layers = layers[:args.max_layers]
    if args.compile_only:
        return _zoo_compile_times(layers, ops, target)
    try:
        import torch
    except ImportError:
        raise SystemExit("convc bench --zoo times convc beside PyTorch: pip install -e '.[torch]'")
    print(zoo.header(target, threads) + f"; PyTorch {torch.__version__}; {args.stat} of "
          f"{args.repeat} paired rounds")
    print(f"corpus: {len(layers)} distinct layers of {len(sizes)} models "
          f"({', '.join(f'{m} {s}x{s}' for m, s in sizes.items())}), batch 1")
    total = len(layers) * len(ops)
    start = time.time()

    def progress(row):
        done = len(rows_done) + 1
        rows_done.append(row)
        eta = (time.time() - start) / done * (total - done)
        print(f"  [{done}/{total}] {row.layer.name:28s} {row.op:11s} ratio "
              f"{row.ratio or 0:5.2f} ({row.schedule.get(row.convc_layout, '-')}), "
              f"ETA {eta / 60:.1f} min", flush=True)

    rows_done = []
    rows = zoo.run(layers, ops, args.repeat, target, threads, args.stat, progress)
    print()
    print(f"worst first ({'all' if not args.worst else args.worst} of {len(rows)} kernels):")
    print(zoo.table(rows, args.worst or None))
    print()
    for op in ops:
        print(f"{op} ratios, best format:   " + zoo.distribution(
            [r.ratio for r in rows if r.op == op]))
        print(f"{op} ratios, NCHW vs NCHW:  " + zoo.distribution(
            [r.ratio_nchw for r in rows if r.op == op]))
    print()
    print(zoo.model_table(zoo.per_model(rows, list(sizes))))
    print()
    print(zoo.summary(rows, list(sizes)))
    if args.save:
        zoo.save(rows, args.save)
        print(f"rows: {args.save}")
    if args.plot:
        zoo.plot(rows, list(sizes), args.plot)
        print(f"plot: {args.plot}")
    return 0


def _zoo_compile_times(layers, ops, target) -> int:
    """Compile every (layer, op, layout) of the corpus; print the slowest and the distribution."""
    import statistics

    from convc.kernel import compile as compile_kernel

    times = []
    for done, zl in enumerate(layers, 1):
        for op in ops:
            for layout in ("NCHW", "NHWC"):
                start = time.perf_counter()
                compile_kernel(zl.layer.spec(layout), op, target)
                times.append((time.perf_counter() - start, zl.name, op, layout))
        print(f"  [{done}/{len(layers)}] {zl.name}", flush=True)
    times.sort(reverse=True)
    seconds = [t for t, *_ in times]
    print(f"compile seconds over {len(times)} kernels: median {statistics.median(seconds):.2f}, "
          f"p90 {statistics.quantiles(seconds, n=10)[-1]:.2f}, max {seconds[0]:.2f} "
          f"({'reached' if seconds[0] <= 1.5 else 'NOT reached'} <= 1.5 s); slowest:")
    for t, name, op, layout in times[:10]:
        print(f"  {t:5.2f} s  {name} {op} {layout}")
    return 0
