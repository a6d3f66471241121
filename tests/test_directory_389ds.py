"""389 Directory Server as the directory: the `389ds` flavour, change detection by polling
with entryusn, and what a quiet cycle costs. The change-detection tests of slapd that hold
for any server run here again, against 389-ds (imported below)."""

from __future__ import annotations

from collections.abc import Iterator

import ldap
import pytest

from scimsync.config import SourceConfig
from scimsync.directory import LdapDirectory
from scimsync.directory.changes import WatermarkLost
from scimsync.directory.errors import DirectoryError
from scimsync.directory.reader import Mechanism
from scimsync.sandbox.ds389 import READER_DN, Ds389
from tests.fixtures.slapd import Tree
from tests.harness import SearchCounter, eventually
from tests.test_directory_changes import (  # noqa: F401 - collected again, on 389-ds
    ATTRS,
    Watcher,
    populated,
    scoped,
    test_a_change_to_a_big_group_resolves_all_its_members,
    test_added_user_in_scope,
    test_attribute_edit_gives_that_user_only,
    test_deleted_group_is_gone,
    test_deleted_user_is_gone,
    test_group_rename_keeps_its_guid,
    test_membership_change_gives_that_group,
    test_nested_group_change_gives_the_parent,
    test_nested_scope_group_change,
    test_no_change_gives_an_empty_change_set,
    test_unusable_watermark_is_lost,
    test_user_added_to_and_removed_from_the_scope_group,
    test_user_deleted_inside_the_scope_group_is_gone,
    test_user_leaving_the_filter_is_gone,
    test_watermark_of_another_scope_is_lost,
    uids,
    w,
    watch,
    watched,
)


@pytest.fixture
def mechanism() -> Mechanism:
    return "entryusn"  # what the 389ds flavour uses with the USN plugin


@pytest.fixture
def org(ds389_tree: Tree) -> Tree:
    return populated(ds389_tree)


def operational(tree: Tree, dn: str, *attrs: str) -> dict[str, str]:
    conn = tree.server.admin()
    try:
        [(_, entry)] = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", list(attrs))
    finally:
        conn.unbind_s()
    return {name.lower(): values[0].decode() for name, values in entry.items()}


# --- the flavour -------------------------------------------------------------------------


def test_the_389ds_flavour_reads_nsuniqueid_and_nsaccountlock(ds389_tree: Tree) -> None:
    tree = ds389_tree
    settings = {"url": tree.server.url, "base_dn": tree.base_dn, "directory": "389ds"}
    config = SourceConfig.model_validate(settings | {"users": {"filter": "(uid=*)"}})
    assert config.guid_attribute == "nsUniqueId"
    assert config.account_status is not None
    assert config.account_status.attribute == "nsAccountLock"
    tree.add_user("alice")
    tree.add_user("bob", nsAccountLock="true")  # what `dsidm account lock` writes
    with LdapDirectory(tree.config(), ATTRS) as directory:
        users = {user.attributes["uid"][0]: user for user in directory.read().users.values()}
    assert (
        users["alice"].guid == operational(tree, tree.user_dn("alice"), "nsUniqueId")["nsuniqueid"]
    )
    assert not users["alice"].disabled
    assert users["bob"].disabled


# --- change detection --------------------------------------------------------------------


def test_a_second_edit_within_the_second_of_a_cycle_is_seen_by_its_entryusn(
    w: Watcher,  # noqa: F811 - the fixture imported above
    org: Tree,
) -> None:
    """With only modifyTimestamp, an edit in the same second as the one the last cycle saw
    looks already seen (the dedupe keys on the time); entryusn tells the two apart."""
    dave = org.user_dn("dave")

    def two_edits_in_one_second() -> str | None:
        org.modify(dave, cn="first")
        before = operational(org, dave, "modifyTimestamp")["modifytimestamp"]
        assert uids(w.next()) == {"dave"}
        org.modify(dave, cn="second")
        after = operational(org, dave, "modifyTimestamp")["modifytimestamp"]
        return after if after == before else None

    eventually(two_edits_in_one_second, "two edits of dave and a cycle within one second")
    change = w.next()
    assert [user.attributes["cn"] for user in change.users.values()] == [("second",)]


def test_openldap_flavour_on_389ds_with_content_sync_polls_instead_of_losing_its_cookie(
    org: Tree,
) -> None:
    """389-ds's Content Sync advertises the syncrepl control, but its cookie is not
    OpenLDAP's: scimsync polls there, so incremental cycles stay incremental."""
    for watcher in watch(org, None, directory="openldap"):
        assert watcher.mark.startswith("timestamp:")
        org.modify(org.user_dn("alice"), mail="alice@new.example")
        assert uids(watcher.next()) == {"alice"}
        assert watcher.next().empty


