"""``corral ctl``: the control socket's client.

    corral ctl status                    pools, workers, counters
    corral ctl workers add POOL [N]      grow a pool (remove: shrink it)
    corral ctl worker kill PID           retire one worker gracefully
    corral ctl reload | reopen | upgrade | shutdown [--now]
    corral ctl config | listeners | help
    corral ctl --json ...                the server's answer as JSON

Exit status: 0 done, 1 the server refused (the reason is printed), 2 the
command line was wrong or no server answered on the socket.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence
from typing import Any

from corral_ops.control import default_path

TIMEOUT = 10.0


def request(path: str, message: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one command, return the server's answer (raises OSError if nobody answers)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise OSError("the server closed the connection without answering")
    answer: dict[str, Any] = json.loads(data)
    return answer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral ctl", description="Steer a running corral through "
                                     "its control socket.")
    parser.add_argument("--socket", "-s", default=None, metavar="PATH",
                        help=f"the control socket (default: {default_path()})")
    parser.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for verb, text in (("status", "pools, workers and their counters"), ("config", "the settings in force"),
                       ("listeners", "the bound addresses"), ("reload", "reload the configuration (HUP)"),
                       ("reopen", "reopen the log files (USR1)"), ("upgrade", "start a new arbiter (USR2)"),
                       ("help", "the commands the server knows")):
        sub.add_parser(verb, help=text)
    shutdown = sub.add_parser("shutdown", help="stop the server (gracefully unless --now)")
    shutdown.add_argument("--now", action="store_true", help="do not wait for requests in flight (QUIT)")
    shutdown.add_argument("--graceful", action="store_true",
                          help="the default: finish what is in flight (TERM)")
    workers = sub.add_parser("workers", help="add or remove workers of a pool")
    workers.add_argument("action", choices=("add", "remove"))
    workers.add_argument("pool", help="the pool's name ('main' without pools)")
    workers.add_argument("count", nargs="?", type=int, default=1, help="how many (default 1)")
    worker = sub.add_parser("worker", help="act on one worker")
    worker.add_argument("action", choices=("kill",))
    worker.add_argument("pid", type=int)
    return parser


def _message(args: argparse.Namespace) -> dict[str, Any]:
    if args.verb == "workers":
        return {"command": f"workers.{args.action}", "pool": args.pool, "count": args.count}
    if args.verb == "worker":
        return {"command": "worker.kill", "pid": args.pid}
    if args.verb == "shutdown":
        return {"command": "shutdown", "graceful": not args.now}
    return {"command": args.verb}


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}M"


def print_status(result: dict[str, Any]) -> None:
    arb = result["arbiter"]
    state = "stopping" if arb["stopping"] else "ready" if arb["ready"] else "not ready"
    print(f"corral {arb['version']}, arbiter {arb['pid']}, up {_ago(arb['uptime'])}, "
          f"{state}, reloads {arb['generation']}")
    for pool in result["pools"]:
        requests = "-" if pool["requests"] is None else pool["requests"]
        recycled = ", ".join(f"{n} for {r}" for r, n in pool["recycled"].items()) or "none"
        print(f"\npool {pool['name']}: {pool['class']} x {pool['size']}, app {pool['app']}, "
              f"at {', '.join(pool['listeners'])}")
        in_flight = "-" if pool["in_flight"] is None else pool["in_flight"]
        print(f"  requests {requests}, in flight {in_flight}, recycled {recycled}")
        print(f"  {'PID':>8} {'STATE':<10} {'UP':>6} {'REQUESTS':>9} {'IN FLIGHT':>9} {'BEAT':>6} {'RSS':>8}")
        for w in pool["workers"]:
            print(f"  {w['pid']:>8} {w['state']:<10} {_ago(w['uptime']):>6} "
                  f"{'-' if w['requests'] is None else w['requests']:>9} "
                  f"{'-' if w['in_flight'] is None else w['in_flight']:>9} "
                  f"{_ago(w['last_heartbeat']):>6} {_mib(w['rss']):>8}")


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv))
    path = args.socket or default_path()
    try:
        answer = request(path, _message(args))
    except (OSError, ValueError) as exc:
        print(f"corral ctl: no answer on {path}: {exc}\n(is corral running with this control "
              "socket? see --socket, and control_socket in its configuration)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0 if answer.get("ok") else 1
    if not answer.get("ok"):
        print(f"corral ctl: {answer.get('error')}", file=sys.stderr)
        return 1
    result: Any = answer.get("result")
    if args.verb == "status":
        print_status(result)
    elif isinstance(result, dict) and "action" in result:
        print(f"{result['action']} ({result['queued']})")
    elif args.verb == "workers":
        print(f"pool {result['pool']}: {result['was']} -> {result['size']} workers")
    elif args.verb == "worker":
        print(f"worker {result['pid']} (pool {result['pool']}) is retiring; its pool replaces it")
    elif args.verb == "listeners":
        for lst in result:
            print(f"{lst['name']}  fd {lst['fd']}  pools {', '.join(lst['pools'])}")
    elif args.verb == "help":
        print("\n".join(result))
    else:
        print(json.dumps(result, indent=2, default=str))
    return 0
