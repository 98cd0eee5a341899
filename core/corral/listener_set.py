"""The arbiter's listening sockets: bound once per address, shared by pools, kept across reloads.

Sockets come from three places: a parent arbiter (USR2) or systemd, whose
fds are named in the environment (corral.sockets.inherited_fds); and
binding a configured address. Inherited ones are used first, so that an
upgrade or socket activation never drops a connection waiting in a listen
queue. A reload keeps every socket an address still names and closes the
rest (old workers keep their own copies until they have drained).
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from corral.errors import HaltServer
from corral.sockets import Listener, bind, inherited_fds, inherited_paths, listener_from_fd

if TYPE_CHECKING:
    from corral.config import Config
    from corral.pool import Pool


class ListenerSet:
    """Listeners by configured address, and the inherited ones not yet claimed."""

    def __init__(self, log: logging.Logger, pid: int) -> None:
        self.log = log
        self.pid = pid
        #: Bound listeners by configured address; pools share them.
        self.by_address: dict[str, Listener] = {}
        #: Inherited listeners no address has claimed yet (None: not looked up yet).
        self.inherited: list[Listener] | None = None
        #: A single pool took every inherited socket, whatever its addresses.
        self.adopted_all = False

    def assign(self, pools: list[Pool]) -> None:
        """Give every pool its listeners, binding each address once (pools may share one).

        Sockets inherited from a parent arbiter (USR2) or from systemd are used
        first: with a single pool they are all of its listeners; with several,
        each configured address takes the inherited socket bound to it.
        Raises HaltServer when an address cannot be bound.
        """
        if self.inherited is None:
            fds, systemd = inherited_fds()
            paths = inherited_paths()
            self.inherited = [listener_from_fd(fd, systemd=systemd, path_id=paths.get(fd)) for fd in fds]
            if self.inherited:
                self.log.info("Inherited %s listener(s): %s", len(self.inherited),
                              ", ".join(lst.name for lst in self.inherited))
        if len(pools) == 1 and (self.adopted_all or (self.inherited and not self.by_address)):
            # One pool takes every inherited socket, on this and later reloads.
            if not self.adopted_all:
                for listener in self.inherited or []:
                    self.by_address[listener.name] = listener
                self.adopted_all = True
            pools[0].listeners = list(self.by_address.values())
            return
        for pool in pools:
            pool.listeners = [self.for_address(address, pool.cfg) for address in pool.addresses]
        used = {id(lst) for pool in pools for lst in pool.listeners}
        for address, listener in list(self.by_address.items()):
            if id(listener) not in used:
                self.log.info("No pool listens at %s any more; closing it", listener.name)
                # Its old workers serve what is queued in it before they close theirs.
                self.refuse_new_connections(listener)
                listener.close()
                del self.by_address[address]

    def for_address(self, address: str, cfg: Config) -> Listener:
        """The listener of ``address``: already bound, inherited, or bound now."""
        listener = self.by_address.get(address)
        if listener is not None:
            return listener
        for candidate in list(self.inherited or []):
            if candidate.name == address or candidate.name == canonical_name(address):
                self.inherited.remove(candidate)  # type: ignore[union-attr]
                self.by_address[address] = candidate
                return candidate
        try:
            listener = bind(address, backlog=cfg.backlog, reuse_port=cfg.reuse_port,
                            unix_mode=cfg.unix_socket_mode, log=self.log)
        except OSError as exc:
            raise HaltServer(f"cannot listen on {address}: {exc.strerror or exc}", 1) from None
        self.by_address[address] = listener
        self.log.info("Listening at http://%s (pid %s)", listener.name, self.pid)
        return listener

    def close_all(self, unlink: bool, for_good: bool) -> None:
        """Close every listener; unix socket files are removed only with ``unlink``.

        :param for_good: no other process will accept on them (no upgrade
            in progress): they are marked first, so that the retiring
            workers serve what is queued in them (refuse_new_connections).
        """
        for listener in self.by_address.values():
            if for_good:
                self.refuse_new_connections(listener)
            listener.close(unlink=unlink)

    def refuse_new_connections(self, listener: Listener) -> None:
        if not listener.systemd:  # systemd keeps it open for the next start
            listener.refuse_new_connections()


def canonical_name(address: str) -> str:
    """The name a socket bound to ``address`` reports, e.g. "localhost:80" -> "127.0.0.1:80"."""
    from corral.addresses import parse_address

    try:
        addr = parse_address(address)
        if addr.kind != "tcp":
            return str(addr)
        info = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        host = str(info[4][0])
        return f"[{host}]:{addr.port}" if ":" in host else f"{host}:{addr.port}"
    except (OSError, ValueError):
        return address
