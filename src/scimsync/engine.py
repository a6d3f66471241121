"""One cycle: read, map, plan, guard, apply, record.

A cycle is a full reconciliation (everything in scope, and the target's copies of what
scimsync manages) or incremental (only what changed in the directory since the stored
watermark). Both hand the planner a *view*: the desired records and the links of one
universe of objects, complete within itself, so the same rules apply to both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from scimsync import log, rekey
from scimsync.apply import Executor, Outcome, Progress
from scimsync.config import Config, ConfigError, redact_url
from scimsync.cycle.desired import Desired, map_users, unmapped_but_linked
from scimsync.cycle.mode import (
    LAST_FULL,
    SETTINGS,
    WATERMARK,
    choose_mode,
    settings_fingerprint,
)
from scimsync.cycle.observe import observe
from scimsync.cycle.recovery import recover_interrupted
from scimsync.cycle.views import REFUSALS, Failures, View, read_view
from scimsync.directory import LdapDirectory, NoSuchEntry
from scimsync.errors import ExitCode
from scimsync.fingerprint import fingerprint, of_desired
from scimsync.guard import GuardVerdict, guard
from scimsync.mapping import Finding, compile_rules
from scimsync.model import (
    Conflict,
    DesiredGroup,
    DesiredUser,
    Kind,
    LinkedUser,
    MappingFailure,
    Operation,
    Plan,
    Record,
)
from scimsync.plan import plan
from scimsync.state import Approval, Store, held_digest
from scimsync.state.store import IDENTITY, MAX_CAUSE
from scimsync.target import Target, open_target
from scimsync.target.errors import Unauthorized

logger = log.get(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything decided before the first write: the plan and what the guard holds back."""

    view: View
    plan: Plan
    verdict: GuardVerdict
    failures: Failures  # as the cycle started
    # The links the plan compared against; a full cycle's carry the target's own values.
    linked_users: Mapping[str, LinkedUser]
    skipped: frozenset[Record] = frozenset()  # in back-off or quarantine: not planned

    def __repr__(self) -> str:  # short, like Plan's
        return f"Prepared({self.view!r}, {self.plan!r}, {len(self.failures)} failing records)"

    @property
    def desired(self) -> Desired:
        return self.view.desired


@dataclass
class CycleReport:
    cycle_id: str | None
    prepared: Prepared
    outcome: Outcome = field(default_factory=Outcome)
    stopped: bool = False
    interrupted: bool = False  # stopped on request with operations left unapplied

    @property
    def exit_code(self) -> ExitCode:
        if self.prepared.view.unknown:
            return ExitCode.CONFIG  # `--user NAME` names nothing: a usage error
        if self.prepared.verdict.blocked:
            return ExitCode.HELD
        if self.interrupted:
            return ExitCode.FAILED
        if self.outcome.failed or self.prepared.desired.failures or self.prepared.plan.conflicts:
            return ExitCode.FAILED
        return ExitCode.OK


def skipped(failures: Failures, view: View, now: datetime) -> frozenset[tuple[Kind, str]]:
    """Records in back-off, quarantined and unchanged since, or linked but unmappable now."""
    desired = view.desired
    skip: set[tuple[Kind, str]] = {
        ("user", sid) for sid in unmapped_but_linked(desired.failures, view.linked_users)
    }
    for (kind, source_id), failure in failures.items():
        record: DesiredUser | DesiredGroup | None = (
            desired.users.get(source_id) if kind == "user" else desired.groups.get(source_id)
        )
        if not failure.retry_due(now, of_desired(record) if record else None):
            skip.add((kind, source_id))
    return frozenset(skip)


# --- the cycle -----------------------------------------------------------------------------


async def prepare(
    config: Config,
    store: Store,
    target: Target,
    *,
    only_user: str | None = None,
    allow_deletions: bool = False,
    now: Clock = utc_now,
    rekeyed: Mapping[str, str] | None = None,
) -> Prepared:
    """Read, map, observe the target and plan: everything up to the first write.

    `rekeyed`: a dry run's pending re-key (old source id -> new), applied to what it reads.
    """
    mapper = compile_rules(config.rules)
    failures = store.failures()  # read once: mode, skips, refusals and the executor use it
    if rekeyed:
        failures = rekey.failures_rekeyed(failures, rekeyed)
    view = read_view(config, store, mapper, only_user, failures, now(), rekeyed)
    inputs = await observe(target, view, config, store)
    skip = skipped(failures, view, now())
    inputs = replace(inputs, skip=skip)
    the_plan = plan(inputs, config.options)
    if allow_deletions:
        verdict = GuardVerdict.allow(the_plan)
    else:
        linked_count = store.count_linked("user")
        source_count = view.desired.source_user_count
        verdict = guard(
            the_plan,
            linked_count,
            config.options,
            linked_count if source_count is None else source_count,
        )
    return Prepared(view, the_plan, verdict, failures, inputs.linked_users, skip)


