"""Observe: what the target holds of a view, for adoption, drift and lost links."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import replace
from typing import TypeVar

from scimsync.config import Config
from scimsync.cycle.views import View
from scimsync.model import (
    Action,
    DesiredGroup,
    DesiredUser,
    Kind,
    LinkedUser,
    Plan,
    TargetRef,
    group_match_key,
    user_match_key,
    user_name_key,
)
from scimsync.plan import PlanInput
from scimsync.state import Store
from scimsync.target import RemoteGroup, RemoteUser, Target
from scimsync.target.errors import NotFound


def managed_values(
    values: Mapping[str, str | bool], managed: Collection[str]
) -> dict[str, str | bool]:
    """What the target holds of the attributes scimsync maps."""
    return {k: values[k] for k in managed if k in values}


T = TypeVar("T")


async def observe(target: Target, view: View, config: Config, store: Store) -> PlanInput:
    """The planner's input: the view, with what the target holds of it."""
    if view.mode == "full":
        return await observe_everything(target, view, config)
    return await observe_unlinked(target, view, config, store)


async def observe_everything(target: Target, view: View, config: Config) -> PlanInput:
    """Full reconciliation: list the target once, for adoption, drift and lost links.

    Linked objects deleted at the target by hand are dropped from the view's links so that
    the planner creates them again.
    """
    desired = view.desired
    linked_users = dict(view.linked_users)
    linked_groups = dict(view.linked_groups)
    match_by = config.options.match_users_by
    users_by_key: dict[str, TargetRef] = {}
    by_target_id = {link.target_id: sid for sid, link in linked_users.items()}
    managed = set(config.rules)
    seen: set[str] = set()
    # Streamed page by page: only unlinked candidates and drift are kept, never the listing.
    async for remote in target.iter_users():
        source_id = by_target_id.get(remote.id)
        if source_id is None:
            key = user_match_key(remote.user_name, remote.values, match_by)
            if key:
                users_by_key[key] = TargetRef(
                    remote.id,
                    remote.user_name,
                    remote.active,
                    managed_values(remote.values, managed),
                )
            continue
        seen.add(source_id)
        linked_users[source_id] = as_held(linked_users[source_id], remote, managed)
    # Missing from the listing is not gone: some tenants list no inactive user
    # (ACCESS-1293). Only a 404 for the object itself means deleted by hand.
    unlisted = {sid: linked_users[sid].target_id for sid in linked_users.keys() - seen}
    confirmed = await confirm_unlisted(target.get_user, unlisted)
    for source_id in unlisted:
        found = confirmed.get(source_id)
        if found is None:
            del linked_users[source_id]  # deleted at the target by hand: created again
        else:
            linked_users[source_id] = as_held(linked_users[source_id], found, managed)
    del by_target_id

    target_groups: dict[str, TargetRef] = {}
    target_members: dict[str, frozenset[str]] = {}
    if config.options.groups:
        remote_groups: dict[str, RemoteGroup] = {}
        async for group in target.iter_groups():
            remote_groups[group.id] = group
        linked_group_ids = {link.target_id for link in linked_groups.values()}
        unlisted = {
            sid: link.target_id
            for sid, link in linked_groups.items()
            if link.target_id not in remote_groups
        }
        for group in (await confirm_unlisted(target.get_group, unlisted)).values():
            remote_groups[group.id] = group
        for source_id, glink in list(linked_groups.items()):
            seen_group = remote_groups.get(glink.target_id)
            if seen_group is None:
                del linked_groups[source_id]
                continue
            target_members[source_id] = seen_group.member_ids
            if seen_group.display_name != glink.display_name:
                # A rename that landed unrecorded (a killed cycle) or one made by hand:
                # plan from the name the target holds, as for users' values.
                linked_groups[source_id] = replace(glink, display_name=seen_group.display_name)
        unlinked = {
            group_match_key(group.display_name): group
            for group in remote_groups.values()
            if group.id not in linked_group_ids
        }
        target_groups = {k: TargetRef(g.id, g.display_name) for k, g in unlinked.items()}
        for source_id, wanted_group in desired.groups.items():
            match = unlinked.get(group_match_key(wanted_group.display_name))
            if source_id not in linked_groups and match is not None:
                # Adopted now: members added by hand go in the same cycle.
                target_members[source_id] = match.member_ids
    return PlanInput(
        desired_users=desired.users,
        desired_groups=desired.groups,
        linked_users=linked_users,
        linked_groups=linked_groups,
        target_users=users_by_key,
        target_groups=target_groups,
        target_members=target_members,
    )


def as_held(link: LinkedUser, remote: RemoteUser, managed: Collection[str]) -> LinkedUser:
    """The link with what the target holds of the attributes scimsync maps: a hand-made
    edit shows as a change, a mapped attribute the directory no longer has as one to clear."""
    return replace(link, values=managed_values(remote.values, managed), active=remote.active)


