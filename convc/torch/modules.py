"""Drop-in modules: `convc.torch.Conv1d/Conv2d/Conv3d` and `ConvTranspose1d/2d/3d` are
torch.nn's, with convc's kernels.

They subclass torch.nn.Conv{1,2,3}d and change only `_conv_forward`: same constructor,
parameters, state_dict keys and repr; every padding_mode (convc fills the ring itself, no F.pad
copy); unbatched inputs; channels_last inputs run the channels-last kernel on their own memory
(the weight repacked once and reused while the weight's `_version` and storage are unchanged;
so are the kernels' own packs, convc.torch.packs: the blocked or flipped layout of the direct
schedules and Winograd's transformed filter, made on a weight version's second use).
Where convc has no kernel (a tensor off the CPU, a dtype other than float16/32/64) the module
runs PyTorch's own convolution instead.

`FusedConv{1,2,3}d` (made by convc.torch.fuse) compute activation(conv(x) + bias + residual) in
one kernel, batch norm folded into weight and bias.

`ConvTranspose{1,2,3}d` subclass torch.nn.ConvTranspose{1,2,3}d and change only `forward`:
`output_size` works as in torch (its own _output_padding picks the output_padding), unbatched
and channels_last inputs as above; the calls are torch.ops.convc.conv_transpose's.

Calls: inside torch.compile / torch.export the module calls the custom op torch.ops.convc.conv
(convc.torch.ops); in eager mode it calls the op's implementation directly, through the same
autograd (an autograd.Function with the op's backward) when a graph is recorded, skipping the
dispatcher and the custom-op wrapper's per-call cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import resolve_padding
from . import packs
from .layout import is_channels_last, pack_weight
from .ops import (conv, conv_eager, conv_impl, conv_transpose, conv_transpose_eager,
                  conv_transpose_impl, swaps_channels)

DTYPES = (torch.float32, torch.float64, torch.float16)
# Activations of the fused epilogue, by the torch module that computes them (convc's names).
ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.SiLU: "silu",
               nn.Hardswish: "hardswish", nn.Sigmoid: "sigmoid", nn.GELU: "gelu"}


def runs_on_convc(input: torch.Tensor, weight: torch.Tensor) -> bool:
    return (input.device.type == "cpu" and weight.device.type == "cpu"
            and input.dtype in DTYPES and weight.dtype is input.dtype)


class _PackedWeight:
    """The channels-last weight cache the convc modules share."""

    def _packed_weight(self, weight: torch.Tensor, last: bool, kernel_packs: bool = False):
        """The channels-last kernel's weight (*k, I/groups, O), repacked only when `weight`
        changed (a new tensor, new storage, or an in-place update: its _version). None for
        channels-first kernels and inside torch.compile (the op repacks in the graph).
        `kernel_packs`: the tensor also carries the kernel packs of this weight version
        (convc.torch.packs), and channels-first kernels get a detached alias of the weight to
        carry them."""
        if not (last or kernel_packs) or torch.compiler.is_compiling():
            return None
        key = (id(weight), weight._version, weight.data_ptr(), weight.dtype, last)
        cached = self.__dict__.get("_convc_packed")
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            packed = pack_weight(weight.detach(), True) if last else weight.detach()
        if kernel_packs:
            packs.attach(packed, weight)
        self.__dict__["_convc_packed"] = (key, packed)
        return packed


def _records_graph(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def call_for(op, eager, impl, *tensors):
    """What a module calls: the custom op inside torch.compile / torch.export (what they trace),
    in eager mode the op's autograd without the dispatcher's cost when a graph is recorded for
    `tensors`, else the kernel call itself."""
    if torch.compiler.is_compiling():
        return op
    return eager if _records_graph(*tensors) else impl


class _ConvcConv(_PackedWeight):
    """What the three convc modules share (a mixin before torch's class in the bases)."""

    def _convc_args(self) -> tuple:
        """(stride, padding as (before..., after...), dilation, groups, padding_mode), worked
        out once per module (from torch's own attributes, so a converted module needs no setup)."""
        args = self.__dict__.get("_convc_cached_args")
        if args is None:
            ndim = len(self.kernel_size)
            before, after = resolve_padding(self.padding, ndim, self.kernel_size, self.stride,
                                            self.dilation)
            args = (list(self.stride), [*before, *after], list(self.dilation), self.groups,
                    self.padding_mode)
            self.__dict__["_convc_cached_args"] = args
        return args

    def _convc(self, input, weight, bias, residual=None, activation="", negative_slope=0.01):
        ndim = len(self.kernel_size)
        unbatched = input.dim() == ndim + 1
        if unbatched:
            input = input.unsqueeze(0)
            residual = None if residual is None else residual.unsqueeze(0)
        last = is_channels_last(input)
        args = self._convc_args()
        if (bias is None and residual is None and not activation and _records_graph(input, weight)
                and swaps_channels(weight.shape, args[0], args[1], args[3], last,
                                   weight.dtype)):
            packed = None   # training a 1x1 channels-last layer: no repack (ops.swaps_channels)
        else:
            packed = self._packed_weight(weight, last, kernel_packs=True)
        call = call_for(conv, conv_eager, conv_impl, input, weight, bias, residual)
        y = call(input, weight, packed, bias, None, None, residual, *args, activation,
                 negative_slope)
        return y.squeeze(0) if unbatched else y

    def _conv_forward(self, input, weight, bias):
        if not runs_on_convc(input, weight):
            return super()._conv_forward(input, weight, bias)
        return self._convc(input, weight, bias)


class Conv1d(_ConvcConv, nn.Conv1d):
    __doc__ = nn.Conv1d.__doc__


class Conv2d(_ConvcConv, nn.Conv2d):
    __doc__ = nn.Conv2d.__doc__


class Conv3d(_ConvcConv, nn.Conv3d):
    __doc__ = nn.Conv3d.__doc__


class _ConvcConvTranspose(_PackedWeight):
    """What the three convc transposed modules share: torch's forward (output_size included,
    worked out by torch's own _output_padding) with convc's transposed kernels."""

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros" or not runs_on_convc(input, self.weight):
            return super().forward(input, output_size)      # torch's (and its errors)
        ndim = len(self.kernel_size)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, ndim, self.dilation)
        unbatched = input.dim() == ndim + 1
        if unbatched:
            input = input.unsqueeze(0)
        last = is_channels_last(input)
        packed = self._packed_weight(self.weight, last)
        call = call_for(conv_transpose, conv_transpose_eager, conv_transpose_impl, input,
                        self.weight, self.bias)
        y = call(input, self.weight, packed, self.bias, list(self.stride),
                 [*self.padding, *self.padding], list(output_padding), self.groups,
                 list(self.dilation))
        return y.squeeze(0) if unbatched else y


