"""What the store hands back: plain frozen records (failure rows are retry.FailureRecord)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from scimsync.fingerprint import canonical_json, digest, fingerprint
from scimsync.retry import FailureRecord

__all__ = [
    "Approval",
    "AuditKind",
    "AuditRecord",
    "FailureRecord",
    "IntentRecord",
    "RunRecord",
    "canonical_json",
    "fingerprint",
    "held_digest",
]
from scimsync.model import Kind

# "cycle": an event of the whole cycle (the API key refused), not of one record.
AuditKind = Kind | Literal["cycle"]


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
