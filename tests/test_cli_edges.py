"""The command line's rough edges (issue 10, item 14), run as a user runs it: subprocesses."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scimsync.emulator import RunningEmulator
from tests.fixtures.slapd import Tree
from tests.test_cli import Cli, one_line_error

SCIM = "urn:ietf:params:scim:schemas:core:2.0:"


@pytest.fixture
def cli(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Cli:
    return Cli(ldap_tree, emulator, tmp_path)


def scimsync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI exactly as given: no --config put in front."""
    return subprocess.run(
        [sys.executable, "-m", "scimsync", *args],
        env=env if env is not None else dict(os.environ, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- the state store ----------------------------------------------------------------------


def test_a_new_sqlite_store_is_readable_by_its_owner_only(cli: Cli) -> None:
    cli.tree.add_user("pia")
    previous = os.umask(0o022)  # the usual umask, under which the store came out 0644
    try:
        result = cli("sync")
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    files = sorted(cli.work.glob("state.db*"))
    assert cli.work / "state.db" in files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_an_existing_store_open_to_others_draws_a_warning(cli: Cli) -> None:
    assert cli("sync").returncode == 0
    (cli.work / "state.db").chmod(0o644)
    result = cli("status")
    assert result.returncode == 0, result.stderr
    assert "chmod 600" in result.stderr and str(cli.work / "state.db") in result.stderr
    assert stat.S_IMODE((cli.work / "state.db").stat().st_mode) == 0o644  # the admin's choice


@pytest.mark.parametrize("command", ["sync", "status", "audit", "reset"])
def test_a_corrupt_store_exits_5_with_one_line_naming_state(cli: Cli, command: str) -> None:
    store = cli.work / "state.db"
    store.write_bytes(b"this is not an SQLite database, whatever its name says\n" * 100)
    store.chmod(0o600)
    result = cli(command)
    assert result.returncode == 5, result.stdout + result.stderr
    line = one_line_error(result)
    assert line.startswith("scimsync: state: ") and str(store) in line


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """The file made read-only for this process: immutable for root, mode 0444 otherwise."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        return
    if subprocess.run(["chattr", "+i", str(path)], check=False).returncode != 0:
        pytest.skip("running as root where chattr +i is refused: cannot make a file read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_store_exits_5_with_one_line_naming_state(cli: Cli) -> None:
    cli.tree.add_user("ro")
    assert cli("sync").returncode == 0
    cli.tree.add_user("ro2")
    store = cli.work / "state.db"
    with unwritable(store):
        result = cli("sync")
    assert result.returncode == 5, result.stdout + result.stderr
    line = one_line_error(result)
    assert line.startswith("scimsync: state: ") and str(store) in line
    assert len(cli.emulator.users()) == 1  # nothing pushed that could not be recorded