def test_check_warns_of_389ds_without_its_usn_plugin(ds389: Ds389, ds389_plain: Ds389) -> None:
    """With the USN plugin changes are polled by entryusn; without it by timestamp, where a
    second edit within a second waits: `check` says how to fix it."""
    for server, warned in ((ds389, False), (ds389_plain, True)):
        tree = Tree(server, f"w{warned}")
        with LdapDirectory(tree.config(), ATTRS) as directory:
            how, warning = directory.change_detection()
            mark = directory.position()
        assert how.startswith("modifyTimestamp polling" if warned else "entryusn (389-ds")
        assert mark.startswith("timestamp:" if warned else "entryusn:")
        if warned:
            assert warning is not None
            assert "no USN plugin" in warning and "plugin usn enable" in warning
        else:
            assert warning is None


# --- what a quiet cycle costs ------------------------------------------------------------


@pytest.fixture
def big_scope(org: Tree) -> Iterator[Watcher]:
    """Users scoped by a group of 40 members: a quiet cycle once looked each one up."""
    members = org.add_users(40, prefix="s")
    staff = org.add_group("staff", members)
    yield from watch(org, "timestamp", users={"group_dn": staff}, groups=None)


def test_a_quiet_polled_cycle_costs_two_searches_however_big_the_scope_group(
    big_scope: Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll, and one paged GUID scan that finds nothing gone (the census)."""
    counter = SearchCounter(big_scope.directory, monkeypatch)
    assert big_scope.next().empty
    assert counter.count == 2


def test_an_edit_under_polling_costs_searches_for_the_edit_not_for_the_scope(
    big_scope: Watcher, org: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing went, so the scope is as the last cycle left it: only the edit is read."""
    org.modify(org.user_dn("s000007"), mail="s7@new.example")
    counter = SearchCounter(big_scope.directory, monkeypatch)
    assert uids(big_scope.next()) == {"s000007"}
    assert counter.count < 10


def test_a_member_deleted_from_the_scope_group_is_still_found_gone(
    big_scope: Watcher, org: Tree
) -> None:
    gone = org.guid(org.user_dn("s000003"))
    org.delete(org.user_dn("s000003"))
    change = big_scope.next()
    assert change.gone_users == {gone}
    assert big_scope.next().empty


def test_a_syncrepl_watermark_on_a_server_without_sync_is_lost_then_polling_takes_over(
    ds389_plain: Ds389,
) -> None:
    """The watermark's word that the server had syncprov is checked by the refresh itself:
    a server without it (here 389-ds as installed, no Content Sync) refuses the control,
    the watermark is lost, and the full reconciliation's position is by polling."""
    org = populated(Tree(ds389_plain, "nosync"))
    config = org.config(directory="openldap", guid_attribute="entryUUID")
    cookie = "rid=000,csn=20260101000000.000000Z#000000#000#000000"
    with LdapDirectory(config, ATTRS) as first:
        tag = first.position().split(":")[1]  # this scope's, so only the cookie is at fault
    with LdapDirectory(config, ATTRS) as directory:  # a new cycle's, as the engine opens
        with pytest.raises(WatermarkLost, match="does not offer syncrepl"):
            directory.changes(f"syncrepl:{tag}:{cookie}", set)
        assert directory.position().startswith("timestamp:")


def test_a_look_through_limit_below_the_directory_is_one_line_naming_the_fix(
    ds389_tree: Tree,
) -> None:
    """389-ds examines at most 5,000 entries a search, paged or not, unless the bind
    account says otherwise: the error says which setting (found at 10,000 users)."""
    ds389_tree.add_users(120)
    admin = ds389_tree.server.admin()
    limit = [(ldap.MOD_REPLACE, "nsPagedLookThroughLimit", [b"100"])]
    admin.modify_s(READER_DN, limit)
    try:
        with (
            pytest.raises(DirectoryError) as caught,
            LdapDirectory(ds389_tree.config(), ATTRS) as directory,
        ):
            directory.read()
    finally:
        admin.modify_s(READER_DN, [(ldap.MOD_REPLACE, "nsPagedLookThroughLimit", [b"-1"])])
        admin.unbind_s()
    message = str(caught.value)
    assert "Administrative limit exceeded" in message and "\n" not in message
    assert message.endswith(
        f"the server lets {READER_DN} examine fewer entries than this search needs "
        "(389-ds: nsPagedLookThroughLimit: -1 on that entry)"
    )


def test_a_quiet_entryusn_cycle_reads_the_root_dse_and_the_census_only(
    org: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many entries were written in the last second (a bulk load): the USN window
    is empty, so nothing is polled again, unlike timestamps' overlap."""
    org.add_users(30)
    [mark] = [watcher.mark for watcher in watch(org, None)]
    assert mark.startswith("entryusn:")
    with LdapDirectory(watched(org), ATTRS) as fresh:
        counter = SearchCounter(fresh, monkeypatch)
        change = fresh.changes(mark, set)
    assert change.empty
    assert counter.count == 2  # lastusn, and the census's one page
