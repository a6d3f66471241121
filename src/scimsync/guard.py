"""The safety threshold: hold back mass deprovisioning and reactions to an empty directory read."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

from scimsync.model import (
    DEPROVISIONING,
    Action,
    DeletionLimit,
    Kind,
    Operation,
    Plan,
    ScimValues,
)


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """`allowed` is what may be applied now; `held` waits for `sync --allow-deletions`."""

    allowed: Plan
    held: tuple[Operation, ...] = ()
    reason: str | None = None

    def __repr__(self) -> str:  # short, like Plan's
        return f"GuardVerdict({self.allowed!r}, {len(self.held)} held, reason={self.reason!r})"

    @property
    def blocked(self) -> bool:
        return self.reason is not None

    @classmethod
    def allow(cls, plan: Plan) -> GuardVerdict:
        return cls(allowed=plan)


def allowed_deletions(limit: DeletionLimit, linked_users: int) -> int:
    """The most deprovisioning operations one cycle may apply unasked."""
    if limit.count is not None:
        return limit.count
    return max(int(linked_users * limit.percent / 100), limit.floor)


def describe(limit: DeletionLimit, linked_users: int) -> str:
    """Which limit applied and what it came to, for the guard's message."""
    allowed = allowed_deletions(limit, linked_users)
    if limit.count is not None:
        return str(allowed)
    default = "the default, " if limit.default else ""
    return f"{default}{limit.spelled}: {allowed} for {linked_users} linked users"


def guard(
    plan: Plan,
    limit: DeletionLimit,
    *,
    linked_users: int,
    source_users: int | None,
    verified_domains: Collection[str] = (),
) -> GuardVerdict:
    """The deprovisioning guard (`hold_deprovisioning`), then the unsafe email changes'
    (`hold_unverified_emails`): both wait for `sync --allow-deletions`."""
    verdict = hold_deprovisioning(plan, limit, linked_users=linked_users, source_users=source_users)
    return hold_unverified_emails(verdict, verified_domains)


def hold_deprovisioning(
    plan: Plan, limit: DeletionLimit, *, linked_users: int, source_users: int | None
) -> GuardVerdict:
    """Hold every disable and delete (users and groups) when there are too many of them.

    `source_users` is how many users the directory read returned, None when the cycle did
    not read them all (incremental). An empty directory read while users are linked is
    held whatever the count: it is far more often a broken filter or bind than a company
    with no staff. Then every remove_members is held too, since every group would be
    emptied.
    """
    removals = plan.deprovisioning
    if source_users == 0 and linked_users > 0:
        reason = f"directory returned no users while {linked_users} are linked"
        return _hold(plan, reason, hold_all_member_removals=True)
    if len(removals) > allowed_deletions(limit, linked_users):
        reason = (
            f"{len(removals)} disables and deletes exceed max_deletions "
            f"({describe(limit, linked_users)})"
        )
        return _hold(plan, reason, hold_all_member_removals=False)
    return GuardVerdict.allow(plan)


def _hold(plan: Plan, reason: str, *, hold_all_member_removals: bool) -> GuardVerdict:
    """Hold the deprovisioning and what follows from it: a held user's removal from its
    groups takes away the product access granted through them as surely as a disable."""
    held_users = {
        op.source_id for op in plan.operations if op.kind == "user" and op.action in DEPROVISIONING
    }
    allowed: list[Operation] = []
    held: list[Operation] = []
    for op in plan.operations:
        member_removal = op.action is Action.REMOVE_MEMBERS
        if op.action in DEPROVISIONING or (member_removal and hold_all_member_removals):
            held.append(op)
        elif member_removal and held_users & set(op.members):
            # The other removals go ahead: split the operation.
            keep = tuple(m for m in op.members if m not in held_users)
            gone = tuple(m for m in op.members if m in held_users)
            held.append(replace(op, members=gone, target_members=()))
            if keep or op.target_members:
                allowed.append(replace(op, members=keep))
        else:
            allowed.append(op)
    return GuardVerdict(replace(plan, operations=tuple(allowed)), tuple(held), reason)


def unverified_address(values: ScimValues, verified_domains: Collection[str]) -> str | None:
    """The first email among these SCIM values whose domain is not a verified one."""
    for key, value in values.items():
        if not (key.startswith("emails") and isinstance(value, str) and "@" in value):
            continue
        if value.rsplit("@", 1)[1].lower() not in verified_domains:
            return value
    return None


def unverified_email(op: Operation, verified_domains: Collection[str]) -> str | None:
    """The email a linked user's update moves into a domain outside verified_domains."""
    if op.kind != Kind.USER or op.action is not Action.UPDATE:
        return None
    return unverified_address(op.values, verified_domains)


def hold_unverified_emails(
    verdict: GuardVerdict, verified_domains: Collection[str]
) -> GuardVerdict:
    """Hold each linked user's email change into a domain outside verified_domains (off when
    empty): Atlassian unlinks an external account whose email changes and drops it from its
    groups (ACCESS-1396), which takes its product access away as a disable would."""
    domains = {d.lower() for d in verified_domains}
    if not domains:
        return verdict
    ops = verdict.allowed.operations
    unsafe = [op for op in ops if unverified_email(op, domains) is not None]
    if not unsafe:
        return verdict
    held = {id(op) for op in unsafe}
    because = (
        f"{len(unsafe)} email change{'s' if len(unsafe) != 1 else ''} into a domain outside "
        "options.verified_domains (Atlassian unlinks such an account)"
    )
    return GuardVerdict(
        replace(verdict.allowed, operations=tuple(op for op in ops if id(op) not in held)),
        verdict.held + tuple(unsafe),
        because if verdict.reason is None else f"{verdict.reason}; {because}",
    )
