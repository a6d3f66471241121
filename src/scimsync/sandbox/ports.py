"""Ports without races for the throwaway servers (Linux).

A port found free, released and handed to a server can be taken in between, and a server
then probed on "its" port may be somebody else's. So a server binds port 0, and the port
it got is read from /proc, from its own sockets only (`listening_port`, `wait_listening`);
a server that cannot bind port 0 itself (slapd takes `:0` for the default port, 389) is
given a port held for it until it listens (`hold_port`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


class NotListeningError(RuntimeError):
    """The process exited, or did not listen on its ports in time."""


def listening_ports(pid: int) -> frozenset[int]:
    """The TCP ports process `pid` listens on: its socket fds in its netns's tables.

    Empty if it listens on none, or has exited.
    """
    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed since listed
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target.removeprefix("socket:[").removesuffix("]"))
        tables = [Path(f"/proc/{pid}/net/{t}").read_text() for t in ("tcp", "tcp6")]
    except OSError:  # it exited: its /proc entries are gone
        return frozenset()
    ports = set()
    for table in tables:
        for row in table.splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _TCP_LISTEN and inode in inodes:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return frozenset(ports)


def wait_listening(
    process: subprocess.Popen[Any], ports: Collection[int] = (), timeout: float = 15.0
) -> frozenset[int]:
    """The ports `process` listens on, once they include all of `ports` (none given: any).

    Only the process's own sockets count, so another server on the port cannot pass for it.
    """
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        found = listening_ports(process.pid)
        if found.issuperset(ports) and found:
            return found
        if time.monotonic() > deadline:
            raise NotListeningError(f"{process.args!r} did not listen on {set(ports) or 'a port'}")
        time.sleep(0.05)  # polling /proc until the server has bound and listened
    raise NotListeningError(f"{process.args!r} exited with {process.returncode}")


def listening_port(process: subprocess.Popen[Any], timeout: float = 15.0) -> int:
    """The one port a server started with port 0 listens on, once it does.

    For servers that do not say which port they bound. One that fails is killed.
    """
    try:
        ports = wait_listening(process, timeout=timeout)
        if len(ports) != 1:
            raise NotListeningError(f"{process.args!r} listens on {sorted(ports)}, not one port")
    except NotListeningError:
        process.kill()
        process.wait()
        raise
    return next(iter(ports))


def hold_port(port: int = 0) -> socket.socket:
    """A socket on 127.0.0.1:`port` (0: a free one), bound with SO_REUSEADDR, never listening.

    While it is open, no other process's bind() to port 0 or connect() is given that port,
    and a plain bind() to it fails; a server that sets SO_REUSEADDR too (slapd does) can
    still bind it and listen. Close it once the server listens: the port is the server's.
    Raises OSError if `port` is taken.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock
