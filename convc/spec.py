"""ConvSpec: the one place where convolution arguments are normalized and validated.

Everything public in convc funnels its arguments through this module before TVM sees anything.
Errors name the parameter, the value and what was expected, in the words of the PyTorch API that
convc mirrors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Sequence

# Layouts per spatial rank: channels-first (PyTorch's default) and channels-last.
LAYOUTS = {
    1: ("NCW", "NWC"),
    2: ("NCHW", "NHWC"),
    3: ("NCDHW", "NDHWC"),
}
# Weight layout that goes with each data layout. Channels-last uses the HWIO family (spatial
# dims, then input channels per group, then output channels): the output channel is innermost, which
# is the axis a channels-last kernel vectorizes.
WEIGHT_LAYOUTS = {
    "NCW": "OIW", "NWC": "WIO",
    "NCHW": "OIHW", "NHWC": "HWIO",
    "NCDHW": "OIDHW", "NDHWC": "DHWIO",
}
DTYPES = ("float32", "float64", "float16")
OPS = ("forward", "grad_input", "grad_weight")
# The transposed convolution and its adjoints, each one of the three ops above of the equivalent
# convolution (the ConvSpec whose input-gradient the transposed convolution is: convc.transpose),
# with the roles of the operands moved: conv_transpose is grad_input (+ a bias of its output
# channels), its grad_input is forward, its grad_weight is grad_weight with x and dy swapped.
TRANSPOSE_OPS = {"conv_transpose": "grad_input", "conv_transpose_grad_input": "forward",
                 "conv_transpose_grad_weight": "grad_weight"}
KERNEL_OPS = OPS + tuple(TRANSPOSE_OPS)
# How the ring around the input is filled: PyTorch's nn.ConvNd(padding_mode=...) names.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# Activations the forward epilogue applies last (PyTorch's names; gelu_tanh is
# F.gelu(approximate="tanh")).
# How forward and grad_input are computed: "direct" (the correlation loop nest), "winograd"
# (F(m x m, 3 x 3), convc.ops.winograd) or "auto" (Winograd where it was measured faster on the
# target, convc.dispatch.resolve_algorithm). grad_weight is always direct.
ALGORITHMS = ("auto", "direct", "winograd")
WINOGRAD_TILES = (2, 4, 6)
# Per-group GEMMs narrower than this (depthwise, 4-channel groups) leave the transforms, which cost
# about as much per channel as the GEMM saves, nothing to amortize.
WINOGRAD_MIN_GROUP_CHANNELS = 8
ACTIVATIONS = ("relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh", "hardswish", "sigmoid")
# The tensor of the forward pass an adjoint's activation-derivative prologue reads (dy * act'):
# the activation's input ("pre_activation") or its output ("output", the forward's result, what
# PyTorch's autograd saves for relu and sigmoid).
DERIVATIVE_FROM = ("pre_activation", "output")
# Activations whose derivative is a function of their output: monotone where it matters
# (relu: y > 0; relu6: 0 < y < 6; leaky_relu with a slope >= 0: y > 0; sigmoid: y (1 - y)).
# silu, gelu, gelu_tanh and hardswish are not invertible from y: they need the pre-activation.
FROM_OUTPUT = ("relu", "relu6", "leaky_relu", "sigmoid")


# Fields left out of to_dict() at these defaults (see ConvSpec.to_dict): every field added after
# the shipped tuning records were made (tuning_logs/, 2026-11-29), whose TIR carries the spec.
OPTIONAL_FIELDS = {"padding_mode": "zeros", "scale_shift": False, "residual": False,
                   "activation": None, "negative_slope": 0.01, "derivative_from": None,
                   "algorithm": "auto", "winograd_m": 0}


def default_layout(ndim: int) -> str:
    return LAYOUTS[ndim][0]


def check_layout(layout, ndim: int, name: str = "layout") -> str:
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS[ndim]:
        raise ValueError(
            f"{name}={layout!r} is not a {ndim}-D layout: expected one of {LAYOUTS[ndim]}"
        )
    return layout.upper()


def check_op(op) -> str:
    if op not in KERNEL_OPS:
        raise ValueError(f"op={op!r} is not a convc kernel: expected one of {KERNEL_OPS}")
    return op


def conv_op(op: str) -> str:
    """The convolution op whose kernel computes `op` (itself for the three conv ops)."""
    return TRANSPOSE_OPS.get(op, op)


def check_dtype(dtype, name: str = "dtype") -> str:
    text = str(dtype)
    text = {"torch.float32": "float32", "torch.float64": "float64", "torch.float16": "float16",
            "float": "float32", "double": "float64", "half": "float16"}.get(text, text)
    if text not in DTYPES:
        raise TypeError(f"{name}={dtype!r} is not supported: expected one of {DTYPES}")
    return text


def check_padding_mode(mode, name: str = "padding_mode") -> str:
    if mode not in PADDING_MODES:
        raise ValueError(f"{name}={mode!r} is not a padding mode: expected one of {PADDING_MODES}")
    return mode


def check_activation(activation, name: str = "activation"):
    """What the user passes -> (activation name or None, negative_slope): None, a name of
    ACTIVATIONS, ("leaky_relu", negative_slope) or ("gelu", "tanh" | "none")."""
    if activation is None or activation in ACTIVATIONS:
        return activation, 0.01
    if isinstance(activation, (tuple, list)) and len(activation) == 2:
        kind, arg = activation
        if kind == "leaky_relu" and isinstance(arg, numbers.Real) and not isinstance(arg, bool) \
                and math.isfinite(arg):
            return "leaky_relu", float(arg)
        if kind == "gelu" and arg in ("tanh", "none"):
            return ("gelu_tanh" if arg == "tanh" else "gelu"), 0.01
    raise ValueError(f"{name}={activation!r} is not an activation: expected None, one of "
                     f"{ACTIVATIONS}, ('leaky_relu', negative_slope) or ('gelu', 'tanh')")


def check_algorithm(algorithm, name: str = "algorithm") -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{name}={algorithm!r} is not an algorithm: expected one of {ALGORITHMS}")
    return algorithm


def winograd_limits(spec) -> str | None:
    """Why Winograd F(m x m, 3 x 3) cannot compute this layer (in the user's words), or None."""
    if spec.ndim != 2:
        return f"a {spec.ndim}-D convolution: Winograd is implemented for 2-D convolutions only"
    if tuple(spec.kernel) != (3, 3):
        return f"kernel size {spec.kernel}: Winograd needs a 3x3 kernel"
    if tuple(spec.stride) != (1, 1):
        return f"stride={spec.stride}: Winograd needs stride 1"
    if tuple(spec.dilation) != (1, 1):
        return f"dilation={spec.dilation}: Winograd needs dilation 1"
    cg, kg = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    if min(cg, kg) < WINOGRAD_MIN_GROUP_CHANNELS:
        return (f"groups={spec.groups} leaves {cg} input and {kg} output channels per group: "
                f"Winograd needs at least {WINOGRAD_MIN_GROUP_CHANNELS} of each")
    return None


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def expand(value, ndim: int, name: str, minimum: int) -> tuple[int, ...]:
    """An int or a sequence of `ndim` ints -> a tuple of `ndim` ints, each >= minimum."""
    if _is_int(value):
        values = (int(value),) * ndim
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) == 1 and ndim > 1:
            values = values * ndim
        if len(values) != ndim or not all(_is_int(v) for v in values):
            raise ValueError(
                f"{name}={value!r} is not valid: expected an int or a tuple of {ndim} ints"
            )
        values = tuple(int(v) for v in values)
    else:
        raise TypeError(f"{name}={value!r} is not valid: expected an int or a tuple of {ndim} ints")
    for v in values:
        if v < minimum:
            what = "positive" if minimum == 1 else "non-negative"
            raise ValueError(f"{name}={value!r} is not valid: every entry must be {what}")
    return values


