"""Short, stable digests of what a record looks like, to notice change without keeping copies."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from scimsync.model import DesiredGroup, DesiredUser


def canonical_json(value: object) -> str:
    """Compact JSON with sorted keys: the stored form and the fingerprint's input."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(values: Mapping[str, object]) -> str:
    """sha256 of the canonical JSON of `values`, hex, first 32 characters."""
    return digest(canonical_json(dict(values)))


def digest(text: str) -> str:
    """The fingerprint of a canonical JSON text already made."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def of_desired(record: DesiredUser | DesiredGroup) -> str:
    """What a failure remembers, so that a record edited at the source is retried at once."""
    if isinstance(record, DesiredUser):
        return fingerprint({**record.values, "active": record.active})
    return fingerprint({"name": record.display_name, "members": sorted(record.member_source_ids)})
