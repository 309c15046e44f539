"""convc inside PyTorch (needs torch; the rest of convc does not import this package).

    import convc.torch
    model = torchvision.models.resnet18()
    report = convc.torch.convert(model)      # nn.Conv{1,2,3}d -> convc.torch.Conv{1,2,3}d, in place
                                             # (nn.ConvTranspose{1,2,3}d, MaxPool, AvgPool,
                                             # AdaptiveAvgPool likewise)
    print(report)                            # what was replaced, what was left and why
    loss = model(x).sum(); loss.backward()   # autograd through convc's adjoint kernels

    convc.torch.fuse(model.eval())           # conv -> BN (-> ReLU, -> residual add): one kernel

    ops.py       torch.ops.convc.conv / conv_grad_input / conv_grad_weight / conv_grad_bias,
                 conv_transpose / conv_transpose_grad_input / conv_transpose_grad_weight:
                 custom ops with fake kernels and autograd (double backward included)
    pool_ops.py  torch.ops.convc.max_pool / max_pool_with_indices / max_pool_grad_input /
                 max_pool_grad_input_indices / max_pool_gather, avg_pool / avg_pool_grad_input,
                 adaptive_avg_pool / adaptive_avg_pool_grad_input: the same for pooling
    layout.py    PyTorch memory formats <-> convc layouts, zero-copy
    modules.py   Conv1d/2d/3d, ConvTranspose1d/2d/3d (drop-in subclasses of torch's),
                 FusedConv1d/2d/3d
    pool_modules.py  MaxPool1d/2d/3d, AvgPool1d/2d/3d, AdaptiveAvgPool1d/2d/3d (drop-in)
    convert.py   convert(model), fuse(model) and their Report
    threads.py   convc's kernels on PyTorch's OpenMP team instead of TVM's pool (state())
"""

from .convert import NOT_YET, REPLACEMENTS, Report, convert, fuse
from .modules import (Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d,
                      FusedConv1d, FusedConv2d, FusedConv3d)
from .ops import CALLS, OPS
from .pool_modules import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d, AvgPool1d,
                           AvgPool2d, AvgPool3d, MaxPool1d, MaxPool2d, MaxPool3d)
from .pool_ops import POOL_OPS
from .threads import install as _install_threads
from .threads import state as thread_pool

_install_threads()

__all__ = ["CALLS", "NOT_YET", "OPS", "POOL_OPS", "REPLACEMENTS", "AdaptiveAvgPool1d",
           "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
           "MaxPool1d", "MaxPool2d", "MaxPool3d", "Conv1d", "Conv2d", "Conv3d",
           "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "FusedConv1d",
           "FusedConv2d", "FusedConv3d", "Report", "convert", "fuse", "thread_pool"]
