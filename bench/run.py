#!/usr/bin/env python3
"""corral against gunicorn, worker class by worker class, with wrk on loopback.

One command (see bench/README.md):

    python bench/run.py --classes sync,gthread,gevent,tornado --duration 10 \\
        --out bench/results/latest.json

For every worker class it starts ``corral -k CLASS`` and ``gunicorn -k CLASS``
side by side (same app, same worker count, same threads and connection
limits, access log off, keep-alive where the class has it), waits until each
answers a real request, warms both up, then runs wrk against them in turn,
INTERLEAVED (corral, gunicorn, corral, gunicorn, ...), so that noise from
the rest of the machine lands on both; the report gives the median of the
rounds for each metric. granian (``--interface wsgi``) runs the hello-world
workload as the non-Python reference.

Tools are installed when missing: wrk with apt-get, gunicorn, gevent,
tornado and granian with pip into the running interpreter's environment.
A missing optional piece (a corral plugin, gevent, granian) is reported and
skipped. Everything this script starts runs in its own process group and is
killed on the way out, on Ctrl-C and on errors too; every wait has a deadline.

Run it with the Python of the environment that has corral installed
(``/path/to/venv/bin/python bench/run.py``): the servers run on that Python.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

BENCH_DIR: Final = Path(__file__).resolve().parent
LUA_SCRIPT: Final = BENCH_DIR / "wrk" / "bench.lua"
APP: Final = "apps:app"
#: The ASGI twin (bench/asgi_apps.py), for corral's asgi class and its peers.
ASGI_APP: Final = "asgi_apps:app"
HOST: Final = "127.0.0.1"

#: Every worker class corral ships; each is an optional plugin.
ALL_CLASSES: Final = ("sync", "gthread", "gevent", "tornado", "asgi")
#: The workloads the ASGI app has (no /file: ASGI has no file wrapper all servers share).
ASGI_WORKLOADS: Final = frozenset({"hello", "100k", "post1m", "sleep10ms", "stream32m"})
#: gunicorn's sync worker closes every connection (and so does corral's): for
#: sync the keep-alive client measures reconnects, so the close run is the
#: comparison that means something; for the others the keep-alive run is.
PRIMARY_MODE: Final = {"sync": "close"}
#: Modules whose absence makes a gunicorn worker class unusable.
GUNICORN_CLASS_NEEDS: Final = {"gevent": "gevent", "tornado": "tornado", "asgi": "uvloop"}
#: The Python packages the harness installs when missing: import name -> pip name.
PIP_TOOLS: Final = {"gunicorn": "gunicorn", "gevent": "gevent", "tornado": "tornado", "granian": "granian",
                    "uvicorn": "uvicorn", "uvloop": "uvloop", "httptools": "httptools"}
#: Distributions whose versions go into the report.
VERSIONED: Final = (
    "corral",
    "corral-gevent",
    "corral-tornado",
    "corral-asgi",
    "httptools",
    "uvicorn",
    "uvloop",
    "gunicorn",
    "gevent",
    "greenlet",
    "tornado",
    "granian",
)
#: Environment variables that would silently change a server's settings.
SCRUBBED_ENV_PREFIXES: Final = ("CORRAL_", "GUNICORN_", "GRANIAN_", "UVICORN_")
SCRUBBED_ENV: Final = ("WEB_CONCURRENCY", "PORT", "SCRIPT_NAME")

#: A server must answer within this long after it was started.
START_TIMEOUT: Final = 60.0
#: A stopping server gets this long after SIGTERM before its group is SIGKILLed.
STOP_TIMEOUT: Final = 10.0
#: wrk gets this much beyond its --duration before it is killed (its own
#: connect and --timeout waits are included).
WRK_GRACE: Final = 30.0
#: A request wrk has not seen answered after this long counts as a timeout
#: error; well above the slowest workload's expected latency under load.
WRK_TIMEOUT: Final = "10s"
#: A file descriptor limit that wrk at 1000 connections and gevent workers need.
WANTED_NOFILE: Final = 65536


@dataclass(frozen=True)
class Workload:
    """One route of bench/apps.py and how wrk drives it."""

    name: str
    path: str
    what: str
    post_bytes: int = 0
    #: Overrides --connections (the high-concurrency gevent run).
    connections: int | None = None
    #: Only these worker classes run it (None: all).
    classes: frozenset[str] | None = None
    #: Expected response body length, checked once before measuring.
    body_length: int = 13


WORKLOADS: Final = (
    Workload("hello", "/", "hello world: per-request overhead"),
    Workload("100k", "/100k", "100 KiB body from memory: write path", body_length=100 * 1024),
    Workload("file1m", "/file", "1 MiB file via wsgi.file_wrapper (sendfile)", body_length=1 << 20),
    Workload(
        "post1m", "/upload", "1 MiB POST body read by the app: read path", post_bytes=1 << 20, body_length=7
    ),
    Workload("sleep10ms", "/sleep?ms=10", "app sleeps 10 ms: concurrency"),
    Workload(
        "stream32m",
        "/stream",
        "32 x 1 MiB yielded, no length (chunked): streaming write path",
        body_length=32 << 20,
    ),
    Workload(
        "sleep100ms-c1000",
        "/sleep?ms=100",
        "app sleeps 100 ms at 1000 connections",
        connections=1000,
        classes=frozenset({"gevent"}),
    ),
)
MODES: Final = ("keepalive", "close")


# -- process management ----------------------------------------------------------------


class Reaper:
    """Starts processes in their own process groups and kills every group on exit.

    Each child leads a process group of its own, so Ctrl-C in the terminal
    reaches only this script, and killing the group also kills the workers
    a server forked (corral and gunicorn keep workers in the arbiter's
    group). Not a session of its own: with the kernel's autogroup
    scheduling (sched_autogroup_enabled, on by default) every session is
    a scheduling group that gets an equal share of the CPUs, so a server
    in one session and wrk in another were held to half the machine each,
    whatever their threads, and a gthread server's figures depended on
    that split (hello keep-alive, one server: 49,636 req/s with server and
    wrk in one session, 19,160-33,008 in separate ones). In one session
    the scheduler shares the CPUs among threads, as it does for programs
    started from one shell.
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], *, log: Path | None, env: dict[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        out = open(log, "wb") if log is not None else subprocess.PIPE  # noqa: SIM115 - handed to Popen
        try:
            proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, process_group=0
            )
        finally:
            if log is not None:
                out.close()  # type: ignore[union-attr]
        self.procs.append(proc)
        return proc

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        # Members may outlive the leader (orphaned workers); look for any.
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            # pgrp is the 3rd field after the ")" that ends the command name.
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2 and fields[2] == str(pgid):
                return True
        return False

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
        pgid = proc.pid
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The group id stays reserved while any member lives, so this kills
        # only what we started.
        if self._group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc, timeout=3.0)


