"""`convc compile`: compile a convolution's (or a pooling's) kernels for a target into one shared
library.

    convc compile --op conv2d --input 2,8,12,12 --weight 16,4,3,3 --bias --stride 2 --padding 1 \\
        --groups 2 -o lib.so
    convc compile --op max_pool2d --input 8,64,112,112 --kernel-size 3 --stride 2 --padding 1 \\
        -o pool.so

    convc compile --op conv_transpose2d --input 1,64,16,16 --weight 64,32,4,4 --stride 2 \\
        --padding 1 --output-padding 0 --bias -o up.so

writes lib.so (functions forward(x, w[, b], y), grad_input(dy, w, dx), grad_weight(x, dy, dw);
with --activation the adjoints go through it: grad_input(dy, pre_activation, w, dx), see
--derivative-from; for --op conv_transpose*: conv_transpose(x, w[, b], y),
conv_transpose_grad_input(dy, w, dx), conv_transpose_grad_weight(dy, x, dw), the weight
(in, out/groups, *k) as PyTorch's;
a max pool's forward(x, y), forward_indices(x, y, indices), grad_input(x, dy, dx),
grad_input_indices(dy, indices, dx); an avg pool's forward(x, y), grad_input(dy, dx)) and lib.json, its manifest (versions, target, every argument's
name/shape/dtype/layout, how each
schedule was chosen, the library's sha256). The library runs with only apache-tvm-ffi:
`tvm_ffi.load_module("lib.so")["forward"](x, w, b, y)`; `convc.load("lib.so")` adds checks.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

RANK = {"conv1d": 1, "conv2d": 2, "conv3d": 3,
        "conv_transpose1d": 1, "conv_transpose2d": 2, "conv_transpose3d": 3}
# --op names of poolings -> (PoolSpec.pool, rank)
POOL = {f"{name}{n}d": (pool, n) for n in (1, 2, 3)
        for name, pool in (("max_pool", "max"), ("avg_pool", "avg"),
                           ("adaptive_avg_pool", "adaptive_avg"))}
AXES = {1: "N,C,W", 2: "N,C,H,W", 3: "N,C,D,H,W"}


def add_parser(subparsers):
    p = subparsers.add_parser(
        "compile", help="compile kernels of one convolution into a shared library + manifest",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", required=True, choices=sorted(RANK) + sorted(POOL),
                   help="convolution, transposed convolution or pooling, and its rank")
    p.add_argument("--input", required=True, metavar="SHAPE",
                   help="batched input shape in the layout's order, e.g. 2,8,12,12 (N,C,H,W)")
    p.add_argument("--weight", metavar="SHAPE",
                   help="(convolutions) weight shape: O,I/groups,*k (channels-first) or "
                        "*k,I/groups,O (channels-last); transposed: in,out/groups,*k or "
                        "*k,out/groups,in")
    p.add_argument("--bias", action="store_true", help="forward adds a bias: forward(x, w, b, y)")
    p.add_argument("--scale-shift", action="store_true",
                   help="forward's epilogue multiplies by scale and adds shift per output channel "
                        "(an inference batch norm): forward(x, w[, b], scale, shift[, residual], y)")
    p.add_argument("--residual", action="store_true",
                   help="forward's epilogue adds a residual tensor of the output's shape")
    p.add_argument("--activation", default=None,
                   help="forward's epilogue ends with relu, relu6, leaky_relu[:SLOPE], silu, "
                        "gelu, gelu:tanh, hardswish or sigmoid")
    p.add_argument("--derivative-from", default=None, choices=("pre_activation", "output"),
                   help="grad_input/grad_weight through --activation: dy is multiplied by the "
                        "activation's derivative taken from the forward's pre-activation (an extra "
                        "argument after dy; the default with --activation) or its output (relu, "
                        "relu6, leaky_relu, sigmoid)")
    p.add_argument("--stride", default=None,
                   help="an int or a comma list (default: 1; poolings: the kernel size)")
    p.add_argument("--padding", default="0",
                   help="an int, a comma list, before:after pairs (1:2,0:1), 'same' or 'valid' "
                        "(default: %(default)s)")
    p.add_argument("--dilation", default="1", help="an int or a comma list (default: %(default)s)")
    p.add_argument("--groups", default="1", help="(default: %(default)s)")
    p.add_argument("--output-padding", default=None,
                   help="conv_transpose* only: an int or a comma list, smaller than stride or "
                        "dilation (default: 0)")
    add_padding_mode(p)
    p.add_argument("--algorithm", default="auto", choices=("auto", "direct", "winograd"),
                   help="forward and grad_input: Winograd where measured faster (auto, default), "
                        "always direct, or Winograd (2-D 3x3 stride-1 layers only)")
    p.add_argument("--winograd-m", type=int, default=0, choices=(0, 2, 4, 6),
                   help="Winograd's output tile F(m x m, 3 x 3) with --algorithm winograd "
                        "(default 0: chosen per layer)")
    p.add_argument("--layout", default=None,
                   help="NCW/NCHW/NCDHW (default) or NWC/NHWC/NDHWC; the weight layout follows")
    p.add_argument("--dtype", default="float32", help="float32 (default), float64 or float16")
    add_pool_arguments(p)
    p.add_argument("--kernels", default=None,
                   help="comma list of forward, grad_input, grad_weight (default: all three); "
                        "for conv_transpose*: of conv_transpose, conv_transpose_grad_input, "
                        "conv_transpose_grad_weight; poolings: forward, grad_input (max also "
                        "forward_indices, grad_input_indices; default: all)")
    p.add_argument("--target", default=None,
                   help="llvm (this CPU, default), cuda, or a JSON target such as "
                        '\'{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}\'')
    p.add_argument("--arch", default=None,
                   help="the target's architecture: a CUDA sm_XX, or an LLVM CPU name for llvm")
    p.add_argument("--log-dir", default=None, metavar="DIR",
                   help="directory of tuning records to consult besides the shipped ones")
    p.add_argument("--prepacked", action="store_true",
                   help="also export <op>_prepack / <op>_packed for forward and grad_input: "
                        "pack the weight once, then run packed calls (CPU targets)")
    p.add_argument("-o", "--output", required=True, metavar="LIB.so",
                   help="the library to write; the manifest goes beside it as LIB.json")
    return p


def add_pool_arguments(p) -> None:
    """The options of a pooling (besides --input, --stride, --padding, --dilation, --layout,
    --dtype, which convolutions share)."""
    pool = p.add_argument_group("poolings (--op max_pool2d, avg_pool2d, adaptive_avg_pool2d, ...)")
    pool.add_argument("--kernel-size", default=None, metavar="K",
                      help="an int or a comma list (max and avg pooling)")
    pool.add_argument("--ceil-mode", action="store_true", help="ceil_mode=True")
    pool.add_argument("--no-count-include-pad", action="store_true",
                      help="avg pooling: count_include_pad=False")
    pool.add_argument("--divisor-override", type=int, default=None, metavar="N",
                      help="avg pooling (2-D, 3-D): divisor_override")
    pool.add_argument("--output-size", default=None, metavar="SIZE",
                      help="adaptive avg pooling: an int or a comma list")


def pool_spec(args):
    """The PoolSpec the flags describe (--op a pooling); ValueError naming a flag that does not
    apply. --stride defaults to the kernel size, as stride=None in PyTorch."""
    from convc.pool_spec import PoolSpec

    pool, rank = POOL[args.op]
    given = {"--weight": args.weight, "--bias": args.bias, "--groups": args.groups != "1",
             "--padding-mode": getattr(args, "padding_mode", "zeros") != "zeros",
             "--scale-shift": getattr(args, "scale_shift", False),
             "--residual": getattr(args, "residual", False),
             "--activation": getattr(args, "activation", None),
             "--derivative-from": getattr(args, "derivative_from", None),
             "--output-padding": getattr(args, "output_padding", None),
             "--algorithm": getattr(args, "algorithm", "auto") != "auto",
             "--winograd-m": getattr(args, "winograd_m", 0)}
    for flag, value in given.items():
        if value:
            raise ValueError(f"{flag} is for convolutions, not --op {args.op}")
    x = shape(args.input, "input", rank, args.op)
    dtype, layout = args.dtype, args.layout
    if pool == "adaptive_avg":
        if args.output_size is None:
            raise ValueError(f"--op {args.op} needs --output-size")
        return PoolSpec.adaptive_avg_pool(x, ints(args.output_size, "output-size"),
                                          layout=layout, dtype=dtype)
    if args.kernel_size is None:
        raise ValueError(f"--op {args.op} needs --kernel-size")
    kernel = ints(args.kernel_size, "kernel-size")
    stride = None if args.stride in (None, "") else ints(args.stride, "stride")
    pad = ints(args.padding, "padding")
    if pool == "max":
        return PoolSpec.max_pool(x, kernel, stride, pad, ints(args.dilation, "dilation"),
                                 args.ceil_mode, layout=layout, dtype=dtype)
    if args.dilation != "1":
        raise ValueError(f"--dilation is not an option of --op {args.op}")
    if args.divisor_override is not None and rank == 1:
        raise ValueError("--divisor-override: avg_pool1d has none (as in PyTorch)")
    return PoolSpec.avg_pool(x, kernel, stride, pad, args.ceil_mode,
                             not args.no_count_include_pad, args.divisor_override,
                             layout=layout, dtype=dtype)


def add_padding_mode(parser) -> None:
    from convc.spec import PADDING_MODES

    parser.add_argument("--padding-mode", default="zeros", choices=PADDING_MODES,
                        help="how the padding ring is filled, as nn.ConvNd's padding_mode "
                             "(default: %(default)s)")


def activation(text):
    """--activation: NAME, leaky_relu:SLOPE or gelu:tanh -> what ConvSpec takes."""
    if text is None or ":" not in text:
        return text
    name, _, arg = text.partition(":")
    if name == "leaky_relu":
        try:
            return name, float(arg)
        except ValueError:
            raise ValueError(f"--activation={text!r} is not valid: expected leaky_relu:SLOPE "
                             "with a number") from None
    return name, arg


def ints(text: str, name: str):
    """'2' -> 2, '1,2' -> (1, 2); ValueError naming the option otherwise."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--{name}={text!r} is not an int or a comma list of ints") from None
    return values[0] if len(values) == 1 else values


