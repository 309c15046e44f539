"""Operator declarations: convolution and its two adjoints as TVM tensor expressions.

One N-d, layout-generic declaration per op. Nothing here names a target: schedules do that. The
transposed convolution's three ops (transpose.py) are these declarations of the equivalent
convolution (convc.transpose) under their own kernel names.
"""

from __future__ import annotations

import dataclasses

from tvm import te

from ..pool_spec import OUTPUTS, PoolSpec
from ..spec import OPS, TRANSPOSE_OPS, ConvSpec, check_op

from .common import SAVED, make_func
from .forward import forward
from .grad_input import grad_input, ring_unpadded
from .grad_weight import grad_weight
from . import winograd
from .pool import declare_pool, pool_spec_of
from .transpose import (KERNEL_ATTR, conv_transpose, conv_transpose_grad_input,
                        conv_transpose_grad_weight)

DECLARATIONS = {"forward": forward, "grad_input": grad_input, "grad_weight": grad_weight,
                "conv_transpose": conv_transpose,
                "conv_transpose_grad_input": conv_transpose_grad_input,
                "conv_transpose_grad_weight": conv_transpose_grad_weight}
WINOGRAD = {"forward": winograd.forward, "grad_input": winograd.grad_input}

# The reduction stage of each op, by name (schedules and tuning records find blocks by name).
REDUCTION = {"forward": "conv", "grad_input": "dx", "grad_weight": "dw"}
# Stages that only rearrange operands; schedules usually inline or compute them per tile.
OPERAND_STAGES = {"forward": ("pad",),
                  "grad_input": ("dy_act", "dy_pad", "dy_dilated", "w_flipped"),
                  "grad_weight": ("pad", "dy_act")}
# The adjoints' activation-derivative prologue (spec.prologue): dy * act'(saved).
PROLOGUE = "dy_act"

EPILOGUE = "output"
# grad_input of a padding mode other than zeros: the ring's gradient added back onto the input.
FOLD = "fold"

# Argument names, in the order of the PrimFunc's parameters (destination last).
ARGUMENTS = {
    "forward": ("x", "w", "y"),
    "forward+bias": ("x", "w", "b", "y"),  # + scale, shift, residual before y: see arguments()
    "grad_input": ("dy", "w", "dx"),      # + the saved tensor after dy with a prologue
    "grad_weight": ("x", "dy", "dw"),
    # The transposed ops, in their own words (x: the transposed input; see convc.transpose).
    "conv_transpose": ("x", "w", "y"),
    "conv_transpose+bias": ("x", "w", "b", "y"),
    "conv_transpose_grad_input": ("dy", "w", "dx"),
    # grad_weight of the equivalent convolution, whose "x" is the transposed op's dy: dy first.
    "conv_transpose_grad_weight": ("dy", "x", "dw"),
}


def check_kernel_op(spec, op) -> str:
    """`op` checked against the kernels `spec` has (a ConvSpec's three, a PoolSpec's own)."""
    return spec.check_op(op) if isinstance(spec, PoolSpec) else check_op(op)


def kernel_ops(spec) -> tuple:
    """Every kernel `spec` has, in order (what `convc compile` exports by default)."""
    return spec.ops if isinstance(spec, PoolSpec) else OPS


def arguments(spec, op: str) -> tuple:
    if isinstance(spec, PoolSpec):
        return tuple(name for name, _, _ in spec.signature(op))
    if op == "conv_transpose":
        return ARGUMENTS["conv_transpose+bias" if spec.bias else op]
    if op != "forward":
        names = ARGUMENTS[op]
        if not spec.prologue:
            return names
        at = names.index("dy") + 1
        return names[:at] + (SAVED[spec.derivative_from],) + names[at:]
    return (("x", "w") + (("b",) if spec.bias else ()) + (("scale", "shift") if spec.scale_shift
                                                          else ())
            + (("residual",) if spec.residual else ()) + ("y",))


def shapes(spec, op: str) -> tuple:
    """Shapes of the op's parameters, in order (destination last)."""
    if isinstance(spec, PoolSpec):
        return tuple(shape for _, shape, _ in spec.signature(op))
    if op in TRANSPOSE_OPS:  # spec is the equivalent convolution: its output is the op's input
        small, large = spec.output_shape, spec.input_shape
        table = {"x": small, "w": spec.weight_shape, "b": (spec.in_channels,), "y": large,
                 "dy": large, "dx": small, "dw": spec.weight_shape}
        return tuple(table[name] for name in arguments(spec, op))
    table = {"x": spec.input_shape, "w": spec.weight_shape, "b": spec.bias_shape,
             "scale": spec.bias_shape, "shift": spec.bias_shape, "residual": spec.output_shape,
             "y": spec.output_shape, "dy": spec.output_shape, "pre_activation": spec.output_shape,
             "activation_output": spec.output_shape, "dx": spec.input_shape,
             "dw": spec.weight_shape}
    return tuple(table[name] for name in arguments(spec, op))


