"""A change of source.guid_attribute re-keys the store: links follow their entries, nothing
is deprovisioned; where they cannot follow, the cycle is refused (exit 2) and nothing is
written. Real slapd, the emulator over HTTP, real SQLite and PostgreSQL stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scimsync.directory.reader import Identity
from scimsync.emulator import RunningEmulator
from scimsync.model import Kind, LinkedGroup, LinkedUser
from scimsync.rekey import RekeyRefusedError, match
from scimsync.state import Store
from scimsync.state.watermarks import IDENTITY
from tests.fixtures.slapd import Tree
from tests.harness import Channel
from tests.test_cli import Cli

# entryDN: unique, and stable while nothing is renamed; every user and group has it.
NEW_ATTRIBUTE = "entryDN"


@pytest.fixture
def channel(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Channel:
    return Channel(ldap_tree, emulator, tmp_path)


@pytest.fixture
def cli(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Cli:
    return Cli(ldap_tree, emulator, tmp_path)


def directory(tree: Tree) -> dict[str, str]:
    """Three users (one of them unmappable: no mail) and two groups; name -> DN."""
    dns = {uid: tree.add_user(uid) for uid in ("anna", "ben", "cara", "dave")}
    tree.delete_attribute(dns["dave"], "mail")  # refused every cycle: a failure row
    dns["staff"] = tree.add_group("staff", [dns["anna"], dns["ben"], dns["dave"]])
    dns["ops"] = tree.add_group("ops", [dns["cara"]])
    return dns


def snapshot(store: Store) -> dict[str, Any]:
    """What a refused cycle must leave as it was."""
    return {
        "users": store.linked_users(),
        "groups": store.linked_groups(),
        "failures": set(store.failures()),
        "watermarks": {k: store.watermark(k) for k in (IDENTITY, "directory", "settings")},
        "runs": [(r.cycle_id, r.cycles) for r in store.runs(limit=100)],
        "audit": len(store.audit_log()),
    }


def test_a_new_identity_attribute_re_keys_links_instead_of_deprovisioning(
    channel: Channel,
) -> None:
    tree = channel.tree
    dns = directory(tree)
    channel.sync()
    old_ids = {name: tree.guid(dn) for name, dn in dns.items()}
    with channel.store() as store:
        assert store.watermark(IDENTITY) == "entryUUID"
        assert set(store.failures()) == {("user", old_ids["dave"])}
        store.reset()  # a full reconciliation next; which attribute keys the links stays
        assert store.watermark(IDENTITY) == "entryUUID"
    target_before = channel.users(), channel.groups()

    channel.source["guid_attribute"] = NEW_ATTRIBUTE
    channel.emulator.reset_stats()
    planned = channel.plan()  # the dry run plans what sync does after the re-key
    assert (planned.view.mode, planned.plan.operations) == ("full", ())
    one = channel.plan(only_user="anna@example.com")
    assert (one.plan.operations, one.plan.conflicts) == ((), ())
    assert set(one.view.linked_users) == {dns["anna"].lower()}
    with channel.store() as store:
        assert store.watermark(IDENTITY) == "entryUUID"  # a plan writes nothing

    report = channel.sync()
    assert report.prepared.view.mode == "full"
    assert report.prepared.plan.operations == ()
    assert channel.writes() == 0  # no disable, delete, create or membership change
    assert (channel.users(), channel.groups()) == target_before
    new_ids = {name: dn.lower() for name, dn in dns.items()}
    with channel.store() as store:
        assert store.watermark(IDENTITY) == NEW_ATTRIBUTE
        users, groups = store.linked_users(), store.linked_groups()
        assert set(users) == {new_ids[u] for u in ("anna", "ben", "cara")}
        assert {sid: g.member_source_ids for sid, g in groups.items()} == {
            new_ids["staff"]: {new_ids["anna"], new_ids["ben"]},
            new_ids["ops"]: {new_ids["cara"]},
        }
        assert set(store.failures()) == {("user", new_ids["dave"])}
        assert [e.event for e in store.audit_log()].count("map") == 1  # dave's, once
        [event] = [e for e in store.audit_log() if e.event == "rekey"]
        assert event.success
        assert event.cause == (
            "source.guid_attribute changed from entryUUID to entryDN: 3 users and 2 groups re-keyed"
        )

    quiet = channel.sync()  # change detection now works by the new attribute
    assert (quiet.prepared.view.mode, quiet.prepared.plan.operations) == ("incremental", ())
    tree.modify(dns["anna"], title="Engineer")
    changed = channel.sync()
    assert [(op.action.value, op.name) for op in changed.prepared.plan.operations] == [
        ("update", "anna@example.com")
    ]
    assert channel.writes() == 1


def test_an_identity_attribute_no_entry_has_is_refused_with_exit_2_and_nothing_written(
    cli: Cli,
) -> None:
    directory(cli.tree)
    assert cli("sync").returncode == 1  # dave is unmappable; the rest is applied
    with Store.open(cli.settings["state"], "default") as store:
        before = snapshot(store)
    cli.emulator.reset_stats()

    cli.settings["source"]["guid_attribute"] = "nsUniqueId"  # a 389 DS attribute
    for command in ("sync", "plan"):
        result = cli(command)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(
            "scimsync: source.guid_attribute nsUniqueId: 5 linked entries have no nsUniqueId"
        )
        assert "set source.guid_attribute back to entryUUID" in result.stderr
    cli.settings["metrics_listen"] = "127.0.0.1:0"  # run binds a free port itself
    daemon = cli("run")  # the daemon stops at its first cycle: a person must decide
    assert daemon.returncode == 2, daemon.stderr
    assert daemon.stderr.splitlines()[-1].startswith("scimsync: source.guid_attribute nsUniqueId")
    assert "Traceback" not in daemon.stderr
    with Store.open(cli.settings["state"], "default") as store:
        assert snapshot(store) == before
    assert cli.emulator.stats()["by_method"].keys() <= {"GET"}

    cli.settings["source"]["guid_attribute"] = NEW_ATTRIBUTE  # one every entry has
    assert cli("sync").returncode == 1  # dave is still unmappable; nothing else to do
    assert cli.emulator.stats()["by_method"].keys() <= {"GET"}
    status = cli("status").stdout
    assert "rekey" in status and "2 rekey group, 3 rekey user" in status


def test_links_whose_old_attribute_no_entry_has_any_more_are_refused(channel: Channel) -> None:
    tree = channel.tree
    names = ("anna", "ben")
    dns = [tree.add_user(uid, description=f"id-{uid}") for uid in names]
    group = tree.add_group("staff", dns, description="id-staff")
    channel.source["guid_attribute"] = "description"
    channel.sync()
    for dn in [*dns, group]:  # as if the directory had moved to a server without it
        tree.delete_attribute(dn, "description")
    channel.source["guid_attribute"] = "entryUUID"
    with channel.store() as store:
        before = snapshot(store)
        assert set(store.linked_users()) == {"id-anna", "id-ben"}
    channel.emulator.reset_stats()
    for attempt in (channel.plan, channel.sync):
        with pytest.raises(RekeyRefusedError) as refused:
            attempt()
        assert str(refused.value) == (
            "source.guid_attribute: the store's links use description, but no entry under "
            "source.base_dn has it: set source.guid_attribute back to description, or start "
            "a new store (or channel) and let adoption link the existing accounts "
            "(options.match_users_by)"
        )
    assert channel.writes() == 0
    with channel.store() as store:
        assert snapshot(store) == before


def test_a_store_made_before_the_identity_was_recorded_records_it_without_re_keying(
    channel: Channel,
) -> None:
    directory(channel.tree)
    channel.sync()
    with channel.store() as store:
        store.clear_watermarks(keep=["directory", "settings", "last_full_reconciliation"])
        assert store.watermark(IDENTITY) is None
    assert channel.sync().prepared.view.mode == "incremental"  # settings unchanged
    with channel.store() as store:
        assert store.watermark(IDENTITY) == "entryUUID"


# --- the matching and the store's re-pointing, without a directory ---------------------------


def test_a_new_attribute_two_linked_entries_share_is_refused() -> None:
    identities = [Identity("uid=a", "1", "same"), Identity("uid=b", "2", "same")]
    with pytest.raises(RekeyRefusedError, match="uid=a and uid=b both have 'same'"):
        match("entryUUID", "cn", identities, {"1", "2"}, set())


def test_failure_rows_of_unlinked_records_follow_too() -> None:
    identities = [Identity("uid=a", "1", "x"), Identity("uid=b", "2", "y")]
    found = match("entryUUID", "uid", identities, {"1"}, set(), {(Kind.USER, "2")})
    assert (found.new_ids, found.users, found.not_found) == ({"1": "x", "2": "y"}, 1, 0)
    with pytest.raises(RekeyRefusedError, match="not unique"):
        match("entryUUID", "uid", [*identities, Identity("uid=c", "3", "x")], {"1"}, set(),
              {(Kind.USER, "3")})  # fmt: skip


def test_records_not_found_stay_and_are_counted() -> None:
    identities = [Identity("uid=a", "1", "x"), Identity("ou=people", None, None)]
    found = match("entryUUID", "uid", identities, {"1", "2"}, set())
    assert (found.new_ids, found.users, found.not_found) == ({"1": "x"}, 1, 1)


def test_rekey_repoints_links_members_and_failures_in_one_go(store_url: str) -> None:
    with Store.open(store_url, "main") as store:
        # Swapped ids: each old id is the other's new one.
        store.save_users(
            [LinkedUser("a", "t-a", "a@x", True, {}), LinkedUser("b", "t-b", "b@x", True, {})]
        )
        store.save_groups([LinkedGroup("g", "t-g", "g", frozenset({"a"}))])
        store.stage_deletions("c1", [{"action": "disable", "kind": "user", "source_id": "a"}])
        store.rekey({"a": "b", "b": "a", "g": "h"})
        assert {u.source_id: u.target_id for u in store.linked_users().values()} == {
            "b": "t-a",
            "a": "t-b",
        }
        assert store.linked_groups() == {"h": LinkedGroup("h", "t-g", "g", frozenset({"b"}))}
        assert store.staged_deletions() == []
