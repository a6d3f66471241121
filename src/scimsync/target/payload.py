"""Flat SCIM values ("name.givenName", "emails.work") <-> SCIM JSON (RFC 7643 / 7644).

Plain dicts rather than scim2-models: the flat paths map one to one onto JSON keys and
PATCH paths, and a lenient reader keeps working when a target adds attributes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from scimsync.model import ScimValues

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

SIMPLE = ("userName", "externalId", "displayName", "nickName", "title", "preferredLanguage")
SIMPLE_ALL = (*SIMPLE, "timezone")
NAME = ("givenName", "familyName", "formatted")
ENTERPRISE = ("department", "organization")
PHONE_TYPES = ("work", "mobile")

# Top-level keys to_user_resource writes: a PUT replaces exactly these, keeping the rest.
MANAGED_KEYS = frozenset({*SIMPLE_ALL, "name", "emails", "phoneNumbers", ENTERPRISE_SCHEMA})

PatchOperation = dict[str, Any]


def _emails(address: str) -> list[dict[str, Any]]:
    # Atlassian requires exactly one primary email on create and on email change.
    return [{"value": address, "type": "work", "primary": True}]


def _phones(values: Mapping[str, str | bool]) -> list[dict[str, Any]]:
    return [
        {"value": values[f"phoneNumbers.{kind}"], "type": kind}
        for kind in PHONE_TYPES
        if f"phoneNumbers.{kind}" in values
    ]


def to_user_resource(values: ScimValues, active: bool) -> dict[str, Any]:
    """The full User resource for POST or PUT."""
    body: dict[str, Any] = {"schemas": [USER_SCHEMA]}
    for key in SIMPLE_ALL:
        if key in values:
            body[key] = values[key]
    name = {part: values[f"name.{part}"] for part in NAME if f"name.{part}" in values}
    if name:
        body["name"] = name
    if "emails.work" in values:
        body["emails"] = _emails(str(values["emails.work"]))
    phones = _phones(values)
    if phones:
        body["phoneNumbers"] = phones
    enterprise = {key: values[key] for key in ENTERPRISE if key in values}
    if enterprise:
        body["schemas"].append(ENTERPRISE_SCHEMA)
        body[ENTERPRISE_SCHEMA] = enterprise
    body["active"] = active
    return body


def _path(key: str) -> str:
    if key in ENTERPRISE:
        return f"{ENTERPRISE_SCHEMA}:{key}"
    return key


def patch_operations(
    changed: ScimValues,
    removed: Collection[str] = (),
    current: ScimValues | None = None,
) -> list[PatchOperation]:
    """PATCH `replace` for each changed path and `remove` for each cleared one.

    Multi-valued attributes are written whole: `emails` as the one primary work email,
    `phoneNumbers` as every type we manage, merged from `current` (the values the target
    holds now), because a value-filter path fails with noTarget when no entry matches.
    """
    ops: list[PatchOperation] = []
    for key, value in changed.items():
        if key.startswith("phoneNumbers.") or key == "emails.work":
            continue
        ops.append({"op": "replace", "path": _path(key), "value": value})
    for key in sorted(set(removed) - set(changed)):
        if key.startswith("phoneNumbers.") or key == "emails.work":
            continue
        ops.append({"op": "remove", "path": _path(key)})
    if "emails.work" in changed:
        ops.append(
            {"op": "replace", "path": "emails", "value": _emails(str(changed["emails.work"]))}
        )
    elif "emails.work" in removed:
        ops.append({"op": "remove", "path": "emails"})
    phone_keys = {k for k in (*changed, *removed) if k.startswith("phoneNumbers.")}
    if phone_keys:
        merged = {k: v for k, v in (current or {}).items() if k.startswith("phoneNumbers.")}
        merged.update({k: v for k, v in changed.items() if k.startswith("phoneNumbers.")})
        for key in removed:
            if key not in changed:
                merged.pop(key, None)
        phones = _phones(merged)
        if phones:
            ops.append({"op": "replace", "path": "phoneNumbers", "value": phones})
        else:
            ops.append({"op": "remove", "path": "phoneNumbers"})
    return ops


def patch_body(operations: list[PatchOperation]) -> dict[str, Any]:
    # Atlassian's example uses "Operations" (capital O); jira.js's lowercase is wrong.
    return {"schemas": [PATCH_SCHEMA], "Operations": operations}


def _typed_value(entries: Any, wanted: str, *, primary_fallback: bool) -> str | None:
    if not isinstance(entries, list):
        return None
    dicts = [e for e in entries if isinstance(e, dict) and isinstance(e.get("value"), str)]
    for entry in dicts:
        if entry.get("type") == wanted:
            return str(entry["value"])
    if primary_fallback:
        for entry in dicts:
            if entry.get("primary") is True:
                return str(entry["value"])
        if len(dicts) == 1 and not dicts[0].get("type"):
            return str(dicts[0]["value"])
    return None


def from_user_resource(resource: Mapping[str, Any]) -> dict[str, str | bool]:
    """The flat values a User resource holds (only those scimsync maps)."""
    values: dict[str, str | bool] = {}
    for key in SIMPLE_ALL:
        if isinstance(resource.get(key), str):
            values[key] = resource[key]
    name = resource.get("name")
    if isinstance(name, dict):
        for part in NAME:
            if isinstance(name.get(part), str):
                values[f"name.{part}"] = name[part]
    email = _typed_value(resource.get("emails"), "work", primary_fallback=True)
    if email is not None:
        values["emails.work"] = email
    for kind in PHONE_TYPES:
        phone = _typed_value(resource.get("phoneNumbers"), kind, primary_fallback=False)
        if phone is not None:
            values[f"phoneNumbers.{kind}"] = phone
    enterprise = resource.get(ENTERPRISE_SCHEMA)
    if isinstance(enterprise, dict):
        for key in ENTERPRISE:
            if isinstance(enterprise.get(key), str):
                values[key] = enterprise[key]
    return values


def to_group_resource(display_name: str, member_ids: Collection[str] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {"schemas": [GROUP_SCHEMA], "displayName": display_name}
    if member_ids:
        body["members"] = [{"value": member} for member in member_ids]
    return body


def member_ids_of(resource: Mapping[str, Any]) -> frozenset[str]:
    members = resource.get("members")
    if not isinstance(members, list):
        return frozenset()
    return frozenset(
        str(m["value"]) for m in members if isinstance(m, dict) and m.get("value") is not None
    )


def filter_eq(attribute: str, value: str) -> str:
    """`attribute eq "value"` with the value escaped as a JSON string (RFC 7644 3.4.2.2)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{attribute} eq "{escaped}"'