def resolve_padding(padding, ndim: int, kernel, stride, dilation):
    """PyTorch's padding rules -> (pad_before, pad_after), each a tuple of `ndim` ints.

    Accepts an int, a tuple of `ndim` ints (symmetric), a tuple of `ndim` (before, after) pairs,
    'valid' (no padding) and 'same' (stride 1 only; total d*(k-1), the extra one after, as PyTorch
    does for even kernels).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            zeros = (0,) * ndim
            return zeros, zeros
        if mode == "same":
            if any(s != 1 for s in stride):
                raise ValueError(
                    f"padding='same' is not supported for strided convolutions: stride={stride}, "
                    "expected all 1"
                )
            total = [d * (k - 1) for k, d in zip(kernel, dilation)]
            before = tuple(t // 2 for t in total)
            return before, tuple(t - b for t, b in zip(total, before))
        raise ValueError(f"padding={padding!r} is not valid: expected 'same', 'valid', an int or a tuple")
    if (isinstance(padding, Sequence) and len(padding) == ndim
            and all(isinstance(p, Sequence) and not isinstance(p, str) for p in padding)):
        pairs = []
        for p in padding:
            if len(p) != 2 or not all(_is_int(v) for v in p):
                raise ValueError(
                    f"padding={padding!r} is not valid: per-side padding needs {ndim} (before, after) pairs of ints"
                )
            if min(p) < 0:
                raise ValueError(f"padding={padding!r} is not valid: every entry must be non-negative")
            pairs.append((int(p[0]), int(p[1])))
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    symmetric = expand(padding, ndim, "padding", 0)
    return symmetric, symmetric


def out_size(in_size, kernel, stride, dilation, pad_before, pad_after):
    return tuple(
        (i + pb + pa - d * (k - 1) - 1) // s + 1
        for i, k, s, d, pb, pa in zip(in_size, kernel, stride, dilation, pad_before, pad_after)
    )


class SpecBase:
    """What ConvSpec and PoolSpec share (frozen dataclasses of ints, strs, bools and tuples with
    `in_size` and `layout`): the rank and layout family, and (de)serialization: to_dict (tuples
    as lists), from_dict, and JSON text with sorted keys (stable: caches and records key on it)."""

    @property
    def ndim(self) -> int:
        return len(self.in_size)

    @property
    def channels_last(self) -> bool:
        return self.layout[-1] == "C"

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


@dataclasses.dataclass(frozen=True)
class ConvSpec(SpecBase):
    """One convolution: shapes, hyper-parameters, layout and dtype. Always batched.

    `in_size`, `kernel`, `stride`, `dilation`, `pad_before`, `pad_after` have one entry per
    spatial dimension. The weight of a channels-first layout is (O, I/groups, *kernel), as in
    PyTorch; of a channels-last layout (*kernel, I/groups, O). `padding_mode` fills the padding
    ring as nn.ConvNd does: "zeros", or from the input itself ("reflect": mirrored without the
    edge, "replicate": the edge repeated, "circular": wrapped around).
    """

    layout: str
    batch: int
    in_channels: int
    out_channels: int
    in_size: tuple
    kernel: tuple
    stride: tuple
    dilation: tuple
    pad_before: tuple
    pad_after: tuple
    groups: int = 1
    dtype: str = "float32"
    bias: bool = False
    padding_mode: str = "zeros"
    # The forward epilogue, in this order: + bias, * scale + shift (per output channel), +
    # residual (y's shape), activation; computed in the kernel's write-back (see ops.forward).
    scale_shift: bool = False
    residual: bool = False
    activation: str | None = None
    negative_slope: float = 0.01
    # grad_input / grad_weight of a conv followed by `activation`: dy is first multiplied by the
    # activation's derivative, computed from the forward's saved tensor named here (one of
    # DERIVATIVE_FROM); the forward ignores it.
    derivative_from: str | None = None
    # "auto" | "direct" | "winograd" (ALGORITHMS); winograd_m: Winograd's output tile (2, 4 or 6;
    # 0 = chosen per layer), only with algorithm="winograd".
    algorithm: str = "auto"
    winograd_m: int = 0

    def __post_init__(self):
        self.validate()

    # --- derived -------------------------------------------------------------------------------
    @property
    def weight_layout(self) -> str:
        return WEIGHT_LAYOUTS[self.layout]

    @property
    def out_size(self) -> tuple:
        return out_size(self.in_size, self.kernel, self.stride, self.dilation,
                        self.pad_before, self.pad_after)

    def data_shape(self, channels: int, size) -> tuple:
        """Shape of an activation tensor with this spec's batch and layout."""
        size = tuple(size)
        if self.channels_last:
            return (self.batch, *size, channels)
        return (self.batch, channels, *size)

    @property
    def input_shape(self) -> tuple:
        return self.data_shape(self.in_channels, self.in_size)

    @property
    def output_shape(self) -> tuple:
        return self.data_shape(self.out_channels, self.out_size)

    @property
    def weight_shape(self) -> tuple:
        cg = self.in_channels // self.groups
        if self.channels_last:
            return (*self.kernel, cg, self.out_channels)
        return (self.out_channels, cg, *self.kernel)

    @property
    def bias_shape(self) -> tuple:
        return (self.out_channels,)

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the forward pass; each adjoint performs the same count."""
        return (2 * self.batch * self.out_channels * math.prod(self.out_size)
                * (self.in_channels // self.groups) * math.prod(self.kernel))

    @property
    def key(self) -> str:
        """A stable, human-readable name of this workload (used in caches and tuning records)."""
        def t(v):
            return "x".join(str(i) for i in v)
        return (f"{self.layout}_{self.dtype}_n{self.batch}_c{self.in_channels}_k{self.out_channels}"
                f"_i{t(self.in_size)}_r{t(self.kernel)}_s{t(self.stride)}_d{t(self.dilation)}"
                f"_p{t(self.pad_before)}-{t(self.pad_after)}_g{self.groups}"
                + ("_bias" if self.bias else "")
                + ("" if self.padding_mode == "zeros" else f"_{self.padding_mode}")
                + ("_scaleshift" if self.scale_shift else "") + ("_residual" if self.residual else "")
                + (f"_{self.activation}" if self.activation else "")
                + (f"{self.negative_slope!r}" if self.activation == "leaky_relu" else "")
                + ("_d" + self.derivative_from[:3] if self.derivative_from else "")
                # "auto" and "direct" declare the same direct kernels (one key, one record);
                # "auto" that resolves to Winograd is declared with algorithm="winograd".
                + (f"_winograd{self.winograd_m or ''}" if self.algorithm == "winograd" else ""))

    @property
    def fused(self) -> bool:
        """The forward epilogue does more than add a bias and cast."""
        return self.scale_shift or self.residual or self.activation is not None

    @property
    def prologue(self) -> bool:
        """The adjoints multiply dy by the activation's derivative first (see derivative_from)."""
        return self.derivative_from is not None

    @property
    def ring_padded(self) -> bool:
        """The padding ring is filled from the input (a padding mode other than zeros, and some
        padding): the adjoints then fold the ring back onto the positions it came from."""
        return self.padding_mode != "zeros" and any(self.pad_before + self.pad_after)

    def with_batch(self, batch: int) -> "ConvSpec":
        return dataclasses.replace(self, batch=batch)

    # --- (de)serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Every field, except those of OPTIONAL_FIELDS at their default: a spec without them
        serializes (and so declares its PrimFunc, whose attributes carry it) as before they
        existed, and the tuning records keyed by that TIR stay valid."""
        data = super().to_dict()
        for name, default in OPTIONAL_FIELDS.items():
            if data[name] == default:
                del data[name]
        return data

    # --- construction from user arguments ------------------------------------------------------
    @classmethod
    def from_shapes(cls, input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *,
                    layout=None, dtype="float32", bias=False,
                    padding_mode="zeros", scale_shift=False, residual=False,
                    activation=None, derivative_from=None, algorithm="auto",
                    winograd_m=0) -> "ConvSpec":
        """Build a spec from a batched input shape and a weight shape in `layout`'s convention."""
        input_shape = _shape(input_shape, "input_shape")
        ndim, layout, batch, in_channels, in_size = split_input(input_shape, layout)
        weight_shape = _shape(weight_shape, "weight_shape")
        if len(weight_shape) != ndim + 2:
            raise ValueError(
                f"weight_shape={weight_shape} has rank {len(weight_shape)}: expected {ndim + 2} "
                f"({WEIGHT_LAYOUTS[layout]}) for a {ndim}-D convolution"
            )
        if layout[-1] == "C":
            *kernel, cg, out_channels = weight_shape
        else:
            out_channels, cg, *kernel = weight_shape
        stride = expand(stride, ndim, "stride", 1)
        dilation = expand(dilation, ndim, "dilation", 1)
        if not _is_int(groups) or groups < 1:
            raise ValueError(f"groups={groups!r} is not valid: expected a positive int")
        kernel = tuple(kernel)
        activation, slope = check_activation(activation)
        pad_before, pad_after = resolve_padding(padding, ndim, kernel, stride, dilation)
        if in_channels != cg * groups:
            raise ValueError(
                f"weight_shape={weight_shape} does not fit input_shape={input_shape} with "
                f"groups={groups}: the input has {in_channels} channels, expected "
                f"{cg} (weight's I/groups) x {groups} (groups) = {cg * groups}"
            )
        return cls(layout=layout, batch=batch, in_channels=in_channels, out_channels=out_channels,
                   in_size=tuple(in_size), kernel=kernel, stride=stride, dilation=dilation,
                   pad_before=pad_before, pad_after=pad_after, groups=int(groups),
                   dtype=check_dtype(dtype), bias=bool(bias),
                   padding_mode=check_padding_mode(padding_mode), scale_shift=bool(scale_shift),
                   residual=bool(residual), activation=activation, negative_slope=slope,
                   derivative_from=derivative_from,
                   algorithm=check_algorithm(algorithm), winograd_m=winograd_m)

    def validate(self) -> None:
        ndim = len(self.in_size)
        if ndim not in LAYOUTS:
            raise ValueError(f"in_size={self.in_size} must have 1 to 3 entries")
        check_layout(self.layout, ndim)
        check_dtype(self.dtype)
        for name in ("kernel", "stride", "dilation", "pad_before", "pad_after"):
            value = getattr(self, name)
            if len(value) != ndim:
                raise ValueError(f"{name}={value} must have {ndim} entries, like in_size={self.in_size}")
        if self.batch < 0:
            raise ValueError(f"batch={self.batch} must be non-negative")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(
                f"in_channels={self.in_channels}, out_channels={self.out_channels}: both must be positive"
            )
        if any(k < 1 for k in self.kernel):
            raise ValueError(f"kernel size {self.kernel} must be positive in every dimension")
        if any(i < 1 for i in self.in_size):
            raise ValueError(f"input spatial size {self.in_size} must be positive in every dimension")
        if any(s < 1 for s in self.stride):
            raise ValueError(f"stride={self.stride} must be positive in every dimension")
        if any(d < 1 for d in self.dilation):
            raise ValueError(f"dilation={self.dilation} must be positive in every dimension")
        if any(p < 0 for p in self.pad_before):
            raise ValueError(f"padding={self.pad_before}/{self.pad_after} must be non-negative")
        if any(p < 0 for p in self.pad_after) and self.padding_mode != "zeros":
            # A negative pad_after crops: the last elements of the input are never read. Only the
            # equivalent convolution of a transposed one with a large output_padding has it
            # (convc.transpose); from_shapes refuses negative padding as PyTorch does.
            raise ValueError(f"padding={self.pad_before}/{self.pad_after} must be non-negative")
        check_padding_mode(self.padding_mode)
        self._check_ring()
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not an activation: expected None "
                             f"or one of {ACTIVATIONS}")
        if not isinstance(self.negative_slope, numbers.Real) or not math.isfinite(self.negative_slope):
            raise ValueError(f"negative_slope={self.negative_slope!r} must be a finite number")
        self._check_derivative()
        self._check_algorithm()
        if self.groups < 1 or self.in_channels % self.groups:
            raise ValueError(
                f"groups={self.groups}: in_channels={self.in_channels} must be divisible by groups"
            )
        if self.out_channels % self.groups:
            raise ValueError(
                f"groups={self.groups}: out_channels={self.out_channels} (the weight's output "
                "channels) must be divisible by groups"
            )
        for i, k, d, pb, pa in zip(self.in_size, self.kernel, self.dilation,
                                   self.pad_before, self.pad_after):
            if d * (k - 1) + 1 > i + pb + pa:
                raise ValueError(
                    f"kernel size {self.kernel} with dilation {self.dilation} spans more than the "
                    f"padded input: input size {self.in_size}, padding {self.pad_before}/{self.pad_after}"
                )
        self.check_winograd()


    def _check_derivative(self) -> None:
        """derivative_from needs an activation, and "output" one whose derivative its output
        determines (FROM_OUTPUT; leaky_relu only with a slope >= 0, else y > 0 no longer means
        x > 0)."""
        if self.derivative_from is None:
            return
        if self.derivative_from not in DERIVATIVE_FROM:
            raise ValueError(f"derivative_from={self.derivative_from!r} is not valid: expected None "
                             f"or one of {DERIVATIVE_FROM}")
        if self.activation is None:
            raise ValueError(f"derivative_from={self.derivative_from!r} needs an activation: "
                             "activation=None has no derivative to apply")
        if self.derivative_from == "output" and (
                self.activation not in FROM_OUTPUT
                or (self.activation == "leaky_relu" and self.negative_slope < 0)):
            what = (f"leaky_relu with negative_slope={self.negative_slope!r}"
                    if self.activation == "leaky_relu" else repr(self.activation))
            raise ValueError(
                f"activation={what} cannot take its derivative from its output: expected the "
                f"pre-activation (pre_activation=); from the output only {FROM_OUTPUT} "
                "(leaky_relu with a slope >= 0)")

    def _check_algorithm(self) -> None:
        check_algorithm(self.algorithm)
        if not _is_int(self.winograd_m) or self.winograd_m not in (0, *WINOGRAD_TILES):
            raise ValueError(f"winograd_m={self.winograd_m!r} is not a Winograd tile: expected 0 "
                             f"(chosen per layer) or one of {WINOGRAD_TILES}")
        if self.winograd_m and self.algorithm != "winograd":
            raise ValueError(f"winograd_m={self.winograd_m} needs algorithm='winograd', got "
                             f"algorithm={self.algorithm!r}")

    def check_winograd(self) -> None:
        """algorithm="winograd" on a layer Winograd cannot compute: ValueError saying why."""
        if self.algorithm == "winograd":
            reason = winograd_limits(self)
            if reason is not None:
                raise ValueError(f"algorithm='winograd' cannot compute this layer: {reason}")

    def _check_ring(self) -> None:
        """PyTorch's limits on the ring a padding mode takes from the input (F.pad): reflect
        mirrors without the edge, so padding < input size; circular wraps once, so padding <=
        input size."""
        if self.padding_mode not in ("reflect", "circular"):
            return
        for axis, (i, pb, pa) in enumerate(zip(self.in_size, self.pad_before, self.pad_after)):
            if self.padding_mode == "reflect" and max(pb, pa) >= i:
                raise ValueError(
                    f"padding_mode='reflect' needs padding < the input size on every axis: padding "
                    f"{self.pad_before}/{self.pad_after} on input size {self.in_size} (axis {axis})")
            if self.padding_mode == "circular" and max(pb, pa) > i:
                raise ValueError(
                    f"padding_mode='circular' needs padding <= the input size on every axis: "
                    f"padding {self.pad_before}/{self.pad_after} on input size {self.in_size} "
                    f"(axis {axis})")


