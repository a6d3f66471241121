"""CLI paths no other test runs, as a user runs them: subprocesses, real slapd and SCIM servers."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from scimsync.emulator import RunningEmulator
from scimsync.emulator.app import EmulatorApp
from scimsync.sandbox.slapd import Slapd
from tests.fixtures.scim2 import Scim2Tenant
from tests.fixtures.slapd import Tree
from tests.test_cli import TOKEN_VAR, Cli, one_line_error

ROTATED = "rotated-after-three-creates"


@pytest.fixture
def cli(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Cli:
    return Cli(ldap_tree, emulator, tmp_path)


# --- exit codes end to end ------------------------------------------------------------------


def test_sync_exits_4_for_an_unreachable_target(cli: Cli, closed_port: int) -> None:
    cli.tree.add_user("una")
    closed = closed_port  # held refusing: nothing can start listening there meanwhile
    cli.settings["target"]["url"] = f"http://127.0.0.1:{closed}/scim/directory/x"
    cli.settings["target"]["max_retries"] = 0
    result = cli("sync")
    assert result.returncode == 4, result.stdout + result.stderr
    assert f"127.0.0.1:{closed}" in one_line_error(result)
    assert not (cli.work / "state.db").exists() or "create" not in cli("audit").stdout


class RotateKeyAfterCreates:
    """Inside the emulator: after `count` user creates are answered, the key is rotated.

    The 401s that follow come from the emulator's own bearer check, as they would from
    Atlassian once an admin rotates the directory API key during a cycle.
    """

    def __init__(self, emulator: RunningEmulator, count: int) -> None:
        assert isinstance(emulator.app, EmulatorApp) and emulator.app.misbehaviour is not None
        self.guard = emulator.app.misbehaviour
        self.inner: ASGIApp = self.guard.app
        self.left = count
        self.guard.app = self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.inner(scope, receive, send)
        if scope["method"] == "POST" and scope["path"].endswith("/Users"):
            self.left -= 1
            if self.left == 0:
                self.guard.token = ROTATED


@pytest.fixture
def own_emulator() -> Iterator[RunningEmulator]:
    """An emulator of this test's own, since the test changes its key."""
    with RunningEmulator() as server:
        yield server


def test_sync_exits_4_when_the_key_is_refused_mid_cycle_and_recovers_with_the_new_key(
    ldap_tree: Tree, own_emulator: RunningEmulator, tmp_path: Path
) -> None:
    cli = Cli(ldap_tree, own_emulator, tmp_path)
    cli.settings["target"]["max_concurrency"] = 1  # the creates one after the other
    people = ldap_tree.add_users(8, prefix="mid")
    RotateKeyAfterCreates(own_emulator, 3)
    refused = cli("sync")
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "must be rotated" in one_line_error(refused)
    assert ROTATED not in refused.stdout + refused.stderr
    assert len(own_emulator.users()) == 3
    cli.env[TOKEN_VAR] = ROTATED
    status = cli("status")
    assert "must be rotated" in status.stdout, status.stdout
    again = cli("sync")
    assert again.returncode == 0, again.stdout + again.stderr
    names = sorted(u["userName"] for u in own_emulator.users())
    assert names == sorted(f"{dn.split(',')[0][4:]}@example.com" for dn in people)


# --- audit --limit and plain reset ----------------------------------------------------------


def test_audit_limit_keeps_the_newest_entries(cli: Cli) -> None:
    for uid in ("al1", "al2"):
        cli.tree.add_user(uid)
    assert cli("sync").returncode == 0
    cli.tree.add_user("al3")
    assert cli("sync").returncode == 0

    def entries(*args: str) -> list[str]:
        shown = cli("audit", *args)
        assert shown.returncode == 0, shown.stderr
        return [line for line in shown.stdout.splitlines() if "@example.com" in line]

    assert len(entries()) == 3
    [newest] = entries("--limit", "1")
    assert "al3@example.com" in newest
    assert len(entries("--limit", "2")) == 2
    assert cli("audit", "--limit", "0").returncode == 2


def test_plain_reset_makes_the_next_cycle_a_full_reconciliation(cli: Cli) -> None:
    cli.tree.add_user("rex")
    assert cli("sync").returncode == 0
    cli.emulator.reset_stats()
    assert cli("sync").returncode == 0
    assert "GET Users" not in cli.emulator.stats()["by_resource"]  # incremental: no listing
    reset = cli("reset")
    assert reset.returncode == 0, reset.stderr
    assert "full reconciliation" in reset.stdout
    cli.emulator.reset_stats()
    assert cli("sync").returncode == 0
    assert cli.emulator.stats()["by_resource"].get("GET Users", 0) >= 1
    newest = [line for line in cli("status").stdout.splitlines() if line.startswith("cycle ")]
    assert newest[0].split()[2] == "full" and newest[1].split()[2] == "quiet", newest


# --- the whole engine against other targets and directories --------------------------------


