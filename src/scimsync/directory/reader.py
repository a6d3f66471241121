"""LdapDirectory: the users and groups in scope, with stable GUIDs, status and members."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from ldap.filter import escape_filter_chars

from scimsync.config import Flavour, SourceConfig
from scimsync.directory.connection import Connection
from scimsync.directory.errors import DirectoryError
from scimsync.directory.values import (
    RawEntry,
    get,
    guid_text,
    is_disabled,
    member_dn,
    normalize_dn,
    rdn_value,
    text_attributes,
)
from scimsync.model import SourceGroup, SourceUser

GROUP_CLASSES = ("groupOfNames", "groupOfUniqueNames", "groupOfMembers", "group")
MEMBER_ATTRIBUTES = ("member", "uniqueMember")
DEFAULT_USER_FILTER = {
    Flavour.ACTIVE_DIRECTORY: "(&(objectCategory=person)(objectClass=user))",
    Flavour.OPENLDAP: "(|(objectClass=person)(objectClass=posixAccount)(objectClass=account))",
    Flavour.GENERIC: "(|(objectClass=person)(objectClass=posixAccount)(objectClass=account))",
}


def _any_of_classes(classes: Iterable[str]) -> str:
    return "(|" + "".join(f"(objectClass={escape_filter_chars(c)})" for c in classes) + ")"


GROUP_FILTER = _any_of_classes(GROUP_CLASSES)
NOT_A_GROUP = f"(!{GROUP_FILTER})"


@dataclass(frozen=True, slots=True)
class Snapshot:
    users: dict[str, SourceUser]
    groups: dict[str, SourceGroup]


@dataclass(frozen=True, slots=True)
class _Group:
    dn: str
    guid: str
    name: str
    members: frozenset[str]  # normalised member DNs, users and groups alike


class LdapDirectory:
    """Reads what is in scope from one LDAP server.

    Users: members of `users.group_dn` (members of nested groups too when `users.nested`)
    and/or entries matching `users.filter`; when both are set an entry must satisfy both.

    Groups: entries matching `groups.filter` and/or the groups that are members of
    `groups.group_dn` (with `groups.nested`, also groups nested below those, at any depth;
    the container group itself is not synced). `groups.nested` also flattens membership:
    a group's member_guids then include the users of every group nested in it. Nesting
    cycles are followed once. Member DNs outside `base_dn`, or that no longer exist, are
    ignored; member_guids holds every member user found, in scope or not.

    Values that are not UTF-8 (other than the GUID) are left out of SourceUser.attributes.
    """

    def __init__(self, config: SourceConfig, attributes: Iterable[str]) -> None:
        self._config = config
        self._guid_attr = config.guid_attribute or "entryUUID"
        status = config.account_status
        wanted = [*attributes, self._guid_attr, *([status.attribute] if status else [])]
        self._user_attrs = tuple(dict.fromkeys(wanted))
        self._conn = Connection(config)
        self._index: dict[str, _Group] | None = None
        self._user_guids: dict[str, str] = {}

    def __enter__(self) -> Self:
        self._conn.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._conn.close()

    def __repr__(self) -> str:
        return f"LdapDirectory({self._config.url!r}, bind_dn={self._config.bind_dn!r})"

    # --- public -----------------------------------------------------------------------

    def read(self) -> Snapshot:
        """Everything in scope. Raises DirectoryError rather than return part of it."""
        self._forget()
        users = {user.guid: user for user in self._users()}
        groups = {group.guid: group for group in self._groups()}
        return Snapshot(users=users, groups=groups)

    def iter_users(self) -> Iterator[SourceUser]:
        self._forget()
        yield from self._users()

    def iter_groups(self) -> Iterator[SourceGroup]:
        self._forget()
        yield from self._groups()

    def server_info(self) -> str:
        dse = self._conn.root_dse(
            ["vendorName", "vendorVersion", "objectClass", "forestFunctionality"]
        )
        classes = {v.decode("utf-8", "replace").lower() for v in get(dse, "objectClass") or ()}
        vendor = b" ".join(get(dse, "vendorName") or ()).decode("utf-8", "replace")
        if get(dse, "forestFunctionality") is not None:
            kind = "Active Directory"
        elif "openldaprootdse" in classes:
            kind = "OpenLDAP"
        else:
            kind = vendor or "LDAP server"
        return f"{kind} at {self._config.url}"

    # --- users ------------------------------------------------------------------------

    def find_users(self, attribute: str, value: str) -> Iterator[SourceUser]:
        """The users in scope whose `attribute` equals `value` (for `sync --user NAME`).
        The value is escaped, so `*` or `)` in it match literally and cannot widen the search."""
        self._forget()
        clause = f"({escape_filter_chars(attribute)}={escape_filter_chars(value)})"
        yield from self._users(clause)

    def _users(self, extra: str = "") -> Iterator[SourceUser]:
        scope = self._config.users
        if scope.group_dn is not None:
            members = self._leaf_members(scope.group_dn, scope.nested, "users.group_dn")
            filterstr = _parenthesised(scope.filter or DEFAULT_USER_FILTER[self._config.directory])
            if extra:
                filterstr = f"(&{filterstr}{extra})"
            entries = self._conn.lookup(sorted(members), filterstr, self._user_attrs)
        else:
            assert scope.filter is not None  # UserScope requires one of the two
            filterstr = _parenthesised(scope.filter)
            if extra:
                filterstr = f"(&{filterstr}{extra})"
            entries = self._conn.paged(self._config.base_dn, filterstr, self._user_attrs)
        guid_key = self._guid_attr.lower()
        for dn, entry in entries:
            guid = self._guid(dn, entry)
            attributes = text_attributes(entry, skip=guid_key)
            attributes[guid_key] = (guid,)
            disabled = is_disabled(self._config.account_status, entry)
            self._user_guids[normalize_dn(dn)] = guid
            yield SourceUser(guid=guid, dn=dn, attributes=attributes, disabled=disabled)

    # --- groups -----------------------------------------------------------------------

    def _groups(self) -> Iterator[SourceGroup]:
        scope = self._config.groups
        if scope is None:
            return
        index = self._groups_index()
        selected: list[str]
        if scope.group_dn is not None:
            below = self._groups_below(scope.group_dn, scope.nested)
            if scope.filter is not None:
                below &= self._matching(scope.filter)
            selected = sorted(below)
        else:
            assert scope.filter is not None
            selected = sorted(self._matching(scope.filter) & index.keys())
        members = {dn: self._flatten(index[dn], scope.nested) for dn in selected}
        self._resolve_users(set().union(*members.values()) if members else set())
        for dn in selected:
            group = index[dn]
            guids = frozenset(self._user_guids[m] for m in members[dn] if m in self._user_guids)
            yield SourceGroup(guid=group.guid, dn=group.dn, name=group.name, member_guids=guids)

    def _groups_index(self) -> dict[str, _Group]:
        """Every group under base_dn, by normalised DN: nesting is resolved in memory."""
        if self._index is not None:
            return self._index
        scope = self._config.groups
        name_attr = scope.name_attribute if scope else "cn"
        member_attrs = self._member_attrs()
        filterstr = GROUP_FILTER
        if scope is not None and scope.filter is not None:
            filterstr = f"(|{GROUP_FILTER}{_parenthesised(scope.filter)})"
        attrs = [self._guid_attr, name_attr, *member_attrs]
        index: dict[str, _Group] = {}
        for dn, entry in self._conn.paged(self._config.base_dn, filterstr, attrs):
            names = get(entry, name_attr)
            name = names[0].decode("utf-8", "replace") if names else rdn_value(dn)
            members = frozenset(
                member_dn(value) for attr in member_attrs for value in get(entry, attr) or ()
            )
            index[normalize_dn(dn)] = _Group(dn, self._guid(dn, entry), name, members)
        self._index = index
        return index

    def _root_group(self, dn: str, key: str) -> _Group:
        index = self._groups_index()
        found = index.get(normalize_dn(dn))
        if found is not None:
            return found
        # Outside base_dn, or of a class we do not list: read it directly.
        member_attrs = self._member_attrs()
        real_dn, entry = self._conn.read(dn, [self._guid_attr, *member_attrs], key)
        members = frozenset(
            member_dn(value) for attr in member_attrs for value in get(entry, attr) or ()
        )
        return _Group(real_dn, "", rdn_value(real_dn), members)

    def _walk(self, root: _Group, nested: bool) -> tuple[set[str], set[str]]:
        """(group DNs, non-group member DNs) reachable from root; each group visited once."""
        index = self._groups_index()
        groups: set[str] = set()
        leaves: set[str] = set()
        todo = [root]
        seen = {normalize_dn(root.dn)}
        while todo:
            group = todo.pop()
            for member in group.members:
                if member not in index:
                    leaves.add(member)
                elif member not in seen:
                    seen.add(member)
                    groups.add(member)
                    if nested:
                        todo.append(index[member])
        return groups, leaves

    def _leaf_members(self, group_dn: str, nested: bool, key: str) -> set[str]:
        return self._walk(self._root_group(group_dn, key), nested)[1]

    def _groups_below(self, group_dn: str, nested: bool) -> set[str]:
        groups, _ = self._walk(self._root_group(group_dn, "groups.group_dn"), nested)
        groups.discard(normalize_dn(group_dn))  # a cycle back to the container
        return groups

    def _flatten(self, group: _Group, nested: bool) -> set[str]:
        return self._walk(group, nested)[1]

    def _matching(self, filterstr: str) -> set[str]:
        # "1.1" asks for no attributes (RFC 4511 4.5.1.8): only the DNs are needed.
        return {
            normalize_dn(dn)
            for dn, _ in self._conn.paged(self._config.base_dn, _parenthesised(filterstr), ["1.1"])
        }

    def _resolve_users(self, dns: set[str]) -> None:
        """Learn the GUIDs of member users not read as users in scope."""
        unknown = sorted(dns - self._user_guids.keys())
        for dn, entry in self._conn.lookup(unknown, NOT_A_GROUP, [self._guid_attr]):
            self._user_guids[normalize_dn(dn)] = self._guid(dn, entry)

    # --- helpers ----------------------------------------------------------------------

    def _guid(self, dn: str, entry: RawEntry) -> str:
        values = get(entry, self._guid_attr)
        if not values:
            raise DirectoryError(
                f"{dn} on {self._config.url} has no {self._guid_attr} "
                "(source.guid_attribute); cannot identify it"
            )
        try:
            return guid_text(self._guid_attr, values[0])
        except UnicodeDecodeError:
            raise DirectoryError(
                f"{dn} on {self._config.url}: {self._guid_attr} is binary; "
                "expected entryUUID text or a 16-byte objectGUID"
            ) from None

    def _member_attrs(self) -> tuple[str, ...]:
        configured = self._config.member_attribute or "member"
        return tuple(dict.fromkeys([configured, *MEMBER_ATTRIBUTES]))

    def _forget(self) -> None:
        self._index = None
        self._user_guids = {}


def _parenthesised(filterstr: str) -> str:
    text = filterstr.strip()
    return text if text.startswith("(") else f"({text})"
