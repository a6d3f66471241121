"""The list-query subset Atlassian serves: one `eq` filter, 1-based paging capped at 100."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from scimsync.emulator.errors import EmulatorError, invalid_value
from scimsync.emulator.schema import LIST_RESPONSE

# Atlassian pages hold at most 100 resources (atlassian-scim-api.md section 5).
MAX_PAGE = 100

# Users filter on `userName eq` or `externalId eq`, groups on `displayName eq` only;
# anything else is a 400 (atlassian-scim-api.md section 5, ACCESS-1424).
_EQ = re.compile(r'^\s*(\w+)\s+eq\s+("(?:[^"\\]|\\.)*")\s*$', re.IGNORECASE)


def parse_filter(text: str | None, allowed: Sequence[str]) -> tuple[str | None, str | None]:
    """(attribute, value) of a supported filter, or (None, None) without one."""
    if text is None or not text.strip():
        return None, None
    match = _EQ.match(text)
    canonical = {name.lower(): name for name in allowed}
    if not match or match.group(1).lower() not in canonical:
        raise EmulatorError(
            400,
            f"unsupported filter: {text}; only {' or '.join(allowed)} eq is supported",
            "invalidFilter",
        )
    value = json.loads(match.group(2))
    return canonical[match.group(1).lower()], str(value)


def _integer(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid_value(f"{name} must be an integer") from None


def page(params: Mapping[str, str], resources: list[Any]) -> tuple[int, list[Any]]:
    """(startIndex, the page of `resources`) for the request's startIndex and count."""
    start = max(1, _integer(params, "startIndex", 1))
    count = min(MAX_PAGE, max(0, _integer(params, "count", MAX_PAGE)))
    return start, resources[start - 1 : start - 1 + count]


def list_response(total: int, start: int, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schemas": [LIST_RESPONSE],
        "totalResults": total,
        "itemsPerPage": len(items),
        "startIndex": start,
        "Resources": items,
    }


def _names(raw: str | None) -> set[str]:
    return {part.strip().lower() for part in (raw or "").split(",") if part.strip()}


def project(resource: dict[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
    """Applies `attributes` / `excludedAttributes` to top-level attributes.

    `id` and `schemas` are always returned (RFC 7643 section 7, `returned: always`).
    """
    wanted, excluded = _names(params.get("attributes")), _names(params.get("excludedAttributes"))
    if not wanted and not excluded:
        return resource
    always = {"id", "schemas"}
    return {
        key: value
        for key, value in resource.items()
        if key.lower() in always
        or ((not wanted or _wanted(key, wanted)) and key.lower() not in excluded)
    }


def returns(params: Mapping[str, str], key: str) -> bool:
    """Whether `project` would keep the top-level attribute `key`."""
    return key in project({key: True}, params)


def _wanted(key: str, wanted: set[str]) -> bool:
    lowered = key.lower()
    return any(
        name == lowered or name.startswith(lowered + ".") or name.startswith(lowered + ":")
        for name in wanted
    )
