"""The values that flow between the stages: read -> map -> plan -> apply."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

Kind = Literal["user", "group"]
# A record's key, in the store and in a cycle's sets of records: its kind and source id.
Record = tuple[Kind, str]

# A flat SCIM attribute path ("userName", "emails.work", "name.givenName") -> value.
ScimValues = Mapping[str, str | bool]


@dataclass(frozen=True, slots=True)
class SourceUser:
    """A user as the directory holds it. Attribute names are lower-case."""

    guid: str
    dn: str
    attributes: Mapping[str, tuple[str, ...]]
    disabled: bool


@dataclass(frozen=True, slots=True)
class SourceGroup:
    """A group in scope; member_guids are the users it gives membership to (flattened if nested)."""

    guid: str
    dn: str
    name: str
    member_guids: frozenset[str]


@dataclass(frozen=True, slots=True)
class DesiredUser:
    """What the target should hold for one source user, after mapping."""

    source_id: str
    user_name: str
    active: bool
    values: ScimValues
    create_only: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class DesiredGroup:
    source_id: str
    display_name: str
    member_source_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class MappingFailure:
    """A source record that could not be mapped; reported, never pushed."""

    kind: Kind
    source_id: str
    name: str
    cause: str


class Action(StrEnum):
    CREATE = "create"
    LINK = "link"
    UPDATE = "update"
    DISABLE = "disable"
    DELETE = "delete"
    RENAME = "rename"
    ADD_MEMBERS = "add_members"
    REMOVE_MEMBERS = "remove_members"


DEPROVISIONING = frozenset({Action.DISABLE, Action.DELETE})


@dataclass(frozen=True, slots=True)
class Operation:
    """One change at the target. `values` holds only what this operation writes."""

    action: Action
    kind: Kind
    source_id: str
    name: str
    target_id: str | None = None
    values: ScimValues = field(default_factory=dict)
    members: tuple[str, ...] = ()  # source ids of users, for add/remove_members
    removed: tuple[str, ...] = ()  # update: attributes that no longer map to a value
    target_members: tuple[str, ...] = ()  # remove_members: target ids of users not ours

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "action": self.action.value,
            "kind": self.kind,
            "source_id": self.source_id,
            "name": self.name,
        }
        if self.target_id is not None:
            out["target_id"] = self.target_id
        if self.values:
            out["values"] = dict(self.values)
        if self.members:
            out["members"] = list(self.members)
        if self.removed:
            out["removed"] = list(self.removed)
        if self.target_members:
            out["target_members"] = list(self.target_members)
        return out


@dataclass(frozen=True, slots=True)
class LinkedUser:
    """What the store recorded after the last successful write of a user."""

    source_id: str
    target_id: str
    user_name: str
    active: bool
    values: ScimValues  # the flat values last pushed (the fingerprint's input)
    # In the directory's user scope when a cycle last saw it. A linked user who left scope
    # keeps its link (and its disabled account) but is no member of any group, and coming
    # back into scope, which may touch only a scope group, is what change detection must see.
    in_scope: bool = True


@dataclass(frozen=True, slots=True)
class LinkedGroup:
    source_id: str
    target_id: str
    display_name: str
    member_source_ids: frozenset[str]  # the member set last pushed


@dataclass(frozen=True, slots=True)
class TargetRef:
    """An object found at the target by its matching key, not yet linked."""

    target_id: str
    name: str
    active: bool = True
    # What the target holds of the attributes scimsync maps, where the caller read them:
    # adoption then writes only the values that differ.
    values: ScimValues = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Conflict:
    """A desired record the planner refuses to push, with the reason."""

    kind: Kind
    source_id: str
    name: str
    cause: str


@dataclass(frozen=True, slots=True)
class Plan:
    operations: tuple[Operation, ...]
    conflicts: tuple[Conflict, ...] = ()

    def __repr__(self) -> str:
        # A plan can hold 100,000 operations; asyncio.run on Python 3.11 reprs its
        # coroutine's result (cpython#112559), and a full repr would cost hundreds of MB.
        return f"Plan({len(self.operations)} operations, {len(self.conflicts)} conflicts)"

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.operations:
            counts[op.action.value] = counts.get(op.action.value, 0) + 1
        return counts

    @property
    def deprovisioning(self) -> tuple[Operation, ...]:
        return tuple(op for op in self.operations if op.action in DEPROVISIONING)


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """What the planner may do: the `options` it reads, frozen and free of the config."""

    create_users: bool = True
    update_users: bool = True
    deprovision_users: bool = True
    provision_disabled_users: bool = False
    remove_user_action: Literal["disable", "delete"] = "disable"
    groups: bool = True
    group_rename: Literal["in_place", "recreate"] = "in_place"
    match_users_by: Literal["userName", "externalId"] = "userName"
    user_name_changes: Literal["conflict", "update"] = "conflict"


@dataclass(frozen=True, slots=True)
class DeletionLimit:
    """`options.max_deletions`: a fixed count, or a share of the linked users with a floor.
    The guard does the arithmetic; `spelled` is the setting as written, for its message."""

    count: int | None = None
    percent: float = 0.0
    floor: int = 0
    spelled: str = ""
    default: bool = False
