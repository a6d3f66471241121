"""Faults end to end: a flaky, slow or rate-limited target and a directory that goes away.

Whatever happens, the engine converges, records nothing false and deprovisions nobody
because of a fault. Each test prints one row of the fault table (run with `-s`).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scimsync.config import Config
from scimsync.cycle.run import CycleReport, sync
from scimsync.directory import DirectoryUnreachable
from scimsync.directory.connection import Connection, Entry
from scimsync.emulator import RunningEmulator
from scimsync.model import Action, Kind
from scimsync.state import Store
from scimsync.target.errors import ScimError, TargetUnreachable
from tests.fixtures.slapd import RestartableSlapd, Tree
from tests.harness import Channel
from tests.test_isolation import Clock, cli

DEPROVISIONING = {Action.DISABLE, Action.DELETE, Action.REMOVE_MEMBERS}
MAX_CYCLES = 8


class FastChannel(Channel):
    """A Channel whose target client runs more requests at once, so retry pauses overlap."""

    concurrency = 16
    retries = 6  # the client's own retries of a request; 0 hands every fault to the engine

    def config(self) -> Config:
        base = super().config()
        target = base.target.model_copy(
            update={"max_concurrency": self.concurrency, "max_retries": self.retries}
        )
        return base.model_copy(update={"target": target})


@pytest.fixture
def channel(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> FastChannel:
    return FastChannel(ldap_tree, emulator, tmp_path)


@pytest.fixture
def own_channel(
    own_slapd: RestartableSlapd, emulator: RunningEmulator, tmp_path: Path
) -> FastChannel:
    channel = FastChannel(Tree(own_slapd, "faults"), emulator, tmp_path)
    # A fault that made part of the directory look deleted must not hide behind the guard.
    channel.options["max_deletions"] = 100_000
    return channel


def populate(channel: Channel, users: int, groups: int) -> dict[str, set[str]]:
    """`users` users and `groups` overlapping groups; returns each group's userNames."""
    dns = channel.tree.add_users(users)
    names = [f"u{i:06d}@example.com" for i in range(users)]
    expected: dict[str, set[str]] = {}
    for g in range(groups):
        picked = [i for i in range(users) if i % (g + 2) == 0]
        channel.tree.add_group(f"group-{g}", [dns[i] for i in picked])
        expected[f"group-{g}"] = {names[i] for i in picked}
    return expected


def sync_at(channel: Channel, clock: Clock) -> CycleReport:
    config = channel.config()
    with Store.open(config.state, config.channel, clock=clock) as store:
        return asyncio.run(sync(config, store, now=clock))


def converge(
    channel: Channel, clock: Clock, max_cycles: int = MAX_CYCLES
) -> list[CycleReport | Exception]:
    """Cycles until one exits 0, a day apart so every recorded failure is due again."""
    cycles: list[CycleReport | Exception] = []
    for _ in range(max_cycles):
        try:
            report = sync_at(channel, clock)
        except (TargetUnreachable, ScimError) as exc:  # a cycle-ending fault: try again
            cycles.append(exc)
            with channel.store() as store:
                newest = store.runs(1)
            # A cycle cut short is never recorded as a clean one.
            assert not newest or newest[0].result != "ok" or newest[0].started_at != clock()
        else:
            cycles.append(report)
            if report.exit_code == 0:
                return cycles
        clock.advance(timedelta(days=1, hours=1))
    ends = [c.exit_code if isinstance(c, CycleReport) else repr(c) for c in cycles]
    raise AssertionError(f"no clean cycle in {max_cycles}: {ends}")


def assert_no_deprovisioning(cycles: list[CycleReport | Exception]) -> None:
    for cycle in cycles:
        if isinstance(cycle, CycleReport):
            sent = {op.action for op in cycle.prepared.verdict.allowed.operations}
            assert not sent & DEPROVISIONING, sent


