"""What real Atlassian tenants need beyond the happy path (issue 15), end to end against
slapd and the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from scimsync.emulator import RunningEmulator
from tests.fixtures.slapd import Tree
from tests.harness import Channel


@pytest.fixture
def channel(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Channel:
    return Channel(ldap_tree, emulator, tmp_path)


def add_by_hand(channel: Channel, group: str, *member_ids: str) -> None:
    """Members an Atlassian admin adds in the admin console."""
    channel.patch_target(
        f"/Groups/{channel.groups()[group]['id']}",
        {"op": "add", "path": "members", "value": [{"value": m} for m in member_ids]},
    )


def group_reads(channel: Channel) -> int:
    return int(channel.emulator.stats()["by_resource"].get("GET Groups", 0))


# --- 1. a group written gets the directory's members -----------------------------------


def test_a_group_written_incrementally_drops_the_members_added_by_hand(channel: Channel) -> None:
    tree = channel.tree
    anna, ben = tree.add_user("anna"), tree.add_user("ben")
    dora = tree.add_user("dora")  # linked, in no group
    team = tree.add_group("team", [anna, ben])
    tree.add_group("other", [dora])
    assert channel.sync().exit_code == 0
    stranger = channel.create_target_user("carl@example.com")
    dora_id = channel.users()["dora@example.com"]["id"]
    add_by_hand(channel, "team", stranger, dora_id)
    add_by_hand(channel, "other", stranger)  # a group no change touches
    channel.emulator.reset_stats()

    tree.add_members(team, [tree.add_user("eve")])
    report = channel.sync()

    assert report.exit_code == 0 and report.prepared.view.mode == "incremental"
    # anna and ben are linked but outside the cycle's view: ours, so they stay.
    assert channel.member_names("team") == {
        "anna@example.com",
        "ben@example.com",
        "eve@example.com",
    }
    assert channel.member_names("other") == {"dora@example.com", "carl@example.com"}
    assert group_reads(channel) == 1  # the one group written, no other
    # The store holds what the target now holds: the next cycle has nothing to do.
    assert channel.sync().prepared.plan.operations == ()


def test_a_group_renamed_in_the_directory_drops_the_members_added_by_hand(
    channel: Channel,
) -> None:
    tree = channel.tree
    team = tree.add_group("team", [tree.add_user("anna")])
    tree.add_user("warm")  # so that the next cycle is incremental
    assert channel.sync().exit_code == 0
    add_by_hand(channel, "team", channel.create_target_user("carl@example.com"))

    tree.rename(team, "cn=squad")
    report = channel.sync()

    assert report.prepared.view.mode == "incremental"
    assert set(channel.groups()) == {"squad"}
    assert channel.member_names("squad") == {"anna@example.com"}


def test_a_group_adopted_incrementally_gets_the_directory_members_only(
    channel: Channel,
) -> None:
    tree = channel.tree
    anna = tree.add_user("anna")
    assert channel.sync().exit_code == 0
    stranger = channel.create_target_user("carl@example.com")
    channel.create_target_group("team", [stranger])

    tree.add_group("team", [anna])
    report = channel.sync()

    assert report.prepared.view.mode == "incremental"
    assert channel.member_names("team") == {"anna@example.com"}


# --- 2. inactive users the tenant leaves out of its listings -----------------------------


def test_hidden_inactive_users_are_kept_linked_through_full_reconciliations(
    channel: Channel,
) -> None:
    tree = channel.tree
    tree.add_user("anna")
    ben = tree.add_user("ben")
    tree.add_group("team", [ben])
    assert channel.sync().exit_code == 0
    ben_id = channel.users()["ben@example.com"]["id"]
    channel.emulator.configure(hide_inactive=True)
    tree.modify(ben, employeeType="disabled")
    assert channel.sync().exit_code == 0
    assert channel.users()["ben@example.com"]["active"] is False
    listed = {u["userName"] for u in channel.http().get("/Users").json()["Resources"]}
    assert listed == {"anna@example.com"}  # the quirk is on: ben is hidden

    for _ in range(2):
        with channel.store() as store:
            store.reset()  # the next cycle is a full reconciliation
        channel.emulator.reset_stats()
        full = channel.sync()
        assert full.prepared.view.mode == "full"
        assert full.exit_code == 0 and full.prepared.plan.operations == ()
        assert channel.emulator.stats()["by_method"].get("POST", 0) == 0
    assert len(channel.users()) == 2  # no second account for ben

    tree.modify(ben, employeeType="staff")
    assert channel.sync().exit_code == 0
    assert channel.users()["ben@example.com"] == {
        **channel.users()["ben@example.com"],
        "id": ben_id,
        "active": True,
    }
    assert channel.member_names("team") == {"ben@example.com"}


def test_a_linked_user_deleted_at_the_target_is_still_created_again(channel: Channel) -> None:
    """The confirming GET answers 404: gone, as before the quirk was handled."""
    channel.tree.add_user("anna")
    assert channel.sync().exit_code == 0
    with channel.http() as client:
        client.delete(f"/Users/{channel.users()['anna@example.com']['id']}").raise_for_status()
    channel.emulator.configure(hide_inactive=True)
    with channel.store() as store:
        store.reset()
    full = channel.sync()
    assert [op.action.value for op in full.prepared.plan.operations] == ["create"]
    assert set(channel.users()) == {"anna@example.com"}
