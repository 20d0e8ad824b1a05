"""Fixtures for tests that run real processes and real sockets on loopback.

Every wait is bounded: a broken test fails with what was seen so far, it never hangs. Processes are
started by these fixtures only and stopped by their own pid at teardown.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from zmqchat.endpoints import free_port_pair

BIN = Path(sys.executable).parent
WAIT = 10.0  # seconds: generous upper bound for anything a test waits on


def texts_from(client, sender: str, count: int, timeout: float = 30.0) -> list[str]:
    """The texts ``client`` (a zmqchat.Client) receives from ``sender``, until ``count`` came or ``timeout``."""
    from zmqchat import events as ev

    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += [e.text for e in client.poll(0.5)[0] if isinstance(e, ev.Message) and e.sender == sender]
    return got
FAST_HEARTBEAT = ["--heartbeat-interval", "0.2", "--heartbeat-misses", "3"]


def script(name: str) -> list[str]:
    """The installed console script (as a user runs it), or the module when not installed."""
    path = BIN / name
    if path.exists():
        return [str(path)]
    return [sys.executable, "-m", {"zmqchat-server": "zmqchat.cli.server", "zmqchat-client": "zmqchat.cli.client",
                                   "zmqchat-keygen": "zmqchat.cli.keygen"}[name]]




class Proc:
    """A child process whose stdout and stderr lines are collected by reader threads."""

    def __init__(self, argv: list[str], *, stdin: bool = True, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", **(env or {})}
        self.argv = argv
        self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=cwd)
        self.pid = self.popen.pid
        self.lines: dict[str, list[str]] = {"out": [], "err": []}
        self._cond = threading.Condition()
        for name, stream in (("out", self.popen.stdout), ("err", self.popen.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True).start()

    def _read(self, name: str, stream) -> None:
        for raw in iter(stream.readline, b""):
            with self._cond:
                self.lines[name].append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        stream.close()

    def expect(self, pattern: str, stream: str = "out", timeout: float = WAIT, start: int = 0) -> str:
        """Wait for a line matching ``pattern`` (regex search); returns it or fails the test."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[stream][start:]:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"{self.argv[0]}: no line matching {pattern!r} on std{stream} within {timeout}s.\n"
                                f"stdout: {self.lines['out'][-30:]}\nstderr: {self.lines['err'][-30:]}")
                self._cond.wait(remaining)

    def count(self, pattern: str, stream: str = "out") -> int:
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines[stream] if regex.search(line))

    def send(self, *lines: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write("".join(line + "\n" for line in lines).encode())
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = WAIT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.argv[0]} did not exit within {timeout}s.\nstdout: {self.lines['out'][-30:]}\n"
                        f"stderr: {self.lines['err'][-30:]}")

    def stop(self) -> None:
        """Teardown: end the process by its pid, politely first."""
        if self.popen.poll() is None:
            self.close_stdin()
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(3)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(3)
        self.close_stdin()


class Chat:
    """Starts servers and clients for one test, on one random port pair and one data dir."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.port = free_port_pair()
        self.data_dir = tmp_path / "data"
        self.procs: list[Proc] = []

    def server(self, *extra: str, wait_ready: bool = True, env: dict[str, str] | None = None) -> Proc:
        argv = script("zmqchat-server") + ["--port", str(self.port), "--data-dir", str(self.data_dir),
                                           "--stats-interval", "0", *FAST_HEARTBEAT, *extra]
        proc = Proc(argv, stdin=False, env=env)
        self.procs.append(proc)
        if wait_ready:
            proc.expect("listening", stream="err")
        return proc

    def client(self, name: str, *extra: str, wait_connected: bool = True, env: dict[str, str] | None = None) -> Proc:
        argv = script("zmqchat-client") + ["--name", name, "--port", str(self.port), *extra]
        proc = Proc(argv, env=env)
        self.procs.append(proc)
        if wait_connected:
            proc.expect("^Connected as " if "--json" not in extra else '"type": "connected"')
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def one_server(tmp_path_factory, label: str, *flags: str):
    """A server shared by a module's tests (a ``scope="module"`` fixture yields from this), stopped after."""
    harness = Chat(tmp_path_factory.mktemp(label))
    harness.server(*flags)
    try:
        yield harness
    finally:
        harness.stop_all()


@pytest.fixture
def chat(tmp_path: Path):
    harness = Chat(tmp_path)
    try:
        yield harness
    finally:
        harness.stop_all()


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def zmq_ctx():
    """A context whose sockets all close with linger 0 at teardown."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)
