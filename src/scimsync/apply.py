"""The executor: the only code that writes to the target.

Order: users (link, create, update), groups (link, create, rename), memberships,
user deprovisioning, group deletion. Operations go in chunks: a chunk's intents are
committed before its calls and its outcomes after, so a crash between the two is seen by
the next cycle (cycle.recovery).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Protocol

from scimsync import log
from scimsync.errors import CycleError, RecordError
from scimsync.model import (
    Action,
    DesiredGroup,
    DesiredUser,
    Kind,
    LinkedGroup,
    LinkedUser,
    Operation,
    Phase,
    Plan,
    Record,
)
from scimsync.retry import Attempt, record_fingerprint
from scimsync.state import AuditRecord
from scimsync.state.base import Clock, utc_now
from scimsync.target import RemoteGroup, Target
from scimsync.target.errors import Mutability

if TYPE_CHECKING:
    from scimsync.config import Options
    from scimsync.state import Store

logger = log.get(__name__)

# Operations applied by one call: one operation, or one group's additions and removals.
Unit = tuple[Operation, ...]


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, op: Operation, ok: bool) -> None: ...
    def finish(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Failure:
    op: Operation
    cause: str


@dataclass
class Outcome:
    applied: Counter[str] = field(default_factory=Counter)
    failed: list[Failure] = field(default_factory=list)

    def __repr__(self) -> str:  # short, like Plan's
        return f"Outcome(applied={dict(self.applied)}, {len(self.failed)} failed)"


class Executor:
    """Applies a plan at the target, and records each outcome in the store.

    `desired_*` and `linked_*` are what the plan was made against: the links with the values
    the target holds (a full cycle's), not the view's value-less ones, since an update stores
    what the target then has, in full. Member links from outside them are read when
    memberships need them. `failing`: the records whose failure row goes when an operation
    of theirs succeeds. Of `options` it reads max_retries, update_users and group_rename.
    """

    def __init__(
        self,
        target: Target,
        store: Store,
        cycle_id: str,
        *,
        desired_users: Mapping[str, DesiredUser],
        desired_groups: Mapping[str, DesiredGroup],
        linked_users: Mapping[str, LinkedUser],
        linked_groups: Mapping[str, LinkedGroup],
        failing: Collection[Record],
        options: Options,
        max_concurrency: int,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        now: Clock = utc_now,
    ) -> None:
        self.target = target
        self.store = store
        self.cycle_id = cycle_id
        self.desired_users = desired_users
        self.desired_groups = desired_groups
        self.options = options
        self.max_concurrency = max_concurrency
        self.progress = progress
        self.should_stop = should_stop
        self.now = now
        self.users = dict(linked_users)
        self._by_target: dict[str, str] | None = None  # derived from users, when asked
        self.groups = dict(linked_groups)
        self.outcome = Outcome()
        # Store writes wait here until their chunk's calls are done: one transaction a chunk.
        self.pending: list[Callable[[], object]] = []
        self.pending_users: dict[str, LinkedUser] = {}
        self.pending_groups: dict[str, LinkedGroup] = {}
        self.stored_members: dict[str, frozenset[str]] = {}  # as the store holds them now
        self.pending_audit: list[AuditRecord] = []
        self.failing = set(failing)  # a failure recorded this cycle leaves it
        # A new group's planned members go in its POST (some targets require members);
        # those the target then holds are not added again in the memberships phase.
        self.first_members: dict[str, tuple[str, ...]] = {}
        self.created_with: dict[str, frozenset[str]] = {}
        self.chunk = max(64, 16 * max_concurrency)

    async def apply(self, plan: Plan) -> Outcome:
        """Apply the plan phase by phase, `max_concurrency` calls at a time.

        A record the target rejects fails alone (its failure row, audit entry, warning); a
        CycleError ends the apply after recording the chunk in flight. `should_stop` is
        heard between operations: those in flight finish, the rest are not sent.
        """
        phases: dict[Phase, list[Operation]] = {phase: [] for phase in Phase}
        for op in plan.operations:
            phases[op.phase].append(op)
        created = {op.source_id for op in phases[Phase.GROUP_WRITES] if op.action is Action.CREATE}
        self.first_members = {
            op.source_id: op.members
            for op in phases[Phase.MEMBERSHIPS]
            if op.action is Action.ADD_MEMBERS and op.source_id in created
        }
        if self.progress:
            self.progress.start(len(plan.operations))
        try:
            for phase, ops in phases.items():
                units: list[Unit] = [(op,) for op in ops]
                if phase is Phase.MEMBERSHIPS:
                    self._load_member_links(m for op in ops for m in op.members)
                    units = by_group(ops)
                elif phase is Phase.GROUP_WRITES:
                    self._load_member_links(m for ms in self.first_members.values() for m in ms)
                for start in range(0, len(units), self.chunk):
                    if self.should_stop():
                        return self.outcome
                    await self._apply_chunk(units[start : start + self.chunk])
        finally:
            if self.progress:
                self.progress.finish()
        return self.outcome

    def _load_member_links(self, members: Iterable[str]) -> None:
        wanted = {m for m in members if m not in self.users}
        if wanted:  # only their target ids are needed
            self.users.update(self.store.linked_users_by_ids(wanted, with_values=False))
            self._by_target = None

    async def _apply_chunk(self, units: Sequence[Unit]) -> None:
        """Intents of a chunk in one transaction before its calls; outcomes in one after.

        A crash in between leaves intents without outcomes: the calls that did land are
        found again at the target by name (adopted) or are idempotent (deletes, members).
        """
        ops = [op for unit in units for op in unit]
        self.store.intend_many(
            self.cycle_id, ((op.action.value, op.kind, op.source_id, op.name) for op in ops)
        )
        queue = iter(units)

        async def worker() -> None:
            # A stop request lets each worker finish the operation it holds, no more.
            for unit in queue:
                await self._apply_one(unit)
                if self.should_stop():
                    return

        try:
            workers = min(self.max_concurrency, len(units))
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            self._record(ops)

    async def _apply_one(self, unit: Unit) -> None:
        """One object's operations: one call, one outcome for all of them."""
        first = unit[0]
        if first.phase is Phase.MEMBERSHIPS and first.source_id not in self.groups:
            # The group's create failed in this cycle and that failure is recorded (once:
            # a second row would count one failed attempt twice). Its members follow it.
            for op in unit:
                if self.progress:
                    self.progress.advance(op, False)
            return
        target_id = first.target_id
        try:
            with self.target.retries_for((first.kind, first.source_id)):
                if len(unit) == 1:
                    target_id = await _HANDLERS[(first.kind, first.action)](self, first)
                else:
                    target_id = await self._change_members(unit[0], unit[1])
        except CycleError:
            raise  # e.g. the key is wrong for every record (a 401 is a RecordError too)
        except RecordError as exc:
            self._failed(unit, str(exc))
            return
        if (first.kind, first.source_id) in self.failing:
            self.pending.append(partial(self.store.clear_failure, first.kind, first.source_id))
        for op in unit:
            self.outcome.applied[op.action.value] += 1
            self._audit(op, target_id, True)
            if self.progress:
                self.progress.advance(op, True)

    def _failed(self, unit: Unit, cause: str) -> None:
        first = unit[0]
        # None for a record gone from the source (a deprovisioning): nothing to fingerprint.
        subject: DesiredUser | DesiredGroup | None = (
            self.desired_users.get(first.source_id)
            if first.kind == Kind.USER
            else self.desired_groups.get(first.source_id)
        )
        # A later operation of the record that succeeds (a failed rename's member change)
        # must not clear the failure just recorded: the rename is still to be retried.
        self.failing.discard((first.kind, first.source_id))
        self.pending.append(
            partial(
                self.store.record_failure,
                Attempt(
                    first.kind,
                    first.source_id,
                    name=first.name,
                    action=first.action.value,
                    cause=cause,
                    source_fingerprint=record_fingerprint(subject) if subject else "",
                ),
                now=self.now(),
                max_retries=self.options.max_retries,
            )
        )
        for op in unit:
            self.outcome.failed.append(Failure(op, cause))
            self._audit(op, op.target_id, False, cause)
            logger.warning(
                "operation failed", action=op.action.value, kind=op.kind, name=op.name, cause=cause
            )
            if self.progress:
                self.progress.advance(op, False)

    # --- one operation -----------------------------------------------------------------

    def _source_ids_by_target(self) -> dict[str, str]:
        # Built once for all the groups adopted in a phase; users change only before it.
        if self._by_target is None:
            self._by_target = {link.target_id: sid for sid, link in self.users.items()}
        return self._by_target

    def _save_user(self, link: LinkedUser) -> None:
        # A user has one operation a cycle: later ones only need its target id, so the
        # values go to the store and not into memory for the rest of the cycle.
        self.users[link.source_id] = replace(link, values={})
        self.pending_users[link.source_id] = link
        self._by_target = None

    def _save_group(self, link: LinkedGroup, stored: frozenset[str] | None = None) -> None:
        """`stored`: the member set the store holds for a group linked before this call."""
        if stored is not None:
            self.stored_members.setdefault(link.source_id, stored)
        self.groups[link.source_id] = link
        self.pending_groups[link.source_id] = link

    def _audit(
        self, op: Operation, target_id: str | None, ok: bool, cause: str | None = None
    ) -> None:
        self.pending_audit.append(
            AuditRecord(
                cycle_id=self.cycle_id,
                at=self.now(),
                event=op.action.value,
                kind=op.kind,
                source_id=op.source_id,
                target_id=target_id,
                success=ok,
                cause=cause,
                name=op.name,
            )
        )

    def _record(self, ops: Sequence[Operation]) -> None:
        """One transaction for a chunk's outcomes: links, audit, failures, intents done."""
        with self.store.atomic():
            self.store.save_users(self.pending_users.values())
            self.store.save_groups(self.pending_groups.values(), self.stored_members)
            for record in self.pending:  # forgets and failures: few, order kept
                record()
            self.store.audit_many(self.pending_audit)
            self.store.done_many(
                self.cycle_id, ((op.action.value, op.kind, op.source_id) for op in ops)
            )
        self.pending.clear()
        self.pending_users.clear()
        self.pending_groups.clear()
        self.stored_members.clear()
        self.pending_audit.clear()

    def _forget(self, kind: Kind, source_id: str) -> None:
        # The store alone: deletions are the last phases (model.Phase), so nothing reads the
        # links in memory after them, and the object's own save was recorded phases before.
        self.pending.append(partial(self.store.forget, kind, source_id))

    def _pushed(self, op: Operation, before: dict[str, str | bool]) -> dict[str, str | bool]:
        values = {**before, **op.values}
        for key in op.removed:
            values.pop(key, None)
        return values

    async def _create_user(self, op: Operation) -> str:
        desired = self.desired_users[op.source_id]
        remote = await self.target.create_user(op.values, desired.active)
        self._save_user(
            LinkedUser(
                op.source_id, remote.id, desired.user_name, desired.active, self._pushed(op, {})
            )
        )
        return remote.id

    async def _link_user(self, op: Operation) -> str:
        assert op.target_id is not None
        desired = self.desired_users[op.source_id]
        changed = {k: v for k, v in op.values.items() if k != "userName"}
        if changed or op.removed:
            await self.target.update_user(op.target_id, changed, op.removed)
        active = desired.active if op.active is None else op.active
        if op.active is not None:
            await self.target.set_active(op.target_id, op.active)
        # The target now holds the mapped values: those sent and those it had already
        # (create-only ones are the target's own). Without update_users nothing was sent.
        held = (
            {k: v for k, v in desired.values.items() if k not in desired.create_only}
            if self.options.update_users
            else {}
        )
        self._save_user(LinkedUser(op.source_id, op.target_id, desired.user_name, active, held))
        return op.target_id

    async def _update_user(self, op: Operation) -> str:
        link = self.users[op.source_id]
        if "userName" in op.values:  # options.user_name_changes: update
            await self.target.rename_user(link.target_id, str(op.values["userName"]))
        changed = {k: v for k, v in op.values.items() if k != "userName"}
        if changed or op.removed:
            await self.target.update_user(link.target_id, changed, op.removed)
        active = link.active
        if op.active is not None:
            active = op.active
            await self.target.set_active(link.target_id, active)
        self._save_user(
            LinkedUser(
                link.source_id,
                link.target_id,
                str(op.values.get("userName", link.user_name)),
                active,
                self._pushed(op, dict(link.values)),
            )
        )
        return link.target_id

    async def _disable_user(self, op: Operation) -> str:
        link = self.users[op.source_id]
        await self.target.set_active(link.target_id, False)
        self._save_user(
            LinkedUser(
                link.source_id,
                link.target_id,
                link.user_name,
                False,
                link.values,
                # A user disabled in the directory is still in scope; one who left it isn't.
                in_scope=op.source_id in self.desired_users,
            )
        )
        return link.target_id

    async def _delete_user(self, op: Operation) -> str:
        link = self.users[op.source_id]
        await self.target.delete_user(link.target_id)
        self._forget(Kind.USER, op.source_id)
        return link.target_id

    async def _create_group(self, op: Operation) -> str:
        # Members whose own create failed this cycle have no account: they follow later.
        first = [m for m in self.first_members.get(op.source_id, ()) if m in self.users]
        remote = await self.target.create_group(op.name, [self.users[m].target_id for m in first])
        # What the target holds, not what was asked: a create whose answer was lost is
        # found again by name, and may hold members by then.
        members = self._ours(remote)
        self.created_with[op.source_id] = members
        self._save_group(LinkedGroup(op.source_id, remote.id, op.name, members))
        return remote.id

    def _ours(self, remote: RemoteGroup) -> frozenset[str]:
        """The source ids of a target group's members that scimsync links."""
        ours = self._source_ids_by_target()
        return frozenset(ours[tid] for tid in remote.member_ids if tid in ours)

    async def _link_group(self, op: Operation) -> str:
        assert op.target_id is not None
        remote = await self.target.get_group(op.target_id)
        self._save_group(LinkedGroup(op.source_id, op.target_id, op.name, self._ours(remote)))
        return op.target_id

    async def _rename_group(self, op: Operation) -> str:
        link = self.groups[op.source_id]
        members = link.member_source_ids
        try:
            await self.target.rename_group(link.target_id, op.name)
            target_id = link.target_id
        except Mutability:
            if self.options.group_rename != "recreate":
                raise
            old = await self.target.get_group(link.target_id)
            new: RemoteGroup = await self.target.recreate_group(old, op.name)
            target_id = new.id
            members = self._ours(new)  # as read back from the new group
        self._save_group(
            LinkedGroup(link.source_id, target_id, op.name, members), link.member_source_ids
        )
        return target_id

    async def _add_members(self, op: Operation) -> str:
        return await self._change_members(op, None)

    async def _remove_members(self, op: Operation) -> str:
        return await self._change_members(None, op)

    async def _change_members(self, add: Operation | None, remove: Operation | None) -> str:
        """One group's member additions and removals, in one request when they fit."""
        group = add or remove
        assert group is not None
        link = self.groups[group.source_id]
        # A member whose own create failed (its failure is recorded) has no account yet:
        # the others go in now; it follows when the group is planned again after its retry.
        held = self.created_with.get(group.source_id, frozenset())
        adding = [m for m in add.members if m in self.users and m not in held] if add else []
        dropping = [m for m in remove.members if m in self.users] if remove else []
        await self.target.change_members(
            link.target_id,
            add=[self.users[m].target_id for m in adding],
            remove=[self.users[m].target_id for m in dropping]
            + list(remove.target_members if remove else ()),
        )
        members = link.member_source_ids | frozenset(adding)
        if remove:
            members -= frozenset(remove.members)
        self._save_group(replace(link, member_source_ids=members), link.member_source_ids)
        return link.target_id

    async def _delete_group(self, op: Operation) -> str:
        link = self.groups[op.source_id]
        await self.target.delete_group(link.target_id)
        self._forget(Kind.GROUP, op.source_id)
        return link.target_id


_Handler = Callable[[Executor, Operation], Awaitable[str | None]]
_HANDLERS: dict[tuple[str, Action], _Handler] = {
    (Kind.USER, Action.CREATE): Executor._create_user,
    (Kind.USER, Action.LINK): Executor._link_user,
    (Kind.USER, Action.UPDATE): Executor._update_user,
    (Kind.USER, Action.DISABLE): Executor._disable_user,
    (Kind.USER, Action.DELETE): Executor._delete_user,
    (Kind.GROUP, Action.CREATE): Executor._create_group,
    (Kind.GROUP, Action.LINK): Executor._link_group,
    (Kind.GROUP, Action.RENAME): Executor._rename_group,
    (Kind.GROUP, Action.ADD_MEMBERS): Executor._add_members,
    (Kind.GROUP, Action.REMOVE_MEMBERS): Executor._remove_members,
    (Kind.GROUP, Action.DELETE): Executor._delete_group,
}


def by_group(ops: Iterable[Operation]) -> list[Unit]:
    """Membership operations, a unit per group: its addition and its removal together."""
    by_source: dict[str, list[Operation]] = {}
    for op in ops:
        by_source.setdefault(op.source_id, []).append(op)
    units: list[Unit] = []
    for group_ops in by_source.values():
        if sorted(op.action for op in group_ops) == [Action.ADD_MEMBERS, Action.REMOVE_MEMBERS]:
            add, remove = sorted(group_ops, key=lambda op: op.action is Action.REMOVE_MEMBERS)
            units.append((add, remove))
        else:  # the planner makes one of each at most: anything else goes one by one
            units += [(op,) for op in group_ops]
    return units
