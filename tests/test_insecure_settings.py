"""Settings that expose a secret are warned about, and URLs in messages never show credentials."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scimsync.config import redact_url
from scimsync.emulator import PREFIX, RunningEmulator
from tests.fixtures.slapd import Tree
from tests.harness import eventually
from tests.test_cli import Cli, one_line_error
from tests.test_daemon import Scimsync

SECRET = "s3cret-in-the-url"
# TEST-NET-2 (RFC 5737): not loopback, and nothing answers there.
ELSEWHERE = "198.51.100.7"

SOURCE_UNVERIFIED = "source.verify_tls is false: the LDAP server's certificate is not checked"
TARGET_UNVERIFIED = "target.verify_tls is false: the target's certificate is not checked"


@pytest.fixture
def cli(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Cli:
    return Cli(ldap_tree, emulator, tmp_path)


@pytest.fixture
def daemon(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Iterator[Scimsync]:
    runner = Scimsync(ldap_tree, emulator, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("scimsync: warning: ")]


def count(lines: list[str], text: str) -> int:
    return sum(text in line for line in lines)


# --- the warnings -----------------------------------------------------------------------------


def test_check_warns_once_for_each_unverified_tls_and_still_passes(cli: Cli) -> None:
    cli.tree.add_user("ann")
    cli.settings["source"]["verify_tls"] = False
    cli.settings["target"]["verify_tls"] = False
    result = cli("check")
    assert result.returncode == 0, result.stderr
    lines = warnings_in(result.stderr)
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"scimsync: warning: {cli.path}: {SOURCE_UNVERIFIED}")
    assert lines[1].startswith(f"scimsync: warning: {cli.path}: {TARGET_UNVERIFIED}")


def test_check_warns_of_a_bind_password_and_an_api_key_sent_in_clear_to_another_host(
    cli: Cli,
) -> None:
    cli.settings["source"].update(
        url=f"ldap://{ELSEWHERE}:389", connect_timeout=1, timeout=1, start_tls=False
    )
    cli.settings["target"]["url"] = f"http://{ELSEWHERE}:8080{PREFIX}"
    result = cli("check")
    assert result.returncode == 4, result.stderr  # nothing answers there
    lines = warnings_in(result.stderr)
    assert count(lines, f"source.url ldap://{ELSEWHERE}:389 without source.start_tls sends") == 1
    assert count(lines, "the bind password in clear; use ldaps:// or start_tls: true") == 1
    assert count(lines, f"target.url http://{ELSEWHERE}:8080{PREFIX} sends the API key") == 1
    assert len(lines) == 2, result.stderr


def test_start_tls_and_loopback_hosts_draw_no_clear_text_warning(cli: Cli) -> None:
    """The test servers listen on 127.0.0.1 over ldap:// and http://: never a warning."""
    cli.tree.add_user("ann")
    result = cli("check")
    assert result.returncode == 0, result.stderr
    assert warnings_in(result.stderr) == []
    cli.settings["source"].update(url=f"ldap://{ELSEWHERE}:389", start_tls=True, timeout=1)
    cli.settings["source"]["connect_timeout"] = 1
    assert warnings_in(cli("check").stderr) == []


def test_sync_prints_each_warning_once(cli: Cli) -> None:
    cli.tree.add_user("ann")
    cli.settings["source"]["verify_tls"] = False
    cli.settings["target"]["verify_tls"] = False
    result = cli("sync")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = warnings_in(result.stderr)
    assert (count(lines, SOURCE_UNVERIFIED), count(lines, TARGET_UNVERIFIED)) == (1, 1)
    assert len(lines) == 2, result.stderr


