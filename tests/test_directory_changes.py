"""LdapDirectory.position()/changes() against a real slapd (syncrepl and timestamp polling)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import ldap
import pytest

from scimsync.config import SourceConfig
from scimsync.directory import ChangeSet, DirectoryError, LdapDirectory, WatermarkLost
from scimsync.directory.changes import SYNC_CONTROL_OID, supports_syncrepl, take_census
from scimsync.directory.connection import Connection
from scimsync.directory.reader import LOOKUP_OR_SCAN, Mechanism
from tests.fixtures.samba import GROUPS, NORMAL_NO_PASSWORD, PEOPLE, AdSeed, _group, _user
from tests.fixtures.slapd import Tree
from tests.harness import SearchCounter, eventually

ATTRS = ("uid", "mail", "cn")
MECHANISMS: list[Mechanism] = ["syncrepl", "timestamp"]


@dataclass
class Watcher:
    """Plays the engine: keeps the watermark and the in-scope user GUIDs between cycles."""

    directory: LdapDirectory
    known: set[str] = field(default_factory=set)
    known_groups: set[str] = field(default_factory=set)
    mark: str = ""
    asked: int = 0

    def start(self) -> None:
        self.mark = self.directory.position()
        snapshot = self.directory.read()
        self.known = set(snapshot.users)
        self.known_groups = set(snapshot.groups)

    def _known_users(self) -> Collection[str]:
        self.asked += 1
        return set(self.known)

    def next(self) -> ChangeSet:
        change = self.directory.changes(self.mark, self._known_users, lambda: self.known_groups)
        self.mark = change.watermark
        self.known = (self.known | change.users.keys()) - change.gone_users
        self.known_groups = (self.known_groups | change.groups.keys()) - change.gone_groups
        return change


@pytest.fixture(params=MECHANISMS)
def mechanism(request: pytest.FixtureRequest) -> Mechanism:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def org(ldap_tree: Tree) -> Tree:
    return populated(ldap_tree)


def populated(t: Tree) -> Tree:
    """alice, bob in `app`; carol in `sub` (nested in `app`); dave outside any group."""
    for uid in ("alice", "bob", "carol", "dave"):
        t.add_user(uid, departmentNumber="42")
    sub = t.add_group("sub", [t.user_dn("carol")])
    t.add_group("app", [t.user_dn("alice"), t.user_dn("bob"), sub])
    t.add_group("other", [t.user_dn("dave")])
    return t


def watched(tree: Tree, **overrides: Any) -> SourceConfig:
    """The source `watch` reads: users in department 42, groups nested."""
    settings: dict[str, Any] = {
        "users": {"filter": "(departmentNumber=42)"},
        "groups": {"filter": "(objectClass=groupOfNames)", "nested": True},
    }
    settings.update(overrides)
    return tree.config(**settings)


def watch(tree: Tree, mechanism: Mechanism | None, **overrides: Any) -> Iterator[Watcher]:
    """None: the mechanism the directory flavour chooses."""
    with LdapDirectory(watched(tree, **overrides), ATTRS, change_mechanism=mechanism) as directory:
        watcher = Watcher(directory)
        watcher.start()
        yield watcher


@pytest.fixture
def w(org: Tree, mechanism: Mechanism) -> Iterator[Watcher]:
    yield from watch(org, mechanism)


@pytest.fixture
def scoped(org: Tree, mechanism: Mechanism) -> Iterator[Watcher]:
    """Users scoped by membership of `app` (nested), as PingFederate's targeted group DN."""
    yield from watch(
        org,
        mechanism,
        users={"group_dn": org.group_dn("app"), "nested": True},
        groups=None,
    )


def group_names(change: ChangeSet) -> set[str]:
    return {group.name for group in change.groups.values()}


def uids(change: ChangeSet) -> set[str]:
    return {user.attributes["uid"][0] for user in change.users.values()}


def test_no_change_gives_an_empty_change_set(w: Watcher) -> None:
    change = w.next()
    assert change.empty
    assert w.next().empty


def test_attribute_edit_gives_that_user_only(w: Watcher, org: Tree) -> None:
    org.modify(org.user_dn("dave"), mail="dave@new.example")
    change = w.next()
    assert uids(change) == {"dave"}
    assert change.users[org.guid(org.user_dn("dave"))].attributes["mail"] == ("dave@new.example",)
    assert group_names(change) == {"other"}  # the in-scope group that has dave
    assert not change.gone_users and not change.gone_groups
    assert w.next().empty