def assert_target_matches(channel: Channel, users: int, groups: dict[str, set[str]]) -> None:
    """Every user exactly once and active, every group right, and the store agrees."""
    seen = Counter(str(u["userName"]) for u in channel.emulator.users())
    assert set(seen) == {f"u{i:06d}@example.com" for i in range(users)}
    assert max(seen.values()) == 1
    assert all(u["active"] is True for u in channel.emulator.users())
    assert Counter(str(g["displayName"]) for g in channel.emulator.groups()) == Counter(
        list(groups)
    )
    for name, members in groups.items():
        assert channel.member_names(name) == members, name
    target_ids = {str(u["id"]) for u in channel.emulator.users()}
    with channel.store() as store:
        assert {link.target_id for link in store.linked_users().values()} == target_ids
        assert store.failures() == {}
        # Every run finished; one cut short by a fault says so ("failed"), never "ok".
        runs = store.runs(100)
        assert all(run.result in {"ok", "partial", "failed"} for run in runs)
        cut_short = [run for run in runs if run.cause is not None]
        assert all(run.result == "failed" for run in cut_short), cut_short


def fault_row(kind: str, channel: Channel, cycles: int, lost: int, duplicated: int) -> None:
    stats = channel.emulator.stats()
    injected = {k: v for k, v in stats["by_status"].items() if k in ("429", "500", "503")}
    injected["dropped"] = stats["dropped"]
    print(f"\nFAULTS | {kind:<31} | {injected} | cycles {cycles} | lost {lost} | dup {duplicated}")


def lost_and_duplicated(channel: Channel, users: int) -> tuple[int, int]:
    seen = Counter(str(u["userName"]) for u in channel.emulator.users())
    return users - len(seen), sum(n - 1 for n in seen.values())


# --- the target misbehaves -----------------------------------------------------------------


def test_random_5xx_and_dropped_connections_converge_without_loss(
    channel: FastChannel, emulator: RunningEmulator
) -> None:
    groups = populate(channel, 300, 4)
    # Faults strike before the write; a lost response drops the answer of an applied POST.
    emulator.configure(fault_rate=0.2, lost_response_rate=0.05, seed=5)
    clock = Clock(datetime(2031, 1, 1, tzinfo=UTC))
    cycles = converge(channel, clock)
    assert_no_deprovisioning(cycles)
    stats = emulator.stats()
    assert stats["by_method"].get("DELETE", 0) == 0
    assert stats["dropped"] > 0 and stats["by_status"].get("500", 0) > 0
    with channel.store() as store:
        sent = {row.event for row in store.audit_log()}
    assert not sent & {"disable", "delete", "remove_members"}, sent
    lost, duplicated = lost_and_duplicated(channel, 300)
    fault_row("5xx + drops + lost POST answers", channel, len(cycles), lost, duplicated)
    assert_target_matches(channel, 300, groups)

    emulator.configure(fault_rate=0.0)
    emulator.reset_stats()
    with channel.store() as store:
        store.reset()  # a full reconciliation: the target as faults left it is right
    clock.advance(timedelta(hours=1))
    final = sync_at(channel, clock)
    assert final.exit_code == 0
    assert final.prepared.plan.operations == ()
    assert channel.writes() == 0


def test_faults_the_client_does_not_absorb_are_retried_by_later_cycles(
    channel: FastChannel, emulator: RunningEmulator
) -> None:
    # Every 5xx fails its record; a dropped connection ends the cycle (target unreachable),
    # keeping what landed before it. Progress is made each cycle, so it converges.
    channel.retries = 0
    groups = populate(channel, 150, 3)
    emulator.configure(fault_rate=0.05, lost_response_rate=0.02, seed=11)
    clock = Clock(datetime(2031, 1, 1, tzinfo=UTC))
    cycles = converge(channel, clock, max_cycles=40)
    assert len(cycles) > 1, "the faults reached the engine"
    assert_no_deprovisioning(cycles)
    stats = emulator.stats()
    assert stats["by_method"].get("DELETE", 0) == 0
    lost, duplicated = lost_and_duplicated(channel, 150)
    fault_row("same, no client retry", channel, len(cycles), lost, duplicated)
    assert_target_matches(channel, 150, groups)


