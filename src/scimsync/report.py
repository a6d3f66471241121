"""What the commands print: tables on a terminal, plain lines elsewhere, JSON when asked."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from scimsync import retry
from scimsync.model import Action, Conflict, Kind, MappingFailure, Operation

if TYPE_CHECKING:
    from scimsync.apply import Progress
    from scimsync.cycle.check import DirectoryCheck, TargetCheck
    from scimsync.cycle.prepare import Prepared
    from scimsync.cycle.run import CycleReport
    from scimsync.state import Approval, AuditRecord, IntentRecord, Store

PLAN_ORDER = (
    "create",
    "link",
    "update",
    "rename",
    "add_members",
    "remove_members",
    "disable",
    "delete",
)


def plan_json(prepared: Prepared) -> dict[str, object]:
    """The shape design.md promises: operations, summary; plus what is held and refused."""
    verdict = prepared.verdict
    return {
        "operations": [op.to_json() for op in prepared.plan.operations],
        "summary": prepared.plan.summary(),
        "held": [op.to_json() for op in verdict.held],
        "held_reason": verdict.reason,
        "conflicts": [_refusal_json(c) for c in prepared.plan.conflicts],
        "protected": [_refusal_json(c) for c in prepared.plan.protected],
        "relinked": [
            {"source_id": new, "previous_source_id": old, "name": _user_name(prepared, new)}
            for old, new in prepared.view.rehires.items()
        ],
        "user_absent": prepared.view.absent,
        "mapping_failures": [_refusal_json(f) for f in prepared.desired.failures],
    }


def _refusal_json(refused: Conflict | MappingFailure) -> dict[str, object]:
    """A record the plan leaves out, and why."""
    return {
        "kind": refused.kind,
        "source_id": refused.source_id,
        "name": refused.name,
        "cause": refused.cause,
    }


def _describe(op: Operation) -> str:
    detail = ""
    if op.members or op.target_members:
        count = len(op.members) + len(op.target_members)
        detail = f" ({count} member{'s' if count != 1 else ''})"
    elif op.action is Action.RENAME:
        detail = f" (was {op.previous_name or '?'})"
    elif op.action in (Action.UPDATE, Action.LINK):
        keys = sorted({*op.values, *op.removed})
        if op.active is not None:
            keys.append("active" if op.active else "inactive")
        detail = f" ({', '.join(keys)})" if keys else ""
    return f"{op.action.value:<15}{op.kind:<6}{op.name}{detail}"


def print_plan(console: Console, prepared: Prepared) -> None:
    the_plan = prepared.plan
    _print_absent(console, prepared)
    for old, new in prepared.view.rehires.items():
        console.print(
            f"{'relink':<15}{'user':<6}{_user_name(prepared, new)} (a rehire: was {old})",
            markup=False,
        )
    for op in the_plan.operations:
        console.print(_describe(op), markup=False)
    for conflict in the_plan.conflicts:
        console.print(
            f"{'conflict':<15}{conflict.kind:<6}{conflict.name}: {conflict.cause}", markup=False
        )
    for left in the_plan.protected:
        console.print(f"{'protected':<15}{left.kind:<6}{left.name}: {left.cause}", markup=False)
    for failure in prepared.desired.failures:
        console.print(
            f"{'unmappable':<15}{failure.kind:<6}{failure.name}: {failure.cause}", markup=False
        )
    summary = the_plan.summary()
    counts = ", ".join(f"{summary[a]} {a}" for a in PLAN_ORDER if a in summary)
    console.print(f"plan: {counts or 'no changes'}", markup=False)
    if prepared.verdict.blocked:
        console.print(
            f"held by the safety threshold: {len(prepared.verdict.held)} operations "
            f"({prepared.verdict.reason}); `sync --allow-deletions` applies them once",
            markup=False,
        )
        for op in prepared.verdict.held:
            console.print(f"  held  {_describe(op)}", markup=False)


def _user_name(prepared: Prepared, source_id: str) -> str:
    return prepared.view.linked_users[source_id].user_name


def _print_absent(console: Console, prepared: Prepared) -> None:
    if prepared.view.absent is not None:
        console.print(f"--user: {prepared.view.absent}", markup=False)


def print_cycle(console: Console, cycle: CycleReport) -> None:
    _print_absent(console, cycle.prepared)
    applied = cycle.outcome.applied
    counts = ", ".join(f"{applied[a]} {a}" for a in PLAN_ORDER if applied.get(a))
    console.print(f"cycle {cycle.cycle_id}: {counts or 'no changes'}", markup=False)
    for failure in cycle.outcome.failed:
        console.print(
            f"failed  {failure.op.action.value} {failure.op.kind} {failure.op.name}: "
            f"{failure.cause}",
            markup=False,
        )
    for conflict in cycle.prepared.plan.conflicts:
        console.print(f"conflict  {conflict.kind} {conflict.name}: {conflict.cause}", markup=False)
    for unmapped in cycle.prepared.desired.failures:
        console.print(
            f"unmappable  {unmapped.kind} {unmapped.name}: {unmapped.cause}", markup=False
        )
    if cycle.interrupted:
        console.print(
            "interrupted: stopped on request after the operations in flight; the next cycle "
            "applies the rest",
            markup=False,
        )
    verdict = cycle.prepared.verdict
    if verdict.blocked:
        console.print(
            f"stopped by the safety threshold: {verdict.reason}; {len(verdict.held)} operations "
            "held (see `scimsync status`); `scimsync sync --allow-deletions` applies them once",
            markup=False,
        )


def print_approval(console: Console, approval: Approval | None) -> None:
    if approval is None:
        console.print(
            "nothing is held by the safety threshold; the active `scimsync run` holds the "
            "channel and applies everything else itself",
            markup=False,
        )
        return
    console.print(
        f"approval recorded: the active `scimsync run` applies the {approval.count} held "
        "operations at its next cycle (see `scimsync status` and `scimsync audit`)",
        markup=False,
    )


def print_directory_check(console: Console, check: DirectoryCheck) -> None:
    console.print(f"directory   {check.server}: bound", markup=False)
    console.print(
        f"  in scope: {check.users} users ({check.disabled} disabled), {check.groups} groups, "
        f"{check.memberships} memberships",
        markup=False,
    )
    console.print(f"  changes: {check.change_detection}", markup=False)
    if check.change_warning:
        console.print(f"  warning: {check.change_warning}", markup=False)
    if check.external_users:
        count = len(check.external_users)
        console.print(
            f"  note: {count} user{'s' if count != 1 else ''} with an email outside "
            f"options.verified_domains {'become' if count != 1 else 'becomes'} external "
            "Atlassian accounts: "
            + ", ".join(check.external_users[:10])
            + (", ..." if count > 10 else ""),
            markup=False,
        )
    for finding in check.template_findings:
        console.print(f"  warning: {finding}", markup=False)
    for failure in check.unmappable[:10]:
        console.print(f"  unmappable user {failure.name}: {failure.cause}", markup=False)
    if check.users and len(check.unmappable) == check.users:
        console.print(
            f"  no user can be mapped: all {check.users} in scope are unmappable; "
            "fix the mapping before the first sync",
            markup=False,
        )


def print_target_check(console: Console, check: TargetCheck) -> None:
    console.print(f"target      {check.url}: the API key works", markup=False)
    console.print(f"  {check.features}; {check.users} users visible", markup=False)
    for warning in (check.key_expiry, *check.schema_warnings):
        if warning:
            console.print(f"  warning: {warning}", markup=False)


def print_status(console: Console, store: Store, key_expiry: str | None = None) -> None:
    if key_expiry:
        console.print(f"warning: {key_expiry}", markup=False)
    console.print(
        f"linked: {store.count_linked(Kind.USER)} users, {store.count_linked(Kind.GROUP)} groups",
        markup=False,
    )
    runs = store.runs(limit=5)
    if not runs:
        console.print("no cycles yet")
    for run in runs:
        applied = ", ".join(f"{n} {a}" for a, n in sorted(run.summary.items())) or "no changes"
        cycles = f"{run.cycles} cycle{'s' if run.cycles != 1 else ''}"
        if run.mode == "quiet":
            applied = f"quiet since {_time(run.started_at)} ({cycles})"
        elif run.cycles > 1:
            applied += f" ({cycles}, last {_time(run.finished_at)})"
        cause = f": {run.cause}" if run.cause else ""
        console.print(
            f"cycle {run.cycle_id[:12]} {run.mode:<11} {run.result or 'running':<11} "
            f"{_time(run.started_at)}  {applied}{cause}",
            markup=False,
        )
    _print_intents(console, store.open_intents())
    rows = store.failures().values()
    failures = list(filter(retry.is_failure, rows))
    pending = [f for f in failures if not f.quarantined]
    quarantined = [f for f in failures if f.quarantined]
    console.print(f"pending retries: {len(pending)}; quarantined: {len(quarantined)}", markup=False)
    for f in sorted(failures, key=lambda f: (not f.quarantined, f.name)):
        state = "quarantined" if f.quarantined else f"retry after {_time(f.next_retry_at)}"
        console.print(
            f"  {f.kind} {f.name}: {f.cause} [{f.attempts} attempts, {state}]", markup=False
        )
    protected = sorted((f for f in rows if not retry.is_failure(f)), key=lambda f: f.name)
    if protected:
        console.print(f"protected groups left alone: {len(protected)}", markup=False)
        for f in protected:
            console.print(f"  group {f.name}: {f.cause}", markup=False)
    staged = store.staged_deletions()
    if staged:
        console.print(
            f"held by the safety threshold: {len(staged)} operations "
            "(`scimsync sync --allow-deletions` applies them)",
            markup=False,
        )
        approval = store.approval()
        if approval is not None:
            console.print(
                f"  approved at {_time(approval.at)}: the active `scimsync run` applies them "
                "at its next cycle",
                markup=False,
            )
        for op in staged:
            members = op.get("members")
            count = f" ({len(members)} members)" if isinstance(members, list) else ""
            console.print(f"  {op['action']} {op['kind']} {op['name']}{count}", markup=False)


def _print_intents(console: Console, intents: Sequence[IntentRecord]) -> None:
    """An interrupted cycle's operations sent (or about to be) whose outcome is unrecorded."""
    by_cycle: dict[str, list[IntentRecord]] = {}
    for intent in intents:
        by_cycle.setdefault(intent.cycle_id, []).append(intent)
    for cycle_id, unfinished in by_cycle.items():
        count = f"{len(unfinished)} operation{'s' if len(unfinished) != 1 else ''}"
        console.print(
            f"interrupted cycle {cycle_id[:12]}: {count} without a recorded outcome "
            "(the next cycle, a full reconciliation, settles them)",
            markup=False,
        )
        for intent in unfinished:
            console.print(
                f"  {intent.action} {intent.kind} {intent.name} (since {_time(intent.at)})",
                markup=False,
            )


