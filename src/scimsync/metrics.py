"""Prometheus metrics and the /healthz endpoint of `scimsync run`."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from scimsync import log

logger = log.get(__name__)

# Seconds a connection may take to send its request (each read): one that sends nothing,
# or stalls, is dropped instead of holding a thread for ever.
READ_TIMEOUT = 5.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cycle_duration = Histogram(
            "scimsync_cycle_duration_seconds",
            "Wall time of one cycle",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900),
            registry=self.registry,
        )
        self.operations = Counter(
            "scimsync_operations",
            "Operations applied at the target",
            ["action", "result"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "scimsync_pending_records", "Records waiting to be retried", registry=self.registry
        )
        self.quarantined = Gauge(
            "scimsync_quarantined_records", "Records quarantined", registry=self.registry
        )
        self.last_success = Gauge(
            "scimsync_last_success_timestamp_seconds",
            "Unix time the last cycle finished without error",
            registry=self.registry,
        )
        self.cycles = Counter(
            "scimsync_cycles", "Cycles run, by exit code", ["exit_code"], registry=self.registry
        )
        self.held = Gauge(
            "scimsync_held_operations",
            "Operations the last cycle held by the safety threshold (sync --allow-deletions)",
            registry=self.registry,
        )
        self.cycle_errors = Counter(
            "scimsync_cycle_errors",
            "Cycles that failed as a whole, by the error's class",
            ["kind"],
            registry=self.registry,
        )
        self.cycle_interval = Gauge(
            "scimsync_cycle_interval_seconds",
            "Seconds between cycle starts now: `interval`, or up to an hour while cycles fail",
            registry=self.registry,
        )
        self.token_expiry = Gauge(
            "scimsync_token_expiry_timestamp_seconds",
            "Unix time the target's API key expires (target.token_expires); absent if unset",
            registry=self.registry,
        )
        self.last_cycle = CycleHealth()


@dataclass
class CycleHealth:
    """What /healthz answers from: the last cycle's result, not the last good one's age."""

    finished_at: float | None = None  # time.time() of the last cycle (or standby check)
    failure: str | None = None  # why the last cycle failed; None when it did not
    standby: bool = False  # another instance holds the channel

    def record(self, failure: str | None, *, standby: bool = False) -> None:
        self.failure, self.standby, self.finished_at = failure, standby, time.time()


class _Listener(ThreadingMixIn, WSGIServer):
    """A thread per connection, so one slow or idle client cannot hold up a probe."""

    daemon_threads = True
    block_on_close = False  # stopping does not wait out an idle connection's read timeout
    read_timeout = READ_TIMEOUT

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away: no traceback on stderr."""
        error = sys.exception()
        logger.debug("metrics connection dropped", client=str(client_address), error=repr(error))


class _Listener6(_Listener):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def setup(self) -> None:
        if isinstance(self.server, _Listener):
            # Every read of the request; a connection that sends nothing ends in TimeoutError.
            self.request.settimeout(self.server.read_timeout)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the cycle logs."""


class HealthServer:
    """/metrics for Prometheus; /healthz: 200 while the last cycle did not fail.

    503 from the first failed cycle (source or target unreachable, API key refused, store
    down, any other error) until one succeeds, and when no cycle has finished for
    `stale_after` seconds (a cycle that hangs). Records that fail and operations held by the
    safety threshold are not the instance's ill health: they show in `status`, the audit
    log and the metrics. Each connection has its own thread and `read_timeout` per read.
    """

    def __init__(
        self,
        metrics: Metrics,
        listen: str,
        stale_after: float,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.metrics = metrics
        self.stale_after = stale_after
        self.started = time.time()
        metrics_app = make_wsgi_app(metrics.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                healthy, text = self.health()
                start_response(
                    "200 OK" if healthy else "503 Service Unavailable",
                    [("Content-Type", "text/plain; charset=utf-8")],
                )
                return [text.encode()]
            if environ.get("PATH_INFO") == "/metrics":
                result: Iterable[bytes] = metrics_app(environ, start_response)
                return result
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]

        address = host.strip("[]") or "127.0.0.1"
        # wsgiref's server is IPv4 only: an IPv6 address (`[::1]:9464`) needs its family.
        server_class = _Listener6 if ":" in address else _Listener
        self.server: _Listener = make_server(
            address, int(port), app, server_class=server_class, handler_class=_QuietHandler
        )
        self.server.read_timeout = read_timeout
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def address(self) -> str:
        """host:port as bound (IPv6 in brackets): port 0 in `listen` shows the one picked."""
        host = str(self.server.server_address[0])
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def health(self) -> tuple[bool, str]:
        last = self.metrics.last_cycle
        age = time.time() - (last.finished_at or self.started)
        if last.failure is not None:
            return False, f"last cycle failed: {last.failure}\n"
        if age > self.stale_after:
            return False, f"no cycle finished for {age:.0f} s\n"
        if last.standby:
            return True, "standby: another instance is active for this channel\n"
        return True, "ok\n" if last.finished_at else "starting\n"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
