"""The sync worker: accept, serve one request, close; one connection at a time.

Like gunicorn's sync worker it closes every connection after one response:
with one request at a time per process, an idle keep-alive client would
hold the whole worker. Run it behind a buffering proxy (nginx), which
absorbs slow clients; use gthread or gevent to face clients directly.
"""

from __future__ import annotations

import select
import socket

from corral.api import HttpConnection, Worker, acceptor, closing_for_good, queued_connections


class SyncWorker(Worker):
    multithread = False
    # TERM cuts a request still running at the graceful timeout (Worker.handle_exit).
    requests_in_main_thread = True

    def run(self) -> None:
        # Each listening socket with what its connections need: its accept
        # function and its environ context, looked up once per wake-up.
        # No TCP_NODELAY (acceptor's default elsewhere): a sync connection
        # carries one response and closes, and the close pushes out what
        # Nagle holds, so the option would be a system call per request for
        # nothing (measured in docs/performance.md, "the serving layer").
        listeners = {lst.sock: (acceptor(lst.sock, nodelay=False), self.envs[id(lst)])
                     for lst in self.listeners}
        for sock in listeners:
            sock.setblocking(False)
        waitables: list[socket.socket | int] = [*listeners, self.wake_fd]
        interval = self.check_interval  # to beat, and to see a retirement without a wake-up
        while self.alive:
            self.notify()
            try:
                ready, _, _ = select.select(waitables, [], [], interval)
            except OSError:
                break
            for waitable in ready:
                if waitable is self.wake_fd:
                    self.clear_wake()
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
        self.retirement_started()
        # A shutdown: the connections queued in a listener the arbiter
        # marked would be reset when it closes; they are served first
        # (corral.serve.retirement, rule 1), one response each as always.
        for lst in closing_for_good(self.listeners):
            accept, env = listeners[lst.sock]
            for client, peer in queued_connections(accept, self.cfg.backlog):
                HttpConnection(self, client, peer, env, keepalive=0).serve()
                self.notify()