def padding(text: str):
    """'same' / 'valid' / '1' / '1,2' / '1:2,0:1' (before:after per dimension)."""
    if text.strip().lower() in ("same", "valid"):
        return text.strip().lower()
    if ":" not in text:
        return ints(text, "padding")
    pairs = []
    for part in text.split(","):
        before, sep, after = part.partition(":")
        if not sep:
            before = after = part
        pairs.append((ints(before, "padding"), ints(after, "padding")))
    if not all(isinstance(v, int) for pair in pairs for v in pair):
        raise ValueError(f"--padding={text!r} is not valid: expected before:after pairs of ints")
    return tuple(pairs)


def shape(text: str, name: str, rank: int, op: str) -> tuple:
    value = ints(text, name)
    value = (value,) if isinstance(value, int) else value
    if len(value) != rank + 2:
        raise ValueError(f"--{name}={text!r} has {len(value)} dimensions: {op} expects {rank + 2}"
                         + (f" ({AXES[rank]} or channels-last)" if name == "input" else ""))
    return value


def target_of(text, arch):
    """--target and --arch -> what convc.target.resolve accepts (resolved once, by the caller)."""
    if arch is None:
        return text
    config = _target_config(text)
    key = "arch" if config["kind"] == "cuda" else "mcpu"
    return {**config, key: arch}


