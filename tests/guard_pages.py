"""Kernels run on arrays flush against inaccessible pages, so that a read or write past an
argument's end, or before its start, faults at once instead of passing unseen (a stray read
almost always lands on mapped memory) or corrupting the heap for a later call to trip on.

Each argument is copied into its own anonymous mapping between PROT_NONE pages, once touching
the pages after it and once those before it. A fault kills the process, so the kernels run in a
child (run_guarded): it loads each kernel's compiled library (no convc, no compiling), runs it
on guarded arguments and hands the outputs back; a fault becomes the child's exit status and
its faulthandler trace, after a line naming the kernel it was running.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

PAGE = mmap.PAGESIZE
GUARD_PAGES = 4   # 16 KiB of no-access memory on each side of every argument
SIDES = ("after", "before")
_PROT_NONE = 0


def guarded_copy(array: np.ndarray, side: str) -> np.ndarray:
    """A copy of `array` whose last byte is followed by GUARD_PAGES no-access pages
    (side="after") or whose first byte follows them ("before"). Aligned to the element size
    only, as the kernels assume (convc.ops.common.make_func)."""
    array = np.ascontiguousarray(array)
    data_pages = max(1, -(-array.nbytes // PAGE))
    region = mmap.mmap(-1, (data_pages + 2 * GUARD_PAGES) * PAGE)
    anchor = ctypes.c_char.from_buffer(region)
    base = ctypes.addressof(anchor)
    del anchor  # no export left: the mapping closes with the array
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for start in (0, GUARD_PAGES + data_pages):
        if libc.mprotect(base + start * PAGE, GUARD_PAGES * PAGE, _PROT_NONE):
            raise OSError(ctypes.get_errno(), "mprotect failed")
    offset = GUARD_PAGES * PAGE if side == "before" else \
        (GUARD_PAGES + data_pages) * PAGE - array.nbytes
    view = np.frombuffer(region, array.dtype, array.size, offset).reshape(array.shape)
    view[...] = array
    return view


def run_guarded(cases, workdir: Path, timeout: float = 300):
    """Run each case on guarded arguments, on both sides, in a child process.

    cases: (name, kernel, inputs) with `kernel` a convc Kernel built from a library on disk.
    -> (CompletedProcess, {(name, side): [outputs]}); the dict is empty when the child failed."""
    jobs = []
    for name, kernel, inputs in cases:
        if kernel.library is None:
            raise ValueError(f"{name}: the kernel has no library on disk to load in the child")
        outputs = list(zip(kernel.arg_shapes[-kernel.outputs:],
                           [d.str for d in kernel.arg_dtypes[-kernel.outputs:]]))
        jobs.append((name, str(kernel.library), kernel.op,
                     [np.ascontiguousarray(a) for a in inputs], outputs))
    request, answer = workdir / "guard_cases.pkl", workdir / "guard_outputs.pkl"
    request.write_bytes(pickle.dumps(jobs))
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    result = subprocess.run([sys.executable, __file__, str(request), str(answer)],
                            capture_output=True, text=True, timeout=timeout, env=env)
    outputs = pickle.loads(answer.read_bytes()) if result.returncode == 0 else {}
    return result, outputs


def _child(request: str, answer: str) -> int:
    import tvm  # the runtime only: libraries load with their thread pool

    results = {}
    for name, library, op, inputs, outputs in pickle.loads(Path(request).read_bytes()):
        function = tvm.runtime.load_module(library)[op]
        for side in SIDES:
            print(f"running {name} ({side})", flush=True)
            args = [guarded_copy(a, side) for a in inputs]
            outs = [guarded_copy(np.zeros(shape, dtype), side) for shape, dtype in outputs]
            function(*args, *outs)
            results[name, side] = [np.array(o) for o in outs]
    Path(answer).write_bytes(pickle.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:]))