def _raise_on_signal(signum: int, frame: Any) -> None:
    # SIGTERM/SIGHUP unwind like Ctrl-C so every `finally` kills its servers.
    raise KeyboardInterrupt(f"signal {signum}")


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = WANTED_NOFILE if hard == resource.RLIM_INFINITY else min(WANTED_NOFILE, hard)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- tools -------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def ensure_wrk(install: bool) -> str:
    """The wrk binary, installed with apt-get when missing; exits with a message if impossible."""
    found = shutil.which("wrk")
    if found or not install:
        if not found:
            sys.exit("wrk is not installed (and --no-install was given): apt-get install wrk")
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        sys.exit("wrk is missing; install it (Debian/Ubuntu: sudo apt-get install wrk) and rerun")
    log("wrk missing: apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "wrk"]
    ok = subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0
    if not ok:
        # A fresh image has no package lists yet: update once, then retry.
        log("apt-get install failed; running apt-get update first")
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            sys.exit(
                f"could not install wrk with apt-get:\n{res.stdout[-2000:]}{res.stderr[-2000:]}\n"
                "install wrk by hand and rerun"
            )
    found = shutil.which("wrk")
    if not found:
        sys.exit("apt-get reported success but wrk is not on PATH")
    return found


def has_module(name: str) -> bool:
    importlib.invalidate_caches()
    return importlib.util.find_spec(name) is not None


def ensure_pip_tools(wanted: Iterable[str], install: bool) -> dict[str, str]:
    """Install missing Python tools into this interpreter's environment; returns the problems."""
    problems: dict[str, str] = {}
    for module in wanted:
        if has_module(module):
            continue
        if not install:
            problems[module] = "not installed (--no-install)"
            continue
        dist = PIP_TOOLS[module]
        log(f"{module} missing: pip install {dist}")
        # One package per call: one that fails to install must not block the others.
        res = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", dist],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if res.returncode != 0 or not has_module(module):
            problems[module] = f"pip install {dist} failed: {(res.stderr or res.stdout).strip()[-500:]}"
            log(problems[module])
    return problems


def corral_classes() -> tuple[set[str], str | None]:
    """Worker classes registered with the installed corral (no worker code is imported)."""
    try:
        res = subprocess.run(
            [sys.executable, "-m", "corral", "plugins", "--json"], capture_output=True, text=True, timeout=60
        )
        data = json.loads(res.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return set(), f"`corral plugins --json` failed: {exc}"
    names = {w["name"] for p in data.get("plugins", []) for w in p.get("workers", [])}
    return names, None


def granian_command() -> list[str] | None:
    exe = Path(sys.executable).parent / "granian"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("granian")
    return [found] if found else None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def machine_info(wrk: str) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "wrk": (wrk_version.stdout or wrk_version.stderr).strip().splitlines()[0].split(" Copyright")[0]
        if (wrk_version.stdout or wrk_version.stderr)
        else "unknown",
        "loadavg_start": os.getloadavg(),
        "packages": package_versions(),
    }


# -- servers -----------------------------------------------------------------------------


@dataclass
class Settings:
    workers: int
    threads: int
    worker_connections: int
    keep_alive: int
    wrk_threads: int
    connections: int
    duration: float
    warmup: float
    rounds: int
    #: CPU lists for taskset ("" = no pinning): the servers' and wrk's.
    server_cpus: str = ""
    client_cpus: str = ""


def pinned(argv: list[str], cpus: str) -> list[str]:
    """``argv`` run on the CPUs ``cpus`` names (taskset's list syntax), or as is.

    taskset execs the program, so the pid the harness watches (its CPU, its
    memory, its workers) is the program's own; forked workers inherit the
    affinity.
    """
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def corral_argv(cls: str, port: int, s: Settings, logfile: Path) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "corral",
        "-k",
        cls,
        "-w",
        str(s.workers),
        "-b",
        f"{HOST}:{port}",
        "--chdir",
        str(BENCH_DIR),
        "--log-level",
        "warning",
        "--error-logfile",
        str(logfile),
        "--keep-alive",
        str(s.keep_alive),
        "--worker-connections",
        str(s.worker_connections),
        "--worker-tmp-dir",
        "/dev/shm",
    ]
    if cls == "gthread":
        argv += ["--threads", str(s.threads)]
    return [*argv, ASGI_APP if cls == "asgi" else APP]


def gunicorn_argv(cls: str, port: int, s: Settings, logfile: Path) -> list[str]:
    # No --access-logfile: gunicorn then writes no access log, like corral.
    # /dev/shm for the heartbeat files as corral does by default (gunicorn's
    # default, the temp dir, may sit on a disk).
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        cls,
        "-w",
        str(s.workers),
        "-b",
        f"{HOST}:{port}",
        "--chdir",
        str(BENCH_DIR),
        "--log-level",
        "warning",
        "--error-logfile",
        str(logfile),
        "--keep-alive",
        str(s.keep_alive),
        "--worker-connections",
        str(s.worker_connections),
        "--worker-tmp-dir",
        "/dev/shm",
    ]
    if cls == "gthread":
        argv += ["--threads", str(s.threads)]
    # -k asgi: gunicorn's own ASGI worker (uvloop when installed, as corral's).
    return [*argv, ASGI_APP if cls == "asgi" else APP]


