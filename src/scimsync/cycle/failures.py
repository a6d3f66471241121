"""The failure rows a cycle writes besides the executor's: refusals, and rows that settled.

The rules (what a refusal's row holds, when a row goes) are scimsync.retry's.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from scimsync import retry
from scimsync.config import Config
from scimsync.cycle.prepare import Prepared
from scimsync.model import Conflict, MappingFailure, Record
from scimsync.state import Store
from scimsync.state.base import MAX_CAUSE

# A refused record, with its row's action: "conflict" (the planner), "map" (the mapping)
# or "protected" (options.protected_groups).
Refusal = tuple[str, Conflict | MappingFailure]


def every_refusal(prepared: Prepared) -> list[Refusal]:
    refusals: list[Refusal] = [("conflict", c) for c in prepared.plan.conflicts]
    refusals += [(retry.PROTECTED, c) for c in prepared.plan.protected]
    return refusals + [("map", f) for f in prepared.desired.failures]


def refused(prepared: Prepared) -> set[Record]:
    """The records this cycle's planner or mapping refused."""
    return {(r.kind, r.source_id) for _, r in every_refusal(prepared)}


def cleared_by_success(prepared: Prepared) -> frozenset[Record]:
    """The executor's `failing`: records whose row a success of theirs clears."""
    return retry.cleared_by_success(prepared.failures, refused(prepared))


def refusals_to_record(prepared: Prepared) -> list[Refusal]:
    """Refusals not on record with this cause yet. Refused records are planned again every
    cycle; one that is refused for the same reason is not audited again."""
    return [
        (event, refusal)
        for event, refusal in every_refusal(prepared)
        if not retry.refusal_on_record(
            prepared.failures.get((refusal.kind, refusal.source_id)),
            event,
            refusal.cause[:MAX_CAUSE],  # as the store keeps it
        )
    ]


def record_refusals(
    store: Store,
    cycle_id: str,
    prepared: Prepared,
    refusals: Iterable[Refusal],
    config: Config,
    now: datetime,
) -> None:
    """Records the planner or the mapping refused: audited, listed by `status`; the rows of
    records settled since go."""
    with store.atomic():  # one transaction, not two per refusal
        clear_settled_failures(store, prepared)
        for event, refusal in refusals:
            store.audit(
                cycle_id,
                event,
                refusal.kind,
                refusal.source_id,
                target_id=None,
                success=False,
                cause=refusal.cause,
                name=refusal.name,
            )
            # Without a row, a refusal would be invisible to `status` after its first cycle.
            attempt = retry.Attempt(
                refusal.kind,
                refusal.source_id,
                name=refusal.name,
                action=event,
                cause=refusal.cause,
                source_fingerprint=retry.refusal_fingerprint(refusal.cause),
            )
            store.record_failure(attempt, now=now, max_retries=config.options.max_retries)


def clear_settled_failures(store: Store, prepared: Prepared) -> None:
    """Delete the rows retry.settled finds settled in this cycle's view."""
    view = prepared.view

    def known(key: Record) -> bool:
        kind, source_id = key
        desired = view.desired.users if kind == "user" else view.desired.groups
        linked = view.linked_users if kind == "user" else view.linked_groups
        return source_id in desired or source_id in linked

    for kind, source_id in retry.settled(
        prepared.failures,
        looked_at=lambda key: view.universe is None or key in view.universe,
        known=known,
        refused=refused(prepared),
        planned={(op.kind, op.source_id) for op in prepared.plan.operations},
        skipped=prepared.skipped,
    ):
        store.clear_failure(kind, source_id)
