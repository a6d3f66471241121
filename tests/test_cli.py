"""The command line as a user runs it: real processes, real slapd, the emulator over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from scimsync.emulator import PREFIX, RunningEmulator
from scimsync.model import Kind
from scimsync.state import Store
from tests.fixtures.ports import emulator_url
from tests.fixtures.slapd import Tree
from tests.harness import source_settings
from tests.test_state import Clock

BIND_PASSWORD_VAR = "TEST_LDAP_PASSWORD"
TOKEN_VAR = "TEST_SCIM_TOKEN"


class Cli:
    def __init__(self, tree: Tree, emulator: RunningEmulator, work: Path) -> None:
        self.tree = tree
        self.emulator = emulator
        self.work = work
        self.path = work / "scimsync.yaml"
        self.env = dict(
            os.environ, **{BIND_PASSWORD_VAR: tree.server.password, TOKEN_VAR: emulator.token}
        )
        self.settings: dict[str, Any] = {
            "state": f"sqlite:///{work / 'state.db'}",
            "source": source_settings(tree, password="${" + BIND_PASSWORD_VAR + "}"),
            "target": {"url": emulator.url, "token": "${" + TOKEN_VAR + "}"},
            "options": {"max_deletions": 2},
        }

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.path.write_text(yaml.safe_dump(self.settings))
        self.path.chmod(0o600)
        return subprocess.run(
            [sys.executable, "-m", "scimsync", "--config", str(self.path), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def cli(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Cli:
    return Cli(ldap_tree, emulator, tmp_path)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_check_reports_scope_and_target(cli: Cli) -> None:
    people = [cli.tree.add_user(u) for u in ("ann", "ben")]
    cli.tree.add_user("cas", employeeType="disabled")
    cli.tree.add_group("crew", people)
    cli.settings["source"]["account_status"] = {
        "attribute": "employeeType",
        "disabled_value": "disabled",
    }
    result = cli("check")
    assert result.returncode == 0, result.stderr
    assert "3 users (1 disabled), 1 groups, 2 memberships" in result.stdout
    assert "the API key works" in result.stdout


@pytest.mark.parametrize(
    ("change", "code", "expected"),
    [
        ({"source": {"url": "http://nope"}}, 2, "source.url: expected an ldap://"),
        ({"options": {"shred": True}}, 2, "options.shred: unknown key"),
        ({"source": {"url": "ldap://127.0.0.1:{closed_port}"}}, 4, "127.0.0.1:{closed_port}"),
        ({"target": {"token": "wrong"}}, 4, "must be rotated"),
        ({"source": {"bind_password": "wrong-password"}}, 4, "bind"),
    ],
)
def test_check_errors_are_one_line_with_exit_code(
    cli: Cli, change: dict[str, dict[str, Any]], code: int, expected: str, closed_port: int
) -> None:
    for section, values in change.items():
        cli.settings[section].update(
            {k: v.replace("{closed_port}", str(closed_port)) for k, v in values.items()}
            if section == "source"
            else values
        )
    result = cli("check")
    assert result.returncode == code, result.stdout + result.stderr
    line = one_line_error(result)
    assert expected.replace("{closed_port}", str(closed_port)) in line
    assert "wrong-password" not in line and cli.emulator.token not in line


def test_usage_error_exits_2(cli: Cli) -> None:
    assert cli("sync", "--no-such-flag").returncode == 2
    assert cli("audit", "--since", "yesterday-ish").returncode == 2


def test_plan_json_then_sync_then_nothing_to_do(cli: Cli) -> None:
    cli.tree.add_group("crew", [cli.tree.add_user("dot")])
    planned = cli("plan", "--json")
    assert planned.returncode == 0, planned.stderr
    document = json.loads(planned.stdout)
    assert document["summary"] == {"create": 2, "add_members": 1}
    assert {op["action"] for op in document["operations"]} == {"create", "add_members"}
    assert not (cli.work / "state.db").exists()  # plan writes nothing anywhere
    assert cli("sync").returncode == 0
    assert "plan: no changes" in cli("plan").stdout


def test_sync_exits_1_when_a_record_fails_and_the_others_proceed(cli: Cli) -> None:
    cli.tree.add_user("good")
    cli.tree.add_user("nomail", mail=[])
    result = cli("sync")
    assert result.returncode == 1
    assert "nomail" in result.stdout
    assert [u["userName"] for u in cli.emulator.users()] == ["good@example.com"]


def test_safety_threshold_holds_deletions_until_allowed(cli: Cli) -> None:
    people = [cli.tree.add_user(f"p{i}") for i in range(5)]
    assert cli("sync").returncode == 0
    for dn in people[:3]:
        cli.tree.delete(dn)
    held = cli("sync")
    assert held.returncode == 3, held.stdout + held.stderr
    assert "max_deletions" in held.stdout
    assert all(u["active"] for u in cli.emulator.users())
    status = cli("status")
    assert "held by the safety threshold: 3 operations" in status.stdout
    assert json.loads(cli("plan", "--json").stdout)["held_reason"]
    allowed = cli("sync", "--allow-deletions")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert sum(1 for u in cli.emulator.users() if not u["active"]) == 3
    assert "held by the safety threshold" not in cli("status").stdout


def test_an_empty_directory_read_is_refused(cli: Cli) -> None:
    cli.tree.add_user("solo")
    assert cli("sync").returncode == 0
    cli.settings["source"]["users"] = {"filter": "(uid=nobody-matches-this)"}
    cli.settings["options"]["max_deletions"] = "100%"
    result = cli("sync")
    assert result.returncode == 3
    assert "directory returned no users while 1 are linked" in result.stdout
    assert cli.emulator.users()[0]["active"] is True


def test_audit_status_and_reset(cli: Cli) -> None:
    cli.tree.add_user("eve")
    assert cli("sync").returncode == 0
    audit = cli("audit", "--since", "1h")
    assert audit.returncode == 0
    assert "create" in audit.stdout and "eve@example.com" in audit.stdout
    status = cli("status")
    assert "linked: 1 users, 0 groups" in status.stdout
    reset = cli("reset", "--failed")
    assert reset.returncode == 0
    assert "full reconciliation" in reset.stdout


def test_status_shows_an_interrupted_cycles_open_intents_until_the_next_cycle(cli: Cli) -> None:
    """The intents are written as the executor writes a chunk's, and the process dies."""
    when = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with Store.open(cli.settings["state"], "default", clock=lambda: when) as store:
        cycle = store.begin_run("full")
        store.intend_many(
            cycle,
            [("create", Kind.USER, "u1", "ann@example.com"), ("delete", Kind.GROUP, "g1", "Old")],
        )
    status = cli("status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    at = lines.index(
        f"interrupted cycle {cycle[:12]}: 2 operations without a recorded outcome "
        "(the next cycle, a full reconciliation, settles them)"
    )
    assert lines[at + 1 : at + 3] == [
        "  create user ann@example.com (since 2026-03-01T12:00:00Z)",
        "  delete group Old (since 2026-03-01T12:00:00Z)",
    ]

    cli.tree.add_user("ann")
    assert cli("sync").returncode == 0
    assert "interrupted cycle" not in cli("status").stdout


