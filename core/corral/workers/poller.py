"""Readiness for the selector loop: listeners level-triggered, connections one-shot.

A connection is *armed* when it waits for bytes: its next readiness is
reported once, and it is then disarmed until armed again. The loop arms a
connection when it starts waiting for a head and disarms it when a pool
thread takes it; with epoll a pool thread may also re-arm the connection it
is done with, which is what makes keep-alive cheap:

- epoll with ``EPOLLONESHOT``: a connection is registered once, a readiness
  event disarms it in the kernel, and re-arming is one ``epoll_ctl(MOD)``
  made by the thread that finished the request. Per request that saves the
  loop an unregister, a register and the wake-up that handing the
  connection back would take (each a system call, and each a chance for the
  GIL to change hands);
- elsewhere (no epoll): a selector, where arming registers and an event
  unregisters. Only the loop thread may touch a selector, so pool threads
  hand connections back through the loop (``threadsafe`` is False).

Whoever owns a connection closes it, after :meth:`forget`, and forgets it
before closing: file descriptor numbers are reused at once, and a mapping
left behind would route a new connection's events to the old object.
"""

from __future__ import annotations

import os
import select
import selectors
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from corral.workers.loop_connection import LoopConnection


class Poller(Protocol):
    #: Whether pool threads may call :meth:`arm`.
    threadsafe: bool

    def watch(self, fd: int, data: Any) -> None: ...
    def unwatch(self, fd: int) -> None: ...
    def arm(self, conn: LoopConnection) -> None: ...
    def disarm(self, conn: LoopConnection) -> None: ...
    def forget(self, conn: LoopConnection) -> None: ...
    def poll(self, timeout: float) -> list[Any]: ...
    def armed(self) -> list[LoopConnection]: ...
    def close(self) -> None: ...


def make_poller() -> Poller:
    """epoll where there is one; ``CORRAL_POLLER=select`` forces the portable poller.

    (That switch exists to test the fallback on Linux, and as a way out
    should the one-shot path ever misbehave on some kernel.)
    """
    # (CORRAL_GTHREAD_POLLER: its name while the loop was gthread's own.)
    choice = os.environ.get("CORRAL_POLLER", os.environ.get("CORRAL_GTHREAD_POLLER"))
    if hasattr(select, "epoll") and choice != "select":
        return EpollPoller()
    return SelectorPoller()


class EpollPoller:
    threadsafe = True
    _ONESHOT = select.EPOLLIN | select.EPOLLONESHOT if hasattr(select, "epoll") else 0

    def __init__(self) -> None:
        self._ep = select.epoll()
        #: fd -> listener data, None (the wake pipe) or a connection.
        self._data: dict[int, Any] = {}

    def watch(self, fd: int, data: Any) -> None:
        self._ep.register(fd, select.EPOLLIN)
        self._data[fd] = data

    def unwatch(self, fd: int) -> None:
        self._ep.unregister(fd)
        del self._data[fd]

    def arm(self, conn: LoopConnection) -> None:
        conn.armed = True
        if conn.fd >= 0:
            self._ep.modify(conn.fd, self._ONESHOT)
            return
        fd = conn.sock.fileno()
        # A dict store is atomic under the GIL; no other connection can hold
        # this fd number while this one is open.
        self._data[fd] = conn
        conn.fd = fd
        self._ep.register(fd, self._ONESHOT)

    def disarm(self, conn: LoopConnection) -> None:
        if conn.armed:
            conn.armed = False
            self._ep.modify(conn.fd, 0)

    def forget(self, conn: LoopConnection) -> None:
        # The kernel drops the registration when the socket closes.
        conn.armed = False
        if conn.fd >= 0 and self._data.get(conn.fd) is conn:
            del self._data[conn.fd]
        conn.fd = -1

    def poll(self, timeout: float) -> list[Any]:
        data = self._data
        out = []
        for fd, _ in self._ep.poll(timeout):
            item = data.get(fd)
            if type(item) is not tuple and item is not None:
                if not item.armed:
                    continue  # stale: disarmed (or re-used) since the event
                item.armed = False
            out.append(item)
        return out

    def armed(self) -> list[LoopConnection]:
        return [c for c in list(self._data.values()) if getattr(c, "armed", False)]

    def close(self) -> None:
        self._ep.close()


class SelectorPoller:
    threadsafe = False

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()

    def watch(self, fd: int, data: Any) -> None:
        self._sel.register(fd, selectors.EVENT_READ, data)

    def unwatch(self, fd: int) -> None:
        self._sel.unregister(fd)

    def arm(self, conn: LoopConnection) -> None:
        if not conn.armed:
            conn.armed = True
            conn.fd = conn.sock.fileno()
            self._sel.register(conn.fd, selectors.EVENT_READ, conn)

    def disarm(self, conn: LoopConnection) -> None:
        if conn.armed:
            conn.armed = False
            self._sel.unregister(conn.fd)

    def forget(self, conn: LoopConnection) -> None:
        self.disarm(conn)
        conn.fd = -1

    def poll(self, timeout: float) -> list[Any]:
        out = []
        for key, _ in self._sel.select(timeout):
            item = key.data
            if type(item) is not tuple and item is not None:
                self.disarm(item)
            out.append(item)
        return out

    def armed(self) -> list[LoopConnection]:
        return [k.data for k in list(self._sel.get_map().values())
                if type(k.data) is not tuple and k.data is not None]

    def close(self) -> None:
        self._sel.close()