async def dry_run(config: Config, store: Store, only_user: str | None = None) -> Prepared:
    # A changed identity attribute: plan what sync does after re-keying (or refuse as it does).
    pending = rekey.pending(config, store)
    if pending is not None and pending.new_ids:
        logger.info("sync re-keys the store first", cause=pending.cause)
    async with open_target(config.target) as target:
        return await prepare(
            config,
            store,
            target,
            only_user=only_user,
            rekeyed=pending.new_ids if pending is not None else None,
        )


async def sync(
    config: Config,
    store: Store,
    *,
    only_user: str | None = None,
    allow_deletions: bool = False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    now: Clock = utc_now,
) -> CycleReport:
    """One cycle, recorded as a run: a quiet one is counted into the newest quiet run.

    Directory and target errors before the first write leave no run, except a refused
    API key, which is recorded as a failed run with an audit event.
    """
    # Before anything is read: links keyed by another identity attribute follow their entries.
    unchanged = store.watermark(SETTINGS) == settings_fingerprint(config)
    rekey.settle(config, store, settings_unchanged=unchanged)
    async with open_target(config.target) as target:
        try:
            await recover_interrupted(store, target, config)
            prepared = await prepare(
                config, store, target, only_user=only_user, allow_deletions=allow_deletions, now=now
            )
        except Unauthorized as exc:
            mode = "user" if only_user else choose_mode(store, config, now())
            cycle_id, new = store.count_cycle(mode, "failed", str(exc))
            if new:  # the same refusal cycle after cycle is one event, not one per cycle
                record_key_refusal(store, cycle_id, config, exc)
            raise
        approval = store.approval()
        approved: tuple[Operation, ...] = ()
        if approval is not None and prepared.verdict.blocked:
            prepared, approved = apply_approval(store, prepared, approval)
        view, verdict = prepared.view, prepared.verdict
        refusals = refusals_to_record(prepared)  # new ones: a lasting one is on record
        if view.mode == "incremental" and not prepared.plan.operations and not refusals:
            # Nothing changed that matters: move the watermark, count one quiet cycle.
            with store.atomic():
                clear_settled_failures(store, prepared)
                record_scope(store, view)
                if view.watermark is not None:
                    store.set_watermark(WATERMARK, view.watermark)
            if prepared.plan.conflicts or prepared.desired.failures:
                cycle_id, _ = store.count_cycle(view.mode, "partial", "records refused")
            else:
                cycle_id, _ = store.count_cycle("quiet", "ok")
            return CycleReport(cycle_id, prepared)
        held = [op.to_json() for op in verdict.held]
        same_hold = bool(held) and held_digest(held) == held_digest(store.staged_deletions())
        if same_hold and not verdict.allowed.operations and not refusals:
            # The hold of the cycle before and nothing else: counted into that cycle's run.
            cycle_id, _ = store.count_cycle(view.mode, "stopped", verdict.reason)
            warn_held(cycle_id, verdict)
            return CycleReport(cycle_id, prepared)
        cycle_id = store.begin_run(view.mode)
        report = CycleReport(cycle_id, prepared)
        if held and not same_hold:
            audit_held(store, cycle_id, verdict)
        stage_held(store, cycle_id, prepared)
        record_refusals(store, cycle_id, prepared, refusals, config, now())
        if approval is not None and approved:
            audit_approval(store, cycle_id, approved, approval)
        executor = Executor(
            target,
            store,
            cycle_id,
            config,
            prepared,
            progress=progress,
            should_stop=should_stop,
            now=now,
        )
        try:
            report.outcome = await executor.apply(verdict.allowed)
        except BaseException as exc:
            # Cut short (target unreachable, key refused, interrupted): never a clean run.
            store.finish_run(
                cycle_id, "failed", executor.outcome.applied, str(exc) or type(exc).__name__
            )
            if isinstance(exc, Unauthorized):
                record_key_refusal(store, cycle_id, config, exc)
            raise
        report.stopped = should_stop()
        outcome = report.outcome
        sent = sum(outcome.applied.values()) + len(outcome.failed)
        report.interrupted = report.stopped and sent < len(verdict.allowed.operations)
        if report.interrupted:
            result = "interrupted"
        elif verdict.blocked:
            result = "stopped"
        else:
            result = "partial" if report.exit_code is ExitCode.FAILED else "ok"
        cause = verdict.reason  # a stopped run says why
        if report.interrupted:
            cause = (
                f"stopped on request: {len(verdict.allowed.operations) - sent} operations not sent"
            )
        store.finish_run(cycle_id, result, outcome.applied, cause)
        if approval is not None and not verdict.blocked and not report.interrupted:
            store.clear_approval()  # applied, or no longer matching what is held
        # Held deletions keep the watermark where it was, so the next cycle meets them again;
        # so does the users' place in scope, from which change detection derives departures.
        if not verdict.blocked and not report.stopped:
            record_scope(store, view)
            if view.watermark is not None:
                store.set_watermark(WATERMARK, view.watermark)
                if view.mode == "full":
                    store.set_watermark(LAST_FULL, now().isoformat())
                    store.set_watermark(SETTINGS, settings_fingerprint(config))
                    store.set_watermark(IDENTITY, rekey.configured(config))
        logger.info(
            "cycle interrupted" if report.interrupted else "cycle finished",
            cycle_id=cycle_id,
            mode=view.mode,
            applied=dict(outcome.applied),
            failed=len(outcome.failed),
            held=len(verdict.held),
        )
        if verdict.blocked:
            warn_held(cycle_id, verdict)
        return report


