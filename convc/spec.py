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
# How the ring around the input is filled: PyTorch's nn.ConvNd(padding_mode=...) names.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# Activations the forward epilogue applies last (PyTorch's names; gelu_tanh is
# F.gelu(approximate="tanh")).
ACTIVATIONS = ("relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh", "hardswish", "sigmoid")


def default_layout(ndim: int) -> str:
    return LAYOUTS[ndim][0]


def check_layout(layout, ndim: int, name: str = "layout") -> str:
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS[ndim]:
        raise ValueError(
            f"{name}={layout!r} is not a {ndim}-D layout: expected one of {LAYOUTS[ndim]}"
        )
    return layout.upper()


def check_op(op) -> str:
    if op not in OPS:
        raise ValueError(f"op={op!r} is not a convc kernel: expected one of {OPS}")
    return op


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
                + (f"{self.negative_slope!r}" if self.activation == "leaky_relu" else ""))

    @property
    def fused(self) -> bool:
        """The forward epilogue does more than add a bias and cast."""
        return self.scale_shift or self.residual or self.activation is not None

    @property
    def ring_padded(self) -> bool:
        """The padding ring is filled from the input (a padding mode other than zeros, and some
        padding): the adjoints then fold the ring back onto the positions it came from."""
        return self.padding_mode != "zeros" and any(self.pad_before + self.pad_after)

    def with_batch(self, batch: int) -> "ConvSpec":
        return dataclasses.replace(self, batch=batch)

    # --- construction from user arguments ------------------------------------------------------
    @classmethod
    def from_shapes(cls, input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *,
                    layout=None, dtype="float32", bias=False,
                    padding_mode="zeros", scale_shift=False, residual=False,
                    activation=None) -> "ConvSpec":
        """Build a spec from a batched input shape and a weight shape in `layout`'s convention."""
        input_shape = _shape(input_shape, "input_shape")
        weight_shape = _shape(weight_shape, "weight_shape")
        ndim = len(input_shape) - 2
        if ndim not in LAYOUTS:
            raise ValueError(
                f"input_shape={input_shape} has rank {len(input_shape)}: expected 3, 4 or 5 "
                "(batch, channels and 1 to 3 spatial dimensions)"
            )
        layout = check_layout(layout or default_layout(ndim), ndim)
        if len(weight_shape) != ndim + 2:
            raise ValueError(
                f"weight_shape={weight_shape} has rank {len(weight_shape)}: expected {ndim + 2} "
                f"({WEIGHT_LAYOUTS[layout]}) for a {ndim}-D convolution"
            )
        channels_last = layout[-1] == "C"
        if channels_last:
            batch, *in_size, in_channels = input_shape
            *kernel, cg, out_channels = weight_shape
        else:
            batch, in_channels, *in_size = input_shape
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
                   residual=bool(residual), activation=activation, negative_slope=slope)

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
        if any(p < 0 for p in self.pad_before + self.pad_after):
            raise ValueError(f"padding={self.pad_before}/{self.pad_after} must be non-negative")
        check_padding_mode(self.padding_mode)
        self._check_ring()
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not an activation: expected None "
                             f"or one of {ACTIVATIONS}")
        if not isinstance(self.negative_slope, numbers.Real) or not math.isfinite(self.negative_slope):
            raise ValueError(f"negative_slope={self.negative_slope!r} must be a finite number")
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
