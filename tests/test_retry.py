"""The retry rules (scimsync.retry): back-off, quarantine, refusals, rows that settle. Pure."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from scimsync import retry
from scimsync.model import DesiredGroup, DesiredUser, Kind, Record
from scimsync.retry import FailureRecord

T0 = datetime(2031, 5, 1, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
ANN = DesiredUser("u1", "ann@example.com", True, {"userName": "ann@example.com"})
ENG = DesiredGroup("g1", "Eng", frozenset({"u1"}))


ANN_FAILING = retry.Attempt(Kind.USER, "u1", "ann@example.com", "update", "HTTP 500", "fp1")


def fail(
    previous: FailureRecord | None,
    now: datetime,
    *,
    source_fingerprint: str = "fp1",
    max_retries: int = 3,
    action: str = "update",
) -> FailureRecord:
    attempt = replace(ANN_FAILING, action=action, source_fingerprint=source_fingerprint)
    return retry.failed(previous, attempt, now=now, max_retries=max_retries)


def group_failure(source_fingerprint: str = "fp") -> FailureRecord:
    """Eng's create failed once at T0."""
    eng = retry.Attempt(Kind.GROUP, "g1", "Eng", "create", "HTTP 500", source_fingerprint)
    return retry.failed(None, eng, now=T0, max_retries=3)


def failures(*rows: FailureRecord) -> dict[Record, FailureRecord]:
    return {(row.kind, row.source_id): row for row in rows}


# --- back-off --------------------------------------------------------------------------


def test_backoff_doubles_from_a_minute_up_to_a_day() -> None:
    assert [retry.retry_delay(n) for n in (1, 2, 3)] == [MINUTE * m for m in (1, 2, 4)]
    assert retry.retry_delay(11) == MINUTE * 1024  # the last doubling below the cap
    assert retry.retry_delay(12) == timedelta(hours=24)
    assert retry.retry_delay(500) == timedelta(hours=24)


def test_no_failure_no_delay() -> None:
    assert retry.retry_delay(0) == timedelta(0)


def test_each_failure_of_the_same_source_counts_and_waits_longer() -> None:
    first = fail(None, T0)
    assert (first.attempts, first.first_failed_at, first.last_failed_at) == (1, T0, T0)
    assert first.next_retry_at == T0 + MINUTE
    second = fail(first, T0 + MINUTE)
    assert (second.attempts, second.first_failed_at) == (2, T0)  # the first failure stays
    assert second.last_failed_at == T0 + MINUTE
    assert second.next_retry_at == T0 + MINUTE + 2 * MINUTE


# --- quarantine ------------------------------------------------------------------------


def test_the_attempt_that_reaches_max_retries_quarantines() -> None:
    row = fail(None, T0)
    row = fail(row, T0 + MINUTE)
    assert (row.attempts, row.quarantined) == (2, False)
    row = fail(row, T0 + 3 * MINUTE)
    assert (row.attempts, row.quarantined) == (3, True)


def test_max_retries_one_quarantines_at_once() -> None:
    assert fail(None, T0, max_retries=1).quarantined


def test_a_changed_source_starts_the_count_again() -> None:
    row = fail(fail(fail(None, T0), T0 + MINUTE), T0 + 3 * MINUTE)
    assert row.quarantined
    fresh = fail(row, T0 + timedelta(hours=1), source_fingerprint="fp2")
    assert (fresh.attempts, fresh.quarantined) == (1, False)
    assert fresh.first_failed_at == T0 + timedelta(hours=1)
    assert fresh.next_retry_at == T0 + timedelta(hours=1) + MINUTE


# --- due or not ------------------------------------------------------------------------


def test_due_exactly_when_the_delay_has_passed() -> None:
    row = fail(None, T0)
    assert not retry.is_due(row, row.next_retry_at - timedelta(microseconds=1))
    assert retry.is_due(row, row.next_retry_at)


def test_quarantined_is_never_due_by_time() -> None:
    row = fail(None, T0, max_retries=1)
    assert not retry.is_due(row, T0 + timedelta(days=365))
    assert not retry.is_due(row, T0 + timedelta(days=365), source_fingerprint="fp1")


def test_a_changed_source_is_due_at_once_even_in_quarantine() -> None:
    waiting = fail(None, T0)
    quarantined = fail(None, T0, max_retries=1)
    assert retry.is_due(waiting, T0, source_fingerprint="fp2")
    assert retry.is_due(quarantined, T0, source_fingerprint="fp2")
    assert not retry.is_due(waiting, T0, source_fingerprint="fp1")  # unchanged: time decides