def uvicorn_argv(cls: str, port: int, s: Settings, logfile: Path) -> list[str]:
    """uvicorn at its fastest: httptools and uvloop, the same worker count, no access log."""
    return [
        sys.executable, "-m", "uvicorn", "--host", HOST, "--port", str(port), "--workers", str(s.workers),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
        "--timeout-keep-alive", str(s.keep_alive), "--app-dir", str(BENCH_DIR), ASGI_APP,
    ]


def granian_argv(exe: list[str], port: int, s: Settings) -> list[str]:
    # granian writes no access log unless --access-log is given.
    return [
        *exe,
        "--interface",
        "wsgi",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(s.workers),
        "--working-dir",
        str(BENCH_DIR),
        APP,
    ]


@dataclass
class Server:
    name: str  # corral, gunicorn, granian
    worker_class: str
    argv: list[str]
    port: int
    logfile: Path
    proc: subprocess.Popen[bytes] | None = None
    failed: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} -k {self.worker_class}"

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def last_error(self) -> str:
        """The line of the log most likely to say why the server died, for the report."""
        lines = [ln.strip() for ln in self.log_tail(8000).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        return (errors or lines or ["(empty log)"])[-1][:300]


def http_get(port: int, path: str, timeout: float, post_bytes: int = 0) -> tuple[int, int]:
    """One request on a fresh connection: (status, body length). Raises OSError/ValueError."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        if post_bytes:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {post_bytes}\r\n\r\n"
            )
            sock.sendall(head.encode() + b"x" * post_bytes)
        else:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head_end = raw.find(b"\r\n\r\n")
    if not raw.startswith(b"HTTP/1.") or head_end < 0:
        raise ValueError(f"not an HTTP response: {raw[:80]!r}")
    body = raw[head_end + 4 :]
    if b"\r\ntransfer-encoding: chunked" in raw[:head_end].lower():
        body = dechunk(body)
    return int(raw[9:12]), len(body)


def dechunk(data: bytes) -> bytes:
    """A chunked body's payload (raises ValueError if the framing is broken or cut short)."""
    out = []
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0], 16)
        if not size:
            return b"".join(out)
        start = eol + 2
        if data[start + size : start + size + 2] != b"\r\n":
            raise ValueError("bad chunk framing")
        out.append(data[start : start + size])
        pos = start + size + 2


def children(pid: int) -> list[int]:
    """Direct children of pid, oldest first."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                kids += [int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        return []
    return sorted(set(kids))


CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of pid and every live descendant, in seconds.

    From /proc/PID/stat (utime, stime: fields 14 and 15, in clock ticks) of
    each process in the tree, all of its threads included. A process that
    exits between the listing and the read is skipped: the harness takes
    this before and after a wrk run, and workers do not come and go then.
    """
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:  # gone (ProcessLookupError is an OSError too)
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its last ")".
        fields = stat.rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
        todo += children(p)
    return total / CLOCK_TICKS


def wait_ready(server: Server, workers: int, deadline: float) -> None:
    """Until the server answers a real request and has forked its workers (connect, never sleep-and-hope)."""
    assert server.proc is not None
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"exited with {server.proc.returncode} at start: {server.last_error()}")
        try:
            status, _ = http_get(server.port, "/", timeout=2.0)
        except (OSError, ValueError) as exc:
            last_error = str(exc)
        else:
            if status == 200 and len(children(server.proc.pid)) >= workers:
                return
            last_error = f"status {status}, {len(children(server.proc.pid))} workers"
        time.sleep(0.05)  # poll interval, not a readiness guess
    raise RuntimeError(f"not ready in {START_TIMEOUT:.0f}s ({last_error}): {server.last_error()}")


def smaps_rollup(pid: int) -> dict[str, int] | None:
    """RSS, PSS and private memory in KiB from /proc/PID/smaps_rollup.

    PSS splits shared pages among sharers; private (USS: Private_Clean +
    Private_Dirty) is what the process holds alone, so what one more worker
    adds to the machine.
    """
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty"):
            out[key.lower() + "_kib"] = int(rest.split()[0])
    if "private_clean_kib" in out and "private_dirty_kib" in out:
        out["uss_kib"] = out["private_clean_kib"] + out["private_dirty_kib"]
    return out


def wait_settled(pid: int, timeout: float = 5.0, interval: float = 0.2) -> bool:
    """Wait until the private memory of every child of ``pid`` stops changing; whether it did.

    A server answers as soon as one worker is up; another may still be
    importing the app, and measured then it looks smaller than it will
    be. Both servers are given the same wait before their fresh
    snapshot, so neither is caught mid-boot.
    """
    deadline = time.monotonic() + timeout
    last: tuple[tuple[int, int], ...] | None = None
    while time.monotonic() < deadline:
        now = []
        for kid in children(pid):
            rollup = smaps_rollup(kid)
            if rollup is not None:
                now.append((kid, rollup.get("uss_kib", 0)))
        sample = tuple(now)
        if sample and sample == last:
            return True
        last = sample
        time.sleep(interval)
    return False


def memory_snapshot(server: Server) -> dict[str, Any]:
    assert server.proc is not None
    kids = children(server.proc.pid)
    return {
        "arbiter_pid": server.proc.pid,
        "arbiter": smaps_rollup(server.proc.pid),
        "worker_pid": kids[0] if kids else None,
        "worker": smaps_rollup(kids[0]) if kids else None,
        "workers": len(kids),
    }


# -- wrk ---------------------------------------------------------------------------------


def wrk_argv(wrk: str, port: int, workload: Workload, mode: str, s: Settings, duration: float) -> list[str]:
    conns = workload.connections or s.connections
    argv = [
        wrk,
        "-t",
        str(min(s.wrk_threads, conns)),
        "-c",
        str(conns),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        WRK_TIMEOUT,
        "--latency",
        "-s",
        str(LUA_SCRIPT),
    ]
    if mode == "close":
        argv += ["-H", "Connection: close"]
    return pinned([*argv, f"http://{HOST}:{port}{workload.path}"], s.client_cpus)


