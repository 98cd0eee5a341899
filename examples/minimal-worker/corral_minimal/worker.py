"""A thread per connection, at most --worker-connections at once."""

import os
import selectors
import threading
import time
from typing import Any

from corral.api import HttpConnection, RequestWatchdog, Worker


class ThreadPerConnectionWorker(Worker):
    multithread = True  # requests of one process run at once (wsgi.multithread)

    def run(self) -> None:
        # The loop beats the heartbeat until a request outlives --timeout in its thread.
        self.watchdog = RequestWatchdog(self.heartbeat, self.cfg.timeout, self.log)
        self.unwatched_app, self.wsgi = self.wsgi, self.watched_app
        slots = threading.BoundedSemaphore(self.cfg.worker_connections)
        selector = selectors.DefaultSelector()
        for listener in self.listeners:
            listener.sock.setblocking(False)
            selector.register(listener.sock, selectors.EVENT_READ, listener)
        selector.register(self.wake_fd, selectors.EVENT_READ)  # TERM and max-requests wake us
        threads: list[threading.Thread] = []
        while self.alive and self.keep_serving():
            self.watchdog.check()  # beats the heartbeat while no request is stuck
            if not slots.acquire(timeout=0.5):
                continue  # every slot busy: leave new connections to other workers
            for key, _ in selector.select(timeout=0.5):
                if key.data is None:
                    os.read(self.wake_fd, 64)
                    continue
                try:
                    sock, peer = key.fileobj.accept()  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue  # another worker took it
                sock.setblocking(True)
                conn = HttpConnection(self, sock, peer, self.envs[id(key.data)], self.cfg.keepalive)
                thread = threading.Thread(target=self.serve, args=(conn, slots), daemon=True)
                threads.append(thread)
                thread.start()
                break
            else:
                slots.release()
            threads = [t for t in threads if t.is_alive()]
        since = self.retirement_started()  # retiring: see corral.serve.retirement
        self.close_listeners()
        deadline = since + self.cfg.graceful_timeout
        for thread in threads:  # daemon threads: whatever is left dies with the process
            thread.join(max(0.0, deadline - time.monotonic()))
        if busy := sum(t.is_alive() for t in threads):
            self.log.warning("Worker %s: %s connection(s) still busy after graceful_timeout; exiting",
                             self.pid, busy)
            self.in_flight.report(self.log, self.pid)

    def serve(self, conn: HttpConnection, slots: threading.BoundedSemaphore) -> None:
        try:
            conn.serve()  # the request loop: parsing, WSGI, keep-alive, request_done()
        finally:
            slots.release()

    def watched_app(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.watchdog.started(f"{environ['REQUEST_METHOD']} {environ['RAW_URI']}")
        try:
            return self.unwatched_app(environ, start_response)
        finally:
            self.watchdog.finished()
