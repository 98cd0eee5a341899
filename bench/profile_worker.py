#!/usr/bin/env python3
"""Profile one corral worker under wrk load and print the top per-request costs.

    python bench/profile_worker.py                      # cProfile, sync, hello world
    python bench/profile_worker.py --tool py-spy        # sampling, lower overhead
    python bench/profile_worker.py --tool strace        # system calls per request
    python bench/profile_worker.py -k gevent --mode keepalive --path /100k

One worker (-w 1) serves everything, so every request wrk makes lands in the
profiled process. With cProfile, the worker enables the profiler itself
(bench/profile_hooks.py, a corral config file) once booted and dumps it when
stopped gracefully, with the exact number of requests it served. cProfile's
per-call overhead inflates small functions (roughly doubles a hello-world
request), so read its figures as a ranking with call counts. py-spy samples
from outside without slowing the worker much; its per-request figures use
wrk's request rate times the sampled time. strace -c counts the system
calls the worker makes (each one a kernel crossing that no Python
optimisation shows), per request the same way.

(Not named profile.py: bench/ is on sys.path of the servers the harness
starts, and a profile.py there would shadow the stdlib module cProfile
imports.)
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import run as harness  # bench/run.py: process handling and wrk, shared

HOOKS = harness.BENCH_DIR / "profile_hooks.py"


def short(path: str) -> str:
    """A path without the checkout or site-packages prefix, to keep the table narrow."""
    for marker in ("/site-packages/", "/work/main/", str(harness.BENCH_DIR.parent) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if path.startswith(sys.base_prefix):
        return "stdlib/" + os.path.basename(path)
    return path


def cprofile_report(prof: Path, requests: int, top: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(str(prof))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in raw.items():
        where = f"{short(file)}:{line}({func})" if file != "~" else func
        rows.append(
            {
                "function": where,
                "calls_per_req": nc / requests,
                "self_us": tt / requests * 1e6,
                "cum_us": ct / requests * 1e6,
                "self_pct": 100 * tt / total if total else 0.0,
            }
        )
    rows.sort(key=lambda r: r["self_us"], reverse=True)
    print(f"\ncProfile: {requests} requests, {total / requests * 1e6:.1f} us profiled per request")
    print(f"{'self us/req':>11} {'cum us/req':>10} {'calls/req':>9} {'self %':>6}  function")
    for r in rows[:top]:
        print(
            f"{r['self_us']:11.2f} {r['cum_us']:10.2f} {r['calls_per_req']:9.2f} {r['self_pct']:6.1f}  "
            f"{r['function']}"
        )
    return rows[:top]


def pyspy_report(raw: Path, rate: int, requests: float, top: int) -> list[dict[str, Any]]:
    """Self and inclusive time per function from py-spy's collapsed stacks."""
    self_samples: Counter[str] = Counter()
    incl_samples: Counter[str] = Counter()
    total = torn = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        if not count_s.isdigit():
            # --nonblocking reads the worker's memory while it runs, so now
            # and then a frame name is torn and holds a newline or a space.
            torn += 1
            continue
        count = int(count_s)
        total += count
        # "func (file:line)": group by function, not by line.
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        self_samples[frames[-1]] += count
        for frame in set(frames):
            incl_samples[frame] += count
    us_per_sample = 1e6 / rate
    print(
        f"\npy-spy: {total} samples at {rate} Hz over ~{requests:.0f} requests "
        f"({total * us_per_sample / requests:.1f} us on CPU per request)"
        + (f"; {torn} torn lines skipped" if torn else "")
    )
    print(f"{'self us/req':>11} {'incl us/req':>11} {'self %':>6}  function")
    rows = []
    for frame, n in self_samples.most_common(top):
        row = {
            "function": frame,
            "self_us": n * us_per_sample / requests,
            "incl_us": incl_samples[frame] * us_per_sample / requests,
            "self_pct": 100 * n / total,
        }
        rows.append(row)
        print(f"{row['self_us']:11.2f} {row['incl_us']:11.2f} {row['self_pct']:6.1f}  {frame}")
    return rows