def run_wrk(
    reaper: Reaper, argv: list[str], workload: Workload, duration: float, server_pid: int | None = None
) -> dict[str, Any]:
    """One wrk run; with server_pid, also the CPU the server and wrk spent per request.

    The server's CPU is its process tree's (tree_cpu_seconds) before and
    after; wrk's comes from getrusage(RUSAGE_CHILDREN), which grows by a
    child's CPU when it is reaped, and wrk is the only child the harness
    reaps while it runs (the servers live on). Both share the machine's
    cores during a run, so req/s alone mixes the server's cost with the
    client's: these two figures separate them.
    """
    env = {**os.environ, "BENCH_POST_BYTES": str(workload.post_bytes)}
    cpu0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = reaper.start(argv, log=None, env=env, cwd=BENCH_DIR)
    try:
        out, _ = proc.communicate(timeout=duration + WRK_GRACE)
    except subprocess.TimeoutExpired:
        reaper.stop(proc)
        return {"error": f"wrk did not finish within {duration + WRK_GRACE:.0f}s"}
    finally:
        if proc.poll() is None:
            reaper.stop(proc)
        elif proc in reaper.procs:
            reaper.procs.remove(proc)
    text = out.decode(errors="replace") if out else ""
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    server_cpu = tree_cpu_seconds(server_pid) - cpu0 if server_pid else None
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or line is None:
        return {"error": f"wrk exited {proc.returncode}", "output": text[-2000:]}
    data: dict[str, Any] = json.loads(line[len("BENCH_JSON ") :])
    secs = data["duration_us"] / 1e6
    data["rps"] = data["requests"] / secs if secs else 0.0
    data["errors_total"] = sum(data["errors"].values())
    if data["requests"]:
        client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        data["client_cpu_us"] = client_cpu * 1e6 / data["requests"]
        if server_cpu is not None:
            data["server_cpu_us"] = server_cpu * 1e6 / data["requests"]
    data["output"] = text
    return data


# -- the run -----------------------------------------------------------------------------


@dataclass
class Results:
    settings: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)
    commands: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    probes: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def summary(self) -> list[dict[str, Any]]:
        """Median per metric over the rounds of each (class, workload, mode, server)."""
        groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
        for run in self.runs:
            key = (run["class"], run["workload"], run["mode"], run["server"])
            groups.setdefault(key, []).append(run)
        out = []
        for (cls, wl, mode, server), runs in groups.items():
            good = [r for r in runs if "rps" in r]
            row: dict[str, Any] = {
                "class": cls,
                "workload": wl,
                "mode": mode,
                "server": server,
                "rounds": len(good),
                "failed_rounds": len(runs) - len(good),
            }
            if good:
                row["rps"] = statistics.median(r["rps"] for r in good)
                row["p50_ms"] = statistics.median(r["latency_us"]["p50"] for r in good) / 1000
                row["p99_ms"] = statistics.median(r["latency_us"]["p99"] for r in good) / 1000
                # Errors are summed, not medianed: one bad round must show.
                row["errors"] = sum(r["errors_total"] for r in good)
                row["requests"] = sum(r["requests"] for r in good)
                for cpu_key in ("server_cpu_us", "client_cpu_us"):
                    values = [r[cpu_key] for r in good if cpu_key in r]
                    if values:
                        row[cpu_key] = statistics.median(values)
            out.append(row)
        return out


def start_server(reaper: Reaper, server: Server, env: dict[str, str]) -> None:
    log(f"starting {server.label} on port {server.port}")
    server.proc = reaper.start(server.argv, log=server.logfile, env=env, cwd=BENCH_DIR)


def measure_pair(
    reaper: Reaper,
    wrk: str,
    servers: list[Server],
    cls: str,
    s: Settings,
    workloads: Sequence[Workload],
    modes: Sequence[str],
    res: Results,
) -> None:
    """Every workload against every server of one class, interleaved round by round."""
    for wl in workloads:
        if wl.classes is not None and cls not in wl.classes:
            continue
        for mode in modes:
            live = [sv for sv in servers if sv.failed is None]
            for sv in live:
                if s.warmup > 0:
                    run_wrk(reaper, wrk_argv(wrk, sv.port, wl, mode, s, s.warmup), wl, s.warmup)
            for rnd in range(s.rounds):
                for sv in live:
                    if sv.failed is not None:
                        continue
                    assert sv.proc is not None
                    argv = wrk_argv(wrk, sv.port, wl, mode, s, s.duration)
                    log(f"{cls:8} {wl.name:17} {mode:9} round {rnd + 1}/{s.rounds} {sv.name}")
                    data = run_wrk(reaper, argv, wl, s.duration, server_pid=sv.proc.pid)
                    data.update(
                        server=sv.name,
                        **{"class": cls},
                        workload=wl.name,
                        mode=mode,
                        round=rnd,
                        command=shlex.join(argv),
                        env={"BENCH_POST_BYTES": str(wl.post_bytes)} if wl.post_bytes else {},
                    )
                    if "error" in data:
                        log(f"  {sv.name}: {data['error']}")
                    else:
                        log(
                            f"  {sv.name}: {data['rps']:.0f} req/s, "
                            f"p99 {data['latency_us']['p99'] / 1000:.2f} ms, errors {data['errors_total']}, "
                            f"CPU/req server {data.get('server_cpu_us', 0):.0f} us, "
                            f"wrk {data.get('client_cpu_us', 0):.0f} us"
                        )
                    res.runs.append(data)
                    if sv.proc.poll() is not None:
                        sv.failed = (
                            f"exited with {sv.proc.returncode} during {wl.name}/{mode}: {sv.last_error()}"
                        )
                        log(f"{sv.label} {sv.failed}\n{sv.log_tail()}")
                        res.skipped.append(f"{sv.label}: {sv.failed}")


