"""What the scripts share (bench.py, loadtest.py, attack.py): process hygiene and measurements of a
process from /proc. Imported as a sibling module (a script's own directory is first on ``sys.path``)."""

from __future__ import annotations

import ctypes
import math
import os
import signal
from pathlib import Path

from zmqchat.endpoints import free_port_pair

__all__ = ["children", "cpu_seconds", "die_with_parent", "free_port_pair", "machine", "pct", "rss_mb"]

try:
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded before any fork: the child only calls it
except OSError:
    _LIBC = None


def die_with_parent() -> None:
    """Linux: get SIGTERM when the process that started us dies, so nothing outlives the bench."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the server's search index process, say)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            out += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except (OSError, ValueError):
        pass
    return out


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """utime + stime of a process from /proc (0.0 where /proc is missing); with ``tree``, and of every
    process it started, the live ones and those it has waited for: a server's CPU is its index process's
    too."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if tree else 0)
    except (OSError, IndexError, ValueError):
        return 0.0
    own = ticks / os.sysconf("SC_CLK_TCK")
    return own + (sum(cpu_seconds(child) for child in children(pid)) if tree else 0.0)


def rss_mb(pid: int, key: str = "VmRSS", tree: bool = True) -> float:
    """Resident memory of a process in MB (``key`` VmHWM: its peak), with ``tree`` summed over the processes
    it started that are alive (their peaks, for VmHWM, need not have been at the same moment)."""
    total = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                total = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return total + (sum(rss_mb(child, key) for child in children(pid)) if tree else 0.0)


def pct(sorted_vals, q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return float(sorted_vals[k])


def machine() -> dict:
    import platform

    import zmq

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import zmqchat

    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "kernel": platform.release(),
            "zmqchat": os.path.dirname(zmqchat.__file__)}