def record_scope(store: Store, view: View) -> None:
    """Which linked users entered or left the user scope, for the next change detection."""
    if view.scope_entered:
        store.set_in_scope(view.scope_entered, True)
    if view.scope_left:
        store.set_in_scope(view.scope_left, False)


def stage_held(store: Store, cycle_id: str, prepared: Prepared) -> None:
    """What `status` lists as held. A one-user cycle decides only about its own records:
    the operations held earlier for others stay listed."""
    held = [op.to_json() for op in prepared.verdict.held]
    if prepared.view.mode == "user":
        held = unaffected(store.staged_deletions(), prepared.plan.operations) + held
    store.stage_deletions(cycle_id, held)


def unaffected(
    staged: Iterable[Mapping[str, object]], planned: Iterable[Operation]
) -> list[dict[str, object]]:
    """The staged operations, less what this plan decides again (members one by one)."""
    decided: dict[tuple[object, object, object], set[object]] = {}
    for op in planned:
        decided.setdefault((op.action.value, op.kind, op.source_id), set()).update(op.members)
    kept: list[dict[str, object]] = []
    for entry in staged:
        key = (entry.get("action"), entry.get("kind"), entry.get("source_id"))
        if key not in decided:
            kept.append(dict(entry))
            continue
        members = entry.get("members")
        if isinstance(members, list):
            rest = [m for m in members if m not in decided[key]]
            if rest:
                kept.append({**entry, "members": rest})
    return kept


Refusal = tuple[str, Conflict | MappingFailure]


def every_refusal(prepared: Prepared) -> list[Refusal]:
    refusals: list[Refusal] = [("conflict", c) for c in prepared.plan.conflicts]
    return refusals + [("map", f) for f in prepared.desired.failures]


def refusals_to_record(prepared: Prepared) -> list[Refusal]:
    """Refusals not on record with this cause yet. Refused records are planned again every
    cycle (revisit_failing); one that is refused for the same reason is not audited again."""
    fresh: list[Refusal] = []
    for event, refusal in every_refusal(prepared):
        row = prepared.failures.get((refusal.kind, refusal.source_id))
        if row is None or row.action != event or row.cause != refusal.cause[:MAX_CAUSE]:
            fresh.append((event, refusal))
    return fresh


def warn_held(cycle_id: str, verdict: GuardVerdict) -> None:
    logger.warning(
        "operations held by the safety threshold",
        cycle_id=cycle_id,
        held=len(verdict.held),
        reason=verdict.reason,
        approve="scimsync sync --allow-deletions",
    )


def apply_approval(
    store: Store, prepared: Prepared, approval: Approval
) -> tuple[Prepared, tuple[Operation, ...]]:
    """Lift the hold when `sync --allow-deletions` approved exactly the operations held now.

    Returns the cycle as it goes ahead and the operations the approval released.
    """
    held = prepared.verdict.held
    if held_digest(op.to_json() for op in held) != approval.digest:
        logger.warning(
            "an approval recorded by `sync --allow-deletions` no longer matches the held "
            "operations: approve them again",
            approved=approval.count,
            held=len(held),
        )
        store.clear_approval()
        return prepared, ()
    return replace(prepared, verdict=GuardVerdict.allow(prepared.plan)), held


def audit_approval(
    store: Store, cycle_id: str, released: Iterable[Operation], approval: Approval
) -> None:
    cause = f"approved by `scimsync sync --allow-deletions` at {approval.at.isoformat()}"
    with store.atomic():
        for op in released:
            store.audit(cycle_id, "approved", op.kind, op.source_id, op.target_id, True, cause,
                        name=op.name)  # fmt: skip


def audit_held(store: Store, cycle_id: str, verdict: GuardVerdict) -> None:
    """Each held operation, when the held set is new: not again every cycle it stays."""
    with store.atomic():
        for op in verdict.held:
            store.audit(cycle_id, "held", op.kind, op.source_id, op.target_id, False,
                        verdict.reason, name=op.name)  # fmt: skip