def test_added_user_in_scope(w: Watcher, org: Tree) -> None:
    org.add_user("erin", departmentNumber="42")
    org.add_user("frank", departmentNumber="7")
    change = w.next()
    assert uids(change) == {"erin"}
    assert not change.groups


def test_deleted_user_is_gone(w: Watcher, org: Tree) -> None:
    dave = org.guid(org.user_dn("dave"))
    org.delete(org.user_dn("dave"))
    change = w.next()
    assert dave in change.gone_users
    assert not change.users


def test_a_deleted_user_s_groups_are_reported_though_refint_edits_them_silently(
    w: Watcher, org: Tree, mechanism: Mechanism
) -> None:
    """memberof-refint drops a deleted entry from its groups without a new entryCSN, so
    syncprov does not report those groups; they are changed all the same. (Under timestamp
    polling an edit in the same second as the last one, with the same entryCSN, cannot be
    told from it; the engine then derives the groups from the links that hold the user.)"""
    if mechanism != "syncrepl":
        pytest.skip("a syncrepl guarantee")
    alice = org.guid(org.user_dn("alice"))
    org.add_members(org.group_dn("other"), [org.user_dn("alice")])
    w.next()
    org.delete(org.user_dn("alice"))
    change = w.next()
    assert group_names(change) >= {"other", "app"}
    assert all(alice not in group.member_guids for group in change.groups.values())


def test_user_leaving_the_filter_is_gone(w: Watcher, org: Tree) -> None:
    org.modify(org.user_dn("bob"), departmentNumber="7")
    change = w.next()
    assert org.guid(org.user_dn("bob")) in change.gone_users
    assert not change.users


def test_membership_change_gives_that_group(w: Watcher, org: Tree) -> None:
    org.add_members(org.group_dn("other"), [org.user_dn("alice")])
    change = w.next()
    assert group_names(change) == {"other"}
    other = next(iter(change.groups.values()))
    assert other.member_guids == {org.guid(org.user_dn(u)) for u in ("alice", "dave")}


def test_nested_group_change_gives_the_parent(w: Watcher, org: Tree) -> None:
    org.add_members(org.group_dn("sub"), [org.user_dn("dave")])
    change = w.next()
    assert group_names(change) == {"sub", "app"}
    app = next(g for g in change.groups.values() if g.name == "app")
    assert org.guid(org.user_dn("dave")) in app.member_guids


def test_group_rename_keeps_its_guid(w: Watcher, org: Tree) -> None:
    guid = org.guid(org.group_dn("other"))
    org.rename(org.group_dn("other"), "cn=others")
    change = w.next()
    assert change.groups[guid].name == "others"
    assert guid not in change.gone_groups


def test_deleted_group_is_gone(w: Watcher, org: Tree) -> None:
    guid = org.guid(org.group_dn("other"))
    org.delete(org.group_dn("other"))
    change = w.next()
    assert guid in change.gone_groups
    assert guid not in change.groups


def test_user_added_to_and_removed_from_the_scope_group(scoped: Watcher, org: Tree) -> None:
    dave = org.guid(org.user_dn("dave"))
    org.add_members(org.group_dn("app"), [org.user_dn("dave")])
    change = scoped.next()
    assert uids(change) == {"dave"}
    org.remove_members(org.group_dn("app"), [org.user_dn("dave")])
    change = scoped.next()
    assert change.gone_users == {dave}
    assert not change.users


def test_nested_scope_group_change(scoped: Watcher, org: Tree) -> None:
    carol = org.guid(org.user_dn("carol"))
    org.modify(org.group_dn("sub"), member=org.base_dn)  # groupOfNames needs some member
    assert scoped.next().gone_users == {carol}


def test_user_deleted_inside_the_scope_group_is_gone(scoped: Watcher, org: Tree) -> None:
    """PingFederate's flaw: a user deleted inside a targeted group DN stays provisioned
    until the group changes. Here the test touches only the user entry."""
    bob = org.guid(org.user_dn("bob"))
    org.delete(org.user_dn("bob"))
    change = scoped.next()
    assert bob in change.gone_users
    assert bob not in change.users
    assert scoped.next().empty


def test_unrelated_edit_does_not_ask_for_known_users(scoped: Watcher, org: Tree) -> None:
    org.modify(org.user_dn("alice"), mail="alice@new.example")
    change = scoped.next()
    assert uids(change) == {"alice"}
    if scoped.directory.position().startswith("syncrepl:"):
        assert scoped.asked == 0  # the scope group did not change: no scope recompute


