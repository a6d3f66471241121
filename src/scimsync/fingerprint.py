"""Short, stable digests of what a record looks like, to notice change without keeping copies."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from scimsync.model import DesiredGroup, DesiredUser


def fingerprint(values: Mapping[str, object]) -> str:
    canonical = json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def of_desired(record: DesiredUser | DesiredGroup) -> str:
    if isinstance(record, DesiredUser):
        return fingerprint({**record.values, "active": record.active})
    return fingerprint({"name": record.display_name, "members": sorted(record.member_source_ids)})