async def confirm_unlisted(
    get: Callable[[str], Awaitable[T]], target_ids: Mapping[str, str]
) -> dict[str, T]:
    """source id -> the object a GET by id still finds, of the linked ones a listing left
    out; a 404 leaves the source id out (deleted at the target)."""
    found: dict[str, T] = {}

    async def confirm(source_id: str, target_id: str) -> None:
        with contextlib.suppress(NotFound):
            found[source_id] = await get(target_id)

    await asyncio.gather(*(confirm(sid, tid) for sid, tid in target_ids.items()))
    return found


async def observe_unlinked(target: Target, view: View, config: Config, store: Store) -> PlanInput:
    """Incremental and one-user views: look up only the desired objects that have no link
    yet, by their key."""
    desired = view.desired
    match_by = config.options.match_users_by
    managed = set(config.rules)
    users_by_key: dict[str, TargetRef] = {}
    groups_by_key: dict[str, TargetRef] = {}

    async def find_user(user: DesiredUser) -> None:
        if match_by == "userName":
            found = await target.find_user(user.user_name)
        else:
            found = await target.find_user_by_external_id(str(user.values.get("externalId", "")))
        if found is not None:
            users_by_key[user_match_key(found.user_name, found.values, match_by)] = TargetRef(
                found.id, found.user_name, found.active, managed_values(found.values, managed)
            )

    async def find_group(group: DesiredGroup) -> None:
        found = await target.find_group(group.display_name)
        if found is not None:
            groups_by_key[group_match_key(found.display_name)] = TargetRef(
                found.id, found.display_name
            )

    lookups = [find_user(u) for sid, u in desired.users.items() if sid not in view.linked_users]
    lookups += [find_group(g) for sid, g in desired.groups.items() if sid not in view.linked_groups]
    await asyncio.gather(*lookups)  # the target's own semaphore bounds the concurrency
    # An object found by its key may be linked already, to a record outside this view: it
    # is then taken, never adopted a second time.
    user_holders = store.linked_to(Kind.USER, [r.target_id for r in users_by_key.values()])
    group_holders = store.linked_to(Kind.GROUP, [r.target_id for r in groups_by_key.values()])
    return PlanInput(
        desired_users=desired.users,
        desired_groups=desired.groups,
        linked_users=view.linked_users,
        linked_groups=view.linked_groups,
        target_users={k: r for k, r in users_by_key.items() if r.target_id not in user_holders},
        target_groups={k: r for k, r in groups_by_key.items() if r.target_id not in group_holders},
        deprovision_missing=view.mode != "user",
        other_members=view.other_members,
        taken_user_names={
            user_name_key(r.name): user_holders[r.target_id]
            for r in users_by_key.values()
            if r.target_id in user_holders
        },
        taken_group_names={
            group_match_key(r.name): group_holders[r.target_id]
            for r in groups_by_key.values()
            if r.target_id in group_holders
        },
    )


# The operations that write a group: after any of them its members are the directory's.
_GROUP_WRITES = frozenset({Action.LINK, Action.RENAME, Action.ADD_MEMBERS, Action.REMOVE_MEMBERS})


async def read_written_members(
    target: Target, plan: Plan, inputs: PlanInput, store: Store
) -> PlanInput:
    """Incremental and one-user views: the members the target holds of each group the plan
    writes and the view did not read, so that the write makes them the directory's (a
    member added by hand goes in the same cycle, not at the next full reconciliation).
    One GET per such group; none for the others."""
    target_ids: dict[str, str] = {}
    for op in plan.operations:
        if op.kind != Kind.GROUP or op.action not in _GROUP_WRITES:
            continue
        if op.source_id in inputs.target_members or op.source_id in target_ids:
            continue
        link = inputs.linked_groups.get(op.source_id)
        target_id = link.target_id if link is not None else op.target_id
        if target_id is not None:
            target_ids[op.source_id] = target_id
    if not target_ids:
        return inputs
    read: dict[str, frozenset[str]] = {}

    async def members_of(source_id: str, target_id: str) -> None:
        # Gone at the target by hand: the write fails and says so, as before.
        with contextlib.suppress(NotFound):
            read[source_id] = await target.group_members(target_id)

    await asyncio.gather(*(members_of(sid, tid) for sid, tid in target_ids.items()))
    known = {link.target_id for link in inputs.linked_users.values()}
    strangers = {tid for members in read.values() for tid in members if tid not in known}
    return replace(
        inputs,
        target_members={**inputs.target_members, **read},
        member_links={**inputs.member_links, **store.linked_to(Kind.USER, strangers)},
    )
