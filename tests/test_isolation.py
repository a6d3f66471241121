"""Failure isolation end to end: a record the target or the mapping refuses fails alone.

It is recorded with its cause, retried with growing delays, quarantined after
options.max_retries failures, released by a source edit or `reset --failed`, and never
holds back the other records. Real slapd, the engine, the Atlassian emulator over HTTP.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import yaml

from scimsync.cycle.run import CycleReport, sync
from scimsync.emulator import RunningEmulator
from scimsync.model import Kind, Operation
from scimsync.state import Store
from scimsync.state.records import FailureRecord
from tests.fixtures.slapd import Tree
from tests.harness import Channel

BOB = "bob@example.com"


class Clock:
    """A clock the test moves by hand, for the engine (`now=`) and the store (`clock=`)."""

    def __init__(self, start: datetime) -> None:
        self.moment = start

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, delta: timedelta) -> None:
        self.moment += delta


@pytest.fixture
def channel(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Channel:
    return Channel(ldap_tree, emulator, tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2031, 3, 1, 9, 0, tzinfo=UTC))


def sync_at(channel: Channel, clock: Clock) -> CycleReport:
    config = channel.config()
    with Store.open(config.state, config.channel, clock=clock) as store:
        return asyncio.run(sync(config, store, now=clock))


def failures(channel: Channel) -> dict[tuple[Kind, str], FailureRecord]:
    with channel.store() as store:
        return dict(store.failures())


def user_posts(channel: Channel) -> int:
    """POST /Users the emulator received since its counters were reset."""
    by_resource: dict[str, int] = channel.emulator.stats()["by_resource"]
    return by_resource.get("POST Users", 0)


def cli(channel: Channel, *args: str) -> subprocess.CompletedProcess[str]:
    """`scimsync --config FILE ARGS` on the channel's store, secrets passed by environment."""
    path = Path(channel.state_url.removeprefix("sqlite:///")).parent / "scimsync.yaml"
    settings: dict[str, Any] = {
        "state": channel.state_url,
        "source": {**channel.source, "bind_password": "${TEST_LDAP_PASSWORD}"},
        "target": {"url": channel.emulator.url, "token": "${TEST_SCIM_TOKEN}"},
        "options": channel.options,
        "mapping": channel.mapping,
    }
    path.write_text(yaml.safe_dump(settings))
    path.chmod(0o600)
    env = dict(
        os.environ,
        TEST_LDAP_PASSWORD=channel.tree.server.password,
        TEST_SCIM_TOKEN=channel.emulator.token,
    )
    return subprocess.run(
        [sys.executable, "-m", "scimsync", "--config", str(path), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Recorded:
    """A progress display that keeps what the executor tells it."""

    def __init__(self) -> None:
        self.total = 0
        self.advanced: list[tuple[str, str, bool]] = []

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, op: Operation, ok: bool) -> None:
        self.advanced.append((op.action.value, op.name, ok))

    def finish(self) -> None:
        pass


def test_a_cycle_with_a_failure_tells_progress_the_log_and_the_audit_what_happened(
    channel: Channel, clock: Clock
) -> None:
    channel.create_target_user(
        "someone.else@example.com", emails=[{"value": BOB, "type": "work", "primary": True}]
    )
    channel.tree.add_user("alice")
    channel.tree.add_user("bob")
    progress = Recorded()
    config = channel.config()
    with (
        Store.open(config.state, config.channel, clock=clock) as store,
        structlog.testing.capture_logs() as logs,
    ):
        asyncio.run(sync(config, store, now=clock, progress=progress))
        audit = {a.name: a for a in store.audit_log() if a.kind == "user"}
    assert progress.total == 2
    assert sorted(progress.advanced) == [
        ("create", "alice@example.com", True),
        ("create", BOB, False),
    ]
    [failed] = [e for e in logs if e["event"] == "operation failed"]
    assert (failed["action"], failed["kind"], failed["name"]) == ("create", "user", BOB)
    assert "409" in failed["cause"] and failed["log_level"] == "warning"
    alice = channel.users()["alice@example.com"]
    assert (audit["alice@example.com"].target_id, audit["alice@example.com"].success) == (
        alice["id"],
        True,
    )


def retry_when_due(channel: Channel, clock: Clock, source_id: str) -> CycleReport:
    """Move the clock to the record's next retry and run a cycle there."""
    clock.moment = failures(channel)[(Kind.USER, source_id)].next_retry_at
    channel.emulator.reset_stats()
    report = sync_at(channel, clock)
    assert user_posts(channel) == 1, "a due record is retried, once"
    return report


# --- the target refuses a record -----------------------------------------------------------


def test_a_409_record_fails_alone_backs_off_quarantines_and_is_released(
    channel: Channel, clock: Clock
) -> None:
    channel.options["max_retries"] = 3
    # An account scimsync does not manage holds bob's email: POST /Users answers 409.
    foreign = channel.create_target_user(
        "someone.else@example.com", emails=[{"value": BOB, "type": "work", "primary": True}]
    )
    channel.tree.add_user("alice")
    bob_dn = channel.tree.add_user("bob")
    channel.tree.add_user("carol")
    bob = channel.tree.guid(bob_dn)

    first = sync_at(channel, clock)
    assert first.exit_code == 1
    assert set(channel.users()) == {
        "alice@example.com",
        "carol@example.com",
        "someone.else@example.com",
    }
    [failed] = first.outcome.failed
    assert (failed.op.name, failed.op.action.value) == (BOB, "create")
    record = failures(channel)[(Kind.USER, bob)]
    assert "409" in record.cause and "uniqueness" in record.cause
    assert (record.attempts, record.quarantined) == (1, False)
    assert (record.kind, record.source_id, record.name, record.action) == (
        Kind.USER,
        bob,
        BOB,
        "create",
    )
    assert record.first_failed_at == clock.moment and record.source_fingerprint
    with channel.store() as store:
        [audited] = [a for a in store.audit_log() if not a.success]
    assert (audited.event, audited.kind, audited.source_id, audited.name) == (
        "create",
        "user",
        bob,
        BOB,
    )
    assert (audited.target_id, audited.cause, audited.at) == (None, record.cause, clock.moment)

    # Before its back-off has passed the record is left alone.
    clock.advance(timedelta(seconds=30))
    channel.emulator.reset_stats()
    assert sync_at(channel, clock).outcome.failed == []
    assert user_posts(channel) == 0
    assert failures(channel)[(Kind.USER, bob)].attempts == 1

    # Due: retried; each failure doubles the delay; the third quarantines it.
    delays = []
    for attempts in (2, 3):
        before = clock.moment
        report = retry_when_due(channel, clock, bob)
        assert report.exit_code == 1
        record = failures(channel)[(Kind.USER, bob)]
        assert record.attempts == attempts
        delays.append(record.next_retry_at - before)
    assert record.quarantined
    assert delays[1] > delays[0]

    # Quarantined: not retried even long after its retry time, by a full reconciliation.
    clock.moment = record.next_retry_at + timedelta(days=3)
    channel.emulator.reset_stats()
    report = sync_at(channel, clock)
    assert report.prepared.view.mode == "full"
    assert user_posts(channel) == 0

    status = cli(channel, "status")
    assert status.returncode == 0, status.stderr
    assert "quarantined: 1" in status.stdout
    [line] = [line for line in status.stdout.splitlines() if BOB in line]
    assert "409" in line and "3 attempts, quarantined" in line

    # Editing the source entry releases it at once: a new version deserves a try.
    channel.tree.modify(bob_dn, title="Engineer")
    channel.emulator.reset_stats()
    assert sync_at(channel, clock).exit_code == 1
    assert user_posts(channel) == 1
    record = failures(channel)[(Kind.USER, bob)]
    assert (record.attempts, record.quarantined) == (1, False)
    for _ in range(2):
        retry_when_due(channel, clock, bob)
    assert failures(channel)[(Kind.USER, bob)].quarantined

    # `reset --failed` releases it too.
    released = cli(channel, "reset", "--failed")
    assert released.returncode == 0, released.stderr
    assert "failed records released: 1" in released.stdout
    channel.emulator.reset_stats()
    assert sync_at(channel, clock).exit_code == 1
    assert user_posts(channel) == 1

    # The cause goes away at the target: the next due retry succeeds and clears the record.
    with channel.http() as client:
        client.delete(f"/Users/{foreign}").raise_for_status()
    final = retry_when_due(channel, clock, bob)
    assert final.exit_code == 0
    assert channel.users()[BOB]["title"] == "Engineer"
    assert failures(channel) == {}
    assert set(channel.users()) == {"alice@example.com", BOB, "carol@example.com"}


def test_a_400_from_the_target_fails_alone(channel: Channel, clock: Clock) -> None:
    # userName from an untrimmed template: a blank description gives a blank userName,
    # which the mapping lets through and the target refuses ("userName is required").
    channel.mapping["userName"] = {"template": "{{ description or mail }}", "trim": False}
    channel.tree.add_user("blank", description="   ")
    channel.tree.add_user("fine")
    team = channel.tree.add_group(
        "team", [channel.tree.user_dn("blank"), channel.tree.user_dn("fine")]
    )
    report = sync_at(channel, clock)
    assert report.exit_code == 1
    assert set(channel.users()) == {"fine@example.com"}
    assert channel.member_names("team") == {"fine@example.com"}
    by_name = {f.op.name: f for f in report.outcome.failed}
    assert "400" in by_name["   "].cause and "invalidValue" in by_name["   "].cause
    recorded = failures(channel)[(Kind.USER, channel.tree.guid(channel.tree.user_dn("blank")))]
    assert "400" in recorded.cause and recorded.action == "create"
    assert ("group", channel.tree.guid(team)) not in failures(channel)  # the group did not fail


class Meanwhile:
    """A Progress whose start, after planning and before the first write, has someone
    change the target by hand (`meanwhile`), so that a planned call meets a surprise."""

    def __init__(self, meanwhile: Callable[[], object]) -> None:
        self.meanwhile = meanwhile

    def start(self, total: int) -> None:
        self.meanwhile()

    def advance(self, op: Operation, ok: bool) -> None:
        pass

    def finish(self) -> None:
        pass


def sync_with(channel: Channel, clock: Clock, progress: Meanwhile) -> CycleReport:
    config = channel.config()
    with Store.open(config.state, config.channel, clock=clock) as store:
        return asyncio.run(sync(config, store, now=clock, progress=progress))


def test_a_group_create_refused_mid_cycle_fails_alone_and_is_adopted_next(
    channel: Channel, clock: Clock
) -> None:
    members = [channel.tree.add_user(u) for u in ("gil", "hana")]
    raced = channel.tree.add_group("raced", members)
    channel.tree.add_group("calm", members)
    report = sync_with(channel, clock, Meanwhile(lambda: channel.create_target_group("raced")))
    assert report.exit_code == 1
    [failed] = report.outcome.failed
    assert (failed.op.kind, failed.op.name, failed.op.action.value) == ("group", "raced", "create")
    assert "409" in failed.cause
    assert channel.member_names("calm") == {"gil@example.com", "hana@example.com"}
    assert channel.member_names("raced") == set()
    assert failures(channel)[(Kind.GROUP, channel.tree.guid(raced))].action == "create"

    clock.moment = failures(channel)[(Kind.GROUP, channel.tree.guid(raced))].next_retry_at
    again = sync_at(channel, clock)
    assert again.exit_code == 0
    assert channel.member_names("raced") == {"gil@example.com", "hana@example.com"}
    assert failures(channel) == {}


def test_a_group_whose_member_change_fails_is_one_failure_not_two(
    channel: Channel, clock: Clock
) -> None:
    ivy, jon, kit = (channel.tree.add_user(u) for u in ("ivy", "jon", "kit"))
    team = channel.tree.add_group("team", [ivy, jon])
    sync_at(channel, clock)
    channel.tree.add_members(team, [kit])
    channel.tree.remove_members(team, [ivy])
    group_id = channel.groups()["team"]["id"]

    def delete_the_group() -> None:
        with channel.http() as client:
            client.delete(f"/Groups/{group_id}").raise_for_status()

    report = sync_with(channel, clock, Meanwhile(delete_the_group))
    assert report.exit_code == 1
    assert {f.op.action.value for f in report.outcome.failed} == {"add_members", "remove_members"}
    # One PATCH carried both, so one failed attempt is recorded, not two.
    [recorded] = failures(channel).values()
    assert (recorded.kind, recorded.name, recorded.attempts) == ("group", "team", 1)
    assert report.outcome.applied["add_members"] == 0 == report.outcome.applied["remove_members"]


def test_a_failed_group_backs_off_until_it_changes_like_a_user(
    channel: Channel, clock: Clock
) -> None:
    channel.emulator.configure(rename="immutable")  # with group_rename: in_place, it fails
    member = channel.tree.add_user("lou")
    dn = channel.tree.add_group("old-name", [member])
    sync_at(channel, clock)
    channel.tree.rename(dn, "cn=new-name")
    assert sync_at(channel, clock).exit_code == 1
    key: tuple[Kind, str] = (Kind.GROUP, channel.tree.guid(channel.tree.group_dn("new-name")))
    assert (failures(channel)[key].action, failures(channel)[key].attempts) == ("rename", 1)

    # Before its back-off has passed, even a full reconciliation leaves it alone.
    with channel.store() as store:
        store.reset()
    waiting = sync_at(channel, clock)
    assert waiting.prepared.view.mode == "full"
    assert waiting.prepared.plan.operations == ()
    assert failures(channel)[key].attempts == 1

    # Edited in the directory: tried at once, its count started again; the member change
    # that lands beside it leaves the rename's failure on record, to be retried.
    channel.tree.add_members(channel.tree.group_dn("new-name"), [channel.tree.add_user("mia")])
    edited = sync_at(channel, clock)
    assert [f.op.action.value for f in edited.outcome.failed] == ["rename"]
    assert channel.member_names("old-name") == {"lou@example.com", "mia@example.com"}
    assert (failures(channel)[key].action, failures(channel)[key].attempts) == ("rename", 1)


def test_a_failed_deprovisioning_of_a_user_who_left_is_recorded(
    channel: Channel, clock: Clock
) -> None:
    stays, leaves = channel.tree.add_user("stays"), channel.tree.add_user("leaves")
    scope = channel.tree.add_group("atlassian-users", [stays, leaves])
    channel.source["users"] = {"group_dn": scope}
    channel.options["groups"] = False
    sync_at(channel, clock)
    channel.tree.remove_members(scope, [leaves])
    account = channel.users()["leaves@example.com"]["id"]

    def delete_the_account() -> None:
        with channel.http() as client:
            client.delete(f"/Users/{account}").raise_for_status()

    report = sync_with(channel, clock, Meanwhile(delete_the_account))
    assert report.exit_code == 1
    [failed] = report.outcome.failed
    assert (failed.op.action.value, failed.op.name) == ("disable", "leaves@example.com")
    assert "404" in failed.cause
    recorded = failures(channel)[(Kind.USER, channel.tree.guid(leaves))]
    assert (recorded.action, recorded.attempts) == ("disable", 1)


# --- the mapping refuses a record ----------------------------------------------------------


def test_an_unmappable_user_is_reported_and_the_others_proceed(
    channel: Channel, clock: Clock
) -> None:
    nomail = channel.tree.add_user("nomail")
    channel.tree.delete_attribute(nomail, "mail")
    channel.tree.add_user("dana")
    report = sync_at(channel, clock)
    assert report.exit_code == 1
    assert set(channel.users()) == {"dana@example.com"}
    [unmapped] = report.prepared.desired.failures
    assert unmapped.source_id == channel.tree.guid(nomail)
    assert "mapping.userName: required but empty" in unmapped.cause
    record = failures(channel)[(Kind.USER, unmapped.source_id)]
    assert record.action == "map" and record.cause == unmapped.cause


def test_a_linked_user_that_becomes_unmappable_is_kept_not_deprovisioned(
    channel: Channel, clock: Clock
) -> None:
    channel.options["max_deletions"] = 1000  # only the engine's rule, not the guard, may save it
    kept = channel.tree.add_user("kept")
    other = channel.tree.add_user("other")
    channel.tree.add_group("crew", [kept, other])
    assert sync_at(channel, clock).exit_code == 0

    channel.tree.delete_attribute(kept, "mail")
    channel.emulator.reset_stats()
    incremental = sync_at(channel, clock)
    assert incremental.prepared.view.mode == "incremental"
    assert incremental.exit_code == 1
    with channel.store() as store:
        store.reset()  # and in a full reconciliation
    full = sync_at(channel, clock)
    assert full.prepared.view.mode == "full"
    assert full.exit_code == 1
    assert full.prepared.plan.operations == ()

    assert channel.writes() == 0
    assert channel.users()["kept@example.com"]["active"] is True
    assert channel.member_names("crew") == {"kept@example.com", "other@example.com"}


# --- planning refuses a record -------------------------------------------------------------


@pytest.mark.parametrize(
    "mails", [("twin@example.com", "twin@example.com"), ("twin@example.com", "Twin@Example.COM")]
)
def test_two_users_mapping_to_one_user_name_are_both_reported_neither_pushed(
    channel: Channel, clock: Clock, mails: tuple[str, str]
) -> None:
    first = channel.tree.add_user("twin1", mail=mails[0])
    second = channel.tree.add_user("twin2", mail=mails[1])
    channel.tree.add_user("single")
    channel.emulator.reset_stats()
    report = sync_at(channel, clock)
    assert report.exit_code == 1
    conflicts = {c.source_id: c for c in report.prepared.plan.conflicts}
    assert set(conflicts) == {channel.tree.guid(first), channel.tree.guid(second)}
    assert all("also mapped from" in c.cause for c in conflicts.values())
    assert set(channel.users()) == {"single@example.com"}
    assert user_posts(channel) == 1

    # Listed by `status` until it clears, and reported again by the next cycle, which
    # reads refused records again whatever else changed (incremental, not full).
    status = cli(channel, "status")
    assert status.returncode == 0, status.stderr
    listed = [line for line in status.stdout.splitlines() if "also mapped from" in line]
    assert len(listed) == 2
    again = sync_at(channel, clock)
    assert (again.prepared.view.mode, again.exit_code) == ("incremental", 1)
    assert len(again.prepared.plan.conflicts) == 2

    # One of them gets its own address: both go through at once, the other one unchanged
    # in the directory but no longer in conflict, and then nothing stays listed.
    channel.tree.modify(second, mail="twin2@example.com")
    assert sync_at(channel, clock).exit_code == 0
    assert set(channel.users()) == {"single@example.com", mails[0], "twin2@example.com"}
    assert failures(channel) == {}


def test_a_group_and_a_user_may_share_a_name(channel: Channel, clock: Clock) -> None:
    member = channel.tree.add_user("shared")
    channel.tree.add_group("shared@example.com", [member])
    report = sync_at(channel, clock)
    assert report.exit_code == 0
    assert channel.member_names("shared@example.com") == {"shared@example.com"}


def test_a_failed_record_deleted_from_the_directory_leaves_no_failure_behind(
    channel: Channel,
) -> None:
    channel.create_target_user("someone-else@example.com", emails=[
        {"value": BOB, "type": "work", "primary": True}
    ])  # fmt: skip
    bob = channel.tree.add_user("bob")
    assert channel.sync().exit_code == 1
    assert ("user", channel.tree.guid(bob)) in failures(channel)
    channel.tree.delete(bob)
    with channel.store() as store:
        store.reset()  # the full reconciliation is what cleans up
    assert channel.sync().exit_code == 0
    assert failures(channel) == {}
