"""Change detection: what changed in the directory since a watermark, per mechanism.

Mechanisms (the watermark string starts with the name, so a switch is a lost watermark):
- `syncrepl`: OpenLDAP with syncprov, an RFC 4533 refreshOnly search with the cookie.
- `usn`: Active Directory, uSNChanged plus tombstones (show-deleted control), per DC.
- `timestamp`: any LDAP server, modifyTimestamp/createTimestamp polling; deletions are
  invisible to it, so the reader takes a census (one GUID-only scan of the base) instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from ldap.controls import LDAPControl

from scimsync.directory.connection import Connection
from scimsync.directory.errors import DirectoryError, SyncUnavailable
from scimsync.directory.values import RawEntry, get, guid_text, normalize_dn, sid_rid, within
from scimsync.model import SourceGroup, SourceUser

SYNC_CONTROL_OID = "1.3.6.1.4.1.4203.1.9.1.1"  # RFC 4533 Sync Request control
SHOW_DELETED_OID = "1.2.840.113556.1.4.417"  # MS-ADTS 3.1.1.3.4.1.14 LDAP_SERVER_SHOW_DELETED_OID
# GUID_DELETED_OBJECTS_CONTAINER_W (MS-ADTS 6.1.1.4, well-known objects)
DELETED_OBJECTS_WKGUID = "18E2EA80684F11D2B9AA00C04F79F805"
# Groups whose members may list deleted objects by default: Domain Admins (512), Enterprise
# Admins (519) and BUILTIN\Administrators (544), as the last sub-authority of their SIDs.
ADMIN_RIDS = frozenset({512, 519, 544})
# How far back a timestamp poll reaches before its watermark: timestamps have one-second
# resolution and a write may commit a moment after its timestamp was taken.
OVERLAP = timedelta(seconds=2)
# The dedupe list kept in a timestamp watermark; past this, re-reads are merely redundant.
MAX_SEEN = 1000
_STAMPS = ("modifyTimestamp", "createTimestamp")
# Finer than a second, where the server has one: OpenLDAP, AD, 389-ds with its USN plugin.
_VERSIONS = ("entryCSN", "uSNChanged", "entryusn")

_COOKIE = re.compile(r"rid=\d{3}(,sid=[0-9a-fA-F]{3})?,csn=[0-9.Z#a-fA-F;]+")
_GENERALIZED = re.compile(r"^(\d{14})")


class WatermarkLost(DirectoryError):  # noqa: N818 - name fixed by the interface
    """The watermark cannot be used (expired cookie, other DC, other mechanism or scope):
    the caller runs a full reconciliation."""


@dataclass(frozen=True, slots=True)
class ChangeSet:
    users: dict[str, SourceUser]
    groups: dict[str, SourceGroup]
    gone_users: frozenset[str]
    gone_groups: frozenset[str]
    watermark: str

    @property
    def empty(self) -> bool:
        return not (self.users or self.groups or self.gone_users or self.gone_groups)

    def merged(self, other: ChangeSet) -> ChangeSet:
        """Both sets of changes; where both name a record, a read of it beats a gone."""
        users = {**other.users, **self.users}
        groups = {**other.groups, **self.groups}
        return ChangeSet(
            users=users,
            groups=groups,
            gone_users=(self.gone_users | other.gone_users) - users.keys(),
            gone_groups=(self.gone_groups | other.gone_groups) - groups.keys(),
            watermark=self.watermark,
        )


@dataclass(frozen=True, slots=True)
class Changed:
    dn: str
    guid: str
    is_group: bool


@dataclass
class Delta:
    """Raw changes since a watermark, before scope is applied."""

    state: str  # the mechanism's new position
    changed: dict[str, Changed] = field(default_factory=dict)  # by normalised DN
    deleted_users: set[str] = field(default_factory=set)  # GUIDs; kind unknown goes in both
    deleted_groups: set[str] = field(default_factory=set)
    # Polling only: the normalised DNs of every group in the poll's window, already-seen ones
    # included. A deletion makes refint edit its groups without a new entryCSN, within a
    # second the dedupe may already hold; the reader reports these groups again once it
    # finds something gone.
    recent_groups: set[str] = field(default_factory=set)

    @property
    def deletions(self) -> bool:
        return bool(self.deleted_users or self.deleted_groups)


class Tracker(Protocol):
    name: str

    @property
    def polls(self) -> bool:
        """Deletions are invisible to it: the caller must scan the scope."""

    def position(self) -> str: ...

    def delta(self, state: str) -> Delta: ...


def _is_group(entry: RawEntry, group_classes: frozenset[str]) -> bool:
    classes = get(entry, "objectClass") or ()
    return any(value.decode("utf-8", "replace").lower() in group_classes for value in classes)


def _parse_time(value: str) -> datetime:
    found = _GENERALIZED.match(value)
    if found is None:
        raise ValueError(value)
    return datetime.strptime(found.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC)


def _format_time(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%SZ")


class _Watching:
    """What every tracker watches: one connection, one subtree, the group classes."""

    def __init__(self, conn: Connection, base: str, group_classes: frozenset[str]) -> None:
        self._conn = conn
        self._base = base
        self._group_classes = group_classes


class SyncreplTracker(_Watching):
    """OpenLDAP syncprov. A cookie the session log no longer covers makes the server fall
    back to a present phase, which we treat as a lost watermark rather than diff it."""

    name = "syncrepl"
    polls = False

    def position(self) -> str:
        # A refresh with no cookie and a filter matching nothing returns just the current
        # cookie (RFC 4533 3.3.1), without sending the whole tree.
        got = self._conn.sync_refresh(self._base, "(!(objectClass=*))", ["1.1"], None)
        if not got.cookie:
            raise DirectoryError(f"LDAP server {self._conn.url} returned no syncrepl cookie")
        return got.cookie

    def delta(self, state: str) -> Delta:
        if not _COOKIE.fullmatch(state):
            raise WatermarkLost(f"syncrepl cookie {state[:60]!r} is not an OpenLDAP cookie")
        try:
            got = self._conn.sync_refresh(self._base, "(objectClass=*)", ["objectClass"], state)
        except SyncUnavailable as exc:  # syncprov went since the cookie was taken
            raise WatermarkLost(str(exc)) from None
        if got.truncated:
            raise WatermarkLost(
                f"more entries changed under {self._base} than the server's size limit "
                "returns in one syncrepl refresh"
            )
        if not got.incremental:
            raise WatermarkLost("syncrepl cookie is older than the server's session log")
        delta = Delta(state=got.cookie or state)
        for dn, uuid, entry in got.entries:
            delta.changed[normalize_dn(dn)] = Changed(
                dn, uuid, _is_group(entry, self._group_classes)
            )
        delta.deleted_users = set(got.deleted)
        delta.deleted_groups = set(got.deleted)
        if got.deleted:
            self._add_silent_group_edits(delta, state)
        return delta

    def _add_silent_group_edits(self, delta: Delta, cookie: str) -> None:
        """memberof-refint drops a deleted entry from its groups without a new entryCSN, so
        syncprov never reports those groups; their modifyTimestamp does move, so ask for it."""
        csn = cookie.split("csn=", 1)[1].split("#", 1)[0]
        since = _format_time(_parse_time(csn) - OVERLAP)
        classes = "".join(f"(objectClass={c})" for c in sorted(self._group_classes))
        filterstr = f"(&(|{classes})(modifyTimestamp>={since}))"
        for dn, entry in self._conn.paged(self._base, filterstr, ["entryUUID"]):
            values = get(entry, "entryUUID")
            if values:
                ndn = normalize_dn(dn)
                delta.changed.setdefault(ndn, Changed(dn, guid_text("entryUUID", values[0]), True))


class _Polling(_Watching):
    """A tracker that searches for changed entries and names them by the GUID attribute."""

    polls = True

    def __init__(
        self, conn: Connection, base: str, guid_attr: str, group_classes: frozenset[str]
    ) -> None:
        super().__init__(conn, base, group_classes)
        self._guid_attr = guid_attr


class TimestampTracker(_Polling):
    """modifyTimestamp/createTimestamp polling with a short overlap; entries seen in the
    overlap are remembered in the watermark by GUID and version (entryCSN on OpenLDAP,
    uSNChanged on AD, else the timestamp) so they are not re-reported. Caveat, only where
    the server has neither: a second edit of an entry within the second of our poll waits
    for its next edit or the full reconciliation (timestamps have one-second resolution)."""

    name = "timestamp"

    def position(self) -> str:
        return self._poll(self._server_now(), set()).state

    def delta(self, state: str) -> Delta:
        try:
            stamp, _, seen_text = state.partition("|")
            since = _parse_time(stamp)
        except ValueError:
            raise WatermarkLost(f"timestamp watermark {state[:40]!r} is unreadable") from None
        seen = set(filter(None, seen_text.split(",")))
        return self._poll(since, seen)

    def _poll(self, since: datetime, seen: set[str]) -> Delta:
        """The entries changed since `since` (less the overlap) that `seen` does not hold."""
        start = _format_time(since - OVERLAP)
        filterstr = f"(|(modifyTimestamp>={start})(createTimestamp>={start}))"
        attrs = [self._guid_attr, "objectClass", *_STAMPS, *_VERSIONS]
        delta = Delta(state="")
        stamps: list[tuple[str, datetime]] = []
        newest = since
        for dn, entry in self._conn.paged(self._base, filterstr, attrs):
            guid_values = get(entry, self._guid_attr)
            if not guid_values:
                continue
            guid = guid_text(self._guid_attr, guid_values[0])
            moment = max(
                (
                    _parse_time(value.decode("ascii", "replace"))
                    for name in _STAMPS
                    for value in (get(entry, name) or ())
                ),
                default=since,
            )
            newest = max(newest, moment)
            version = next((v[0] for v in map(lambda n: get(entry, n), _VERSIONS) if v), None)
            # The version tells two edits within a second apart; the time tells an edit
            # that leaves the version alone (memberof-refint dropping a deleted member).
            stamp = _format_time(moment)
            if version:
                stamp += "/" + version.decode("ascii", "replace")
            key = f"{guid}@{stamp}"
            stamps.append((key, moment))
            found, ndn = Changed(dn, guid, _is_group(entry, self._group_classes)), normalize_dn(dn)
            if found.is_group:
                delta.recent_groups.add(ndn)
            if key not in seen:
                delta.changed[ndn] = found
        keep = [key for key, moment in stamps if moment >= newest - OVERLAP][:MAX_SEEN]
        delta.state = _format_time(newest) + "|" + ",".join(sorted(keep))
        return delta

    def _server_now(self) -> datetime:
        """The server's clock: AD's rootDSE currentTime, else OpenLDAP's contextCSN (the time
        of its last write), else the newest timestamp under the base."""
        dse = self._conn.root_dse(["currentTime", "namingContexts"])
        current = get(dse, "currentTime")
        if current:
            return _parse_time(current[0].decode("ascii", "replace"))
        base = normalize_dn(self._base)
        for context in get(dse, "namingContexts") or ():
            name = context.decode("utf-8", "replace")
            normal = normalize_dn(name)
            if normal and within(base, normal):
                _, entry = self._conn.read(name, ["contextCSN"], "namingContexts")
                csns = get(entry, "contextCSN")
                if csns:
                    return max(_parse_time(v.decode("ascii", "replace")) for v in csns)
        newest = datetime(1970, 1, 1, tzinfo=UTC)
        for _, entry in self._conn.paged(
            self._base, "(objectClass=*)", ["modifyTimestamp", "createTimestamp"]
        ):
            for name in ("modifyTimestamp", "createTimestamp"):
                for value in get(entry, name) or ():
                    newest = max(newest, _parse_time(value.decode("ascii", "replace")))
        return newest


class EntryUsnTracker(_Polling):
    """389 Directory Server with its USN plugin: every write gives the entry the backend's
    next `entryusn`, and the root DSE's `lastusn;BACKEND` is the highest so far. A poll by
    USN window is exact (no overlap, nothing re-read), and a quiet cycle reads only the
    root DSE. Tombstones are the Directory Manager's alone, so deletions are the census's.
    With more than one backend the root DSE does not say which is base_dn's: polling by
    timestamp instead (last_usn gives None)."""

    name = "entryusn"

    def position(self) -> str:
        return str(self._highest())

    def delta(self, state: str) -> Delta:
        if not state.isdigit():
            raise WatermarkLost(f"entryusn watermark {state[:40]!r} is unreadable")
        low, highest = int(state) + 1, self._highest()
        if highest < low - 1:  # the backend was restored or re-initialised
            raise WatermarkLost(f"the server's lastusn ({highest}) is below the watermark's")
        delta = Delta(state=str(highest))
        if low > highest:
            return delta
        window = f"(&(entryusn>={low})(entryusn<={highest}))"
        for dn, entry in self._conn.paged(self._base, window, [self._guid_attr, "objectClass"]):
            guid = get(entry, self._guid_attr)
            if guid:
                found = Changed(
                    dn, guid_text(self._guid_attr, guid[0]), _is_group(entry, self._group_classes)
                )
                delta.changed[normalize_dn(dn)] = found
        return delta

    def _highest(self) -> int:
        usn = last_usn(self._conn)
        if usn is None:
            raise WatermarkLost(f"LDAP server {self._conn.url} no longer publishes one lastusn")
        return usn


def last_usn(conn: Connection) -> int | None:
    """389-ds's root DSE `lastusn;BACKEND`, when the USN plugin runs and one backend holds
    entries; None otherwise. The retro changelog's own backend (`changelog`, which Content
    Sync needs) holds none of base_dn's."""
    dse = conn.root_dse(["lastusn"])
    values = [
        value
        for name, held in dse.items()
        if name.lower().startswith("lastusn;") and name.lower() != "lastusn;changelog"
        for value in held
    ]
    if len(values) != 1 or not values[0].isdigit():
        return None
    return int(values[0])


