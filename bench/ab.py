#!/usr/bin/env python3
"""corral against an earlier corral: did a change make a class slower?

bench/run.py compares corral with gunicorn; this compares two versions of
corral's own code, for the question a change to the request path raises.
It checks the older revision out into a temporary git worktree and runs
the same installed interpreter on either tree's sources (``PYTHONPATH``
puts that tree's ``core/`` and the class's plugin first, ahead of the
editable installs), so both see the same dependencies.

Figures are less noisy than run.py's, because the question is a few
percent, not a ratio: one worker pinned to one CPU (``--server-cpus``),
wrk with one thread pinned to the other (``--client-cpus``), keep-alive
clients, rounds interleaved old, new, old, new. Reported per class: the
median req/s of each and the median server CPU per request (the worker
tree's user + system time over the run, divided by wrk's request count),
which does not depend on what else the machine runs.

    python bench/ab.py --old cd1e6fc                 # the working tree against cd1e6fc
    python bench/ab.py --old cd1e6fc --new HEAD      # two commits (edit freely meanwhile)
    python bench/ab.py --old v1 --classes gthread --rounds 7 --path /100k
    python bench/ab.py --old-args=--no-worker-stats  # one tree, a setting off against on

With ``--old-args``/``--new-args`` (and no ``--old``) both sides run the
working tree and differ only by those corral arguments: what a feature
costs when it is on.

With ``--together`` the two sides of a round run at the same time on the
same server CPU, each loaded by its own wrk on the client CPU: on a VM
whose speed drifts by more than the effect between one run and the next,
both sides see the same drift. Read the "cpu paired" column then (the
median of each round's new/old server CPU per request): req/s also
depends on how the scheduler shares the CPU between the two.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import run as harness  # bench/run.py: bench/ is sys.path[0] when this runs as a script

ROOT: Final = harness.BENCH_DIR.parent
#: The classes whose request path a core change reaches (sync shares gthread's HttpConnection).
DEFAULT_CLASSES: Final = "sync,gthread,gevent,tornado"


def tree_path(tree: Path, cls: str) -> str:
    """PYTHONPATH that runs ``tree``'s core and its plugin for ``cls`` (sync is the default class)."""
    return os.pathsep.join(str(tree / part) for part in ("core", f"plugins/{cls}", "plugins/sync"))


def start_side(reaper: harness.Reaper, tree: Path, cls: str, args: argparse.Namespace,
               logdir: Path, extra: list[str], side: str) -> tuple[harness.Server, harness.Settings]:
    s = harness.Settings(workers=args.workers, threads=args.threads, worker_connections=1000, keep_alive=5,
                         wrk_threads=args.wrk_threads, connections=args.connections, duration=args.duration,
                         warmup=1.0, rounds=args.rounds, server_cpus=args.server_cpus,
                         client_cpus=args.client_cpus)
    port = harness.free_port()
    logfile = logdir / f"{side}-{tree.name}-{cls}.log"
    argv = harness.corral_argv(cls, port, s, logfile)
    argv[-1:-1] = extra  # before APP_MODULE
    server = harness.Server("corral", cls, harness.pinned(argv, s.server_cpus), port, logfile)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(harness.SCRUBBED_ENV_PREFIXES) and k not in harness.SCRUBBED_ENV}
    env["PYTHONPATH"] = tree_path(tree, cls)
    harness.start_server(reaper, server, env)
    harness.wait_ready(server, args.workers, time.monotonic() + harness.START_TIMEOUT)
    return server, s


def load(reaper: harness.Reaper, server: harness.Server, s: harness.Settings, cls: str,
         args: argparse.Namespace, workload: harness.Workload, duration: float) -> dict[str, Any]:
    assert server.proc is not None
    # Sync closes every connection; the others are compared under keep-alive.
    mode = "close" if cls == "sync" else "keepalive"
    return harness.run_wrk(reaper, harness.wrk_argv(args.wrk, server.port, workload, mode, s, duration),
                           workload, duration, server_pid=server.proc.pid)


