"""The CUDA rule for pooling without a GPU, as tests/test_cuda.py does for convolution: the
scheduled GPU kernels' semantics run on the CPU (serialized, NaN guard zones around every
argument) against the NumPy references, nvcc compiles every kernel (no spills, within the
target's limits), and a pooling library embeds device code. On a GPU (marked `gpu`): the
kernels themselves."""

from __future__ import annotations

import re

import numpy as np
import pytest

import convc
from convc.build import cuda
from convc.build.cuda.library import embedded_device_code, merge
from convc.check import TOLERANCE
from convc.check_pool import check_kernel, error, kernel_inputs, operands, reference
from convc.pool_spec import PoolSpec
from test_cuda import SM80, SM90, _nvcc_or_skip, compile_batch, run_guarded, scheduled
from test_pool import FAMILIES, pool_spec

# Every workload of test_pool once, layouts alternating; float16 and float64 on a few.
GRID = []
for _table in FAMILIES.values():
    for _name, (_pool, _shape, _kwargs) in _table.items():
        _spec = pool_spec(_pool, _shape, _kwargs, channels_last=len(GRID) % 2 == 1)
        GRID.append((f"{_name}-{_spec.layout}", _spec))
GRID += [(f"resnet-{dtype}", PoolSpec.max_pool((1, 9, 8, 20), 3, 2, 1, layout="NHWC",
                                                dtype=dtype)) for dtype in ("float16", "float64")]
GRID += [("avg-float16", PoolSpec.avg_pool((1, 5, 9, 8), 3, 2, 1, True, False, dtype="float16"))]


def check_serialized(spec: PoolSpec, target=SM90, ops=None):
    """All kernels of `spec` (or `ops`), scheduled for the GPU, serialized into one CPU module,
    each against the reference on guarded arguments (a stray read or write shows)."""
    ops = ops or spec.ops
    mods = {}
    for op in ops:
        mods[op], how = scheduled(spec, op, target)
        assert how == "hand-written", f"{op} {spec.key}: the GPU rule declined ({how})"
    cpu = cuda.build_serial(merge(mods))
    data = operands(spec)
    for op in ops:
        args = kernel_inputs(spec, op, data)
        outputs = spec.signature(op)[len(args):]
        got = run_guarded(cpu[op], args, [(shape, dtype) for _, shape, dtype in outputs])
        expected = reference(spec, op, **data)
        if op == "forward_indices":
            assert np.array_equal(got[1], expected[1]), f"{op} {spec.key}: indices"
            got, expected = got[0], expected[0]
        else:
            got = got[0]
        assert error(got, expected) <= TOLERANCE[spec.dtype], f"serialized GPU {op} {spec.key}"


@pytest.mark.parametrize("spec", [pytest.param(s, id=i) for i, s in GRID])
def test_serialized_pool_schedule_matches_reference(spec):
    check_serialized(spec)


def test_serialized_gather_indices_matches_reference():
    """Max pooling's gather at saved indices (compiled on demand: not in spec.ops), both layouts."""
    for last in (False, True):
        check_serialized(pool_spec("max", (1, 5, 10, 11), dict(kernel_size=3, stride=2, padding=1,
                                                               ceil_mode=True), last),
                         ops=("gather_indices",))


def test_layer_suite_serialized_matches_reference():
    """The bench's ResNet max pool and global average pool, full size, batch 1."""
    check_serialized(PoolSpec.max_pool((1, 112, 112, 64), 3, 2, 1, layout="NHWC"))
    check_serialized(PoolSpec.adaptive_avg_pool((1, 2048, 7, 7), 1))


def test_pool_rule_declines_convolutions():
    from convc.ops import declare
    from convc.schedules.cuda import pool
    from convc.spec import ConvSpec
    from convc.target import resolve

    conv = declare(ConvSpec.from_shapes((1, 3, 8, 8), (4, 3, 3, 3)), "forward")
    assert pool.rule(conv, resolve("cuda")) is None
    func = declare(PoolSpec.max_pool((1, 3, 8, 8), 2), "forward")
    assert pool.rule(func, resolve("llvm")) is None and pool.rule(func, resolve("cuda"))


@pytest.mark.parametrize("target", [pytest.param(SM90, id="sm_90"),
                                    pytest.param(SM80, id="sm_80", marks=pytest.mark.slow)])
def test_pool_kernels_compile_to_device_code(target):
    """nvcc -cubin of every pooling kernel of the grid: no spills, within the launch limits
    (compile_batch applies check_limits). sm_80 (25 s) runs with -m slow."""
    _nvcc_or_skip()
    entries = {re.sub(r"\W", "_", f"p_{name}_{op}"): scheduled(spec, op, target)[0]
               for name, spec in GRID for op in spec.ops}
    reports = compile_batch(entries, target)
    assert all(r.threads <= 256 for r in reports)


def test_pool_library_carries_device_code(tmp_path):
    _nvcc_or_skip()
    spec = PoolSpec.max_pool((2, 8, 12, 12), 3, 2, 1)
    path = convc.export_library(spec, tmp_path / "pool.so", target="cuda")
    assert set(embedded_device_code(path)) == {90}
    library = convc.load(path)
    assert set(library) == set(spec.ops)
    assert library["forward_indices"].outputs == 2


@pytest.mark.gpu
@pytest.mark.parametrize("spec", [pytest.param(s, id=i) for i, s in GRID[::2]])
def test_gpu_pool_kernels_match_reference(spec):
    data = operands(spec)
    for op in spec.ops:
        assert check_kernel(convc.compile(spec, op, target="cuda"), data) <= \
            TOLERANCE[spec.dtype]
