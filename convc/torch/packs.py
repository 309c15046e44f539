"""Kernel packs (convc.kernel.prepack) kept by the convc modules for one version of their weight.

A module's cached weight tensor (modules._PackedWeight: the channels-last repack, or for
channels-first kernels a detached alias of the weight) carries a KernelPacks as `_convc_packs`,
made afresh whenever the module sees a new weight (another tensor, new storage, or an in-place
update: `weight._version`). The op implementations (conv_impl, grad_input_impl) ask it for the
function and weight argument of their kernel:

* the pack is used only while the weight still has the version and storage it was made for
  (checked at every call, so a pack that autograd saved for a backward, or that outlived an
  optimizer step, is never served for a changed weight);
* a kernel is packed the second time it runs on one weight version (a training step changes the
  weight every time, so training never pays a pack or its compile; inference packs once);
* kernels whose pack is a plain copy (they read w as given) keep the unpacked call.

Inside torch.compile / torch.export the modules pass no cached tensor (the op's graph runs
unpacked), so nothing here is traced.
"""

from __future__ import annotations

import torch

ATTRIBUTE = "_convc_packs"
_KERNELS: dict = {}   # id(kernel.function) -> the Kernel (convc.torch.ops._compiled records it)


def remember(kernel) -> None:
    """Record the Kernel whose raw function an op implementation calls."""
    _KERNELS[id(kernel.function)] = kernel


class KernelPacks:
    """The packs of one weight version, by kernel."""

    def __init__(self, weight: torch.Tensor):
        self.version, self.data_ptr = weight._version, weight.data_ptr()
        self.uses: dict = {}
        self.packs: dict = {}

    def matches(self, weight: torch.Tensor) -> bool:
        return weight._version == self.version and weight.data_ptr() == self.data_ptr

    def pack(self, kernel, w):
        """The kernel's PackedWeight of `w` from its second use on, None before (or for a
        "copy" pack: not worth keeping)."""
        found = self.packs.get(kernel)
        if found is not None:
            return found or None
        self.uses[kernel] = self.uses.get(kernel, 0) + 1
        if self.uses[kernel] < 2:
            return None
        packed = kernel.prepack(w.detach())
        self.packs[kernel] = packed if packed.kind != "copy" else False
        return self.packs[kernel] or None


def attach(carrier: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`carrier` (the module's cached weight tensor) with packs for `weight`'s current version."""
    setattr(carrier, ATTRIBUTE, KernelPacks(weight))
    return carrier


def select(function, w, carrier, weight):
    """(function, weight argument) for a kernel call: its packed function and pack where the
    module's carrier holds a valid one (see the module docstring), else `function`, `w`."""
    packs = getattr(carrier, ATTRIBUTE, None) if carrier is not None else None
    if packs is None or not packs.matches(weight):
        return function, w
    kernel = _KERNELS.get(id(function))
    packed = packs.pack(kernel, w) if kernel is not None else None
    return (packed.function, packed.array) if packed is not None else (function, w)