def probe_routes(servers: list[Server], workloads: Sequence[Workload], cls: str, res: Results) -> None:
    """One request per route before measuring: a broken route would otherwise look fast."""
    for sv in servers:
        for wl in workloads:
            if wl.classes is not None and cls not in wl.classes:
                continue
            path = wl.path.replace("ms=100", "ms=1")  # the probe need not wait
            try:
                status, length = http_get(sv.port, path, timeout=10.0, post_bytes=wl.post_bytes)
            except (OSError, ValueError) as exc:
                status, length = 0, -1
                res.notes.append(f"probe {sv.label} {wl.path}: {exc}")
            ok = status == 200 and length == wl.body_length
            res.probes.append(
                {
                    "server": sv.name,
                    "class": cls,
                    "workload": wl.name,
                    "status": status,
                    "body_length": length,
                    "ok": ok,
                }
            )
            if not ok:
                msg = (
                    f"probe {sv.label} {wl.path}: status {status}, "
                    f"body {length} bytes (want {wl.body_length})"
                )
                log("WARNING " + msg)
                res.notes.append(msg)


def bench_class(
    reaper: Reaper,
    wrk: str,
    cls: str,
    s: Settings,
    env: dict[str, str],
    tmp: Path,
    workloads: Sequence[Workload],
    modes: Sequence[str],
    res: Results,
) -> None:
    servers = []
    builders: list[tuple[str, Callable[[str, int, Settings, Path], list[str]]]] = [
        ("corral", corral_argv), ("gunicorn", gunicorn_argv)]
    if cls == "asgi":
        # uvicorn is the ASGI server most teams run: the third server of the class.
        builders.append(("uvicorn", uvicorn_argv))
        workloads = [w for w in workloads if w.name in ASGI_WORKLOADS]
    for name, build in builders:
        port = free_port()
        logfile = tmp / f"{name}-{cls}.log"
        servers.append(Server(name, cls, pinned(build(cls, port, s, logfile), s.server_cpus), port, logfile))
    res.commands[cls] = {sv.name: shlex.join(sv.argv) for sv in servers}
    try:
        for sv in servers:
            start_server(reaper, sv, env)
        for sv in servers:
            try:
                # uvicorn's workers are multiprocessing children of a supervisor: readiness alone.
                wait_ready(sv, 0 if sv.name == "uvicorn" else s.workers, time.monotonic() + START_TIMEOUT)
            except RuntimeError as exc:
                sv.failed = str(exc)
                log(f"{sv.label} {exc}\n{sv.log_tail()}")
                res.skipped.append(f"{cls}: {sv.label} {exc}")
                # One side alone compares nothing: skip the class, keep the time.
                return
        live = servers
        mem = res.memory.setdefault(cls, {})
        for sv in live:
            # Before any request: what the worker costs by itself, apart from
            # what serving leaves behind (threads started, buffers, caches);
            # once every worker has finished booting (wait_settled).
            assert sv.proc is not None
            if not wait_settled(sv.proc.pid):
                # Read anyway, and say so: a worker still growing makes its
                # fresh figure (and the ratio against the peer) too small.
                note = (f"{sv.label}: workers still changing size after 5 s; "
                        "fresh memory read anyway")
                log(note)
                res.notes.append(note)
            mem[sv.name] = {"fresh": memory_snapshot(sv)}
        probe_routes(live, workloads, cls, res)
        # First warm-up: imports and allocations done lazily on the first
        # requests belong to the steady state, not to the first measured round.
        hello = WORKLOADS[0]
        for sv in live:
            run_wrk(
                reaper,
                wrk_argv(wrk, sv.port, hello, "keepalive", s, max(s.warmup, 1)),
                hello,
                max(s.warmup, 1),
            )
        for sv in live:
            mem[sv.name]["idle"] = memory_snapshot(sv)
        measure_pair(reaper, wrk, live, cls, s, workloads, modes, res)
        for sv in live:
            if sv.failed is None:
                mem[sv.name]["after_load"] = memory_snapshot(sv)
    finally:
        for sv in servers:
            if sv.proc is not None:
                reaper.stop(sv.proc)


def bench_granian(
    reaper: Reaper,
    wrk: str,
    exe: list[str],
    s: Settings,
    env: dict[str, str],
    tmp: Path,
    modes: Sequence[str],
    res: Results,
) -> None:
    port = free_port()
    argv = pinned(granian_argv(exe, port, s), s.server_cpus)
    sv = Server("granian", "wsgi", argv, port, tmp / "granian.log")
    res.commands["granian"] = {"granian": shlex.join(sv.argv)}
    try:
        start_server(reaper, sv, env)
        try:
            # granian's workers may not be direct children: readiness is the answer alone.
            wait_ready(sv, 0, time.monotonic() + START_TIMEOUT)
        except RuntimeError as exc:
            log(f"granian {exc}\n{sv.log_tail()}")
            res.skipped.append(f"granian: {exc}")
            return
        hello = WORKLOADS[0]
        probe_routes([sv], [hello], "granian", res)
        measure_pair(reaper, wrk, [sv], "granian", s, [hello], modes, res)
        res.memory.setdefault("granian", {})["granian"] = {"after_load": memory_snapshot(sv)}
    finally:
        if sv.proc is not None:
            reaper.stop(sv.proc)


# -- reports -----------------------------------------------------------------------------


def _fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _get(rows: list[dict[str, Any]], **key: str) -> dict[str, Any] | None:
    for row in rows:
        if all(row[k] == v for k, v in key.items()):
            return row
    return None


