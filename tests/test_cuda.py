"""CUDA without a GPU: what CPU-only CI can prove about convc's GPU kernels.

1. Semantics: every GPU schedule, serialized (thread loops -> serial loops, shared/local ->
   global, atomics -> plain adds; convc.build.cuda.serialize) and built for the CPU, matches the
   NumPy reference, with NaN guard zones around every argument (a read outside an input poisons the
   result, a write outside the output shows in its guard, an unwritten output element stays NaN):
   the test grid (both layouts, 1-D/2-D/3-D, remainders, groups, depthwise, float16/float64) and
   the ResNet/MobileNet layer suite of the CPU-schedules issue.
2. Device code: nvcc compiles every kernel of the grid and of the layer suite (sm_90 and sm_80);
   ptxas reports no spills; threads, registers and shared memory fit the target's limits.
3. Libraries: convc.compile(..., target="cuda") and export_cuda_library produce shared libraries
   that embed compiled device code (a cubin for the arch in .nv_fatbin, no CUDA source), load
   with tvm_ffi alone, and record ptxas figures; a missing nvcc is reported clearly.
4. On a GPU (marked `gpu`, skipped here): the real kernels against the reference.

Kernels are scheduled once per session (_scheduled) and compiled in batches (one nvcc run per
target): nvcc's host-side compile of a library costs ~7 s, its device-only compile ~0.2 s/kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
import pytest

import convc
from convc import check
from conftest import assert_close, check_spec, make_spec, operands
from convc.build import cuda, schedule
from convc.build.cuda.library import compile_device_code, embedded_device_code, merge
from convc.kernel import CudaKernel
from convc.spec import LAYOUTS, ConvSpec
from convc.target import resolve
from workloads import FAMILIES

OPS = ("forward", "grad_input", "grad_weight")
SM90 = {"kind": "cuda", "arch": "sm_90"}
SM80 = {"kind": "cuda", "arch": "sm_80"}


def _nvcc_or_skip():
    try:
        cuda.find_nvcc()
    except cuda.NvccNotFound:
        pytest.skip("nvcc (the CUDA toolkit) is not installed")


# --- workloads --------------------------------------------------------------------------------

def grid_specs():
    """Every workload of tests/workloads.py once, layouts alternating (channels-first, then
    channels-last) so both layout families cover every family; bias on every third."""
    specs = []
    for table in FAMILIES.values():
        for name, (xs, ws, s, p, d, g) in table.items():
            i = len(specs)
            if i % 2:
                n, c, *sp = xs
                o, ci, *k = ws
                spec = make_spec((n, *sp, c), (*k, ci, o), s, p, d, g,
                                 layout=LAYOUTS[len(xs) - 2][1], bias=i % 3 == 0)
            else:
                spec = make_spec(xs, ws, s, p, d, g, bias=i % 3 == 0)
            specs.append((f"{name}-{spec.layout}", spec))
    return specs


GRID = grid_specs()
# Other dtypes: float16 (float32 accumulation, cast epilogue, no split-K) and float64 (8-byte
# accumulators: half the register tile).
DTYPE_GRID = [
    (f"{name}-{dtype}", dataclasses.replace(spec, dtype=dtype))
    for dtype in ("float16", "float64")
    for name, spec in GRID if name.split("-")[0] in ("resnet_3x3_s2", "depthwise", "1d_basic",
                                                     "3d_strided_grouped")
]

# The layer suite of the CPU-schedules issue, from the benchmark that runs it.
from convc.bench import LAYERS, layer_spec  # noqa: E402


@functools.lru_cache(maxsize=None)
def _scheduled(spec: ConvSpec, op: str, target_json: str):
    mod, how = schedule(spec, op, resolve(target_json))
    return mod, how


def scheduled(spec, op, target=SM90):
    import json

    return _scheduled(spec, op, json.dumps(target, sort_keys=True))


def symbol(name: str, op: str) -> str:
    return re.sub(r"\W", "_", f"k_{name}_{op}")


# --- 1. semantics on the CPU ------------------------------------------------------------------

GUARD = 256  # elements on each side of every argument: NaN for floats, FILL for integers
FILL = -7     # an index no kernel writes


def _filler(dtype):
    return np.nan if np.dtype(dtype).kind == "f" else FILL


def guarded(array: np.ndarray):
    """(backing buffer, view): `array`'s values in a view with GUARD fillers on each side."""
    backing = np.full(array.size + 2 * GUARD, _filler(array.dtype), array.dtype)
    view = backing[GUARD:GUARD + array.size].reshape(array.shape)
    view[...] = array
    return backing, view