def strace_report(out: Path, mode: str, top: int) -> list[dict[str, Any]]:
    """strace -c's summary table, per request.

    strace slows the worker, so wrk's rate says little about how many
    requests were traced; the trace itself does: with Connection: close each
    request is one successful accept4, and with keep-alive each small
    response is one sendto. On an asyncio loop (tornado) a pool thread
    waking the loop is a sendto too, on the loop's self-pipe: there the
    count is "per response or wake-up", and fewer wake-ups look like more
    calls per request.
    """
    rows = []
    for line in out.read_text().splitlines():
        parts = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(parts) < 5 or not parts[0].replace(".", "").isdigit() or parts[-1] == "total":
            continue
        calls = int(parts[3])
        errors = int(parts[4]) if len(parts) == 6 else 0
        rows.append({"syscall": parts[-1], "calls_per_req": float(calls), "errors": errors,
                     "pct_time": float(parts[0])})  # fmt: skip
    basis = "accept4" if mode == "close" else "sendto"
    counted = next((r for r in rows if r["syscall"] == basis), None)
    if counted is None:
        print(f"no {basis} calls traced; raw table:\n{out.read_text()}")
        return rows
    requests = counted["calls_per_req"] - counted["errors"]
    for r in rows:
        r["calls_per_req"] /= requests
    rows.sort(key=lambda r: r["calls_per_req"], reverse=True)
    total = sum(r["calls_per_req"] for r in rows)
    print(f"\nstrace -c: {requests:.0f} requests (one per successful {basis}), {total:.2f} system calls each")
    print(f"{'calls/req':>9} {'% time':>6}  syscall (errors)")
    for r in rows[:top]:
        errs = f" ({r['errors']} failed)" if r["errors"] else ""
        print(f"{r['calls_per_req']:9.2f} {r['pct_time']:6.1f}  {r['syscall']}{errs}")
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tool", choices=("cprofile", "py-spy", "strace"), default="cprofile")
    p.add_argument("-k", "--worker-class", default="sync")
    p.add_argument("--mode", choices=harness.MODES, default="close", help="wrk client mode")
    p.add_argument("--path", default="/", help="route of bench/apps.py")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--server-args", default="", help="extra corral arguments ('--access-logfile /dev/null')")
    args = p.parse_args(argv)

    wrk = harness.ensure_wrk(install=True)
    pyspy = None
    if args.tool == "py-spy":
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(pyspy).exists():
            print("py-spy not found: pip install py-spy, or use --tool cprofile", file=sys.stderr)
            return 2
    elif args.tool == "strace":
        pyspy = shutil.which("strace")
        if pyspy is None:
            print("strace not found: apt-get install strace, or use --tool cprofile", file=sys.stderr)
            return 2
    harness.raise_nofile()
    reaper = harness.Reaper()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, harness._raise_on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="corral-profile-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(harness.SCRUBBED_ENV_PREFIXES) and k not in harness.SCRUBBED_ENV
    }
    env["BENCH_PROFILE_OUT"] = str(tmp / "worker.prof")
    port = harness.free_port()
    argv_ = [
        sys.executable, "-m", "corral", "-k", args.worker_class, "-w", "1", "-b", f"{harness.HOST}:{port}",
        "--chdir", str(harness.BENCH_DIR), "--log-level", "warning",
        "--error-logfile", str(tmp / "corral.log"), "--keep-alive", "5", "--worker-tmp-dir", "/dev/shm",
    ]  # fmt: skip
    argv_ += harness.shlex.split(args.server_args)
    if args.tool == "cprofile":
        argv_ += ["-c", str(HOOKS)]
    app = harness.ASGI_APP if args.worker_class == "asgi" else harness.APP
    server = harness.Server("corral", args.worker_class, [*argv_, app], port, tmp / "corral.log")
    workload = harness.Workload("profile", args.path, "profiled route")
    settings = harness.Settings(
        workers=1, threads=1, worker_connections=1000, keep_alive=5, wrk_threads=1,
        connections=args.connections, duration=args.duration, warmup=0, rounds=1,
    )  # fmt: skip
    result: dict[str, Any] = {"command": harness.shlex.join(server.argv), "tool": args.tool}
    try:
        harness.start_server(reaper, server, env)
        harness.wait_ready(server, 1, time.monotonic() + harness.START_TIMEOUT)
        assert server.proc is not None
        worker_pid = harness.children(server.proc.pid)[0]
        if args.tool == "cprofile":
            wrk_argv = harness.wrk_argv(wrk, port, workload, args.mode, settings, args.duration)
            data = harness.run_wrk(reaper, wrk_argv, workload, args.duration)
        else:
            assert pyspy is not None
            # wrk runs 3 s longer than the tool samples, so the whole sampled
            # window is under load (py-spy takes a moment to attach).
            wrk_argv = harness.wrk_argv(wrk, port, workload, args.mode, settings, args.duration + 3)
            env_wrk = {**os.environ, "BENCH_POST_BYTES": "0"}
            wrk_proc = reaper.start(wrk_argv, log=tmp / "wrk.out", env=env_wrk, cwd=harness.BENCH_DIR)
            if args.tool == "py-spy":
                spy = [pyspy, "record", "--nonblocking", "-r", str(args.rate), "-d", str(int(args.duration)),
                       "-f", "raw", "-o", str(tmp / "stacks.txt"), "-p", str(worker_pid)]  # fmt: skip
                subprocess.run(spy, capture_output=True, timeout=args.duration + 60, check=True)
            else:
                # strace -c prints its table when interrupted; SIGINT after the duration.
                # -f: every thread of the worker (gthread's pool threads send the
                # responses), not only the main one that -p names.
                spy = [pyspy, "-f", "-c", "-o", str(tmp / "strace.txt"), "-p", str(worker_pid)]
                tracer = reaper.start(spy, log=tmp / "strace.log", env=env, cwd=tmp)
                try:
                    tracer.wait(timeout=int(args.duration))
                except subprocess.TimeoutExpired:
                    tracer.send_signal(signal.SIGINT)
                    tracer.wait(timeout=30)
                reaper.procs.remove(tracer)
            wrk_proc.wait(timeout=args.duration + harness.WRK_GRACE)
            reaper.procs.remove(wrk_proc)
            text = (tmp / "wrk.out").read_text()
            line = next(ln for ln in text.splitlines() if ln.startswith("BENCH_JSON "))
            data = json.loads(line[len("BENCH_JSON ") :])
            data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
        if "error" in data:
            print(f"wrk failed: {data['error']}\n{data.get('output', '')}", file=sys.stderr)
            return 1
        print(f"wrk: {harness.shlex.join(wrk_argv)}", flush=True)
        print(f"  {data['rps']:.0f} req/s while profiled, errors {data['errors']}", flush=True)
        result.update(wrk=harness.shlex.join(wrk_argv), rps=data["rps"])
        # A graceful stop of the arbiter: the worker leaves its loop and
        # dumps its profile in worker_exit.
        os.kill(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=harness.STOP_TIMEOUT + 20)
        if args.tool == "cprofile":
            meta = tmp / f"worker.prof.{worker_pid}.json"
            if not meta.exists():
                print(f"the worker wrote no profile; log:\n{server.log_tail()}", file=sys.stderr)
                return 1
            requests = json.loads(meta.read_text())["requests"]
            result["rows"] = cprofile_report(tmp / f"worker.prof.{worker_pid}", requests, args.top)
        elif args.tool == "py-spy":
            requests_f = data["rps"] * int(args.duration)
            result["rows"] = pyspy_report(tmp / "stacks.txt", args.rate, requests_f, args.top)
        else:
            result["rows"] = strace_report(tmp / "strace.txt", args.mode, args.top)
    finally:
        reaper.stop_all()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
