"""`convc demo`: the main job on one real layer.

Compile the forward pass and both adjoints of a convolution for a target (default: this CPU),
check each against the NumPy reference, time it, and export the three kernels as one library.
"""

from __future__ import annotations

import time


# ResNet-50 conv2_x 3x3: 64 -> 64 channels at 56x56, stride 1, padding 1.
DEFAULT_LAYER = dict(input="1,64,56,56", weight="64,64,3,3", stride="1", padding="1")


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="compile, check, time and export one layer's three kernels",
                              description=__doc__)
    p.add_argument("--input", default=DEFAULT_LAYER["input"], help="input shape N,C,H,W (default: %(default)s)")
    p.add_argument("--weight", default=DEFAULT_LAYER["weight"], help="weight shape O,I,kH,kW (default: %(default)s)")
    p.add_argument("--stride", default=DEFAULT_LAYER["stride"])
    p.add_argument("--padding", default=DEFAULT_LAYER["padding"])
    p.add_argument("--dilation", default="1")
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--layout", default=None, help="NCHW (default) or NHWC; weight layout follows")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--target", default=None, help="llvm (this CPU, default), cuda, or a JSON target")
    p.add_argument("-o", "--output", default="out/convc_demo.so", help="library to export (default: %(default)s)")
    return p


def ints(text: str, name: str):
    """'1,64,56,56' -> (1, 64, 56, 56); '2' -> 2; 'same'/'valid' pass through (for padding)."""
    if text in ("same", "valid"):
        return text
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--{name}={text!r} is not a comma list of ints") from None
    return values[0] if len(values) == 1 else values


def run(args) -> int:
    import convc
    from convc.check import TOLERANCE, check_kernel, kernel_inputs, operands
    from convc.target import info, resolve

    spec = convc.ConvSpec.from_shapes(
        ints(args.input, "input"), ints(args.weight, "weight"), ints(args.stride, "stride"),
        ints(args.padding, "padding"), ints(args.dilation, "dilation"), args.groups,
        layout=args.layout, dtype=args.dtype)
    target = resolve(args.target)
    about = info(target)
    print(f"layer   {spec.layout} input {spec.input_shape}, weight {spec.weight_shape} "
          f"({spec.weight_layout}), stride {spec.stride}, padding {spec.pad_before}/{spec.pad_after}, "
          f"{spec.dtype}")
    print(f"target  {about.kind} {about.arch}, {about.num_cores} cores, {about.vector_bits}-bit vectors")
    print(f"work    {spec.flops / 1e9:.3f} GFLOP per op\n")
    data = operands(spec, seed=0)
    kernels, failed = [], False
    print(f"{'op':<12} {'schedule':<13} {'compile s':>9} {'max rel err':>12} {'ms':>9} {'GFLOP/s':>9}")
    for op in ("forward", "grad_input", "grad_weight"):
        start = time.perf_counter()
        kernel = convc.compile(spec, op, target)
        compile_s = time.perf_counter() - start
        kernels.append(kernel)
        if about.is_gpu:
            print(f"{op:<12} {kernel.how:<13} {compile_s:>9.2f} {'(no GPU run)':>12}")
            continue
        error = check_kernel(kernel, data)
        ok = error <= TOLERANCE[spec.dtype]
        failed |= not ok
        seconds = kernel.time(*kernel_inputs(spec, op, data))
        print(f"{op:<12} {kernel.how:<13} {compile_s:>9.2f} {error:>12.2e} {seconds * 1e3:>9.3f} "
              f"{spec.flops / seconds / 1e9:>9.1f}" + ("" if ok else "   WRONG"))
    from convc.export import export_library

    from pathlib import Path

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    path = export_library(kernels, args.output)
    print(f"\nexported {', '.join(k.op for k in kernels)} -> {path} (manifest beside it)")
    if failed:
        print("error: a kernel disagrees with the NumPy reference")
        return 1
    return 0
