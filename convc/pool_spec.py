"""PoolSpec: the one place where pooling arguments are normalized and validated.

Max, average and adaptive average pooling in 1 to 3 spatial dimensions, with PyTorch's rules
(torch.nn.functional.max_pool2d, avg_pool2d, adaptive_avg_pool2d and their 1-D and 3-D forms):

* stride defaults to kernel_size;
* output size floor((i + 2p - d(k-1) - 1) / s) + 1, or with ceil_mode the ceiling, where a last
  window that would start in the right padding is dropped;
* padding at most half the kernel (k // 2: PyTorch checks half the effective kernel d(k-1)+1
  and then half the kernel itself, which is the one that binds);
* every output size at least 1.

Errors name the parameter, the value and what was expected, before TVM sees anything.
"""

from __future__ import annotations

import dataclasses
import math

from .spec import (LAYOUTS, ConvSpec, SpecBase, _is_int, check_dtype, check_layout, expand,
                   split_input)

POOLS = ("max", "avg", "adaptive_avg")
# The kernels of each pooling, in the order the library lists them. max: forward (values),
# forward_indices (values and int64 indices, as return_indices=True), grad_input (from the input
# and dy: the argmax is found again), grad_input_indices (from dy and saved indices).
POOL_OPS = {
    "max": ("forward", "forward_indices", "grad_input", "grad_input_indices"),
    "avg": ("forward", "grad_input"),
    "adaptive_avg": ("forward", "grad_input"),
}
# Kernels compiled on demand beside those (convc.compile accepts them; a library exports POOL_OPS
# unless asked): max pooling's gather_indices, y = x at saved indices (zero where an index is
# outside its window): grad_input_indices' adjoint w.r.t. dy, what convc.torch's double backward
# of max pooling runs.
ADJOINT_OPS = {"max": ("gather_indices",)}
INDEX_DTYPE = "int64"  # PyTorch's indices: the flat position in the input's spatial plane
# Parameter names of each kernel, destination last (forward_indices has two outputs).
ARGUMENTS = {
    ("max", "forward"): ("x", "y"),
    ("max", "forward_indices"): ("x", "y", "indices"),
    ("max", "grad_input"): ("x", "dy", "dx"),
    ("max", "grad_input_indices"): ("dy", "indices", "dx"),
    ("max", "gather_indices"): ("x", "indices", "y"),
    ("avg", "forward"): ("x", "y"),
    ("avg", "grad_input"): ("dy", "dx"),
    ("adaptive_avg", "forward"): ("x", "y"),
    ("adaptive_avg", "grad_input"): ("dy", "dx"),
}
OUTPUTS = {"forward_indices": 2}  # outputs per kernel where not 1