def split_input(input_shape, layout):
    """-> (ndim, layout, batch, channels, in_size) of a batched input shape; layout None is the
    default of its rank."""
    input_shape = _shape(input_shape, "input_shape")
    ndim = len(input_shape) - 2
    if ndim not in LAYOUTS:
        raise ValueError(f"input_shape={input_shape} has rank {len(input_shape)}: expected 3, 4 "
                         "or 5 (batch, channels and 1 to 3 spatial dimensions)")
    layout = check_layout(layout or default_layout(ndim), ndim)
    if layout[-1] == "C":
        batch, *in_size, channels = input_shape
    else:
        batch, channels, *in_size = input_shape
    return ndim, layout, batch, channels, tuple(in_size)


def _shape(shape, name) -> tuple:
    if isinstance(shape, str) or not isinstance(shape, Sequence):
        try:
            shape = tuple(shape)
        except TypeError:
            raise TypeError(f"{name}={shape!r} is not a shape: expected a tuple of ints") from None
    if not all(_is_int(v) for v in shape):
        raise TypeError(f"{name}={tuple(shape)!r} is not a shape: expected a tuple of ints")
    if any(v < 0 for v in shape):
        raise ValueError(f"{name}={tuple(shape)!r} has a negative dimension")
    return tuple(int(v) for v in shape)
