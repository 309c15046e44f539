"""A GPU schedule's semantics on the CPU: the scheduled TIR with its thread-bound loops made
serial, its shared/local buffers made global and its atomic adds made plain adds, built for LLVM.

Run serially, every thread's loop nest sees memory exactly as the GPU program would after each
barrier (the cooperative fetch into "shared" memory is re-done by every thread, which is slower
but computes the same values), so a match with the reference checks every split, fuse, cache,
compute-at, rfactor and inlined operand transform of the GPU schedule on real numbers.

Out-of-bounds accesses: TVM 0.27's `tirx.instrument_bound_checkers` instruments nothing in the
s_tir pipeline (it needs buffer_bound annotations that only the old StorageFlatten emitted), so
convc's tests pass arrays with NaN guard zones around them instead (a stray read poisons a
result, a stray write shows in the guard).
"""

from __future__ import annotations

import re

import tvm

from ...target import resolved

_THREAD_BINDING = re.compile(r'T\.thread_binding\(([^()]*?),\s*thread="[^"]*"')
_GPU_SCOPE = re.compile(r'scope="(?:shared|local|warp)(?:\.dyn)?"')
# Unrolling changes no value, and unrolled nests take LLVM seconds to compile: loops go back to
# plain serial loops in the CPU build.
_UNROLL = re.compile(r"T\.unroll\(")
_UNROLL_ANNOTATIONS = re.compile(
    r',?\s*(?:annotations=\{"pragma_(?:auto_)?unroll[^{}]*\}|unroll=\d+)(?=\s*[,)])')
_ATOMIC_ADD = re.compile(r"^(\s*)T\.cuda\.atomic_add\(T\.address_of\((\w+)\[([^\]]*)\]\), (.*)\)$")


def serial_script(script: str) -> str:
    """The TVMScript of a scheduled GPU module rewritten for a CPU (see the module docstring)."""
    text = _THREAD_BINDING.sub(r"T.serial(\1", script)
    text = _GPU_SCOPE.sub('scope="global"', text)
    text = _UNROLL_ANNOTATIONS.sub("", _UNROLL.sub("T.serial(", text))
    lines = []
    for line in text.splitlines():
        match = _ATOMIC_ADD.match(line)
        if match:
            indent, buf, index, value = match.groups()
            line = f"{indent}{buf}[{index}] = {buf}[{index}] + {value}"
        lines.append(line)
    if "thread=" in "\n".join(lines) or "T.cuda." in "\n".join(lines):
        raise ValueError("serialize: the module uses GPU constructs this transform does not know")
    return "\n".join(lines)


def serialize(mod) -> tvm.IRModule:
    """A scheduled GPU IRModule (or PrimFunc, or its TVMScript) -> the same program for a CPU."""
    script = mod if isinstance(mod, str) else mod.script()
    result = tvm.script.from_source(serial_script(script))
    if isinstance(result, tvm.tirx.PrimFunc):
        name = str(result.attrs["global_symbol"]) if result.attrs and "global_symbol" in result.attrs else "main"
        result = tvm.IRModule({name: result})
    return result


def build_serial(mod, target=None):
    """Build the serialized module for the CPU `target` (default this CPU)."""
    return tvm.compile(serialize(mod), target=resolved(target))
