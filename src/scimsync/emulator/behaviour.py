"""How the emulator misbehaves on purpose: latency, a rate limit, faults and lost responses."""

from __future__ import annotations

import asyncio
import hmac
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scimsync.emulator.errors import EmulatorError
from scimsync.emulator.responses import scim_response

RenameMode = Literal["allowed", "immutable"]
UserNameMode = Literal["mutable", "immutable"]
MemberFilterMode = Literal["accepted", "refused", "failing"]
FilterMode = Literal["supported", "ignored"]
SchemaMode = Literal["atlassian", "minimal"]
CONTROL_PREFIX = "/_emulator/"


@dataclass
class Settings:
    """Runtime-changeable modes (POST /_emulator/config)."""

    rename: RenameMode = "allowed"
    # Whether Atlassian accepts a userName change is unconfirmed (atlassian-scim-api.md
    # section 2): `immutable` refuses it, so both of scimsync's paths can be tested.
    user_name: UserNameMode = "mutable"
    # Whether Atlassian takes `members[value eq "..."]` in a PATCH remove is unconfirmed
    # (section 4): `refused` answers 400 invalidPath, so the client's fallback meets a server;
    # `failing` answers 500, as some servers do for a filtered path they cannot evaluate.
    member_filter: MemberFilterMode = "accepted"
    # The generic profile's servers, beyond Atlassian: `ignored` says filter.supported
    # false in /ServiceProviderConfig and answers every object whatever `filter=` says.
    filter: FilterMode = "supported"
    # `minimal` serves a /Schemas whose emails have no type or primary (refused if sent),
    # with no nickName, and which require name.formatted of a user and members of a group.
    schema: SchemaMode = "atlassian"
    # Some tenants leave deactivated users out of GET /Users listings and filter results
    # (ACCESS-1293, "won't fix"); GET /Users/{id} still answers for them.
    hide_inactive: bool = False
    # The org's verified domains; None: off. A user whose email changes into another
    # domain is unlinked from the directory, as Atlassian does to external accounts.
    verified_domains: list[str] | None = None
    rate: float | None = None
    latency_ms: float = 0.0
    fault_rate: float = 0.0
    # Which requests the faults strike: "all" (500, 503 or a dropped connection), or
    # "writes" only, answered 500 or 503 while reads still answer, as a degraded tenant does.
    fault_methods: str = "all"
    lost_response_rate: float = 0.0
    seed: int | None = None

    def update(self, **options: Any) -> None:
        """Validates every option first, so a bad one changes nothing."""
        known = {f.name for f in fields(self)}
        for name in options:
            if name not in known:
                raise ValueError(f"unknown emulator option: {name}")
        if options.get("rename", self.rename) not in ("allowed", "immutable"):
            raise ValueError("rename: expected allowed or immutable")
        if options.get("user_name", self.user_name) not in ("mutable", "immutable"):
            raise ValueError("user_name: expected mutable or immutable")
        if options.get("member_filter", self.member_filter) not in (
            "accepted",
            "refused",
            "failing",
        ):
            raise ValueError("member_filter: expected accepted, refused or failing")
        if options.get("filter", self.filter) not in ("supported", "ignored"):
            raise ValueError("filter: expected supported or ignored")
        if options.get("schema", self.schema) not in ("atlassian", "minimal"):
            raise ValueError("schema: expected atlassian or minimal")
        if options.get("fault_methods", self.fault_methods) not in ("all", "writes"):
            raise ValueError("fault_methods: expected all or writes")
        domains = options.get("verified_domains", self.verified_domains)
        if domains is not None and not (
            isinstance(domains, list) and all(isinstance(d, str) for d in domains)
        ):
            raise ValueError("verified_domains: expected a list of domains, or null")
        if not isinstance(options.get("hide_inactive", self.hide_inactive), bool):
            raise ValueError("hide_inactive: expected true or false")
        for name in ("fault_rate", "lost_response_rate"):
            value = options.get(name, getattr(self, name))
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a fraction between 0 and 1")
        rate = options.get("rate", self.rate)
        if rate is not None and (not isinstance(rate, int | float) or rate <= 0):
            raise ValueError("rate: expected a positive number of requests per second")
        latency = options.get("latency_ms", self.latency_ms)
        if not isinstance(latency, int | float) or latency < 0:
            raise ValueError("latency_ms: expected a non-negative number")
        for name, value in options.items():
            setattr(self, name, value)


@dataclass
class Stats:
    """Request counts; keys are strings so the counters travel as JSON."""

    by_method: Counter[str] = field(default_factory=Counter)
    by_resource: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    # Requests inside the misbehaviour layer at once (latency included), and the most seen,
    # so a test can tell that slow requests overlap instead of timing them.
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, resource: str) -> None:
        with self.lock:
            self.by_method[method] += 1
            self.by_resource[f"{method} {resource}"] += 1

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def answered(self, status: int) -> None:
        with self.lock:
            self.by_status[str(status)] += 1

    def lost(self) -> None:
        with self.lock:
            self.dropped += 1

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "total": sum(self.by_method.values()),
                "by_method": dict(self.by_method),
                "by_resource": dict(self.by_resource),
                "by_status": dict(self.by_status),
                "dropped": self.dropped,
                "max_in_flight": self.max_in_flight,
            }

    def reset(self) -> None:
        with self.lock:
            self.by_method.clear()
            self.by_resource.clear()
            self.by_status.clear()
            self.dropped = 0
            self.max_in_flight = self.in_flight


