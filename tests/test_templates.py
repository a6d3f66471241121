"""Templates that used to fail silently, end to end: real slapd, the engine, the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog.testing

from scimsync.emulator import RunningEmulator
from tests.fixtures.slapd import Tree
from tests.harness import Channel
from tests.test_cli import Cli

REFUSED = (
    "mapping.title: the template was refused by the sandbox: "
    "access to attribute '__class__' of 'str' object is unsafe."
)


@pytest.fixture
def channel(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Channel:
    return Channel(ldap_tree, emulator, tmp_path)


def test_a_template_the_sandbox_refuses_is_reported_not_dropped(channel: Channel) -> None:
    channel.tree.add_user("ann", title="Engineer")
    channel.tree.add_user("ben", title="Designer")
    assert channel.sync().exit_code == 0
    channel.mapping["title"] = "{{ title.__class__ }}"
    channel.tree.add_user("cas", title="Writer")

    report = channel.sync()  # a changed mapping: a full reconciliation
    assert report.prepared.view.mode == "full"
    assert report.exit_code == 1
    causes = {f.name: f.cause for f in report.prepared.desired.failures}
    assert causes == {f"{u}@example.com": REFUSED for u in ("ann", "ben", "cas")}
    # Not an update clearing the title, not a create without one: nothing at all.
    assert report.prepared.plan.operations == ()
    users = channel.users()
    assert set(users) == {"ann@example.com", "ben@example.com"}
    assert users["ann@example.com"]["title"] == "Engineer"
    assert users["ann@example.com"]["active"] is True
    with channel.store() as store:
        assert {f.cause for f in store.failures().values()} == {REFUSED}


def test_a_cycle_logs_one_warning_per_rule_for_a_variable_entries_lack(
    channel: Channel,
) -> None:
    channel.mapping["displayName"] = "{{ cn }} {{ initials }}"
    channel.mapping["nickName"] = "{{ initials | default(uid) }}"  # optional, said so
    for uid in ("ann", "ben", "cas"):
        channel.tree.add_user(uid)
    with structlog.testing.capture_logs() as logs:
        report = channel.sync()
    assert report.exit_code == 0
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("mapping.displayName: 3 entries lack 'initials' (e.g. uid=")
    assert warnings[0].endswith("); rendered empty")
    users = channel.users()
    assert users["ann@example.com"]["displayName"] == "ann"
    assert users["ann@example.com"]["nickName"] == "ann"


# --- check ---------------------------------------------------------------------------------


@pytest.fixture
def cli(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Cli:
    return Cli(ldap_tree, emulator, tmp_path)


def test_check_reports_a_template_using_an_attribute_entries_lack(cli: Cli) -> None:
    cli.tree.add_user("ann")
    cli.tree.add_user("ben", initials="B")
    cli.settings["mapping"] = {"displayName": "{{ cn }} {{ initials }}"}
    result = cli("check")
    assert result.returncode == 0, result.stderr
    first = cli.tree.user_dn("ann")
    assert (
        f"  warning: mapping.displayName: 1 entry lacks 'initials' (e.g. {first}); rendered empty"
    ) in result.stdout.splitlines()
    assert "no user can be mapped" not in result.stdout
    assert "the API key works" in result.stdout


def test_check_says_so_when_the_templates_leave_no_user_mappable(cli: Cli) -> None:
    cli.tree.add_user("ann")
    cli.tree.add_user("ben")
    cli.settings["mapping"] = {"userName": "{{ surname }}", "title": "{{ cn.__class__ }}"}
    result = cli("check")
    assert result.returncode == 0, result.stderr  # a warning: the config itself is valid
    out = result.stdout
    assert "warning: mapping.userName: 2 entries lack 'surname' (e.g. uid=" in out
    assert "warning: mapping.title: the sandbox refused the template for 2 entries" in out
    assert "no user can be mapped: all 2 in scope are unmappable" in out
