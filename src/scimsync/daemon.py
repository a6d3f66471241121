"""`scimsync run`: a cycle every `interval` seconds until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import threading
import time
import traceback
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from types import FrameType

from scimsync import log, memory, retry
from scimsync.config import Config, ConfigError
from scimsync.cycle import run as cycle_run
from scimsync.cycle.check import token_expiry_warning
from scimsync.errors import ConfigurationError, CycleError, ExitCode, RecordError
from scimsync.metrics import HealthServer, Metrics
from scimsync.state import ChannelLocked, StateError, Store
from scimsync.state.base import Clock, utc_now
from scimsync.state.watermarks import PRUNED

logger = log.get(__name__)

# Failed cycles are retried after interval, 2 x interval, 4 x ..., up to this (or interval,
# if longer): an outage at `interval: 1` costs about 60 attempts an hour, not 3,600.
MAX_RETRY_DELAY = 3600.0  # a failing channel waits at most an hour between cycles
# A cycle whose operations mostly failed (at least this many tried) counts as failed: the
# target is failing (a storm of 5xx), and the next cycles must not hammer it.
MOSTLY_FAILED_MIN = 4

# Audit and runs retention is applied this often; the last time is kept in the store.
PRUNE_EVERY = timedelta(days=1)

# What a cycle is expected to meet now and then; their messages say what is at fault.
# A RecordError gets here only from outside the executor (a listing): it ends the cycle.
EXPECTED = (CycleError, RecordError)
# A configuration error ends `run` (exit 2): no later cycle can do better.
FATAL = ConfigurationError


def retry_delay(interval: float, failures_in_a_row: int) -> float:
    """Seconds from one cycle's start to the next after that many failed cycles in a row."""
    if failures_in_a_row <= 0:
        return interval
    # The exponent is bounded: past 2**20 the cap applies anyway.
    backed_off: float = interval * 2 ** min(failures_in_a_row - 1, 20)
    return min(backed_off, max(interval, MAX_RETRY_DELAY))


class MostOperationsFailed(CycleError):  # noqa: N818 - named for what it says
    """Most of a cycle's operations failed: the channel backs off as after an outage."""

    def __init__(self, failed: int, tried: int) -> None:
        super().__init__(
            f"{failed} of {tried} operations failed: the target is failing; the next cycles "
            "back off until one succeeds"
        )


def mostly_failed(applied: int, failed: int) -> bool:
    tried = applied + failed
    return tried >= MOSTLY_FAILED_MIN and failed * 2 > tried


def describe(exc: Exception) -> str:
    """The cause health and the log give; an unexpected error's class is part of it."""
    if isinstance(exc, EXPECTED):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def listen_error(listen: str, exc: OSError | ValueError) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return (
            f"metrics_listen {listen}: address already in use "
            "(another scimsync run? set metrics_listen)"
        )
    if isinstance(exc, OSError):
        return f"metrics_listen {listen}: {exc.strerror or exc}"
    return f"metrics_listen {listen}: expected host:port"


class Outage:
    """Failed cycles in a row: logged when they start, when their kind changes, and when over.

    The kind is the error's class (directory unreachable, target unreachable, API key
    refused, store down): the message differs with the step that met the outage.
    """

    def __init__(self) -> None:
        self.kind: str | None = None
        self.cause = ""
        self.cycles = 0
        self.since = 0.0

    def failed(self, exc: Exception, retry_in: float) -> None:
        self.cycles += 1
        kind = type(exc).__name__
        if kind == self.kind:
            logger.debug("cycle failed again", error=str(exc), cycles=self.cycles)
            return
        if self.kind is None:
            self.since = time.monotonic()
        self.kind, self.cause = kind, describe(exc)
        logger.error(
            "cycle failed",
            error=self.cause,
            retry_in=round(retry_in, 3),
            note="retried with back-off; logged again when it ends or its kind changes",
        )

    def over(self) -> None:
        if self.kind is None:
            return
        logger.info(
            "cycles succeed again",
            failed_cycles=self.cycles,
            lasted_s=round(time.monotonic() - self.since, 1),
            error=self.cause,
        )
        self.kind, self.cycles = None, 0