def test_run_prints_each_warning_once_not_every_cycle(daemon: Scimsync) -> None:
    daemon.settings["source"]["verify_tls"] = False
    daemon.settings["target"]["verify_tls"] = False
    process = daemon.start("run")
    eventually(lambda: process.metric('scimsync_cycles_total{exit_code="0"}') >= 3, "three cycles")
    assert process.stop() == 0
    lines = warnings_in(process.stderr)
    assert (count(lines, SOURCE_UNVERIFIED), count(lines, TARGET_UNVERIFIED)) == (1, 1)
    assert len(lines) == 2, process.stderr


# --- URLs with credentials in messages -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ldap://reader:pw@host:389", "ldap://reader:***@host:389"),
        ("ldap://cn=reader,dc=example:pw@host/", "ldap://cn=reader,dc=example:***@host/"),
        ("https://TOKEN@api.example.com/scim", "https://***@api.example.com/scim"),
        ("https://:pw@host", "https://***@host"),
        ("https://u:p@ss@host/x?y=1", "https://u:***@host/x?y=1"),  # userinfo ends at the last @
        ("https://host/scim/a@b", "https://host/scim/a@b"),  # an @ in the path is no userinfo
        ("sqlite:////var/lib/a@b.db", "sqlite:////var/lib/a@b.db"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_masks_only_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("section", "key", "value", "shown"),
    [
        ("source", "url", f"http://reader:{SECRET}@example.com", "source.url: expected an ldap"),
        ("target", "url", f"ftp://{SECRET}@example.com/scim", "target.url: expected an http"),
        (None, "state", f"mysql://scimsync:{SECRET}@db/scimsync", "state: expected a sqlite"),
    ],
)
def test_a_url_refused_by_the_config_is_quoted_without_its_credentials(
    cli: Cli, section: str | None, key: str, value: str, shown: str
) -> None:
    (cli.settings[section] if section else cli.settings)[key] = value
    result = cli("check")
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert shown in line
    assert "***@" in line
    assert SECRET not in result.stdout + result.stderr


def test_a_directory_error_quotes_source_url_without_its_credentials(
    cli: Cli, closed_port: int
) -> None:
    cli.settings["source"]["url"] = f"ldap://reader:{SECRET}@127.0.0.1:{closed_port}"
    result = cli("check")
    assert result.returncode == 4, result.stderr
    line = one_line_error(result)
    assert "ldap://reader:***@127.0.0.1:" in line
    assert SECRET not in result.stdout + result.stderr


def test_a_target_error_quotes_target_url_without_its_credentials(
    cli: Cli, closed_port: int
) -> None:
    cli.tree.add_user("ann")
    cli.settings["target"]["url"] = f"http://scim:{SECRET}@127.0.0.1:{closed_port}{PREFIX}"
    result = cli("check")
    assert result.returncode == 4, result.stderr
    line = one_line_error(result)
    assert "target http://scim:***@127.0.0.1:" in line and "unreachable" in line
    assert SECRET not in result.stdout + result.stderr


def test_a_store_error_quotes_the_state_url_without_its_password(
    cli: Cli, closed_port: int
) -> None:
    cli.settings["state"] = f"postgresql+psycopg://scimsync:{SECRET}@127.0.0.1:{closed_port}/x"
    result = cli("sync")
    assert result.returncode == 5, result.stderr
    line = one_line_error(result)
    assert line.startswith("scimsync: state: ") and "scimsync:***@127.0.0.1:" in line
    assert SECRET not in result.stdout + result.stderr


def test_a_refused_key_is_audited_under_target_url_without_its_credentials(cli: Cli) -> None:
    cli.tree.add_user("ann")
    cli.settings["target"]["url"] = cli.emulator.url.replace("://", f"://scim:{SECRET}@")
    cli.settings["target"]["token"] = "not-the-key"
    result = cli("sync")
    assert result.returncode == 4, result.stdout + result.stderr
    audit = cli("audit")
    assert audit.returncode == 0, audit.stderr
    assert "key_refused" in audit.stdout and "scim:***@127.0.0.1" in audit.stdout
    assert SECRET not in result.stdout + result.stderr + audit.stdout
