"""`scimsync run`: a cycle every `interval` seconds until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from types import FrameType

from scimsync import engine, log
from scimsync.config import Config
from scimsync.directory import DirectoryError
from scimsync.metrics import HealthServer, Metrics
from scimsync.state import ChannelLocked, StateError, Store
from scimsync.target.errors import ScimError, TargetUnreachable

logger = log.get(__name__)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.metrics = Metrics()

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("stopping after the operation in flight", signal=signal.Signals(signum).name)
        self.stopping.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        health = HealthServer(
            self.metrics, self.config.metrics_listen, stale_after=3 * self.config.interval + 60
        )
        health.start()
        logger.info(
            "daemon started",
            interval=self.config.interval,
            metrics=f"http://{self.config.metrics_listen}/metrics",
        )
        try:
            with Store.open(self.config.state, self.config.channel) as store:
                while not self.stopping.is_set():
                    started = time.monotonic()
                    self.cycle(store)
                    elapsed = time.monotonic() - started
                    # Event.wait returns early on SIGTERM: the daemon stops without waiting out
                    # the interval.
                    self.stopping.wait(max(0.0, self.config.interval - elapsed))
        finally:
            health.stop()
        logger.info("daemon stopped")
        return 0

    def cycle(self, store: Store) -> None:
        started = time.monotonic()
        exit_code = 4
        try:
            with store.lock():
                report = asyncio.run(
                    engine.sync(self.config, store, should_stop=self.stopping.is_set)
                )
            exit_code = report.exit_code
            for action, count in report.outcome.applied.items():
                self.metrics.operations.labels(action, "ok").inc(count)
            for failure in report.outcome.failed:
                self.metrics.operations.labels(failure.op.action.value, "failed").inc()
            if exit_code in (0, 1):
                self.metrics.last_success.set(time.time())
        except ChannelLocked as exc:
            logger.info("standby: another instance is active for this channel", detail=str(exc))
            exit_code = 0
        except (DirectoryError, TargetUnreachable, ScimError, StateError) as exc:
            logger.error("cycle failed", error=str(exc))
        finally:
            self.metrics.cycles.labels(str(exit_code)).inc()
            self.metrics.cycle_duration.observe(time.monotonic() - started)
            failures = store.failures().values()
            self.metrics.quarantined.set(sum(1 for f in failures if f.quarantined))
            self.metrics.pending.set(sum(1 for f in failures if not f.quarantined))


def run(config: Config) -> int:
    return Daemon(config).run()
