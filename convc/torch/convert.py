"""convert(model): torch.nn layers -> convc's, in place; fuse(model): conv -> batch norm
(-> activation, -> residual add) -> one fused convc module, for inference.

convert swaps the class of each supported module (convc's modules subclass torch's and add no
state), so parameters, buffers, hooks and an optimizer already holding the parameters stay as they
are. What it cannot run it leaves, with the reason. A new convc module is registered by adding its
torch class to REPLACEMENTS (and removing it from NOT_YET).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from ..batch_norm import fold_batch_norm
from .modules import ACTIVATIONS, CONV, DTYPES, FUSED, TRANSPOSED
from .pool_modules import POOLS

# torch class -> convc class (convert).
REPLACEMENTS: dict = {**CONV, **TRANSPOSED, **POOLS}
# torch classes convc will replace once their ops land -> what is missing (none at present).
NOT_YET: dict = {}


@dataclasses.dataclass
class Report:
    """What convert/fuse did: `replaced` [(qualified name, what it became)], `left` [(qualified
    name, module class, reason)]."""

    replaced: list = dataclasses.field(default_factory=list)
    left: list = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)}:"]
        lines += [f"  {name or '(model)'}: {what}" for name, what in self.replaced]
        lines.append(f"left {len(self.left)}:")
        lines += [f"  {name or '(model)'} ({kind}): {reason}" for name, kind, reason in self.left]
        return "\n".join(lines)


def _why_not(module) -> str | None:
    """None when convc can run `module`, else the reason."""
    for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if isinstance(tensor, nn.parameter.UninitializedParameter):
            return "lazy module not initialized yet (run one forward first)"
        if tensor.device.type != "cpu":
            return f"on {tensor.device}: convc's PyTorch ops run on the CPU"
        if tensor.dtype not in DTYPES:
            return f"dtype {tensor.dtype}: convc computes float16, float32 and float64"
    return None


def convert(model: nn.Module) -> Report:
    """Replace every supported module of `model` (the model itself included) by convc's, in
    place; -> a Report of what was replaced and what was left, with the reason."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model of type {type(model).__name__} is not a torch.nn.Module")
    report = Report()
    for name, module in model.named_modules():
        kind = type(module)
        if kind in REPLACEMENTS:
            reason = _why_not(module)
            if reason is None:
                module.__class__ = REPLACEMENTS[kind]
                if kind in POOLS:  # arguments convc's pooling cannot take: put it back
                    reason = module.why_not()
                    if reason is not None:
                        module.__class__ = kind
            if reason is None:
                report.replaced.append((name, f"convc.torch.{REPLACEMENTS[kind].__name__}"))
            else:
                report.left.append((name, kind.__name__, reason))
        elif kind in NOT_YET:
            report.left.append((name, kind.__name__, NOT_YET[kind]))
        elif isinstance(module, nn.modules.conv._ConvNd) and kind not in FUSED.values() \
                and kind not in REPLACEMENTS.values():
            report.left.append((name, kind.__name__, "a class convc does not replace (a subclass "
                                "of a torch convolution, or a kind convc has no module for)"))
    return report


# --- fuse ------------------------------------------------------------------------------------

def _fused(conv, bn, activation=None):
    """A new FusedConvNd computing activation(bn(conv(x)) [+ residual]): bn folded into the
    weight and bias (convc.fold_batch_norm), the activation in the kernel's epilogue."""
    fused_class = FUSED[type(conv)]
    weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
    if bn is not None:
        ones = torch.ones_like(bn.running_mean)
        gamma = ones if bn.weight is None else bn.weight.detach()
        beta = torch.zeros_like(ones) if bn.bias is None else bn.bias.detach()
        weight, bias = fold_batch_norm(weight, bias, bn.running_mean, bn.running_var, gamma, beta,
                                       bn.eps)
    new = fused_class.__new__(fused_class)
    new.__dict__.update({k: (copy.copy(v) if isinstance(v, dict) else v)
                         for k, v in conv.__dict__.items()})
    new.__dict__.pop("_convc_packed", None)
    new.weight = nn.Parameter(weight.clone(), requires_grad=False)
    new.bias = None if bias is None else nn.Parameter(bias.clone(), requires_grad=False)
    if isinstance(activation, nn.LeakyReLU):
        new.activation, new.negative_slope = "leaky_relu", float(activation.negative_slope)
    elif isinstance(activation, nn.GELU):
        new.activation = "gelu_tanh" if activation.approximate == "tanh" else "gelu"
    elif activation is not None:
        new.activation = ACTIVATIONS[type(activation)]
    return new


def _activation(module):
    return module if type(module) in ACTIVATIONS else None


def _fusable(conv, bn) -> bool:
    return (type(conv) in FUSED and isinstance(bn, nn.modules.batchnorm._BatchNorm)
            and bn.track_running_stats and bn.running_mean is not None
            and bn.num_features == conv.out_channels and _why_not(conv) is None)


