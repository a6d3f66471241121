"""The safety threshold: what it holds, what it lets through, and why."""

from __future__ import annotations

from scimsync.config import Options
from scimsync.guard import GuardVerdict, guard
from scimsync.model import Action, Conflict, Operation, Plan


def op(action: Action, kind: str = "user", sid: str = "u1", **kw: object) -> Operation:
    return Operation(action, kind, sid, sid, **kw)  # type: ignore[arg-type]


def disables(n: int) -> list[Operation]:
    return [op(Action.DISABLE, sid=f"u{i}") for i in range(n)]


def test_within_the_limit_everything_is_allowed() -> None:
    the_plan = Plan((op(Action.CREATE, sid="new"), *disables(3)))
    verdict = guard(
        the_plan, linked_user_count=100, options=Options(max_deletions=3), source_user_count=97
    )
    assert not verdict.blocked
    assert verdict.reason is None
    assert verdict.held == ()
    assert verdict.allowed == the_plan


def test_over_the_limit_deprovisioning_is_held_and_the_rest_goes_ahead() -> None:
    create = op(Action.CREATE, sid="new")
    group_delete = op(Action.DELETE, "group", "g1")
    the_plan = Plan((create, *disables(3), group_delete), (Conflict("user", "x", "x", "dup"),))
    verdict = guard(the_plan, 100, Options(max_deletions=3), 96)
    assert verdict.blocked
    assert verdict.reason is not None
    assert "4 disables and deletes exceed max_deletions" in verdict.reason
    assert verdict.allowed.operations == (create,)
    assert verdict.allowed.conflicts == the_plan.conflicts
    assert verdict.held == (*disables(3), group_delete)


def test_percentage_limit_counts_linked_users() -> None:
    assert not guard(Plan(tuple(disables(5))), 100, Options(max_deletions="5%"), 95).blocked
    assert guard(Plan(tuple(disables(6))), 100, Options(max_deletions="5%"), 94).blocked


def test_member_removals_of_users_being_deleted_are_held_with_the_deletion() -> None:
    delete = op(Action.DELETE, sid="u1")
    removal = op(
        Action.REMOVE_MEMBERS, "group", "g1", members=("u1", "u2"), target_members=("HAND",)
    )
    only_deleted = op(Action.REMOVE_MEMBERS, "group", "g2", members=("u1",))
    verdict = guard(Plan((delete, removal, only_deleted)), 10, Options(max_deletions=0), 9)
    assert verdict.blocked
    assert verdict.allowed.operations == (
        op(Action.REMOVE_MEMBERS, "group", "g1", members=("u2",), target_members=("HAND",)),
    )
    assert verdict.held == (
        delete,
        op(Action.REMOVE_MEMBERS, "group", "g1", members=("u1",)),
        only_deleted,
    )


def test_an_empty_directory_read_while_users_are_linked_is_held_whatever_the_limit() -> None:
    removal = op(Action.REMOVE_MEMBERS, "group", "g1", members=("u1",))
    rename = op(Action.RENAME, "group", "g2")
    the_plan = Plan((rename, removal, *disables(2)))
    verdict = guard(the_plan, 2, Options(max_deletions=1000), source_user_count=0)
    assert verdict.blocked
    assert verdict.reason == "directory returned no users while 2 are linked"
    assert verdict.allowed.operations == (rename,)
    assert verdict.held == (removal, *disables(2))


def test_an_empty_directory_on_a_first_run_is_fine() -> None:
    assert not guard(Plan(()), 0, Options(), 0).blocked


def test_allow_lets_everything_through() -> None:
    the_plan = Plan(tuple(disables(100)))
    verdict = GuardVerdict.allow(the_plan)
    assert (verdict.blocked, verdict.allowed, verdict.held) == (False, the_plan, ())


def test_member_removals_of_users_held_as_disables_are_held_with_them() -> None:
    """Users leaving scope over the limit keep their groups: a removal takes away the
    product access granted through the group as surely as the disable does."""
    leaving = disables(3)
    removal = op(Action.REMOVE_MEMBERS, "group", "g1", members=("u0", "u1", "u2", "other"))
    add = op(Action.ADD_MEMBERS, "group", "g1", members=("new",))
    verdict = guard(Plan((*leaving, add, removal)), 10, Options(max_deletions=2), 7)
    assert verdict.blocked
    assert verdict.allowed.operations == (
        add,
        op(Action.REMOVE_MEMBERS, "group", "g1", members=("other",)),
    )
    assert verdict.held == (
        *leaving,
        op(Action.REMOVE_MEMBERS, "group", "g1", members=("u0", "u1", "u2")),
    )


def test_a_split_removal_keeps_the_removal_of_members_not_ours() -> None:
    """Only held users' removals wait: members added by hand at the target still go."""
    removal = op(Action.REMOVE_MEMBERS, "group", "g1", members=("u0",), target_members=("HAND",))
    verdict = guard(Plan((*disables(1), removal)), 10, Options(max_deletions=0), 9)
    assert verdict.allowed.operations == (
        op(Action.REMOVE_MEMBERS, "group", "g1", members=(), target_members=("HAND",)),
    )
    assert verdict.held == (*disables(1), op(Action.REMOVE_MEMBERS, "group", "g1", members=("u0",)))
