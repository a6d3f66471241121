"""`scimsync run` and `scimsync sync` as processes: cycles, health, standby, stops, approvals.

Every test talks to real processes, the real slapd and the emulator over HTTP. Loops are
bounded by counts the daemon reports (its /metrics), never by time.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
import yaml

from scimsync import daemon as daemon_module
from scimsync.config import Config
from scimsync.daemon import Daemon
from scimsync.emulator import RunningEmulator
from scimsync.model import Kind
from scimsync.state import Store
from scimsync.state.watermarks import APPROVAL, PRUNED
from tests.fixtures.slapd import RestartableSlapd, Tree
from tests.harness import Channel, eventually, source_settings
from tests.test_state import T0, Clock

T = TypeVar("T")


def get(url: str) -> httpx2.Response | None:
    try:
        return httpx2.get(url, timeout=2)
    except httpx2.TransportError:
        return None


class Process:
    """One scimsync process; its stdout and stderr go to files, readable while it runs."""

    def __init__(self, args: list[str], work: Path, name: str) -> None:
        self.out_path, self.err_path = work / f"{name}.out", work / f"{name}.err"
        self._base = ""
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.popen = subprocess.Popen(args, stdout=out, stderr=err, text=True)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (not a last one still being written)."""
        lines = self.stderr.splitlines(keepends=True)
        return [json.loads(line) for line in lines if line.startswith("{") and line.endswith("\n")]

    def started(self) -> dict[str, Any]:
        """The `daemon started` log event, once written."""

        def probe() -> dict[str, Any] | None:
            found = [e for e in self.events() if e["event"] == "daemon started"]
            if not found and self.popen.poll() is not None:
                raise AssertionError(f"exited with {self.popen.returncode}: {self.stderr}")
            return found[0] if found else None

        return eventually(probe, "the daemon started log line")

    @property
    def base(self) -> str:
        """`http://host:port` of `run`'s listener, as its start-up log line gives it."""
        if not self._base:
            self._base = str(self.started()["metrics"]).removesuffix("/metrics")
        return self._base

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def health(self) -> httpx2.Response | None:
        return get(f"{self.base}/healthz")

    def health_when(self, wanted: Callable[[httpx2.Response], bool]) -> httpx2.Response:
        """The first /healthz answer that is as wanted."""

        def probe() -> httpx2.Response | None:
            answer = self.health()
            return answer if answer is not None and wanted(answer) else None

        return eventually(probe, "/healthz to answer as wanted")

    def metric(self, name: str) -> float:
        """A sample of /metrics (`name` with its labels as exposed), 0 when absent."""
        answer = get(f"{self.base}/metrics")
        if answer is None:
            return 0.0
        for line in answer.text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.popen.send_signal(signum)
        return self.popen.wait(timeout=60)