def _fuse_sequential(seq: nn.Sequential, prefix: str, report: Report) -> None:
    """conv, bn[, activation] runs of a Sequential: the conv becomes fused, the others Identity."""
    names = list(seq._modules)
    i = 0
    while i + 1 < len(names):
        conv, bn = seq._modules[names[i]], seq._modules[names[i + 1]]
        if not _fusable(conv, bn):
            i += 1
            continue
        act = _activation(seq._modules[names[i + 2]]) if i + 2 < len(names) else None
        seq._modules[names[i]] = _fused(conv, bn, act)
        seq._modules[names[i + 1]] = nn.Identity()
        what = f"{type(conv).__name__} + {type(bn).__name__}"
        if act is not None:
            seq._modules[names[i + 2]] = nn.Identity()
            what += f" + {type(act).__name__}"
        report.replaced.append((f"{prefix}{names[i]}", f"{what} -> convc.torch.{type(seq._modules[names[i]]).__name__}"))
        i += 3 if act is not None else 2


class FusedResidualBlock(nn.Module):
    """torchvision's BasicBlock / Bottleneck after fuse: every conv + BN (+ ReLU) one fused
    convc module, the last one also adding the identity (or the fused downsample) and applying
    the final ReLU in its epilogue."""

    def __init__(self, convs, downsample, kind: str):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.downsample = downsample
        self.kind = kind

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for conv in self.convs[:-1]:
            out = conv(out)
        return self.convs[-1](out, residual=identity)


class FusedInvertedResidual(nn.Module):
    """torchvision's MobileNetV2 InvertedResidual with a skip connection, after fuse: the last
    (projection) conv + BN adds the block's input in its epilogue."""

    def __init__(self, body, last):
        super().__init__()
        self.body, self.last = body, last

    def forward(self, x):
        return self.last(self.body(x), residual=x)


def _residual_block(module, prefix, report):
    """A fused replacement of a torchvision-style BasicBlock / Bottleneck, or None."""
    count = {"BasicBlock": 2, "Bottleneck": 3}.get(type(module).__name__)
    if count is None or not isinstance(getattr(module, "relu", None), nn.ReLU):
        return None
    pairs = [(getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None))
             for i in range(1, count + 1)]
    if not all(_fusable(c, b) for c, b in pairs):
        return None
    downsample = module.downsample
    if downsample is not None:
        if not isinstance(downsample, nn.Sequential):
            return None
        _fuse_sequential(downsample, f"{prefix}downsample.", report)
    relu = module.relu
    convs = [_fused(c, b, relu) for c, b in pairs]
    return FusedResidualBlock(convs, downsample, type(module).__name__)


def _inverted_residual(module, prefix, report):
    if type(module).__name__ != "InvertedResidual" or not getattr(module, "use_res_connect", False):
        return None
    body = getattr(module, "conv", None)
    if not isinstance(body, nn.Sequential) or len(body) < 2 or not _fusable(body[-2], body[-1]):
        return None
    last = _fused(body[-2], body[-1])
    rest = nn.Sequential(*list(body)[:-2])
    _fuse_children(rest, f"{prefix}conv.", report)
    return FusedInvertedResidual(rest, last)


def _fuse_stem(module, prefix, report) -> None:
    """torchvision's ResNet stem: conv1 -> bn1 -> relu, called by name in its forward."""
    if type(module).__name__ == "ResNet" and _fusable(getattr(module, "conv1", None),
                                                      getattr(module, "bn1", None)):
        module.conv1 = _fused(module.conv1, module.bn1, _activation(module.relu))
        report.replaced.append((f"{prefix}conv1", "Conv2d + BatchNorm2d + ReLU -> "
                                "convc.torch.FusedConv2d"))
        module.bn1, module.relu = nn.Identity(), nn.Identity()


def _fuse_children(module, prefix, report) -> None:
    _fuse_stem(module, prefix, report)
    if isinstance(module, nn.Sequential):
        _fuse_sequential(module, prefix, report)
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        here = f"{prefix}{name}."
        block = _residual_block(child, here, report) or _inverted_residual(child, here, report)
        if block is not None:
            module._modules[name] = block
            report.replaced.append((f"{prefix}{name}", f"{type(child).__name__} -> "
                                    f"convc.torch.{type(block).__name__}"))
        else:
            _fuse_children(child, here, report)


def fuse(model: nn.Module) -> Report:
    """Fold conv -> BatchNorm (-> activation) into fused convc modules, in place, for inference
    (`model` must be in eval mode: the running statistics are frozen into the weights).

    Found: conv, BN[, activation] in a Sequential (torchvision's Conv2dNormActivation too);
    torchvision-style BasicBlock / Bottleneck (every conv + BN + ReLU fused, the last adding the
    identity or the fused downsample before its ReLU); MobileNetV2's InvertedResidual with a
    skip (the projection conv adds the input); ResNet's stem. Then every remaining torch conv is
    converted (convert). -> a Report of both."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model of type {type(model).__name__} is not a torch.nn.Module")
    if model.training:
        raise ValueError("fuse(model) needs model.eval(): batch norm is folded with its running "
                         "statistics, which training mode would go on updating")
    report = Report()
    _fuse_children(model, "", report)
    converted = convert(model)
    report.replaced += converted.replaced
    report.left += converted.left
    return report
