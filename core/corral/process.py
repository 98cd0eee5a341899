"""Process-level setup: privileges, daemonizing, environment."""

from __future__ import annotations

import grp
import os
import pwd
import sys

from corral.errors import ConfigError


def resolve_ids(user: int | str | None, group: int | str | None) -> tuple[int | None, int | None, str | None]:
    """(uid, gid, user name) for --user/--group; ConfigError for unknown names."""
    uid = gid = None
    name = None
    if user is not None:
        try:
            entry = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"--user {user}: no such user on this system") from None
        uid, name = entry.pw_uid, entry.pw_name
        gid = entry.pw_gid
    if group is not None:
        try:
            gid = (grp.getgrgid(group) if isinstance(group, int) else grp.getgrnam(group)).gr_gid
        except KeyError:
            raise ConfigError(f"--group {group}: no such group on this system") from None
    if (uid is not None or gid is not None) and os.geteuid() != 0:
        if uid not in (None, os.geteuid()) or gid not in (None, os.getegid()):
            raise ConfigError("--user/--group need corral to be started as root")
    return uid, gid, name


def drop_privileges(uid: int | None, gid: int | None, name: str | None, initgroups: bool) -> None:
    """In a worker after fork: become --user/--group (group first, while still root)."""
    if gid is not None and gid != os.getegid():
        os.setgid(gid)
    if initgroups and name is not None and gid is not None:
        os.initgroups(name, gid)
    elif uid is not None and os.geteuid() == 0 and uid != 0:
        os.setgroups([])  # do not keep root's supplementary groups
    if uid is not None and uid != os.geteuid():
        os.setuid(uid)


def apply_env(pairs: list[str]) -> None:
    for pair in pairs:
        key, _, value = pair.partition("=")
        os.environ[key] = value


def daemonize() -> None:
    """Detach: fork, new session, fork again; stdio to /dev/null. Keeps the cwd."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    sys.stdout.flush()
