"""Incremental cycles: only what changed, never missing a deletion or a scope change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scimsync.cycle.mode import WATERMARK
from scimsync.cycle.run import CycleReport
from scimsync.emulator import RunningEmulator
from tests.fixtures.channels import flavoured_channel
from tests.harness import Channel


@pytest.fixture(params=["openldap", "389ds"])
def channel(request: pytest.FixtureRequest, emulator: RunningEmulator, tmp_path: Path) -> Channel:
    return flavoured_channel(request, request.param, emulator, tmp_path)


def mode(report: CycleReport) -> str:
    return report.prepared.view.mode


def test_second_cycle_is_incremental_and_reads_no_target_listing(channel: Channel) -> None:
    for i in range(20):
        channel.tree.add_user(f"w{i}")
    assert mode(channel.sync()) == "full"
    channel.emulator.reset_stats()
    quiet = channel.sync()
    assert mode(quiet) == "incremental"
    assert quiet.prepared.plan.operations == ()
    assert channel.emulator.stats()["total"] == 0  # not even a GET


def test_user_deleted_inside_a_targeted_group_dn_is_deprovisioned_at_once(
    channel: Channel,
) -> None:
    """PingFederate's known flaw: it waits until the group changes. scimsync does not."""
    stay, leave = channel.tree.add_user("stay"), channel.tree.add_user("leave")
    scope = channel.tree.add_group("atlassian-users", [stay, leave])
    channel.source["users"] = {"group_dn": scope}
    channel.options["groups"] = False
    channel.sync()
    channel.tree.delete(leave)  # the group entry is not touched by the test
    report = channel.sync()
    assert mode(report) == "incremental"
    assert report.prepared.plan.summary() == {"disable": 1}
    assert channel.users()["leave@example.com"]["active"] is False
    assert channel.users()["stay@example.com"]["active"] is True


@pytest.mark.parametrize("trigger", ["removed from scope group", "filter no longer matches"])
def test_leaving_scope_is_seen_incrementally(channel: Channel, trigger: str) -> None:
    a, b = channel.tree.add_user("a1", title="in"), channel.tree.add_user("b1", title="in")
    scope = channel.tree.add_group("scope", [a, b])
    channel.options["groups"] = False
    if trigger == "removed from scope group":
        channel.source["users"] = {"group_dn": scope}
    else:
        channel.source["users"] = {"filter": "(&(objectClass=inetOrgPerson)(title=in))"}
    channel.sync()
    if trigger == "removed from scope group":
        channel.tree.remove_members(scope, [b])
    else:
        channel.tree.modify(b, title="out")
    report = channel.sync()
    assert mode(report) == "incremental"
    assert report.prepared.plan.summary() == {"disable": 1}


def test_membership_and_rename_changes_incrementally(channel: Channel) -> None:
    users = [channel.tree.add_user(f"m{i}") for i in range(4)]
    team = channel.tree.add_group("team", users[:2])
    channel.sync()
    channel.tree.add_members(team, [users[2]])
    channel.tree.remove_members(team, [users[0]])
    renamed = channel.tree.rename(team, "cn=squad")
    report = channel.sync()
    assert mode(report) == "incremental"
    assert channel.member_names("squad") == {"m1@example.com", "m2@example.com"}
    channel.tree.delete(renamed)
    channel.sync()
    assert "squad" not in channel.groups()


def test_full_reconciliation_on_reset_interval_and_settings_change(channel: Channel) -> None:
    channel.tree.add_user("r1")
    start = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert mode(channel.sync(now=lambda: start)) == "full"
    assert mode(channel.sync(now=lambda: start + timedelta(hours=1))) == "incremental"
    assert mode(channel.sync(now=lambda: start + timedelta(hours=25))) == "full"
    with channel.store() as store:
        store.reset()
    assert mode(channel.sync(now=lambda: start + timedelta(hours=26))) == "full"
    channel.mapping["title"] = "description"
    assert mode(channel.sync(now=lambda: start + timedelta(hours=27))) == "full"


def test_drift_at_the_target_is_corrected_by_the_full_reconciliation(channel: Channel) -> None:
    channel.tree.add_user("d1", title="Engineer")
    channel.sync()
    user_id = channel.users()["d1@example.com"]["id"]
    channel.patch_target(
        f"/Users/{user_id}", {"op": "replace", "path": "title", "value": "Hand-edited"}
    )
    assert channel.sync().prepared.plan.operations == ()  # incremental: the directory is quiet
    with channel.store() as store:
        store.reset()
    assert channel.sync().prepared.plan.summary() == {"update": 1}
    assert channel.users()["d1@example.com"]["title"] == "Engineer"


def test_a_lost_watermark_means_a_full_reconciliation(channel: Channel) -> None:
    channel.tree.add_user("lw")
    channel.sync()
    with channel.store() as store:
        store.set_watermark(WATERMARK, "syncrepl:not-this-scope:garbage")
    report = channel.sync()
    assert mode(report) == "full"
    assert report.exit_code == 0
    assert mode(channel.sync()) == "incremental"  # and a good watermark again after it


def test_a_mapped_attribute_set_by_hand_is_cleared_by_the_full_reconciliation(
    channel: Channel,
) -> None:
    channel.tree.add_user("d2")  # no title in the directory
    channel.sync()
    user_id = channel.users()["d2@example.com"]["id"]
    channel.patch_target(f"/Users/{user_id}", {"op": "add", "path": "title", "value": "Boss"})
    with channel.store() as store:
        store.reset()
    [op] = channel.sync().prepared.plan.operations
    assert op.removed == ("title",)
    assert "title" not in channel.users()["d2@example.com"]