class ConvTranspose1d(_ConvcConvTranspose, nn.ConvTranspose1d):
    __doc__ = nn.ConvTranspose1d.__doc__


class ConvTranspose2d(_ConvcConvTranspose, nn.ConvTranspose2d):
    __doc__ = nn.ConvTranspose2d.__doc__


class ConvTranspose3d(_ConvcConvTranspose, nn.ConvTranspose3d):
    __doc__ = nn.ConvTranspose3d.__doc__


def _torch_activation(y, activation: str, negative_slope: float):
    """The epilogue's activation with PyTorch (the fallback path of the fused modules)."""
    if not activation:
        return y
    if activation == "leaky_relu":
        return F.leaky_relu(y, negative_slope)
    if activation == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    return {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "gelu": F.gelu,
            "hardswish": F.hardswish, "sigmoid": torch.sigmoid}[activation](y)


class _FusedConv(_ConvcConv):
    """activation(conv(x, weight) + bias + residual), one kernel (the activation applied in the
    convolution's write-back). `activation`: "" or a name of convc.spec.ACTIVATIONS."""

    activation: str = ""
    negative_slope: float = 0.01

    def forward(self, input, residual=None):
        if not runs_on_convc(input, self.weight):
            y = super()._conv_forward(input, self.weight, self.bias)
            y = y if residual is None else y + residual
            return _torch_activation(y, self.activation, self.negative_slope)
        return self._convc(input, self.weight, self.bias, residual, self.activation,
                           self.negative_slope)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.activation:
            text += f", activation={self.activation}"
            if self.activation == "leaky_relu":
                text += f", negative_slope={self.negative_slope}"
        return text


class FusedConv1d(_FusedConv, nn.Conv1d):
    pass


class FusedConv2d(_FusedConv, nn.Conv2d):
    pass


class FusedConv3d(_FusedConv, nn.Conv3d):
    pass


# torch.nn class -> the convc module that replaces it (convc.torch.convert), and the fused one.
CONV = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d}
TRANSPOSED = {nn.ConvTranspose1d: ConvTranspose1d, nn.ConvTranspose2d: ConvTranspose2d,
              nn.ConvTranspose3d: ConvTranspose3d}
FUSED = {nn.Conv1d: FusedConv1d, nn.Conv2d: FusedConv2d, nn.Conv3d: FusedConv3d,
         Conv1d: FusedConv1d, Conv2d: FusedConv2d, Conv3d: FusedConv3d}
