"""One cycle: read, map, plan, guard, apply, record."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from scimsync import log
from scimsync.apply import Executor, Outcome, Progress
from scimsync.config import Config
from scimsync.directory import LdapDirectory, Snapshot
from scimsync.fingerprint import fingerprint, of_desired
from scimsync.guard import GuardVerdict, guard
from scimsync.mapping import Mapper, compile_rules
from scimsync.model import (
    DesiredGroup,
    DesiredUser,
    Kind,
    LinkedGroup,
    LinkedUser,
    MappingFailure,
    Plan,
    TargetRef,
)
from scimsync.plan import PlanInput, plan
from scimsync.state import Store
from scimsync.target import RemoteGroup, RemoteUser, Target, open_target

logger = log.get(__name__)

Scope = Literal["full", "partial"]


@dataclass(frozen=True, slots=True)
class Desired:
    users: dict[str, DesiredUser]
    groups: dict[str, DesiredGroup]
    failures: tuple[MappingFailure, ...]
    source_user_count: int


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything decided before the first write: the plan and what the guard holds back."""

    desired: Desired
    plan: Plan
    verdict: GuardVerdict
    linked_user_count: int


@dataclass
class CycleReport:
    cycle_id: str | None
    prepared: Prepared
    outcome: Outcome = field(default_factory=Outcome)

    @property
    def exit_code(self) -> int:
        if self.prepared.verdict.blocked:
            return 3
        if self.outcome.failed or self.prepared.desired.failures or self.prepared.plan.conflicts:
            return 1
        return 0


def read_directory(config: Config, mapper: Mapper) -> Snapshot:
    with LdapDirectory(config.source, mapper.ldap_attributes()) as directory:
        return directory.read()


def map_snapshot(snapshot: Snapshot, mapper: Mapper, config: Config) -> Desired:
    users: dict[str, DesiredUser] = {}
    failures: list[MappingFailure] = []
    for source in snapshot.users.values():
        mapped = mapper.map_user(source)
        if isinstance(mapped, MappingFailure):
            failures.append(mapped)
        else:
            users[mapped.source_id] = mapped
    groups: dict[str, DesiredGroup] = {}
    if config.options.groups:
        for group in snapshot.groups.values():
            desired = mapper.map_group(group)
            members = frozenset(m for m in desired.member_source_ids if m in users)
            groups[desired.source_id] = replace(desired, member_source_ids=members)
    return Desired(users, groups, tuple(failures), len(snapshot.users))


def narrow_to_user(desired: Desired, user_name: str, linked: Mapping[str, LinkedGroup]) -> Desired:
    """`sync --user NAME`: that user, and its memberships, and nothing else."""
    wanted = {
        sid: user
        for sid, user in desired.users.items()
        if user.user_name.lower() == user_name.lower()
    }
    groups: dict[str, DesiredGroup] = {}
    for sid, group in desired.groups.items():
        before = linked[sid].member_source_ids if sid in linked else frozenset()
        members = (before - wanted.keys()) | (group.member_source_ids & wanted.keys())
        if sid in linked and members == before:
            continue
        if wanted.keys() & group.member_source_ids or sid in linked:
            groups[sid] = replace(group, member_source_ids=members)
    failures = tuple(f for f in desired.failures if f.name.lower() == user_name.lower())
    return Desired(wanted, groups, failures, desired.source_user_count)


def skipped(store: Store, desired: Desired, now: datetime) -> frozenset[tuple[Kind, str]]:
    """Records in back-off, or quarantined and unchanged at the source since."""
    skip: set[tuple[Kind, str]] = set()
    for (kind, source_id), failure in store.failures().items():
        record: DesiredUser | DesiredGroup | None = (
            desired.users.get(source_id) if kind == "user" else desired.groups.get(source_id)
        )
        if not failure.retry_due(now, of_desired(record) if record else None):
            skip.add((kind, source_id))
    return frozenset(skip)


async def observe_target(
    target: Target,
    desired: Desired,
    linked_users: dict[str, LinkedUser],
    linked_groups: dict[str, LinkedGroup],
    config: Config,
) -> tuple[dict[str, TargetRef], dict[str, TargetRef], dict[str, frozenset[str]]]:
    """Read the target: candidates for adoption, drift of linked objects, and lost links.

    Linked objects deleted at the target by hand are dropped from `linked_*` so that the
    planner creates them again.
    """
    by_user_name = config.options.match_users_by == "userName"
    remote_users: dict[str, RemoteUser] = {}
    users_by_key: dict[str, TargetRef] = {}
    async for remote in target.iter_users():
        remote_users[remote.id] = remote
        key = remote.user_name if by_user_name else str(remote.values.get("externalId", ""))
        if key:
            users_by_key[key.lower()] = TargetRef(remote.id, remote.user_name, remote.active)
    linked_ids = {link.target_id for link in linked_users.values()}
    for source_id, link in list(linked_users.items()):
        seen = remote_users.get(link.target_id)
        if seen is None:
            del linked_users[source_id]
            continue
        keys = set(link.values) | (
            set(desired.users[source_id].values) if source_id in desired.users else set()
        )
        drift = {k: seen.values[k] for k in keys if k in seen.values}
        linked_users[source_id] = replace(link, values=drift, active=seen.active)
    target_users = {k: ref for k, ref in users_by_key.items() if ref.target_id not in linked_ids}

    target_groups: dict[str, TargetRef] = {}
    target_members: dict[str, frozenset[str]] = {}
    if config.options.groups:
        remote_groups: dict[str, RemoteGroup] = {}
        async for group in target.iter_groups():
            remote_groups[group.id] = group
        linked_group_ids = {link.target_id for link in linked_groups.values()}
        for source_id, glink in list(linked_groups.items()):
            seen_group = remote_groups.get(glink.target_id)
            if seen_group is None:
                del linked_groups[source_id]
                continue
            target_members[source_id] = seen_group.member_ids
        for group in remote_groups.values():
            if group.id not in linked_group_ids:
                target_groups[group.display_name.lower()] = TargetRef(group.id, group.display_name)
    return target_users, target_groups, target_members


