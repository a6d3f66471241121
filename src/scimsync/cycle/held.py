"""Operations the safety threshold holds: staged for `status`, audited when the held set
changes, released by an approval that covers exactly them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from scimsync import log
from scimsync.cycle.prepare import Prepared
from scimsync.guard import GuardVerdict
from scimsync.model import Operation
from scimsync.state import Approval, Store, held_digest

logger = log.get(__name__)


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
    """Each operation an approval released, saying when it was approved."""
    cause = f"approved by `scimsync sync --allow-deletions` at {approval.at.isoformat()}"
    _audit_each(store, cycle_id, released, "approved", success=True, cause=cause)


def audit_held(store: Store, cycle_id: str, verdict: GuardVerdict) -> None:
    """Each held operation, when the held set is new: not again every cycle it stays."""
    _audit_each(store, cycle_id, verdict.held, "held", success=False, cause=verdict.reason)


def _audit_each(
    store: Store,
    cycle_id: str,
    operations: Iterable[Operation],
    event: str,
    *,
    success: bool,
    cause: str | None,
) -> None:
    with store.atomic():  # one transaction, not one per operation
        for op in operations:
            store.audit(
                cycle_id,
                event,
                op.kind,
                op.source_id,
                target_id=op.target_id,
                success=success,
                cause=cause,
                name=op.name,
            )
