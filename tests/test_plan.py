"""The planner: one test per rule of design.md's table, toggles, conflicts, and properties."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scimsync.model import (
    Action,
    DesiredGroup,
    DesiredUser,
    Kind,
    LinkedGroup,
    LinkedUser,
    Operation,
    Plan,
    PlanOptions,
    TargetRef,
)
from scimsync.plan import PlanInput, plan

A = Action


def du(sid: str, name: str | None = None, active: bool = True, **values: str) -> DesiredUser:
    name = name or sid
    return DesiredUser(
        sid, name, active, {"userName": name, "emails.work": f"{name}@example.com", **values}
    )


def lu(sid: str, name: str | None = None, active: bool = True, **values: str) -> LinkedUser:
    name = name or sid
    return LinkedUser(
        sid,
        f"t-{sid}",
        name,
        active,
        {"userName": name, "emails.work": f"{name}@example.com", **values},
    )


def dg(sid: str, name: str, *members: str) -> DesiredGroup:
    return DesiredGroup(sid, name, frozenset(members))


def lg(sid: str, name: str, *members: str) -> LinkedGroup:
    return LinkedGroup(sid, f"t-{sid}", name, frozenset(members))


def make(
    users: Sequence[DesiredUser] = (),
    linked: Sequence[LinkedUser] = (),
    groups: Sequence[DesiredGroup] = (),
    linked_groups: Sequence[LinkedGroup] = (),
    **kw: Any,
) -> PlanInput:
    kw.setdefault("target_users", {})
    kw.setdefault("target_groups", {})
    return PlanInput(
        desired_users={u.source_id: u for u in users},
        desired_groups={g.source_id: g for g in groups},
        linked_users={u.source_id: u for u in linked},
        linked_groups={g.source_id: g for g in linked_groups},
        **kw,
    )


def run(inp: PlanInput, **options: Any) -> Plan:
    return plan(inp, PlanOptions(**options))


def only(p: Plan) -> Operation:
    assert len(p.operations) == 1, p.operations
    return p.operations[0]


def actions(p: Plan) -> list[tuple[str, str, str]]:
    return [(op.action.value, op.kind, op.source_id) for op in p.operations]


# --- users -------------------------------------------------------------------------------


def test_user_found_at_target_is_adopted_with_one_link_carrying_mapped_values() -> None:
    inp = make(
        [du("u1", "jsmith", title="CFO")], target_users={"jsmith": TargetRef("T1", "jsmith")}
    )
    op = only(run(inp))
    assert (op.action, op.target_id, op.name) == (A.LINK, "T1", "jsmith")
    assert op.values == {"emails.work": "jsmith@example.com", "title": "CFO"}


def test_adoption_matches_username_case_insensitively_and_reenables() -> None:
    inp = make([du("u1", "JSmith")], target_users={"jsmith": TargetRef("T1", "jsmith", False)})
    op = only(run(inp))
    assert op.action is A.LINK
    assert op.active is True
    # update_users off: linked, but nothing written
    unwritten = only(run(inp, update_users=False))
    assert (unwritten.values, unwritten.active) == ({}, None)


def test_adoption_skips_create_only_attributes() -> None:
    user = DesiredUser(
        "u1",
        "a",
        True,
        {"userName": "a", "emails.work": "a@x", "externalId": "9"},
        frozenset({"externalId"}),
    )
    op = only(run(make([user], target_users={"a": TargetRef("T1", "a")})))
    assert "externalId" not in op.values


def test_adoption_by_external_id() -> None:
    inp = make(
        [du("u1", "new-name", externalId="E-1")], target_users={"e-1": TargetRef("T1", "old")}
    )
    assert only(run(inp, match_users_by="externalId")).target_id == "T1"
    assert only(run(inp)).action is A.CREATE  # by userName, nothing matches


def test_user_entering_scope_is_created_with_all_values() -> None:
    op = only(run(make([du("u1", "jsmith", title="CFO")])))
    assert op.action is A.CREATE
    assert op.values == {"userName": "jsmith", "emails.work": "jsmith@example.com", "title": "CFO"}


@pytest.mark.parametrize("provision", [False, True])
def test_disabled_user_is_created_only_with_provision_disabled_users(provision: bool) -> None:
    p = run(make([du("u1", active=False)]), provision_disabled_users=provision)
    assert actions(p) == ([("create", "user", "u1")] if provision else [])


def test_disabled_user_at_target_is_not_adopted_without_provision_disabled_users() -> None:
    inp = make([du("u1", "a", active=False)], target_users={"a": TargetRef("T1", "a")})
    assert run(inp).operations == ()
    op = only(run(inp, provision_disabled_users=True))
    assert (op.action, op.active) == (A.LINK, False)


def test_update_sends_only_changed_attributes_and_removals() -> None:
    inp = make([du("u1", title="CEO", department="R&D")], [lu("u1", title="CFO", nickName="js")])
    op = only(run(inp))
    assert op.action is A.UPDATE
    assert op.values == {"title": "CEO", "department": "R&D"}
    assert op.removed == ("nickName",)
    assert op.target_id == "t-u1"


def test_a_changed_value_alone_is_an_update() -> None:
    op = only(run(make([du("u1", title="CEO")], [lu("u1", title="CFO")])))
    assert (op.action, op.values, op.removed, op.active) == (A.UPDATE, {"title": "CEO"}, (), None)


def test_unchanged_user_needs_nothing() -> None:
    assert run(make([du("u1", title="CFO")], [lu("u1", title="CFO")])).operations == ()


def test_create_only_attributes_are_never_updated_or_removed() -> None:
    user = DesiredUser(
        "u1",
        "u1",
        True,
        {"userName": "u1", "emails.work": "u1@example.com", "externalId": "new"},
        frozenset({"externalId"}),
    )
    assert run(make([user], [lu("u1", externalId="old")])).operations == ()


def test_reenabled_user_is_updated_with_active_true() -> None:
    inp = make([du("u1", title="CEO")], [lu("u1", active=False, title="CFO")])
    update = only(run(inp))
    assert (update.values, update.active) == ({"title": "CEO"}, True)
    reenabled = only(run(make([du("u1")], [lu("u1", active=False)])))  # nothing else differs
    assert (reenabled.action, reenabled.values, reenabled.active) == (A.UPDATE, {}, True)
    assert run(inp, update_users=False).operations == ()


def test_username_case_change_is_ignored_but_a_real_change_is_a_conflict() -> None:
    same_mail = {"emails.work": "jsmith@example.com"}
    assert run(make([du("u1", "JSmith", True, **same_mail)], [lu("u1", "jsmith")])).operations == ()
    p = run(make([du("u1", "janet")], [lu("u1", "jsmith")]))
    assert p.operations == ()
    assert [(c.source_id, c.name) for c in p.conflicts] == [("u1", "janet")]
    assert "write-once" in p.conflicts[0].cause


def test_with_user_name_changes_update_a_new_username_is_sent() -> None:
    op = only(run(make([du("u1", "janet")], [lu("u1", "jsmith")]), user_name_changes="update"))
    assert (op.action, op.name, op.target_id) == (A.UPDATE, "janet", "t-u1")
    assert op.values == {"userName": "janet", "emails.work": "janet@example.com"}


def test_the_username_and_active_are_never_sent_as_values_or_removed() -> None:
    """userName changes only by its own rule; active only through op.active."""
    linked = LinkedUser("u1", "t-u1", "ann", True, {"userName": "old", "active": False})
    desired = DesiredUser("u1", "ann", True, {"userName": "ann", "active": True})
    assert run(make([desired], [linked])).operations == ()


@pytest.mark.parametrize(("remove", "expected"), [("disable", A.DISABLE), ("delete", A.DELETE)])
@pytest.mark.parametrize("trigger", ["deleted or left scope", "disabled"])
def test_deprovision_follows_remove_user_action(
    remove: str, expected: Action, trigger: str
) -> None:
    users = [du("u1", active=False)] if trigger == "disabled" else []
    op = only(run(make(users, [lu("u1", "ann")]), remove_user_action=remove))
    assert (op.action, op.kind, op.source_id, op.name, op.target_id) == (
        expected,
        "user",
        "u1",
        "ann",
        "t-u1",
    )


def test_user_already_inactive_at_target_is_not_disabled_again() -> None:
    assert run(make([], [lu("u1", active=False)])).operations == ()
    assert run(make([du("u1", active=False)], [lu("u1", active=False)])).operations == ()


def test_deprovision_users_off_blocks_disable_and_delete() -> None:
    for action in ("disable", "delete"):
        inp = make([du("u1", active=False)], [lu("u1"), lu("u2")])
        assert run(inp, deprovision_users=False, remove_user_action=action).operations == ()


def test_a_one_user_plan_does_not_deprovision_absent_users() -> None:
    assert run(make([], [lu("u1")], deprovision_missing=False)).operations == ()


def test_with_provision_disabled_users_a_disabled_user_is_deactivated_never_deleted() -> None:
    inp = make([du("u1", active=False)], [lu("u1")])
    op = only(run(inp, provision_disabled_users=True, remove_user_action="delete"))
    assert op.action is A.DISABLE
    # leaving scope still deletes
    gone = run(make([], [lu("u1")]), provision_disabled_users=True, remove_user_action="delete")
    assert only(gone).action is A.DELETE


def test_create_users_off_still_links() -> None:
    inp = make([du("u1", "a"), du("u2", "b")], target_users={"a": TargetRef("T1", "a")})
    assert actions(run(inp, create_users=False)) == [("link", "user", "u1")]


def test_update_users_off() -> None:
    assert run(make([du("u1", title="X")], [lu("u1")]), update_users=False).operations == ()


# --- conflicts ---------------------------------------------------------------------------


def test_duplicate_usernames_are_both_conflicts_even_if_only_case_differs() -> None:
    inp = make(
        [du("u1", "jsmith"), du("u2", "JSmith"), du("u3", "other")],
        target_users={"jsmith": TargetRef("T1", "jsmith")},
    )
    p = run(inp)
    assert actions(p) == [("create", "user", "u3")]
    assert sorted(c.source_id for c in p.conflicts) == ["u1", "u2"]
    assert all(c.kind == "user" for c in p.conflicts)


def test_username_held_by_another_linked_user_is_a_conflict() -> None:
    p = run(make([du("u2", "jsmith")], [lu("u1", "jsmith")]), remove_user_action="delete")
    assert actions(p) == [("delete", "user", "u1")]
    assert [c.source_id for c in p.conflicts] == ["u2"]


def test_a_user_and_a_group_may_share_a_name() -> None:
    p = run(make([du("u1", "ops")], groups=[dg("g1", "ops", "u1")]))
    assert p.conflicts == ()
    assert actions(p) == [
        ("create", "user", "u1"),
        ("create", "group", "g1"),
        ("add_members", "group", "g1"),
    ]


def test_two_groups_with_one_name_are_both_conflicts() -> None:
    p = run(make(groups=[dg("g1", "Team"), dg("g2", "team"), dg("g3", "Other")]))
    assert actions(p) == [("create", "group", "g3")]
    assert sorted(c.source_id for c in p.conflicts) == ["g1", "g2"]


# --- groups ------------------------------------------------------------------------------


def test_group_found_at_target_is_adopted_then_filled() -> None:
    inp = make(
        [du("u1")],
        [lu("u1")],
        [dg("g1", "Accounting", "u1")],
        target_groups={"accounting": TargetRef("G1", "Accounting")},
    )
    p = run(inp)
    assert actions(p) == [("link", "group", "g1"), ("add_members", "group", "g1")]
    assert p.operations[0].target_id == "G1"
    assert p.operations[1].members == ("u1",)


def test_adopted_group_loses_members_that_are_not_ours_when_target_members_are_known() -> None:
    inp = make(
        [du("u1")],
        [lu("u1")],
        [dg("g1", "Accounting", "u1")],
        target_groups={"accounting": TargetRef("G1", "Accounting")},
        target_members={"g1": frozenset({"t-u1", "HAND"})},
    )
    p = run(inp)
    assert actions(p) == [("link", "group", "g1"), ("remove_members", "group", "g1")]
    assert p.operations[1].target_members == ("HAND",)


def test_new_group_is_created_then_given_the_members_scimsync_provisions() -> None:
    users = [du("u1"), du("u2"), du("u3", active=False)]
    p = run(make(users, [lu("u2")], [dg("g1", "Eng", "u1", "u2", "u3")]))
    assert actions(p) == [
        ("create", "user", "u1"),
        ("create", "group", "g1"),
        ("add_members", "group", "g1"),
    ]
    assert p.operations[2].members == ("u1", "u2")  # u3 is disabled and not provisioned


def test_renamed_group_is_renamed_in_place() -> None:
    op = only(run(make(groups=[dg("g1", "Finance")], linked_groups=[lg("g1", "Accounting")])))
    assert (op.action, op.name, op.target_id) == (A.RENAME, "Finance", "t-g1")
    assert (op.values, op.previous_name) == ({"displayName": "Finance"}, "Accounting")
    assert op.to_json()["values"] == {"displayName": "Finance", "previousName": "Accounting"}


def test_rename_onto_a_name_taken_at_the_target_is_a_conflict() -> None:
    inp = make(
        groups=[dg("g1", "Finance")],
        linked_groups=[lg("g1", "Accounting")],
        target_groups={"finance": TargetRef("G9", "Finance")},
    )
    p = run(inp)
    assert p.operations == ()
    [conflict] = p.conflicts
    assert (conflict.kind, conflict.source_id, conflict.name) == (Kind.GROUP, "g1", "Finance")
    assert conflict.cause == (
        "cannot rename from 'Accounting': the target holds another group of that name that "
        "scimsync does not manage"
    )


def test_a_group_whose_rename_is_refused_still_gets_its_members_under_its_old_name() -> None:
    inp = make(
        [du("u1")],
        [lu("u1")],
        groups=[dg("g1", "Finance", "u1")],
        linked_groups=[lg("g1", "Accounting")],
        target_groups={"finance": TargetRef("G9", "Finance")},
    )
    add = only(run(inp))
    assert (add.action, add.name, add.target_id, add.members) == (
        A.ADD_MEMBERS,
        "Accounting",
        "t-g1",
        ("u1",),
    )
    renamed = run(make([du("u1")], [lu("u1")], [dg("g1", "Finance", "u1")], [lg("g1", "Acc")]))
    assert [(o.action, o.name, o.target_id) for o in renamed.operations] == [
        (A.RENAME, "Finance", "t-g1"),
        (A.ADD_MEMBERS, "Finance", "t-g1"),
    ]


def test_membership_changes_add_and_remove() -> None:
    inp = make(
        [du("u1"), du("u2"), du("u3")],
        [lu("u1"), lu("u2"), lu("u3")],
        [dg("g1", "Eng", "u1", "u3")],
        [lg("g1", "Eng", "u1", "u2")],
    )
    p = run(inp)
    assert actions(p) == [("add_members", "group", "g1"), ("remove_members", "group", "g1")]
    assert (p.operations[0].members, p.operations[1].members) == (("u3",), ("u2",))


def test_full_reconciliation_overwrites_members_added_or_removed_at_the_target() -> None:
    inp = make(
        [du("u1"), du("u2"), du("u3")],
        [lu("u1"), lu("u2"), lu("u3")],
        [dg("g1", "Eng", "u1", "u2")],
        [lg("g1", "Eng", "u1", "u2")],
        # at the target: u2 removed by hand, u3 (ours) and HAND (not ours) added
        target_members={"g1": frozenset({"t-u1", "t-u3", "HAND"})},
    )
    add, remove = run(inp).operations
    assert (add.action, add.members) == (A.ADD_MEMBERS, ("u2",))
    assert (remove.action, remove.members, remove.target_members) == (
        A.REMOVE_MEMBERS,
        ("u3",),
        ("HAND",),
    )


def test_an_incremental_write_keeps_members_linked_outside_the_view_and_drops_strangers() -> None:
    """A group read at the target in an incremental plan: u8 and u9 are linked but outside
    this plan's universe (member_links). u8 stays, being a directory member; u9 goes, as
    the directory says; HAND, linked to nothing, goes as a stranger."""
    inp = make(
        [du("u1")],
        [lu("u1")],
        [dg("g1", "Eng", "u1", "u8")],
        [lg("g1", "Eng", "u8", "u9")],
        target_members={"g1": frozenset({"t-u8", "t-u9", "HAND"})},
        member_links={"t-u8": "u8", "t-u9": "u9"},
        other_members=frozenset({"u8", "u9"}),
    )
    add, remove = run(inp).operations
    assert (add.action, add.members) == (A.ADD_MEMBERS, ("u1",))
    assert (remove.action, remove.members, remove.target_members) == (
        A.REMOVE_MEMBERS,
        ("u9",),
        ("HAND",),
    )


def test_disabled_user_keeps_its_memberships_but_a_deleted_one_is_removed_first() -> None:
    inp = make(
        [du("u1", active=False)], [lu("u1")], [dg("g1", "Eng", "u1")], [lg("g1", "Eng", "u1")]
    )
    assert actions(run(inp)) == [("disable", "user", "u1")]
    p = run(inp, remove_user_action="delete")
    assert actions(p) == [("remove_members", "group", "g1"), ("delete", "user", "u1")]


def test_user_leaving_scope_leaves_its_groups() -> None:
    inp = make([], [lu("u1")], [dg("g1", "Eng")], [lg("g1", "Eng", "u1")])
    assert actions(run(inp)) == [("remove_members", "group", "g1"), ("disable", "user", "u1")]


@pytest.mark.parametrize("deprovision_missing", [True, False])
def test_group_deleted_or_out_of_scope_is_deleted_only_when_missing_means_gone(
    deprovision_missing: bool,
) -> None:
    p = run(make(linked_groups=[lg("g1", "Eng")], deprovision_missing=deprovision_missing))
    assert actions(p) == ([("delete", "group", "g1")] if deprovision_missing else [])
    if deprovision_missing:
        assert (p.operations[0].name, p.operations[0].target_id) == ("Eng", "t-g1")


def test_groups_off_touches_no_group() -> None:
    inp = make([du("u1")], [lu("u1")], [dg("g2", "New", "u1")], [lg("g1", "Old", "u1")])
    assert run(inp, groups=False).operations == ()


def test_skipped_records_get_no_operations() -> None:
    inp = make(
        [du("u1", title="X"), du("u2")],
        [lu("u1"), lu("u3")],
        [dg("g1", "Eng", "u1", "u2")],
        [lg("g2", "Old")],
        skip=frozenset({("user", "u1"), ("user", "u2"), ("user", "u3"), ("group", "g2")}),
    )
    assert actions(run(inp)) == [("create", "group", "g1")]


def test_a_skipped_group_does_not_stop_the_groups_after_it() -> None:
    inp = make(groups=[dg("g1", "Skipped"), dg("g2", "New")], skip=frozenset({(Kind.GROUP, "g1")}))
    assert actions(run(inp)) == [("create", "group", "g2")]


def test_a_user_adopted_this_cycle_already_in_a_linked_group_at_the_target_stays() -> None:
    inp = make(
        [du("u1", "ann")],
        groups=[dg("g1", "Eng", "u1")],
        linked_groups=[lg("g1", "Eng")],
        target_users={"ann": TargetRef("T-ANN", "ann")},
        target_members={"g1": frozenset({"T-ANN"})},
    )
    # Not an extra to remove, and not a member to add: the adoption makes it ours.
    assert actions(run(inp)) == [("link", "user", "u1")]


def test_linked_groups_membership_operations_name_the_group_at_the_target() -> None:
    inp = make(
        [du("u1"), du("u2")],
        [lu("u1"), lu("u2")],
        [dg("g1", "Eng", "u1")],
        [lg("g1", "Eng", "u2")],
        target_members={"g1": frozenset({"t-u2", "HAND"})},
    )
    p = run(inp)
    assert [(o.action, o.name, o.target_id) for o in p.operations] == [
        (A.ADD_MEMBERS, "Eng", "t-g1"),
        (A.REMOVE_MEMBERS, "Eng", "t-g1"),
    ]
    assert (p.operations[1].members, p.operations[1].target_members) == (("u2",), ("HAND",))


def test_order_is_deterministic_whatever_the_input_order() -> None:
    users = [du(f"u{i}", f"name{i % 7}{i}", title=str(i)) for i in range(30)]
    linked = [lu(f"u{i}") for i in range(0, 40, 3)]
    groups = [dg(f"g{i}", f"G{i}", *(f"u{j}" for j in range(i, 30, 5))) for i in range(6)]
    plans: list[list[dict[str, object]]] = []
    for seed in range(5):
        rng = random.Random(seed)
        for items in (users, linked, groups):
            rng.shuffle(items)
        plans.append([op.to_json() for op in run(make(users, linked, groups)).operations])
    assert all(p == plans[0] for p in plans)
    assert len(plans[0]) > 30


# --- properties: a tiny in-memory target and store -----------------------------------------
#
# `World` holds what the target holds and what the store links; `observe` builds the
# planner's input the way cycle.observe.observe_everything does (linked values are what the
# target shows, unlinked objects are found by lower-cased name); `apply` follows apply.Executor.

NAMES = ["ann", "Ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal", "ivy"]
GROUP_NAMES = ["Eng", "eng", "Ops", "Sales", "HR", "Legal", "IT"]


@dataclass
class TUser:
    user_name: str
    active: bool
    values: dict[str, str]


@dataclass
class TGroup:
    name: str
    members: set[str]


@dataclass
class World:
    desired_users: dict[str, DesiredUser]
    desired_groups: dict[str, DesiredGroup]
    users: dict[str, TUser]  # target id -> account
    groups: dict[str, TGroup]
    user_links: dict[str, LinkedUser]  # as the store records them
    group_links: dict[str, LinkedGroup]
    skip: frozenset[tuple[Kind, str]]
    deprovision_missing: bool
    next_id: int = 0

    def new_id(self, prefix: str) -> str:
        self.next_id += 1
        return f"{prefix}{self.next_id}"

    def observe(self) -> PlanInput:
        linked_users = {}
        for sid, link in self.user_links.items():
            seen = self.users[link.target_id]
            keys = set(link.values) | set(self.desired_users.get(sid, du(sid)).values)
            drift = {k: seen.values[k] for k in keys if k in seen.values}
            linked_users[sid] = replace(link, values=drift, active=seen.active)
        ours_u = {link.target_id for link in self.user_links.values()}
        ours_g = {link.target_id: sid for sid, link in self.group_links.items()}
        target_groups = {
            g.name.lower(): TargetRef(tid, g.name)
            for tid, g in self.groups.items()
            if tid not in ours_g
        }
        members = {sid: frozenset(self.groups[tid].members) for tid, sid in ours_g.items()}
        for sid, group in self.desired_groups.items():  # groups about to be adopted
            found = target_groups.get(group.display_name.lower())
            if sid not in self.group_links and found is not None:
                members[sid] = frozenset(self.groups[found.target_id].members)
        return PlanInput(
            desired_users=self.desired_users,
            desired_groups=self.desired_groups,
            linked_users=linked_users,
            linked_groups=dict(self.group_links),
            target_users={
                u.user_name.lower(): TargetRef(tid, u.user_name, u.active)
                for tid, u in self.users.items()
                if tid not in ours_u
            },
            target_groups=target_groups,
            target_members=members,
            skip=self.skip,
            deprovision_missing=self.deprovision_missing,
        )

    def apply(self, the_plan: Plan) -> None:
        for op in the_plan.operations:  # already in the executor's phase order
            getattr(self, f"_{op.kind}_{op.action.value}")(op)

    def _pushed(self, op: Operation, before: dict[str, str]) -> dict[str, str]:
        values = {**before, **{k: str(v) for k, v in op.values.items()}}
        return {k: v for k, v in values.items() if k not in op.removed}

    def _write(self, tid: str, op: Operation) -> None:
        account = self.users[tid]
        if op.active is not None:
            account.active = op.active
        for key, value in op.values.items():
            if key != "userName":
                account.values[key] = str(value)
        for key in op.removed:
            account.values.pop(key, None)

    def _user_create(self, op: Operation) -> None:
        desired = self.desired_users[op.source_id]
        assert all(u.user_name.lower() != desired.user_name.lower() for u in self.users.values())
        tid = self.new_id("U")
        values = {k: str(v) for k, v in op.values.items()}
        self.users[tid] = TUser(desired.user_name, desired.active, values)
        pushed = self._pushed(op, {})
        self.user_links[op.source_id] = LinkedUser(
            op.source_id, tid, desired.user_name, desired.active, pushed
        )

    def _user_link(self, op: Operation) -> None:
        assert op.target_id is not None
        assert op.target_id not in {link.target_id for link in self.user_links.values()}
        desired = self.desired_users[op.source_id]
        self._write(op.target_id, op)
        active = desired.active if op.active is None else op.active
        self.user_links[op.source_id] = LinkedUser(
            op.source_id, op.target_id, desired.user_name, active, self._pushed(op, {})
        )

    def _user_update(self, op: Operation) -> None:
        link = self.user_links[op.source_id]
        self._write(link.target_id, op)
        active = link.active if op.active is None else op.active
        pushed = self._pushed(op, {k: str(v) for k, v in link.values.items()})
        self.user_links[op.source_id] = replace(link, active=active, values=pushed)

    def _user_disable(self, op: Operation) -> None:
        link = self.user_links[op.source_id]
        self.users[link.target_id].active = False
        self.user_links[op.source_id] = replace(link, active=False)

    def _user_delete(self, op: Operation) -> None:
        link = self.user_links.pop(op.source_id)
        del self.users[link.target_id]
        for group in self.groups.values():
            group.members.discard(link.target_id)

    def _group_create(self, op: Operation) -> None:
        assert all(g.name.lower() != op.name.lower() for g in self.groups.values())
        tid = self.new_id("G")
        self.groups[tid] = TGroup(op.name, set())
        self.group_links[op.source_id] = LinkedGroup(op.source_id, tid, op.name, frozenset())

    def _group_link(self, op: Operation) -> None:
        assert op.target_id is not None
        assert op.target_id not in {link.target_id for link in self.group_links.values()}
        ours = {link.target_id: sid for sid, link in self.user_links.items()}
        members = frozenset(ours[t] for t in self.groups[op.target_id].members if t in ours)
        self.group_links[op.source_id] = LinkedGroup(op.source_id, op.target_id, op.name, members)

    def _group_rename(self, op: Operation) -> None:
        link = self.group_links[op.source_id]
        others = [g for tid, g in self.groups.items() if tid != link.target_id]
        assert all(g.name.lower() != op.name.lower() for g in others)
        self.groups[link.target_id].name = op.name
        self.group_links[op.source_id] = replace(link, display_name=op.name)

    def _group_add_members(self, op: Operation) -> None:
        link = self.group_links[op.source_id]
        ids = {self.user_links[m].target_id for m in op.members}  # KeyError: member not created
        self.groups[link.target_id].members |= ids
        self.group_links[op.source_id] = replace(
            link, member_source_ids=link.member_source_ids | frozenset(op.members)
        )

    def _group_remove_members(self, op: Operation) -> None:
        link = self.group_links[op.source_id]
        ids = {self.user_links[m].target_id for m in op.members if m in self.user_links}
        self.groups[link.target_id].members -= ids | set(op.target_members)
        self.group_links[op.source_id] = replace(
            link, member_source_ids=link.member_source_ids - frozenset(op.members)
        )

    def _group_delete(self, op: Operation) -> None:
        link = self.group_links.pop(op.source_id)
        del self.groups[link.target_id]


_MOSTLY = st.sampled_from([True, True, True, False])
_VALUES = st.dictionaries(
    st.sampled_from(["title", "department", "nickName"]), st.sampled_from(["a", "b"]), max_size=3
)
_OPTIONS = st.builds(
    PlanOptions,
    create_users=_MOSTLY,
    update_users=_MOSTLY,
    deprovision_users=_MOSTLY,
    provision_disabled_users=st.booleans(),
    remove_user_action=st.sampled_from(["disable", "delete"]),
    groups=_MOSTLY,
)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    """Small worlds where names often collide, links often agree, and the target drifts."""
    sids = [f"u{i}" for i in range(6)]
    desired_users = {}
    for sid in draw(st.lists(st.sampled_from(sids), unique=True, max_size=6)):
        name = draw(st.sampled_from(NAMES))
        values = {"userName": name, "emails.work": f"{name}@x", **draw(_VALUES)}
        create_only = frozenset(draw(st.sets(st.sampled_from(["title"]))))
        desired_users[sid] = DesiredUser(sid, name, draw(_MOSTLY), values, create_only)
    users: dict[str, TUser] = {}
    user_links: dict[str, LinkedUser] = {}

    def account(name: str) -> str | None:
        """A target account named `name`, unless the name is taken (the target refuses)."""
        if any(u.user_name.lower() == name.lower() for u in users.values()):
            return None
        tid = f"T{len(users)}"
        users[tid] = TUser(name, draw(_MOSTLY), {"userName": name, **draw(_VALUES)})
        return tid

    for sid in draw(st.lists(st.sampled_from([*desired_users, *sids]), unique=True, max_size=4)):
        keep_name = sid in desired_users and draw(_MOSTLY)
        name = desired_users[sid].user_name if keep_name else draw(st.sampled_from(NAMES))
        tid = account(name)
        if tid is not None:
            pushed = draw(_VALUES) if draw(st.booleans()) else dict(users[tid].values)
            user_links[sid] = LinkedUser(sid, tid, name, users[tid].active, pushed)
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=3)):
        account(name)  # not linked: adoptable, or foreign

    gsids = [f"g{i}" for i in range(5)]
    in_scope = sorted(desired_users) or ["none"]
    desired_groups = {
        sid: DesiredGroup(
            sid,
            draw(st.sampled_from(GROUP_NAMES)),
            frozenset(draw(st.sets(st.sampled_from(in_scope)))) & desired_users.keys(),
        )
        for sid in draw(st.lists(st.sampled_from(gsids), unique=True, max_size=4))
    }
    groups: dict[str, TGroup] = {}
    group_links: dict[str, LinkedGroup] = {}

    def group(name: str) -> str | None:
        if any(g.name.lower() == name.lower() for g in groups.values()):
            return None
        tid = f"TG{len(groups)}"
        groups[tid] = TGroup(name, draw(st.sets(st.sampled_from([*users, "HAND"]))))
        return tid

    for sid in draw(st.lists(st.sampled_from([*desired_groups, *gsids]), unique=True, max_size=3)):
        keep_name = sid in desired_groups and draw(st.booleans())
        name = desired_groups[sid].display_name if keep_name else draw(st.sampled_from(GROUP_NAMES))
        tid = group(name)
        if tid is not None:
            ours = {link.target_id: s for s, link in user_links.items()}
            actual = frozenset(ours[t] for t in groups[tid].members if t in ours)
            recorded = (
                actual
                if draw(st.booleans())
                else frozenset(draw(st.sets(st.sampled_from(sorted(user_links) or ["u0"]))))
            )
            group_links[sid] = LinkedGroup(sid, tid, name, recorded)
    for name in draw(st.lists(st.sampled_from(GROUP_NAMES), max_size=2)):
        group(name)

    everything: list[tuple[Kind, str]] = [(Kind.USER, s) for s in sids]
    everything += [(Kind.GROUP, g) for g in gsids]
    skip = frozenset(draw(st.sets(st.sampled_from(everything), max_size=1)))
    gone: bool = draw(st.sampled_from([True, True, False]))  # deprovision_missing
    return World(desired_users, desired_groups, users, groups, user_links, group_links, skip, gone)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), options=_OPTIONS)
def test_applying_a_plan_then_planning_again_gives_nothing(
    world: World, options: PlanOptions
) -> None:
    first = plan(world.observe(), options)
    world.apply(first)
    later = plan(world.observe(), options)
    if not first.conflicts:
        assert later.operations == (), (first, later)
    # A conflict over a name that this cycle frees (a deletion, a rename) clears next
    # cycle; a chain of them clears one link per cycle.
    for _ in range(len(first.conflicts)):
        world.apply(later)
        later = plan(world.observe(), options)
    assert later.operations == (), (first, later)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), options=_OPTIONS)
def test_no_plan_touches_a_target_object_neither_linked_nor_matched(
    world: World, options: PlanOptions
) -> None:
    inp = world.observe()
    the_plan = plan(inp, options)
    known = {link.target_id for link in inp.linked_users.values()}
    known |= {link.target_id for link in inp.linked_groups.values()}
    wanted_users = {d.user_name.lower() for d in inp.desired_users.values()}
    wanted_groups = {d.display_name.lower() for d in inp.desired_groups.values()}
    matched = {ref.target_id for key, ref in inp.target_users.items() if key in wanted_users}
    matched |= {ref.target_id for key, ref in inp.target_groups.items() if key in wanted_groups}
    members_seen: set[str] = set().union(*inp.target_members.values())
    for op in the_plan.operations:
        assert op.target_id is None or op.target_id in known | matched, op
        assert set(op.target_members) <= members_seen, op
        if op.action is Action.LINK:
            assert op.target_id in matched
        if (op.kind, op.source_id) in inp.skip:
            raise AssertionError(f"skipped record planned: {op}")


def test_adoption_deactivates_only_when_deprovisioning_is_allowed() -> None:
    """A disabled user adopted from an active account: deactivating it is deprovisioning,
    which deprovision_users governs (update_users governs only re-enabling)."""
    inp = make([du("u1", "a", active=False)], target_users={"a": TargetRef("T1", "a", True)})
    allowed = only(run(inp, provision_disabled_users=True))
    assert allowed.active is False
    held = only(run(inp, provision_disabled_users=True, deprovision_users=False))
    assert held.active is None
    adopted = only(run(inp, provision_disabled_users=True, update_users=False))
    assert (adopted.values, adopted.active) == ({}, False)


def test_adoption_sends_only_what_differs_from_the_target_and_clears_the_rest() -> None:
    found = TargetRef(
        "T1", "a", True, {"emails.work": "a@example.com", "title": "Old", "nickName": "x"}
    )
    op = only(run(make([du("u1", "a", title="New")], target_users={"a": found})))
    assert dict(op.values) == {"title": "New"}
    assert op.removed == ("nickName",)


# --- protected groups ----------------------------------------------------------------------

PROTECTED = ("site-admins*", "confluence-users*")


def test_a_protected_group_is_never_created_renamed_into_written_or_deleted() -> None:
    inp = make(
        [du("u1")],
        [lu("u1")],
        [
            dg("g1", "Confluence-Users-acme", "u1"),  # would be created
            dg("g2", "site-admins", "u1"),  # a linked group renamed into a protected name
            dg("g4", "eng", "u1"),  # not protected
        ],
        [lg("g2", "old-name"), lg("g3", "confluence-users")],  # g3: gone from the directory
    )
    p = run(inp, protected_groups=PROTECTED)
    assert actions(p) == [("create", "group", "g4"), ("add_members", "group", "g4")]
    assert [(c.source_id, c.name) for c in p.protected] == [
        ("g1", "Confluence-Users-acme"),
        ("g3", "confluence-users"),
        ("g2", "site-admins"),
    ]
    assert "'confluence-users*'" in p.protected[0].cause
    assert p.conflicts == ()  # left alone is not an error
    assert {c.kind for c in p.protected} == {Kind.GROUP}


def test_a_protected_group_takes_no_part_in_name_conflicts() -> None:
    # g1 is protected by its linked name; its new name clashing with g2's is not g2's problem.
    inp = make(groups=[dg("g1", "Eng"), dg("g2", "eng")], linked_groups=[lg("g1", "site-admins")])
    p = run(inp, protected_groups=PROTECTED)
    assert (p.conflicts, actions(p)) == ((), [("create", "group", "g2")])


def test_a_group_the_target_holds_under_a_protected_name_is_not_adopted() -> None:
    inp = make(
        [du("u1")],
        [lu("u1")],
        [dg("g1", "site-admins", "u1")],
        target_groups={"site-admins": TargetRef("TG", "site-admins")},
    )
    assert run(inp, protected_groups=PROTECTED).operations == ()
    assert run(inp).operations == ()  # the default protects site-admins too
    adopted = run(inp, protected_groups=())  # no patterns: protection is off
    assert actions(adopted) == [("link", "group", "g1"), ("add_members", "group", "g1")]


def test_every_conflict_names_its_record_and_why() -> None:
    """The causes are what `plan` and `status` print: each says which rule and which others."""
    users = [
        du("u1", "ann"),
        du("u2", "Ann"),
        du("u3", "ANN"),  # three share a userName, whatever the case
        du("u4", "bo", externalId="E1"),
        du("u5", "cy", externalId="e1"),  # only under match_users_by: externalId
        du("u14", "fay", externalId="E1"),
        du("u6", "dee-new"),  # renamed: write-once
        du("u7", "eve"),  # held by u8's link
        du("u9", "Straße"),  # not the same name as STRASSE: case-folding is lower()
        du("u10", "STRASSE"),
        du("u12", "zed"),
        du("u13", "Zed"),  # a second shared name: its conflicts name only its own
    ]
    linked = [lu("u6", "dee"), lu("u8", "EVE")]
    groups = [dg("g1", ""), dg("g2", ""), dg("g3", "Ops"), dg("g4", "ops"), dg("g5", "OPS")]
    groups += [dg("g6", "Sales"), dg("g8", "Straße"), dg("g9", "STRASSE")]
    linked_groups = [lg("g7", "sales")]
    conflicts = run(
        make(users, linked, groups, linked_groups), match_users_by="externalId"
    ).conflicts
    assert sorted((c.kind, c.source_id, c.name, c.cause) for c in conflicts) == sorted(
        [
            (Kind.GROUP, "g1", "", "the group has no name"),
            (Kind.GROUP, "g2", "", "the group has no name"),
            (Kind.GROUP, "g3", "Ops", "displayName is also used by g4, g5"),
            (Kind.GROUP, "g4", "ops", "displayName is also used by g3, g5"),
            (Kind.GROUP, "g5", "OPS", "displayName is also used by g3, g4"),
            (Kind.GROUP, "g6", "Sales", "displayName is held by the group linked to g7"),
            (Kind.USER, "u1", "ann", "userName is also mapped from u2, u3"),
            (Kind.USER, "u2", "Ann", "userName is also mapped from u1, u3"),
            (Kind.USER, "u3", "ANN", "userName is also mapped from u1, u2"),
            (Kind.USER, "u12", "zed", "userName is also mapped from u13"),
            (Kind.USER, "u13", "Zed", "userName is also mapped from u12"),
            (Kind.USER, "u14", "fay", "externalId is also mapped from u4, u5"),
            (Kind.USER, "u4", "bo", "externalId is also mapped from u5, u14"),
            (Kind.USER, "u5", "cy", "externalId is also mapped from u4, u14"),
            (
                Kind.USER,
                "u6",
                "dee-new",
                "userName changed from 'dee'; userName is write-once at the target "
                "(options.user_name_changes: conflict)",
            ),
            (Kind.USER, "u7", "eve", "userName is held by the account linked to u8"),
        ]
    )
    by_external_id = run(make(users, linked, groups, linked_groups), match_users_by="externalId")
    planned = {op.source_id for op in by_external_id.operations}
    assert planned & {c.source_id for c in conflicts} == set()  # a conflict is never written
    by_user_name = run(make(users, linked, groups, linked_groups)).conflicts
    assert "u4" not in {c.source_id for c in by_user_name}


def test_without_an_external_id_a_user_is_never_matched_by_one() -> None:
    # An account at the target with no externalId has the empty key; so has this user.
    inp = make([du("u1", "ann")], target_users={"": TargetRef("T-NONE", "someone")})
    assert actions(run(inp, match_users_by="externalId")) == [("create", "user", "u1")]


def test_a_linked_user_in_conflict_is_still_added_to_its_groups() -> None:
    # Its userName changed (a conflict); the account it is linked to stays ours.
    inp = make([du("u1", "ann-new")], [lu("u1", "ann")], [dg("g1", "Eng", "u1")], [lg("g1", "Eng")])
    p = run(inp)
    add = only(p)
    assert (add.action, add.members, [c.source_id for c in p.conflicts]) == (
        A.ADD_MEMBERS,
        ("u1",),
        ["u1"],
    )


def test_a_linked_group_does_not_stop_the_groups_after_it() -> None:
    inp = make(groups=[dg("g1", "Eng"), dg("g2", "New")], linked_groups=[lg("g1", "Eng")])
    assert actions(run(inp)) == [("create", "group", "g2")]


def test_a_conflicting_or_skipped_linked_user_keeps_its_groups() -> None:
    renamed, skipped = lu("u1", "ann"), lu("u2", "bo", active=False)
    inp = make(
        [du("u1", "ann-new"), du("u2", "bo", active=False)],
        [renamed, skipped],
        [dg("g1", "Eng", "u1", "u2")],
        [lg("g1", "Eng", "u1", "u2")],
        skip=frozenset({(Kind.USER, "u2")}),
    )
    p = run(inp, provision_disabled_users=True)
    assert p.operations == ()  # no removal from g1, no disable of the skipped u2
    assert [c.source_id for c in p.conflicts] == ["u1"]
