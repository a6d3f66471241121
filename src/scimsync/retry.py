"""When a record that could not be applied is tried again. Pure: no I/O.

Every record a cycle could not apply has a failure row (FailureRecord), of one of two kinds:

- A *failure*: the target rejected one of its operations. It is retried after 1, 2, 4, ...
  minutes (retry_delay, capped at 24 h). The attempt that brings the count to
  `options.max_retries` quarantines it: never retried, until its source changes (the
  record's fingerprint differs from the row's) or `reset --failed` deletes the rows. A
  changed source also starts the count again, and is retried at once even in back-off:
  the earlier failures say nothing about the edited record.
- A *refusal* (REFUSALS): the mapping or the planner refused the record. It is read again
  at every cycle (to_revisit), and its row carries the cause's fingerprint, which no
  record's matches, so it is planned whenever it maps: a conflict ends as often by a change
  to the *other* record. It is audited again only when its cause changes
  (refusal_on_record).

A row goes when an operation of its record succeeds (cleared_by_success), or when a cycle
that looked at the record finds that it needs nothing now (settled).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from scimsync.fingerprint import fingerprint
from scimsync.model import DesiredGroup, DesiredUser, Kind, Record

# The actions of refusals' rows; any other action is the operation the target rejected.
# "protected": a group options.protected_groups leaves alone, on record for `status` and
# audited once; not a failure (it neither counts as pending nor changes the exit code).
PROTECTED = "protected"
REFUSALS = frozenset({"map", "conflict", PROTECTED})


def is_failure(row: FailureRecord) -> bool:
    """Whether a failure row counts as one (pending or quarantined): a protected group's
    row is on record for `status`, not a failure."""
    return row.action != PROTECTED


BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """A record a cycle could not apply: the store's failure row."""

    kind: Kind
    source_id: str
    name: str
    action: str  # the operation the target rejected, or a refusal's kind (REFUSALS)
    cause: str
    source_fingerprint: str  # what the record looked like (record_fingerprint), or the cause's
    attempts: int  # failed attempts since the source last changed
    first_failed_at: datetime
    last_failed_at: datetime
    next_retry_at: datetime  # not retried before then; a quarantined record never is
    quarantined: bool


Failures = Mapping[Record, FailureRecord]


def retry_delay(attempts: int) -> timedelta:
    """Delay before retry number `attempts` + 1: 1 min, 2, 4, ... capped at 24 h."""
    if attempts < 1:
        return timedelta(0)
    # Past 2**11 minutes the cap applies anyway; bounding the exponent avoids huge ints.
    delay: timedelta = BACKOFF_BASE * 2 ** min(attempts - 1, 16)
    return min(delay, BACKOFF_CAP)


def record_fingerprint(record: DesiredUser | DesiredGroup) -> str:
    """What a failure remembers of its record, so that one edited at the source is retried
    at once: a user's mapped values and active flag, a group's name and members."""
    if isinstance(record, DesiredUser):
        return fingerprint({**record.values, "active": record.active})
    return fingerprint({"name": record.display_name, "members": sorted(record.member_source_ids)})


def refusal_fingerprint(cause: str) -> str:
    """A refusal's row's fingerprint: its cause's, never its record's (see the module)."""
    return fingerprint({"cause": cause})


@dataclass(frozen=True, slots=True)
class Attempt:
    """One failed attempt at a record (the target rejected `action`), or one refusal of it
    (`action` in REFUSALS): what a failure row counts."""

    kind: Kind
    source_id: str
    name: str
    action: str
    cause: str
    source_fingerprint: str


def failed(
    previous: FailureRecord | None, attempt: Attempt, *, now: datetime, max_retries: int
) -> FailureRecord:
    """The row after one more failed attempt (or refusal), given the row before it, if any."""
    if previous is not None and previous.source_fingerprint == attempt.source_fingerprint:
        attempts, first = previous.attempts + 1, previous.first_failed_at
    else:  # a first failure, or one of an edited record: the count starts again
        attempts, first = 1, now
    return FailureRecord(
        kind=attempt.kind,
        source_id=attempt.source_id,
        name=attempt.name,
        action=attempt.action,
        cause=attempt.cause,
        source_fingerprint=attempt.source_fingerprint,
        attempts=attempts,
        first_failed_at=first,
        last_failed_at=now,
        next_retry_at=now + retry_delay(attempts),
        quarantined=attempts >= max_retries,
    )


def is_due(row: FailureRecord, now: datetime, source_fingerprint: str | None = None) -> bool:
    """Whether to try the record again: its source changed (when its fingerprint now is
    known), or it is not quarantined and its delay has passed."""
    if source_fingerprint is not None and source_fingerprint != row.source_fingerprint:
        return True
    return not row.quarantined and now >= row.next_retry_at


def to_revisit(failures: Failures, now: datetime) -> set[Record]:
    """Records an incremental cycle reads again although the directory reports no change:
    every refused one, and failed ones whose retry is due."""
    return {key for key, row in failures.items() if row.action in REFUSALS or is_due(row, now)}


def waiting(
    failures: Failures,
    now: datetime,
    users: Mapping[str, DesiredUser],
    groups: Mapping[str, DesiredGroup],
) -> frozenset[Record]:
    """Records not to plan now: in back-off or quarantined, and not changed at the source
    since (a record the view does not desire is judged by time alone)."""
    out: set[Record] = set()
    for (kind, source_id), row in failures.items():
        record = users.get(source_id) if kind == "user" else groups.get(source_id)
        if not is_due(row, now, record_fingerprint(record) if record else None):
            out.add((kind, source_id))
    return frozenset(out)


def refusal_on_record(row: FailureRecord | None, action: str, cause: str) -> bool:
    """Whether this refusal is on record already, with this action and cause (as the store
    keeps it): then it is not audited again."""
    return row is not None and row.action == action and row.cause == cause


def cleared_by_success(failures: Failures, refused: Collection[Record]) -> frozenset[Record]:
    """Records whose row goes when an operation of theirs succeeds: every one with a row but
    those refused again now (a conflict's deprovisioning succeeds; the conflict stays)."""
    return frozenset(failures.keys() - set(refused))


def settled(
    failures: Failures,
    *,
    looked_at: Callable[[Record], bool],
    known: Callable[[Record], bool],
    refused: Collection[Record],
    planned: Collection[Record],
    skipped: Collection[Record],
) -> list[Record]:
    """Rows to delete: of records this cycle looked at and did not refuse, that need
    nothing now. Gone (`known` by neither the directory nor the links), or, unless skipped
    (not planned this cycle: waiting, say), refused before and not now, or failed before
    and planned now with nothing to do (the change that failed was undone)."""
    done: list[Record] = []
    for key, row in failures.items():
        if key in refused or not looked_at(key):
            continue
        # A refusal not made again, or a failed operation the plan no longer needs.
        nothing_to_do = row.action in REFUSALS or key not in planned
        if not known(key) or (key not in skipped and nothing_to_do):
            done.append(key)
    return done