def test_audit_prune_deletes_what_is_older_than_the_retention_and_keeps_the_rest(
    cli: Cli,
) -> None:
    now = datetime.now(UTC)
    for days, name in ((401, "old"), (399, "kept"), (0, "new")):
        with Store.open(
            cli.settings["state"], "default", clock=Clock(now - timedelta(days=days))
        ) as store:
            cycle = store.begin_run("full")
            store.audit(cycle, "create", Kind.USER, name, None, True)
            store.finish_run(cycle, "ok", {"create": 1})
    before = cli("audit", "--since", "400d").stdout

    pruned = cli("audit", "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith("pruned 1 audit entry and 1 run older than "), pruned.stdout
    assert cli("audit", "--since", "400d").stdout == before
    listed = cli("audit").stdout
    assert " kept -> " in listed and " new -> " in listed and " old -> " not in listed
    runs = [line for line in cli("status").stdout.splitlines() if line.startswith("cycle ")]
    assert len(runs) == 2

    refused = cli("audit", "--prune", "--since", "30d")
    assert refused.returncode == 2
    expected = "scimsync: --prune: give it without --since, --user and --group"
    assert one_line_error(refused) == expected


def test_json_logs(cli: Cli) -> None:
    cli.tree.add_user("jay")
    result = cli("--log-format", "json", "sync")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(event.get("event") == "cycle finished" for event in events)


def test_secrets_never_reach_output_plans_audit_or_the_store(cli: Cli) -> None:
    secrets = (cli.tree.server.password, cli.emulator.token)
    cli.tree.add_group("crew", [cli.tree.add_user("kit"), cli.tree.add_user("nomail", mail=[])])
    outputs = [
        cli("--log-format", "json", "check"),
        cli("plan", "--json"),
        cli("--log-format", "json", "sync"),
        cli("status"),
        cli("audit"),
    ]
    cli.settings["target"]["token"] = "wrong-" + cli.emulator.token
    outputs.append(cli("sync"))
    cli.settings["target"]["token"] = "${" + TOKEN_VAR + "}"
    cli.settings["source"]["bind_password"] = "not-" + cli.tree.server.password
    outputs.append(cli("sync"))
    text = "\n".join(r.stdout + r.stderr for r in outputs)
    store_bytes = b"".join(p.read_bytes() for p in cli.work.glob("state.db*"))
    assert "kit@example.com" in text  # the output is there to search
    for secret in secrets:
        assert secret not in text
        assert secret.encode() not in store_bytes


def test_emulate_atlassian_serves_until_terminated() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "scimsync", "emulate", "atlassian", "--port", "0",
         "--token", "cli-token", "--rename", "immutable", "--seed", "7"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        target_url = emulator_url(process)
        url = f"{target_url}/ServiceProviderConfig"
        answer = httpx2.get(url, headers={"Authorization": "Bearer cli-token"})
        assert answer.status_code == 200
        assert answer.json()["patch"]["supported"] is True
        assert httpx2.get(url).status_code == 401
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=20)
    assert target_url.startswith("http://127.0.0.1:") and target_url.endswith(PREFIX)
    assert "cli-token" not in target_url + out  # all it printed