@pytest.mark.parametrize(
    "garbage",
    ["", "nonsense", "usn:00000000:abc:12", "syncrepl:", "timestamp:zz:notatime"],
)
def test_unusable_watermark_is_lost(w: Watcher, garbage: str) -> None:
    with pytest.raises(WatermarkLost):
        w.directory.changes(garbage, set)


def test_watermark_of_another_mechanism_is_lost(org: Tree, mechanism: Mechanism) -> None:
    other: Mechanism = "timestamp" if mechanism == "syncrepl" else "syncrepl"
    [mark] = [wt.mark for wt in watch(org, other)]
    for watcher in watch(org, mechanism):
        with pytest.raises(WatermarkLost, match="change detection by"):
            watcher.directory.changes(mark, set)


def test_watermark_of_another_scope_is_lost(org: Tree, mechanism: Mechanism) -> None:
    [mark] = [wt.mark for wt in watch(org, mechanism)]
    for watcher in watch(org, mechanism, users={"filter": "(departmentNumber=7)"}):
        with pytest.raises(WatermarkLost, match="another source scope"):
            watcher.directory.changes(mark, set)


def test_syncrepl_cookie_beyond_the_session_log_is_lost(org: Tree) -> None:
    for watcher in watch(org, "syncrepl"):
        name, tag, _ = watcher.mark.split(":", 2)
        ancient = f"{name}:{tag}:rid=000,csn=19700101000000.000000Z#000000#000#000000"
        with pytest.raises(WatermarkLost) as lost:
            watcher.directory.changes(ancient, set)
        assert str(lost.value) == "syncrepl cookie is older than the server's session log"


def test_more_syncrepl_changes_than_the_size_limit_lose_the_watermark(org: Tree) -> None:
    """A refresh cut at the size limit would miss changes: a full reconciliation instead."""
    for watcher in watch(org, "syncrepl"):
        org.add_users(org.server.size_limit + 10, prefix="m")
        with pytest.raises(WatermarkLost) as lost:
            watcher.next()
        assert str(lost.value) == (
            f"more entries changed under {org.base_dn} than the server's size limit "
            "returns in one syncrepl refresh"
        )


def test_active_directory_flavour_on_another_server_says_so(org: Tree) -> None:
    config = org.config(directory="active_directory")
    with LdapDirectory(config, ATTRS) as directory, pytest.raises(DirectoryError) as wrong:
        directory.position()
    assert str(wrong.value) == (
        f"LDAP server {org.server.url} does not publish highestCommittedUSN; "
        "is it Active Directory (source.directory)?"
    )


def test_an_unreadable_watermark_of_this_scope_says_what_it_holds(
    org: Tree, mechanism: Mechanism
) -> None:
    """The message quotes the stored state (clipped), so the log shows what was wrong."""
    for watcher in watch(org, mechanism):
        name, tag, _ = watcher.mark.split(":", 2)
        state = "x" * 39 + "y" + "z" * 20 + "clipped|seen"
        expected = (
            f"timestamp watermark {'x' * 39 + 'y'!r} is unreadable"
            if mechanism == "timestamp"
            else f"syncrepl cookie {state[:60]!r} is not an OpenLDAP cookie"
        )
        with pytest.raises(WatermarkLost) as lost:
            watcher.directory.changes(f"{name}:{tag}:{state}", set)
        assert str(lost.value) == expected


def test_timestamp_polling_starts_from_the_server_s_clock_not_the_newest_entry_in_scope(
    org: Tree,
) -> None:
    """The first watermark is the server's time (OpenLDAP: contextCSN, its last write), so
    a write in scope between the position and the full read is never older than it. The
    newest entry in scope would do only if nothing else were ever written."""
    admin = org.server.admin()

    def newest(base: str, scope: int) -> str:
        found = admin.search_s(base, scope, "(objectClass=*)", ["modifyTimestamp"])
        return str(max(entry["modifyTimestamp"][0].decode()[:14] for _, entry in found))

    in_scope = newest(org.base_dn, ldap.SCOPE_SUBTREE)
    elsewhere = Tree(org.server, f"other{uuid.uuid4().hex[:8]}")

    def written_later() -> str | None:
        elsewhere.modify(elsewhere.people, description=uuid.uuid4().hex)
        stamp = newest(elsewhere.people, ldap.SCOPE_BASE)
        return stamp if stamp > in_scope else None

    # Writes outside this subtree, until one lands in a later second than everything in it.
    last_write = eventually(written_later, "a write outside the scope in a later second")
    for watcher in watch(org, "timestamp"):
        state = watcher.mark.rsplit(":", 1)[1]  # after the census tally
        assert state.partition("|")[0] == last_write + "Z"
    admin.unbind_s()


