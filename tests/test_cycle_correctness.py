"""Incremental cycles that must land where a full reconciliation would: users coming back
into scope, changes made while a record was refused, memberships of users who left scope,
failures that heal, and adoption that writes only what differs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scimsync.cycle.run import CycleReport
from scimsync.model import Kind
from tests.harness import Channel


def mode(report: CycleReport) -> str:
    return report.prepared.view.mode


def active(channel: Channel, user_name: str) -> bool:
    return bool(channel.users()[user_name]["active"])


# --- coming back into scope ------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_a_user_put_back_into_the_scope_group_is_reactivated_incrementally(
    channel: Channel, nested: bool
) -> None:
    tree = channel.tree
    anna, ben = tree.add_user("anna"), tree.add_user("ben")
    inner = tree.add_group("inner", [anna, ben])
    scope = tree.add_group("atlassian-users", [inner] if nested else [anna, ben])
    channel.source["users"] = {"group_dn": scope, "nested": nested}
    channel.options["groups"] = False
    channel.sync()
    tree.remove_members(inner if nested else scope, [anna])
    left = channel.sync()
    assert (mode(left), left.prepared.plan.summary()) == ("incremental", {"disable": 1})
    assert not active(channel, "anna@example.com")

    tree.add_members(inner if nested else scope, [anna])
    planned = channel.plan()
    assert [(op.action.value, op.name) for op in planned.plan.operations] == [
        ("update", "anna@example.com")
    ]
    back = channel.sync()
    assert mode(back) == "incremental"
    assert active(channel, "anna@example.com")
    assert active(channel, "ben@example.com")
    assert channel.sync().prepared.plan.operations == ()  # and it stays so


def test_a_user_matching_the_filter_again_is_reactivated_incrementally(channel: Channel) -> None:
    tree = channel.tree
    anna = tree.add_user("anna", title="staff")
    channel.source["users"] = {"filter": "(&(objectClass=inetOrgPerson)(title=staff))"}
    channel.options["groups"] = False
    channel.sync()
    tree.modify(anna, title="contractor")
    channel.sync()
    assert not active(channel, "anna@example.com")
    tree.modify(anna, title="staff")
    back = channel.sync()
    assert (mode(back), back.prepared.plan.summary()) == ("incremental", {"update": 1})
    assert active(channel, "anna@example.com")


def test_a_user_deleted_for_leaving_scope_is_created_again_when_it_comes_back(
    channel: Channel,
) -> None:
    tree = channel.tree
    tree.add_user("ben", title="staff")
    anna = tree.add_user("anna", title="staff")
    channel.source["users"] = {"filter": "(&(objectClass=inetOrgPerson)(title=staff))"}
    channel.options["groups"] = False
    channel.options["remove_user_action"] = "delete"
    channel.sync()
    tree.modify(anna, title="contractor")
    assert channel.sync().prepared.plan.summary() == {"delete": 1}
    assert set(channel.users()) == {"ben@example.com"}
    tree.modify(anna, title="staff")
    back = channel.sync()
    assert (mode(back), back.prepared.plan.summary()) == ("incremental", {"create": 1})
    assert active(channel, "anna@example.com")


def test_a_user_disabled_and_re_enabled_between_cycles_is_active(channel: Channel) -> None:
    tree = channel.tree
    anna = tree.add_user("anna")
    channel.options["groups"] = False
    channel.sync()
    tree.modify(anna, employeeType="disabled")
    channel.sync()
    assert not active(channel, "anna@example.com")
    tree.modify(anna, employeeType="staff")
    back = channel.sync()
    assert (mode(back), back.prepared.plan.summary()) == ("incremental", {"update": 1})
    assert active(channel, "anna@example.com")


# --- memberships of users who left scope -------------------------------------------------------


def test_a_user_who_left_scope_is_not_put_back_into_groups_by_an_incremental_cycle(
    channel: Channel,
) -> None:
    tree = channel.tree
    anna, ben, cleo = (tree.add_user(n) for n in ("anna", "ben", "cleo"))
    scope = tree.add_group("atlassian-users", [anna, ben, cleo])
    developers = tree.add_group("jira-developers", [anna, ben, cleo])
    channel.source["users"] = {"group_dn": scope}
    channel.source["groups"] = {"filter": "(&(objectClass=groupOfNames)(cn=jira-*))"}
    channel.sync()
    tree.remove_members(scope, [anna])
    channel.sync()
    assert channel.member_names("jira-developers") == {"ben@example.com", "cleo@example.com"}
    with channel.store() as store:  # the store holds what the target holds
        [stored] = store.linked_groups().values()
    assert stored.member_source_ids == {tree.guid(ben), tree.guid(cleo)}

    tree.modify(ben, title="lead")  # ben is in the group: the group is planned again
    touched = channel.sync()
    assert mode(touched) == "incremental"
    assert touched.prepared.plan.summary() == {"update": 1}
    assert channel.member_names("jira-developers") == {"ben@example.com", "cleo@example.com"}

    tree.add_members(developers, [tree.add_user("dan")])  # the group itself changes
    tree.add_members(scope, [tree.user_dn("dan")])
    channel.sync()
    assert channel.member_names("jira-developers") == {
        "ben@example.com",
        "cleo@example.com",
        "dan@example.com",
    }
    channel.store().reset()
    assert channel.sync().prepared.plan.operations == ()  # a full reconciliation agrees


# --- records refused in one cycle come back ------------------------------------------------------


def test_a_change_made_while_a_record_was_in_conflict_reaches_the_target(
    channel: Channel,
) -> None:
    tree = channel.tree
    ben = tree.add_user("ben", title="Engineer")
    tree.add_user("cleo")
    channel.options["groups"] = False
    channel.sync()
    tree.modify(ben, title="Manager")
    intruder = tree.add_user("ben2", mail="ben@example.com")  # maps to ben's userName
    refused = channel.sync()
    assert refused.exit_code == 1
    assert {c.name for c in refused.prepared.plan.conflicts} == {"ben@example.com"}
    assert channel.users()["ben@example.com"]["title"] == "Engineer"

    tree.delete(intruder)
    settled = channel.sync()
    assert mode(settled) == "incremental"
    assert settled.exit_code == 0
    assert settled.prepared.plan.summary() == {"update": 1}
    assert channel.users()["ben@example.com"]["title"] == "Manager"
    with channel.store() as store:
        assert store.failures() == {}  # both rows settled: the conflict and the intruder's


def test_a_lasting_conflict_is_audited_once_and_holds_back_no_one(channel: Channel) -> None:
    tree = channel.tree
    tree.add_user("ben")
    channel.options["groups"] = False
    channel.sync()
    tree.add_user("ben2", mail="ben@example.com")
    assert channel.sync().exit_code == 1
    with channel.store() as store:
        audited = len(store.audit_log())
    tree.add_user("cleo")
    other = channel.sync()
    assert other.exit_code == 1  # still refused, and said so
    assert other.outcome.applied == {"create": 1}
    assert "cleo@example.com" in channel.users()
    quiet = channel.sync()
    assert quiet.outcome.applied == {}
    with channel.store() as store:
        conflicts = [r for r in store.audit_log() if r.event == "conflict"]
        assert len(store.audit_log()) == audited + 1  # cleo's create, no conflict again
    assert {r.name for r in conflicts} == {"ben@example.com"}
    assert [r.cause for r in conflicts] == [
        f"userName is held by the account linked to {tree.guid(tree.user_dn('ben'))}"
    ]


# --- failures that heal ------------------------------------------------------------------------


def test_a_failure_undone_in_the_directory_leaves_the_failure_list(channel: Channel) -> None:
    tree = channel.tree
    anna = tree.add_user("anna")
    tree.add_user("ben")
    channel.options["groups"] = False
    channel.mapping["userName"] = "uid"
    channel.sync()
    tree.modify(anna, mail="ben@example.com")  # the target refuses a taken email: 409
    failed = channel.sync()
    assert failed.exit_code == 1
    with channel.store() as store:
        assert [r.name for r in store.failures().values()] == ["anna"]
    tree.modify(anna, mail="anna@example.com")
    healed = channel.sync()
    assert mode(healed) == "incremental"
    assert healed.prepared.plan.operations == ()  # nothing left to write
    with channel.store() as store:
        assert store.failures() == {}


def test_a_due_retry_is_an_incremental_cycle_that_retries_only_that_record(
    channel: Channel,
) -> None:
    tree = channel.tree
    tree.add_user("anna")
    tree.add_user("ben")
    channel.options["groups"] = False
    channel.mapping["userName"] = "uid"
    channel.sync()
    taken = [{"value": "cleo@example.com", "type": "work", "primary": True}]
    channel.create_target_user("intruder", emails=taken)
    tree.add_user("cleo")
    assert channel.sync().exit_code == 1  # cleo's email is taken at the target
    later = datetime.now(UTC) + timedelta(minutes=5)  # past the first back-off
    channel.emulator.reset_stats()
    retried = channel.sync(now=lambda: later)
    assert mode(retried) == "incremental"
    assert [op.name for op in retried.prepared.plan.operations] == ["cleo"]
    assert channel.emulator.stats()["by_method"].get("GET", 0) <= 2  # a lookup, no listing


# --- adoption ------------------------------------------------------------------------------------


@pytest.mark.parametrize("full", [True, False])
def test_adopting_a_user_writes_only_the_values_that_differ(channel: Channel, full: bool) -> None:
    tree = channel.tree
    tree.add_user("warm")  # so that the second cycle has a watermark
    channel.options["groups"] = False
    channel.sync()
    same = channel.create_target_user(
        "anna@example.com",
        displayName="anna",
        name={"familyName": "anna"},
        title="Engineer",
        active=True,
    )
    other = channel.create_target_user("ben@example.com", displayName="Old Ben", title="Old")
    tree.add_user("anna", title="Engineer")
    tree.add_user("ben")  # no title in the directory: the target's is cleared
    if full:
        channel.store().reset()
    channel.emulator.reset_stats()
    report = channel.sync()
    assert mode(report) == ("full" if full else "incremental")
    links = {op.name: op for op in report.prepared.plan.operations}
    assert dict(links["anna@example.com"].values) == {}
    assert dict(links["ben@example.com"].values) == {
        "displayName": "ben",
        "name.familyName": "ben",
    }
    assert links["ben@example.com"].removed == ("title",)
    assert channel.emulator.stats()["by_method"].get("PATCH", 0) == 1  # ben's only
    users = channel.users()
    assert (users["anna@example.com"]["id"], users["ben@example.com"]["id"]) == (same, other)
    assert "title" not in users["ben@example.com"]
    assert channel.sync().prepared.plan.operations == ()
    channel.store().reset()
    assert channel.sync().prepared.plan.operations == ()


@pytest.mark.parametrize("was_active", [True, False])
def test_an_adopted_account_is_recorded_as_the_target_then_holds_it(
    channel: Channel, was_active: bool
) -> None:
    tree = channel.tree
    tree.add_user("warm")  # so that the later cycles are incremental
    channel.options["groups"] = False
    channel.sync()
    channel.create_target_user(
        "anna@example.com",
        displayName="anna",
        name={"familyName": "anna"},
        title="Engineer",
        active=was_active,
    )
    anna = tree.add_user("anna", title="Engineer")
    channel.emulator.reset_stats()
    [link] = channel.sync().prepared.plan.operations
    assert (link.action.value, dict(link.values), link.active) == (
        "link",
        {},
        None if was_active else True,
    )
    assert active(channel, "anna@example.com")
    assert channel.writes() == (0 if was_active else 1)  # re-activating it is one request

    # The link holds the values and the state the account now has: an edit sends itself alone.
    tree.modify(anna, title="Manager")
    edited = channel.sync()
    assert mode(edited) == "incremental"
    [update] = edited.prepared.plan.operations
    assert (update.action.value, dict(update.values), update.removed) == (
        "update",
        {"title": "Manager"},
        (),
    )
    assert channel.users()["anna@example.com"]["title"] == "Manager"


def test_values_an_adoption_did_not_send_are_sent_once_update_users_is_on(
    channel: Channel,
) -> None:
    channel.options["groups"] = False
    channel.options["update_users"] = False
    channel.create_target_user("anna@example.com", title="Old")
    channel.tree.add_user("anna", title="Engineer")
    [link] = channel.sync().prepared.plan.operations
    assert (link.action.value, dict(link.values)) == ("link", {})
    assert channel.users()["anna@example.com"]["title"] == "Old"
    # The link records that nothing was sent, so syncing the user alone later sends it all.
    channel.options["update_users"] = True
    [update] = channel.sync(only_user="anna@example.com").prepared.plan.operations
    assert update.action.value == "update"
    assert channel.users()["anna@example.com"]["title"] == "Engineer"


def test_a_new_group_named_like_a_linked_group_is_a_conflict_not_a_second_link(
    channel: Channel,
) -> None:
    tree = channel.tree
    channel.source["groups"] = {"filter": "(objectClass=groupOfNames)", "name_attribute": "ou"}
    anna = tree.add_user("anna")
    tree.add_group("team", [anna], ou="Team")
    channel.sync()
    tree.add_group("team2", [anna], ou="team")  # another entry, the same name at the target
    report = channel.sync()
    assert mode(report) == "incremental"
    assert [c.cause for c in report.prepared.plan.conflicts] == [
        f"displayName is held by the group linked to {tree.guid(tree.group_dn('team'))}"
    ]
    assert report.prepared.plan.operations == ()
    with channel.store() as store:
        assert store.count_linked(Kind.GROUP) == 1


# --- the safety threshold and what follows from a held deprovisioning ------------------------


def held_names(report: CycleReport) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(op.action.value, op.name, op.members) for op in report.prepared.verdict.held]


def test_users_held_by_the_threshold_keep_their_groups_until_released(channel: Channel) -> None:
    tree = channel.tree
    users = [tree.add_user(f"u{i}") for i in range(5)]
    scope = tree.add_group("atlassian-users", users)
    tree.add_group("jira-software", users)
    channel.source["users"] = {"group_dn": scope}
    channel.source["groups"] = {"filter": "(&(objectClass=groupOfNames)(cn=jira-*))"}
    channel.options["max_deletions"] = 2
    channel.sync()
    everyone = {f"u{i}@example.com" for i in range(5)}
    tree.remove_members(scope, users[:3])
    held = channel.sync()
    assert held.exit_code == 3
    guids = {tree.guid(dn) for dn in users[:3]}
    assert [(a, n) for a, n, _ in held_names(held)] == [
        ("remove_members", "jira-software"),
        *((("disable", f"u{i}@example.com")) for i in range(3)),
    ]
    assert set(held_names(held)[0][2]) == guids
    assert channel.member_names("jira-software") == everyone  # product access kept
    assert all(active(channel, name) for name in everyone)
    with channel.store() as store:
        staged = store.staged_deletions()
    assert sorted(str(op["action"]) for op in staged) == ["disable"] * 3 + ["remove_members"]

    released = channel.sync(allow_deletions=True)
    assert released.exit_code == 0
    assert released.outcome.applied == {"remove_members": 1, "disable": 3}
    assert channel.member_names("jira-software") == {"u3@example.com", "u4@example.com"}
    with channel.store() as store:
        assert store.staged_deletions() == []


def test_one_user_synced_past_the_threshold_leaves_the_others_listed_as_held(
    channel: Channel,
) -> None:
    tree = channel.tree
    users = [tree.add_user(f"u{i}") for i in range(6)]
    scope = tree.add_group("atlassian-users", users)
    tree.add_group("jira-software", users)
    channel.source["users"] = {"group_dn": scope}
    channel.source["groups"] = {"filter": "(&(objectClass=groupOfNames)(cn=jira-*))"}
    channel.options["max_deletions"] = 1
    channel.sync()
    tree.modify(users[5], employeeType="disabled")  # disabled, still in scope and group
    tree.remove_members(scope, users[:4])
    assert channel.sync().exit_code == 3
    with channel.store() as store:
        before = store.staged_deletions()
    assert len(before) == 6  # five disables and the group's removal of four members

    channel.sync(only_user="u5@example.com")  # disables u5 now, as asked
    assert not active(channel, "u5@example.com")
    with channel.store() as store:
        after = store.staged_deletions()
    assert after == [op for op in before if op.get("name") != "u5@example.com"]
    assert len(channel.plan().verdict.held) == len(after)


# --- userName changes ----------------------------------------------------------------------------


def test_a_user_in_a_user_name_conflict_is_still_deprovisioned(channel: Channel) -> None:
    tree = channel.tree
    ben = tree.add_user("ben")
    channel.options["groups"] = False
    channel.sync()
    tree.modify(ben, mail="benjamin@example.com")  # userName is write-once: a conflict
    assert [c.name for c in channel.sync().prepared.plan.conflicts] == ["benjamin@example.com"]
    tree.modify(ben, employeeType="disabled")  # then he leaves
    report = channel.sync()
    assert report.exit_code == 1  # the conflict is still reported...
    assert report.outcome.applied == {"disable": 1}  # ...and the leaver loses access
    assert not active(channel, "ben@example.com")
    with channel.store() as store:
        [row] = store.failures().values()
    assert (row.action, "write-once" in row.cause) == ("conflict", True)


@pytest.mark.parametrize("target_accepts", [True, False])
def test_user_name_changes_update_renames_the_account_where_the_target_accepts(
    channel: Channel, target_accepts: bool
) -> None:
    tree = channel.tree
    ben = tree.add_user("ben", title="Engineer")
    channel.options["groups"] = False
    channel.options["user_name_changes"] = "update"
    channel.sync()
    before = channel.users()["ben@example.com"]["id"]
    if not target_accepts:
        channel.emulator.configure(user_name="immutable")
    tree.modify(ben, mail="benjamin@example.com")
    report = channel.sync()
    assert report.prepared.plan.conflicts == ()
    assert [dict(op.values) for op in report.prepared.plan.operations] == [
        {"userName": "benjamin@example.com", "emails.work": "benjamin@example.com"}
    ]
    if target_accepts:
        assert report.exit_code == 0
        assert channel.users()["benjamin@example.com"]["id"] == before
        assert channel.sync().prepared.plan.operations == ()
        with channel.store() as store:
            assert store.linked_users()[tree.guid(ben)].user_name == "benjamin@example.com"
    else:
        assert report.exit_code == 1
        [failure] = report.outcome.failed
        assert "mutability" in failure.cause
        assert set(channel.users()) == {"ben@example.com"}


def test_leaving_scope_directly_and_through_a_nested_scope_group_in_one_cycle(
    channel: Channel,
) -> None:
    """slapd's memberof and refint edit the users too: both departures must be seen."""
    tree = channel.tree
    anna, ben, cleo = (tree.add_user(n) for n in ("anna", "ben", "cleo"))
    inner = tree.add_group("contractors", [ben, cleo])
    scope = tree.add_group("atlassian-users", [anna, inner])
    tree.add_group("jira-developers", [anna, ben, cleo])
    channel.source["users"] = {"group_dn": scope, "nested": True}
    channel.source["groups"] = {"filter": "(&(objectClass=groupOfNames)(cn=jira-*))"}
    channel.sync()
    tree.remove_members(scope, [anna])  # directly
    tree.remove_members(inner, [ben])  # through the nested group
    report = channel.sync()
    assert mode(report) == "incremental"
    assert report.prepared.plan.summary() == {"disable": 2, "remove_members": 1}
    assert not active(channel, "anna@example.com")
    assert not active(channel, "ben@example.com")
    assert channel.member_names("jira-developers") == {"cleo@example.com"}


