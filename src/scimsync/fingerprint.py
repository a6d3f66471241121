"""Short, stable digests of what a record looks like, to notice change without keeping copies."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping


def canonical_json(value: object) -> str:
    """Compact JSON with sorted keys: the stored form and the fingerprint's input."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(values: Mapping[str, object]) -> str:
    """sha256 of the canonical JSON of `values`, hex, first 32 characters."""
    return digest(canonical_json(dict(values)))


def digest(text: str) -> str:
    """The fingerprint of a canonical JSON text already made."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]
