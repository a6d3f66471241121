"""The values that flow between the stages: read -> map -> plan -> apply."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Literal


class Kind(StrEnum):
    """What a record is; its value is the word the store, plans and logs use."""

    USER = "user"
    GROUP = "group"


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
_USER_WRITES = frozenset({Action.LINK, Action.CREATE, Action.UPDATE})
_MEMBERSHIP = frozenset({Action.ADD_MEMBERS, Action.REMOVE_MEMBERS})


class Phase(IntEnum):
    """The executor's order, which the planner sorts by: a group's members exist before
    they are added, and nothing is removed before the writes that may still need it."""

    USER_WRITES = 0
    GROUP_WRITES = 1
    MEMBERSHIPS = 2
    USER_REMOVALS = 3
    GROUP_DELETIONS = 4

    @classmethod
    def of(cls, action: Action, kind: Kind) -> Phase:
        if kind == Kind.USER:
            return cls.USER_WRITES if action in _USER_WRITES else cls.USER_REMOVALS
        if action in _MEMBERSHIP:
            return cls.MEMBERSHIPS
        return cls.GROUP_DELETIONS if action is Action.DELETE else cls.GROUP_WRITES


@dataclass(frozen=True, slots=True)
class Operation:
    """One change at the target. `values` holds only the attributes this operation writes."""

    action: Action
    kind: Kind
    source_id: str
    name: str
    target_id: str | None = None
    values: ScimValues = field(default_factory=dict)
    members: tuple[str, ...] = ()  # source ids of users, for add/remove_members
    removed: tuple[str, ...] = ()  # update: attributes that no longer map to a value
    target_members: tuple[str, ...] = ()  # remove_members: target ids of users not ours
    active: bool | None = None  # link, update: the account state it sets; None keeps it
    previous_name: str | None = None  # rename: the name the target held

    @property
    def phase(self) -> Phase:
        return Phase.of(self.action, self.kind)

    def to_json(self) -> dict[str, object]:
        """The form `plan --json` prints and approvals digest. It predates the `active`
        and `previous_name` fields and keeps their keys in `values`, so that neither the
        printed plans nor the approvals recorded before them change."""
        out: dict[str, object] = {
            "action": self.action.value,
            "kind": self.kind.value,
            "source_id": self.source_id,
            "name": self.name,
        }
        if self.target_id is not None:
            out["target_id"] = self.target_id
        values: dict[str, object] = dict(self.values)
        if self.active is not None:
            values["active"] = self.active
        if self.previous_name is not None:
            values["previousName"] = self.previous_name
        if values:
            out["values"] = values
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
    # Groups left alone by options.protected_groups: reported, not an error.
    protected: tuple[Conflict, ...] = ()

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


# Atlassian's default groups: those that grant product access and admin rights, created
# with each product and named after it, often with the site's name appended
# ("confluence-users-vitafleet", "jira-software-users-acme.com"). Writing one would change
# who may use a product; deleting one is refused. Source: "Understand default groups",
# https://support.atlassian.com/user-management/docs/default-groups-and-permissions/
DEFAULT_PROTECTED_GROUPS = (
    "site-admins*",
    "administrators*",
    "system-administrators*",
    "trusted-users*",
    "jira-users*",
    "jira-admins*",
    "jira-administrators*",
    "jira-software-users*",
    "jira-core-users*",
    "jira-servicemanagement-users*",
    "jira-servicedesk-users*",
    "jira-work-management-users*",
    "jira-product-discovery-users*",
    "confluence-users*",
    "confluence-admins*",
    "confluence-administrators*",
    "bitbucket-users*",
    "bitbucket-admins*",
    "opsgenie-users*",
    "statuspage-users*",
    "atlassian-addons-admin",
)


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
    match_users_by: MatchBy = "userName"
    user_name_changes: Literal["conflict", "update"] = "conflict"
    protected_groups: tuple[str, ...] = DEFAULT_PROTECTED_GROUPS  # globs, case-insensitive


MatchBy = Literal["userName", "externalId"]


def user_match_key(user_name: str, values: ScimValues, match_by: MatchBy) -> str:
    """How a user is found at the target, for the planner and both observers: its userName
    or its externalId, case-folded; empty when it has none."""
    key = user_name if match_by == "userName" else values.get("externalId", "")
    return str(key).lower()


def user_name_key(user_name: str) -> str:
    """A userName as the target compares it: RFC 7643 4.1 defines it caseExact false."""
    return user_name.lower()


def group_match_key(display_name: str) -> str:
    return display_name.lower()


@dataclass(frozen=True, slots=True)
class DeletionLimit:
    """`options.max_deletions`: a fixed count, or a share of the linked users with a floor.
    The guard does the arithmetic; `spelled` is the setting as written, for its message."""

    count: int | None = None
    percent: float = 0.0
    floor: int = 0
    spelled: str = ""
    default: bool = False
