"""Running the emulator: blocking for the CLI, or in a background thread for tests and the demo."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette

from scimsync.emulator.app import PREFIX, Emulator, create_app, render_group, render_user
from scimsync.emulator.store import Directory
from scimsync.errors import ExitCode
from scimsync.sandbox.lifecycle import Lifecycle


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (0: a free port), not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listener's proto says TCP; without it every keep-alive response waits ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine can connect."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def token_from_file(path: Path) -> str:
    """The token in `path`, stripped; a ValueError naming the file, never its content."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    token = text.strip()
    if not token:
        raise ValueError(f"{path}: the bearer token is empty")
    if len(token.splitlines()) > 1:
        raise ValueError(f"{path}: more than one line; the file holds the token alone")
    return token


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{PREFIX}"


class _Server(uvicorn.Server):
    """uvicorn's server, saving the emulator's data once its connections are closed.

    Here, not after run(): on SIGTERM uvicorn raises the signal again when it has shut
    down, which ends the process before run() returns.
    """

    def __init__(self, config: uvicorn.Config, directory: Directory) -> None:
        super().__init__(config)
        self.directory = directory

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            self.directory.close()


def _server(app: Starlette) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    return _Server(config, app.state.emulator.directory)


def serve(port: int, token: str, host: str = "127.0.0.1", **options: Any) -> None:
    """Runs the emulator until SIGINT/SIGTERM; prints the URL to put in `target.url`.

    The URL's line comes first on stdout, with the bound port (`port` 0 picks a free
    one), once connections are accepted. A bad option or data file ends the process with
    one line on stderr and exit code 2; a host other machines can reach gets one warning
    line there.
    """
    try:
        app = create_app(token, **options)
        sock = bound_socket(host, port)
    except (ValueError, OSError) as exc:
        print(f"scimsync emulate: {exc}", file=sys.stderr)
        raise SystemExit(ExitCode.CONFIG) from None
    if not is_loopback(host):
        print(
            f"scimsync emulate: warning: serving plain HTTP with test data on {host}: "
            "reachable from other hosts",
            file=sys.stderr,
            flush=True,
        )
    server = _server(app)
    # Listening before the line is printed, so a script that reads it can connect at once
    # (queued until uvicorn accepts) rather than retry until uvicorn has started.
    sock.listen(server.config.backlog)
    data_file = options.get("data_file")
    print(f"Atlassian SCIM emulator listening; target.url: {_url(host, sock.getsockname()[1])}")
    if data_file:
        print(f"data kept in {data_file} (each write appended, compacted when it stops)")
    sys.stdout.flush()
    server.run(sockets=[sock])  # until SIGINT/SIGTERM


class RunningEmulator(Lifecycle):
    """The emulator on a free loopback port, served from a background thread.

    `with RunningEmulator(token=...) as emulator:` then point a client at `emulator.url`.
    """

    def __init__(self, token: str | None = None, **options: Any) -> None:
        # None picks one; "" is refused by create_app rather than silently replaced.
        self.token = secrets.token_urlsafe(24) if token is None else token
        self._first_token = self.token
        self.app = create_app(self.token, **options)
        self._state: Emulator = self.app.state.emulator
        self._sock = bound_socket("127.0.0.1", 0)
        self.port: int = self._sock.getsockname()[1]
        self.url = _url("127.0.0.1", self.port)
        self._server = _server(self.app)
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never the token
        return f"RunningEmulator(url={self.url!r})"

    def start(self, timeout: float = 10.0) -> Self:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._thread = None
        self._sock.close()
        self._state.directory.close()

    @property
    def data_file(self) -> Path | None:
        return self._state.directory.data_file

    def stats(self) -> dict[str, Any]:
        """{"total", "by_method", "by_resource" ("GET Users"...), "by_status", "dropped"}."""
        return self._state.stats.as_dict()

    def reset_stats(self) -> None:
        self._state.stats.reset()

    def configure(self, **options: Any) -> None:
        """Changes any `Settings` mode: rename, member_filter, rate, latency_ms, faults or seed."""
        self._state.configure(**options)

    def set_rate_clock(self, clock: Callable[[], float]) -> None:
        """The clock the rate window reads, until `reset()`; a frozen one makes 429s countable."""
        assert self._state.misbehaviour is not None
        self._state.misbehaviour.clock = clock

    def rotate_token(self, token: str) -> None:
        """The API key rotated at Atlassian: clients with the old one get 401."""
        self._state.rotate_token(token)
        self.token = token

    def reset(self) -> None:
        """Empty directory, zero counters, default modes, the first token: a fresh emulator
        for the next test."""
        self.rotate_token(self._first_token)
        self._state.directory.wipe()
        self._state.stats.reset()
        self._state.reset_modes()

    def users(self) -> list[dict[str, Any]]:
        """Every user as GET /Users/{id} would show it."""
        with self._state.directory.lock:
            return [
                render_user(self._state, u, self.url) for u in self._state.directory.users.values()
            ]

    def groups(self) -> list[dict[str, Any]]:
        """Every group as GET /Groups/{id} would show it, members included."""
        with self._state.directory.lock:
            return [
                render_group(self._state, g, self.url)
                for g in self._state.directory.groups.values()
            ]