def scim_users(tenant: Scim2Tenant) -> dict[str, dict[str, Any]]:
    with httpx2.Client(headers={"Authorization": f"Bearer {tenant.token}"}) as client:
        answer = client.get(f"{tenant.url}/Users", params={"count": 100})
        answer.raise_for_status()
        return {str(u["userName"]): u for u in answer.json().get("Resources", [])}


def scim_groups(tenant: Scim2Tenant) -> dict[str, dict[str, Any]]:
    with httpx2.Client(headers={"Authorization": f"Bearer {tenant.token}"}) as client:
        answer = client.get(f"{tenant.url}/Groups", params={"count": 100})
        answer.raise_for_status()
        return {str(g["displayName"]): g for g in answer.json().get("Resources", [])}


def test_target_type_scim_through_the_whole_engine(cli: Cli, scim2: Scim2Tenant) -> None:
    ann, ben = cli.tree.add_user("ann"), cli.tree.add_user("ben")
    crew = cli.tree.add_group("crew", [ann, ben])
    cli.settings["target"] = {"type": "scim", "url": scim2.url, "token": scim2.token}
    first = cli("sync")
    assert first.returncode == 0, first.stdout + first.stderr
    users = scim_users(scim2)
    assert set(users) == {"ann@example.com", "ben@example.com"}
    members = {m["value"] for m in scim_groups(scim2)["crew"].get("members", [])}
    assert members == {users["ann@example.com"]["id"], users["ben@example.com"]["id"]}
    cli.tree.remove_members(crew, [ben])
    cli.tree.delete(ann)
    second = cli("sync")
    assert second.returncode == 0, second.stdout + second.stderr
    assert scim_users(scim2)["ann@example.com"]["active"] is False
    assert not scim_groups(scim2)["crew"].get("members")
    assert "plan: no changes" in cli("plan").stdout


def test_member_attribute_unique_member_reads_group_of_unique_names(cli: Cli) -> None:
    ada, bob = cli.tree.add_user("ada"), cli.tree.add_user("bob")
    cli.tree.add_group("uniq", [ada, bob], object_class="groupOfUniqueNames")
    cli.settings["source"]["member_attribute"] = "uniqueMember"
    cli.settings["source"]["groups"] = {"filter": "(objectClass=groupOfUniqueNames)"}
    result = cli("sync")
    assert result.returncode == 0, result.stdout + result.stderr
    by_id = {u["id"]: u["userName"] for u in cli.emulator.users()}
    [group] = cli.emulator.groups()
    assert group["displayName"] == "uniq"
    assert {by_id[m["value"]] for m in group["members"]} == {"ada@example.com", "bob@example.com"}


def test_directory_generic_syncs_and_sees_changes_by_timestamp(cli: Cli) -> None:
    gil = cli.tree.add_user("gil")
    cli.settings["source"]["directory"] = "generic"
    check = cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "modifyTimestamp" in check.stdout
    assert cli("sync").returncode == 0
    cli.tree.modify(gil, cn="Gil Renamed")
    planned = json.loads(cli("plan", "--json").stdout)
    assert planned["summary"] == {"update": 1}, planned
    assert cli("sync").returncode == 0
    assert cli.emulator.users()[0]["displayName"] == "Gil Renamed"


class SlapdWithLdapi(Slapd):
    """The sandbox slapd, also listening on a Unix socket of its own (ldapi://)."""

    def __init__(self, socket_dir: Path) -> None:
        self.ldapi_url = "ldapi://" + quote(str(socket_dir / "slapd.sock"), safe="")
        super().__init__(extra_urls=[self.ldapi_url])


@pytest.fixture(scope="module")
def ldapi_slapd() -> Iterator[SlapdWithLdapi]:
    # A short directory of its own: a socket's path is at most 107 bytes.
    socket_dir = Path(tempfile.mkdtemp(prefix="scimsync-ldapi-"))
    try:
        with SlapdWithLdapi(socket_dir) as server:
            yield server
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_a_source_over_ldapi_syncs_without_a_clear_text_warning(
    ldapi_slapd: SlapdWithLdapi, emulator: RunningEmulator, tmp_path: Path
) -> None:
    tree = Tree(ldapi_slapd, "ldapi")
    cli = Cli(tree, emulator, tmp_path)
    tree.add_group("sock", [tree.add_user("sid")])
    cli.settings["source"]["url"] = ldapi_slapd.ldapi_url
    check = cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "warning" not in check.stderr, check.stderr
    synced = cli("sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert [u["userName"] for u in emulator.users()] == ["sid@example.com"]
    assert [g["displayName"] for g in emulator.groups()] == ["sock"]
    assert ldapi_slapd.url not in cli.path.read_text()  # the socket was the only way in


def test_sync_with_a_missing_target_ca_file_is_one_line_exit_2(cli: Cli) -> None:
    cli.tree.add_user("cai")
    cli.settings["target"]["ca_file"] = str(cli.work / "no-such-ca.pem")
    result = cli("sync")
    assert result.returncode == 2, result.stdout + result.stderr
    assert one_line_error(result).endswith(f"target.ca_file: cannot read {cli.work}/no-such-ca.pem")
    assert cli.emulator.users() == []