def _intact(backing: np.ndarray) -> bool:
    ends = np.concatenate([backing[:GUARD], backing[-GUARD:]])
    return bool(np.isnan(ends).all() if ends.dtype.kind == "f" else (ends == FILL).all())


def run_guarded(function, inputs, outputs):
    """Call `function(*inputs, *outs)` on guarded copies, `outputs` a list of (shape, dtype);
    -> outs. Fails if a guard was written."""
    buffers = [guarded(np.asarray(a)) for a in inputs]
    outs = [guarded(np.full(shape, _filler(dtype), dtype)) for shape, dtype in outputs]
    function(*[view for _, view in buffers], *[view for _, view in outs])
    assert all(_intact(backing) for backing, _ in [*buffers, *outs]), \
        "the kernel wrote outside its arguments"
    return [view for _, view in outs]


def check_serialized(spec: ConvSpec, target=SM90, seed=0, ops=OPS):
    """Build the serialized GPU schedules of `spec` (the three ops, or `ops`) as one CPU module and
    compare each with the reference (guarded arguments: see run_guarded)."""
    mods = {}
    for op in ops:
        mods[op], how = scheduled(spec, op, target)
        assert how == "hand-written", f"{op} {spec.key}: the GPU rule declined ({how})"
    cpu = cuda.build_serial(merge(mods))
    data = check.operands(spec, seed)
    for op in ops:
        expected = check.reference(spec, op, **data)
        out, = run_guarded(cpu[op], check.kernel_inputs(spec, op, data),
                           [(expected.shape, spec.dtype)])
        assert_close(out, expected, spec.dtype, f"serialized GPU {op} {spec.key}")


@pytest.mark.parametrize("spec", [pytest.param(s, id=i) for i, s in GRID + DTYPE_GRID])
def test_serialized_schedule_matches_reference(spec):
    check_serialized(spec)


# The four layers unlike the others (small spatial/many channels, 1x1, 7x7 stride 2 on 3 channels,
# depthwise); the slow test below covers all nine in both layouts.
SUITE_DEFAULT = ["c5_3x3", "1x1", "stem_7x7s2", "mbv2_dw"]


@pytest.mark.parametrize("name", SUITE_DEFAULT)
def test_layer_suite_serialized_matches_reference(name):
    """Layers of the suite at full size, channels-first."""
    check_serialized(layer_spec(name, "NCHW"))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_layer_suite_serialized_all(layout):
    """Every layer of the suite in both layouts, batch 8 included (~3 minutes on 2 cores).
    Runs only when asked for: `pytest -m slow tests/test_cuda.py`."""
    for name in LAYERS:
        check_serialized(layer_spec(name, layout))


def test_split_k_is_exercised():
    """grad_weight splits its reduction across blocks (two kernels: zero fill, then atomic
    accumulation) where the weight alone gives too few blocks; float16 never does."""
    spec = layer_spec("c2_3x3", "NCHW")
    tir = scheduled(spec, "grad_weight")[0].script()
    assert "T.cuda.atomic_add" in tir and 'T.sblock("dw_rf' in tir
    half = dataclasses.replace(spec, dtype="float16")
    assert "atomic_add" not in scheduled(half, "grad_weight")[0].script()


SHIFT = """
# from tvm.script import tirx as T
@T.prim_func(s_tir=True)
def shift(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
    T.func_attr({"global_symbol": "shift"})
    s = T.sblock_alloc_buffer((65,), scope="shared")
    for bx in T.thread_binding(2, thread="blockIdx.x"):
        for tx in T.thread_binding(32, thread="threadIdx.x"):
            with T.sblock("fetch"):
                v = T.axis.spatial(64, bx * 32 + tx)
                T.reads(a[v + OFFSET])
                T.writes(s[v])
                s[v] = a[v + OFFSET]
            with T.sblock("use"):
                v = T.axis.spatial(64, bx * 32 + tx)
                T.reads(s[v])
                T.writes(b[v + OFFSET])
                b[v + OFFSET] = s[v]
"""