def print_audit(console: Console, rows: Sequence[AuditRecord]) -> None:
    for row in rows:
        outcome = "ok" if row.success else f"FAILED: {row.cause}"
        console.print(
            f"{_time(row.at)} {row.cycle_id[:12]} {row.event:<15}{row.kind:<6}"
            f"{row.name or row.source_id} -> {row.target_id or '-'} {outcome}",
            markup=False,
        )


def print_pruned(console: Console, entries: int, runs: int, before: datetime) -> None:
    console.print(
        f"pruned {entries} audit entr{'y' if entries == 1 else 'ies'} and {runs} "
        f"run{'' if runs == 1 else 's'} older than {_time(before)}",
        markup=False,
    )


def _time(value: object) -> str:
    if value is None:
        return "-"
    text = value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else str(value)
    return text.replace("+00:00", "Z")


class ConsoleProgress:
    """A bar on a terminal; one line per thousand operations otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar: RichProgress | None = None
        self.task: TaskID | None = None
        self.done: Counter[bool] = Counter()
        self.total = 0

    def start(self, total: int) -> None:
        self.total = total
        if total and self.console.is_terminal:
            self.bar = RichProgress(
                TextColumn("applying"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("apply", total=total)

    def advance(self, op: Operation, ok: bool) -> None:
        self.done[ok] += 1
        count = sum(self.done.values())
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task)
        elif count % 1000 == 0:
            self.console.print(f"applied {count}/{self.total}", markup=False)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def progress_for(console: Console, *, enabled: bool) -> Progress | None:
    return ConsoleProgress(console) if enabled else None
