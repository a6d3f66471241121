"""The planner: desired state + recorded state + options -> operations. Pure, no I/O.

It follows the rules table in design.md. Decisions beyond the table:
- Adopting a user is one `link` op carrying the mapped values that differ from the
  target's (never userName, which matched, nor create-only attributes, which belong to
  creation), the mapped attributes the directory lacks as `removed`, plus `active` when the
  target's account differs. With update_users off it carries no values.
- userName is write-once (reference/atlassian-scim-api.md: "Treat it as write-once"): a
  linked user whose mapped userName changes (other than in case) is a Conflict and nothing
  is pushed for it but its deprovisioning. Case-only changes are ignored. With
  `user_name_changes: update` the new userName is PATCHed instead (where the target
  refuses, the record fails).
- A conflict never holds back a deprovisioning: a linked user in conflict who is disabled
  in the directory is disabled (or deleted) all the same.
- create_users off still links users found at the target; update_users off also blocks
  re-enabling; deprovision_users off blocks every disable and delete of a user.
- A disabled user found at the target but not linked is adopted only with
  provision_disabled_users, like creation.
- With provision_disabled_users, disabled users belong at the target as inactive accounts:
  a user disabled in the directory is deactivated, never deleted, whatever
  remove_user_action says (else it is deleted, then re-created disabled: the loop the
  PingFederate docs warn of). Leaving scope still follows remove_user_action.
- A name held by a linked object of another source id (say a user deleted and a new one
  given the name) is a Conflict until that object is gone, so creates never race deletes.
  A chain of such renames clears one step per cycle; two groups swapping names stay in
  conflict until one is renamed by hand.
- Groups are created empty, then filled by add_members. A group found at the target is
  linked. `target_members` (the members the target holds) makes a written group's members
  the directory's, those added by hand removed; the cycle reads it for every group the
  plan writes (the listing of a full cycle; one GET each otherwise, cycle/prepare.py).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from scimsync.model import (
    Action,
    Conflict,
    DesiredGroup,
    DesiredUser,
    Kind,
    LinkedGroup,
    LinkedUser,
    Operation,
    Plan,
    PlanOptions,
    TargetRef,
    group_match_key,
    user_match_key,
    user_name_key,
)


@dataclass(frozen=True)
class PlanInput:
    desired_users: Mapping[str, DesiredUser]
    desired_groups: Mapping[str, DesiredGroup]
    linked_users: Mapping[str, LinkedUser]
    linked_groups: Mapping[str, LinkedGroup]
    target_users: Mapping[str, TargetRef]
    target_groups: Mapping[str, TargetRef]
    target_members: Mapping[str, frozenset[str]] = field(default_factory=dict)
    skip: frozenset[tuple[Kind, str]] = frozenset()
    # Whether a linked record the desired state lacks is gone (a user deprovisioned, a group
    # deleted): true when the links are those of the desired state's whole universe (full
    # and incremental views); false for `--user NAME`, whose links of others are not its own.
    deprovision_missing: bool = True
    # Incremental plans: users linked earlier but outside this plan's universe. They may be
    # members of the groups planned here; nothing else is planned for them.
    other_members: frozenset[str] = frozenset()
    # Incremental plans: names (lower-case) held by objects linked outside this plan's
    # universe, with the source id holding each. Never adopted: a name in use is a Conflict.
    taken_user_names: Mapping[str, str] = field(default_factory=dict)
    taken_group_names: Mapping[str, str] = field(default_factory=dict)
    # Incremental plans: target id -> source id of the users linked outside this plan's
    # universe found among the members read at the target (target_members): ours, so never
    # removed as strangers, and removed as members when the directory says so.
    member_links: Mapping[str, str] = field(default_factory=dict)


_ACTION_ORDER = {action: i for i, action in enumerate(Action)}


def sort_key(op: Operation) -> tuple[int, str, str, int, str]:
    return (op.phase, op.kind, op.name, _ACTION_ORDER[op.action], op.source_id)


def user_key(user: DesiredUser, options: PlanOptions) -> str:
    return user_match_key(user.user_name, user.values, options.match_users_by)


def plan(inp: PlanInput, options: PlanOptions) -> Plan:
    """The operations that bring the target to the desired state, in the executor's order
    (sort_key), and the records refused as conflicts. Records in `inp.skip` get no operation
    of their own."""
    users = _UserPlanner(inp, options)
    users.run()
    ops = list(users.ops)
    conflicts = list(users.conflicts)
    protected: list[Conflict] = []
    if options.groups:
        groups = _GroupPlanner(inp, options, users)
        groups.run()
        ops += groups.ops
        conflicts += groups.conflicts
        protected = groups.protected
    ops.sort(key=sort_key)
    conflicts.sort(key=lambda c: (c.kind, c.name, c.source_id))
    protected.sort(key=lambda c: (c.name, c.source_id))
    return Plan(tuple(ops), tuple(conflicts), tuple(protected))


def protected_by(name: str, patterns: Iterable[str]) -> str | None:
    """The first of options.protected_groups that the group name matches, if any."""
    folded = name.lower()
    return next((p for p in patterns if fnmatch.fnmatchcase(folded, p.lower())), None)


def _duplicates(names: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """source id -> the other source ids sharing its (non-empty) name."""
    first: dict[str, str] = {}
    shared: dict[str, list[str]] = {}  # only names held twice: no list per record
    for source_id, name in names:
        if name:
            holder = first.setdefault(name, source_id)
            if holder != source_id:
                shared.setdefault(name, [holder]).append(source_id)
    return {
        sid: [other for other in sids if other != sid] for sids in shared.values() for sid in sids
    }


class _UserPlanner:
    def __init__(self, inp: PlanInput, options: PlanOptions) -> None:
        self.inp = inp
        self.options = options
        self.ops: list[Operation] = []
        self.conflicts: list[Conflict] = []
        self.provisioned: set[str] = set()  # linked, or linked/created by this plan
        self.deleted: set[str] = set()  # deleted by this plan
        self.adopted: dict[str, str] = {}  # target id -> source id, linked by this plan

    def run(self) -> None:
        inp = self.inp
        blocked = self._find_conflicts()
        for source_id, desired in inp.desired_users.items():
            linked = inp.linked_users.get(source_id)
            if (Kind.USER, source_id) in inp.skip or source_id in blocked:
                if linked is not None:
                    self.provisioned.add(source_id)
                    if source_id in blocked:
                        # A conflict holds back what conflicts, never a deprovisioning: a
                        # leaver whose userName changed must still lose access.
                        self._deprovision_disabled(desired, linked)
                continue
            if linked is None:
                self._unlinked(desired)
            else:
                self.provisioned.add(source_id)
                self._linked(desired, linked)
        if inp.deprovision_missing:
            for source_id, linked in inp.linked_users.items():
                if source_id not in inp.desired_users and (Kind.USER, source_id) not in inp.skip:
                    self._left_scope(linked)

    def _find_conflicts(self) -> set[str]:
        inp, blocked = self.inp, set[str]()
        candidates = {
            sid: d for sid, d in inp.desired_users.items() if (Kind.USER, sid) not in inp.skip
        }
        names = _duplicates((sid, user_name_key(d.user_name)) for sid, d in candidates.items())
        for sid, others in names.items():
            self._conflict(candidates[sid], f"userName is also mapped from {', '.join(others)}")
            blocked.add(sid)
        if self.options.match_users_by == "externalId":
            keys = _duplicates((sid, user_key(d, self.options)) for sid, d in candidates.items())
            for sid, others in keys.items():
                if sid not in blocked:
                    self._conflict(
                        candidates[sid], f"externalId is also mapped from {', '.join(others)}"
                    )
                    blocked.add(sid)
        holders = dict(inp.taken_user_names)
        holders.update(
            (user_name_key(link.user_name), sid) for sid, link in inp.linked_users.items()
        )
        for sid, desired in candidates.items():
            if sid in blocked:
                continue
            linked = inp.linked_users.get(sid)
            name = user_name_key(desired.user_name)
            renamed = linked is not None and user_name_key(linked.user_name) != name
            if renamed and self.options.user_name_changes == "conflict":
                assert linked is not None
                self._conflict(
                    desired,
                    f"userName changed from {linked.user_name!r}; userName is write-once "
                    "at the target (options.user_name_changes: conflict)",
                )
                blocked.add(sid)
                continue
            holder = holders.get(name)
            if holder is not None and holder != sid:
                self._conflict(desired, f"userName is held by the account linked to {holder}")
                blocked.add(sid)
        return blocked

    def _conflict(self, desired: DesiredUser, cause: str) -> None:
        self.conflicts.append(Conflict(Kind.USER, desired.source_id, desired.user_name, cause))

    def _unlinked(self, desired: DesiredUser) -> None:
        options = self.options
        if not desired.active and not options.provision_disabled_users:
            return
        key = user_key(desired, options)
        found = self.inp.target_users.get(key) if key else None
        if found is not None:
            self.provisioned.add(desired.source_id)
            self.adopted[found.target_id] = desired.source_id
            self.ops.append(self._link(desired, found))
        elif options.create_users:
            self.provisioned.add(desired.source_id)
            self.ops.append(
                Operation(
                    Action.CREATE,
                    Kind.USER,
                    desired.source_id,
                    desired.user_name,
                    values=desired.values,  # shared, not copied: neither side mutates it
                )
            )

    def _link(self, desired: DesiredUser, found: TargetRef) -> Operation:
        options = self.options
        values: dict[str, str | bool] = {}
        removed: tuple[str, ...] = ()
        if options.update_users:
            # Only what differs from what the target holds (design.md: the link carries the
            # values that differ); a mapped attribute the directory lacks is cleared.
            fixed = {"userName"} | desired.create_only
            values = {
                k: v
                for k, v in desired.values.items()
                if k not in fixed and found.values.get(k) != v
            }
            removed = tuple(
                sorted(k for k in found.values if k not in fixed and k not in desired.values)
            )
        active = None
        if found.active != desired.active:
            may = options.update_users if desired.active else options.deprovision_users
            if may:
                active = desired.active
        return Operation(
            Action.LINK,
            Kind.USER,
            desired.source_id,
            desired.user_name,
            target_id=found.target_id,
            values=values,
            removed=removed,
            active=active,
        )

    def _linked(self, desired: DesiredUser, linked: LinkedUser) -> None:
        if desired.active or self.options.provision_disabled_users:
            self._update(desired, linked)
        self._deprovision_disabled(desired, linked)

    def _deprovision_disabled(self, desired: DesiredUser, linked: LinkedUser) -> None:
        options = self.options
        if desired.active or not options.deprovision_users:
            return
        if options.provision_disabled_users or options.remove_user_action == "disable":
            if linked.active:
                self._deprovision(linked, Action.DISABLE)
        else:
            self._deprovision(linked, Action.DELETE)

    def _update(self, desired: DesiredUser, linked: LinkedUser) -> None:
        if not self.options.update_users:
            return
        fixed = {"userName", "active"} | desired.create_only
        values: dict[str, str | bool] = {
            k: v for k, v in desired.values.items() if k not in fixed and linked.values.get(k) != v
        }
        removed = tuple(sorted(k for k in linked.values if k not in fixed | desired.values.keys()))
        if user_name_key(linked.user_name) != user_name_key(
            desired.user_name
        ):  # user_name_changes: update
            values["userName"] = desired.user_name
        active = True if desired.active and not linked.active else None
        if values or removed or active is not None:
            self.ops.append(
                Operation(
                    Action.UPDATE,
                    Kind.USER,
                    desired.source_id,
                    desired.user_name,
                    target_id=linked.target_id,
                    values=values,
                    removed=removed,
                    active=active,
                )
            )

    def _left_scope(self, linked: LinkedUser) -> None:
        if not self.options.deprovision_users:
            return
        if self.options.remove_user_action == "delete":
            self._deprovision(linked, Action.DELETE)
        elif linked.active:
            self._deprovision(linked, Action.DISABLE)

    def _deprovision(self, linked: LinkedUser, action: Action) -> None:
        if action is Action.DELETE:
            self.deleted.add(linked.source_id)
        self.ops.append(
            Operation(
                action, Kind.USER, linked.source_id, linked.user_name, target_id=linked.target_id
            )
        )


class _GroupPlanner:
    def __init__(self, inp: PlanInput, options: PlanOptions, users: _UserPlanner) -> None:
        self.inp = inp
        self.options = options
        self.provisioned = (users.provisioned | inp.other_members) - users.deleted
        self.deleted = users.deleted
        self.skipped_users = {sid for kind, sid in inp.skip if kind == Kind.USER}
        # Users adopted by this plan are ours by the time memberships are written.
        self.ours = dict(inp.member_links)
        self.ours.update((link.target_id, sid) for sid, link in inp.linked_users.items())
        self.ours.update(users.adopted)
        self.ops: list[Operation] = []
        self.conflicts: list[Conflict] = []
        self.protected: list[Conflict] = []

    def run(self) -> None:
        inp = self.inp
        protected = self._find_protected()
        blocked = self._find_conflicts(protected)
        for source_id, desired in inp.desired_groups.items():
            if (Kind.GROUP, source_id) in inp.skip or source_id in blocked | protected:
                continue
            linked = inp.linked_groups.get(source_id)
            if linked is not None:
                self._linked(desired, linked)
                continue
            found = inp.target_groups.get(group_match_key(desired.display_name))
            if found is not None:
                self.ops.append(
                    Operation(
                        Action.LINK,
                        Kind.GROUP,
                        source_id,
                        desired.display_name,
                        target_id=found.target_id,
                    )
                )
            else:
                self.ops.append(
                    Operation(Action.CREATE, Kind.GROUP, source_id, desired.display_name)
                )
            self._members(desired, frozenset(), inp.target_members.get(source_id))
        if inp.deprovision_missing:
            for source_id, linked in inp.linked_groups.items():
                gone = source_id not in inp.desired_groups and source_id not in protected
                if gone and (Kind.GROUP, source_id) not in inp.skip:
                    self.ops.append(
                        Operation(
                            Action.DELETE,
                            Kind.GROUP,
                            source_id,
                            linked.display_name,
                            target_id=linked.target_id,
                        )
                    )

    def _find_protected(self) -> set[str]:
        """Groups named by options.protected_groups, in the directory or as linked: never
        created, adopted, renamed into, written or deleted."""
        patterns, found = self.options.protected_groups, set[str]()
        if not patterns:
            return found
        inp = self.inp
        for sid in inp.desired_groups.keys() | inp.linked_groups.keys():
            groups = (inp.desired_groups.get(sid), inp.linked_groups.get(sid))
            for name in (group.display_name for group in groups if group is not None):
                pattern = protected_by(name, patterns)
                if pattern is not None:
                    cause = f"matches options.protected_groups {pattern!r}: left alone"
                    self.protected.append(Conflict(Kind.GROUP, sid, name, cause))
                    found.add(sid)
                    break
        return found

    def _find_conflicts(self, protected: set[str]) -> set[str]:
        inp, blocked = self.inp, set[str]()
        candidates = {
            sid: g
            for sid, g in inp.desired_groups.items()
            if (Kind.GROUP, sid) not in inp.skip and sid not in protected
        }
        for sid, group in candidates.items():
            if not group.display_name:
                self._conflict(group, "the group has no name")
                blocked.add(sid)
        names = _duplicates(
            (sid, group_match_key(g.display_name))
            for sid, g in candidates.items()
            if sid not in blocked
        )
        for sid, others in names.items():
            self._conflict(candidates[sid], f"displayName is also used by {', '.join(others)}")
            blocked.add(sid)
        holders = dict(inp.taken_group_names)
        holders.update(
            (group_match_key(link.display_name), sid) for sid, link in inp.linked_groups.items()
        )
        for sid, group in candidates.items():
            holder = holders.get(group_match_key(group.display_name))
            if sid not in blocked and holder is not None and holder != sid:
                self._conflict(group, f"displayName is held by the group linked to {holder}")
                blocked.add(sid)
        return blocked

    def _conflict(self, group: DesiredGroup, cause: str) -> None:
        self.conflicts.append(Conflict(Kind.GROUP, group.source_id, group.display_name, cause))

    def _linked(self, desired: DesiredGroup, linked: LinkedGroup) -> None:
        name = desired.display_name
        if name != linked.display_name:
            taken = self.inp.target_groups.get(group_match_key(desired.display_name))
            if taken is not None:
                self._conflict(
                    desired,
                    f"cannot rename from {linked.display_name!r}: the target holds another "
                    "group of that name that scimsync does not manage",
                )
                name = linked.display_name
            else:
                self.ops.append(
                    Operation(
                        Action.RENAME,
                        Kind.GROUP,
                        desired.source_id,
                        name,
                        target_id=linked.target_id,
                        values={"displayName": name},
                        previous_name=linked.display_name,
                    )
                )
        self._members(
            desired,
            linked.member_source_ids,
            self.inp.target_members.get(desired.source_id),
            name=name,
            target_id=linked.target_id,
        )

    def _members(
        self,
        desired: DesiredGroup,
        recorded: frozenset[str],
        at_target: frozenset[str] | None,
        *,
        name: str | None = None,
        target_id: str | None = None,
    ) -> None:
        """Target membership := the directory's members that scimsync provisions."""
        name = name if name is not None else desired.display_name
        # `present`: our users the target shows (or, without a reading, what was pushed);
        # removals also cover what was pushed, so the store's member set stays truthful.
        present, extras = set(recorded), tuple[str, ...]()
        if at_target is not None:
            present = {self.ours[t] for t in at_target if t in self.ours}
            extras = tuple(sorted(t for t in at_target if t not in self.ours))
        current = present | recorded
        keep = desired.member_source_ids - self.deleted
        add = (keep & self.provisioned) - present - self.skipped_users
        remove = current - keep - self.skipped_users
        if add:
            self.ops.append(
                Operation(
                    Action.ADD_MEMBERS,
                    Kind.GROUP,
                    desired.source_id,
                    name,
                    target_id=target_id,
                    members=tuple(sorted(add)),
                )
            )
        if remove or extras:
            self.ops.append(
                Operation(
                    Action.REMOVE_MEMBERS,
                    Kind.GROUP,
                    desired.source_id,
                    name,
                    target_id=target_id,
                    members=tuple(sorted(remove)),
                    target_members=extras,
                )
            )
