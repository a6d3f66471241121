"""`plan --user NAME` and `sync --user NAME` for a name that is in scope, out of it, or
unknown: each says which and why, instead of "no changes"."""

from __future__ import annotations

from pathlib import Path

import pytest

from scimsync.emulator import RunningEmulator
from tests.fixtures.slapd import Tree
from tests.test_cli import Cli


@pytest.fixture
def cli(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Cli:
    return Cli(ldap_tree, emulator, tmp_path)


def test_a_user_in_scope_is_provisioned_alone(cli: Cli) -> None:
    cli.tree.add_user("ann")
    cli.tree.add_user("ben")
    result = cli("sync", "--user", "ann@example.com")
    assert result.returncode == 0, result.stderr
    assert set(u["userName"] for u in cli.emulator.users()) == {"ann@example.com"}


def test_a_user_outside_the_scope_group_is_named_with_the_reason(cli: Cli) -> None:
    ann = cli.tree.add_user("ann")
    cli.tree.add_user("ben")
    scope = cli.tree.add_group("atlassian-users", [ann])
    cli.settings["source"]["users"] = {"group_dn": scope}
    for command in ("plan", "sync"):
        result = cli(command, "--user", "ben@example.com")
        assert result.returncode == 0, result.stderr
        assert (
            f"--user: {cli.tree.user_dn('ben')} is out of scope: not a member of "
            f"source.users.group_dn {scope} (users.nested is off)"
        ) in result.stdout
    assert cli.emulator.users() == []


def test_a_user_the_filter_leaves_out_is_named_with_the_filter(cli: Cli) -> None:
    cli.tree.add_user("ann", title="contractor")
    cli.settings["source"]["users"] = {"filter": "(&(objectClass=inetOrgPerson)(title=staff))"}
    result = cli("plan", "--user", "ann@example.com")
    assert result.returncode == 0, result.stderr
    assert "does not match source.users.filter (&(objectClass=inetOrgPerson)(title=staff))" in (
        result.stdout
    )


def test_an_unknown_name_exits_2_saying_nothing_has_it(cli: Cli) -> None:
    cli.tree.add_user("ann")
    for command in ("plan", "sync"):
        result = cli(command, "--user", "nobody@example.com")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "--user: no entry under source.base_dn has mail=nobody@example.com" in (
            result.stdout
        )
