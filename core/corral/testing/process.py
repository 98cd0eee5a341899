"""Run a real corral process on an ephemeral port and talk to it.

Readiness is awaited through the error log ("Listening at", "Ready:"),
never a bare sleep. Every wait has a deadline, and the process (with its
workers: it runs in its own session) is killed when the test ends.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

_LISTENING = re.compile(r"Listening at http://(\S+) \(pid")


#: Numbers the log files of the servers one test process starts.
_SERIALS = itertools.count(1)


class CorralProcess:
    """One ``python -m corral`` process.

    :param app: APP_MODULE, e.g. ``corral.testing.apps:app``.
    :param args: extra command-line arguments.
    :param workdir: where logs go (and the working directory).
    :param command: how to run corral; ``python -m corral`` of this
        interpreter by default, e.g. ``["/path/to/venv/bin/corral"]`` to run
        the corral of another environment.
    """

    def __init__(
        self,
        app: str,
        args: Sequence[str] = (),
        *,
        workdir: Path,
        worker_class: str | None = None,
        workers: int | None = 1,
        bind: Sequence[str] = ("127.0.0.1:0",),
        env: dict[str, str] | None = None,
        timeout: float = 20.0,
        command: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.workdir = Path(workdir)
        # A name of its own: id(self) is reused once an earlier server is
        # collected, and a new server then read its predecessor's log (and port).
        serial = next(_SERIALS)
        self.log_path = self.workdir / f"corral-{os.getpid()}-{serial}.log"
        self.out_path = self.workdir / f"corral-{os.getpid()}-{serial}.out"
        self.timeout = timeout
        cmd = [*(command or (sys.executable, "-m", "corral")), "--error-logfile", str(self.log_path)]
        if workers is not None:
            cmd += ["-w", str(workers)]
        for b in bind:
            cmd += ["-b", b]
        if worker_class:
            cmd += ["-k", worker_class]
        cmd += [*args, app]
        self.cmd = cmd
        self.env = {**os.environ, **(env or {})}
        # The default control socket is $XDG_RUNTIME_DIR/corral.ctl: one of
        # its own per server (short, for the 107-byte limit of a unix path),
        # so servers run side by side never meet there. control_path is it.
        self._runtime_dir: str | None = None
        if not (env and "XDG_RUNTIME_DIR" in env):
            self._runtime_dir = tempfile.mkdtemp(prefix="corral-rt-")
            self.env["XDG_RUNTIME_DIR"] = self._runtime_dir
        self.control_path = os.path.join(self.env.get("XDG_RUNTIME_DIR", ""), "corral.ctl")
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: list[str] = []

    # -- lifecycle ---------------------------------------------------------------

    def start(self, wait_ready: bool = True) -> CorralProcess:
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT, cwd=self.workdir,
            env=self.env, start_new_session=True,
        )
        if wait_ready:
            self.wait_for_log(r"Listening at")
            # Every listener is bound before the first worker starts, so by
            # "Ready:" all of them are logged (not only the first).
            self.wait_for_log(r"Ready: ")
            self.addresses = [m.group(1) for m in _LISTENING.finditer(self.log())]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.addresses[0].rsplit(":", 1)[1])

    def __enter__(self) -> CorralProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        elif self.proc is not None:
            # The arbiter is gone; make sure no orphaned worker survives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self._out.close()
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int:
        """Send ``sig`` and wait for the arbiter to exit; returns its exit status."""
        assert self.proc is not None
        self.send_signal(sig)
        return self.proc.wait(timeout or self.timeout)

    def wait_exit(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout or self.timeout)

    # -- observation ---------------------------------------------------------------

    def log(self) -> str:
        text = ""
        for path in (self.log_path, self.out_path):
            with contextlib.suppress(FileNotFoundError):
                text += path.read_text(errors="replace")
        return text

    def wait_for_log(self, pattern: str, timeout: float | None = None, count: int = 1) -> str:
        """Wait until ``pattern`` occurs ``count`` times in the logs; returns the log."""
        deadline = time.monotonic() + (timeout or self.timeout)
        regex = re.compile(pattern)
        while True:
            text = self.log()
            if len(regex.findall(text)) >= count:
                return text
            if self.proc is not None and self.proc.poll() is not None:
                text = self.log()
                if len(regex.findall(text)) >= count:
                    return text
                raise AssertionError(
                    f"corral exited ({self.proc.returncode}) before logging {pattern!r}:\n{text}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {pattern!r} in the log:\n{text}")
            time.sleep(0.02)

    def worker_pids(self) -> list[int]:
        """The arbiter's live child processes (Linux /proc)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return []
        pids = []
        for pid in (int(p) for p in text.split()):
            # A process reaped between open() and read() fails the read with
            # ESRCH (ProcessLookupError), not ENOENT: gone either way.
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(pid)
        return sorted(pids)

    def wait_for_workers(self, count: int, timeout: float | None = None,
                         exclude: Sequence[int] = ()) -> list[int]:
        """Wait until exactly ``count`` workers run, none of them in ``exclude``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            pids = self.worker_pids()
            if len(pids) == count and not set(pids) & set(exclude):
                return pids
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} workers (not {list(exclude)}), have {pids}")
            time.sleep(0.02)

    # -- clients ------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> socket.socket:
        host, _, port = self.addresses[0].rpartition(":")
        return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection with http.client: (status, headers, body)."""
        host, _, port = self.addresses[0].rpartition(":")
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def raw(self, data: bytes, timeout: float = 10.0) -> bytes:
        """Send raw bytes, half-close nothing, read until the server closes."""
        with self.connect(timeout) as sock:
            sock.sendall(data)
            return read_until_close(sock, timeout)


def run_corral(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m corral ARGS`` to completion and return it (text output captured).

    For commands that end by themselves: ``plugins``, ``--help``,
    ``--check-config``, or a start-up that must fail with a message.

    :param env: variables added to (not replacing) this process's environment.
    :raises subprocess.TimeoutExpired: if it runs longer than ``timeout`` seconds.
    """
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], capture_output=True, text=True, timeout=timeout,
        cwd=cwd, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )


def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    """Wait until ``path`` exists, e.g. a marker an app writes when a request reaches it."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def read_until_close(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback TCP ports free right now (for configs that need ports up front)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def parse_responses(data: bytes) -> Iterator[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of HTTP/1.1 responses (CL or chunked framed, or close)."""
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete response head: {data[:200]!r}")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if 100 <= status < 200:
            data = rest
            yield status, headers, b""
            continue
        if "content-length" in headers:
            n = int(headers["content-length"])
            body, data = rest[:n], rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    _, _, rest = rest.partition(b"\r\n")
                    break
                body += rest[:size]
                rest = rest[size + 2 :]
            data = rest
        else:
            body, data = rest, b""
        yield status, headers, body
