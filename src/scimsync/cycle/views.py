"""The universe of one cycle: what the directory wants and what the store recorded.

A full view is everything in scope and every link; an incremental one the directory's
changes since the watermark, the records an earlier cycle could not apply, and the linked
groups those touch; a one-user view (`--user NAME`) that user and its memberships.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache, partial

from scimsync import log, rekey, retry
from scimsync.config import Config
from scimsync.cycle.desired import Desired, map_groups, map_users, unmapped_but_linked
from scimsync.cycle.mode import WATERMARK, Mode, choose_mode
from scimsync.cycle.rehires import find_rehires, with_rehires
from scimsync.directory import ChangeSet, LdapDirectory, WatermarkLost
from scimsync.mapping import Mapper
from scimsync.model import (
    DesiredGroup,
    Kind,
    LinkedGroup,
    LinkedUser,
    Record,
    SourceGroup,
    SourceUser,
    user_name_key,
)
from scimsync.retry import Failures
from scimsync.state import Store

logger = log.get(__name__)


@dataclass(frozen=True, slots=True)
class View:
    """One universe of objects: what the directory wants and what the store recorded."""

    mode: Mode
    desired: Desired
    linked_users: dict[str, LinkedUser]
    linked_groups: dict[str, LinkedGroup]
    watermark: str | None = None  # where the directory was; stored once the cycle is applied
    other_members: frozenset[str] = frozenset()  # linked users outside the universe
    # The records this view looked at; None: every record (a full reconciliation).
    universe: frozenset[Record] | None = frozenset()
    # Linked users that came back into the user scope, and those that left it.
    scope_entered: frozenset[str] = frozenset()
    scope_left: frozenset[str] = frozenset()
    # `--user NAME` that names no user in scope: why, in one line; and whether anything
    # has that name at all (`sync --user` exits 2 when nothing does).
    absent: str | None = None
    unknown: bool = False
    # Rehires (cycle/rehires.py), old source id -> new: their links are under the new ids.
    rehires: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # short, like Plan's
        return (
            f"View({self.mode}, {self.desired!r}, {len(self.linked_users)} linked users, "
            f"{len(self.linked_groups)} linked groups)"
        )


def scope_moves(
    linked: Mapping[str, LinkedUser], in_scope: Collection[str]
) -> tuple[frozenset[str], frozenset[str]]:
    """(entered, left): linked users whose place in the user scope differs from the store's."""
    entered = frozenset(s for s, link in linked.items() if not link.in_scope and s in in_scope)
    left = frozenset(s for s, link in linked.items() if link.in_scope and s not in in_scope)
    return entered, left


def full_view(
    directory: LdapDirectory,
    mapper: Mapper,
    config: Config,
    store: Store,
    rekeyed: Mapping[str, str] | None = None,
) -> View:
    """Everything in scope and every link.

    `rekeyed`: a dry run's pending re-key (old source id -> new), applied to the links."""
    position = directory.position()  # before the read, so changes made during it come next
    # The target's own copy of each linked user replaces what was pushed (observe_everything).
    linked_users = store.linked_users(with_values=False)
    linked_groups = store.linked_groups()
    if rekeyed:
        linked_users = rekey.users_rekeyed(linked_users, rekeyed)
        linked_groups = rekey.groups_rekeyed(linked_groups, rekeyed)
    sources: list[SourceGroup] = []

    def users_only() -> Iterator[SourceUser]:
        for entry in directory.stream():
            if isinstance(entry, SourceGroup):
                sources.append(entry)
            else:
                yield entry

    # Mapped as they arrive: 100,000 directory entries are never held next to their mapping.
    users, failures = map_users(users_only(), mapper)
    kept = unmapped_but_linked(failures, linked_users)
    groups = (
        map_groups(sources, mapper, lambda m: m in users or m in kept)
        if config.options.groups
        else {}
    )
    desired = Desired(users, groups, failures, len(users) + len(failures))
    entered, left = scope_moves(linked_users, users.keys() | kept)
    return View(
        "full",
        desired,
        linked_users,
        linked_groups,
        position,
        universe=None,
        scope_entered=entered,
        scope_left=left,
    )


def incremental_view(
    changes: ChangeSet,
    mapper: Mapper,
    config: Config,
    store: Store,
    linked_user_ids: Callable[[], set[str]],
) -> View:
    """The changed objects, their links, and the linked groups their changes touch.

    `linked_user_ids()`: the linked users in scope, as the store recorded them.
    """
    if changes.empty:
        return View("incremental", Desired({}, {}, (), None), {}, {}, changes.watermark)
    users, failures = map_users(changes.users.values(), mapper)
    touched = set(changes.users) | changes.gone_users
    linked_users = store.linked_users_by_ids(touched)
    kept = unmapped_but_linked(failures, linked_users)
    groups: dict[str, DesiredGroup] = {}
    linked_groups: dict[str, LinkedGroup] = {}
    in_scope: set[str] = set()
    if config.options.groups:
        in_scope = linked_user_ids() - changes.gone_users
        in_scope |= users.keys() | kept
        for failure in failures:  # unmappable and never linked: not at the target
            if failure.source_id not in kept:
                in_scope.discard(failure.source_id)
        groups = map_groups(changes.groups.values(), mapper, in_scope.__contains__)
        # Only the groups this change concerns are loaded: O(changes), not O(groups).
        concerned = groups.keys() | changes.gone_groups | store.groups_holding(touched)
        for source_id, link in store.linked_groups_by_ids(concerned).items():
            linked_groups[source_id] = link
            if source_id not in groups and source_id not in changes.gone_groups:
                # Unchanged in the directory, but a member left scope or changed.
                members = frozenset(m for m in link.member_source_ids if m in in_scope)
                groups[source_id] = DesiredGroup(source_id, link.display_name, members)
    desired = Desired(users, groups, failures, None)
    others = frozenset(in_scope - linked_users.keys() - users.keys()) if groups else frozenset()
    universe: set[Record] = {(Kind.USER, sid) for sid in touched} | {
        (Kind.GROUP, sid) for sid in groups.keys() | changes.gone_groups
    }
    entered, left = scope_moves(linked_users, users.keys() | kept)
    return View(
        "incremental",
        desired,
        linked_users,
        linked_groups,
        changes.watermark,
        others,
        universe=frozenset(universe),
        scope_entered=entered,
        scope_left=left,
    )