@pytest.mark.parametrize("offset,message", [(0, None), (1, "relative error nan|outside"),
                                            (-1, "relative error nan|outside")])
def test_guards_catch_out_of_bounds_schedules(offset, message):
    """The guarded CPU run catches a schedule that reads or writes one element off its buffers."""
    cpu = cuda.build_serial(SHIFT.replace("OFFSET", str(offset)))
    a = np.arange(64, dtype="float32")

    def check():
        out, = run_guarded(cpu["shift"], [a], [((64,), "float32")])
        assert_close(out, a, "float32", "shift")

    if message is None:
        check()
    else:
        with pytest.raises(AssertionError, match=message):
            check()


def test_rules_decline_what_is_not_theirs():
    from convc.ops import declare
    from convc.schedules.cuda import forward, grad_input, grad_weight

    spec = make_spec((1, 3, 8, 8), (4, 3, 3, 3), 1, 1)
    func = declare(spec, "forward")
    assert forward.rule(func, resolve("llvm")) is None
    assert grad_input.rule(func, resolve("cuda")) is None
    assert grad_weight.rule(func, resolve("cuda")) is None
    assert forward.rule(func, resolve("cuda")) is not None


# Padding modes: the ring is the pad stage's index map, computed inside the shared-memory fetch.
RING = [(f"{name}-{mode}", dataclasses.replace(spec, padding_mode=mode))
        for mode, (name, spec) in zip(("reflect", "replicate", "circular", "replicate", "reflect"),
                                      [GRID[0], GRID[11], GRID[9], GRID[30], GRID[-2]])]


@pytest.mark.parametrize("spec", [pytest.param(s, id=i) for i, s in RING])
def test_padding_modes_serialized(spec):
    check_serialized(spec)


def test_ring_grad_input_plane_in_steps():
    """A padded plane of more positions than a block's threads (259 > 256, a prime's neighbour:
    no divisor helps) runs in steps; the semantics still match."""
    spec = ConvSpec.from_shapes((2, 3, 257), (4, 3, 3), 1, 1, padding_mode="reflect")
    check_serialized(spec, ops=("grad_input",))