class Daemon:
    def __init__(self, config: Config, clock: Clock = utc_now) -> None:
        self.config = config
        self.clock = clock  # for the prune schedule
        self.stopping = threading.Event()
        self.metrics = Metrics()
        self.outage = Outage()
        self.on_standby = False
        self.store_failed = False  # the last cycle failed for the store: take the lock anew
        self.key_warned_on: date | None = None  # a day's first cycle warns of the key's expiry

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("stopping after the operation in flight", signal=signal.Signals(signum).name)
        self.stopping.set()

    def run(self) -> ExitCode:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        listen = self.config.metrics_listen
        try:
            health = HealthServer(self.metrics, listen, stale_after=3 * self.config.interval + 60)
        except (OSError, ValueError) as exc:
            # A run without its listener would be invisible to its orchestrator: refuse.
            raise ConfigError(listen_error(listen, exc)) from None
        health.start()
        expires = self.config.target.token_expires
        if expires is not None:
            midnight = datetime.combine(expires, dt_time.min, tzinfo=UTC)
            self.metrics.token_expiry.set(midnight.timestamp())
        # The bound address, not `listen`: with port 0 it is the only place the port shows.
        logger.info(
            "daemon started",
            interval=self.config.interval,
            metrics=f"http://{health.address}/metrics",
        )
        try:
            with Store.open(self.config.state, self.config.channel) as store:
                self.loop(store)
        finally:
            health.stop()
        logger.info("daemon stopped")
        return ExitCode.OK

    def loop(self, store: Store) -> None:
        """Hold the channel while active; a standby tries to take it every interval."""
        with contextlib.ExitStack() as holding:
            active = False
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    active = active or self.take_channel(store, holding)
                    if active and self.cycle(store):
                        self.prune_when_due(store)
                    elif active and self.store_failed:
                        release(holding)  # the lock may have died with the store's connection
                        active = False
                except FATAL:
                    raise
                except Exception as exc:
                    # Outside a cycle (taking the channel, the gauges after it): the same
                    # as a failed cycle, so one bug does not stop provisioning.
                    self.failed(exc)
                self.warn_of_key_expiry()
                memory.release_freed()  # else RSS keeps each outage's high-water mark
                failures = self.outage.cycles
                # Event.wait returns early on SIGTERM: the daemon stops without waiting out
                # the interval.
                between = retry_delay(self.config.interval, failures)
                self.metrics.cycle_interval.set(between)
                self.stopping.wait(max(0.0, between - (time.monotonic() - started)))

    def warn_of_key_expiry(self) -> None:
        """Once a day (and at start) from 30 days before target.token_expires."""
        today = self.clock().date()
        if self.key_warned_on == today:
            return
        self.key_warned_on = today
        warning = token_expiry_warning(self.config.target, today)
        if warning is not None:
            logger.warning("API key expiring", detail=warning)

    def take_channel(self, store: Store, holding: contextlib.ExitStack) -> bool:
        try:
            holding.enter_context(store.lock())
        except ChannelLocked as exc:
            if not self.on_standby:
                logger.info("standby: another instance is active for this channel", detail=str(exc))
            self.on_standby = True
            self.metrics.last_cycle.record(None, standby=True)
            return False
        except StateError as exc:
            self.failed(exc)
            return False
        if self.on_standby:
            logger.info("active: this instance now holds the channel")
        self.on_standby = False
        return True

    def cycle(self, store: Store) -> bool:
        """One cycle under the held channel; False when it failed as a whole."""
        started = time.monotonic()
        # A cycle that fails as a whole counts as 4, whatever failed it (a store error too):
        # the health endpoint's "failed cycle" (design.md, Running).
        exit_code = ExitCode.UNREACHABLE
        failure: Exception | None = None
        try:
            report = asyncio.run(
                cycle_run.sync(self.config, store, should_stop=self.stopping.is_set)
            )
            exit_code = report.exit_code
            for action, count in report.outcome.applied.items():
                self.metrics.operations.labels(action, "ok").inc(count)
            for failed in report.outcome.failed:
                self.metrics.operations.labels(failed.op.action.value, "failed").inc()
            self.metrics.held.set(len(report.prepared.verdict.held))
            if exit_code in (ExitCode.OK, ExitCode.FAILED):
                self.metrics.last_success.set(time.time())
        except EXPECTED as exc:
            failure = exc
            self.store_failed = isinstance(exc, StateError)
        except FATAL:
            raise
        except Exception as exc:
            # A fault no typed error covers (a bug, a corrupt record, a library's own
            # error): the next cycle may not meet it, so it fails this cycle only.
            failure = exc
            self.store_failed = False
        finally:
            self.metrics.cycles.labels(str(exit_code)).inc()
            self.metrics.cycle_duration.observe(time.monotonic() - started)
        if failure is None:
            applied, rejected = sum(report.outcome.applied.values()), len(report.outcome.failed)
            if mostly_failed(applied, rejected):
                failure = MostOperationsFailed(rejected, applied + rejected)
        if failure is not None:
            self.failed(failure)
            return False
        self.metrics.last_cycle.record(None)
        self.outage.over()
        with contextlib.suppress(StateError):  # the gauges wait for the store's return
            failures = list(filter(retry.is_failure, store.failures().values()))
            self.metrics.quarantined.set(sum(1 for f in failures if f.quarantined))
            self.metrics.pending.set(sum(1 for f in failures if not f.quarantined))
        return True

    def prune_when_due(self, store: Store) -> None:
        """Audit and runs retention, a day after the last prune (or at once, if none is on
        record). The time is kept in the store, so a restart neither prunes again nor
        skips a day, and a standby that takes over goes on from the holder's schedule."""
        now = self.clock()
        last = _parsed(store.watermark(PRUNED))
        # A last prune in the future: the clock was set back; prune rather than wait for it.
        if last is not None and last <= now < last + PRUNE_EVERY:
            return
        before = now - timedelta(days=self.config.audit_retention_days)
        entries, runs = store.prune(before, should_stop=self.stopping.is_set)
        if self.stopping.is_set():
            return  # cut short between chunks: the next start prunes the rest
        store.set_watermark(PRUNED, now.isoformat())
        logger.info("store pruned", audit_entries=entries, runs=runs, older_than=before.isoformat())

    def failed(self, exc: Exception) -> None:
        """A cycle's turn failed as a whole: 503 with its cause, counted, logged, backed off."""
        self.metrics.last_cycle.record(describe(exc))
        self.metrics.cycle_errors.labels(type(exc).__name__).inc()
        if not isinstance(exc, EXPECTED):
            # Once at error level (Outage), with its traceback only at debug level.
            logger.debug("unexpected error", traceback="".join(traceback.format_exception(exc)))
        self.outage.failed(exc, retry_delay(self.config.interval, self.outage.cycles + 1))


def _parsed(text: str | None) -> datetime | None:
    """An ISO time from the store; one without a zone, or unparsable, counts as none."""
    try:
        moment = None if text is None else datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


def release(holding: contextlib.ExitStack) -> None:
    """Let go of the channel; a lock whose connection is gone needs no unlocking."""
    try:
        holding.close()
    except StateError as exc:
        logger.debug("channel lock already gone", detail=str(exc))


def run(config: Config) -> ExitCode:
    return Daemon(config).run()
