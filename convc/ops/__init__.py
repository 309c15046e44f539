"""Operator declarations: convolution and its two adjoints as TVM tensor expressions.

One N-d, layout-generic declaration per op. Nothing here names a target: schedules do that.
"""

from __future__ import annotations

from ..pool_spec import OUTPUTS, PoolSpec
from ..spec import OPS, ConvSpec, check_op
from .forward import forward
from .grad_input import grad_input, ring_unpadded
from .grad_weight import grad_weight
from .pool import declare_pool, pool_spec_of

DECLARATIONS = {"forward": forward, "grad_input": grad_input, "grad_weight": grad_weight}

# The reduction stage of each op, by name (schedules and tuning records find blocks by name).
REDUCTION = {"forward": "conv", "grad_input": "dx", "grad_weight": "dw"}
# Stages that only rearrange operands; schedules usually inline or compute them per tile.
OPERAND_STAGES = {"forward": ("pad",), "grad_input": ("dy_pad", "dy_dilated", "w_flipped"),
                  "grad_weight": ("pad",)}
EPILOGUE = "output"
# grad_input of a padding mode other than zeros: the ring's gradient added back onto the input.
FOLD = "fold"

# Argument names, in the order of the PrimFunc's parameters (destination last).
ARGUMENTS = {
    "forward": ("x", "w", "y"),
    "forward+bias": ("x", "w", "b", "y"),  # + scale, shift, residual before y: see arguments()
    "grad_input": ("dy", "w", "dx"),
    "grad_weight": ("x", "dy", "dw"),
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
    if op != "forward":
        return ARGUMENTS[op]
    return (("x", "w") + (("b",) if spec.bias else ()) + (("scale", "shift") if spec.scale_shift
                                                          else ())
            + (("residual",) if spec.residual else ()) + ("y",))


def shapes(spec, op: str) -> tuple:
    """Shapes of the op's parameters, in order (destination last)."""
    if isinstance(spec, PoolSpec):
        return tuple(shape for _, shape, _ in spec.signature(op))
    table = {"x": spec.input_shape, "w": spec.weight_shape, "b": spec.bias_shape,
             "scale": spec.bias_shape, "shift": spec.bias_shape, "residual": spec.output_shape,
             "y": spec.output_shape, "dy": spec.output_shape, "dx": spec.input_shape,
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
    PoolSpec.signature)."""
    if isinstance(spec, PoolSpec):
        return declare_pool(spec, op)
    return DECLARATIONS[check_op(op)](spec)


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


def reduction_spec_of(func) -> tuple[ConvSpec, str]:
    """(spec, op) of the convolution a convc PrimFunc's reduction block computes: spec_of's,
    except grad_input with a ring padding (a mode other than zeros), whose reduction is the
    input-gradient of the padded input's convolution (ring_unpadded) and whose "fold" stage then
    adds the ring back. Schedules size their tiles from it."""
    spec, op = spec_of(func)
    if spec is not None and op == "grad_input":
        spec = ring_unpadded(spec)
    return spec, op