class UsnTracker(_Watching):
    """Active Directory: uSNChanged is per domain controller, so the watermark names the
    DC's invocationId; another DC (or a restored one) means a lost watermark (MS-ADTS
    3.1.1.1.9 "Change Tracking", "Polling for Changes Using uSNChanged")."""

    name = "usn"

    def __init__(self, conn: Connection, base: str, group_classes: frozenset[str]) -> None:
        super().__init__(conn, base, group_classes)
        self._tombstones_readable: bool | None = None

    @property
    def polls(self) -> bool:
        # Without the right to list CN=Deleted Objects, the tombstone search comes back
        # empty rather than failing: deletions are then found by scanning the scope.
        return not self.reads_tombstones()

    def reads_tombstones(self) -> bool:
        """Whether the bind account can see deleted objects: it sees one, or it is an
        administrator (a new domain may have no tombstone yet). By default only
        administrators may list CN=Deleted Objects (MS-ADTS 3.1.1.5.5.6)."""
        if self._tombstones_readable is None:
            domain = self._now()[2]
            show_deleted = LDAPControl(SHOW_DELETED_OID, True, None)
            container = f"<WKGUID={DELETED_OBJECTS_WKGUID},{domain}>"
            visible = self._conn.any_entry(container, "(isDeleted=TRUE)", [show_deleted])
            self._tombstones_readable = visible or self._is_administrator()
        return self._tombstones_readable

    def _is_administrator(self) -> bool:
        # The root DSE's tokenGroups are the bound account's groups (MS-ADTS 3.1.1.3.2.1).
        groups = get(self._conn.root_dse(["tokenGroups"]), "tokenGroups") or ()
        return any(sid_rid(sid) in ADMIN_RIDS for sid in groups)

    def position(self) -> str:
        invocation, usn, _ = self._now()
        return f"{invocation}:{usn}"

    def delta(self, state: str) -> Delta:
        invocation, _, usn_text = state.rpartition(":")
        if not invocation or not usn_text.isdigit():
            raise WatermarkLost(f"uSN watermark {state[:60]!r} is unreadable")
        current, highest, domain = self._now()
        if current != invocation:
            raise WatermarkLost(
                f"uSN watermark is from another domain controller (invocationId {invocation})"
            )
        low = int(usn_text) + 1
        delta = Delta(state=f"{current}:{highest}")
        if low > highest:
            return delta
        window = f"(uSNChanged>={low})(uSNChanged<={highest})"
        for dn, entry in self._conn.paged(
            self._base, f"(&(objectClass=*){window})", ["objectGUID", "objectClass"]
        ):
            guid = get(entry, "objectGUID")
            if guid:
                kind = _is_group(entry, self._group_classes)
                delta.changed[normalize_dn(dn)] = Changed(
                    dn, guid_text("objectGUID", guid[0]), kind
                )
        self._tombstones(delta, domain, window)
        return delta

    def _tombstones(self, delta: Delta, domain: str, window: str) -> None:
        # Deleted objects move to CN=Deleted Objects and are visible only with the
        # show-deleted control; lastKnownParent says where they lived.
        show_deleted = LDAPControl(SHOW_DELETED_OID, True, None)
        base = normalize_dn(self._base)
        attrs = ["objectGUID", "objectClass", "lastKnownParent"]
        for _, entry in self._conn.paged(
            domain, f"(&(isDeleted=TRUE){window})", attrs, controls=[show_deleted]
        ):
            guid = get(entry, "objectGUID")
            parent = get(entry, "lastKnownParent")
            if not guid:
                continue
            if parent:
                where = normalize_dn(parent[0].decode("utf-8", "replace"))
                if not within(where, base):
                    continue
            text = guid_text("objectGUID", guid[0])
            if _is_group(entry, self._group_classes):
                delta.deleted_groups.add(text)
            else:
                delta.deleted_users.add(text)

    def _now(self) -> tuple[str, int, str]:
        dse = self._conn.root_dse(["highestCommittedUSN", "dsServiceName", "defaultNamingContext"])
        usn, service, domain = (
            get(dse, name)
            for name in ("highestCommittedUSN", "dsServiceName", "defaultNamingContext")
        )
        if not usn or not service or not domain:
            raise DirectoryError(
                f"LDAP server {self._conn.url} does not publish highestCommittedUSN; "
                "is it Active Directory (source.directory)?"
            )
        _, ntds = self._conn.read(service[0].decode("utf-8"), ["invocationId"], "dsServiceName")
        invocation = get(ntds, "invocationId")
        if not invocation:
            raise DirectoryError(
                f"LDAP server {self._conn.url}: no invocationId on its NTDS object"
            )
        return (
            guid_text("objectGUID", invocation[0]),
            int(usn[0]),
            domain[0].decode("utf-8"),
        )


