"""The safety threshold: hold back mass deprovisioning and reactions to an empty directory read."""

from __future__ import annotations

from dataclasses import dataclass, replace

from scimsync.model import DEPROVISIONING, Action, DeletionLimit, Operation, Plan


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
    return GuardVerdict(Plan(tuple(allowed), plan.conflicts), tuple(held), reason)
