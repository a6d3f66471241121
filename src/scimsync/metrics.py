"""Prometheus metrics and the /healthz endpoint of `scimsync run`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app


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
        self.last_cycle = CycleHealth()


@dataclass
class CycleHealth:
    """What /healthz answers from: the last cycle's result, not the last good one's age."""

    finished_at: float | None = None  # time.time() of the last cycle (or standby check)
    failure: str | None = None  # why the last cycle failed; None when it did not
    standby: bool = False  # another instance holds the channel

    def record(self, failure: str | None, *, standby: bool = False) -> None:
        self.failure, self.standby, self.finished_at = failure, standby, time.time()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the cycle logs."""


class HealthServer:
    """/metrics for Prometheus; /healthz: 200 while the last cycle did not fail.

    503 from the first failed cycle (source or target unreachable, API key refused, store
    down) until one succeeds, and when no cycle has finished for `stale_after` seconds (a
    cycle that hangs). Records that fail and operations held by the safety threshold are
    not the instance's ill health: they show in `status`, the audit log and the metrics.
    """

    def __init__(self, metrics: Metrics, listen: str, stale_after: float) -> None:
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

        self.server: WSGIServer = make_server(
            host.strip("[]") or "127.0.0.1", int(port), app, handler_class=_QuietHandler
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_port)

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
