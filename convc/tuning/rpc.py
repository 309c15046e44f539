"""Measuring on remote devices through TVM's RPC tracker.

The tracker and the servers are TVM's own::

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
    python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY     # on every device

``convc tune --rpc-tracker HOST:9190 --rpc-key KEY`` builds locally and measures on every server
registered under KEY, one connection per server, in parallel.  :class:`LocalCluster` starts a
tracker and servers on 127.0.0.1 (tests, trying it out) and stops exactly what it started.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from .errors import TuneError


def parse_tracker(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> (host, port), with an error in the flag's words."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--rpc-tracker={text!r} is not HOST:PORT (for example 127.0.0.1:9190)")
    return host, int(port)


def servers_under(host: str, port: int, key: str) -> int:
    """How many servers are registered under ``key`` at the tracker."""
    from tvm import rpc  # noqa: PLC0415

    try:
        # TVM's own client retries for a minute; a closed port should fail at once.
        socket.create_connection((host, port), timeout=5).close()
        summary = rpc.connect_tracker(host, port).summary()
    except (OSError, RuntimeError) as err:
        raise TuneError(f"cannot reach the RPC tracker at {host}:{port}: {err}") from None
    return sum(1 for server in summary.get("server_info", [])
               if str(server.get("key", "")).split(":", 1)[-1] == key)


def rpc_config_for(tracker: str | None, key: str | None, timeout: float = 60.0):
    """(RPCConfig, number of servers) for ``--rpc-tracker``/``--rpc-key``; both are needed."""
    from tvm.s_tir.meta_schedule.runner import RPCConfig  # noqa: PLC0415

    if not tracker or not key:
        raise ValueError("--rpc-tracker HOST:PORT and --rpc-key KEY go together: give both")
    host, port = parse_tracker(tracker)
    servers = servers_under(host, port, key)
    if servers == 0:
        raise TuneError(
            f"no RPC server is registered under key {key!r} at the tracker {host}:{port}: start "
            f"one on each device with `python -m tvm.exec.rpc_server --tracker {host}:{port} "
            f"--key {key}`")
    config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                       session_priority=1, session_timeout_sec=int(timeout))
    return config, servers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _start(module: str, *args: str, log=None) -> subprocess.Popen:
    """``python -m module args`` with torch blocked (a server with torch installed would spend
    10-40 s importing it before registering), in its own process group."""
    code = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None\n"
        f"sys.argv = [{module!r}] + sys.argv[1:]\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                            start_new_session=True)


class LocalCluster:
    """A tracker and ``servers`` RPC servers on 127.0.0.1, under ``key``; stops what it started.

        with LocalCluster(servers=2, key="convc-test") as cluster:
            convc.tune(spec, rpc_tracker=cluster.tracker, rpc_key=cluster.key)
    """

    def __init__(self, servers: int = 2, key: str = "convc-local", startup_timeout: float = 120.0,
                 log_path=None):
        self.servers = servers
        self.key = key
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        self.procs: list[subprocess.Popen] = []

    @property
    def tracker(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> LocalCluster:
        log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        try:
            self.procs.append(_start("tvm.exec.rpc_tracker", "--host", self.host, "--port",
                                     str(self.port), "--port-end", str(self.port + 1), log=log))
            self._wait_for_port()  # servers started earlier retry only every 5 s
            for _ in range(self.servers):
                self.procs.append(_start(
                    "tvm.exec.rpc_server", "--tracker", self.tracker, "--key", self.key,
                    "--host", self.host, "--port", str(free_port(self.host)),
                    "--port-end", "65535", log=log))
            self._wait()
        except BaseException:
            self.stop()
            raise
        finally:
            if log:
                log.close()
        return self

    def _wait_for_port(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                self._check_alive(deadline)
                time.sleep(0.1)

    def _check_alive(self, deadline: float) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise TuneError(f"RPC process {proc.args[3:]} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TuneError(f"the RPC tracker/servers did not come up at {self.tracker} within "
                            f"{self.startup_timeout:.0f} s")

    def _wait(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                if servers_under(self.host, self.port, self.key) >= self.servers:
                    return
            except TuneError:
                pass
            self._check_alive(deadline)
            time.sleep(0.3)

    def stop(self) -> None:
        """Terminate every process this cluster started (servers first), then reap them."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 15)  # its own session: the server's forked children too
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)
        self.procs = []

    def __exit__(self, *exc) -> None:
        self.stop()