class SlidingWindow:
    """At most `rate` requests in any one second, across all clients."""

    def __init__(self) -> None:
        self.admitted: deque[float] = deque()

    def wait(self, rate: float, now: float) -> float | None:
        """None to admit the request, else the seconds until a slot frees."""
        while self.admitted and self.admitted[0] <= now - 1.0:
            self.admitted.popleft()
        if len(self.admitted) >= rate:
            return self.admitted[0] + 1.0 - now
        self.admitted.append(now)
        return None


def resource_of(path: str, prefix: str) -> str:
    """`Users`, `Groups`, `ServiceProviderConfig`...: the stats key of a SCIM path."""
    rest = path[len(prefix) :].strip("/") if path.startswith(prefix) else path.strip("/")
    return rest.split("/", 1)[0] or "/"


async def _drop_connection(send: Send) -> bool:
    """Closes the socket without answering; False if the server gives no handle on it.

    uvicorn passes its request cycle's bound `send`, whose `transport` is the socket; once
    the close is processed the cycle is marked disconnected and uvicorn sends nothing more.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        return False
    transport.close()
    for _ in range(10):
        await asyncio.sleep(0)
        if getattr(send.__self__, "disconnected", True):  # type: ignore[attr-defined]
            break
    return True


class Misbehaviour:
    """ASGI wrapper: auth, stats, latency, rate limit and faults before the SCIM app.

    Faults strike before the request reaches the app, so a fault never half-applies a
    write; a lost response is the one exception, by design: the POST is applied and
    only its answer vanishes.
    """

    def __init__(
        self, app: ASGIApp, token: str, prefix: str, settings: Settings, stats: Stats
    ) -> None:
        self.app = app
        self.token = token
        self.prefix = prefix
        self.settings = settings
        self.stats = stats
        self.window = SlidingWindow()
        self.rng = random.Random(settings.seed)
        # The rate window's clock; a test may freeze it to count 429s instead of timing them.
        self.clock: Callable[[], float] = time.monotonic

    def reseed(self, seed: int | None) -> None:
        self.rng = random.Random(seed)
        self.window = SlidingWindow()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        self.stats.record(scope["method"], resource_of(scope["path"], self.prefix))
        self.stats.enter()
        try:
            await self._serve(scope, receive, send)
        finally:
            self.stats.leave()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.stats.answered(message["status"])
            await send(message)

        settings = self.settings
        if settings.latency_ms > 0:
            await asyncio.sleep(settings.latency_ms / 1000)
        if not authorized(scope, self.token):
            error = EmulatorError(401, "missing or invalid bearer token")
            await scim_response(error.body(), 401)(scope, receive, counted_send)
            return
        if settings.rate is not None:
            wait = self.window.wait(settings.rate, self.clock())
            if wait is not None:
                # Atlassian publishes no SCIM rate numbers; its admin APIs answer 429 and
                # clients honour Retry-After (atlassian-scim-api.md section 6).
                error = EmulatorError(429, "rate limit exceeded", "tooMany")
                response = scim_response(error.body(), 429)
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                await response(scope, receive, counted_send)
                return
        struck = settings.fault_methods == "all" or scope["method"] != "GET"
        if struck and settings.fault_rate > 0 and self.rng.random() < settings.fault_rate:
            await self._fault(scope, receive, send, counted_send)
            return
        if (
            scope["method"] == "POST"
            and settings.lost_response_rate > 0
            and self.rng.random() < settings.lost_response_rate
        ):
            await self._lose_response(scope, receive, send)
            return
        await self.app(scope, receive, counted_send)

    async def _fault(self, scope: Scope, receive: Receive, send: Send, counted: Send) -> None:
        kind = self.rng.choice(
            (500, 503) if self.settings.fault_methods == "writes" else (500, 503, 0)
        )
        if kind == 0 and await _drop_connection(send):
            self.stats.lost()
            return
        status = kind or 500
        error = EmulatorError(status, "injected fault")
        await scim_response(error.body(), status)(scope, receive, counted)

    async def _lose_response(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def swallow(message: Message) -> None:
            return None

        await self.app(scope, receive, swallow)
        if not await _drop_connection(send):
            error = EmulatorError(500, "injected fault after the write")
            await scim_response(error.body(), 500)(scope, receive, send)
            return
        self.stats.lost()


def authorized(scope: Scope, token: str) -> bool:
    """A constant-time check of `Authorization: Bearer <token>` (scheme case-insensitive)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, given = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(given, token.encode())
    return False