def record_key_refusal(store: Store, cycle_id: str, config: Config, exc: Unauthorized) -> None:
    shown = redact_url(config.target.url)
    store.audit(cycle_id, "key_refused", "cycle", "", None, False, str(exc), name=shown)


def record_refusals(
    store: Store,
    cycle_id: str,
    prepared: Prepared,
    refusals: Iterable[Refusal],
    config: Config,
    now: datetime,
) -> None:
    """Records the planner or the mapping refused: audited, listed by `status`.

    Their failure rows carry the cause's fingerprint, never the record's, so a refused
    record is planned again every cycle; the rows of records settled since go.
    """
    with store.atomic():  # one transaction, not two per refusal
        clear_settled_failures(store, prepared)
        for event, refusal in refusals:
            store.audit(
                cycle_id, event, refusal.kind, refusal.source_id, None, False, refusal.cause,
                name=refusal.name,
            )  # fmt: skip
            # Without a row, a refusal would be invisible to `status` after its first cycle.
            store.record_failure(
                refusal.kind, refusal.source_id, refusal.name, event, refusal.cause,
                source_fingerprint=fingerprint({"cause": refusal.cause}),
                now=now, max_retries=config.options.max_retries,
            )  # fmt: skip


def clear_settled_failures(store: Store, prepared: Prepared) -> None:
    """Failure rows of records this cycle looked at that need nothing now: gone from both
    the directory and the links, no longer refused, or planned again with nothing to do
    (the change that failed was undone). Records in back-off or quarantine are not looked at."""
    view = prepared.view
    refused = {(r.kind, r.source_id) for _, r in every_refusal(prepared)}
    planned = {(op.kind, op.source_id) for op in prepared.plan.operations}
    for key, row in prepared.failures.items():
        kind, source_id = key
        if key in refused or (view.universe is not None and key not in view.universe):
            continue
        desired = view.desired.users if kind == "user" else view.desired.groups
        linked = view.linked_users if kind == "user" else view.linked_groups
        gone = source_id not in desired and source_id not in linked
        if gone or (key not in prepared.skipped and (row.action in REFUSALS or key not in planned)):
            store.clear_failure(kind, source_id)


# --- check ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirectoryCheck:
    server: str
    users: int
    disabled: int
    groups: int
    memberships: int
    unmappable: tuple[MappingFailure, ...]
    template_findings: tuple[Finding, ...] = ()  # per rule, over every user in scope
    change_detection: str = ""  # how incremental cycles see changes, and what it costs
    change_warning: str | None = None


@dataclass(frozen=True, slots=True)
class TargetCheck:
    url: str
    features: str
    users: int


def check_directory(config: Config) -> DirectoryCheck:
    mapper = compile_rules(config.rules)
    with LdapDirectory(config.source, mapper.ldap_attributes()) as directory:
        server = directory.server_info()
        try:
            directory.require_base()
        except NoSuchEntry:  # a configuration mistake, not an unreachable directory
            raise ConfigError(
                f"source.base_dn: {config.source.base_dn} does not exist on "
                f"{config.source.url} (noSuchObject)"
            ) from None
        detection, detection_warning = directory.change_detection()
        snapshot = directory.read()
    # Every template runs against every user in scope: the read is complete already.
    _, failures = map_users(snapshot.users.values(), mapper, log_warnings=False)
    memberships = sum(
        len(group.member_guids & snapshot.users.keys()) for group in snapshot.groups.values()
    )
    return DirectoryCheck(
        server=server,
        users=len(snapshot.users),
        disabled=sum(1 for user in snapshot.users.values() if user.disabled),
        groups=len(snapshot.groups),
        memberships=memberships,
        unmappable=failures,
        template_findings=tuple(mapper.findings()),
        change_detection=detection,
        change_warning=detection_warning,
    )


CHECK_TIMEOUT_SECONDS = 5.0


async def check_target(config: Config) -> TargetCheck:
    """One attempt per request with a short timeout: `check` answers, it does not persevere."""
    quick = config.target.model_copy(
        update={"max_retries": 0, "timeout": min(config.target.timeout, CHECK_TIMEOUT_SECONDS)}
    )
    async with open_target(quick) as target:
        spc = await target.verified_service_provider_config()
        listed = 0
        async for _ in target.iter_users():  # one page is enough to prove the key works
            listed += 1
            break
        total = getattr(target, "last_total_results", None)
    features = ", ".join(
        f"{name} {'yes' if (spc.get(name) or {}).get('supported') else 'no'}"
        for name in ("patch", "bulk", "filter")
    )
    shown = redact_url(config.target.url)
    return TargetCheck(shown, features, total if isinstance(total, int) else listed)
