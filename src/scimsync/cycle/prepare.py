"""Everything a cycle decides before its first write: the plan and what the guard holds.

`plan` stops here (dry_run); `sync` goes on to apply what the guard allows (run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from scimsync import log, rekey, retry
from scimsync.config import Config
from scimsync.cycle.desired import Desired, unmapped_but_linked
from scimsync.cycle.observe import observe, read_written_members
from scimsync.cycle.views import View, read_view
from scimsync.guard import GuardVerdict, guard
from scimsync.mapping import compile_rules
from scimsync.model import Kind, LinkedUser, Plan, Record
from scimsync.plan import plan
from scimsync.retry import Failures
from scimsync.state import Store
from scimsync.state.base import Clock, utc_now
from scimsync.target import Target, open_target

logger = log.get(__name__)


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


def skipped(failures: Failures, view: View, now: datetime) -> frozenset[Record]:
    """Records not planned: waiting for their retry (retry.waiting), or linked users that
    cannot be mapped now (kept as they are)."""
    desired = view.desired
    unmapped = unmapped_but_linked(desired.failures, view.linked_users)
    waiting = retry.waiting(failures, now, desired.users, desired.groups)
    return waiting | {(Kind.USER, source_id) for source_id in unmapped}


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
    if view.rehires:
        failures = rekey.failures_rekeyed(failures, view.rehires)
    inputs = await observe(target, view, config, store)
    skip = skipped(failures, view, now())
    inputs = replace(inputs, skip=skip)
    the_plan = plan(inputs, config.options.for_planner)
    if view.mode != "full":  # a full view read every group's members with the listing
        read = await read_written_members(target, the_plan, inputs, store)
        if read is not inputs:
            inputs, the_plan = read, plan(read, config.options.for_planner)
    if allow_deletions:
        verdict = GuardVerdict.allow(the_plan)
    else:
        verdict = guard(
            the_plan,
            config.options.deletion_limit,
            linked_users=store.count_linked(Kind.USER),
            source_users=view.desired.source_user_count,
            verified_domains=config.options.verified_domains,
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