async def prepare(
    config: Config,
    store: Store | None,
    target: Target,
    *,
    only_user: str | None = None,
    allow_deletions: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Prepared:
    mapper = compile_rules(config.rules)
    snapshot = read_directory(config, mapper)
    desired = map_snapshot(snapshot, mapper, config)
    linked_users = store.linked_users() if store else {}
    linked_groups = store.linked_groups() if store else {}
    scope: Scope = "full"
    if only_user is not None:
        desired = narrow_to_user(desired, only_user, linked_groups)
        scope = "partial"
    target_users, target_groups, target_members = await observe_target(
        target, desired, linked_users, linked_groups, config
    )
    skip = skipped(store, desired, now()) if store else frozenset()
    the_plan = plan(
        PlanInput(
            desired_users=desired.users,
            desired_groups=desired.groups,
            linked_users=linked_users,
            linked_groups=linked_groups,
            target_users=target_users,
            target_groups=target_groups,
            target_members=target_members,
            skip=skip,
            scope=scope,
        ),
        config.options,
    )
    linked_count = len(linked_users)
    verdict = guard(the_plan, linked_count, config.options, desired.source_user_count)
    if allow_deletions:
        verdict = GuardVerdict.allow(the_plan)
    return Prepared(desired, the_plan, verdict, linked_count)


async def dry_run(config: Config, store: Store | None, only_user: str | None = None) -> Prepared:
    async with open_target(config.target) as target:
        return await prepare(config, store, target, only_user=only_user)


async def sync(
    config: Config,
    store: Store,
    *,
    only_user: str | None = None,
    allow_deletions: bool = False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> CycleReport:
    """One cycle. Directory and target errors propagate before anything is written."""
    async with open_target(config.target) as target:
        prepared = await prepare(
            config, store, target, only_user=only_user, allow_deletions=allow_deletions, now=now
        )
        cycle_id = store.begin_run("user" if only_user else "full")
        report = CycleReport(cycle_id, prepared)
        verdict = prepared.verdict
        store.stage_deletions(cycle_id, [op.to_json() for op in verdict.held])
        for failure in prepared.desired.failures:
            record_mapping_failure(store, cycle_id, failure, config, now())
        for conflict in prepared.plan.conflicts:
            store.audit(
                cycle_id,
                "conflict",
                conflict.kind,
                conflict.source_id,
                None,
                False,
                conflict.cause,
                name=conflict.name,
            )
        executor = Executor(
            target,
            store,
            cycle_id,
            config,
            prepared.desired,
            progress=progress,
            should_stop=should_stop,
            now=now,
        )
        try:
            report.outcome = await executor.apply(verdict.allowed)
        finally:
            result = (
                "stopped" if verdict.blocked else ("partial" if report.outcome.failed else "ok")
            )
            store.finish_run(cycle_id, result, report.outcome.applied)
        logger.info(
            "cycle finished",
            cycle_id=cycle_id,
            applied=dict(report.outcome.applied),
            failed=len(report.outcome.failed),
            held=len(verdict.held),
        )
        return report


def record_mapping_failure(
    store: Store, cycle_id: str, failure: MappingFailure, config: Config, now: datetime
) -> None:
    store.audit(
        cycle_id,
        "map",
        failure.kind,
        failure.source_id,
        None,
        False,
        failure.cause,
        name=failure.name,
    )
    store.record_failure(
        failure.kind,
        failure.source_id,
        failure.name,
        "map",
        failure.cause,
        source_fingerprint=fingerprint({"cause": failure.cause}),
        now=now,
        max_retries=config.options.max_retries,
    )


@dataclass(frozen=True, slots=True)
class DirectoryCheck:
    server: str
    users: int
    disabled: int
    groups: int
    memberships: int
    unmappable: tuple[MappingFailure, ...]


@dataclass(frozen=True, slots=True)
class TargetCheck:
    url: str
    features: str
    users: int


def check_directory(config: Config) -> DirectoryCheck:
    mapper = compile_rules(config.rules)
    with LdapDirectory(config.source, mapper.ldap_attributes()) as directory:
        server = directory.server_info()
        snapshot = directory.read()
    desired = map_snapshot(snapshot, mapper, config)
    memberships = sum(
        len(group.member_guids & snapshot.users.keys()) for group in snapshot.groups.values()
    )
    return DirectoryCheck(
        server=server,
        users=len(snapshot.users),
        disabled=sum(1 for user in snapshot.users.values() if user.disabled),
        groups=len(snapshot.groups),
        memberships=memberships,
        unmappable=desired.failures,
    )


async def check_target(config: Config) -> TargetCheck:
    async with open_target(config.target) as target:
        spc = await target.service_provider_config()
        listed = 0
        async for _ in target.iter_users():
            listed += 1
            break
        total = getattr(target, "last_total_results", None)
    features = ", ".join(
        f"{name} {'yes' if (spc.get(name) or {}).get('supported') else 'no'}"
        for name in ("patch", "bulk", "filter")
    )
    return TargetCheck(config.target.url, features, total if isinstance(total, int) else listed)
