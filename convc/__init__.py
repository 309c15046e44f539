"""convc: convolution and its two adjoints, compiled by TVM for CPUs and NVIDIA GPUs.

    import convc
    y  = convc.conv2d(x, w, b, stride=2, padding=1)             # torch.nn.functional.conv2d
    dx = convc.conv2d_grad_input(x.shape, w, dy, stride=2, padding=1)   # torch.nn.grad.conv2d_input
    dw = convc.conv2d_grad_weight(x, w.shape, dy, stride=2, padding=1)  # torch.nn.grad.conv2d_weight

    spec = convc.ConvSpec.from_shapes((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    kernel = convc.compile(spec, "grad_weight")       # a Kernel: callable, .tir, .source, .how
    y  = convc.conv_transpose2d(x, w, b, stride=2, output_padding=1)   # F.conv_transpose2d

    y, idx = convc.max_pool2d(x, 3, 2, 1, return_indices=True)   # torch.nn.functional.max_pool2d
    dx = convc.max_pool2d_grad_input(x, dy, 3, 2, 1)             # and avg/adaptive_avg, 1-D to 3-D
"""

import os as _os

# PyTorch's OpenMP threads (libgomp) spin 300,000 times after each parallel region by default.
# In a model that alternates PyTorch ops (batch norm, ReLU, pooling) with convc kernels
# (convc.torch), those spinning threads hold both cores while TVM's pool runs the next conv: a
# ResNet-18 training step (batch 8, 112x112, 2 cores) took 342-460 ms with convc's layers against
# PyTorch's 108-121 ms, and 115-120 ms with 10,000 spins, PyTorch's own step unchanged (108-121 ms).
# libgomp reads this when it loads, i.e. when torch is first imported (tvm-ffi imports it, below):
# it applies when convc is imported first, else set GOMP_SPINCOUNT=10000 in the environment.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from .version import __version__

# TVM 0.27 sizes its thread pool to half the logical CPUs on x86 (one thread on a 2-vCPU machine)
# and reads the size once, when the first parallel kernel runs: ask for every core we may use.
if "TVM_NUM_THREADS" not in _os.environ and "OMP_NUM_THREADS" not in _os.environ:
    from .target import host_cores as _host_cores

    _os.environ["TVM_NUM_THREADS"] = str(_host_cores())

# After each parallel kernel TVM's workers keep polling for the next one with sched_yield,
# 300,000 times by default (~0.1 s). In a process that also runs PyTorch (convc's users), those
# threads hold the cores while oneDNN's OpenMP team works: PyTorch's c3 3x3 fell from ~240 to
# 8-35 GFLOP/s right after a convc call. 10,000 polls (a few ms) still catch back-to-back calls.
_os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "10000")

from .api import (conv1d, conv1d_grad_bias, conv1d_grad_input, conv1d_grad_weight, conv2d,
                  conv2d_grad_bias, conv2d_grad_input, conv2d_grad_weight, conv3d,
                  conv3d_grad_bias, conv3d_grad_input, conv3d_grad_weight)
from .api_transpose import (conv_transpose1d, conv_transpose1d_grad_input,
                            conv_transpose1d_grad_weight, conv_transpose2d,
                            conv_transpose2d_grad_input, conv_transpose2d_grad_weight,
                            conv_transpose3d, conv_transpose3d_grad_input,
                            conv_transpose3d_grad_weight)
from .batch_norm import fold_batch_norm
from .export import export_library, load
from .kernel import Kernel, compile
from .pool_api import (adaptive_avg_pool1d, adaptive_avg_pool1d_grad_input, adaptive_avg_pool2d,
                       adaptive_avg_pool2d_grad_input, adaptive_avg_pool3d,
                       adaptive_avg_pool3d_grad_input, avg_pool1d, avg_pool1d_grad_input,
                       avg_pool2d, avg_pool2d_grad_input, avg_pool3d, avg_pool3d_grad_input,
                       max_pool1d, max_pool1d_grad_input, max_pool2d, max_pool2d_grad_input,
                       max_pool3d, max_pool3d_grad_input)
from .pool_spec import PoolSpec
from .spec import ConvSpec
from .tuning import tune

__all__ = [
    "ConvSpec", "Kernel", "compile", "export_library", "load", "tune",
    "conv1d", "conv2d", "conv3d",
    "conv1d_grad_input", "conv2d_grad_input", "conv3d_grad_input",
    "conv1d_grad_weight", "conv2d_grad_weight", "conv3d_grad_weight",
    "conv1d_grad_bias", "conv2d_grad_bias", "conv3d_grad_bias", "fold_batch_norm",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "conv_transpose1d_grad_input", "conv_transpose2d_grad_input", "conv_transpose3d_grad_input",
    "conv_transpose1d_grad_weight", "conv_transpose2d_grad_weight", "conv_transpose3d_grad_weight",
    "PoolSpec",
    "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_grad_input", "max_pool2d_grad_input", "max_pool3d_grad_input",
    "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "avg_pool1d_grad_input", "avg_pool2d_grad_input", "avg_pool3d_grad_input",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_avg_pool1d_grad_input", "adaptive_avg_pool2d_grad_input",
    "adaptive_avg_pool3d_grad_input",
]
