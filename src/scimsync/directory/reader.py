"""LdapDirectory: the users and groups in scope, with stable GUIDs, status and members."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import Literal, Self

from ldap.filter import escape_filter_chars

from scimsync.config import Flavour, SourceConfig
from scimsync.directory.changes import (
    Census,
    Changed,
    ChangeSet,
    Delta,
    EntryUsnTracker,
    SyncreplTracker,
    TimestampTracker,
    Tracker,
    UsnTracker,
    WatermarkLost,
    empty_change_set,
    last_usn,
    supports_syncrepl,
    take_census,
)
from scimsync.directory.connection import Connection
from scimsync.directory.errors import DirectoryError
from scimsync.directory.values import (
    RawEntry,
    get,
    guid_assertion,
    guid_text,
    is_disabled,
    member_dn,
    normalize_dn,
    rdn_value,
    sid_rid,
    text_attributes,
    within,
)
from scimsync.model import SourceGroup, SourceUser

GROUP_CLASSES = ("groupOfNames", "groupOfUniqueNames", "groupOfMembers", "group")
MEMBER_ATTRIBUTES = ("member", "uniqueMember")
DEFAULT_USER_FILTER = {
    Flavour.ACTIVE_DIRECTORY: "(&(objectCategory=person)(objectClass=user))",
    Flavour.OPENLDAP: "(|(objectClass=person)(objectClass=posixAccount)(objectClass=account))",
}
DEFAULT_USER_FILTER[Flavour.DS389] = DEFAULT_USER_FILTER[Flavour.OPENLDAP]
DEFAULT_USER_FILTER[Flavour.GENERIC] = DEFAULT_USER_FILTER[Flavour.OPENLDAP]


def _any_of_classes(classes: Iterable[str]) -> str:
    return "(|" + "".join(f"(objectClass={escape_filter_chars(c)})" for c in classes) + ")"


GROUP_FILTER = _any_of_classes(GROUP_CLASSES)
GROUP_CLASS_NAMES = frozenset(c.lower() for c in GROUP_CLASSES)

Mechanism = Literal["syncrepl", "usn", "entryusn", "timestamp"]
CENSUS = "census="  # in a watermark, before the tracker's state: the last census's tally


@dataclass(frozen=True, slots=True)
class Snapshot:
    users: dict[str, SourceUser]
    groups: dict[str, SourceGroup]


@dataclass(frozen=True, slots=True)
class Identity:
    """One entry's identity under two attributes (None: it has no such attribute)."""

    dn: str
    old: str | None
    new: str | None


@dataclass(frozen=True, slots=True)
class _Group:
    dn: str
    guid: str
    name: str
    members: frozenset[str]  # normalised member DNs, users and groups alike
    rid: int | None = None  # AD: the RID of its objectSid, which primaryGroupID names


