"""convc: convolution and its two adjoints, compiled by TVM for CPUs and NVIDIA GPUs.

    import convc
    y  = convc.conv2d(x, w, b, stride=2, padding=1)             # torch.nn.functional.conv2d
    dx = convc.conv2d_grad_input(x.shape, w, dy, stride=2, padding=1)   # torch.nn.grad.conv2d_input
    dw = convc.conv2d_grad_weight(x, w.shape, dy, stride=2, padding=1)  # torch.nn.grad.conv2d_weight

    spec = convc.ConvSpec.from_shapes((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    kernel = convc.compile(spec, "grad_weight")       # a Kernel: callable, .tir, .source, .how
"""

__version__ = "0.1.0"

from .api import (conv1d, conv1d_grad_input, conv1d_grad_weight, conv2d, conv2d_grad_input,
                  conv2d_grad_weight, conv3d, conv3d_grad_input, conv3d_grad_weight)
from .build import compile
from .export import export_library, load
from .kernel import Kernel
from .spec import ConvSpec
from .tuning import tune

__all__ = [
    "ConvSpec", "Kernel", "compile", "export_library", "load", "tune",
    "conv1d", "conv2d", "conv3d",
    "conv1d_grad_input", "conv2d_grad_input", "conv3d_grad_input",
    "conv1d_grad_weight", "conv2d_grad_weight", "conv3d_grad_weight",
]
