"""The planner: one test per rule of design.md's table, toggles, conflicts, and properties."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from scimsync.config import Options
from scimsync.model import (
    Action,
    DesiredGroup,
    DesiredUser,
    LinkedGroup,
    LinkedUser,
    Operation,
    Plan,
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
    return plan(inp, Options(**options))


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
    assert op.values["active"] is True
    # update_users off: linked, but nothing written
    assert only(run(inp, update_users=False)).values == {}


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
    assert (op.action, op.values.get("active")) == (A.LINK, False)


def test_update_sends_only_changed_attributes_and_removals() -> None:
    inp = make([du("u1", title="CEO", department="R&D")], [lu("u1", title="CFO", nickName="js")])
    op = only(run(inp))
    assert op.action is A.UPDATE
    assert op.values == {"title": "CEO", "department": "R&D"}
    assert op.removed == ("nickName",)
    assert op.target_id == "t-u1"


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
    assert only(run(inp)).values == {"title": "CEO", "active": True}
    assert run(inp, update_users=False).operations == ()


def test_username_case_change_is_ignored_but_a_real_change_is_a_conflict() -> None:
    same_mail = {"emails.work": "jsmith@example.com"}
    assert run(make([du("u1", "JSmith", True, **same_mail)], [lu("u1", "jsmith")])).operations == ()
    p = run(make([du("u1", "janet")], [lu("u1", "jsmith")]))
    assert p.operations == ()
    assert [(c.source_id, c.name) for c in p.conflicts] == [("u1", "janet")]
    assert "write-once" in p.conflicts[0].cause


@pytest.mark.parametrize(("remove", "expected"), [("disable", A.DISABLE), ("delete", A.DELETE)])
@pytest.mark.parametrize("trigger", ["deleted or left scope", "disabled"])
def test_deprovision_follows_remove_user_action(
    remove: str, expected: Action, trigger: str
) -> None:
    users = [du("u1", active=False)] if trigger == "disabled" else []
    op = only(run(make(users, [lu("u1")]), remove_user_action=remove))
    assert (op.action, op.kind, op.source_id, op.target_id) == (expected, "user", "u1", "t-u1")


def test_user_already_inactive_at_target_is_not_disabled_again() -> None:
    assert run(make([], [lu("u1", active=False)])).operations == ()
    assert run(make([du("u1", active=False)], [lu("u1", active=False)])).operations == ()


def test_deprovision_users_off_blocks_disable_and_delete() -> None:
    for action in ("disable", "delete"):
        inp = make([du("u1", active=False)], [lu("u1"), lu("u2")])
        assert run(inp, deprovision_users=False, remove_user_action=action).operations == ()


def test_partial_scope_does_not_deprovision_absent_users() -> None:
    assert run(make([], [lu("u1")], scope="partial")).operations == ()


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
    assert op.values == {"displayName": "Finance", "previousName": "Accounting"}


def test_rename_onto_a_name_taken_at_the_target_is_a_conflict() -> None:
    inp = make(
        groups=[dg("g1", "Finance")],
        linked_groups=[lg("g1", "Accounting")],
        target_groups={"finance": TargetRef("G9", "Finance")},
    )
    p = run(inp)
    assert p.operations == ()
    assert [c.source_id for c in p.conflicts] == ["g1"]


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


@pytest.mark.parametrize("scope", ["full", "partial"])
def test_group_deleted_or_out_of_scope_is_deleted_in_full_scope_only(scope: str) -> None:
    p = run(make(linked_groups=[lg("g1", "Eng")], scope=scope))
    assert actions(p) == ([("delete", "group", "g1")] if scope == "full" else [])


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
