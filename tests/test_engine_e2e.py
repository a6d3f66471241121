"""The seed's behaviours end to end: real slapd, the engine, the Atlassian emulator over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from scimsync.emulator import RunningEmulator
from scimsync.model import Action
from tests.fixtures.channels import flavoured_channel
from tests.harness import Channel


@pytest.fixture(params=["openldap", "389ds"])
def channel(request: pytest.FixtureRequest, emulator: RunningEmulator, tmp_path: Path) -> Channel:
    return flavoured_channel(request, request.param, emulator, tmp_path)


def actions(report_or_prepared: object) -> dict[str, int]:
    prepared = getattr(report_or_prepared, "prepared", report_or_prepared)
    return prepared.plan.summary()  # type: ignore[attr-defined, no-any-return]


# --- users ---------------------------------------------------------------------------------


def test_adopts_an_existing_user_by_user_name_then_updates_it(channel: Channel) -> None:
    existing = channel.create_target_user("alice@example.com", title="Old title")
    channel.tree.add_user("alice", title="Engineer")
    report = channel.sync()
    assert report.exit_code == 0
    assert actions(report) == {"link": 1}
    users = channel.users()
    assert list(users) == ["alice@example.com"]
    assert users["alice@example.com"]["id"] == existing
    assert users["alice@example.com"]["title"] == "Engineer"


def test_creates_users_entering_scope_by_filter(channel: Channel) -> None:
    channel.tree.add_user("bob")
    channel.tree.add_user("carol", title="CTO")
    report = channel.sync()
    assert actions(report) == {"create": 2}
    assert channel.users()["carol@example.com"]["title"] == "CTO"
    channel.tree.add_user("dave")
    assert actions(channel.sync()) == {"create": 1}
    assert set(channel.users()) == {f"{u}@example.com" for u in ("bob", "carol", "dave")}


def test_creates_users_entering_scope_by_group_dn_direct_and_nested(channel: Channel) -> None:
    tree = channel.tree
    inner_member = tree.add_user("inner")
    direct_member = tree.add_user("direct")
    tree.add_user("outsider")
    inner = tree.add_group("inner-team", [inner_member])
    scope = tree.add_group("atlassian-users", [direct_member, inner])
    channel.source["users"] = {"group_dn": scope}
    channel.options["groups"] = False
    channel.sync()
    assert set(channel.users()) == {"direct@example.com"}
    channel.source["users"] = {"group_dn": scope, "nested": True}
    channel.sync()
    assert set(channel.users()) == {"direct@example.com", "inner@example.com"}


def test_disabled_users_are_created_only_with_provision_disabled_users(channel: Channel) -> None:
    channel.tree.add_user("sleepy", employeeType="disabled")
    channel.tree.add_user("awake")
    channel.sync()
    assert set(channel.users()) == {"awake@example.com"}
    channel.options["provision_disabled_users"] = True
    channel.sync()
    users = channel.users()
    assert users["sleepy@example.com"]["active"] is False
    assert users["awake@example.com"]["active"] is True


def test_updates_only_changed_attributes_and_on_re_enable(channel: Channel) -> None:
    dn = channel.tree.add_user("erin", title="Engineer")
    channel.sync()
    channel.tree.modify(dn, title="Manager")
    report = channel.sync()
    [op] = report.prepared.plan.operations
    assert (op.action, dict(op.values)) == (Action.UPDATE, {"title": "Manager"})
    assert channel.users()["erin@example.com"]["title"] == "Manager"

    channel.tree.modify(dn, employeeType="disabled")
    assert actions(channel.sync()) == {"disable": 1}
    assert channel.users()["erin@example.com"]["active"] is False
    channel.tree.delete_attribute(dn, "employeeType")
    assert actions(channel.sync()) == {"update": 1}
    assert channel.users()["erin@example.com"]["active"] is True


def test_an_update_in_a_full_cycle_records_every_value_the_target_then_holds(
    channel: Channel,
) -> None:
    dn = channel.tree.add_user("fay", title="Engineer")
    channel.sync()
    channel.tree.modify(dn, title="Manager")
    with channel.store() as store:
        store.reset()
    assert actions(channel.sync()) == {"update": 1}  # a full reconciliation
    with channel.store() as store:
        [link] = store.linked_users().values()
    assert dict(link.values) == {
        "userName": "fay@example.com",
        "emails.work": "fay@example.com",
        "displayName": "fay",
        "name.familyName": "fay",
        "title": "Manager",
    }
    # So the next incremental cycle sees the title removed, and sends only that.
    channel.tree.delete_attribute(dn, "title")
    [op] = channel.sync().prepared.plan.operations
    assert (op.action, dict(op.values), op.removed) == (Action.UPDATE, {}, ("title",))


@pytest.mark.parametrize("remove_user_action", ["disable", "delete"])
@pytest.mark.parametrize("trigger", ["deleted", "disabled", "left scope"])
def test_deprovisions(channel: Channel, remove_user_action: str, trigger: str) -> None:
    channel.options["remove_user_action"] = remove_user_action
    keep = channel.tree.add_user("keep")
    gone = channel.tree.add_user("gone")
    scope = channel.tree.add_group("atlassian-users", [keep, gone])
    channel.source["users"] = {"group_dn": scope}
    channel.sync()
    assert set(channel.users()) == {"keep@example.com", "gone@example.com"}

    if trigger == "deleted":
        channel.tree.delete(gone)
    elif trigger == "disabled":
        channel.tree.modify(gone, employeeType="disabled")
    else:
        channel.tree.remove_members(scope, [gone])
    report = channel.sync()
    assert report.exit_code == 0
    users = channel.users()
    if remove_user_action == "disable":
        assert actions(report).get("disable") == 1
        assert users["gone@example.com"]["active"] is False
    else:
        assert actions(report).get("delete") == 1
        assert "gone@example.com" not in users
    assert users["keep@example.com"]["active"] is True


def test_never_touches_target_objects_it_did_not_create_or_link(channel: Channel) -> None:
    channel.create_target_user("stranger@elsewhere.com")
    channel.create_target_group("hand-made")
    channel.tree.add_user("frank")
    channel.sync()
    channel.tree.delete(channel.tree.user_dn("frank"))
    channel.options["remove_user_action"] = "delete"
    channel.sync()
    assert "stranger@elsewhere.com" in channel.users()
    assert "hand-made" in channel.groups()


# --- groups --------------------------------------------------------------------------------


def test_adopts_an_existing_group_by_display_name(channel: Channel) -> None:
    existing = channel.create_target_group("Accounting")
    member = channel.tree.add_user("gina")
    channel.tree.add_group("Accounting", [member])
    report = channel.sync()
    assert actions(report) == {"create": 1, "link": 1, "add_members": 1}
    assert channel.groups()["Accounting"]["id"] == existing
    assert channel.member_names("Accounting") == {"gina@example.com"}


def test_creates_a_group_with_its_members(channel: Channel) -> None:
    members = [channel.tree.add_user(u) for u in ("hal", "ida")]
    channel.tree.add_group("R&D (*)", members)
    channel.sync()
    assert channel.member_names("R&D (*)") == {"hal@example.com", "ida@example.com"}


@pytest.mark.parametrize("rename_mode", ["allowed", "immutable"])
@pytest.mark.parametrize("group_rename", ["in_place", "recreate"])
def test_renames_a_group(channel: Channel, rename_mode: str, group_rename: str) -> None:
    channel.emulator.configure(rename=rename_mode)
    channel.options["group_rename"] = group_rename
    member = channel.tree.add_user("jon")
    dn = channel.tree.add_group("old-name", [member])
    channel.sync()
    old_id = channel.groups()["old-name"]["id"]
    channel.tree.rename(dn, "cn=new-name")
    report = channel.sync()
    groups = channel.groups()
    if rename_mode == "allowed":
        assert report.exit_code == 0
        assert groups["new-name"]["id"] == old_id
        assert "old-name" not in groups
    elif group_rename == "recreate":
        assert report.exit_code == 0
        assert "old-name" not in groups
        assert groups["new-name"]["id"] != old_id
        assert channel.member_names("new-name") == {"jon@example.com"}
    else:
        assert report.exit_code == 1
        [failure] = report.outcome.failed
        assert "group_rename: recreate" in failure.cause
        assert set(groups) == {"old-name"}


def test_membership_add_remove_and_overwrite_of_a_member_added_at_the_target(
    channel: Channel,
) -> None:
    kim, lee, max_ = (channel.tree.add_user(u) for u in ("kim", "lee", "max"))
    team = channel.tree.add_group("team", [kim, lee])
    channel.sync()
    assert channel.member_names("team") == {"kim@example.com", "lee@example.com"}

    channel.tree.add_members(team, [max_])
    channel.tree.remove_members(team, [lee])
    channel.emulator.reset_stats()
    channel.sync()
    assert channel.member_names("team") == {"kim@example.com", "max@example.com"}
    assert channel.writes() == 1  # one PATCH carries the addition and the removal

    # Someone adds a member by hand at the target: the directory's membership wins.
    intruder = channel.create_target_user("intruder@example.com")
    group_id = channel.groups()["team"]["id"]
    channel.patch_target(
        f"/Groups/{group_id}", {"op": "add", "path": "members", "value": [{"value": intruder}]}
    )
    with channel.store() as store:
        store.reset()  # drift at the target is corrected by the full reconciliation
    channel.sync()
    assert channel.member_names("team") == {"kim@example.com", "max@example.com"}
    assert "intruder@example.com" in channel.users()  # removed from the group, not deleted


@pytest.mark.parametrize("trigger", ["deleted", "left scope"])
def test_group_deleted_or_out_of_scope_is_deleted(channel: Channel, trigger: str) -> None:
    member = channel.tree.add_user("ned")
    dn = channel.tree.add_group("doomed", [member], description="sync")
    channel.tree.add_group("kept", [member], description="sync")
    channel.source["groups"] = {"filter": "(&(objectClass=groupOfNames)(description=sync))"}
    channel.sync()
    assert {"doomed", "kept"} <= set(channel.groups())
    if trigger == "deleted":
        channel.tree.delete(dn)
    else:
        channel.tree.modify(dn, description="local only")
    report = channel.sync()
    assert actions(report) == {"delete": 1}
    assert set(channel.groups()) == {"kept"}


# --- efficiency ----------------------------------------------------------------------------


def test_a_second_sync_with_nothing_changed_writes_nothing(channel: Channel) -> None:
    members = [channel.tree.add_user(f"p{i}", title=f"T{i}") for i in range(30)]
    channel.tree.add_group("all", members)
    channel.tree.add_group("half", members[:15])
    first = channel.sync()
    assert first.exit_code == 0
    channel.emulator.reset_stats()
    second = channel.sync()
    assert second.prepared.plan.operations == ()
    assert channel.writes() == 0


def test_sync_user_provisions_one_user_and_its_groups(channel: Channel) -> None:
    one, two = channel.tree.add_user("one"), channel.tree.add_user("two")
    channel.tree.add_group("pair", [one, two])
    report = channel.sync(only_user="one@example.com")
    assert report.exit_code == 0
    assert set(channel.users()) == {"one@example.com"}
    assert channel.member_names("pair") == {"one@example.com"}
    channel.sync()
    assert channel.member_names("pair") == {"one@example.com", "two@example.com"}


def test_plan_writes_nothing(channel: Channel) -> None:
    channel.tree.add_user("quinn")
    channel.emulator.reset_stats()
    prepared = channel.plan()
    assert prepared.plan.summary() == {"create": 1}
    assert channel.writes() == 0
    assert channel.users() == {}


def test_a_cycle_report_stays_short_however_many_objects_it_holds(channel: Channel) -> None:
    # asyncio.run reprs the value the CLI's coroutine returns (cpython#112559): a full repr
    # of a 100,000-user cycle was two 143 MB strings at the end of every `sync`.
    channel.tree.add_group("all", channel.tree.add_users(300))
    report = channel.sync()
    assert report.prepared.plan.summary() == {"create": 301, "add_members": 1}
    text = repr(report)
    assert len(text) < 600, text
    assert "301 users" not in text and "300 users" in text and "302 operations" in text
