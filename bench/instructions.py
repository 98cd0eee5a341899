#!/usr/bin/env python3
"""Instructions a corral worker executes per request, counted by callgrind: a setting's cost without noise.

bench/ab.py compares req/s and CPU time, which on a shared 2-core VM
spread by several percent from run to run, more than the effect of a
small feature (the live counters, a cheaper access log line). This counts
what the worker process executes instead: the server runs under valgrind's
callgrind (``--trace-children``, so the forked worker is counted too), a
client sends a warm-up, the worker's counters are zeroed
(``callgrind_control -z``), the client makes exactly ``--requests``
keep-alive requests on 4 connections (a connection per request for sync,
which closes each) and checks every response, and the
counters are dumped (``callgrind_control -d``). Instructions over requests
is the figure; each server is measured ``--repeats`` times to show how
steady it is (the heartbeat thread and the loop's idle wake-ups make it
vary by a fraction of a percent).

    python bench/instructions.py --old-args=--no-worker-stats             # the counters' cost
    python bench/instructions.py --new-args="--access-logfile /dev/null"  # the access log's
    python bench/instructions.py --classes gthread,asgi --requests 3000

Instructions are not time (a cache miss or a system call costs more than
its count says), so this answers "how much more work", and bench/ab.py
"how much slower"; a change that moves the count by 2% and the time by 10%
is worth a closer look. Needs ``valgrind`` (apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Final

BENCH_DIR: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH_DIR.parent
HOST: Final = "127.0.0.1"
#: A browser-like GET with the fields an access log reads.
REQUEST: Final = (b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n"
                  b"Referer: http://bench/\r\n\r\n")
START_TIMEOUT: Final = 180.0  # Python's imports under valgrind take a while


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, deadline: float, proc: subprocess.Popen[bytes]) -> None:
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited while booting (rc {proc.returncode})")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start listening in time") from None
            time.sleep(0.5)


def closing_requests(port: int, count: int) -> None:
    """``count`` requests, a connection each (the sync class closes after every response)."""
    request = REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    for _ in range(count):
        with socket.create_connection((HOST, port), timeout=60) as s:
            s.sendall(request)
            data = b""
            while more := s.recv(65536):
                data += more
        if not data.startswith(b"HTTP/1.1 200 "):
            raise SystemExit(f"unexpected response: {data[:200]!r}")


def requests(port: int, count: int, connections: int = 4) -> None:
    """``count`` keep-alive requests, round robin over ``connections``; every response checked."""
    socks = [socket.create_connection((HOST, port), timeout=60) for _ in range(connections)]
    pending = [b""] * connections
    try:
        for i in range(count):
            k = i % connections
            socks[k].sendall(REQUEST)
            data = pending[k]
            while True:
                head, sep, rest = data.partition(b"\r\n\r\n")
                if sep:
                    if not head.startswith(b"HTTP/1.1 200 "):
                        raise SystemExit(f"unexpected response: {head[:200]!r}")
                    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    if match is None:
                        raise SystemExit(f"no Content-Length: {head[:200]!r}")
                    length = int(match.group(1))
                    if len(rest) >= length:
                        pending[k] = rest[length:]
                        break
                more = socks[k].recv(65536)
                if not more:
                    raise SystemExit("the server closed a keep-alive connection")
                data += more
    finally:
        for s in socks:
            s.close()


def worker_pid(arbiter: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.2)
    raise SystemExit("no worker appeared")


def dumped_instructions(outdir: Path, pid: int, before: set[Path]) -> int:
    """The ``summary:`` of the dump callgrind just wrote for ``pid``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in sorted(set(outdir.glob(f"cg.{pid}.*")) - before):
            text = path.read_text(errors="replace")
            match = re.search(r"^summary:\s*(\d+)", text, re.M)
            if match:
                return int(match.group(1))
        time.sleep(0.2)
    raise SystemExit(f"callgrind wrote no dump for {pid}")


def counted(pid: int, outdir: Path, work: Callable[[], None]) -> tuple[float, int]:
    """(seconds, instructions) of the worker while ``work`` runs."""
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    before = set(outdir.glob(f"cg.{pid}.*"))
    started = time.monotonic()
    work()
    took = time.monotonic() - started
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    return took, dumped_instructions(outdir, pid, before)


def measure(cls: str, extra: list[str], args: argparse.Namespace, outdir: Path) -> list[float]:
    port = free_port()
    app = "asgi_apps:app" if cls == "asgi" else "apps:app"
    argv = ["valgrind", "--tool=callgrind", "--trace-children=yes",
            f"--callgrind-out-file={outdir}/cg.%p", sys.executable, "-m", "corral", "-k", cls,
            "-w", "1", "-b", f"{HOST}:{port}", "--chdir", str(BENCH_DIR), "--log-level", "warning",
            "--timeout", "600", "--graceful-timeout", "60", "--worker-tmp-dir", "/dev/shm"]
    if cls == "gthread":
        argv += ["--threads", "4"]
    argv += [*extra, app]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        wait_listening(port, deadline, proc)
        pid = worker_pid(proc.pid, deadline)
        send = closing_requests if cls == "sync" else requests
        send(port, args.warmup)
        per_request = []
        for _ in range(args.repeats):
            took, busy = counted(pid, outdir, partial(send, port, args.requests))
            # What the worker does by the clock (heartbeats, the loop's timed
            # wake-ups) is no work of the requests, and under valgrind's
            # slowdown a request takes long enough for it to matter: the
            # same stretch of time idle is counted and taken off.
            _, idle = counted(pid, outdir, partial(time.sleep, took))
            per_request.append((busy - idle) / args.requests)
        return per_request
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old-args", default="", help="corral arguments of the first side")
    p.add_argument("--new-args", default="", help="corral arguments of the second side")
    p.add_argument("--classes", default="sync,gthread,gevent,tornado,asgi")
    p.add_argument("--requests", type=int, default=2000, help="requests counted per measurement")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3, help="measurements per server")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep callgrind's files in this directory (old/ and new/ per class), "
                        "for callgrind_annotate")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind: apt-get install valgrind")
    print(f"old = {args.old_args or '(defaults)'}, new = {args.new_args or '(defaults)'}; "
          f"instructions per request of one worker, {args.requests} keep-alive requests, "
          f"median of {args.repeats}", flush=True)
    print(f"{'class':<10} {'old':>10} {'new':>10} {'new/old':>8}  spread", flush=True)
    for cls in args.classes.split(","):
        with tempfile.TemporaryDirectory(prefix="corral-ir-") as tmp:
            dirs = {side: (args.keep or Path(tmp)) / cls / side for side in ("old", "new")}
            for d in dirs.values():
                d.mkdir(parents=True, exist_ok=True)
            old = measure(cls, args.old_args.split(), args, dirs["old"])
            new = measure(cls, args.new_args.split(), args, dirs["new"])
        spread = max((max(v) - min(v)) / statistics.median(v) for v in (old, new))
        print(f"{cls:<10} {statistics.median(old):>10.0f} {statistics.median(new):>10.0f} "
              f"{statistics.median(new) / statistics.median(old):>8.4f}  {spread:.2%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