def one_run(reaper: harness.Reaper, tree: Path, cls: str, args: argparse.Namespace,
            workload: harness.Workload, logdir: Path, extra: list[str], side: str) -> dict[str, Any]:
    server, s = start_side(reaper, tree, cls, args, logdir, extra, side)
    try:
        load(reaper, server, s, cls, args, workload, 1.0)
        return load(reaper, server, s, cls, args, workload, s.duration)
    finally:
        assert server.proc is not None
        reaper.stop(server.proc)


def together_run(reaper: harness.Reaper, trees: dict[str, Path], cls: str, args: argparse.Namespace,
                 workload: harness.Workload, logdir: Path,
                 extra: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Both sides at once, on the same CPUs, each loaded by its own wrk: whatever the machine
    does meanwhile (a neighbour, a clock change) it does to both. Compare their CPU per
    request (the "cpu paired" column); their req/s also depends on how the scheduler
    shares the CPU between the two."""
    servers: dict[str, tuple[harness.Server, harness.Settings]] = {}
    try:
        for name, tree in trees.items():
            servers[name] = start_side(reaper, tree, cls, args, logdir, extra[name], name)
        results: dict[str, dict[str, Any]] = {}
        for duration in (1.0, args.duration):  # a warm-up, then the measurement
            with ThreadPoolExecutor(len(servers)) as pool:
                futures = {name: pool.submit(load, reaper, server, s, cls, args, workload, duration)
                           for name, (server, s) in servers.items()}
                results = {name: f.result() for name, f in futures.items()}
        return results
    finally:
        for server, _ in servers.values():
            if server.proc is not None:
                reaper.stop(server.proc)


def interval(ratios: list[float], resamples: int = 4000) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of ``ratios`` (each round's new/old).

    What tells whether a run resolves the effect asked about: a median of
    0.985 whose interval is 0.96-1.01 does not show a cost under 2%. Seeded,
    so the same rounds always print the same interval.
    """
    if len(ratios) < 2:
        return float("nan"), float("nan")
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", default=None, help="git revision to compare against (default: the working "
                   "tree, with --old-args)")
    p.add_argument("--old-args", default="", help="extra corral arguments for the old side")
    p.add_argument("--new-args", default="", help="extra corral arguments for the new side")
    p.add_argument("--new", default=None, help="git revision to measure (default: the working tree)")
    p.add_argument("--classes", default=DEFAULT_CLASSES)
    p.add_argument("--path", default="/", help="route of bench/apps.py (default: hello world)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=8, help="gthread's --threads")
    p.add_argument("--server-cpus", default="1", help="taskset list for the server; '' leaves it unpinned")
    p.add_argument("--client-cpus", default="0", help="taskset list for wrk; '' leaves it unpinned")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (2 with --server-cpus '' --client-cpus '' --connections 64 "
                        "--wrk-threads 2 is bench/run.py's hello cell)")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--together", action="store_true",
                   help="run both sides at once on the same CPUs, each with its own wrk (for a "
                        "machine whose speed drifts between runs: it drifts for both alike)")
    args = p.parse_args(argv)
    if args.old is None and not (args.old_args or args.new_args):
        p.error("give --old REVISION, or --old-args/--new-args to compare settings on one tree")
    extra = {"old": args.old_args.split(), "new": args.new_args.split()}
    args.wrk = harness.ensure_wrk(install=False)
    workload = next((w for w in harness.WORKLOADS if w.path == args.path),
                    harness.Workload("custom", args.path, args.path))
    revs = {name: subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
                                 capture_output=True, text=True).stdout.strip()
            for name, rev in (("old", args.old), ("new", args.new)) if rev}
    reaper = harness.Reaper()
    with tempfile.TemporaryDirectory(prefix="corral-ab-") as tmp:
        # Each revision in a worktree of its own: the servers read their
        # sources while they run (workers import their class after fork),
        # so the working tree must not be what is measured while it changes.
        trees = {name: Path(tmp) / f"{name}-{rev}" for name, rev in revs.items()}
        for name, tree in trees.items():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree),
                            revs[name]], check=True)
        trees.setdefault("old", ROOT)
        trees.setdefault("new", ROOT)
        try:
            rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for cls in args.classes.split(","):
                for i in range(args.rounds):
                    # ABBA: old first in even rounds, new first in odd ones, so
                    # a machine that speeds up or slows down over the run
                    # favours neither side.
                    order = list(trees.items())
                    if i % 2:
                        order.reverse()
                    if args.together:
                        both = together_run(reaper, dict(order), cls, args, workload, Path(tmp), extra)
                        runs = [(name, both[name]) for name, _ in order]
                    else:
                        runs = [(name, one_run(reaper, tree, cls, args, workload, Path(tmp), extra[name],
                                               name)) for name, tree in order]
                    for name, result in runs:
                        if "error" in result:
                            print(f"{name} {cls}: {result['error']}", file=sys.stderr)
                            continue
                        result["round"] = i
                        rows.setdefault((cls, name), []).append(result)
                        harness.log(f"{name} {cls}: {result['rps']:.0f} req/s, "
                                    f"{result.get('server_cpu_us', 0):.1f} us CPU/request")
        finally:
            reaper.stop_all()
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                                   check=False)
    sides = {name: " ".join(filter(None, (revs.get(name, "working tree"), " ".join(extra[name]))))
             for name in ("old", "new")}
    print(f"\nold = {sides['old']}, new = {sides['new']}; {workload.path}, "
          f"{args.workers} worker(s) on CPU {args.server_cpus or 'any'}, "
          f"wrk -t{args.wrk_threads} -c{args.connections} on CPU {args.client_cpus or 'any'}, "
          f"median of {args.rounds} (ABBA order{', both sides at once' if args.together else ''})")
    # "paired" is the median of each round's new/old ratio: rounds run a few
    # seconds apart, so a pair shares the machine's state of the moment.
    # "cpu paired" likewise for the server CPU per request: with --together
    # the figure to read (the scheduler's shares need not be exactly equal
    # between a worker with more runnable threads and one with fewer, which
    # moves req/s but not what a request costs).
    # The two "95%" columns: bootstrap intervals of the paired medians (interval()).
    heads = ("old req/s", "new req/s", "new/old", "paired", "paired 95%", "old us/req", "new us/req",
             "cpu paired", "cpu 95%")
    print(f"{'class':8} " + " ".join(f"{h:>11}" for h in heads))
    for cls in args.classes.split(","):
        old, new = rows.get((cls, "old"), []), rows.get((cls, "new"), [])
        if not old or not new:
            print(f"{cls:8} (no result)")
            continue
        o_rps = statistics.median(r["rps"] for r in old)
        n_rps = statistics.median(r["rps"] for r in new)
        o_cpu = statistics.median(r.get("server_cpu_us", 0.0) for r in old)
        n_cpu = statistics.median(r.get("server_cpu_us", 0.0) for r in new)
        by_round = {r["round"]: r["rps"] for r in old}
        pairs = [r["rps"] / by_round[r["round"]] for r in new if r["round"] in by_round]
        paired = statistics.median(pairs) if pairs else float("nan")
        cpu_by_round = {r["round"]: r.get("server_cpu_us", 0.0) for r in old}
        cpu_pairs = [r.get("server_cpu_us", 0.0) / cpu_by_round[r["round"]] for r in new
                     if cpu_by_round.get(r["round"])]
        cpu_paired = statistics.median(cpu_pairs) if cpu_pairs else float("nan")
        lo, hi = interval(pairs)
        cpu_lo, cpu_hi = interval(cpu_pairs)
        print(f"{cls:8} {o_rps:11.0f} {n_rps:11.0f} {n_rps / o_rps:11.3f} {paired:11.3f} "
              f"{f'{lo:.3f}-{hi:.3f}':>11} {o_cpu:11.1f} {n_cpu:11.1f} {cpu_paired:11.3f} "
              f"{f'{cpu_lo:.3f}-{cpu_hi:.3f}':>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