def test_waiting_judges_each_record_by_its_fingerprint_now() -> None:
    user_row = fail(None, T0, source_fingerprint=retry.record_fingerprint(ANN))
    group_row = group_failure(retry.record_fingerprint(ENG))
    rows = failures(user_row, group_row)
    assert retry.waiting(rows, T0, {"u1": ANN}, {"g1": ENG}) == {("user", "u1"), ("group", "g1")}
    edited = DesiredUser("u1", "ann@example.com", True, {"userName": "ann@example.com", "x": "1"})
    renamed = DesiredGroup("g1", "Engineering", frozenset({"u1"}))
    assert retry.waiting(rows, T0, {"u1": edited}, {"g1": renamed}) == frozenset()
    disabled = DesiredUser("u1", "ann@example.com", False, {"userName": "ann@example.com"})
    joined = DesiredGroup("g1", "Eng", frozenset({"u1", "u2"}))
    assert retry.waiting(rows, T0, {"u1": disabled}, {"g1": joined}) == frozenset()
    # Not desired now (a deprovisioning that failed): by time alone.
    assert retry.waiting(rows, T0, {}, {}) == {("user", "u1"), ("group", "g1")}
    assert retry.waiting(rows, T0 + MINUTE, {}, {}) == frozenset()


def test_a_user_and_a_group_with_one_source_id_are_apart() -> None:
    row = fail(None, T0, source_fingerprint=retry.record_fingerprint(ANN))
    group_u1 = DesiredGroup("u1", "Eng", frozenset())
    # The group's record is not the user's: with the user not desired, time decides.
    assert retry.waiting(failures(row), T0, {}, {"u1": group_u1}) == {("user", "u1")}


# --- refusals --------------------------------------------------------------------------


def refusal(action: str = "conflict", cause: str = "userName is held") -> FailureRecord:
    fingerprint = retry.refusal_fingerprint(cause)
    attempt = replace(ANN_FAILING, action=action, cause=cause, source_fingerprint=fingerprint)
    return retry.failed(None, attempt, now=T0, max_retries=5)


def test_a_refusal_is_revisited_at_every_cycle_a_failure_when_due() -> None:
    for action in ("conflict", "map"):
        rows = failures(refusal(action), group_failure())
        assert retry.to_revisit(rows, T0) == {("user", "u1")}
        assert retry.to_revisit(rows, T0 + MINUTE) == {("user", "u1"), ("group", "g1")}


def test_a_refused_record_is_planned_whenever_it_is_desired() -> None:
    row = refusal()
    assert retry.refusal_fingerprint(row.cause) != retry.record_fingerprint(ANN)
    assert retry.waiting(failures(row), T0, {"u1": ANN}, {}) == frozenset()


def test_a_refusal_on_record_is_not_recorded_again_unless_it_changed() -> None:
    row = refusal("conflict", "userName is held")
    assert retry.refusal_on_record(row, "conflict", "userName is held")
    assert not retry.refusal_on_record(row, "conflict", "userName changed")
    assert not retry.refusal_on_record(row, "map", "userName is held")
    assert not retry.refusal_on_record(None, "conflict", "userName is held")


def test_a_success_clears_every_row_but_those_refused_again() -> None:
    rows = failures(refusal(), group_failure())
    assert retry.cleared_by_success(rows, {(Kind.USER, "u1")}) == {(Kind.GROUP, "g1")}
    assert retry.cleared_by_success(rows, set()) == {("user", "u1"), ("group", "g1")}


# --- rows that settle ------------------------------------------------------------------

U1: Record = (Kind.USER, "u1")


def settled(
    row: FailureRecord,
    *,
    looked_at: bool = True,
    known: bool = True,
    refused: bool = False,
    planned: bool = False,
    skipped: bool = False,
) -> bool:
    found = retry.settled(
        failures(row),
        looked_at=lambda key: looked_at,
        known=lambda key: known,
        refused={U1} if refused else set(),
        planned={U1} if planned else set(),
        skipped={U1} if skipped else set(),
    )
    assert found in ([], [U1])
    return found == [U1]


def test_a_failure_planned_again_stays_one_with_nothing_to_do_goes() -> None:
    row = fail(None, T0)
    assert not settled(row, planned=True)
    assert settled(row, planned=False)


def test_a_refusal_not_made_again_goes_even_if_planned() -> None:
    assert settled(refusal(), planned=True)
    assert not settled(refusal(), refused=True)


def test_a_waiting_record_keeps_its_row_unless_it_is_gone() -> None:
    row = fail(None, T0)
    assert not settled(row, skipped=True)
    assert not settled(refusal(), skipped=True)
    assert settled(row, skipped=True, known=False)  # gone from the directory and the links


def test_a_record_refused_again_or_not_looked_at_keeps_its_row() -> None:
    assert not settled(fail(None, T0), refused=True, known=False)
    assert not settled(fail(None, T0), looked_at=False, known=False)
