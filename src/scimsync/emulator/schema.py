"""What a user or group may hold, and turning a request body into a clean record.

Atlassian's user model (atlassian-scim-api.md section 2): required `schemas`, `userName`
and `emails` with exactly one primary; the enterprise extension carries only
`organization` and `department`; `active` defaults to true. Unknown attributes are
dropped, as a schema-bound server does.
"""

from __future__ import annotations

from typing import Any

from scimsync.emulator.errors import EmulatorError, invalid_value

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

USER_STRINGS = (
    "externalId",
    "userName",
    "displayName",
    "nickName",
    "title",
    "preferredLanguage",
    "timezone",
)
NAME_PARTS = (
    "formatted",
    "familyName",
    "givenName",
    "middleName",
    "honorificPrefix",
    "honorificSuffix",
)
MULTI_VALUED = ("emails", "phoneNumbers")
MULTI_VALUE_PARTS = ("value", "type", "primary", "display")
ENTERPRISE_STRINGS = ("organization", "department")
READ_ONLY = ("id", "meta", "groups")

# SCIM attribute names are case-insensitive (RFC 7643 section 2.1).
USER_ATTRIBUTES = {
    name.lower(): name for name in (*USER_STRINGS, "name", "active", *MULTI_VALUED, *READ_ONLY)
}
ENTERPRISE_ATTRIBUTES = {name.lower(): name for name in ENTERPRISE_STRINGS}
SUB_ATTRIBUTES = {name.lower(): name for name in (*NAME_PARTS, *MULTI_VALUE_PARTS)}


def canonical_keys(body: dict[str, Any], known: dict[str, str]) -> dict[str, Any]:
    """The known attributes of `body` under their canonical spelling."""
    return {known[key.lower()]: value for key, value in body.items() if key.lower() in known}


def require_schema(body: Any, schema: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid_value("the request body must be a JSON object")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or schema not in schemas:
        raise invalid_value(f"schemas must include {schema}")
    return body


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise invalid_value(f"{name} must be a string")
    return value


def _multi_values(name: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise invalid_value(f"{name} must be a list")
    cleaned: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, dict):
            raise invalid_value(f"each of {name} must be an object")
        entry = canonical_keys(item, SUB_ATTRIBUTES)
        if not isinstance(entry.get("value"), str) or not entry["value"]:
            raise invalid_value(f"each of {name} needs a non-empty value")
        if "primary" in entry and not isinstance(entry["primary"], bool):
            raise invalid_value(f"{name}.primary must be a boolean")
        cleaned.append({k: entry[k] for k in MULTI_VALUE_PARTS if entry.get(k) is not None})
    return cleaned


def clean_user(body: Any, *, minimal: bool = False) -> dict[str, Any]:
    """A stored user from a POST, PUT or patched body: validated, unknown keys dropped.

    `minimal`: the emulator's `schema: minimal` server, whose emails hold a value only
    and whose users need name.formatted (its /Schemas say so).
    """
    body = require_schema(body, CORE_USER)
    source = canonical_keys(body, USER_ATTRIBUTES)
    user: dict[str, Any] = {}
    for name in USER_STRINGS:
        if source.get(name) is not None:
            user[name] = _string(name, source[name])
    if not user.get("userName", "").strip():
        raise invalid_value("userName is required")
    if source.get("name") is not None:
        if not isinstance(source["name"], dict):
            raise invalid_value("name must be an object")
        parts = canonical_keys(source["name"], SUB_ATTRIBUTES)
        full_name = {
            k: _string(f"name.{k}", parts[k]) for k in NAME_PARTS if parts.get(k) is not None
        }
        if full_name:
            user["name"] = full_name
    active = source.get("active", True)
    if not isinstance(active, bool):
        raise invalid_value("active must be a boolean")
    user["active"] = active
    emails = _multi_values("emails", source.get("emails") or [])
    if not emails:
        raise invalid_value("emails is required")
    if minimal:
        _require_minimal(user, emails)
    elif sum(1 for email in emails if email.get("primary") is True) != 1:
        raise invalid_value("emails must have exactly one primary value")
    user["emails"] = emails
    if source.get("phoneNumbers"):
        user["phoneNumbers"] = _multi_values("phoneNumbers", source["phoneNumbers"])
    extension = body.get(ENTERPRISE)
    if extension is not None:
        if not isinstance(extension, dict):
            raise invalid_value(f"{ENTERPRISE} must be an object")
        parts = canonical_keys(extension, ENTERPRISE_ATTRIBUTES)
        cleaned = {k: _string(k, parts[k]) for k in ENTERPRISE_STRINGS if parts.get(k) is not None}
        if cleaned:
            user[ENTERPRISE] = cleaned
    user["schemas"] = [CORE_USER, ENTERPRISE] if ENTERPRISE in user else [CORE_USER]
    return user


def _require_minimal(user: dict[str, Any], emails: list[dict[str, Any]]) -> None:
    for email in emails:
        undefined = sorted(set(email) - {"value"})
        if undefined:
            raise EmulatorError(
                400, f"emails.{undefined[0]} is not defined by the User schema", "invalidSyntax"
            )
    if not user.get("name", {}).get("formatted"):
        raise invalid_value("name.formatted is required")


def member_ids(value: Any) -> list[str]:
    """User ids from a `members` value: a list of {"value": id}."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise invalid_value("members must be a list")
    ids: list[str] = []
    for member in value:
        if not isinstance(member, dict) or not isinstance(member.get("value"), str):
            raise invalid_value('each member must be an object with a string "value"')
        ids.append(member["value"])
    return ids


def group_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid_value("displayName is required")
    return value