# Above this many unknown member DNs, one paged scan is cheaper than a lookup each.
LOOKUP_OR_SCAN = 2000
# GUIDs asked for in one search by revisit(): an OR of this many equality clauses.
REVISIT_CHUNK = 100


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

    def __init__(
        self,
        config: SourceConfig,
        attributes: Iterable[str],
        change_mechanism: Mechanism | None = None,
    ) -> None:
        """`change_mechanism` forces how changes() detects changes; by default syncrepl on
        OpenLDAP with syncprov, usn on Active Directory, timestamp otherwise."""
        self._config = config
        self._mechanism = change_mechanism
        self._tracker: Tracker | None = None
        self._guid_attr = config.guid_attribute or "entryUUID"
        status = config.account_status
        # AD keeps a user's primary group ("Domain Users") out of the group's `member`:
        # it is the user's primaryGroupID, the RID of the group's objectSid.
        # A change of primary group edits the groups' `member` too (AD keeps the user a
        # member of the old one, and drops it from the new one's `member`), so change
        # detection needs nothing more than reading primary members with the group.
        self._primary_groups = config.directory is Flavour.ACTIVE_DIRECTORY
        self._primary: dict[int, frozenset[str]] = {}  # RID -> normalised user DNs
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
        return f"LdapDirectory({self._conn.url!r}, bind_dn={self._config.bind_dn!r})"

    # --- public -----------------------------------------------------------------------

    def read(self) -> Snapshot:
        """Everything in scope. Raises DirectoryError rather than return part of it."""
        self._forget()
        users = {user.guid: user for user in self._users()}
        groups = {group.guid: group for group in self._groups()}
        return Snapshot(users=users, groups=groups)

    def stream(self) -> Iterator[SourceUser | SourceGroup]:
        """What read() returns, users first, one at a time: nothing held beyond the DN index."""
        self._forget()
        yield from self._users()
        yield from self._groups()

    def iter_users(self) -> Iterator[SourceUser]:
        self._forget()
        yield from self._users()

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
        return f"{kind} at {self._conn.url}"

    def require_base(self) -> None:
        """Raise NoSuchEntry when base_dn names no entry on the server."""
        self._conn.read(self._config.base_dn, ["1.1"], "source.base_dn")

    def identities(self, old_attribute: str) -> Iterator[Identity]:
        """Every entry under base_dn with its identity under `old_attribute` and under
        source.guid_attribute, in one GUID-only paged scan: what a re-key matches links by."""
        attrs = list(dict.fromkeys([old_attribute, self._guid_attr]))
        for dn, entry in self._conn.paged(self._config.base_dn, "(objectClass=*)", attrs):
            old = self._identity(dn, entry, old_attribute)
            yield Identity(dn, old, self._identity(dn, entry, self._guid_attr))

    # --- change detection -------------------------------------------------------------

    def change_detection(self) -> tuple[str, str | None]:
        """How incremental cycles will see changes, and a warning where that costs more."""
        tracker = self._change_tracker()
        if isinstance(tracker, UsnTracker):
            if tracker.reads_tombstones():
                return "uSNChanged; deletions as tombstones (CN=Deleted Objects)", None
            return "uSNChanged; deletions by a GUID scan of base_dn every cycle", (
                f"the bind account {self._config.bind_dn or '(anonymous)'} cannot read "
                "deleted objects (CN=Deleted Objects): incremental cycles find deletions by "
                "scanning the GUIDs of everything under base_dn every cycle instead of "
                "reading tombstones; give it the right to list deleted objects (see the "
                "README) to make quiet cycles one search"
            )
        if isinstance(tracker, SyncreplTracker):
            return "syncrepl (RFC 4533) with a cookie; deletions reported by the server", None
        if isinstance(tracker, EntryUsnTracker):
            return "entryusn (389-ds's USN plugin); deletions by a GUID scan of base_dn", None
        polling = "modifyTimestamp polling; deletions by a GUID scan of base_dn every cycle"
        dse = self._conn.root_dse(["vendorName", "lastusn"])
        vendor = b" ".join(get(dse, "vendorName") or ()).decode("utf-8", "replace")
        # 389-ds publishes lastusn;BACKEND once its USN plugin runs.
        if "389" in vendor and not any(name.lower().startswith("lastusn") for name in dse):
            return polling, (
                f"{vendor} at {self._conn.url} has no USN plugin (entryusn): a second edit of "
                "an entry within the second of a cycle waits for its next edit or the next "
                "full reconciliation; enable it (dsconf ... plugin usn enable) and restart"
            )
        return polling, None

    def position(self) -> str:
        """The current watermark. Take it BEFORE a full read(), so that changes made during
        the read are seen by the next changes()."""
        tracker = self._change_tracker()
        census = self._census(()) if tracker.polls else None
        return self._stamp(tracker, tracker.position(), census)

    def changes(
        self,
        watermark: str,
        known_users: Callable[[], Collection[str]],
        known_groups: Callable[[], Collection[str]] | None = None,
    ) -> ChangeSet:
        """What changed in scope since `watermark`. known_users() (the GUIDs the caller holds
        as in scope) is called only when the user scope may have changed shape: the scope
        group or a group below it changed, something was deleted, or under timestamp polling
        (every time: deletions are invisible to it). known_groups() likewise for groups;
        without it, groups leaving scope through the container group, or deleted under
        timestamp polling, wait for the next full reconciliation.
        Raises WatermarkLost when the caller must run a full reconciliation instead."""
        # A syncrepl watermark says the server had syncprov: its word saves a root DSE read,
        # and a server that lost it since refuses the refresh (WatermarkLost).
        tracker = self._change_tracker(claimed=watermark.partition(":")[0])
        state, tally = self._unstamp(tracker, watermark)
        # The census and the scope's recomputation both ask: read the store once a cycle.
        known_users = cache(known_users)
        known_groups = cache(known_groups) if known_groups else None
        census = None
        if tracker.polls:
            # Before the poll: an entry that goes after the census changes the next one.
            census = self._census({*known_users(), *(known_groups() if known_groups else ())})
        try:
            delta = tracker.delta(state)
        except WatermarkLost:
            self._tracker = None  # the full reconciliation asks the server afresh
            raise
        mark = self._stamp(tracker, delta.state, census)
        # A poll cannot see deletions; the census can: when nothing left base_dn since the
        # last one and every record we hold is still there, the poll's changes are all.
        blind = census is not None and (census.tally != tally or bool(census.missing))
        if not delta.changed and not delta.deletions and not blind:
            return empty_change_set(mark)  # nothing read, no index rebuilt
        self._forget()
        return self._change_set(delta, blind, known_users, known_groups, mark)

    def _census(self, wanted: Collection[str]) -> Census:
        return take_census(self._conn, self._config.base_dn, self._guid_attr, wanted)

    def _change_set(
        self,
        delta: Delta,
        blind: bool,
        known_users: Callable[[], Collection[str]],
        known_groups: Callable[[], Collection[str]] | None,
        mark: str,
    ) -> ChangeSet:
        config = self._config
        index = self._groups_index() if config.groups or config.users.group_dn else {}
        changed_groups = {dn for dn, c in delta.changed.items() if c.is_group or dn in index}
        base = normalize_dn(config.base_dn)
        others = {
            dn: c
            for dn, c in delta.changed.items()
            if dn not in changed_groups and within(dn, base)
        }
        # Deletions are explicit unless the tracker is blind to them, but a deleted group
        # below a scope group takes its members out of scope without touching them.
        reshaped = blind or delta.deletions
        users, gone_users = self._changed_users(
            others, changed_groups, reshaped, blind, known_users
        )
        gone_users |= delta.deleted_users
        groups: dict[str, SourceGroup] = {}
        gone_groups = set(delta.deleted_groups)
        if config.groups is not None:
            groups, gone = self._changed_groups(
                changed_groups, delta, reshaped, blind, users, known_groups
            )
            recent = delta.recent_groups - changed_groups
            if (gone or gone_groups) and recent:
                # A group went: the groups that held it were edited, perhaps invisibly to
                # the poll's dedupe (see Delta.recent_groups), and a parent's flattened
                # members change with it. (A deleted user's groups the engine derives from
                # the links that hold him.)
                groups, gone = self._changed_groups(
                    changed_groups | recent, delta, reshaped, blind, users, known_groups
                )
            gone_groups |= gone
        return ChangeSet(
            users=users,
            groups=groups,
            gone_users=frozenset(gone_users - users.keys()),
            gone_groups=frozenset(gone_groups - groups.keys()),
            watermark=mark,
        )

    def revisit(
        self, user_guids: Collection[str], group_guids: Collection[str], watermark: str
    ) -> ChangeSet:
        """These records as the directory holds them now: the ones in scope read in full,
        the others reported gone. For records an earlier cycle refused or failed to apply,
        which change detection would not report again until they are edited."""
        self._forget()
        users: dict[str, SourceUser] = {}
        if user_guids:
            users = self._users_by_guid(set(user_guids))
        groups: dict[str, SourceGroup] = {}
        scope = self._config.groups
        if group_guids and scope is not None:
            index = self._groups_index()
            wanted = [dn for dn in self._selected_groups() if index[dn].guid in group_guids]
            groups = {g.guid: g for g in self._source_groups(wanted, scope.nested)}
        return ChangeSet(
            users=users,
            groups=groups,
            gone_users=frozenset(set(user_guids) - users.keys()),
            gone_groups=frozenset(set(group_guids) - groups.keys()),
            watermark=watermark,
        )

    def _users_by_guid(self, guids: set[str]) -> dict[str, SourceUser]:
        scope = self._config.users
        leaves: set[str] | None = None
        if scope.group_dn is not None:
            leaves = self._leaf_members(scope.group_dn, scope.nested, "users.group_dn")
        found: dict[str, SourceUser] = {}
        for any_of in self._guid_filters(guids):
            filterstr = f"(&{self._user_filter()}{any_of})"
            for dn, entry in self._conn.paged(self._config.base_dn, filterstr, self._user_attrs):
                if leaves is None or normalize_dn(dn) in leaves:
                    user = self._source_user(dn, entry)
                    found[user.guid] = user
        if leaves is not None and guids - found.keys():
            # A scope group may hold users outside base_dn: never call them gone unread.
            base = normalize_dn(self._config.base_dn)
            outside = [dn for dn in leaves if not within(dn, base)]
            for user in self._read_users(outside):
                if user.guid in guids:
                    found[user.guid] = user
        return found

    def _changed_users(
        self,
        candidates: dict[str, Changed],
        changed_groups: set[str],
        reshaped: bool,
        blind: bool,
        known_users: Callable[[], Collection[str]],
    ) -> tuple[dict[str, SourceUser], set[str]]:
        scope = self._config.users
        leaves: set[str] | None = None
        if scope.group_dn is not None:
            root = self._root_group(scope.group_dn, "users.group_dn")
            below, leaves = self._walk(root, scope.nested)
            scope_groups = {normalize_dn(root.dn)} | (below if scope.nested else set())
            reshaped = reshaped or bool(scope_groups & changed_groups)
        else:
            reshaped = blind  # a filter scope changes only through changed entries
        wanted = [c.dn for dn, c in candidates.items() if leaves is None or dn in leaves]
        users = {user.guid: user for user in self._read_users(wanted)}
        gone = {c.guid for c in candidates.values()} - users.keys()
        if reshaped:
            current = self._scope_guids(leaves)
            known = set(known_users())
            gone |= known - set(current.values())
            entered = [
                dn for dn, guid in current.items() if guid not in known and guid not in users
            ]
            users.update((user.guid, user) for user in self._read_users(entered))
        return users, gone

    def _changed_groups(
        self,
        changed_groups: set[str],
        delta: Delta,
        reshaped: bool,
        blind: bool,
        users: dict[str, SourceUser],
        known_groups: Callable[[], Collection[str]] | None,
    ) -> tuple[dict[str, SourceGroup], set[str]]:
        scope = self._config.groups
        assert scope is not None
        index = self._groups_index()
        selected = self._selected_groups()
        in_scope = set(selected)
        if scope.group_dn is not None:
            container = self._root_group(scope.group_dn, "groups.group_dn")
            shaping = {normalize_dn(container.dn)}
            if scope.nested:
                shaping |= self._walk(container, True)[0]
            reshaped = reshaped or bool(shaping & changed_groups)
        else:
            reshaped = blind
        user_dns = {normalize_dn(user.dn) for user in users.values()}
        report: set[str] = set()
        self._prefetch_for(selected, scope.nested)
        for dn in selected:
            below, leaves = self._walk(index[dn], scope.nested)
            if dn in changed_groups or below & changed_groups or leaves & user_dns:
                report.add(dn)
        gone = {delta.changed[dn].guid for dn in changed_groups - in_scope if dn in delta.changed}
        if reshaped and known_groups is not None:
            known = set(known_groups())
            guids = {index[dn].guid: dn for dn in selected}
            gone |= known - guids.keys()
            report |= {dn for guid, dn in guids.items() if guid not in known}
        groups = {g.guid: g for g in self._source_groups(sorted(report), scope.nested)}
        return groups, gone

    def _read_users(self, dns: Iterable[str]) -> Iterator[SourceUser]:
        """The given entries that are users in scope, read in full (base-scope lookups)."""
        for dn, entry in self._conn.lookup(sorted(set(dns)), self._user_filter(), self._user_attrs):
            yield self._source_user(dn, entry)

    def _scope_guids(self, leaves: set[str] | None) -> dict[str, str]:
        """DN -> GUID of every user in scope, reading only the GUID attribute."""
        attrs = [self._guid_attr]
        if leaves is not None:
            entries = self._conn.lookup(sorted(leaves), self._user_filter(), attrs)
        else:
            entries = self._conn.paged(self._config.base_dn, self._user_filter(), attrs)
        found = {normalize_dn(dn): self._guid(dn, entry) for dn, entry in entries}
        self._user_guids.update(found)
        return found

    def _change_tracker(self, claimed: str | None = None) -> Tracker:
        """The mechanism of this directory; `claimed`: the one a watermark was taken by."""
        if self._tracker is not None:
            return self._tracker
        config = self._config
        mechanism = self._mechanism
        if mechanism is None:
            if config.directory is Flavour.ACTIVE_DIRECTORY:
                mechanism = "usn"
            elif (
                config.directory is Flavour.OPENLDAP
                and self._guid_attr.lower() == "entryuuid"  # syncrepl names entries by it
                and (claimed == SyncreplTracker.name or supports_syncrepl(self._conn))
            ):
                mechanism = "syncrepl"
            elif config.directory is Flavour.DS389 and (
                claimed == EntryUsnTracker.name or last_usn(self._conn) is not None
            ):
                mechanism = "entryusn"
            else:
                mechanism = "timestamp"
        base = config.base_dn
        tracker: Tracker
        if mechanism == "syncrepl":
            tracker = SyncreplTracker(self._conn, base, GROUP_CLASS_NAMES)
        elif mechanism == "usn":
            tracker = UsnTracker(self._conn, base, GROUP_CLASS_NAMES)
        elif mechanism == "entryusn":
            tracker = EntryUsnTracker(self._conn, base, self._guid_attr, GROUP_CLASS_NAMES)
        else:
            tracker = TimestampTracker(self._conn, base, self._guid_attr, GROUP_CLASS_NAMES)
        self._tracker = tracker
        return tracker

    def _scope_tag(self) -> str:
        """A short digest of what decides scope: a watermark taken under another scope
        would hide entries that newly came into it, so it counts as lost."""
        c = self._config
        shape = [c.directory, c.base_dn, c.guid_attribute, c.member_attribute]
        shape += [c.users.model_dump_json(), c.groups.model_dump_json() if c.groups else ""]
        return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:8]

    def _stamp(self, tracker: Tracker, state: str, census: Census | None = None) -> str:
        tally = f"{CENSUS}{census.tally}:" if census else ""
        return f"{tracker.name}:{self._scope_tag()}:{tally}{state}"

    def _unstamp(self, tracker: Tracker, watermark: str) -> tuple[str, str | None]:
        """The tracker's state and the census tally in a watermark (None: it has none)."""
        name, _, rest = watermark.partition(":")
        tag, _, state = rest.partition(":")
        tally = None
        if state.startswith(CENSUS):
            tally, _, state = state.removeprefix(CENSUS).partition(":")
        if name != tracker.name:
            raise WatermarkLost(
                f"watermark is for change detection by {name[:20]!r}, "
                f"this directory uses {tracker.name}"
            )
        if tag != self._scope_tag() or not state:
            raise WatermarkLost("watermark was taken for another source scope configuration")
        return state, tally

    # --- users ------------------------------------------------------------------------

    def present_guids(self, guids: Collection[str]) -> set[str]:
        """Those of `guids` that an entry under base_dn still has, in scope or not."""
        self._forget()
        found: set[str] = set()
        for any_of in self._guid_filters(guids):
            for dn, entry in self._conn.paged(self._config.base_dn, any_of, [self._guid_attr]):
                found.add(self._guid(dn, entry))
        return found

    def _guid_filters(self, guids: Collection[str]) -> Iterator[str]:
        """`(|(guid=...)...)` filters for these GUIDs, REVISIT_CHUNK a filter."""
        attr, ordered = self._guid_attr, sorted(guids)
        for start in range(0, len(ordered), REVISIT_CHUNK):
            chunk = ordered[start : start + REVISIT_CHUNK]
            yield "(|" + "".join(f"({attr}={guid_assertion(attr, g)})" for g in chunk) + ")"

    def locate_user(self, attribute: str, value: str) -> tuple[str, str] | None:
        """(DN, why it is out of scope) of an entry under base_dn whose `attribute` equals
        `value`, whatever the user scope; None when there is none. For `--user NAME`."""
        self._forget()
        clause = f"({escape_filter_chars(attribute)}={escape_filter_chars(value)})"
        for dn, _ in self._conn.paged(self._config.base_dn, clause, ["1.1"]):
            return dn, self._out_of_scope_reason(dn)
        return None

    def _out_of_scope_reason(self, dn: str) -> str:
        scope = self._config.users
        reasons: list[str] = []
        if scope.group_dn is not None:
            leaves = self._leaf_members(scope.group_dn, scope.nested, "users.group_dn")
            if normalize_dn(dn) not in leaves:
                how = "nor of a group nested in it" if scope.nested else "(users.nested is off)"
                reasons.append(f"not a member of source.users.group_dn {scope.group_dn} {how}")
        if not any(True for _ in self._conn.lookup([dn], self._user_filter(), ["1.1"])):
            what = "source.users.filter" if scope.filter else "the flavour's user classes"
            reasons.append(f"does not match {what} {self._user_filter()}")
        return "; ".join(reasons) or "it is in scope but did not map (see plan)"

    def find_users(self, attribute: str, value: str) -> Iterator[SourceUser]:
        """The users in scope whose `attribute` equals `value` (for `sync --user NAME`).
        The value is escaped, so `*` or `)` in it match literally and cannot widen the search."""
        self._forget()
        clause = f"({escape_filter_chars(attribute)}={escape_filter_chars(value)})"
        yield from self._users(clause)

    def _user_filter(self) -> str:
        """The scope's filter; with only a scope group, the flavour's user classes."""
        scope = self._config.users
        return _parenthesised(scope.filter or DEFAULT_USER_FILTER[self._config.directory])

    def _users(self, extra: str = "") -> Iterator[SourceUser]:
        scope = self._config.users
        filterstr = f"(&{self._user_filter()}{extra})" if extra else self._user_filter()
        if scope.group_dn is not None:
            members = self._leaf_members(scope.group_dn, scope.nested, "users.group_dn")
            entries = self._conn.lookup(sorted(members), filterstr, self._user_attrs)
        else:
            entries = self._conn.paged(self._config.base_dn, filterstr, self._user_attrs)
        for dn, entry in entries:
            yield self._source_user(dn, entry)

    def _source_user(self, dn: str, entry: RawEntry) -> SourceUser:
        guid_key = self._guid_attr.lower()
        guid = self._guid(dn, entry)
        attributes = text_attributes(entry, skip=guid_key)
        attributes[guid_key] = (guid,)
        disabled = is_disabled(self._config.account_status, entry)
        self._user_guids[normalize_dn(dn)] = guid
        return SourceUser(guid=guid, dn=dn, attributes=attributes, disabled=disabled)

    # --- groups -----------------------------------------------------------------------

    def _groups(self) -> Iterator[SourceGroup]:
        scope = self._config.groups
        if scope is None:
            return
        yield from self._source_groups(self._selected_groups(), scope.nested)

    def _selected_groups(self) -> list[str]:
        """Normalised DNs of the groups in scope."""
        scope = self._config.groups
        assert scope is not None
        index = self._groups_index()
        if scope.group_dn is not None:
            below = self._groups_below(scope.group_dn, scope.nested)
            if scope.filter is not None:
                below &= self._matching(scope.filter)
            return sorted(below & index.keys())
        assert scope.filter is not None
        return sorted(self._matching(scope.filter) & index.keys())

    def _source_groups(self, selected: Iterable[str], nested: bool) -> Iterator[SourceGroup]:
        index = self._groups_index()
        selected = list(selected)
        self._prefetch_for(selected, nested)
        members = {dn: self._flatten(index[dn], nested) for dn in selected}
        self._resolve_users(set().union(*members.values()) if members else set())
        for dn, flat in members.items():
            group = index[dn]
            guids = frozenset(self._user_guids[m] for m in flat if m in self._user_guids)
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
        if self._primary_groups:
            attrs.append("objectSid")
        index: dict[str, _Group] = {}
        # A user stands in several groups: its DN is parsed once, and held once.
        parsed: dict[bytes, str] = {}

        def member(value: bytes) -> str:
            found = parsed.get(value)
            if found is None:
                found = parsed[value] = member_dn(value)
            return found

        for dn, entry in self._conn.paged(self._config.base_dn, filterstr, attrs):
            names = get(entry, name_attr)
            name = names[0].decode("utf-8", "replace") if names else rdn_value(dn)
            members = frozenset(
                member(value) for attr in member_attrs for value in get(entry, attr) or ()
            )
            index[normalize_dn(dn)] = _Group(
                dn, self._guid(dn, entry), name, members, self._rid(entry)
            )
        self._index = index
        return index

    def _root_group(self, dn: str, key: str) -> _Group:
        index = self._groups_index()
        found = index.get(normalize_dn(dn))
        if found is not None:
            return found
        # Outside base_dn, or of a class we do not list: read it directly.
        member_attrs = self._member_attrs()
        real_dn, entry = self._conn.read(dn, [self._guid_attr, "objectSid", *member_attrs], key)
        members = frozenset(
            member_dn(value) for attr in member_attrs for value in get(entry, attr) or ()
        )
        return _Group(real_dn, "", rdn_value(real_dn), members, self._rid(entry))

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
        if self._primary_groups:
            walked = [root, *(index[dn] for dn in groups)] if nested else [root]
            self._prefetch_primary(walked)
            for group in walked:
                if group.rid is not None:
                    leaves |= self._primary[group.rid]
        return groups, leaves

    def _prefetch_for(self, selected: Iterable[str], nested: bool) -> None:
        """Primary members of the groups about to be walked, in a few searches."""
        if self._primary_groups:
            index = self._groups_index()
            self._prefetch_primary(index.values() if nested else (index[dn] for dn in selected))

    def _prefetch_primary(self, groups: Iterable[_Group]) -> None:
        """The users whose primary group each of these groups is: one search per hundred
        groups, and nothing for groups that are nobody's primary group but a cheap miss."""
        rids = sorted({g.rid for g in groups if g.rid is not None and g.rid not in self._primary})
        for start in range(0, len(rids), REVISIT_CHUNK):
            chunk = rids[start : start + REVISIT_CHUNK]
            found: dict[int, set[str]] = {rid: set() for rid in chunk}
            wanted = "".join(f"(primaryGroupID={rid})" for rid in chunk)
            filterstr = f"(&{self._user_filter()}(|{wanted}))"
            attrs = ["primaryGroupID", self._guid_attr]
            for dn, entry in self._conn.paged(self._config.base_dn, filterstr, attrs):
                values = get(entry, "primaryGroupID")
                rid = int(values[0]) if values and values[0].isdigit() else None
                if rid in found:
                    key = normalize_dn(dn)
                    found[rid].add(key)
                    self._user_guids[key] = self._guid(dn, entry)
            self._primary.update((rid, frozenset(dns)) for rid, dns in found.items())

    def _rid(self, entry: RawEntry) -> int | None:
        sid = get(entry, "objectSid") if self._primary_groups else None
        return sid_rid(sid[0]) if sid else None

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
        # Not a negated GROUP_FILTER: on OpenLDAP a class missing from the schema (groupOfMembers,
        # group) makes the negated filter Undefined, matching nothing (RFC 4511 4.5.1.7).
        # These DNs are leaves of the group index already, so any entry will do.
        if len(unknown) > LOOKUP_OR_SCAN:
            # An all-staff group of 100,000: one GUID-only paged scan beats as many lookups.
            wanted = set(unknown)
            scan = self._conn.paged(self._config.base_dn, "(objectClass=*)", [self._guid_attr])
            for dn, entry in scan:
                # Lower-casing is what normalising a plain DN does, and the normal form of
                # a DN equals that of its lower-cased self: the parser only for the rest.
                key = dn.lower()
                if key not in wanted:
                    key = normalize_dn(dn)
                if key in wanted:
                    self._user_guids[key] = self._guid(dn, entry)
            return
        for dn, entry in self._conn.lookup(unknown, "(objectClass=*)", [self._guid_attr]):
            self._user_guids[normalize_dn(dn)] = self._guid(dn, entry)

    # --- helpers ----------------------------------------------------------------------

    def _guid(self, dn: str, entry: RawEntry) -> str:
        values = get(entry, self._guid_attr)
        if not values:
            raise DirectoryError(
                f"{dn} on {self._conn.url} has no {self._guid_attr} "
                "(source.guid_attribute); cannot identify it"
            )
        try:
            return guid_text(self._guid_attr, values[0])
        except UnicodeDecodeError:
            raise DirectoryError(
                f"{dn} on {self._conn.url}: {self._guid_attr} is binary; "
                "expected entryUUID text or a 16-byte objectGUID"
            ) from None

    def _identity(self, dn: str, entry: RawEntry, attribute: str) -> str | None:
        """The entry's identity under `attribute` as _guid spells it; None if it has none."""
        values = get(entry, attribute)
        if not values:
            return None
        try:
            return guid_text(attribute, values[0])
        except UnicodeDecodeError:
            raise DirectoryError(
                f"{dn} on {self._config.url}: {attribute} is binary; "
                "expected text or a 16-byte objectGUID"
            ) from None

    def _member_attrs(self) -> tuple[str, ...]:
        configured = self._config.member_attribute or "member"
        return tuple(dict.fromkeys([configured, *MEMBER_ATTRIBUTES]))

    def _forget(self) -> None:
        self._index = None
        self._user_guids = {}
        self._primary = {}


def _parenthesised(filterstr: str) -> str:
    text = filterstr.strip()
    return text if text.startswith("(") else f"({text})"
