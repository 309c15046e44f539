"""Drop-in pooling modules: `convc.torch.MaxPool1d/2d/3d`, `AvgPool1d/2d/3d` and
`AdaptiveAvgPool1d/2d/3d` are torch.nn's, with convc's kernels (convc.torch.pool_ops).

They subclass torch's and change only `forward`: same constructor, repr and (empty) state_dict;
every argument (dilation, ceil_mode, return_indices, count_include_pad, divisor_override,
output_size with None); unbatched inputs; channels_last inputs run the channels-last kernels on
their own memory and give channels_last outputs. Off the CPU or in a dtype other than
float16/32/64 they run PyTorch's own pooling; arguments convc cannot take raise the ValueError /
TypeError of convc.PoolSpec (`why_not` says so before the first call, for convert's report).
Calls as the convolution modules make them: the custom op inside torch.compile / torch.export,
the op's autograd without the dispatcher in eager mode, the kernel alone when nothing is recorded.
"""

from __future__ import annotations

from torch import nn

from ..pool_spec import PoolSpec
from ..spec import expand
from .modules import DTYPES, call_for
from .pool_ops import (EAGER, adaptive_avg_pool, adaptive_avg_pool_impl, avg_pool, avg_pool_impl,
                       max_pool, max_pool_impl, max_pool_with_indices,
                       max_pool_with_indices_impl)

CALLS = {  # op name -> (custom op, eager with autograd, kernel alone)
    "max_pool": (max_pool, EAGER["max_pool"], max_pool_impl),
    "max_pool_with_indices": (max_pool_with_indices, EAGER["max_pool_with_indices"],
                              max_pool_with_indices_impl),
    "avg_pool": (avg_pool, EAGER["avg_pool"], avg_pool_impl),
    "adaptive_avg_pool": (adaptive_avg_pool, EAGER["adaptive_avg_pool"], adaptive_avg_pool_impl),
}


class _ConvcPool:
    """What the pooling modules share (a mixin before torch's class in the bases)."""

    ndim: int

    def forward(self, input):
        if input.device.type != "cpu" or input.dtype not in DTYPES \
                or input.dim() not in (self.ndim + 1, self.ndim + 2):
            return super().forward(input)               # torch's (and its errors)
        unbatched = input.dim() == self.ndim + 1
        if unbatched:
            input = input.unsqueeze(0)
        name, args = self._convc_call(input)
        y = call_for(*CALLS[name], input)(input, *args)
        if unbatched:
            return tuple(t.squeeze(0) for t in y) if isinstance(y, tuple) else y.squeeze(0)
        return y

    def _convc_args(self) -> tuple:
        """The op's arguments after the input, worked out once per module (from torch's own
        attributes, so a converted module needs no setup) and checked by PoolSpec."""
        args = self.__dict__.get("_convc_cached_args")
        if args is None:
            args = self.__dict__["_convc_cached_args"] = self._resolve()
        return args

    def why_not(self) -> str | None:
        """None when convc's kernels take this module's arguments, else the reason."""
        try:
            self._convc_args()
        except (TypeError, ValueError) as err:
            return str(err)
        return None


def _window(module, ndim: int) -> tuple:
    """(kernel, stride, padding) as lists of `ndim` ints (stride None or empty: the kernel)."""
    kernel = expand(module.kernel_size, ndim, "kernel_size", 1)
    stride = module.stride
    stride = kernel if stride is None or stride == () or stride == [] else \
        expand(stride, ndim, "stride", 1)
    return list(kernel), list(stride), list(expand(module.padding, ndim, "padding", 0))


def _probe(kernel, stride, dilation) -> tuple:
    """A batched input shape every window of these arguments fits (PoolSpec checks the rest)."""
    return (1, 1, *[d * (k - 1) + 1 + s for k, s, d in zip(kernel, stride, dilation)])


class _ConvcMaxPool(_ConvcPool):
    def _resolve(self) -> tuple:
        kernel, stride, padding = _window(self, self.ndim)
        dilation = list(expand(self.dilation, self.ndim, "dilation", 1))
        PoolSpec.max_pool(_probe(kernel, stride, dilation), kernel, stride, padding, dilation,
                          self.ceil_mode)
        return kernel, stride, padding, dilation, bool(self.ceil_mode)

    def _convc_call(self, input):
        name = "max_pool_with_indices" if self.return_indices else "max_pool"
        return name, self._convc_args()


class _ConvcAvgPool(_ConvcPool):
    def _resolve(self) -> tuple:
        kernel, stride, padding = _window(self, self.ndim)
        divisor = getattr(self, "divisor_override", None)
        PoolSpec.avg_pool(_probe(kernel, stride, [1] * self.ndim), kernel, stride, padding,
                          self.ceil_mode, self.count_include_pad, divisor)
        return (kernel, stride, padding, bool(self.ceil_mode), bool(self.count_include_pad),
                None if divisor is None else int(divisor))

    def _convc_call(self, input):
        return "avg_pool", self._convc_args()


class _ConvcAdaptiveAvgPool(_ConvcPool):
    def _resolve(self) -> tuple:
        size = self.output_size
        PoolSpec.adaptive_avg_pool((1, 1, *[1] * self.ndim), size)     # checks it
        entries = tuple(size) if isinstance(size, (tuple, list)) else (size,)
        return (entries * self.ndim if len(entries) == 1 else entries,)

    def _convc_call(self, input):
        (entries,) = self._convc_args()
        return "adaptive_avg_pool", ([i if e is None else int(e)
                                      for e, i in zip(entries, input.shape[2:])],)


def _module(mixin, torch_class, ndim: int):
    return type(torch_class.__name__, (mixin, torch_class),
                {"ndim": ndim, "__doc__": torch_class.__doc__, "__module__": __name__})


MaxPool1d = _module(_ConvcMaxPool, nn.MaxPool1d, 1)
MaxPool2d = _module(_ConvcMaxPool, nn.MaxPool2d, 2)
MaxPool3d = _module(_ConvcMaxPool, nn.MaxPool3d, 3)
AvgPool1d = _module(_ConvcAvgPool, nn.AvgPool1d, 1)
AvgPool2d = _module(_ConvcAvgPool, nn.AvgPool2d, 2)
AvgPool3d = _module(_ConvcAvgPool, nn.AvgPool3d, 3)
AdaptiveAvgPool1d = _module(_ConvcAdaptiveAvgPool, nn.AdaptiveAvgPool1d, 1)
AdaptiveAvgPool2d = _module(_ConvcAdaptiveAvgPool, nn.AdaptiveAvgPool2d, 2)
AdaptiveAvgPool3d = _module(_ConvcAdaptiveAvgPool, nn.AdaptiveAvgPool3d, 3)

# torch.nn class -> the convc module that replaces it (convc.torch.convert).
POOLS = {nn.MaxPool1d: MaxPool1d, nn.MaxPool2d: MaxPool2d, nn.MaxPool3d: MaxPool3d,
         nn.AvgPool1d: AvgPool1d, nn.AvgPool2d: AvgPool2d, nn.AvgPool3d: AvgPool3d,
         nn.AdaptiveAvgPool1d: AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
         nn.AdaptiveAvgPool3d: AdaptiveAvgPool3d}