def test_a_429_storm_is_waited_out_and_records_no_failure(
    channel: FastChannel, emulator: RunningEmulator
) -> None:
    groups = populate(channel, 80, 2)
    emulator.configure(rate=20)
    report = channel.sync()
    stats = emulator.stats()
    assert stats["by_status"].get("429", 0) > 0, "the storm happened"
    # Retry-After honoured: every 429 was waited out, so no record failed because of one.
    assert report.exit_code == 0
    assert report.outcome.failed == []
    lost, duplicated = lost_and_duplicated(channel, 80)
    fault_row("429 storm, rate 20/s", channel, 1, lost, duplicated)
    assert_target_matches(channel, 80, groups)
    emulator.configure(rate=None)
    emulator.reset_stats()
    assert channel.sync().prepared.plan.operations == ()
    assert channel.writes() == 0


def test_latency_of_50_ms_converges_in_one_cycle(
    channel: FastChannel, emulator: RunningEmulator
) -> None:
    groups = populate(channel, 80, 2)
    emulator.configure(latency_ms=50)
    report = channel.sync()
    assert report.exit_code == 0
    lost, duplicated = lost_and_duplicated(channel, 80)
    fault_row("latency 50 ms", channel, 1, lost, duplicated)
    assert_target_matches(channel, 80, groups)


# --- the directory goes away ---------------------------------------------------------------


def test_slapd_stopped_ends_the_cycle_before_any_write_and_restarted_converges(
    own_channel: FastChannel, own_slapd: RestartableSlapd, emulator: RunningEmulator
) -> None:
    groups = populate(own_channel, 20, 2)
    assert own_channel.sync().exit_code == 0
    with own_channel.store() as store:
        runs_before = store.runs(100)
    own_slapd.stop()
    emulator.reset_stats()

    with pytest.raises(DirectoryUnreachable):
        own_channel.sync()
    result: subprocess.CompletedProcess[str] = cli(own_channel, "sync")
    assert result.returncode == 4
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert "cannot reach LDAP server" in line and "Traceback" not in result.stderr
    with own_channel.store() as store:
        assert store.runs(100) == runs_before, "no run recorded, so none marked ok"
        store.reset()  # the restarted directory is read in full
    assert emulator.stats()["total"] == 0, "nothing sent to the target at all"

    own_slapd.restart()
    own_channel.tree.add_user("late")
    report = own_channel.sync()
    assert report.exit_code == 0
    assert report.prepared.plan.summary() == {"create": 1}
    fault_row("slapd stopped, restarted", own_channel, 1, *lost_and_duplicated(own_channel, 21))
    assert all(u["active"] is True for u in emulator.users())
    for name, members in groups.items():
        assert own_channel.member_names(name) == members


def test_slapd_dying_mid_read_deprovisions_nobody(
    own_channel: FastChannel,
    own_slapd: RestartableSlapd,
    emulator: RunningEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own_channel.source["page_size"] = 100
    groups = populate(own_channel, 1000, 1)
    assert own_channel.sync().exit_code == 0
    with own_channel.store() as store:
        store.reset()  # the next cycle pages through the whole directory
        runs_before = store.runs(100)

    paged = Connection.paged
    read = Counter[str]()

    def dies_on_page_two(
        self: Connection, base: str, filterstr: str, *args: Any
    ) -> Iterator[Entry]:
        for entry in paged(self, base, filterstr, *args):
            yield entry
            read[filterstr] += 1
            if "inetOrgPerson" in filterstr and read[filterstr] == 150:
                own_slapd.stop()  # mid-way through page two: page three never comes

    monkeypatch.setattr(Connection, "paged", dies_on_page_two)
    emulator.reset_stats()
    with pytest.raises(DirectoryUnreachable):
        own_channel.sync()
    assert max(read.values()) == 200, "the reader had two pages when slapd died"
    assert emulator.stats()["total"] == 0
    with own_channel.store() as store:
        assert store.runs(100) == runs_before
        assert store.count_linked(Kind.USER) == 1000

    monkeypatch.setattr(Connection, "paged", paged)
    own_slapd.restart()
    report = own_channel.sync()
    assert report.exit_code == 0
    assert report.prepared.view.mode == "full"
    assert report.prepared.plan.operations == ()
    assert emulator.stats()["by_method"].get("DELETE", 0) == 0
    lost, duplicated = lost_and_duplicated(own_channel, 1000)
    fault_row("slapd killed mid-read (p. 2)", own_channel, 1, lost, duplicated)
    assert_target_matches(own_channel, 1000, groups)
