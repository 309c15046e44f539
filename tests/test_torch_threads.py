"""Inside PyTorch, convc's kernels run on PyTorch's OpenMP team (convc/torch/threads.py): the
launch shim itself (tasks, team size, nesting, barrier, errors), the kernels of a converted model
starting no thread of TVM's pool, and the fallbacks to TVM's pool."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading

import pytest

torch = pytest.importorskip("torch")
import convc.torch  # noqa: E402
from convc.torch import threads  # noqa: E402

pytestmark = pytest.mark.skipif(convc.torch.thread_pool()["pool"] != "torch",
                                reason=f"PyTorch's team is not in use here: "
                                       f"{convc.torch.thread_pool()['why']}")


class GroupEnv(ctypes.Structure):
    _fields_ = [("sync_handle", ctypes.c_void_p), ("num_task", ctypes.c_int32)]


LAMBDA = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(GroupEnv), ctypes.c_void_p)
launch = ctypes.CFUNCTYPE(ctypes.c_int, LAMBDA, ctypes.c_void_p, ctypes.c_int)(
    ctypes.cast(threads._shim.convc_parallel_launch, ctypes.c_void_p).value)
barrier = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(GroupEnv))(
    ctypes.cast(threads._shim.convc_parallel_barrier, ctypes.c_void_p).value)


def run(num_task, body):
    """Launch `body(task_id, num_task, env)` through the shim; (status, [(task, team, thread)])."""
    seen, lock = [], threading.Lock()

    def task(task_id, env, _):
        with lock:
            seen.append((task_id, env.contents.num_task, threading.get_ident()))
        return body(task_id, env.contents.num_task, env)

    return launch(LAMBDA(task), None, num_task), seen


@pytest.fixture
def team_of():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_a_launch_runs_one_task_per_thread_of_pytorchs_team(team_of):
    for size in (1, 2, 3):
        team_of(size)
        status, seen = run(0, lambda *_: 0)
        assert status == 0
        assert sorted(t for t, _, _ in seen) == list(range(size))
        assert {n for _, n, _ in seen} == {size}
        assert len({ident for *_, ident in seen}) == size


def test_an_explicit_task_count_is_the_team_size():
    status, seen = run(3, lambda *_: 0)
    assert status == 0 and sorted(t for t, _, _ in seen) == [0, 1, 2] and seen[0][1] == 3


def test_a_launch_inside_a_parallel_task_runs_inline():
    inner = []

    def outer(task_id, num_task, env):
        status, seen = run(0, lambda *_: 0)
        inner.append((status, seen))
        return 0

    status, seen = run(2, outer)
    assert status == 0 and len(seen) == 2
    for status, found in inner:       # a team of one on the calling thread: no second team
        assert status == 0 and [(t, n) for t, n, _ in found] == [(0, 1)]


def test_the_barrier_holds_every_task_until_all_arrive():
    arrived, lock = [], threading.Lock()
    after = []

    def body(task_id, num_task, env):
        with lock:
            arrived.append(task_id)
        barrier(task_id, env)
        after.append(len(arrived))
        return 0

    status, _ = run(3, body)
    assert status == 0 and after == [3, 3, 3]
    status, _ = run(1, body)          # a team of one passes its barrier
    assert status == 0


def test_a_failing_task_fails_the_launch():
    status, seen = run(2, lambda task_id, *_: -1 if task_id == 1 else 0)
    assert status == -1 and len(seen) == 2


SCRIPT = r"""
import json, os, sys
import torch
import convc.torch

torch.set_num_threads(2)
x = torch.randn(2, 8, 12, 12).to(memory_format=torch.channels_last).requires_grad_()
ref = torch.nn.Conv2d(8, 16, 3, padding=1)
torch.nn.functional.conv2d(x, ref.weight).sum().backward()    # PyTorch's team is up
before = len(os.listdir("/proc/self/task"))
mine = convc.torch.Conv2d(8, 16, 3, padding=1)
mine.load_state_dict(ref.state_dict())
for _ in range(3):
    for m in (ref, mine):
        x.grad = None
        m.zero_grad()
        m(x).square().sum().backward()
        if m is ref:
            want = (x.grad.clone(), ref.weight.grad.clone())
errors = [float((a - b).abs().max()) for a, b in zip(want, (x.grad, mine.weight.grad))]
print(json.dumps({"state": convc.torch.thread_pool(), "before": before,
                  "after": len(os.listdir("/proc/self/task")), "errors": errors}))
"""


def _converted_layer(**env):
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          check=True, env={**os.environ, **env})
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: no pool starts a worker")
def test_convc_kernels_in_pytorch_start_no_thread_of_their_own():
    found = _converted_layer()
    assert found["state"]["pool"] == "torch" and found["state"]["adopted"] >= 2
    assert found["after"] == found["before"], found
    assert max(found["errors"]) < 1e-3, found
    tvm = _converted_layer(CONVC_THREAD_POOL="tvm")         # the control: TVM's pool starts one
    assert tvm["state"]["pool"] == "tvm" and "CONVC_THREAD_POOL" in tvm["state"]["why"]
    assert tvm["after"] > tvm["before"], tvm
    assert max(tvm["errors"]) < 1e-3, tvm


def test_the_shim_builds_beside_an_unusable_cache(tmp_path):
    (tmp_path / "a-file").write_text("")
    found = _converted_layer(CONVC_CACHE_DIR=str(tmp_path / "a-file" / "cache"))
    assert found["state"]["pool"] == "torch", found       # the shim went to a temporary directory
    # kernels built in memory have no library to repoint: they run on TVM's pool, and right
    assert found["state"]["adopted"] == 0 and max(found["errors"]) < 1e-3, found


def test_a_damaged_shim_is_built_again(tmp_path):
    env = {**os.environ, "CONVC_CACHE_DIR": str(tmp_path)}
    probe = "import convc.torch, json; print(json.dumps(convc.torch.thread_pool()))"
    for damage in (None, b"", b"not a shared library"):
        shims = list(tmp_path.glob("omp_launch_*.so"))
        if damage is not None:
            assert len(shims) == 1
            shims[0].write_bytes(damage)
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True, env=env)
        assert json.loads(done.stdout.strip().splitlines()[-1])["pool"] == "torch", done.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