class Scimsync:
    """A config file for the test tree and emulator, and the processes run with it."""

    def __init__(self, tree: Tree, emulator: RunningEmulator, work: Path) -> None:
        self.work = work
        self.processes: list[Process] = []
        self.settings: dict[str, Any] = {
            "state": f"sqlite:///{work / 'state.db'}",
            "interval": 0.2,
            "source": source_settings(tree),
            "target": {"url": emulator.url, "token": emulator.token},
            "mapping": {"title": "title"},
        }

    def config(self, name: str, **overrides: Any) -> Path:
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**self.settings, **overrides}))
        path.chmod(0o600)
        return path

    def start(self, *args: str, name: str = "run", port: int = 0) -> Process:
        """`scimsync --log-format json ARGS`; for `run`, metrics on `port`.

        Port 0 by default: `run` binds a free port itself and logs it, so no other process
        can take the port between its choice and the bind.
        """
        overrides = {}
        if args[:1] == ("run",):
            overrides["metrics_listen"] = f"127.0.0.1:{port}"
        config = self.config(name, **overrides)
        command = [sys.executable, "-m", "scimsync", "--config", str(config)]
        process = Process([*command, "--log-format", "json", *args], self.work, name)
        self.processes.append(process)
        return process

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A command run to its end."""
        command = [sys.executable, "-m", "scimsync", "--config", str(self.config("cli"))]
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=120, check=False
        )

    def store(self) -> Store:
        return Store.open(self.settings["state"], "default")

    def close(self) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait()


@pytest.fixture
def scimsync(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Iterator[Scimsync]:
    runner = Scimsync(ldap_tree, emulator, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


def user_names(emulator: RunningEmulator, active: bool | None = None) -> set[str]:
    return {str(u["userName"]) for u in emulator.users() if active is None or u["active"] is active}


def test_daemon_syncs_changes_serves_health_and_metrics_and_stops_on_sigterm(
    scimsync: Scimsync, ldap_tree: Tree, emulator: RunningEmulator
) -> None:
    dn = ldap_tree.add_user("dana", title="Engineer")
    daemon = scimsync.start("run")

    def title_at_target() -> str | None:
        users = {u["userName"]: u for u in emulator.users()}
        user = users.get("dana@example.com")
        return str(user.get("title")) if user else None

    assert eventually(title_at_target, "the first cycle") == "Engineer"
    health = eventually(daemon.health, "/healthz")
    assert health.status_code == 200 and health.text.strip() == "ok"

    ldap_tree.modify(dn, title="Manager")
    eventually(lambda: title_at_target() == "Manager", "the change to reach the target")

    metrics = eventually(lambda: get(f"{daemon.base}/metrics"), "/metrics").text
    for name in (
        "scimsync_cycle_duration_seconds_count",
        'scimsync_operations_total{action="create",result="ok"} 1.0',
        'scimsync_operations_total{action="update",result="ok"} 1.0',
        "scimsync_pending_records 0.0",
        "scimsync_quarantined_records 0.0",
        "scimsync_held_operations 0.0",
        "scimsync_last_success_timestamp_seconds",
    ):
        assert name in metrics, name

    assert daemon.stop() == 0, daemon.stderr
    assert '"event": "daemon stopped"' in daemon.stderr


def test_metrics_listen_port_0_binds_a_free_port_and_the_start_up_line_names_it(
    scimsync: Scimsync,
) -> None:
    daemon = scimsync.start("run")  # metrics_listen: 127.0.0.1:0
    url = str(daemon.started()["metrics"])
    host, _, port = url.removeprefix("http://").removesuffix("/metrics").rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0, url
    answer = eventually(lambda: get(url), "/metrics at the logged address")
    assert answer.status_code == 200 and "scimsync_cycles_total" in answer.text
    assert daemon.stop() == 0, daemon.stderr


# --- item 5: metrics_listen taken; a standby -------------------------------------------


def test_a_taken_metrics_listen_exits_2_and_another_listen_stands_by_then_takes_over(
    scimsync: Scimsync, ldap_tree: Tree, emulator: RunningEmulator
) -> None:
    ldap_tree.add_user("sam")
    active = scimsync.start("run", name="active")
    eventually(lambda: user_names(emulator), "the active instance's first cycle")
    assert eventually(active.health, "the active /healthz").text.strip() == "ok"

    port = active.port  # held by the active instance for as long as it runs
    same_port = scimsync.start("run", name="same-port", port=port)
    assert same_port.popen.wait(timeout=60) == 2
    lines = [line for line in same_port.stderr.splitlines() if line.strip()]
    assert lines == [
        f"scimsync: metrics_listen 127.0.0.1:{port}: address already in use "
        "(another scimsync run? set metrics_listen)"
    ]

    standby = scimsync.start("run", name="standby")
    answer = standby.health_when(lambda h: h.text != "starting\n")  # its first turn
    assert answer.status_code == 200 and answer.text.startswith("standby"), answer.text
    assert standby.metric('scimsync_cycles_total{exit_code="0"}') == 0  # it runs no cycle

    assert active.stop() == 0
    standby.health_when(lambda h: h.text.strip() == "ok")  # it took the channel over
    assert standby.stop() == 0
    assert any(
        e["event"] == "active: this instance now holds the channel" for e in standby.events()
    )


# --- item 11: health follows the last cycle; outages back off and log once --------------


def test_a_refused_api_key_turns_health_503_and_is_one_failed_run_and_one_audit_event(
    scimsync: Scimsync, ldap_tree: Tree, emulator: RunningEmulator
) -> None:
    ldap_tree.add_user("kay")
    scimsync.settings["target"]["token"] = "wrong-" + emulator.token
    daemon = scimsync.start("run")
    answer = daemon.health_when(lambda h: h.status_code == 503)
    assert "API key" in answer.text and emulator.token not in answer.text
    eventually(
        lambda: daemon.metric('scimsync_cycles_total{exit_code="4"}') >= 3, "three failed cycles"
    )
    assert daemon.stop() == 0
    errors = [e for e in daemon.events() if e["level"] == "error"]
    assert len(errors) == 1, errors  # logged once, not once a cycle
    with scimsync.store() as store:
        runs = store.runs()
        refusals = [a for a in store.audit_log() if a.event == "key_refused"]
    assert len(runs) == 1 and runs[0].result == "failed" and runs[0].cycles >= 3, runs
    assert runs[0].cause is not None and "must be rotated" in runs[0].cause
    assert len(refusals) == 1 and refusals[0].kind == "cycle" and not refusals[0].success
    status = scimsync("status")
    assert "failed" in status.stdout and "must be rotated" in status.stdout, status.stdout


def test_a_directory_outage_shows_as_503_logs_once_backs_off_and_logs_its_end(
    own_slapd: RestartableSlapd, emulator: RunningEmulator, tmp_path: Path
) -> None:
    tree = Tree(own_slapd, "outage")
    tree.add_user("lou")
    runner = Scimsync(tree, emulator, tmp_path)
    runner.settings["interval"] = 0.05
    try:
        daemon = runner.start("run")
        eventually(lambda: user_names(emulator), "the first cycle")
        assert eventually(daemon.health, "/healthz").status_code == 200
        own_slapd.stop()
        answer = daemon.health_when(lambda h: h.status_code == 503)  # during the outage
        assert answer.text.startswith("last cycle failed"), answer.text
        failed = 'scimsync_cycles_total{exit_code="4"}'
        eventually(lambda: daemon.metric(failed) >= 5, "five failed cycles")
        own_slapd.restart()
        daemon.health_when(lambda h: h.status_code == 200)  # the directory is back
        assert daemon.stop() == 0
    finally:
        runner.close()
    events = daemon.events()
    errors = [e for e in events if e["level"] == "error"]
    assert len(errors) == 1, json.dumps(events, indent=1)
    assert errors[0]["event"] == "cycle failed" and "retry_in" in errors[0]
    ended = [e for e in events if e["event"] == "cycles succeed again"]
    assert len(ended) == 1 and ended[0]["failed_cycles"] >= 5, ended


def test_failed_cycles_are_retried_further_and_further_apart_up_to_a_cap() -> None:
    retry_delay = daemon_module.retry_delay
    delays = [retry_delay(1.0, failures) for failures in range(14)]
    assert delays[:4] == [1.0, 1.0, 2.0, 4.0]
    assert delays == sorted(delays) and delays[-1] == daemon_module.MAX_RETRY_DELAY == 3600
    assert retry_delay(300.0, 5) == 3600.0  # 2x, 4x, ... up to an hour
    assert retry_delay(7200.0, 5) == 7200.0  # never more often than the interval


# --- item 13 and the held part of item 11: approving while run holds the channel ------


def test_sync_allow_deletions_while_run_holds_the_channel_records_an_approval_it_applies(
    scimsync: Scimsync, ldap_tree: Tree, emulator: RunningEmulator
) -> None:
    people = [ldap_tree.add_user(name) for name in ("ada", "bob", "cy")]
    scimsync.settings["options"] = {"max_deletions": 1}
    daemon = scimsync.start("run")
    eventually(lambda: len(user_names(emulator)) == 3, "the first cycle")
    for dn in people[:2]:
        ldap_tree.delete(dn)
    eventually(lambda: daemon.metric("scimsync_held_operations") == 2, "the hold")
    assert eventually(daemon.health, "/healthz").status_code == 200  # held needs a person
    held_warnings = [
        e for e in daemon.events() if e["event"] == "operations held by the safety threshold"
    ]
    assert held_warnings and held_warnings[0]["level"] == "warning"

    locked = scimsync("sync")  # without --allow-deletions, the channel is the daemon's
    assert locked.returncode == 5 and "locked" in locked.stderr, locked.stderr
    approve = scimsync("sync", "--allow-deletions")
    assert approve.returncode == 0, approve.stdout + approve.stderr
    assert "approval recorded" in approve.stdout and "2 held operations" in approve.stdout

    gone = {"ada@example.com", "bob@example.com"}
    eventually(lambda: user_names(emulator, active=False) == gone, "the approved disables")
    eventually(lambda: daemon.metric("scimsync_held_operations") == 0, "the hold to lift")
    assert daemon.stop() == 0
    with scimsync.store() as store:
        events = [(a.event, a.name) for a in store.audit_log()]
        assert store.approval() is None and store.staged_deletions() == []
    for name in gone:
        # Audited once each, though every cycle until the approval met the same hold.
        assert events.count(("held", name)) == 1, events
        assert events.count(("approved", name)) == 1, events
        assert events.count(("disable", name)) == 1, events


# --- item 14: SIGTERM and SIGINT finish the operations in flight, and say so ---------


@pytest.mark.parametrize(
    ("command", "signum"),
    [("sync", signal.SIGTERM), ("sync", signal.SIGINT), ("run", signal.SIGTERM)],
)
def test_a_signal_mid_cycle_finishes_in_flight_records_interrupted_and_the_next_cycle_converges(
    scimsync: Scimsync,
    ldap_tree: Tree,
    emulator: RunningEmulator,
    command: str,
    signum: signal.Signals,
) -> None:
    ldap_tree.add_users(120)
    scimsync.settings["target"]["max_concurrency"] = 1
    emulator.configure(latency_ms=25)  # 120 creates one at a time: seconds to land the signal
    process = scimsync.start(command)
    eventually(lambda: emulator.stats()["by_method"].get("POST", 0) >= 1, "the first create")
    code = process.stop(signum)
    emulator.configure(latency_ms=0)
    created = len(user_names(emulator))
    assert 1 <= created < 120
    events = [e["event"] for e in process.events()]
    assert "cycle interrupted" in events and "cycle finished" not in events, events
    if command == "sync":
        assert code == 1, process.stderr
        assert "interrupted" in process.stdout and "Traceback" not in process.stderr
    else:
        assert code == 0, process.stderr
    with scimsync.store() as store:
        run = store.runs()[0]
    assert run.result == "interrupted" and run.summary == {"create": created}, run
    assert run.cause is not None and "not sent" in run.cause
    again = scimsync("sync")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(user_names(emulator)) == 120


# --- item 9: every cycle recorded, cheaply when quiet; audit by user or group ----------


@pytest.fixture
def channel(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Channel:
    return Channel(ldap_tree, emulator, tmp_path)


def test_quiet_cycles_are_counted_into_one_run(channel: Channel) -> None:
    channel.tree.add_user("quin")
    first = channel.sync()
    quiet = [channel.sync() for _ in range(3)]
    assert all(q.cycle_id is not None and q.cycle_id == quiet[0].cycle_id for q in quiet)
    with channel.store() as store:
        runs = store.runs()
    assert [(r.mode, r.result, r.cycles) for r in runs] == [
        ("quiet", "ok", 3),
        ("full", "ok", 1),
    ]
    assert runs[1].cycle_id == first.cycle_id
    channel.tree.add_user("ruth")  # a cycle with work gets its own row; quiet starts anew
    channel.sync()
    channel.sync()
    with channel.store() as store:
        modes = [(r.mode, r.cycles) for r in store.runs()]
    assert modes == [("quiet", 1), ("incremental", 1), ("quiet", 3), ("full", 1)]


def test_a_hold_met_again_is_counted_into_its_run_and_audited_once(channel: Channel) -> None:
    people = [channel.tree.add_user(name) for name in ("hal", "ivy", "jo")]
    channel.options["max_deletions"] = 1
    assert channel.sync().exit_code == 0
    for dn in people[:2]:
        channel.tree.delete(dn)
    held = [channel.sync() for _ in range(3)]
    assert [h.exit_code for h in held] == [3, 3, 3]
    assert len({h.cycle_id for h in held}) == 1
    with channel.store() as store:
        runs = [(r.mode, r.result, r.cycles) for r in store.runs()]
        cause = store.runs()[0].cause
        events = [a.event for a in store.audit_log()]
    assert runs == [("incremental", "stopped", 3), ("full", "ok", 1)]
    assert cause is not None and "max_deletions" in cause
    assert events.count("held") == 2, events


def test_an_incremental_cycle_with_only_refused_records_is_a_run_with_audit_events(
    channel: Channel,
) -> None:
    good = channel.tree.add_user("good")
    assert channel.sync().exit_code == 0
    channel.tree.add_user("nomail", mail=[])
    report = channel.sync()
    assert report.exit_code == 1 and report.cycle_id is not None
    with channel.store() as store:
        newest = store.runs()[0]
        audit = store.audit_log(cycle_id=report.cycle_id)
    assert (newest.cycle_id, newest.mode, newest.result) == (
        report.cycle_id,
        "incremental",
        "partial",
    )
    assert [(a.event, a.success) for a in audit] == [("map", False)]
    channel.tree.modify(good, mail="renamed@example.com")  # userName is write-once: a conflict
    report = channel.sync()
    assert report.exit_code == 1 and report.cycle_id is not None
    with channel.store() as store:
        audit = store.audit_log(cycle_id=report.cycle_id)
    assert [(a.event, a.name) for a in audit] == [("conflict", "renamed@example.com")], audit


def test_audit_filters_by_user_and_group_name_in_any_case_or_source_id(
    scimsync: Scimsync, ldap_tree: Tree
) -> None:
    ldap_tree.add_group("crew", [ldap_tree.add_user("ann"), ldap_tree.add_user("ben")])
    assert scimsync("sync").returncode == 0
    by_user = scimsync("audit", "--user", "ANN@example.com")
    assert by_user.returncode == 0, by_user.stderr
    lines = by_user.stdout.splitlines()
    assert len(lines) == 1 and "create" in lines[0] and "ann@example.com" in lines[0], lines
    by_group = scimsync("audit", "--group", "Crew").stdout.splitlines()
    assert {line.split()[2] for line in by_group} == {"create", "add_members"}, by_group
    assert all("crew" in line for line in by_group)
    with scimsync.store() as store:
        source_id = next(a.source_id for a in store.audit_log() if a.name == "crew")
    assert scimsync("audit", "--group", source_id).stdout.splitlines() == by_group
    both = scimsync("audit", "--user", "ben@example.com", "--group", "crew").stdout
    assert len(both.splitlines()) == 3 and "ann@" not in both
    assert scimsync("audit", "--user", "nobody").stdout == ""
    quiet = scimsync("sync")
    assert quiet.returncode == 0 and quiet.stdout.startswith("cycle ")
    assert "cycle None" not in quiet.stdout  # a quiet cycle has an id too
    assert scimsync("sync").returncode == 0
    status = scimsync("status").stdout
    assert "quiet since" in status and "(2 cycles)" in status, status


# --- issue 12, item 3: an unexpected error fails one cycle, not the daemon -------------


def test_an_error_no_typed_error_covers_fails_the_cycle_503_and_run_goes_on(
    scimsync: Scimsync, ldap_tree: Tree, emulator: RunningEmulator
) -> None:
    """A corrupt record in the store, read by every cycle, raises a bare JSONDecodeError.

    Why this fault: issue 12's client work maps every HTTP-library error (a body that fails
    to decode included) to the target's error types, so a broken target will not give an
    untyped error on demand for long. The approval row (a watermark holding JSON) is read
    by every cycle, and no typed error covers unparsable contents; it is written here
    through the real store, as a foreign writer, a hand edit or a damaged file would leave
    it. No monkeypatching: the real run process meets it on its own.
    """
    ldap_tree.add_user("uma")
    daemon = scimsync.start("run")
    eventually(lambda: user_names(emulator), "the first cycle")
    daemon.health_when(lambda h: h.status_code == 200)
    with scimsync.store() as store:
        store.set_watermark(APPROVAL, "{not json")

    answer = daemon.health_when(lambda h: h.status_code == 503)
    assert answer.text.startswith("last cycle failed: JSONDecodeError: "), answer.text
    errors = 'scimsync_cycle_errors_total{kind="JSONDecodeError"}'
    eventually(lambda: daemon.metric(errors) >= 3, "three failed cycles")
    assert daemon.popen.poll() is None  # still running

    with scimsync.store() as store:
        store.clear_approval()
    daemon.health_when(lambda h: h.status_code == 200)
    ldap_tree.add_user("vic")
    eventually(lambda: "vic@example.com" in user_names(emulator), "a cycle after the fault")
    assert daemon.stop() == 0
    events = daemon.events()
    logged = [e for e in events if e["level"] == "error"]
    assert len(logged) == 1, logged  # once, not once a cycle
    assert logged[0]["event"] == "cycle failed"
    assert logged[0]["error"].startswith("JSONDecodeError: "), logged
    assert "retry_in" in logged[0]  # backed off like any failed cycle
    assert "Traceback" not in daemon.stderr  # a traceback only at debug level
    assert any(e["event"] == "cycles succeed again" for e in events)


def test_a_mapping_error_met_by_a_cycle_still_ends_run_with_exit_2(scimsync: Scimsync) -> None:
    scimsync.settings["mapping"] = {"displayName": "{{ givenName "}
    daemon = scimsync.start("run")
    assert daemon.popen.wait(timeout=60) == 2
    lines = [line for line in daemon.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and "mapping.displayName" in lines[0], daemon.stderr


# --- issue 12, item 4: /healthz answers beside an idle connection ----------------------


def test_run_answers_healthz_beside_an_idle_connection_drops_it_and_stops_on_sigterm(
    scimsync: Scimsync, ldap_tree: Tree, emulator: RunningEmulator
) -> None:
    ldap_tree.add_user("wyn")
    daemon = scimsync.start("run")
    eventually(daemon.health, "/healthz")
    port = daemon.port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
        # One connection that sends nothing held the old single-threaded listener for ever.
        answer = httpx2.get(f"{daemon.base}/healthz", timeout=10)
        assert answer.status_code == 200, answer.text
        assert idle.recv(1) == b""  # dropped by the listener's read timeout, not by us
    with socket.create_connection(("127.0.0.1", port), timeout=30):
        assert daemon.stop() == 0  # an open idle connection does not hold up the stop


# --- issue 14: audit and runs retention, once a day --------------------------------------


def retention_config(store_url: str) -> Config:
    """Enough for a Daemon that is never asked to run a cycle."""
    return Config.model_validate(
        {
            "state": store_url,
            "audit_retention_days": 30,
            "source": {
                "url": "ldap://127.0.0.1:1",
                "base_dn": "dc=example,dc=com",
                "users": {"filter": "(objectClass=inetOrgPerson)"},
            },
            "target": {"url": "http://127.0.0.1:1/scim", "token": "t0k"},
        }
    )


def test_run_prunes_once_a_day_by_the_time_the_store_keeps(store_url: str) -> None:
    """Driven by the daemon's clock, cycle by cycle; a new Daemon stands for a restart."""
    clock = Clock(T0)
    config = retention_config(store_url)

    def on_day(day: float) -> None:
        clock.now = T0 + timedelta(days=day)

    def days_audited(store: Store) -> list[float]:
        return [(a.at - T0) / timedelta(days=1) for a in store.audit_log()]

    with Store.open(store_url, "default", clock=clock) as store:
        cycle = store.begin_run("full")
        for day in (0, 10.5, 40):
            on_day(day)
            store.audit(cycle, "update", Kind.USER, f"d{day}", None, True)

        first = Daemon(config, clock=clock)
        first.prune_when_due(store)  # none on record: at once, up to day 40 - 30
        assert days_audited(store) == [10.5, 40]
        assert store.watermark(PRUNED) == clock.now.isoformat()

        on_day(40 + 23 / 24)
        Daemon(config, clock=clock).prune_when_due(store)  # restarted: not due yet
        assert days_audited(store) == [10.5, 40]

        on_day(41)
        stopping = Daemon(config, clock=clock)
        stopping.stopping.set()  # SIGTERM before the first chunk: nothing, nothing recorded
        stopping.prune_when_due(store)
        assert days_audited(store) == [10.5, 40]
        assert store.watermark(PRUNED) == (T0 + timedelta(days=40)).isoformat()

        Daemon(config, clock=clock).prune_when_due(store)  # restarted a day on: due
        assert days_audited(store) == [40]
        assert store.watermark(PRUNED) == clock.now.isoformat()

        on_day(35)  # the clock set back: the last prune is in the future, prune anyway
        first.prune_when_due(store)
        assert store.watermark(PRUNED) == clock.now.isoformat()

        store.reset()  # a full reconciliation does not reset the schedule
        assert store.watermark(PRUNED) == clock.now.isoformat()


def test_run_prunes_old_audit_entries_and_runs_after_its_first_cycle(
    scimsync: Scimsync, ldap_tree: Tree, emulator: RunningEmulator
) -> None:
    long_ago = Clock(datetime.now(UTC) - timedelta(days=500))
    with Store.open(scimsync.settings["state"], "default", clock=long_ago) as store:
        old = store.begin_run("full")
        store.audit(old, "create", Kind.USER, "gone", None, True)
        store.finish_run(old, "ok", {"create": 1})
    ldap_tree.add_user("kay")
    daemon = scimsync.start("run")
    eventually(
        lambda: any(e["event"] == "store pruned" for e in daemon.events()), "the first prune"
    )
    assert daemon.stop() == 0
    [pruned] = [e for e in daemon.events() if e["event"] == "store pruned"]
    assert (pruned["audit_entries"], pruned["runs"]) == (1, 1)
    with scimsync.store() as store:
        assert [a.source_id for a in store.audit_log() if a.kind == "user"] != []
        assert all(a.source_id != "gone" for a in store.audit_log())
        assert old not in {r.cycle_id for r in store.runs(limit=100)}
        assert store.watermark(PRUNED) is not None