def _target_config(text) -> dict:
    name = (text or "llvm").strip()
    if name.lower() in ("llvm", "cpu", "host"):
        return {"kind": "llvm"}  # resolve fills in this machine's triple and cores
    if name.lower() == "cuda":
        return {"kind": "cuda"}
    if name.startswith("{"):
        try:
            config = json.loads(name)
        except json.JSONDecodeError as err:
            raise ValueError(f"--target={text!r} is not valid JSON: {err}") from None
        if not isinstance(config, dict) or "kind" not in config:
            raise ValueError(f"--target={text!r} is not valid: expected a JSON object with a 'kind'")
        return config
    raise ValueError(f"--target={text!r} is not known: expected llvm, cuda or a JSON object")


def run(args) -> int:
    from convc.export import CrossCompileWarning, export_library, manifest_path
    from convc.target import resolve

    if args.op in POOL:
        spec, kernels = pool_spec(args), args.kernels  # kernels None: all the spec has
    elif args.op.startswith("conv_transpose"):
        spec, kernels = _transposed(args, RANK[args.op])
    else:
        kernels = args.kernels or "forward,grad_input,grad_weight"
        spec = conv_spec(args, kernels)
    target = resolve(target_of(args.target, args.arch))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CrossCompileWarning)
        try:
            path = export_library(spec, args.output, ops=kernels, target=target,
                                  log_dir=args.log_dir, prepacked=args.prepacked)
        except (NotImplementedError, RuntimeError) as err:
            print(f"convc compile: error: {err}", file=sys.stderr)
            return 1
    for warning in caught:
        if issubclass(warning.category, CrossCompileWarning):
            print(f"convc compile: note: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)
    _report(path, json.loads(manifest_path(path).read_text()), manifest_path(path))
    return 0


def _transposed(args, rank):
    """--op conv_transpose*: the equivalent convolution (convc.transpose) and the kernels."""
    from convc import transpose
    from convc.spec import TRANSPOSE_OPS

    _refuse_pool_flags(args)
    if args.weight is None:
        raise ValueError(f"--op {args.op} needs --weight")
    fused = [flag for flag, given in (("--scale-shift", args.scale_shift),
                                      ("--residual", args.residual),
                                      ("--activation", args.activation is not None)) if given]
    if fused:
        raise ValueError(f"{', '.join(fused)}: --op {args.op} takes only --bias as its epilogue")
    spec = transpose.from_shapes(
        shape(args.input, "input", rank, args.op), shape(args.weight, "weight", rank, args.op),
        ints(args.stride or "1", "stride"), padding(args.padding),
        ints(args.output_padding or "0", "output-padding"), ints(args.groups, "groups"),
        ints(args.dilation, "dilation"), layout=args.layout, dtype=args.dtype, bias=args.bias,
        padding_mode=args.padding_mode)
    kernels = args.kernels or ",".join(TRANSPOSE_OPS)
    wrong = [k for k in kernels.split(",") if k.strip() and k.strip() not in TRANSPOSE_OPS]
    if wrong:
        raise ValueError(f"--kernels={kernels!r}: {wrong} are not kernels of --op {args.op}: "
                         f"expected some of {', '.join(TRANSPOSE_OPS)}")
    return spec, kernels


def _refuse_pool_flags(args) -> None:
    pool_flags = {"--kernel-size": args.kernel_size, "--ceil-mode": args.ceil_mode,
                  "--no-count-include-pad": args.no_count_include_pad,
                  "--divisor-override": args.divisor_override, "--output-size": args.output_size}
    for flag, value in pool_flags.items():
        if value not in (None, False):
            raise ValueError(f"{flag} is for poolings, not --op {args.op}")


def conv_spec(args, kernels: str):
    """The ConvSpec the flags describe (--op a convolution; `kernels` the ones to compile)."""
    from convc.spec import ConvSpec

    rank = RANK[args.op]
    if args.weight is None:
        raise ValueError(f"--op {args.op} needs --weight")
    _refuse_pool_flags(args)
    if args.output_padding is not None:
        raise ValueError(f"--output-padding applies to conv_transpose1d/2d/3d, not --op "
                         f"{args.op}")
    return ConvSpec.from_shapes(
        shape(args.input, "input", rank, args.op), shape(args.weight, "weight", rank, args.op),
        ints(args.stride or "1", "stride"), padding(args.padding), ints(args.dilation, "dilation"),
        ints(args.groups, "groups"), layout=args.layout, dtype=args.dtype, bias=args.bias,
        padding_mode=args.padding_mode, scale_shift=args.scale_shift, residual=args.residual,
        activation=activation(args.activation),
        derivative_from=args.derivative_from or (
            "pre_activation" if args.activation
            and any(k.strip() != "forward" for k in kernels.split(",")) else None),
        algorithm=args.algorithm, winograd_m=args.winograd_m)


def _report(path, manifest: dict, meta) -> None:
    target = manifest["target"]
    where = target.get("arch") or target.get("mcpu") or "generic"
    print(f"wrote {path} ({manifest['artifact']}, {target['kind']} {target.get('mtriple', '')} "
          f"{where}) and {meta}")
    width = max([12] + [len(name) for name in manifest["functions"]])
    for name, entry in manifest["functions"].items():
        args = {role: " ".join(f"{a['name']}[{','.join(map(str, a['shape']))}]"
                               for a in entry["args"] if a["role"] == role)
                for role in ("input", "output")}
        print(f"  {name:<{width}} {entry['how']:<13} {args['input']} -> {args['output']}  "
              f"{entry['spec']['dtype']} {entry['args'][0]['layout']}")
    print(f"sha256 {manifest['sha256']}")