def comparison_rows(res: Results) -> list[dict[str, Any]]:
    """One row per (class, workload, mode): corral and gunicorn medians side by side."""
    summary = res.summary()
    rows = []
    seen: set[tuple[str, str, str]] = set()
    for row in summary:
        key = (row["class"], row["workload"], row["mode"])
        if row["class"] == "granian" or key in seen:
            continue
        seen.add(key)
        c = _get(summary, **{"class": key[0]}, workload=key[1], mode=key[2], server="corral") or {}
        g = _get(summary, **{"class": key[0]}, workload=key[1], mode=key[2], server="gunicorn") or {}
        primary = PRIMARY_MODE.get(key[0], "keepalive") == key[2]
        rows.append(
            {
                "class": key[0],
                "workload": key[1],
                "mode": key[2],
                "primary": primary,
                "corral": c,
                "gunicorn": g,
                "rps_ratio": (c["rps"] / g["rps"]) if c.get("rps") and g.get("rps") else None,
                "p99_ratio": (c["p99_ms"] / g["p99_ms"]) if c.get("p99_ms") and g.get("p99_ms") else None,
                # gunicorn's CPU per request over corral's: how many times
                # less work a request costs corral, whoever else shares the cores.
                "cpu_ratio": (
                    (g["server_cpu_us"] / c["server_cpu_us"])
                    if c.get("server_cpu_us") and g.get("server_cpu_us")
                    else None
                ),
            }
        )
    return rows


