"""Configuration mistakes as a user meets them: `scimsync check` exits 2 with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scimsync.emulator import RunningEmulator
from tests.fixtures.slapd import Tree
from tests.test_cli import Cli, one_line_error

CONFIG = """\
state: sqlite:///{work}/state.db
source:
  url: ldap://127.0.0.1:1
  base_dn: dc=example,dc=com
  users:
    filter: (objectClass=inetOrgPerson)
target:
  url: http://127.0.0.1:1/scim
  token: ${{TOKEN}}
{extra}"""


def check(work: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`scimsync check` on a config written as text (so that it can say a key twice)."""
    path = work / "scimsync.yaml"
    path.write_text(text)
    path.chmod(0o600)
    return subprocess.run(
        [sys.executable, "-m", "scimsync", "--config", str(path), "check"],
        env=dict(os.environ, TOKEN="t0k"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "options:\n  max_deletions: 5\noptions:\n  groups: false\n",
            "options: key written twice, at line 10 and line 12",
        ),
        ("metrics_listen: nonsense\n", "metrics_listen: expected host:port"),
        ("options:\n  max_deletions: lots\n", "options.max_deletions: expected a count >= 0"),
        ("mapping:\n  title: {case: title, source: title}\n", "mapping.title.case: expected"),
        ("mapping:\n  title: {sorce: title}\n", "mapping.title.sorce: unknown key"),
        ("mapping:\n  title: ${TITLE\n", "mapping.title: '${' without a closing '}'"),
    ],
)
def test_check_refuses_a_bad_config_before_connecting(
    tmp_path: Path, extra: str, expected: str
) -> None:
    result = check(tmp_path, CONFIG.format(work=tmp_path, extra=extra))
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert line.startswith(f"scimsync: {tmp_path / 'scimsync.yaml'}: ")
    assert expected in line


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("users:\n    filter: (objectClass=inetOrgPerson)", "users: yes", "source.users: expected"),
        ("(objectClass=inetOrgPerson)", "(&(objectClass=person)", "source.users.filter: not an"),
        ("base_dn: dc=example,dc=com", "base_dn: example.com", "source.base_dn: expected a DN"),
    ],
)
def test_check_refuses_a_bad_source_before_connecting(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    result = check(tmp_path, CONFIG.format(work=tmp_path, extra="").replace(old, new))
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in one_line_error(result)


@pytest.fixture
def scimsync(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Cli:
    return Cli(ldap_tree, emulator, tmp_path)


def test_check_names_base_dn_when_the_server_has_no_such_entry(scimsync: Cli) -> None:
    missing = f"ou=nowhere,{scimsync.tree.base_dn}"
    scimsync.settings["source"]["base_dn"] = missing
    result = scimsync("check")
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert line.startswith(f"scimsync: {scimsync.path}: source.base_dn: {missing} does not exist")
    assert "(noSuchObject)" in line


def test_max_deletions_from_a_variable_passes_check(scimsync: Cli) -> None:
    scimsync.settings["options"]["max_deletions"] = "${MAX_DELETIONS}"
    scimsync.env["MAX_DELETIONS"] = "50"
    result = scimsync("check")
    assert result.returncode == 0, result.stderr
