"""RFC 7644 section 3.5.2 PATCH for users and groups, on a copy: a bad op changes nothing."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from scimsync.emulator.errors import EmulatorError, invalid_value
from scimsync.emulator.schema import (
    CORE_GROUP,
    CORE_USER,
    ENTERPRISE,
    ENTERPRISE_ATTRIBUTES,
    MULTI_VALUED,
    PATCH_OP,
    READ_ONLY,
    SUB_ATTRIBUTES,
    USER_ATTRIBUTES,
    group_name,
    member_ids,
    require_schema,
)

# attr, optional [sub eq value], optional .sub  (e.g. emails[type eq "work"].value)
_PATH = re.compile(
    r'^(\w+)(?:\[\s*(\w+)\s+eq\s+("(?:[^"\\]|\\.)*"|true|false)\s*\])?(?:\.(\w+))?$',
    re.IGNORECASE,
)


def invalid_path(path: str) -> EmulatorError:
    return EmulatorError(400, f"unsupported path: {path}", "invalidPath")


def operations(body: Any) -> list[tuple[str, str | None, Any]]:
    """(op, path, value) triples of a PatchOp body; op names are case-insensitive."""
    body = require_schema(body, PATCH_OP)
    ops = body.get("Operations")
    if not isinstance(ops, list) or not ops:
        raise invalid_value("Operations must be a non-empty list")
    parsed: list[tuple[str, str | None, Any]] = []
    for op in ops:
        if not isinstance(op, dict):
            raise invalid_value("each operation must be an object")
        name = str(op.get("op", "")).lower()
        if name not in ("add", "replace", "remove"):
            raise invalid_value(f"unknown op: {op.get('op')!r}")
        path = op.get("path")
        if path is not None and not isinstance(path, str):
            raise invalid_value("path must be a string")
        if name != "remove" and "value" not in op:
            raise invalid_value(f"{name} needs a value")
        parsed.append((name, path or None, op.get("value")))
    return parsed


@dataclass(frozen=True)
class _Target:
    attribute: str
    filter_attribute: str | None = None
    filter_value: Any = None
    sub: str | None = None


def _literal(text: str) -> Any:
    return json.loads(text if text.startswith('"') else text.lower())


def _target(path: str, known: dict[str, str]) -> _Target:
    match = _PATH.match(path.strip())
    if not match:
        raise invalid_path(path)
    attribute, filter_attribute, filter_value, sub = match.groups()
    if attribute.lower() not in known:
        raise invalid_path(path)
    if filter_attribute is not None and filter_attribute.lower() not in SUB_ATTRIBUTES:
        raise invalid_path(path)
    if sub is not None and sub.lower() not in SUB_ATTRIBUTES:
        raise invalid_path(path)
    return _Target(
        known[attribute.lower()],
        SUB_ATTRIBUTES[filter_attribute.lower()] if filter_attribute else None,
        _literal(filter_value) if filter_value else None,
        SUB_ATTRIBUTES[sub.lower()] if sub else None,
    )


def _matches(item: dict[str, Any], target: _Target) -> bool:
    actual = item.get(target.filter_attribute or "")
    wanted = target.filter_value
    if isinstance(actual, str) and isinstance(wanted, str):
        return actual.lower() == wanted.lower()
    return bool(actual == wanted)


def _apply_multi(container: dict[str, Any], op: str, target: _Target, value: Any) -> None:
    items: list[dict[str, Any]] = container.setdefault(target.attribute, [])
    if target.filter_attribute is None:
        if target.sub is not None:
            raise invalid_path(f"{target.attribute}.{target.sub}")
        if op == "remove":
            container.pop(target.attribute, None)
            return
        new = value if isinstance(value, list) else [value]
        if any(isinstance(v, dict) and v.get("primary") is True for v in new):
            for item in items:  # one primary at most (RFC 7643 section 2.4)
                item["primary"] = False
        container[target.attribute] = new if op == "replace" else [*items, *new]
        return
    chosen = [item for item in items if isinstance(item, dict) and _matches(item, target)]
    if op == "remove":
        if target.sub is None:
            container[target.attribute] = [i for i in items if i not in chosen]
        for item in chosen:
            item.pop(target.sub or "", None)
        return
    if not chosen:
        if op == "replace" and target.sub is None:
            raise EmulatorError(400, f"no {target.attribute} value matches the filter", "noTarget")
        chosen = [{target.filter_attribute: target.filter_value}]
        items.append(chosen[0])
    for item in chosen:
        if target.sub is not None:
            item[target.sub] = value
        elif isinstance(value, dict):
            item.update(value)
        else:
            raise invalid_value(f"{target.attribute} values must be objects")


def _apply_user_path(user: dict[str, Any], op: str, path: str, value: Any) -> None:
    if path.lower() == ENTERPRISE.lower():  # the whole extension
        if op == "remove":
            user.pop(ENTERPRISE, None)
            return
        if op == "replace":
            user.pop(ENTERPRISE, None)
        _apply_user_value(user, op, {ENTERPRISE: value})
        return
    container, known = user, USER_ATTRIBUTES
    for prefix, schema_known in ((CORE_USER, USER_ATTRIBUTES), (ENTERPRISE, ENTERPRISE_ATTRIBUTES)):
        if path.lower().startswith(prefix.lower() + ":"):
            path = path[len(prefix) + 1 :]
            known = schema_known
            if prefix == ENTERPRISE:
                container = user.setdefault(ENTERPRISE, {})
    target = _target(path, known)
    if target.attribute in READ_ONLY:
        raise EmulatorError(400, f"{target.attribute} is read-only", "mutability")
    if target.attribute in MULTI_VALUED:
        _apply_multi(container, op, target, value)
        return
    if target.filter_attribute is not None:
        raise invalid_path(path)
    if target.sub is not None:
        if target.attribute != "name":
            raise invalid_path(path)
        parts = container.setdefault("name", {})
        if op == "remove":
            parts.pop(target.sub, None)
        else:
            parts[target.sub] = value
        return
    if op == "remove":
        container.pop(target.attribute, None)
    elif target.attribute == "name" and isinstance(value, dict) and op == "add":
        container.setdefault("name", {}).update(value)
    else:
        container[target.attribute] = value


def _apply_user_value(user: dict[str, Any], op: str, value: Any) -> None:
    """A path-less add/replace: each key of `value` is a path of its own."""
    if not isinstance(value, dict):
        raise invalid_value(f"{op} without a path needs an object value")
    for key, item in value.items():
        if key.lower() == ENTERPRISE.lower():
            if not isinstance(item, dict):
                raise invalid_value(f"{ENTERPRISE} must be an object")
            for sub_key, sub_value in item.items():
                if sub_key.lower() == "schemas":
                    continue
                _apply_user_path(user, op, f"{ENTERPRISE}:{sub_key}", sub_value)
        elif key.lower() in ("schemas", "id", "meta"):
            continue
        else:
            _apply_user_path(user, op, key, item)


def patched_user(stored: dict[str, Any], body: Any) -> dict[str, Any]:
    """The user body a PATCH yields, still to be validated as a whole by clean_user."""
    user = copy.deepcopy({k: v for k, v in stored.items() if k not in ("created", "lastModified")})
    for op, path, value in operations(body):
        if path is None:
            if op == "remove":
                raise EmulatorError(400, "remove needs a path", "noTarget")
            _apply_user_value(user, op, value)
        else:
            _apply_user_path(user, op, path, value)
    if not user.get(ENTERPRISE):
        user.pop(ENTERPRISE, None)
    user["schemas"] = [CORE_USER]
    return user


@dataclass
class GroupState:
    display_name: str
    external_id: str | None
    members: dict[str, None]
    # The member ids operations added or removed, so the store updates its indexes by the
    # change and not by the group's size; None once the list was replaced wholesale.
    touched: set[str] | None = field(default_factory=set)

    def add_members(self, ids: list[str]) -> None:
        self.members.update(dict.fromkeys(ids))
        if self.touched is not None:
            self.touched.update(ids)

    def remove_member(self, user_id: str) -> None:
        self.members.pop(user_id, None)
        if self.touched is not None:
            self.touched.add(user_id)

    def replace_members(self, ids: list[str]) -> None:
        self.members = dict.fromkeys(ids)
        self.touched = None


_MEMBER_FILTER = re.compile(r'^members\[\s*value\s+eq\s+("(?:[^"\\]|\\.)*")\s*\]$', re.IGNORECASE)


def _apply_group(
    state: GroupState, op: str, path: str, value: Any, member_filter: bool = True
) -> None:
    lowered = path.strip().lower()
    if lowered in ("displayname", f"{CORE_GROUP.lower()}:displayname"):
        if op == "remove":
            raise invalid_value("displayName is required")
        state.display_name = group_name(value)
    elif lowered == "externalid":
        state.external_id = None if op == "remove" else value
    elif lowered == "members":
        ids = member_ids(value)
        if op == "add":
            state.add_members(ids)
        elif op == "replace":
            state.replace_members(ids)
        elif value is None:
            state.replace_members([])
        else:
            for user_id in ids:
                state.remove_member(user_id)
    elif member_filter and (match := _MEMBER_FILTER.match(path.strip())) and op == "remove":
        # Removing a non-member is a no-op, so a retried removal succeeds.
        state.remove_member(json.loads(match.group(1)))
    else:
        raise invalid_path(path)


def filters_members(body: Any) -> bool:
    """Whether a PATCH body holds a `members[value eq ...]` path."""
    return any(
        path is not None and _MEMBER_FILTER.match(path.strip()) for _, path, _ in operations(body)
    )


def patched_group(state: GroupState, body: Any, member_filter: bool = True) -> GroupState:
    """The group after `body`; `member_filter=False` refuses `members[value eq ...]` paths."""
    new = GroupState(state.display_name, state.external_id, dict(state.members))
    for op, path, value in operations(body):
        if path is not None:
            _apply_group(new, op, path, value, member_filter)
            continue
        if op == "remove" or not isinstance(value, dict):
            raise invalid_value(f"{op} without a path needs an object value")
        for key, item in value.items():
            if key.lower() not in ("schemas", "id", "meta"):
                _apply_group(new, op, key, item)
    return new
