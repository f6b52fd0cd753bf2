"""Cores and pinning, the subprocesses' lifecycle, free ports, readiness, CPU metering."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.variants import HOST, READY_TIMEOUT_S, ROOT, STOP_TIMEOUT_S


@dataclass(frozen=True)
class Cores:
    """Where things run: ``server`` for the process under test, ``load`` for the rest."""

    server: int | None
    load: int | None

    @property
    def pinned(self) -> bool:
        return self.server is not None

    @classmethod
    def pick(cls) -> Cores:
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            return cls(None, None)
        return cls(available[0], available[1])

    def wrap(self, command: Sequence[str], core: int | None) -> list[str]:
        """``command`` run under ``taskset -c CORE`` (taskset execs it: same pid)."""
        if core is None:
            return list(command)
        return ["taskset", "-c", str(core), *command]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """The subprocesses of one bench run; whatever is still running at exit is stopped.

    Each one starts in a session (and so a process group) of its own: a Ctrl-C in the
    terminal then reaches only this harness, which stops them in order, and stopping
    the group also stops any children (nginx's worker).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Proc] = []

    def start(self, name: str, command: Sequence[str]) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            # Output goes to a file, never a pipe nobody reads: a full pipe would block
            # the server mid-benchmark.
            popen = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.running.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        if proc in self.running:
            self.running.remove(proc)
        if proc.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait()
        # The group may outlive its leader (a worker still exiting): make sure.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)

    @contextlib.contextmanager
    def running_one(self, name: str, command: Sequence[str]) -> Iterator[Proc]:
        proc = self.start(name, command)
        try:
            yield proc
        finally:
            self.stop(proc)


class PortPicker:
    """Free ephemeral ports, never the same one twice in a run.

    The port is free when picked and released before the server binds it; another
    process could take it in between, which the readiness check would then report.
    """

    def __init__(self) -> None:
        self._given: set[int] = set()

    def __call__(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((HOST, 0))
                port = int(sock.getsockname()[1])
            if port not in self._given:
                self._given.add(port)
                return port
        raise BenchError("no free port found")


def wait_ready(proc: Proc, port: int, timeout: float = READY_TIMEOUT_S) -> None:
    """Return once ``port`` accepts connections; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(
                f"{proc.name} exited with {proc.popen.returncode} before accepting "
                f"connections:\n{proc.log_tail()}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"{proc.name} did not accept connections on {port} within {timeout:g}s")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx's worker), from /proc."""
    children = []
    for child, stat in _proc_stats():
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            children.append(child)
    return children


def _proc_stats() -> Iterator[tuple[int, str]]:
    """``(pid, /proc/PID/stat)`` of every process visible in /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while being read
        yield int(entry.name), stat


def affinity_of(pid: int) -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None


def taskset_report(pid: int) -> str:
    """What ``taskset -p PID`` says, as evidence in the results that pinning held."""
    if shutil.which("taskset") is None:
        return "taskset not available"
    done = subprocess.run(["taskset", "-cp", str(pid)], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip()


def exited(proc: Proc, when: str) -> str:
    return f"{proc.name} exited with {proc.popen.returncode} {when}:\n{proc.log_tail()}"


# --- CPU accounting ------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_lines() -> dict[str, tuple[int, int]]:
    """``cpuN -> (busy, total)`` jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            numbers = [int(v) for v in values]
            idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)
            total = sum(numbers[:8])  # guest time is already in user
            out[name] = (total - idle, total)
    return out


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _all_processes() -> dict[int, tuple[str, float]]:
    """``pid -> (command name, CPU seconds)`` of every process visible in /proc."""
    out = {}
    for pid, stat in _proc_stats():
        head, _, rest = stat.rpartition(")")
        fields = rest.split()
        out[pid] = (head.partition("(")[2], (int(fields[11]) + int(fields[12])) / _TICK)
    return out


class CpuMeter:
    """Busy share of each core and of each watched process over one measurement.

    This is what tells a proxy's ceiling from its upstream's or the load generator's:
    whichever process sits at ~100 % of its core is the bottleneck.
    """

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self._cores = _cpu_lines()
        self._procs = {name: [_proc_cpu(pid) for pid in ids] for name, ids in pids.items()}
        self._self = resource.getrusage(resource.RUSAGE_SELF)
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._everyone = _all_processes()
        self._started = time.monotonic()

    def finish(self) -> dict[str, Any]:
        wall = time.monotonic() - self._started
        cores = _cpu_lines()
        core_share = {}
        for name, (busy, total) in cores.items():
            busy0, total0 = self._cores.get(name, (busy, total))
            core_share[name] = round((busy - busy0) / max(1, total - total0), 3)
        procs: dict[str, float | None] = {}
        for name, ids in self.pids.items():
            used = 0.0
            for pid, before in zip(ids, self._procs[name], strict=True):
                after = _proc_cpu(pid)
                if before is None or after is None:
                    continue
                used += after - before
            procs[name] = round(used / wall, 3) if wall > 0 else None
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        # wrk is the only child reaped during a wrk measurement; the harness itself is
        # the open-loop generator. Each is counted where it ran.
        harness = (me.ru_utime + me.ru_stime) - (self._self.ru_utime + self._self.ru_stime)
        reaped = (kids.ru_utime + kids.ru_stime) - (
            self._children.ru_utime + self._children.ru_stime
        )
        procs["load_generator"] = round((harness + reaped) / wall, 3) if wall > 0 else None
        # Other programs on the machine compete for the same cores (pinning keeps ours
        # apart, not theirs): a large share means the figures are noisy, whatever
        # they say. Processes that started and ended within the window are missed.
        mine = {os.getpid(), *(pid for ids in self.pids.values() for pid in ids)}
        foreign: dict[str, float] = {}
        for pid, (name, after) in _all_processes().items():
            if pid in mine:
                continue
            before = self._everyone.get(pid, (name, 0.0))[1]
            if after - before > 0:
                foreign[name] = foreign.get(name, 0.0) + after - before
        top = sorted(foreign.items(), key=lambda item: -item[1])[:3]
        others = {name: round(used / wall, 3) for name, used in top if used / wall >= 0.01}
        foreign_share = sum(foreign.values()) / wall if wall > 0 else 0.0
        # What is left: kernel work (loopback networking in softirq) and the missed.
        ours = sum(share for share in procs.values() if share is not None)
        kernel = max(0.0, sum(core_share.values()) - ours - foreign_share)
        return {
            "cores": core_share,
            "processes": procs,
            "other_processes": round(foreign_share, 3),
            "other_top": others,
            "unattributed": round(kernel, 3),
        }
