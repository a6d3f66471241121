"""What the store hands back: plain frozen records, plus the fingerprint and backoff rules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from scimsync.fingerprint import canonical_json, digest, fingerprint

__all__ = [
    "Approval",
    "AuditKind",
    "AuditRecord",
    "FailureRecord",
    "IntentRecord",
    "RunRecord",
    "backoff",
    "canonical_json",
    "fingerprint",
    "held_digest",
]
from scimsync.model import Kind

# "cycle": an event of the whole cycle (the API key refused), not of one record.
AuditKind = Kind | Literal["cycle"]

BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=24)


def backoff(attempts: int) -> timedelta:
    """Delay before retry number `attempts` + 1: 1 min, 2, 4, ... capped at 24 h."""
    if attempts < 1:
        return timedelta(0)
    # Past 2**11 minutes the cap applies anyway; bounding the exponent avoids huge ints.
    delay: timedelta = BACKOFF_BASE * 2 ** min(attempts - 1, 16)
    return min(delay, BACKOFF_CAP)


@dataclass(frozen=True, slots=True)
class RunRecord:
    cycle_id: str
    mode: str
    started_at: datetime
    finished_at: datetime | None
    result: str | None  # None while the run is in progress (or crashed)
    summary: Mapping[str, int]
    cycles: int = 1  # quiet or repeated refused cycles are counted into one row
    cause: str | None = None  # why a failed or interrupted run ended


@dataclass(frozen=True, slots=True)
class AuditRecord:
    cycle_id: str
    at: datetime
    event: str
    kind: AuditKind
    source_id: str
    target_id: str | None
    success: bool
    cause: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class IntentRecord:
    """An operation started but never confirmed: the process died during the call."""

    intent_id: int
    cycle_id: str
    action: str
    kind: Kind
    source_id: str
    name: str
    at: datetime


@dataclass(frozen=True, slots=True)
class FailureRecord:
    kind: Kind
    source_id: str
    name: str
    action: str
    cause: str
    source_fingerprint: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    next_retry_at: datetime  # not retried before then; a quarantined record never is
    quarantined: bool

    def retry_due(self, now: datetime, source_fingerprint: str | None = None) -> bool:
        """Whether the engine should try again: the delay has passed, or the source changed."""
        if source_fingerprint is not None and source_fingerprint != self.source_fingerprint:
            return True
        return not self.quarantined and now >= self.next_retry_at


def held_digest(operations: Iterable[Mapping[str, object]]) -> str:
    """Which operations are held, as (action, kind, source id): what an approval covers.

    Member lists are left out: they come from sets, whose order differs between processes.
    """
    keys = sorted(f"{op['action']} {op['kind']} {op['source_id']}" for op in operations)
    return digest(canonical_json(keys))


@dataclass(frozen=True, slots=True)
class Approval:
    """`sync --allow-deletions` while `run` held the channel: applied at its next cycle."""

    at: datetime
    digest: str  # held_digest of the operations approved
    count: int
