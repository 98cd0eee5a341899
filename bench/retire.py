"""Requests lost when workers retire under wrk's keep-alive load: corral and gunicorn side by side.

For each worker class, each way a worker retires and each connection count,
this starts the server (2 workers, bench/apps.py's hello world), runs
``wrk -t1 -cN -d7s`` against it, and retires workers while wrk runs:

    hup           5 HUPs, one a second
    max-requests  --max-requests 1500 (workers recycle throughout the run)
    ttou          TTIN, then two TTOUs
    usr2          USR2, then TERM to the old arbiter once the new one serves
    shutdown      wrk opens a new connection per request (Connection: close,
                  as a proxy without upstream keep-alive), and the arbiter
                  gets TERM: a graceful shutdown while connections arrive

It prints wrk's request count, socket errors (connect, read, write,
timeout) and non-2xx responses. A lost request shows as a read error: wrk
counts a connection closed or reset under a request it sent. In the
shutdown cell, connect errors and timeouts are expected once the server is
gone (nothing was sent on those); read and write errors are lost requests.
The numbers go into docs/arbiter.md.

    python bench/retire.py                       # every class, both servers, c8 and c64
    python bench/retire.py --classes gthread --servers corral --connections 8

Bounded: each cell runs about ten seconds; servers run in their own
process groups and are killed at the end of each cell.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

BENCH_DIR: Final = Path(__file__).resolve().parent
#: wrk's run; the retirements happen in its first five seconds.
DURATION: Final = 7
SCENARIOS: Final = ("hup", "max-requests", "ttou", "usr2", "shutdown")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise SystemExit(f"server on port {port} never answered")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def server_command(server: str, klass: str, port: int, pidfile: str, extra: list[str]) -> list[str]:
    if server == "corral":
        return [sys.executable, "-m", "corral", "-k", klass, "-w", "2", "-b", f"127.0.0.1:{port}",
                "-p", pidfile, "--chdir", str(BENCH_DIR), *extra, "apps:app"]
    exe = shutil.which("gunicorn")
    if exe is None:
        raise SystemExit("gunicorn is not installed: pip install gunicorn")
    return [exe, "-k", klass, "-w", "2", "-b", f"127.0.0.1:{port}", "-p", pidfile,
            "--chdir", str(BENCH_DIR), *extra, "apps:app"]


def run_cell(server: str, klass: str, scenario: str, connections: int) -> dict[str, int]:
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="retire-")
    pidfile = os.path.join(tmp, "server.pid")
    extra = ["--max-requests", "1500"] if scenario == "max-requests" else []
    log = open(os.path.join(tmp, "server.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(server_command(server, klass, port, pidfile, extra), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port)
        time.sleep(1.0)  # both workers booted (a bench, not a test: a fixed settle time is fine)
        close = ["-H", "Connection: close"] if scenario == "shutdown" else []
        wrk = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{DURATION}s", *close,
                                f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        if scenario == "shutdown":
            os.kill(proc.pid, signal.SIGTERM)
        elif scenario == "hup":
            for _ in range(5):
                os.kill(proc.pid, signal.SIGHUP)
                time.sleep(1.0)
        elif scenario == "ttou":
            os.kill(proc.pid, signal.SIGTTIN)
            time.sleep(1.0)
            for _ in range(2):
                os.kill(proc.pid, signal.SIGTTOU)
                time.sleep(1.0)
        elif scenario == "usr2":
            os.kill(proc.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 10
            new = f"{pidfile}.2"
            while not os.path.exists(new) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.5)  # the new arbiter's workers boot
            os.kill(proc.pid, signal.SIGTERM)
        out, _ = wrk.communicate(timeout=DURATION + 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()
    counts = {"requests": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    m = re.search(r"(\d+) requests in", out)
    if m:
        counts["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        counts.update(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        counts["non2xx"] = int(m.group(1))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="sync,gthread,gevent,tornado")
    parser.add_argument("--servers", default="corral,gunicorn")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--connections", default="8,64")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    print(f"{'server':8} {'class':8} {'scenario':13} {'c':>3} {'requests':>9} {'errors':>7} {'non2xx':>7}"
          "  connect/read/write/timeout")
    for klass in args.classes.split(","):
        for scenario in args.scenarios.split(","):
            for conns in (int(c) for c in args.connections.split(",")):
                for server in args.servers.split(","):
                    c = run_cell(server, klass, scenario, conns)
                    errors = c["connect"] + c["read"] + c["write"] + c["timeout"]
                    detail = "/".join(str(c[k]) for k in ("connect", "read", "write", "timeout"))
                    print(f"{server:8} {klass:8} {scenario:13} {conns:>3} {c['requests']:>9} {errors:>7} "
                          f"{c['non2xx']:>7}  {detail}", flush=True)


if __name__ == "__main__":
    main()
