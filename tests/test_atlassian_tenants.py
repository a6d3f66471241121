"""What real Atlassian tenants need beyond the happy path (issue 15), end to end against
slapd and the emulator."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from scimsync.config import TargetConfig
from scimsync.cycle.check import token_expiry_warning
from scimsync.daemon import mostly_failed
from scimsync.emulator import RunningEmulator
from scimsync.errors import ExitCode
from scimsync.report import plan_json, print_plan, print_status
from scimsync.state import Store
from tests.fixtures.slapd import Tree
from tests.harness import Channel, eventually
from tests.test_cli import Cli, one_line_error
from tests.test_daemon import Scimsync


@pytest.fixture
def channel(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Channel:
    return Channel(ldap_tree, emulator, tmp_path)


def add_by_hand(channel: Channel, group: str, *member_ids: str) -> None:
    """Members an Atlassian admin adds in the admin console."""
    channel.patch_target(
        f"/Groups/{channel.groups()[group]['id']}",
        {"op": "add", "path": "members", "value": [{"value": m} for m in member_ids]},
    )


def group_reads(channel: Channel) -> int:
    return int(channel.emulator.stats()["by_resource"].get("GET Groups", 0))


# --- 1. a group written gets the directory's members -----------------------------------


def test_a_group_written_incrementally_drops_the_members_added_by_hand(channel: Channel) -> None:
    tree = channel.tree
    anna, ben = tree.add_user("anna"), tree.add_user("ben")
    dora = tree.add_user("dora")  # linked, in no group
    team = tree.add_group("team", [anna, ben])
    tree.add_group("other", [dora])
    assert channel.sync().exit_code == 0
    stranger = channel.create_target_user("carl@example.com")
    dora_id = channel.users()["dora@example.com"]["id"]
    add_by_hand(channel, "team", stranger, dora_id)
    add_by_hand(channel, "other", stranger)  # a group no change touches
    channel.emulator.reset_stats()

    tree.add_members(team, [tree.add_user("eve")])
    report = channel.sync()

    assert report.exit_code == 0 and report.prepared.view.mode == "incremental"
    # anna and ben are linked but outside the cycle's view: ours, so they stay.
    assert channel.member_names("team") == {
        "anna@example.com",
        "ben@example.com",
        "eve@example.com",
    }
    assert channel.member_names("other") == {"dora@example.com", "carl@example.com"}
    assert group_reads(channel) == 1  # the one group written, no other
    # The store holds what the target now holds: the next cycle has nothing to do.
    assert channel.sync().prepared.plan.operations == ()


def test_a_group_renamed_in_the_directory_drops_the_members_added_by_hand(
    channel: Channel,
) -> None:
    tree = channel.tree
    team = tree.add_group("team", [tree.add_user("anna")])
    tree.add_user("warm")  # so that the next cycle is incremental
    assert channel.sync().exit_code == 0
    add_by_hand(channel, "team", channel.create_target_user("carl@example.com"))

    tree.rename(team, "cn=squad")
    report = channel.sync()

    assert report.prepared.view.mode == "incremental"
    assert set(channel.groups()) == {"squad"}
    assert channel.member_names("squad") == {"anna@example.com"}


def test_a_group_adopted_incrementally_gets_the_directory_members_only(
    channel: Channel,
) -> None:
    tree = channel.tree
    anna = tree.add_user("anna")
    assert channel.sync().exit_code == 0
    stranger = channel.create_target_user("carl@example.com")
    channel.create_target_group("team", [stranger])

    tree.add_group("team", [anna])
    report = channel.sync()

    assert report.prepared.view.mode == "incremental"
    assert channel.member_names("team") == {"anna@example.com"}


# --- 2. inactive users the tenant leaves out of its listings -----------------------------


def test_hidden_inactive_users_are_kept_linked_through_full_reconciliations(
    channel: Channel,
) -> None:
    tree = channel.tree
    tree.add_user("anna")
    ben = tree.add_user("ben")
    tree.add_group("team", [ben])
    assert channel.sync().exit_code == 0
    ben_id = channel.users()["ben@example.com"]["id"]
    channel.emulator.configure(hide_inactive=True)
    tree.modify(ben, employeeType="disabled")
    assert channel.sync().exit_code == 0
    assert channel.users()["ben@example.com"]["active"] is False
    listed = {u["userName"] for u in channel.http().get("/Users").json()["Resources"]}
    assert listed == {"anna@example.com"}  # the quirk is on: ben is hidden

    for _ in range(2):
        with channel.store() as store:
            store.reset()  # the next cycle is a full reconciliation
        channel.emulator.reset_stats()
        full = channel.sync()
        assert full.prepared.view.mode == "full"
        assert full.exit_code == 0 and full.prepared.plan.operations == ()
        assert channel.emulator.stats()["by_method"].get("POST", 0) == 0
    assert len(channel.users()) == 2  # no second account for ben

    tree.modify(ben, employeeType="staff")
    assert channel.sync().exit_code == 0
    assert channel.users()["ben@example.com"] == {
        **channel.users()["ben@example.com"],
        "id": ben_id,
        "active": True,
    }
    assert channel.member_names("team") == {"ben@example.com"}


def test_a_linked_user_deleted_at_the_target_is_still_created_again(channel: Channel) -> None:
    """The confirming GET answers 404: gone, as before the quirk was handled."""
    channel.tree.add_user("anna")
    assert channel.sync().exit_code == 0
    with channel.http() as client:
        client.delete(f"/Users/{channel.users()['anna@example.com']['id']}").raise_for_status()
    channel.emulator.configure(hide_inactive=True)
    with channel.store() as store:
        store.reset()
    full = channel.sync()
    assert [op.action.value for op in full.prepared.plan.operations] == ["create"]
    assert set(channel.users()) == {"anna@example.com"}


# --- 3. rehires ----------------------------------------------------------------------------


def leave(channel: Channel, uid: str) -> str:
    """A leaver: the entry is deleted and the account deactivated; returns its old GUID."""
    dn = channel.tree.user_dn(uid)
    old = channel.tree.guid(dn)
    channel.tree.delete(dn)
    assert channel.sync().exit_code == 0
    assert channel.users()[f"{uid}@example.com"]["active"] is False
    return old


@pytest.mark.parametrize("hidden", [False, True], ids=["listed", "hide-inactive"])
def test_a_rehire_takes_over_the_deactivated_account(channel: Channel, hidden: bool) -> None:
    tree = channel.tree
    team = tree.add_group("team", [tree.add_user("kim"), tree.add_user("warm")])
    assert channel.sync().exit_code == 0
    account = channel.users()["kim@example.com"]["id"]
    channel.emulator.configure(hide_inactive=hidden)
    old = leave(channel, "kim")
    channel.emulator.reset_stats()

    new = tree.guid(tree.add_user("kim", title="Returner"))
    tree.add_members(team, [tree.user_dn("kim")])
    planned = channel.plan()
    assert plan_json(planned)["relinked"] == [
        {"source_id": new, "previous_source_id": old, "name": "kim@example.com"}
    ]
    console = Console(record=True, width=200)
    print_plan(console, planned)
    assert f"relink         user  kim@example.com (a rehire: was {old})" in console.export_text()
    report = channel.sync()

    assert report.exit_code == 0 and report.prepared.view.rehires == {old: new}
    assert channel.emulator.stats()["by_method"].get("POST", 0) == 0  # never created twice
    kim = channel.users()["kim@example.com"]
    assert (kim["id"], kim["active"], kim["title"]) == (account, True, "Returner")
    assert len(channel.users()) == 2
    assert channel.member_names("team") == {"kim@example.com", "warm@example.com"}
    with channel.store() as store:
        relinked = store.linked_user_named("kim@example.com")
        assert relinked is not None and (relinked.source_id, relinked.in_scope) == (new, True)
        [event] = [a for a in store.audit_log() if a.event == "relinked"]
    assert (event.source_id, event.target_id, event.success) == (new, account, True)
    assert event.cause is not None and old in event.cause
    assert channel.sync().prepared.plan.operations == ()


def test_a_rehire_is_not_relinked_while_the_old_entry_exists(channel: Channel) -> None:
    """Out of scope is not gone: two entries hold the name, which stays a conflict."""
    tree = channel.tree
    kim, warm = tree.add_user("kim"), tree.add_user("warm")
    staff = tree.add_group("staff", [kim, warm])
    channel.source["users"] = {"group_dn": staff}
    assert channel.sync().exit_code == 0
    tree.remove_members(staff, [kim])  # kim leaves the scope; the entry stays
    assert channel.sync().exit_code == 0
    assert channel.users()["kim@example.com"]["active"] is False
    tree.add_members(staff, [tree.add_user("kim2", mail="kim@example.com")])
    report = channel.sync()
    assert report.prepared.view.rehires == {}
    assert [c.name for c in report.prepared.plan.conflicts] == ["kim@example.com"]


def test_relink_rehires_off_or_a_deleted_account_means_no_relink(channel: Channel) -> None:
    tree = channel.tree
    tree.add_user("warm")
    tree.add_user("kim")
    assert channel.sync().exit_code == 0
    leave(channel, "kim")
    channel.options["relink_rehires"] = False
    tree.add_user("kim")
    report = channel.sync()
    assert report.prepared.view.rehires == {}
    assert [c.kind for c in report.prepared.plan.conflicts] == ["user"]  # the name is held


def test_a_rehire_whose_old_account_was_deleted_is_created(channel: Channel) -> None:
    tree = channel.tree
    tree.add_user("warm")
    tree.add_user("kim")
    channel.options["remove_user_action"] = "delete"
    assert channel.sync().exit_code == 0
    tree.delete(tree.user_dn("kim"))
    channel.sync(allow_deletions=True)
    assert set(channel.users()) == {"warm@example.com"}
    tree.add_user("kim")
    report = channel.sync()
    assert report.prepared.view.rehires == {}
    assert [op.action.value for op in report.prepared.plan.operations] == ["create"]
    assert channel.users()["kim@example.com"]["active"] is True


# --- 4. protected groups -------------------------------------------------------------------


def test_a_directory_group_named_like_a_default_group_is_left_alone_and_reported_once(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    cli = Cli(ldap_tree, emulator, tmp_path)
    anna = ldap_tree.add_user("anna")
    ldap_tree.add_group("confluence-users-acme", [anna])  # Atlassian's default group
    ldap_tree.add_group("eng", [anna])

    planned = cli("plan")
    assert planned.returncode == 0, planned.stderr
    assert "protected      group confluence-users-acme: matches options.protected_groups" in (
        planned.stdout
    )
    for _ in range(2):
        synced = cli("sync")
        assert synced.returncode == 0, synced.stderr  # left alone is not a failure
    assert {g["displayName"] for g in emulator.groups()} == {"eng"}
    with Store.open(cli.settings["state"], "default") as store:
        events = [a for a in store.audit_log() if a.event == "protected"]
    assert [(e.name, e.success) for e in events] == [("confluence-users-acme", False)]
    status = cli("status")
    assert "protected groups left alone: 1" in status.stdout
    assert "pending retries: 0" in status.stdout

    cli.settings["options"]["protected_groups"] = []  # off: the group is provisioned
    assert cli("sync").returncode == 0
    assert {g["displayName"] for g in emulator.groups()} == {"eng", "confluence-users-acme"}


def test_a_protected_groups_pattern_that_cannot_compile_is_one_line_naming_the_key(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    cli = Cli(ldap_tree, emulator, tmp_path)
    cli.settings["options"]["protected_groups"] = ["jira-[users"]
    result = cli("plan")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "options.protected_groups" in line and "jira-[users" in line


# --- 6. email conflicts --------------------------------------------------------------------


def test_an_email_another_account_holds_names_the_email_and_the_remedy(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    cli = Cli(ldap_tree, emulator, tmp_path)
    ldap_tree.add_user("ann")
    ldap_tree.add_user("ben")
    channel = Channel(ldap_tree, emulator, tmp_path / "unused")
    held = [{"value": "ann@example.com", "type": "work", "primary": True}]
    channel.create_target_user("external@partner.example", emails=held)

    first = cli("sync")
    assert first.returncode == 1, first.stderr  # one record failed; the others went
    assert "ben@example.com" in {u["userName"] for u in emulator.users()}
    with Store.open(cli.settings["state"], "default") as store:
        [row] = store.failures().values()
        [event] = [a for a in store.audit_log() if not a.success]
    remedy = "the email ann@example.com belongs to another Atlassian account"
    for cause in (row.cause, event.cause or ""):
        assert remedy in cause and "organization admin unlinks it" in cause
    assert row.next_retry_at > row.last_failed_at  # backs off
    status = cli("status")
    assert remedy in status.stdout
    emulator.reset_stats()
    # In back-off: not sent again (the cycle's own exit code is clean), still in `status`.
    assert cli("sync").returncode == 0
    assert emulator.stats()["by_method"].get("POST", 0) == 0


# --- 7. the API key's lifecycle ------------------------------------------------------------


@pytest.mark.parametrize(
    ("days_left", "expected"),
    [
        (31, None),
        (30, "expires on {day}, in 30 days: rotate it"),
        (1, "expires on {day}, in 1 day: rotate it"),
        (0, "expires on {day}, today: rotate it"),
        (-1, "expired on {day}: rotate it"),
    ],
)
def test_the_key_expiry_is_warned_of_from_thirty_days_ahead(
    days_left: int, expected: str | None
) -> None:
    today = date(2026, 12, 2)
    day = today + timedelta(days=days_left)
    target = TargetConfig(url="https://api.atlassian.com/scim", token="t", token_expires=day)
    warning = token_expiry_warning(target, today)
    if expected is None:
        assert warning is None
    else:
        assert warning == f"target.token_expires: the API key {expected.format(day=day)}"
    unset = TargetConfig(url="https://api.atlassian.com/scim", token="t")
    assert token_expiry_warning(unset, today) is None


def test_a_rotated_key_in_the_token_file_is_used_without_a_restart(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    ldap_tree.add_user("kay")
    token_file = tmp_path / "token"
    token_file.write_text(emulator.token)
    token_file.chmod(0o600)
    expires = datetime.now(UTC).date() + timedelta(days=10)
    runner = Scimsync(ldap_tree, emulator, tmp_path)
    runner.settings["interval"] = 0.1
    runner.settings["target"] = {
        "url": emulator.url,
        "token_file": str(token_file),
        "token_expires": expires.isoformat(),
    }
    daemon = runner.start("run")
    try:
        daemon.health_when(lambda h: h.status_code == 200)
        midnight = datetime.combine(expires, datetime.min.time(), tzinfo=UTC).timestamp()
        assert daemon.metric("scimsync_token_expiry_timestamp_seconds") == midnight
        emulator.rotate_token("rotated-" + emulator.token)  # the old key answers 401 now
        refused = daemon.health_when(lambda h: h.status_code == 503)
        assert "API key" in refused.text
        between = "scimsync_cycle_interval_seconds"
        assert eventually(lambda: daemon.metric(between) >= 0.4, "the back-off: 2x, 4x")
        token_file.write_text(emulator.token)  # the new key, as a secret manager writes it
        daemon.health_when(lambda h: h.status_code == 200)
        assert eventually(lambda: daemon.metric(between) == 0.1, "the interval again")
        assert daemon.stop() == 0
    finally:
        runner.close()
    warnings = [e for e in daemon.events() if e["event"] == "API key expiring"]
    assert len(warnings) == 1 and "in 10 days" in warnings[0]["detail"]  # once a day
    assert emulator.token not in daemon.stderr


def test_check_and_status_warn_of_the_key_expiry_and_a_bad_date_is_one_line(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    cli = Cli(ldap_tree, emulator, tmp_path)
    soon = datetime.now(UTC).date() + timedelta(days=3)
    cli.settings["target"]["token_expires"] = soon.isoformat()
    for command in ("check", "status"):
        shown = cli(command)
        assert shown.returncode == 0, shown.stderr
        assert f"warning: target.token_expires: the API key expires on {soon}" in shown.stdout
    cli.settings["target"]["token_expires"] = "31/12/2026"
    bad = cli("status")
    assert bad.returncode == 2
    assert "target.token_expires" in one_line_error(bad)


# --- 8. a failing channel backs off --------------------------------------------------------


def test_most_operations_failing_counts_as_a_failed_cycle() -> None:
    assert not mostly_failed(applied=0, failed=3)  # too few to judge
    assert mostly_failed(applied=1, failed=3)
    assert not mostly_failed(applied=2, failed=2)  # half is not most
    assert not mostly_failed(applied=10, failed=0)


def test_a_storm_of_failed_writes_backs_the_channel_off_until_a_cycle_succeeds(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    ldap_tree.add_users(6)
    emulator.configure(fault_rate=1.0, fault_methods="writes", seed=3)  # reads still answer
    runner = Scimsync(ldap_tree, emulator, tmp_path)
    runner.settings["interval"] = 0.05
    runner.settings["target"]["max_retries"] = 0
    daemon = runner.start("run")

    def failed_cycle() -> list[dict[str, Any]] | None:
        found = [e for e in daemon.events() if e["event"] == "cycle failed"]
        return found or None

    try:
        # The log, not /healthz: the next cycle has nothing due and is good, so the 503
        # lasts only until then, and a probe can miss it on a busy machine.
        [failed] = eventually(failed_cycle, "the failed cycle's log event")
        assert "6 of 6 operations failed: the target is failing" in failed["error"]
        emulator.configure(fault_rate=0.0)
        # The six wait for their own retry; the next cycle, with nothing due, is good.
        daemon.health_when(lambda h: h.status_code == 200)
        assert daemon.stop() == 0
    finally:
        runner.close()
    errors = [e for e in daemon.events() if e["event"] == "cycle failed"]
    assert len(errors) == 1 and "back off" in errors[0]["error"]


# --- 5. email changes into unverified domains ----------------------------------------------


def email_channel(channel: Channel) -> tuple[str, str]:
    """anna, in `team`, with a userName that does not follow her email; returns (DN, id)."""
    channel.mapping["userName"] = {"template": "{{ uid }}@example.com"}
    tree = channel.tree
    anna = tree.add_user("anna")
    tree.add_group("team", [anna])
    channel.emulator.configure(verified_domains=["example.com"])  # unlinks as Atlassian does
    assert channel.sync().exit_code == 0
    return anna, channel.users()["anna@example.com"]["id"]


def test_without_verified_domains_an_email_change_loses_the_account(channel: Channel) -> None:
    """Why the hold matters: the tenant unlinks the account and drops it from its groups."""
    anna, _ = email_channel(channel)
    channel.tree.modify(anna, mail="anna@gmail.com")
    channel.sync()
    assert "anna@example.com" not in channel.users()
    assert channel.member_names("team") == set()


def test_an_email_change_outside_the_verified_domains_is_held_until_allowed(
    channel: Channel,
) -> None:
    anna, account = email_channel(channel)
    channel.options["verified_domains"] = ["example.com"]
    channel.tree.modify(anna, mail="anna@gmail.com")

    held = channel.sync()
    assert held.exit_code == ExitCode.HELD
    assert [(o.action.value, o.name) for o in held.prepared.verdict.held] == [
        ("update", "anna@example.com")
    ]
    assert "verified_domains" in (held.prepared.verdict.reason or "")
    assert channel.users()["anna@example.com"]["emails"][0]["value"] == "anna@example.com"
    assert channel.member_names("team") == {"anna@example.com"}
    console = Console(record=True, width=200)
    print_plan(console, channel.plan())
    assert "held by the safety threshold: 1 operations" in console.export_text()
    with channel.store() as store:
        print_status(console, store)
    assert "update user anna@example.com" in console.export_text()

    released = channel.sync(allow_deletions=True)  # the admin accepts: the change goes
    assert released.exit_code == 0
    assert "anna@example.com" not in channel.users()  # and the tenant unlinked the account
    assert account not in {u["id"] for u in channel.emulator.users()}


def test_check_notes_new_users_outside_the_verified_domains(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    cli = Cli(ldap_tree, emulator, tmp_path)
    ldap_tree.add_user("anna")
    ldap_tree.add_user("gus", mail="gus@gmail.com")
    cli.settings["options"]["verified_domains"] = ["example.com"]
    checked = cli("check")
    assert checked.returncode == 0, checked.stderr
    assert (
        "note: 1 user with an email outside options.verified_domains becomes external "
        "Atlassian accounts: gus@gmail.com"
    ) in checked.stdout
    bad = cli.settings["options"]["verified_domains"] = ["not a domain"]
    assert bad and "options.verified_domains" in one_line_error(cli("check"))


def test_the_cli_holds_an_unverified_email_change_with_exit_3_until_allowed(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    cli = Cli(ldap_tree, emulator, tmp_path)
    cli.settings["mapping"] = {
        "userName": {"template": "{{ uid }}@example.com"},
        "emails.work": "mail",
        "displayName": "cn",
    }
    cli.settings["options"]["verified_domains"] = ["example.com"]
    anna = ldap_tree.add_user("anna")
    assert cli("sync").returncode == 0
    ldap_tree.modify(anna, mail="anna@gmail.com")

    held = cli("sync")
    assert held.returncode == 3, held.stdout + held.stderr
    assert "verified_domains" in held.stdout
    assert json.loads(cli("plan", "--json").stdout)["held"][0]["name"] == "anna@example.com"
    assert "update user anna@example.com" in cli("status").stdout
    [account] = emulator.users()
    assert account["emails"][0]["value"] == "anna@example.com"
    allowed = cli("sync", "--allow-deletions")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    [account] = emulator.users()
    assert account["emails"][0]["value"] == "anna@gmail.com"


def test_two_new_entries_under_a_leavers_name_are_a_conflict_not_a_rehire(
    channel: Channel,
) -> None:
    tree = channel.tree
    tree.add_user("warm")
    tree.add_user("kim")
    assert channel.sync().exit_code == 0
    leave(channel, "kim")
    tree.add_user("kim")
    tree.add_user("kim2", mail="kim@example.com")
    report = channel.sync()
    assert report.prepared.view.rehires == {}
    assert {c.name for c in report.prepared.plan.conflicts} == {"kim@example.com"}
