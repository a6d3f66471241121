"""The failure rows a cycle writes besides the executor's: refusals, and rows that settled."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from scimsync.config import Config
from scimsync.cycle.prepare import Prepared
from scimsync.cycle.views import REFUSALS
from scimsync.fingerprint import fingerprint
from scimsync.model import Conflict, MappingFailure, Record
from scimsync.state import Store
from scimsync.state.store import MAX_CAUSE

Refusal = tuple[str, Conflict | MappingFailure]


def every_refusal(prepared: Prepared) -> list[Refusal]:
    refusals: list[Refusal] = [("conflict", c) for c in prepared.plan.conflicts]
    return refusals + [("map", f) for f in prepared.desired.failures]


def refused(prepared: Prepared) -> set[Record]:
    """The records this cycle's planner or mapping refused."""
    return {(r.kind, r.source_id) for _, r in every_refusal(prepared)}


def cleared_by_success(prepared: Prepared) -> frozenset[Record]:
    """Records whose failure row goes when an operation of theirs succeeds: every one with a
    row but those refused again now (a conflict's deprovisioning succeeds, and the conflict
    stays on record)."""
    return frozenset(set(prepared.failures) - refused(prepared))


def refusals_to_record(prepared: Prepared) -> list[Refusal]:
    """Refusals not on record with this cause yet. Refused records are planned again every
    cycle (revisit_failing); one that is refused for the same reason is not audited again."""
    fresh: list[Refusal] = []
    for event, refusal in every_refusal(prepared):
        row = prepared.failures.get((refusal.kind, refusal.source_id))
        if row is None or row.action != event or row.cause != refusal.cause[:MAX_CAUSE]:
            fresh.append((event, refusal))
    return fresh


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
    refusing = refused(prepared)
    planned = {(op.kind, op.source_id) for op in prepared.plan.operations}
    for key, row in prepared.failures.items():
        kind, source_id = key
        if key in refusing or (view.universe is not None and key not in view.universe):
            continue
        desired = view.desired.users if kind == "user" else view.desired.groups
        linked = view.linked_users if kind == "user" else view.linked_groups
        gone = source_id not in desired and source_id not in linked
        if gone or (key not in prepared.skipped and (row.action in REFUSALS or key not in planned)):
            store.clear_failure(kind, source_id)