def test_a_user_who_leaves_scope_without_a_write_is_recorded_out_of_scope(
    channel: Channel,
) -> None:
    """With deprovision_users off nothing is sent for a leaver, yet the store must know he
    left: else an incremental cycle counts him as a member of the groups it touches."""
    tree = channel.tree
    anna, ben = tree.add_user("anna"), tree.add_user("ben")
    scope = tree.add_group("atlassian-users", [anna, ben])
    tree.add_group("jira-developers", [anna, ben])
    channel.source["users"] = {"group_dn": scope}
    channel.source["groups"] = {"filter": "(&(objectClass=groupOfNames)(cn=jira-*))"}
    channel.options["deprovision_users"] = False
    channel.sync()
    tree.remove_members(scope, [anna])
    channel.sync()
    with channel.store() as store:
        assert store.linked_ids(Kind.USER, in_scope=False) == {tree.guid(anna)}
    tree.modify(ben, title="lead")
    channel.sync()
    assert channel.member_names("jira-developers") == {"ben@example.com"}


# --- renames and nested groups, end to end at the target --------------------------------------


def test_a_user_renamed_while_in_groups_keeps_them_and_later_edits_still_arrive(
    channel: Channel,
) -> None:
    """A modrdn changes the DN every group lists (refint rewrites the member values): the
    user must stay linked and in his groups, and a later membership change must still find
    him by his new DN."""
    tree = channel.tree
    anna, ben = tree.add_user("anna"), tree.add_user("ben")
    tree.add_group("jira-developers", [anna, ben])
    tree.add_group("jira-leads", [anna])
    channel.source["groups"] = {"filter": "(&(objectClass=groupOfNames)(cn=jira-*))"}
    channel.sync()
    anna_id = channel.users()["anna@example.com"]["id"]

    renamed = tree.rename(anna, "uid=anna.smith")
    report = channel.sync()
    assert mode(report) == "incremental"
    assert report.prepared.plan.summary().keys() <= {"update"}  # no create, no membership
    users = channel.users()
    assert users["anna@example.com"]["id"] == anna_id
    assert channel.member_names("jira-developers") == {"anna@example.com", "ben@example.com"}
    assert channel.member_names("jira-leads") == {"anna@example.com"}

    tree.add_members(tree.group_dn("jira-leads"), [ben])
    tree.remove_members(tree.group_dn("jira-leads"), [renamed])
    moved = channel.sync()
    assert mode(moved) == "incremental"
    assert channel.member_names("jira-leads") == {"ben@example.com"}
    assert channel.member_names("jira-developers") == {"anna@example.com", "ben@example.com"}