def pooled_size(size: int, kernel: int, stride: int, padding: int, dilation: int,
                ceil_mode: bool) -> int:
    """PyTorch's pooling_output_shape for one axis (may be < 1: the caller rejects that)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start in the right padding
    return out


def adaptive_window(o: int, size: int, out: int) -> tuple[int, int]:
    """[start, end) of output `o` of an adaptive pool from `size` to `out` (PyTorch's
    start_index / end_index: floor(o * size / out), ceil((o + 1) * size / out))."""
    return (o * size) // out, -((-(o + 1) * size) // out)


def check_flag(value, name: str) -> bool:
    if isinstance(value, bool) or (_is_int(value) and value in (0, 1)):
        return bool(value)
    if type(value).__name__ == "bool_":  # numpy.bool_
        return bool(value)
    raise TypeError(f"{name}={value!r} is not valid: expected True or False")


@dataclasses.dataclass(frozen=True)
class PoolSpec(SpecBase):
    """One pooling layer: which pooling, shapes, hyper-parameters, layout and dtype. Always batched.

    `in_size` and, for max/avg, `kernel`, `stride`, `padding`, `dilation` have one entry per
    spatial dimension (avg: dilation all 1); adaptive_avg has `output_size` instead and empty
    window tuples. Activations are (N, C, *spatial) or, channels-last, (N, *spatial, C).
    """

    pool: str
    layout: str
    batch: int
    channels: int
    in_size: tuple
    kernel: tuple = ()
    stride: tuple = ()
    padding: tuple = ()
    dilation: tuple = ()
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None
    output_size: tuple = ()
    dtype: str = "float32"

    def __post_init__(self):
        self.validate()

    # --- derived -------------------------------------------------------------------------------
    @property
    def adaptive(self) -> bool:
        return self.pool == "adaptive_avg"

    @property
    def ops(self) -> tuple:
        return POOL_OPS[self.pool]

    @property
    def out_size(self) -> tuple:
        if self.adaptive:
            return self.output_size
        return tuple(pooled_size(i, k, s, p, d, self.ceil_mode) for i, k, s, p, d in
                     zip(self.in_size, self.kernel, self.stride, self.padding, self.dilation))

    def data_shape(self, size) -> tuple:
        size = tuple(size)
        return (self.batch, *size, self.channels) if self.channels_last else \
            (self.batch, self.channels, *size)

    @property
    def input_shape(self) -> tuple:
        return self.data_shape(self.in_size)

    @property
    def output_shape(self) -> tuple:
        return self.data_shape(self.out_size)

    @property
    def window(self) -> tuple:
        """The most input elements one window reads per axis."""
        if not self.adaptive:
            return self.kernel
        return tuple(max(e - s for s, e in (adaptive_window(o, i, out) for o in range(out)))
                     for i, out in zip(self.in_size, self.output_size))

    @property
    def flops(self) -> int:
        """Window elements read by the forward pass (one compare or add each)."""
        return self.batch * self.channels * math.prod(self.out_size) * math.prod(self.window)

    def check_op(self, op) -> str:
        known = self.ops + ADJOINT_OPS.get(self.pool, ())
        if op not in known:
            raise ValueError(f"op={op!r} is not a kernel of {self.pool} pooling: expected one of "
                             f"{known}")
        return op

    def signature(self, op: str) -> tuple:
        """The parameters of `op`'s function, in order: ((name, shape, dtype), ...), the
        outputs last (OUTPUTS[op] of them)."""
        x, y = self.input_shape, self.output_shape
        table = {"x": (x, self.dtype), "dx": (x, self.dtype), "y": (y, self.dtype),
                 "dy": (y, self.dtype), "indices": (y, INDEX_DTYPE)}
        return tuple((name, *table[name]) for name in ARGUMENTS[self.pool, self.check_op(op)])

    def bytes(self, op: str) -> int:
        """Bytes a kernel of `op` must read and write at least (each argument once)."""
        return sum(math.prod(shape) * _itemsize(dtype) for _, shape, dtype in self.signature(op))

    @property
    def key(self) -> str:
        """A stable, human-readable name of this workload (caches and tuning records)."""
        def t(v):
            return "x".join(str(i) for i in v)
        head = f"pool-{self.pool}_{self.layout}_{self.dtype}_n{self.batch}_c{self.channels}_i{t(self.in_size)}"
        if self.adaptive:
            return f"{head}_o{t(self.output_size)}"
        tail = f"_k{t(self.kernel)}_s{t(self.stride)}_p{t(self.padding)}"
        if self.pool == "max":
            tail += f"_d{t(self.dilation)}"
        else:
            tail += "_incpad" if self.count_include_pad else "_nopad"
            if self.divisor_override is not None:
                tail += f"_div{self.divisor_override}"
        return head + tail + ("_ceil" if self.ceil_mode else "")

    def with_batch(self, batch: int) -> "PoolSpec":
        return dataclasses.replace(self, batch=batch)

    # --- construction from user arguments (PyTorch's names and orders) --------------------------
    @classmethod
    def max_pool(cls, input_shape, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode=False, *, layout=None, dtype="float32") -> "PoolSpec":
        """As torch.nn.functional.max_pool{1,2,3}d, from a batched input shape."""
        ndim, layout, batch, channels, in_size = split_input(input_shape, layout)
        kernel, stride, padding = _window(ndim, kernel_size, stride, padding)
        dilation = expand(dilation, ndim, "dilation", 1)
        return cls("max", layout, batch, channels, in_size, kernel, stride, padding, dilation,
                   check_flag(ceil_mode, "ceil_mode"), dtype=check_dtype(dtype))

    @classmethod
    def avg_pool(cls, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None, *, layout=None,
                 dtype="float32") -> "PoolSpec":
        """As torch.nn.functional.avg_pool{1,2,3}d, from a batched input shape."""
        ndim, layout, batch, channels, in_size = split_input(input_shape, layout)
        kernel, stride, padding = _window(ndim, kernel_size, stride, padding)
        if divisor_override is not None and (not _is_int(divisor_override) or divisor_override == 0):
            kind = TypeError if not _is_int(divisor_override) else ValueError
            raise kind(f"divisor_override={divisor_override!r} is not valid: expected None or a "
                       "non-zero int")
        return cls("avg", layout, batch, channels, in_size, kernel, stride, padding, (1,) * ndim,
                   check_flag(ceil_mode, "ceil_mode"),
                   check_flag(count_include_pad, "count_include_pad"),
                   None if divisor_override is None else int(divisor_override),
                   dtype=check_dtype(dtype))

    @classmethod
    def adaptive_avg_pool(cls, input_shape, output_size, *, layout=None,
                          dtype="float32") -> "PoolSpec":
        """As torch.nn.functional.adaptive_avg_pool{1,2,3}d (None in output_size: the input's
        size on that axis), from a batched input shape."""
        ndim, layout, batch, channels, in_size = split_input(input_shape, layout)
        entries = (output_size,) * ndim if _is_int(output_size) or output_size is None \
            else output_size
        if isinstance(entries, str) or not hasattr(entries, "__len__"):
            raise TypeError(f"output_size={output_size!r} is not valid: expected an int or a "
                            f"tuple of {ndim} ints (or None)")
        entries = tuple(entries)
        if len(entries) == 1 and ndim > 1:
            entries = entries * ndim
        if len(entries) != ndim or not all(e is None or _is_int(e) for e in entries):
            raise ValueError(f"output_size={output_size!r} is not valid: expected an int or a "
                             f"tuple of {ndim} ints (or None)")
        out = tuple(i if e is None else int(e) for e, i in zip(entries, in_size))
        if any(o < 1 for o in out):
            raise ValueError(f"output_size={output_size!r} is not valid: every entry must be "
                             "positive")
        return cls("adaptive_avg", layout, batch, channels, in_size, output_size=out,
                   dtype=check_dtype(dtype))

    def validate(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r} is not a pooling: expected one of {POOLS}")
        ndim = len(self.in_size)
        if ndim not in LAYOUTS:
            raise ValueError(f"in_size={self.in_size} must have 1 to 3 entries")
        check_layout(self.layout, ndim)
        check_dtype(self.dtype)
        if self.batch < 0:
            raise ValueError(f"batch={self.batch} must be non-negative")
        if self.channels < 1:
            raise ValueError(f"channels={self.channels} must be positive")
        if any(i < 1 for i in self.in_size):
            raise ValueError(f"input spatial size {self.in_size} must be positive in every "
                             "dimension")
        if self.adaptive:
            if len(self.output_size) != ndim or any(o < 1 for o in self.output_size):
                raise ValueError(f"output_size={self.output_size} must be {ndim} positive ints")
            return
        for name in ("kernel", "stride", "padding", "dilation"):
            value = getattr(self, name)
            if len(value) != ndim:
                raise ValueError(f"{name}={value} must have {ndim} entries, like "
                                 f"in_size={self.in_size}")
            if any(v < (0 if name == "padding" else 1) for v in value):
                raise ValueError(f"{name}={value} must be "
                                 f"{'non-negative' if name == 'padding' else 'positive'}")
        if self.pool == "avg" and any(d != 1 for d in self.dilation):
            raise ValueError(f"dilation={self.dilation}: average pooling has no dilation")
        for k, p in zip(self.kernel, self.padding):
            if p > k // 2:
                raise ValueError(f"padding={self.padding} is not valid with kernel_size="
                                 f"{self.kernel}: padding must be at most half the kernel size "
                                 f"({tuple(k // 2 for k in self.kernel)})")
        out = self.out_size
        if any(o < 1 for o in out):
            raise ValueError(
                f"input size {self.in_size} is too small for kernel_size={self.kernel}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}"
                f"{', ceil_mode=True' if self.ceil_mode else ''}: the output size would be "
                f"{out}, expected at least 1 in every dimension")


def _window(ndim, kernel_size, stride, padding):
    kernel = expand(kernel_size, ndim, "kernel_size", 1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel  # PyTorch: stride defaults to kernel_size
    else:
        stride = expand(stride, ndim, "stride", 1)
    return kernel, stride, expand(padding, ndim, "padding", 0)


def _itemsize(dtype: str) -> int:
    return {"float16": 2, "float32": 4, "float64": 8, "int32": 4, "int64": 8}[dtype]


def is_pool(spec) -> bool:
    return isinstance(spec, PoolSpec)


def spec_from_dict(data: dict):
    """A ConvSpec or a PoolSpec from its to_dict() (a PoolSpec's has "pool")."""
    return (PoolSpec if "pool" in data else ConvSpec).from_dict(data)


__all__ = ["ADJOINT_OPS", "ARGUMENTS", "INDEX_DTYPE", "OUTPUTS", "POOLS", "POOL_OPS", "PoolSpec",
           "adaptive_window", "check_flag", "is_pool", "pooled_size", "spec_from_dict"]
