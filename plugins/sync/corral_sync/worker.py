"""The sync worker: accept, serve one request, close; one connection at a time.

Like gunicorn's sync worker it closes every connection after one response:
with one request at a time per process, an idle keep-alive client would
hold the whole worker. Run it behind a buffering proxy (nginx), which
absorbs slow clients; use gthread or gevent to face clients directly.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket

from corral.api import HttpConnection, Worker, acceptor


class SyncWorker(Worker):
    multithread = False
    # TERM cuts a request still running at the graceful timeout (Worker.handle_exit).
    requests_in_main_thread = True

    def run(self) -> None:
        # Each listening socket with what its connections need: its accept
        # function and its environ context, looked up once per wake-up.
        # acceptor() sets TCP_NODELAY: a long streamed response outlasts the
        # client's quick-ack start, and Nagle would then hold each small
        # chunk for a delayed ACK. The system call it costs per connection
        # did not show in bench/ab.py (sync, hello, 5 rounds: within noise).
        listeners = {lst.sock: (acceptor(lst.sock), self.envs[id(lst)]) for lst in self.listeners}
        for sock in listeners:
            sock.setblocking(False)
        waitables: list[socket.socket | int] = [*listeners, self.wake_fd]
        # Wake at least this often to beat the heartbeat and check the parent.
        interval = min(1.0, (self.cfg.timeout or 2.0) / 2)
        while self.alive:
            self.notify()
            try:
                ready, _, _ = select.select(waitables, [], [], interval)
            except OSError:
                break
            for waitable in ready:
                if waitable is self.wake_fd:
                    with contextlib.suppress(OSError):
                        os.read(self.wake_fd, 64)
                    continue
                assert isinstance(waitable, socket.socket)
                accept, env = listeners[waitable]
                # Serve every connection already queued before selecting again.
                while self.alive:
                    try:
                        client, peer = accept()
                    except (BlockingIOError, InterruptedError):
                        break  # another worker took it
                    except OSError:
                        break
                    HttpConnection(self, client, peer, env, keepalive=0).serve()
                    self.notify()
            if not self.keep_serving():
                break