def _n(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    return format(v, fmt) if v is not None else "-"


TABLE_HEAD: Final = (
    "class",
    "workload",
    "clients",
    "corral req/s",
    "gunicorn req/s",
    "ratio",
    "p50 ms (c / g)",
    "p99 ms (c / g)",
    "errors (c / g)",
    "server CPU us/req (c / g)",
    "CPU ratio",
    "wrk CPU us/req (c / g)",
)


def table_cells(row: dict[str, Any]) -> list[str]:
    c, g = row["corral"], row["gunicorn"]
    mode = "keep-alive" if row["mode"] == "keepalive" else "close"
    return [
        row["class"],
        row["workload"],
        mode + (" *" if row["primary"] else ""),
        _n(c, "rps", ",.0f"),
        _n(g, "rps", ",.0f"),
        f"{row['rps_ratio']:.2f}x" if row["rps_ratio"] else "-",
        f"{_n(c, 'p50_ms', '.2f')} / {_n(g, 'p50_ms', '.2f')}",
        f"{_n(c, 'p99_ms', '.2f')} / {_n(g, 'p99_ms', '.2f')}",
        f"{_n(c, 'errors', 'd')} / {_n(g, 'errors', 'd')}",
        f"{_n(c, 'server_cpu_us', '.0f')} / {_n(g, 'server_cpu_us', '.0f')}",
        f"{row['cpu_ratio']:.2f}x" if row.get("cpu_ratio") else "-",
        f"{_n(c, 'client_cpu_us', '.0f')} / {_n(g, 'client_cpu_us', '.0f')}",
    ]


def granian_lines(res: Results) -> list[str]:
    summary = res.summary()
    lines = []
    for mode in MODES:
        gr = _get(summary, **{"class": "granian"}, workload="hello", mode=mode, server="granian")
        if not gr or not gr.get("rps"):
            continue
        best = max(
            (
                r
                for r in summary
                if r["server"] == "corral" and r["workload"] == "hello" and r["mode"] == mode and r.get("rps")
            ),
            key=lambda r: r["rps"],
            default=None,
        )
        text = (
            f"granian --interface wsgi, hello, {'keep-alive' if mode == 'keepalive' else 'close'}: "
            f"{gr['rps']:,.0f} req/s, p50 {gr['p50_ms']:.2f} ms, p99 {gr['p99_ms']:.2f} ms, "
            f"errors {gr['errors']}"
            + (f", server CPU {gr['server_cpu_us']:.0f} us/req" if gr.get("server_cpu_us") else "")
        )
        if best:
            text += (
                f"; fastest corral class ({best['class']}): {best['rps']:,.0f} req/s = "
                f"{best['rps'] / gr['rps']:.2f}x granian"
            )
        lines.append(text)
    return lines


def uvicorn_lines(res: Results) -> list[str]:
    """corral's asgi class against uvicorn (httptools + uvloop), workload by workload."""
    summary = res.summary()
    lines = []
    for row in summary:
        if row["server"] != "uvicorn" or not row.get("rps"):
            continue
        c = _get(summary, **{"class": "asgi"}, workload=row["workload"], mode=row["mode"], server="corral")
        text = (f"asgi {row['workload']}, {'keep-alive' if row['mode'] == 'keepalive' else 'close'}: "
                f"uvicorn {row['rps']:,.0f} req/s, p99 {row['p99_ms']:.2f} ms")
        if c and c.get("rps"):
            text += (f"; corral {c['rps']:,.0f} req/s, p99 {c['p99_ms']:.2f} ms = "
                     f"{c['rps'] / row['rps']:.2f}x uvicorn's req/s")
        lines.append(text)
    return lines


def _kib(snap: dict[str, Any] | None, proc: str, key: str) -> int | None:
    if not snap or not snap.get(proc):
        return None
    value: int | None = snap[proc].get(key)
    return value


def memory_rows(res: Results) -> list[list[str]]:
    rows = []
    for cls, per in res.memory.items():
        if cls == "granian":
            continue
        c, g = per.get("corral", {}), per.get("gunicorn", {})
        for label, phase, proc in (
            ("arbiter", "idle", "arbiter"),
            ("worker, fresh", "fresh", "worker"),
            ("worker, idle", "idle", "worker"),
            ("worker, after the run", "after_load", "worker"),
        ):
            vals = [
                _kib(c.get(phase), proc, "rss_kib"),
                _kib(g.get(phase), proc, "rss_kib"),
                _kib(c.get(phase), proc, "pss_kib"),
                _kib(g.get(phase), proc, "pss_kib"),
                _kib(c.get(phase), proc, "uss_kib"),
                _kib(g.get(phase), proc, "uss_kib"),
            ]
            mib = [f"{v / 1024:.1f}" if v is not None else "-" for v in vals]
            rows.append([cls, label, *mib[:4], _fmt_ratio(vals[2], vals[3]), *mib[4:],
                         _fmt_ratio(vals[4], vals[5])])
    return rows


MEM_HEAD: Final = (
    "class",
    "process",
    "corral RSS MiB",
    "gunicorn RSS MiB",
    "corral PSS MiB",
    "gunicorn PSS MiB",
    "PSS ratio",
    "corral private MiB",
    "gunicorn private MiB",
    "private ratio",
)


def plain_table(head: Sequence[str], rows: list[list[str]], text_cols: int) -> str:
    """Text columns left-aligned, numbers right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i < text_cols else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*r) for r in rows]
    return "\n".join(out)


def md_table(head: Sequence[str], rows: list[list[str]], text_cols: int) -> str:
    aligns = ["---" if i < text_cols else "---:" for i in range(len(head))]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(aligns) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


SYNC_NOTE: Final = (
    "sync: both gunicorn's and corral's sync workers close every connection, so a keep-alive "
    "client only measures reconnects; the `Connection: close` run (*) is the like-for-like "
    "comparison. For the other classes the keep-alive run (*) is the primary one."
)


CPU_NOTE: Final = (
    "CPU us/req: user + system CPU per request of the server's whole process tree "
    "(/proc/PID/stat before and after the run) and of wrk (getrusage of the reaped "
    "child); the CPU ratio is gunicorn's server figure over corral's. wrk and the "
    "server share the cores, so where the cores are saturated the req/s ratio is "
    "pulled towards 1 by the client's own cost; the CPU ratio is not."
)


def text_report(res: Results) -> str:
    rows = [table_cells(r) for r in comparison_rows(res)]
    parts = [plain_table(TABLE_HEAD, rows, 3), "", "* primary comparison. " + SYNC_NOTE, CPU_NOTE]
    parts += ["", *granian_lines(res), *uvicorn_lines(res)]
    if res.memory:
        parts += ["", plain_table(MEM_HEAD, memory_rows(res), 2)]
    if res.skipped:
        parts += ["", "skipped:", *[f"  - {s}" for s in res.skipped]]
    return "\n".join(parts)


def portable_command(cmd: str, res: Results) -> str:
    """A command as a reader would type it: no venv path, checkout path, log dir or random port.

    The JSON keeps the exact commands; the markdown is for docs/performance.md.
    """
    cmd = cmd.replace(shlex.quote(sys.executable), "python").replace(str(BENCH_DIR), "bench")
    cmd = cmd.replace(str(Path(sys.executable).parent) + "/", "")  # the venv's granian
    logdir = res.settings.get("logdir")
    if logdir:
        cmd = cmd.replace(str(logdir), "LOGDIR")
    wrk = shutil.which("wrk")
    if wrk:
        cmd = cmd.replace(wrk + " ", "wrk ")
    cmd = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", cmd)
    return re.sub(r"--port \d+", "--port PORT", cmd)


def _loadavg(v: Any) -> str:
    return " ".join(f"{x:.2f}" for x in v) if v else "?"


def markdown_report(res: Results) -> str:
    m, s = res.machine, res.settings
    pkgs = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items() if v)
    lines = [
        "## Results",
        "",
        f"Taken {time.strftime('%Y-%m-%d %H:%M %Z')} with `bench/run.py`"
        + (" (INTERRUPTED: partial results)" if res.interrupted else "")
        + ".",
        "",
        f"- Machine: {m.get('cpu')}, {m.get('cores')} cores ({m.get('cores_usable')} usable), "
        f"{m.get('memory_gib')} GiB, Linux {m.get('kernel')}; Python {m.get('python')}; {m.get('wrk')}",
        f"- Load average (1, 5, 15 min) at start: {_loadavg(m.get('loadavg_start'))}; at the end: "
        f"{_loadavg(m.get('loadavg_end'))}",
        f"- Packages: {pkgs}",
        f"- Settings: {s['workers']} workers per server, {s['threads']} threads (gthread), "
        f"{s['worker_connections']} worker connections, keep-alive {s['keep_alive']} s; wrk "
        f"{s['wrk_threads']} threads, {s['connections']} connections (1000 for sleep100ms-c1000), "
        f"{s['duration']} s per run, {s['warmup']} s warm-up, {s['rounds']} interleaved rounds "
        "(corral, gunicorn, corral, ...); figures are medians of the rounds, errors are summed."
        + (f" Servers pinned to CPUs {s['server_cpus']}." if s.get("server_cpus") else "")
        + (f" wrk pinned to CPUs {s['client_cpus']}." if s.get("client_cpus") else ""),
        f"- Command: `{res.settings.get('command_line', 'python bench/run.py')}`",
        "",
        md_table(TABLE_HEAD, [table_cells(r) for r in comparison_rows(res)], 3),
        "",
        "\\* primary comparison. " + SYNC_NOTE + " Errors are non-2xx/3xx responses plus wrk's socket "
        "errors (connect, read, write, timeout). " + CPU_NOTE,
        "",
    ]
    g = granian_lines(res)
    if g:
        lines += ["Non-Python reference:", "", *[f"- {x}" for x in g], ""]
    u = uvicorn_lines(res)
    if u:
        lines += ["ASGI: corral's asgi class against uvicorn (httptools, uvloop, same workers):", "",
                  *[f"- {x}" for x in u], ""]
    if res.memory:
        lines += [
            "Resident memory (from /proc/PID/smaps_rollup; PSS counts pages shared after fork "
            "once, split among the processes sharing them; private is what the process holds "
            "alone, i.e. what one more worker costs. A worker is measured fresh, before any "
            "request; idle, after one request to each route and a second of hello world; and "
            "after the run):",
            "",
            md_table(MEM_HEAD, memory_rows(res), 2),
            "",
        ]
    lines += ["Server commands:", ""]
    for cls, cmds in res.commands.items():
        for name, cmd in cmds.items():
            label = name if cls == name else f"{cls}, {name}"
            lines.append(f"- {label}: `{portable_command(cmd, res)}`")
    example = next((r["command"] for r in res.runs if r.get("mode") == "close"), None)
    if example:
        lines += [
            "",
            f"wrk, e.g.: `{portable_command(example, res)}` (keep-alive runs omit the -H; "
            "POST runs set `BENCH_POST_BYTES=1048576` in wrk's environment)",
        ]
    if res.skipped or res.notes:
        lines += ["", "Skipped or odd:", "", *[f"- {x}" for x in [*res.skipped, *res.notes]]]
    return "\n".join(lines) + "\n"


def write_outputs(res: Results, out: Path, md: Path) -> None:
    res.machine["loadavg_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    md.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(res)
    data["summary"] = res.summary()
    data["comparison"] = comparison_rows(res)
    out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    md.write_text(markdown_report(res))
    log(f"wrote {out} and {md}")


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--classes", default=",".join(ALL_CLASSES), help="worker classes, comma separated")
    p.add_argument(
        "--workloads", default=",".join(w.name for w in WORKLOADS), help="workloads, comma separated"
    )
    p.add_argument("--modes", default=",".join(MODES), help="client modes: keepalive, close")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server and workload")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    p.add_argument("--workers", type=int, default=2, help="worker processes per server")
    p.add_argument("--threads", type=int, default=8, help="threads per gthread worker (both servers)")
    p.add_argument("--worker-connections", type=int, default=1000, help="per worker, both servers")
    p.add_argument("--keep-alive", type=int, default=5, help="server keep-alive timeout, both servers")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    p.add_argument("--server-cpus", default="", help="pin every server to these CPUs (taskset list, e.g. 1)")
    p.add_argument("--client-cpus", default="", help="pin wrk to these CPUs (e.g. 0): a client of its own")
    p.add_argument("--no-granian", action="store_true", help="skip the granian reference")
    p.add_argument("--no-install", action="store_true", help="never install missing tools")
    p.add_argument("--check-tools", action="store_true", help="ensure the tools, report, exit")
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (path printed)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest.json")
    p.add_argument("--md", type=Path, default=None, help="markdown table (default: --out with .md)")
    args = p.parse_args(argv)
    if args.md is None:
        args.md = args.out.with_suffix(".md")
    return args


def _split(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    classes = _split(args.classes)
    modes = _split(args.modes)
    by_name = {w.name: w for w in WORKLOADS}
    unknown = [w for w in _split(args.workloads) if w not in by_name] + [m for m in modes if m not in MODES]
    if unknown:
        sys.exit(f"unknown workload or mode: {', '.join(unknown)} (workloads: {', '.join(by_name)})")
    workloads = [by_name[w] for w in _split(args.workloads)]

    wrk = ensure_wrk(install=not args.no_install)
    wanted = ["gunicorn"] + [GUNICORN_CLASS_NEEDS[c] for c in classes if c in GUNICORN_CLASS_NEEDS]
    if "asgi" in classes:
        wanted += ["uvicorn", "httptools"]
    if not args.no_granian:
        wanted.append("granian")
    problems = ensure_pip_tools(dict.fromkeys(wanted), install=not args.no_install)
    have_corral, corral_problem = corral_classes()
    nofile = raise_nofile()

    s = Settings(
        workers=args.workers,
        threads=args.threads,
        worker_connections=args.worker_connections,
        keep_alive=args.keep_alive,
        wrk_threads=args.wrk_threads,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
        rounds=args.rounds,
        server_cpus=args.server_cpus,
        client_cpus=args.client_cpus,
    )
    res = Results(
        settings={
            **asdict(s),
            "command_line": shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
            "nofile": nofile,
        }
    )
    res.machine = machine_info(wrk)
    if corral_problem:
        res.skipped.append(corral_problem)
    for mod, why in problems.items():
        res.skipped.append(f"{mod}: {why}")

    runnable = []
    for cls in classes:
        if cls not in have_corral:
            res.skipped.append(
                f"{cls}: no corral plugin provides it (installed: {', '.join(sorted(have_corral))})"
            )
        elif "gunicorn" in problems:
            res.skipped.append(f"{cls}: gunicorn is not installed")
        elif cls in GUNICORN_CLASS_NEEDS and GUNICORN_CLASS_NEEDS[cls] in problems:
            res.skipped.append(f"{cls}: gunicorn's {cls} worker needs {GUNICORN_CLASS_NEEDS[cls]}")
        else:
            runnable.append(cls)
    granian = None if args.no_granian or "granian" in problems else granian_command()
    if not args.no_granian and granian is None and "granian" not in problems:
        res.skipped.append("granian: installed but no granian executable found")

    log(
        f"wrk: {wrk}; corral classes: {', '.join(sorted(have_corral)) or 'none'}; "
        f"running: {', '.join(runnable) or 'none'}; granian: {'yes' if granian else 'no'}"
    )
    for line in res.skipped:
        log(f"skipped: {line}")
    if args.check_tools:
        print(json.dumps({"machine": res.machine, "runnable": runnable, "skipped": res.skipped}, indent=1))
        return 0

    reaper = Reaper()
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and
    # Python then never raises KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    res.settings["logdir"] = str(tmp)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SCRUBBED_ENV_PREFIXES) and k not in SCRUBBED_ENV
    }
    bench_file = tmp / "file-1m.bin"
    bench_file.write_bytes(os.urandom(1 << 20))
    env["BENCH_FILE"] = str(bench_file)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    failed = False
    try:
        for cls in runnable:
            bench_class(reaper, wrk, cls, s, env, tmp, workloads, modes, res)
        if granian and any(w.name == "hello" for w in workloads):
            bench_granian(reaper, wrk, granian, s, env, tmp, modes, res)
    except KeyboardInterrupt:
        res.interrupted = True
        log("interrupted: stopping every server")
    except Exception:
        failed = True
        raise
    finally:
        reaper.stop_all()
        write_outputs(res, args.out, args.md)
        if args.keep_logs or failed or res.skipped:
            log(f"server logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(text_report(res))
    return 130 if res.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
