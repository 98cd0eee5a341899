#!/usr/bin/env python3
"""What writing the access log costs: the same server with it off, text and JSON.

Issue 5 asks that the access log cost no more than a few percent of
throughput. This starts one server per variant, side by side, for one
worker class (default gthread, the class where the per-request cost is
smallest, so the log's share is largest):

    corral  no access log
    corral  --access-logfile FILE               (gunicorn's default format)
    corral  --access-logfile FILE --access-logformat json
    gunicorn no access log / --access-logfile FILE   (the same comparison for the peer)

and runs wrk's hello-world keep-alive load against each in turn, round
after round (interleaved, as bench/run.py does), then prints the median
requests per second of each and the cost of the log relative to the same
server without it. The log files are on the temp directory's disk and are
checked to hold a line per request wrk reported.

    python bench/accesslog.py [--class gthread] [--rounds 7] [--duration 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import run
from run import HOST, WORKLOADS, Reaper, Server, Settings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def variants(cls: str, s: Settings, tmp: Path) -> list[tuple[Server, Path | None]]:
    out: list[tuple[Server, Path | None]] = []
    for name, build in (("corral", run.corral_argv), ("gunicorn", run.gunicorn_argv)):
        logs: list[tuple[str, list[str]]] = [("off", [])]
        logs.append(("text", ["--access-logfile", "{file}"]))
        if name == "corral":  # gunicorn has no JSON form
            logs.append(("json", ["--access-logfile", "{file}", "--access-logformat", "json"]))
        for label, extra in logs:
            port = run.free_port()
            logfile = tmp / f"{name}-{label}.err"
            access = tmp / f"{name}-{label}.access" if extra else None
            argv = build(cls, port, s, logfile)
            # The app is the last argument; options go before it.
            argv[-1:-1] = [a.replace("{file}", str(access)) for a in extra]
            out.append((Server(f"{name} {label}", cls, argv, port, logfile), access))
    return out


def cpu_seconds(server: Server) -> float:
    """User + system CPU time of the server's processes so far (arbiter and workers)."""
    assert server.proc is not None
    total = 0.0
    for pid in [server.proc.pid, *run.children(server.proc.pid)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone between the listing and the read
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--class", dest="cls", default="gthread")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    wrk = run.ensure_wrk(install=True)
    run.raise_nofile()
    s = Settings(workers=args.workers, threads=args.threads, worker_connections=1000, keep_alive=5,
                 wrk_threads=2, connections=args.connections, duration=args.duration,
                 warmup=args.warmup, rounds=args.rounds)
    hello = WORKLOADS[0]
    tmp = Path(tempfile.mkdtemp(prefix="corral-accesslog-"))
    env = {k: v for k, v in run.os.environ.items()
           if not k.startswith(run.SCRUBBED_ENV_PREFIXES) and k not in run.SCRUBBED_ENV}
    env["PYTHONPATH"] = str(run.BENCH_DIR)
    reaper = Reaper()
    servers = variants(args.cls, s, tmp)
    rps: dict[str, list[float]] = {sv.name: [] for sv, _ in servers}
    requests: dict[str, int] = dict.fromkeys(rps, 0)
    # CPU time per request: far steadier than requests per second on a
    # shared 2-core machine, and what the log really adds.
    cpu_us: dict[str, list[float]] = {sv.name: [] for sv, _ in servers}
    try:
        for sv, _ in servers:
            run.start_server(reaper, sv, env)
        for sv, _ in servers:
            run.wait_ready(sv, s.workers, time.monotonic() + run.START_TIMEOUT)
            run.run_wrk(reaper, run.wrk_argv(wrk, sv.port, hello, "keepalive", s, s.warmup), hello, s.warmup)
        for rnd in range(s.rounds):
            for sv, _ in servers:
                cpu_before = cpu_seconds(sv)
                data: dict[str, Any] = run.run_wrk(
                    reaper, run.wrk_argv(wrk, sv.port, hello, "keepalive", s, s.duration), hello, s.duration)
                if "error" in data:
                    raise SystemExit(f"{sv.name}: {data['error']}\n{data.get('output', '')}")
                cpu_us[sv.name].append((cpu_seconds(sv) - cpu_before) / data["requests"] * 1e6)
                rps[sv.name].append(data["rps"])
                requests[sv.name] += data["requests"]
                run.log(f"round {rnd + 1}/{s.rounds} {sv.name:14} {data['rps']:8.0f} req/s "
                        f"{cpu_us[sv.name][-1]:6.1f} CPU us/request")
    finally:
        reaper.stop_all()
    print(f"\n{args.cls}, {s.workers} workers, hello world, keep-alive, {s.connections} connections, "
          f"median of {s.rounds} interleaved {s.duration:g} s rounds, host {HOST}")
    print(f"{'server':16} {'req/s':>8} {'vs log off':>10} {'CPU us/req':>10} {'vs log off':>10} {'lines':>9}")
    for sv, access in servers:
        off = sv.name.split()[0] + " off"
        median = statistics.median(rps[sv.name])
        base = statistics.median(rps[off])
        cpu = statistics.median(cpu_us[sv.name])
        cpu_base = statistics.median(cpu_us[off])
        lines = "-"
        if access is not None:
            count = access.read_bytes().count(b"\n") if access.exists() else 0
            # Every request wrk counted is logged (warm-up requests too).
            if count < requests[sv.name]:
                raise SystemExit(f"{sv.name}: {count} log lines for {requests[sv.name]} requests")
            lines = str(count)
        print(f"{sv.name:16} {median:8.0f} {median / base - 1:+10.1%} {cpu:10.1f} {cpu / cpu_base - 1:+10.1%}"
              f" {lines:>9}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