def user_view(
    directory: LdapDirectory,
    mapper: Mapper,
    config: Config,
    store: Store,
    user_name: str,
    rekeyed: Mapping[str, str] | None = None,
) -> View:
    """`sync --user NAME`: that user, its memberships, and nothing else.

    `rekeyed`: a dry run's pending re-key (old source id -> new), applied to the links."""
    snapshot = directory.read()
    users, failures = map_users(snapshot.users.values(), mapper)
    asked = user_name_key(user_name)
    wanted = {sid: u for sid, u in users.items() if user_name_key(u.user_name) == asked}
    linked_groups_all = store.linked_groups()
    if rekeyed:
        linked_groups_all = rekey.groups_rekeyed(linked_groups_all, rekeyed)
    groups: dict[str, DesiredGroup] = {}
    linked_groups: dict[str, LinkedGroup] = {}
    if config.options.groups:
        for sid, group in map_groups(snapshot.groups.values(), mapper, wanted.__contains__).items():
            link = linked_groups_all.get(sid)
            before = link.member_source_ids if link else frozenset()
            members = (before - wanted.keys()) | group.member_source_ids
            if link is None and not group.member_source_ids:
                continue
            if link is not None:
                linked_groups[sid] = link
            groups[sid] = replace(group, member_source_ids=members)
    mine = tuple(f for f in failures if user_name_key(f.name) == asked)
    desired = Desired(wanted, groups, mine, None)
    if rekeyed:
        old_ids = {new: old for old, new in rekeyed.items()}
        linked_users = store.linked_users_by_ids([old_ids.get(sid, sid) for sid in wanted])
        linked_users = rekey.users_rekeyed(linked_users, rekeyed)
    else:
        linked_users = store.linked_users_by_ids(wanted)
    universe: set[Record] = {(Kind.USER, sid) for sid in wanted}
    universe |= {(Kind.GROUP, sid) for sid in groups}
    entered, _ = scope_moves(linked_users, wanted.keys())
    absent, unknown = None, False
    if not wanted and not mine:
        absent, unknown = why_absent(directory, config, store, user_name)
    return View(
        "user",
        desired,
        linked_users,
        linked_groups,
        universe=frozenset(universe),
        scope_entered=entered,
        absent=absent,
        unknown=unknown,
    )


def why_absent(
    directory: LdapDirectory, config: Config, store: Store, user_name: str
) -> tuple[str, bool]:
    """(why no user in scope has this userName, whether nothing has it at all)."""
    linked = store.linked_user_named(user_name)
    link = f"; linked to target account {linked.target_id}" if linked else ""
    rule = config.rules["userName"]
    if rule.source is None:  # a template: the entry can't be searched for by its value
        return f"no user in scope maps to userName {user_name!r}{link}", linked is None
    found = directory.locate_user(rule.source, user_name)
    if found is None:
        where = f"no entry under source.base_dn has {rule.source}={user_name}"
        return f"{where}{link}", linked is None
    dn, reason = found
    return f"{dn} is out of scope: {reason}{link}", False


def revisit(
    directory: LdapDirectory, changes: ChangeSet, failures: Failures, now: datetime
) -> ChangeSet:
    """Add the records an earlier cycle could not apply and retry.to_revisit brings back,
    which change detection would not report again until they are edited."""
    users: set[str] = set()
    groups: set[str] = set()
    for kind, source_id in retry.to_revisit(failures, now):
        (users if kind == "user" else groups).add(source_id)
    users -= changes.users.keys() | changes.gone_users
    groups -= changes.groups.keys() | changes.gone_groups
    if not users and not groups:
        return changes
    return changes.merged(directory.revisit(users, groups, changes.watermark))


def read_view(
    config: Config,
    store: Store,
    mapper: Mapper,
    only_user: str | None,
    failures: Failures,
    now: datetime,
    rekeyed: Mapping[str, str] | None = None,
) -> View:
    """This cycle's view: one user's, incremental from the watermark, or full; with the
    rehires' links re-keyed to their new entries."""
    with LdapDirectory(config.source, mapper.ldap_attributes()) as directory:

        def rehired(view: View) -> View:
            return with_rehires(view, store, find_rehires(directory, store, view, config))

        if only_user is not None:
            return rehired(user_view(directory, mapper, config, store, only_user, rekeyed))
        mode = choose_mode(store, config, now)
        if mode == "incremental":
            watermark = store.watermark(WATERMARK)
            assert watermark is not None
            # Read at most once a cycle, by change detection or by the view, whichever asks.
            # Only users in scope: one who left it and comes back must be seen entering.
            user_ids = cache(partial(store.linked_ids, Kind.USER, in_scope=True))
            try:
                changes = directory.changes(
                    watermark, user_ids, partial(store.linked_ids, Kind.GROUP)
                )
            except WatermarkLost as exc:
                logger.info("watermark lost: full reconciliation", reason=str(exc))
            else:
                changes = revisit(directory, changes, failures, now)
                return rehired(incremental_view(changes, mapper, config, store, user_ids))
        return rehired(full_view(directory, mapper, config, store, rekeyed))
