"""The state store: what scimsync pushed, per channel, in SQLite or PostgreSQL."""

from scimsync.state.errors import ChannelLocked, StateError
from scimsync.state.records import (
    AuditRecord,
    FailureRecord,
    IntentRecord,
    RunRecord,
    backoff,
    fingerprint,
)
from scimsync.state.store import Store

__all__ = [
    "AuditRecord",
    "ChannelLocked",
    "FailureRecord",
    "IntentRecord",
    "RunRecord",
    "StateError",
    "Store",
    "backoff",
    "fingerprint",
]