def dtypes(spec, op: str) -> tuple:
    """Dtypes of the op's parameters, in order (a ConvSpec's all share spec.dtype; a max pool's
    indices are int64)."""
    if isinstance(spec, PoolSpec):
        return tuple(dtype for _, _, dtype in spec.signature(op))
    return (spec.dtype,) * len(arguments(spec, op))


def outputs(spec, op: str) -> int:
    """How many of the op's parameters, counted from the last, are outputs."""
    return OUTPUTS.get(op, 1) if isinstance(spec, PoolSpec) else 1


def declare(spec, op: str = "forward"):
    """The PrimFunc computing `op` for `spec` (destination-passing, see ARGUMENTS and
    PoolSpec.signature).

    spec.algorithm "winograd" declares forward and grad_input by Winograd (ops.winograd; grad_weight
    stays direct); "auto" and "direct" declare the direct correlation (dispatch.resolve_algorithm
    turns "auto" into "winograd" where that was measured faster, before declaring)."""
    if isinstance(spec, PoolSpec):
        return declare_pool(spec, op)
    op = check_op(op)
    if spec.algorithm == "winograd" and op != "grad_weight":
        reason = winograd.unsupported(spec, op)
        if reason is not None:
            raise ValueError(f"algorithm='winograd' cannot compute {op} of this layer: {reason}")
        return WINOGRAD[op](spec, winograd.choose_tile(spec, op))
    if spec.algorithm == "direct":
        # The same declaration as "auto" resolved to direct: one TIR, so a layer forced to
        # direct finds the tuning records of that layer (keyed by the TIR's structural hash).
        spec = dataclasses.replace(spec, algorithm="auto")
    return DECLARATIONS[op](spec)


def base_op(op: str) -> str:
    """The op a prepack / packed function belongs to: "forward_packed" -> "forward"."""
    return op.removesuffix("_prepack").removesuffix("_packed")


def declare_packed(spec: ConvSpec, op: str) -> tuple:
    """("<op>_prepack": w -> u, "<op>_packed": the op taking u in w's place) for a spec whose
    algorithm is "winograd" (the transformed filter computed once, see convc.kernel.prepack)."""
    op = check_op(op)
    if spec.algorithm != "winograd" or op == "grad_weight":
        raise ValueError(f"prepacked weights are implemented for Winograd forward and grad_input "
                         f"only: {op} of this layer is computed by the direct schedules")
    declare(spec, op)  # the same checks
    m = winograd.choose_tile(spec, op)
    return winograd.prepack(spec, op, m), WINOGRAD[op](spec, m, packed=True)


def declare_weight_copy(spec: ConvSpec, op: str):
    """"<op>_prepack" of a kernel that reads its weight as given: w copied (the pack of kind
    "copy", see convc.build.packed_functions)."""
    w = te.placeholder(spec.weight_shape, spec.dtype, name="w")
    copy = te.compute(spec.weight_shape, lambda *i: w[i], name="w_pack")
    return make_func([w, copy], spec, f"{op}_prepack")


def packed_shape(spec: ConvSpec, op: str) -> tuple:
    """Shape of the transformed filter "<op>_prepack" writes (spec's algorithm "winograd")."""
    return winograd.packed_shape(spec, op, winograd.choose_tile(spec, op))


def is_winograd(func) -> bool:
    """The PrimFunc was declared by Winograd (it has the "wino_gemm" stage)."""
    spec, op = spec_of(func)
    return spec is not None and spec.algorithm == "winograd" and op != "grad_weight"


def described(func) -> tuple:
    """(ConvSpec or PoolSpec, op) recorded in a PrimFunc convc declared, or (None, None)."""
    spec, op = spec_of(func)
    return (spec, op) if spec is not None else pool_spec_of(func)


def spec_of(func) -> tuple[ConvSpec, str]:
    """(spec, op) recorded in a PrimFunc declared by convc as a convolution, or (None, None) for
    a foreign one (pooling functions included: see described and pool_spec_of)."""
    attrs = func.attrs
    if attrs is None or "convc.spec" not in attrs:
        return None, None
    return ConvSpec.from_json(str(attrs["convc.spec"])), str(attrs["convc.op"])


def kernel_of(func) -> str | None:
    """The kernel a convc PrimFunc is (a transposed op, or the conv op spec_of names), None for a
    foreign one: what tuning records key it by."""
    attrs = func.attrs
    if attrs is None or "convc.op" not in attrs:
        return None
    return str(attrs[KERNEL_ATTR]) if KERNEL_ATTR in attrs else str(attrs["convc.op"])


def reduction_spec_of(func) -> tuple[ConvSpec, str]:
    """(spec, op) of the convolution a convc PrimFunc's reduction block computes: spec_of's,
    except grad_input with a ring padding (a mode other than zeros), whose reduction is the
    input-gradient of the padded input's convolution (ring_unpadded) and whose "fold" stage then
    adds the ring back. Schedules size their tiles from it."""
    spec, op = spec_of(func)
    if spec is not None and op == "grad_input":
        spec = ring_unpadded(spec)
    return spec, op
