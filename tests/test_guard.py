"""The safety threshold: what it holds, what it lets through, and why."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from scimsync.config import Options
from scimsync.emulator import RunningEmulator
from scimsync.guard import GuardVerdict, allowed_deletions, guard
from scimsync.model import Action, Conflict, DeletionLimit, Kind, Operation, Plan
from tests.fixtures.slapd import Tree
from tests.test_cli import Cli


def op(action: Action, kind: str = "user", sid: str = "u1", **kw: object) -> Operation:
    return Operation(action, kind, sid, sid, **kw)  # type: ignore[arg-type]


def limit(setting: int | str | None = None) -> DeletionLimit:
    """options.max_deletions as the guard receives it (the default when None)."""
    return (Options() if setting is None else Options(max_deletions=setting)).deletion_limit


def disables(n: int) -> list[Operation]:
    return [op(Action.DISABLE, sid=f"u{i}") for i in range(n)]


def test_within_the_limit_everything_is_allowed() -> None:
    the_plan = Plan((op(Action.CREATE, sid="new"), *disables(3)))
    verdict = guard(the_plan, limit(3), linked_users=100, source_users=97)
    assert not verdict.blocked
    assert verdict.reason is None
    assert verdict.held == ()
    assert verdict.allowed == the_plan


def test_over_the_limit_deprovisioning_is_held_and_the_rest_goes_ahead() -> None:
    create = op(Action.CREATE, sid="new")
    group_delete = op(Action.DELETE, "group", "g1")
    the_plan = Plan((create, *disables(3), group_delete), (Conflict(Kind.USER, "x", "x", "dup"),))
    verdict = guard(the_plan, limit(3), linked_users=100, source_users=96)
    assert verdict.blocked
    assert verdict.reason is not None
    assert "4 disables and deletes exceed max_deletions" in verdict.reason
    assert verdict.allowed.operations == (create,)
    assert verdict.allowed.conflicts == the_plan.conflicts
    assert verdict.held == (*disables(3), group_delete)


def test_percentage_limit_counts_linked_users() -> None:
    assert not guard(
        Plan(tuple(disables(5))), limit("5%"), linked_users=100, source_users=95
    ).blocked
    assert guard(Plan(tuple(disables(6))), limit("5%"), linked_users=100, source_users=94).blocked


def test_member_removals_of_users_being_deleted_are_held_with_the_deletion() -> None:
    delete = op(Action.DELETE, sid="u1")
    removal = op(
        Action.REMOVE_MEMBERS, "group", "g1", members=("u1", "u2"), target_members=("HAND",)
    )
    only_deleted = op(Action.REMOVE_MEMBERS, "group", "g2", members=("u1",))
    verdict = guard(
        Plan((delete, removal, only_deleted)), limit(0), linked_users=10, source_users=9
    )
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
    # u7 is not being deprovisioned: only an empty read holds its removal too.
    other_removal = op(Action.REMOVE_MEMBERS, "group", "g3", members=("u7",))
    rename = op(Action.RENAME, "group", "g2")
    the_plan = Plan((rename, removal, other_removal, *disables(2)))
    verdict = guard(the_plan, limit(1000), linked_users=2, source_users=0)
    assert verdict.blocked
    assert verdict.reason == "directory returned no users while 2 are linked"
    assert verdict.allowed.operations == (rename,)
    assert verdict.held == (removal, other_removal, *disables(2))
    # One linked user is enough; over the limit alone, other users' removals go ahead.
    assert guard(the_plan, limit(1000), linked_users=1, source_users=0).blocked
    over = guard(the_plan, limit(1), linked_users=100, source_users=98)
    assert over.allowed.operations == (rename, other_removal)


def test_an_empty_directory_on_a_first_run_is_fine() -> None:
    assert not guard(Plan(()), limit(), linked_users=0, source_users=0).blocked


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
    verdict = guard(Plan((*leaving, add, removal)), limit(2), linked_users=10, source_users=7)
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
    verdict = guard(Plan((*disables(1), removal)), limit(0), linked_users=10, source_users=9)
    assert verdict.allowed.operations == (
        op(Action.REMOVE_MEMBERS, "group", "g1", members=(), target_members=("HAND",)),
    )
    assert verdict.held == (*disables(1), op(Action.REMOVE_MEMBERS, "group", "g1", members=("u0",)))


def test_over_the_limit_only_held_users_operations_wait() -> None:
    """An update, an addition (even of a user being disabled) and the removal of users who
    are not held are not held, nor split into an empty held operation."""
    leaving = disables(2)
    update = op(Action.UPDATE, sid="stays")
    add = op(Action.ADD_MEMBERS, "group", "g1", members=("u0", "new"))
    removal = op(Action.REMOVE_MEMBERS, "group", "g2", members=("stays",))
    group_update = op(Action.UPDATE, "group", "g3")
    the_plan = Plan((*leaving, update, add, removal, group_update))
    verdict = guard(the_plan, limit(1), linked_users=10, source_users=8)
    assert verdict.blocked
    assert verdict.allowed.operations == (update, add, removal, group_update)
    assert verdict.held == tuple(leaving)


# --- the default threshold: 2 % of linked users, at least 5 ---------------------------------


def held(linked: int, removals: int, setting: int | str | None = None) -> bool:
    the_plan = Plan(tuple(disables(removals)))
    return guard(
        the_plan, limit(setting), linked_users=linked, source_users=linked - removals
    ).blocked


def test_the_default_never_lets_a_small_directory_lose_everyone_in_one_cycle() -> None:
    verdict = guard(Plan(tuple(disables(41))), limit(), linked_users=41, source_users=1)
    assert verdict.blocked
    assert verdict.reason == (
        "41 disables and deletes exceed max_deletions "
        "(the default, 2% min 5: 5 for 41 linked users)"
    )
    assert not held(41, 5)  # a few leavers at once are ordinary
    assert held(41, 6)


def test_the_default_lets_a_large_directory_s_ordinary_day_pass() -> None:
    # Leavers run at about 0.1-0.3 % of the staff a day; a daily cron sees them in one cycle.
    assert not held(100_000, 300)
    assert not held(100_000, 2_000)
    assert held(100_000, 2_001)  # a lost OU or a broken filter is far more than 2 %


@pytest.mark.parametrize(("linked", "expected"), [(0, 5), (10, 5), (250, 5), (300, 6), (1_000, 20)])
def test_the_default_is_two_percent_of_linked_users_with_a_floor_of_five(
    linked: int, expected: int
) -> None:
    assert allowed_deletions(Options().deletion_limit, linked) == expected


def test_explicit_limits_keep_their_meaning() -> None:
    assert allowed_deletions(limit(50), 100_000) == 50
    assert allowed_deletions(limit("5%"), 10) == 0  # a bare percentage has no floor
    assert allowed_deletions(limit("5% min 3"), 10) == 3
    assert allowed_deletions(limit("5% min 3"), 1_000) == 50
    verdict = guard(Plan(tuple(disables(4))), limit("5% min 3"), linked_users=10, source_users=6)
    assert verdict.reason == (
        "4 disables and deletes exceed max_deletions (5% min 3: 3 for 10 linked users)"
    )
    verdict = guard(Plan(tuple(disables(4))), limit(3), linked_users=10, source_users=6)
    assert verdict.reason == "4 disables and deletes exceed max_deletions (3)"


@pytest.mark.parametrize("bad", ["2% min", "min 5", "2% max 5", "-1", "5% min -1"])
def test_a_malformed_limit_is_refused_naming_the_forms(bad: str) -> None:
    with pytest.raises(ValidationError, match=r"expected a count >= 0, a percentage such as '5%'"):
        Options(max_deletions=bad)


def test_sync_under_the_default_holds_most_of_a_small_directory_and_says_which_limit(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    cli = Cli(ldap_tree, emulator, tmp_path)
    del cli.settings["options"]["max_deletions"]  # the default applies
    people = [cli.tree.add_user(f"p{i}") for i in range(7)]
    assert cli("sync").returncode == 0
    for dn in people[:6]:
        cli.tree.delete(dn)
    held = cli("sync")
    assert held.returncode == 3, held.stdout + held.stderr
    assert (
        "6 disables and deletes exceed max_deletions (the default, 2% min 5: 5 for 7 linked users)"
    ) in held.stdout
    assert all(user["active"] for user in cli.emulator.users())


# --- email changes into unverified domains ------------------------------------------------

VERIFIED = ("example.com", "corp.example.org")


def email_update(sid: str, email: str) -> Operation:
    return op(Action.UPDATE, sid=sid, values={"emails.work": email, "title": "x"})


def test_an_email_change_outside_the_verified_domains_is_held_like_a_deletion() -> None:
    away = email_update("u1", "ann@gmail.com")
    the_plan = Plan(
        (
            away,
            email_update("u2", "ben@EXAMPLE.com"),  # verified, whatever the case
            email_update("u3", "cy@sub.example.com"),  # a subdomain is a domain of its own
            op(Action.CREATE, sid="new", values={"emails.work": "dee@gmail.com"}),
            op(Action.UPDATE, sid="u4", values={"title": "y"}),
        )
    )
    verdict = guard(
        the_plan, limit(), linked_users=100, source_users=100, verified_domains=VERIFIED
    )
    assert [o.source_id for o in verdict.held] == ["u1", "u3"]
    assert [o.source_id for o in verdict.allowed.operations] == ["u2", "new", "u4"]
    assert verdict.reason == (
        "2 email changes into a domain outside options.verified_domains "
        "(Atlassian unlinks such an account)"
    )
    off = guard(the_plan, limit(), linked_users=100, source_users=100)
    assert not off.blocked and off.allowed == the_plan


def test_the_email_hold_reads_the_domain_after_the_last_at_and_only_email_values() -> None:
    def held(values: dict[str, str | bool]) -> bool:
        update = op(Action.UPDATE, values=values)
        return guard(
            Plan((update,)), limit(), linked_users=9, source_users=9, verified_domains=VERIFIED
        ).blocked

    # A quoted local part may hold an "@" (RFC 5321 4.1.2): the domain follows the last one.
    assert held({"emails.work": '"ann@example.com"@gmail.com'})
    assert not held({"emails.work": '"ann@gmail.com"@example.com'})
    # Only emails count, whatever the other values hold, and wherever they come.
    assert not held({"title": "on call @ night", "nickName": "ann@gmail.com"})
    assert held({"title": "x", "active": True, "emails.work": "ann@gmail.com"})
    one = guard(
        Plan((email_update("u1", "ann@gmail.com"),)),
        limit(),
        linked_users=9,
        source_users=9,
        verified_domains=VERIFIED,
    )
    assert one.reason is not None and one.reason.startswith("1 email change into a domain")


def test_both_holds_give_both_reasons_and_keep_the_protected_groups() -> None:
    protected = (Conflict(Kind.GROUP, "g1", "site-admins", "left alone"),)
    the_plan = Plan((*disables(3), email_update("u9", "x@gmail.com")), (), protected)
    verdict = guard(
        the_plan, limit(1), linked_users=100, source_users=97, verified_domains=VERIFIED
    )
    assert len(verdict.held) == 4
    assert verdict.reason is not None
    assert "exceed max_deletions" in verdict.reason and "verified_domains" in verdict.reason
    assert verdict.allowed.protected == protected


def test_verified_domains_must_be_domain_names() -> None:
    assert Options(verified_domains=["Example.COM"]).verified_domains == ("example.com",)
    for bad in ("example", "@example.com", "exa mple.com", "*.example.com"):
        with pytest.raises(ValidationError, match="is not a domain name"):
            Options(verified_domains=[bad])
