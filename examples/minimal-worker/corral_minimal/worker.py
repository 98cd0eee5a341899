"""A complete worker class on core's selector loop: one request at a time, keep-alive for free.

The loop (corral.api.SelectorLoopWorker) accepts, with TCP_NODELAY, errno
backoff and the --worker-connections cap; reads request heads without
blocking; holds idle keep-alive connections and slow clients at no cost;
enforces --header-timeout and --keep-alive; beats the heartbeat; and
retires as every class does (nothing received is lost). A worker class
says only where a request runs once its head is complete: here, in the
loop's own thread, like the sync class, but without closing connections.
"""

from corral.api import LoopConnection, SelectorLoopWorker


class LoopWorker(SelectorLoopWorker):
    # One request at a time: the app may use thread-unsafe globals. While a
    # request waits on its client (a slow upload) the loop waits too; the
    # base's notify() beats the heartbeat meanwhile, as the sync class does.
    multithread = False

    def request_slots(self) -> int:
        # Requests that run at once. The loop stops accepting while twice
        # as many are in hand, so new connections go to a worker with room.
        return 1

    def dispatch(self, conn: LoopConnection, in_hand: int) -> None:
        # The head is complete. serve_connection runs the request (and any
        # pipelined behind it), writes the responses, and gives the
        # connection back to the loop, to wait for its next request or to
        # be closed. A class with threads would queue conn for one of them
        # here instead (corral_gthread: corral.api.RequestThreads).
        self.serve_connection(conn)