def test_padding_modes_compile():
    """Every op of every padding mode compiles with nvcc; grad_input of a ring padding as one
    kernel (the padded plane's gradient in shared memory, no workspace: one barrier) or, where
    that plane does not fit shared memory, a ValueError naming padding_mode and the size."""
    _nvcc_or_skip()
    reports = compile_batch({symbol(name, op): scheduled(spec, op)[0] for name, spec in RING
                             for op in OPS}, SM90)
    ring = [r for r in reports if "grad_input" in r.name]
    assert len(ring) == len(RING) and all(r.resources.shared_bytes > 0 for r in ring)
    stem = dataclasses.replace(layer_spec("stem_7x7s2", "NCHW"), padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode='reflect'.*230x230.*shared memory"):
        scheduled(stem, "grad_input")


# The fused forward epilogue (scale/shift, residual, activation) in the write-back.
FUSED = [(f"{name}-{act}", dataclasses.replace(spec, scale_shift=True, residual=True,
                                               activation=act))
         for act, (name, spec) in zip(("relu", "gelu", "silu", "hardswish"),
                                      [GRID[0], GRID[11], GRID[30], GRID[-1]])]


@pytest.mark.parametrize("spec", [pytest.param(s, id=i) for i, s in FUSED])
def test_fused_epilogue_serialized(spec):
    check_serialized(spec, ops=("forward",))


def test_fused_epilogue_compiles():
    _nvcc_or_skip()
    compile_batch({symbol(name, "forward"): scheduled(spec, "forward")[0]
                   for name, spec in FUSED}, SM90)


# The adjoints through an activation: dy * act'(saved) computed inside the shared-memory fetch.
THROUGH = [(f"{name}-{act}-{src}", dataclasses.replace(spec, activation=act, derivative_from=src))
           for act, src, (name, spec) in zip(("relu", "silu", "sigmoid", "gelu_tanh"),
                                             ("output", "pre_activation", "output", "pre_activation"),
                                             [GRID[0], GRID[11], GRID[30], GRID[-1]])]


@pytest.mark.parametrize("spec", [pytest.param(s, id=i) for i, s in THROUGH])
def test_activation_prologue_serialized(spec):
    check_serialized(spec, ops=("grad_input", "grad_weight"))


def test_activation_prologue_compiles():
    _nvcc_or_skip()
    compile_batch({symbol(name, op): scheduled(spec, op)[0] for name, spec in THROUGH
                   for op in ("grad_input", "grad_weight")}, SM90)


# --- 2. device code and launch limits ---------------------------------------------------------

def compile_batch(entries, target):
    """nvcc -cubin of many scheduled kernels at once: {symbol: IRModule} -> [KernelReport],
    with check_limits applied; asserts every function produced a kernel and none spills."""
    reports = compile_device_code(merge(entries), resolve(target))
    names = {r.name for r in reports}
    for sym in entries:
        assert any(re.fullmatch(rf"{sym}_kernel(_\d+)?", n) for n in names), f"{sym}: no kernel"
    spilled = [(r.name, r.resources) for r in reports if r.resources.spills]
    assert not spilled, f"kernels spill registers: {spilled}"
    return reports


def test_grid_compiles_to_device_code():
    _nvcc_or_skip()
    entries = {symbol(name, op): scheduled(spec, op)[0] for name, spec in GRID + DTYPE_GRID
               for op in OPS}
    reports = compile_batch(entries, SM90)
    assert len(reports) >= len(entries)


@pytest.mark.parametrize("target,layout", [(SM90, "NCHW"), (SM80, "NHWC")],
                         ids=["sm_90-NCHW", "sm_80-NHWC"])
def test_layer_suite_compiles_without_spills(target, layout):
    _nvcc_or_skip()
    entries = {symbol(name, op): scheduled(layer_spec(name, layout), op, target)[0]
               for name in LAYERS for op in OPS}
    reports = compile_batch(entries, target)
    for r in reports:
        print(f"{target['arch']} {r.name:36s} threads {r.threads:4d} registers "
              f"{r.resources.registers:3d} shared {r.resources.shared_bytes:6d} B spills 0")


def test_tiles_follow_the_target_limits():
    """A target with 128 threads and 8 KiB of shared memory per block gets kernels that fit it."""
    _nvcc_or_skip()
    small = {"kind": "cuda", "arch": "sm_80", "max_num_threads": 128,
             "max_shared_memory_per_block": 8192}
    spec = layer_spec("c3_3x3", "NHWC")
    reports = compile_batch({op: scheduled(spec, op, small)[0] for op in OPS}, small)
    assert max(r.threads for r in reports) <= 128
    assert max(r.resources.shared_bytes for r in reports) <= 8192


def test_limit_check_rejects_oversized_kernels():
    big = cuda.KernelReport("k", threads=2048, resources=cuda.Resources(
        registers=64, shared_bytes=100 * 1024))
    with pytest.raises(cuda.LaunchLimitError, match="2048 threads.*shared memory"):
        cuda.check_limits([big], resolve(SM90))
    heavy = cuda.KernelReport("k", threads=1024, resources=cuda.Resources(registers=128))
    with pytest.raises(cuda.LaunchLimitError, match="registers"):
        cuda.check_limits([heavy], resolve(SM90))


def test_parse_ptxas():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'forward_kernel' for 'sm_90'
ptxas info    : Function properties for forward_kernel
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers, 15744 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'fill_kernel' for 'sm_90'
ptxas info    : Function properties for fill_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers, 384 bytes cmem[0]
"""
    found = cuda.parse_ptxas(log)
    assert found["forward_kernel"] == cuda.Resources(96, 4, 12, 8, 15744, 1)
    assert found["fill_kernel"] == cuda.Resources(10)
    assert found["forward_kernel"].spills == 16


# --- 3. libraries -----------------------------------------------------------------------------

SMALL = make_spec((2, 6, 9, 10), (8, 3, 3, 3), 2, 1, 1, 2, bias=True)


def test_compiled_kernel_carries_device_code(tmp_path):
    _nvcc_or_skip()
    import tvm_ffi

    kernel = convc.compile(SMALL, "grad_weight", target="cuda")
    assert isinstance(kernel, CudaKernel) and kernel.how == "hand-written"
    library = kernel.library.read_bytes()
    assert embedded_device_code(kernel.library) and set(embedded_device_code(kernel.library)) == {90}
    assert b'extern "C" __global__' not in library  # compiled, not source for load time
    stats = kernel.stats
    assert stats["arch"] == "sm_90" and stats["spill_bytes"] == 0
    assert 0 < stats["threads"] <= 1024 and 0 < stats["registers"] <= 255
    assert all(k["name"].startswith("grad_weight_kernel") for k in stats["kernels"])
    assert "__global__" in kernel.source
    module = tvm_ffi.load_module(str(kernel.library))  # tvm-ffi alone loads it, GPU or not
    assert module["grad_weight"] is not None
    if not cuda.gpu_available():
        x, _, _, dy = operands(SMALL)
        with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
            kernel(x, dy)


def test_compiled_kernel_comes_back_from_the_disk_cache():
    _nvcc_or_skip()
    from convc.kernel import clear_memory_cache

    first = convc.compile(SMALL, "forward", target="cuda")
    clear_memory_cache()
    again = convc.compile(SMALL, "forward", target="cuda")
    assert again is not first and again.library == first.library
    assert again.stats == first.stats


def test_export_cuda_library_from_kernels(tmp_path):
    """Kernels from convc.compile (the two built above, from the memory cache) -> one library."""
    _nvcc_or_skip()
    import tvm_ffi

    kernels = [convc.compile(SMALL, op, target="cuda") for op in ("forward", "grad_weight")]
    path = tmp_path / "conv.so"
    manifest = cuda.export_cuda_library(kernels, path)
    assert manifest["arch"] == "sm_90" and set(manifest["functions"]) == {"forward", "grad_weight"}
    for op, entry in manifest["functions"].items():
        assert entry["op"] == op and entry["spec"] == SMALL.to_dict() and entry["kernels"]
        assert all(k["spill_stores"] == 0 and k["threads"] <= 1024 for k in entry["kernels"])
    assert len(manifest["functions"]["grad_weight"]["kernels"]) == 2  # zero fill + split-K
    assert set(embedded_device_code(path)) == {90}
    module = tvm_ffi.load_module(str(path))
    x, w, b, dy = operands(SMALL)
    with pytest.raises(Exception, match="(?i)cuda"):  # host arrays: the wrapper wants CUDA ones
        module["forward"](x, w, b, np.empty(SMALL.output_shape, "float32"))


def test_export_cuda_library_from_module(tmp_path):
    """The form convc.export uses: (IRModule of scheduled functions, target, path); sm_80."""
    _nvcc_or_skip()
    mod = merge({"grad_input": scheduled(SMALL, "grad_input", SM80)[0]})
    manifest = cuda.export_cuda_library(mod, SM80, tmp_path / "gi.so")
    assert manifest["arch"] == "sm_80" and manifest["functions"]["grad_input"]["kernels"]
    assert set(embedded_device_code(tmp_path / "gi.so")) == {80}


def test_export_rejects_mixed_or_cpu_kernels(tmp_path):
    cpu_kernel = convc.compile(SMALL, "forward")
    with pytest.raises(ValueError, match="not a CUDA kernel"):
        cuda.export_cuda_library([cpu_kernel], tmp_path / "x.so")


def test_missing_nvcc_is_reported_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    for var in ("CONVC_NVCC", "CUDACXX", "CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cuda.nvcc, "FALLBACK_HOMES", ())
    with pytest.raises(cuda.NvccNotFound, match="nvcc .*CONVC_NVCC"):
        convc.compile(make_spec((1, 2, 5, 5), (2, 2, 3, 3)), "forward", target="cuda")


# --- 4. on a GPU ------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("spec", [pytest.param(s, id=i) for i, s in GRID[::3]])
def test_gpu_kernels_match_reference(spec):
    check_spec(spec, target="cuda")
