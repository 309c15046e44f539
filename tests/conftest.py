"""Shared test machinery: one helper that checks forward and both adjoints against the NumPy
references, tolerances by dtype (with their reasons), and a private kernel cache per run."""

from __future__ import annotations

import os
import tempfile

import pytest

# A fresh on-disk kernel cache for every test session: tests must not pass because of kernels a
# previous version of convc left behind. Set before convc is imported anywhere.
os.environ["CONVC_CACHE_DIR"] = tempfile.mkdtemp(prefix="convc-test-cache-")

import convc  # noqa: E402
from convc.spec import ConvSpec  # noqa: E402
from convc.check import TOLERANCE, kernel_inputs, reference, relative_error  # noqa: E402
from convc.check import operands as _operands  # noqa: E402


def assert_close(actual, expected, dtype, what):
    err = relative_error(actual, expected)
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.3g} > {TOLERANCE[dtype]} ({dtype})"


def operands(spec: ConvSpec, seed=0):
    data = _operands(spec, seed)
    return data["x"], data["w"], data["b"], data["dy"]


def references(spec: ConvSpec, x, w, b, dy, formulation="direct"):
    """The three results in spec's layout, computed by the NumPy references (float64)."""
    return tuple(reference(spec, op, x, w, b, dy, formulation)
                 for op in ("forward", "grad_input", "grad_weight"))


def check_spec(spec: ConvSpec, target=None, ops=("forward", "grad_input", "grad_weight"), seed=0):
    """Compile the ops of `spec` for `target` and compare each with the NumPy reference."""
    data = _operands(spec, seed)
    kernels = {}
    for op in ops:
        kernel = convc.compile(spec, op, target)
        kernels[op] = kernel
        got = kernel(*kernel_inputs(spec, op, data))
        assert_close(got, reference(spec, op, **data), spec.dtype, f"{op} {spec.key} [{kernel.how}]")
    return kernels


def make_spec(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *,
              layout=None, dtype="float32", bias=False, padding_mode="zeros"):
    return ConvSpec.from_shapes(input_shape, weight_shape, stride, padding, dilation, groups,
                                layout=layout, dtype=dtype, bias=bias, padding_mode=padding_mode)


# The layer the export tests ship: a bias, groups, stride and padding (every parameter of a
# manifest's argument lists varies), large enough that parallel loops split over several tasks.
EXPORT_SPEC_ARGS = dict(input_shape=(2, 8, 12, 12), weight_shape=(16, 4, 3, 3), stride=2,
                        padding=1, groups=2, bias=True)


def torch_or_skip():
    return pytest.importorskip("torch", reason="PyTorch (the optional 'torch' extra) is not installed")


def _has_gpu() -> bool:
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - no CUDA runtime, no driver: no GPU
        return False


def _slow_asked(config) -> bool:
    return "slow" in (config.getoption("markexpr") or "")


def pytest_configure(config):
    """Property tests draw 12 examples in the default suite and 30 under -m slow (set before the
    test modules are imported, so their @settings inherit it)."""
    from hypothesis import settings

    settings.register_profile("convc-default", max_examples=12)
    settings.register_profile("convc-slow", max_examples=30)
    settings.load_profile("convc-slow" if _slow_asked(config) else "convc-default")


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where an NVIDIA GPU is present; tests marked `slow` only when
    asked for with -m (e.g. `pytest -m slow`)."""
    if not _slow_asked(config):
        skip_slow = pytest.mark.skip(reason="slow: run with -m slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip_slow)
    if any("gpu" in item.keywords for item in items) and not _has_gpu():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none found)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
