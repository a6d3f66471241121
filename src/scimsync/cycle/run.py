"""One cycle applied and recorded: prepare, apply what the guard allows, record the run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from scimsync import log, rekey
from scimsync.apply import Executor, Outcome, Progress
from scimsync.config import Config, redact_url
from scimsync.cycle.failures import (
    clear_settled_failures,
    cleared_by_success,
    record_refusals,
    refusals_to_record,
)
from scimsync.cycle.held import apply_approval, audit_approval, audit_held, stage_held, warn_held
from scimsync.cycle.mode import SETTINGS, choose_mode, record_position, settings_fingerprint
from scimsync.cycle.prepare import Prepared, prepare
from scimsync.cycle.recovery import recover_interrupted
from scimsync.cycle.rehires import record_rehires
from scimsync.errors import ExitCode
from scimsync.model import Operation
from scimsync.state import Store, held_digest
from scimsync.state.base import Clock, utc_now
from scimsync.target import open_target
from scimsync.target.errors import Unauthorized

logger = log.get(__name__)


@dataclass
class CycleReport:
    """What one cycle did, and the exit code `sync` ends with."""

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

    @property
    def unsent(self) -> int:
        """Operations the guard allowed that were neither applied nor failed."""
        done = sum(self.outcome.applied.values()) + len(self.outcome.failed)
        return len(self.prepared.verdict.allowed.operations) - done

    def result(self) -> tuple[str, str | None]:
        """The run's result, and its cause: why it stopped, or what it left unsent."""
        verdict = self.prepared.verdict
        if self.interrupted:
            return "interrupted", f"stopped on request: {self.unsent} operations not sent"
        if verdict.blocked:
            return "stopped", verdict.reason
        return "partial" if self.exit_code is ExitCode.FAILED else "ok", verdict.reason


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
        quiet = not prepared.plan.operations and not refusals and not view.rehires
        if view.mode == "incremental" and quiet:
            # Nothing changed that matters: move the watermark, count one quiet cycle.
            with store.atomic():
                clear_settled_failures(store, prepared)
                record_position(store, view, config, now)
            if prepared.plan.conflicts or prepared.desired.failures:
                cycle_id, _ = store.count_cycle(view.mode, "partial", "records refused")
            else:
                cycle_id, _ = store.count_cycle("quiet", "ok")
            return CycleReport(cycle_id, prepared)
        held = [op.to_json() for op in verdict.held]
        same_hold = bool(held) and held_digest(held) == held_digest(store.staged_deletions())
        if same_hold and not verdict.allowed.operations and not refusals and not view.rehires:
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
        record_rehires(store, cycle_id, view)  # before the executor saves the new links
        if approval is not None and approved:
            audit_approval(store, cycle_id, approved, approval)
        executor = Executor(
            target,
            store,
            cycle_id,
            desired_users=prepared.desired.users,
            desired_groups=prepared.desired.groups,
            linked_users=prepared.linked_users,
            linked_groups=prepared.view.linked_groups,
            failing=cleared_by_success(prepared),
            options=config.options,
            max_concurrency=config.target.max_concurrency,
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
        report.interrupted = report.stopped and report.unsent > 0
        outcome = report.outcome
        result, cause = report.result()
        store.finish_run(cycle_id, result, outcome.applied, cause)
        if approval is not None and not verdict.blocked and not report.interrupted:
            store.clear_approval()  # applied, or no longer matching what is held
        # Held deletions keep the watermark where it was, so the next cycle meets them again;
        # so does the users' place in scope, from which change detection derives departures.
        if not verdict.blocked and not report.stopped:
            record_position(store, view, config, now)
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


def record_key_refusal(store: Store, cycle_id: str, config: Config, exc: Unauthorized) -> None:
    """The key refused: an event of the whole cycle, naming the target, not of one record."""
    store.audit(
        cycle_id,
        "key_refused",
        "cycle",
        source_id="",
        target_id=None,
        success=False,
        cause=str(exc),
        name=redact_url(config.target.url),
    )