def test_a_deleted_nested_subgroup_leaves_the_parents_flattened_members(
    channel: Channel,
) -> None:
    """Deleting a subgroup touches neither its users nor (in the same second, where refint
    rewrites the parent without a new entryCSN) anything a poll keys on: the parent must
    still lose the users it held only through the subgroup."""
    tree = channel.tree
    anna, ben, cleo = (tree.add_user(n) for n in ("anna", "ben", "cleo"))
    sub = tree.add_group("jira-contractors", [ben, cleo])
    tree.add_group("jira-all", [anna, sub, cleo])
    channel.source["groups"] = {
        "filter": "(&(objectClass=groupOfNames)(cn=jira-*))",
        "nested": True,
    }
    channel.sync()
    assert channel.member_names("jira-all") == {
        "anna@example.com",
        "ben@example.com",
        "cleo@example.com",
    }
    tree.delete(sub)
    report = channel.sync()
    assert mode(report) == "incremental"
    assert "jira-contractors" not in channel.groups()
    assert channel.member_names("jira-all") == {"anna@example.com", "cleo@example.com"}
    assert channel.sync().prepared.plan.operations == ()


def test_a_membership_change_two_levels_down_reaches_every_parent(channel: Channel) -> None:
    tree = channel.tree
    anna, ben = tree.add_user("anna"), tree.add_user("ben")
    leaf = tree.add_group("jira-leaf", [anna])
    middle = tree.add_group("jira-middle", [leaf])
    tree.add_group("jira-top", [middle])
    channel.source["groups"] = {
        "filter": "(&(objectClass=groupOfNames)(cn=jira-*))",
        "nested": True,
    }
    channel.sync()
    tree.add_members(leaf, [ben])
    report = channel.sync()
    assert mode(report) == "incremental"
    for name in ("jira-leaf", "jira-middle", "jira-top"):
        assert channel.member_names(name) == {"anna@example.com", "ben@example.com"}, name