@dataclass(frozen=True, slots=True)
class Census:
    """Who is under a base now, for trackers that cannot see deletions."""

    tally: str  # how many entries, and an order-free digest of their GUIDs
    missing: frozenset[str]  # the GUIDs asked about that no entry has


def take_census(conn: Connection, base: str, guid_attr: str, wanted: Collection[str]) -> Census:
    """One GUID-only paged scan of `base`. Two equal tallies mean that no entry left the base
    (deleted or moved out) between them unless as many came in, which a poll sees."""
    missing = set(wanted)
    count = total = 0
    for _, entry in conn.paged(base, "(objectClass=*)", [guid_attr]):
        values = get(entry, guid_attr)
        if not values:
            continue
        guid = guid_text(guid_attr, values[0])
        missing.discard(guid)
        count += 1
        # A sum of per-GUID hashes does not depend on the order the server sends them in.
        total += int.from_bytes(hashlib.blake2b(guid.encode(), digest_size=8).digest(), "big")
    return Census(f"{count}-{total % 2**64:016x}", frozenset(missing))


def supports_syncrepl(conn: Connection) -> bool:
    """OpenLDAP with syncprov. 389-ds's Content Sync advertises the same control, but its
    cookie is opaque and bound to the search's base and filter: there we poll instead."""
    dse = conn.root_dse(["supportedControl", "objectClass"])
    controls = get(dse, "supportedControl") or ()
    classes = get(dse, "objectClass") or ()
    openldap = any(value.lower() == b"openldaprootdse" for value in classes)
    return openldap and any(
        value.decode("ascii", "replace") == SYNC_CONTROL_OID for value in controls
    )


def empty_change_set(watermark: str) -> ChangeSet:
    return ChangeSet({}, {}, frozenset(), frozenset(), watermark)


__all__ = [
    "Census",
    "ChangeSet",
    "Changed",
    "Delta",
    "EntryUsnTracker",
    "SyncreplTracker",
    "TimestampTracker",
    "Tracker",
    "UsnTracker",
    "WatermarkLost",
    "empty_change_set",
    "last_usn",
    "supports_syncrepl",
    "take_census",
]
