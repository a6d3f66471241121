"""The state store: what scimsync pushed, per channel, in SQLite or PostgreSQL."""

from scimsync.state.errors import ChannelLocked, StateError
from scimsync.state.records import (
    Approval,
    AuditRecord,
    FailureRecord,
    IntentRecord,
    RunRecord,
    fingerprint,
    held_digest,
)
from scimsync.state.store import Store

__all__ = [
    "Approval",
    "AuditRecord",
    "ChannelLocked",
    "FailureRecord",
    "IntentRecord",
    "RunRecord",
    "StateError",
    "Store",
    "fingerprint",
    "held_digest",
]