def test_a_quiet_syncrepl_cycle_is_one_search(
    scoped: Watcher, mechanism: Mechanism, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh with the cookie, and nothing else; polling adds the census."""
    counter = SearchCounter(scoped.directory, monkeypatch)
    assert scoped.next().empty
    assert counter.count == (1 if mechanism == "syncrepl" else 2)


def test_default_mechanism_on_openldap_is_syncrepl(org: Tree) -> None:
    with LdapDirectory(org.config(), ATTRS) as directory:
        assert directory.position().startswith("syncrepl:")


def test_syncrepl_position_survives_a_new_connection(org: Tree) -> None:
    [mark] = [wt.mark for wt in watch(org, "syncrepl")]
    org.modify(org.user_dn("alice"), mail="alice@later.example")
    config = org.config(
        users={"filter": "(departmentNumber=42)"},
        groups={"filter": "(objectClass=groupOfNames)", "nested": True},
    )
    with LdapDirectory(config, ATTRS) as directory:
        change = directory.changes(mark, set)
    assert uids(change) == {"alice"}


# --- Active Directory (Samba): uSNChanged and tombstones ----------------------------------

AD_ATTRS = ("sAMAccountName", "mail")


@pytest.fixture
def ad(samba_ad: AdSeed) -> Iterator[tuple[Watcher, AdSeed]]:
    config = samba_ad.config(
        users={"filter": "(&(objectCategory=person)(objectClass=user))"},
        groups={"filter": "(objectClass=group)", "nested": True},
    )
    with LdapDirectory(config, AD_ATTRS) as directory:
        watcher = Watcher(directory)
        watcher.start()
        yield watcher, samba_ad


def _ad_modify(seed: AdSeed, dn: str, **attrs: str) -> None:
    conn = seed.dc.admin()
    try:
        conn.modify_s(dn, [(ldap.MOD_REPLACE, k, [v.encode()]) for k, v in attrs.items()])
    finally:
        conn.unbind_s()


def _ad_guid(seed: AdSeed, dn: str) -> str:
    conn = seed.dc.admin()
    try:
        [(_, entry)] = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["objectGUID"])
    finally:
        conn.unbind_s()
    return str(uuid.UUID(bytes_le=entry["objectGUID"][0]))


@pytest.mark.ad
def test_ad_usn_no_change_then_edit_then_delete(ad: tuple[Watcher, AdSeed]) -> None:
    watcher, seed = ad
    assert watcher.mark.startswith("usn:")
    assert watcher.next().empty
    _ad_modify(seed, seed.users["dave"], mail="dave@changed.test")
    change = watcher.next()
    assert {u.attributes["samaccountname"][0] for u in change.users.values()} == {"dave"}
    assert {g.name for g in change.groups.values()} == {"staff"}  # dave's group
    conn = seed.dc.admin()
    try:
        dn = f"CN=Temp User,{PEOPLE}"
        conn.add_s(dn, list(_user("temp", "Temp", "User", NORMAL_NO_PASSWORD).items()))
        change = watcher.next()
        guid = _ad_guid(seed, dn)
        assert set(change.users) == {guid}
        conn.delete_s(dn)
    finally:
        conn.unbind_s()
    change = watcher.next()
    assert guid in change.gone_users  # from its tombstone, which keeps objectGUID
    assert guid not in change.gone_groups
    assert watcher.next().empty


@pytest.mark.ad
def test_ad_membership_change_gives_group_and_nested_parent(ad: tuple[Watcher, AdSeed]) -> None:
    watcher, seed = ad
    conn = seed.dc.admin()
    eng = seed.groups["engineering"]
    try:
        conn.modify_s(eng, [(ldap.MOD_ADD, "member", [seed.users["dave"].encode()])])
        change = watcher.next()
        assert {"engineering", "staff"} <= {g.name for g in change.groups.values()}
        conn.modify_s(eng, [(ldap.MOD_DELETE, "member", [seed.users["dave"].encode()])])
    finally:
        conn.unbind_s()
    assert "engineering" in {g.name for g in watcher.next().groups.values()}


@pytest.mark.ad
def test_ad_watermark_from_another_dc_is_lost(ad: tuple[Watcher, AdSeed]) -> None:
    watcher, _ = ad
    name, tag, _, usn = watcher.mark.split(":")
    other = f"{name}:{tag}:{uuid.uuid4()}:{usn}"
    with pytest.raises(WatermarkLost, match="another domain controller"):
        watcher.directory.changes(other, set)


@pytest.mark.ad
def test_ad_tombstones_name_what_was_deleted_in_the_base_and_nothing_outside(
    ad: tuple[Watcher, AdSeed],
) -> None:
    """A deleted group is reported as a group, by its GUID; entries deleted outside the
    configured base (lastKnownParent elsewhere) are not reported, and do not stop the scan
    from reaching the ones inside."""
    watcher, seed = ad
    tag = uuid.uuid4().hex[:6]
    outside = f"OU=elsewhere-{tag},{seed.dc.base_dn}"
    outsiders = [f"CN=Out {tag} {i},{outside}" for i in range(3)]
    inside = f"CN=In {tag},{PEOPLE}"
    group = f"CN=gone-{tag},{GROUPS}"
    conn = seed.dc.admin()
    try:
        conn.add_s(outside, [("objectClass", [b"organizationalUnit"])])
        for i, dn in enumerate(outsiders):
            conn.add_s(dn, list(_user(f"o{tag}{i}", "Out", f"{i}", NORMAL_NO_PASSWORD).items()))
        conn.add_s(inside, list(_user(f"i{tag}", "In", tag, NORMAL_NO_PASSWORD).items()))
        conn.add_s(group, list(_group(f"gone-{tag}", [inside]).items()))
        watcher.next()
        guids = {dn: _ad_guid(seed, dn) for dn in (*outsiders, inside, group)}
        for dn in (*outsiders, group, inside):
            conn.delete_s(dn)
        conn.delete_s(outside)
    finally:
        conn.unbind_s()
    change = watcher.next()
    assert change.gone_groups == {guids[group]}
    assert change.gone_users == {guids[inside]}


@pytest.mark.ad
def test_ad_an_unreadable_watermark_is_lost_naming_it(ad: tuple[Watcher, AdSeed]) -> None:
    watcher, _ = ad
    name, tag, _, _ = watcher.mark.split(":")
    inner = "dc:" + "x" * 80  # an invocationId, then no uSN
    with pytest.raises(WatermarkLost) as lost:
        watcher.directory.changes(f"{name}:{tag}:{inner}", set)
    assert str(lost.value) == f"uSN watermark {inner[:60]!r} is unreadable"


def test_a_change_to_a_big_group_resolves_all_its_members(w: Watcher, org: Tree) -> None:
    """Past LOOKUP_OR_SCAN unknown members the reader scans once instead of looking up each."""
    many = org.add_users(LOOKUP_OR_SCAN + 100, prefix="m")
    w.start()  # the adds themselves are more than one syncrepl refresh may return
    org.add_members(org.group_dn("other"), many)
    change = w.next()
    other = next(g for g in change.groups.values() if g.name == "other")
    assert len(other.member_guids) == LOOKUP_OR_SCAN + 101
    assert org.guid(many[-1]) in other.member_guids


# --- the census: what polling trackers know of deletions ----------------------------------


def test_a_census_tally_tells_one_entry_replaced_by_another_apart(org: Tree) -> None:
    """Equal counts are not enough: a deletion hidden by an add changes the digest."""
    config = org.config()
    with LdapDirectory(config, ATTRS) as directory:
        conn, guid = directory._conn, config.guid_attribute or ""
        before = take_census(conn, org.base_dn, guid, ())
        assert take_census(conn, org.base_dn, guid, ()).tally == before.tally
        org.delete(org.user_dn("dave"))
        org.add_user("erin")
        after = take_census(conn, org.base_dn, guid, [org.guid(org.user_dn("erin")), "nobody"])
    assert after.tally.split("-")[0] == before.tally.split("-")[0]  # as many entries
    assert after.tally != before.tally
    assert after.missing == {"nobody"}


def _with_tally(mark: str, tally: str) -> str:
    name, tag, census, state = mark.split(":", 3)
    assert census.startswith("census=")
    return f"{name}:{tag}:census={tally}:{state}"


def test_a_poll_whose_census_changed_reconciles_the_scope(org: Tree) -> None:
    """Something left base_dn unseen by the poll: the scope is computed again, so a record
    held as in scope that no longer is comes out gone, though nothing about it changed."""
    for watcher in watch(org, "timestamp"):
        outsider = org.guid(org.user_dn("dave"))
        org.modify(org.user_dn("dave"), departmentNumber="7")
        watcher.next()  # dave leaves scope; the engine forgets him
        held = {*watcher.known, outsider}  # as if the engine still held him
        same = watcher.directory.changes(watcher.mark, held.copy)
        assert outsider not in same.gone_users  # the census matched: only the poll counts
        moved = watcher.directory.changes(_with_tally(watcher.mark, "0-0"), held.copy)
        assert outsider in moved.gone_users


def test_a_held_record_that_no_entry_has_any_more_is_gone_though_the_census_matched(
    org: Tree,
) -> None:
    """A scope group's member outside base_dn is not in the census: a GUID it lacks makes
    the cycle reconcile the scope."""
    for watcher in watch(org, "timestamp"):
        watcher.next()
        held = {*watcher.known, "a-member-outside-base-dn"}
        change = watcher.directory.changes(watcher.mark, held.copy)
        assert change.gone_users == {"a-member-outside-base-dn"}


@pytest.mark.ad
def test_ad_a_user_edited_out_of_the_filter_is_gone_by_its_guid(samba_ad: AdSeed) -> None:
    config = samba_ad.config(
        users={"filter": "(&(objectCategory=person)(objectClass=user)(!(description=left)))"}
    )
    dave = samba_ad.users["dave"]
    with LdapDirectory(config, AD_ATTRS) as directory:
        watcher = Watcher(directory)
        watcher.start()
        try:
            _ad_modify(samba_ad, dave, description="left")
            change = watcher.next()
        finally:
            conn = samba_ad.dc.admin()
            try:
                conn.modify_s(dave, [(ldap.MOD_DELETE, "description", None)])
            finally:
                conn.unbind_s()
    assert change.gone_users == {_ad_guid(samba_ad, dave)}
    assert not change.users


@pytest.mark.ad
def test_ad_timestamp_polling_starts_from_the_dc_s_current_time(samba_ad: AdSeed) -> None:
    """AD has no contextCSN: its root DSE's currentTime is the server's clock."""

    def current_time() -> str:
        conn = samba_ad.dc.admin()
        try:
            [(_, dse)] = conn.search_s("", ldap.SCOPE_BASE, "(objectClass=*)", ["currentTime"])
        finally:
            conn.unbind_s()
        return str(dse["currentTime"][0].decode()[:14])

    config = samba_ad.config(users={"filter": "(objectClass=user)"})
    before = current_time()
    with LdapDirectory(config, AD_ATTRS, change_mechanism="timestamp") as directory:
        mark = directory.position()
    after = current_time()
    stamp = mark.rsplit(":", 1)[1].partition("|")[0]
    assert before + "Z" <= stamp <= after + "Z"


def test_a_quiet_syncrepl_cycle_of_a_new_process_is_one_search(
    org: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cycle of `scimsync sync` is a new directory connection: the watermark says the
    server has syncprov, so no root DSE read is needed to know it (README, flavours)."""
    [mark] = [watcher.mark for watcher in watch(org, None)]
    assert mark.startswith("syncrepl:")
    with LdapDirectory(watched(org), ATTRS) as fresh:
        counter = SearchCounter(fresh, monkeypatch)
        assert fresh.changes(mark, set).empty
    assert counter.count == 1


class RootDse:
    """A root DSE as a server answers it: supports_syncrepl's one input."""

    def __init__(self, entry: dict[str, list[bytes]]) -> None:
        self.entry = entry

    def root_dse(self, attrs: Any) -> dict[str, list[bytes]]:
        return self.entry


OPENLDAP_DSE = [b"top", b"OpenLDAProotDSE"]
SYNC_OID = SYNC_CONTROL_OID.encode()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"objectClass": OPENLDAP_DSE, "supportedControl": [b"1.2.3", SYNC_OID]}, True),
        # slapd without syncprov: other controls, one of them not ASCII
        ({"objectClass": OPENLDAP_DSE, "supportedControl": [b"1.2.3", b"\xff"]}, False),
        ({"objectClass": [b"top"], "supportedControl": [SYNC_OID]}, False),  # 389-ds
    ],
)
def test_syncrepl_needs_openldap_and_its_control(
    entry: dict[str, list[bytes]], expected: bool
) -> None:
    assert supports_syncrepl(cast(Connection, RootDse(entry))) is expected
