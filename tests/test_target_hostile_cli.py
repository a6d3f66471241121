"""`scimsync sync` against a broken target: one line and exit 4, never a traceback (issue 12)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.hostile import TOKEN, RunningHostile
from tests.fixtures.slapd import Tree
from tests.harness import source_settings


def sync(
    tree: Tree, hostile: RunningHostile, work: Path, *args: str, **target: Any
) -> subprocess.CompletedProcess[str]:
    """`scimsync sync` (or the command in `args`) against the hostile server."""
    settings = {
        "state": f"sqlite:///{work / 'state.db'}",
        "source": source_settings(tree),
        "target": {"type": "scim", "url": hostile.url, "token": TOKEN, "max_retries": 0, **target},
    }
    path = work / "scimsync.yaml"
    path.write_text(yaml.safe_dump(settings))
    path.chmod(0o600)
    return subprocess.run(
        [sys.executable, "-m", "scimsync", "--config", str(path), *(args or ["sync"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("malformed", "expected"),
    [
        (
            "bad_gzip",
            "GET /Users: unusable answer from the target (200): the body could not be decoded",
        ),
        (
            "list",
            "GET /Users: unusable answer from the target: expected a ListResponse object",
        ),
    ],
)
def test_a_malformed_listing_ends_the_cycle_with_one_line(
    ldap_tree: Tree, hostile: RunningHostile, tmp_path: Path, malformed: Any, expected: str
) -> None:
    ldap_tree.add_user("ann")
    hostile.server.behaviour.malformed = malformed
    result = sync(ldap_tree, hostile, tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("scimsync: ") and expected in lines[-1], result.stderr
    assert TOKEN not in result.stderr


def test_a_listing_that_never_ends_ends_the_cycle_with_one_line(
    ldap_tree: Tree, hostile: RunningHostile, tmp_path: Path
) -> None:
    ldap_tree.add_user("ann")
    hostile.server.behaviour.listing = "endless"
    result = sync(ldap_tree, hostile, tmp_path, max_listing=500)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert (
        "GET /Users: unusable answer from the target: more than 500 Users listed" in result.stderr
    )
    assert len(hostile.server.find("GET /Users")) == 6  # stopped, not read to the end


def test_a_lost_create_never_links_and_later_disables_another_account(
    ldap_tree: Tree, hostile: RunningHostile, tmp_path: Path
) -> None:
    ceo = hostile.server.add_user("ceo@example.com", displayName="The CEO")
    ldap_tree.add_user("ann")
    assert sync(ldap_tree, hostile, tmp_path).returncode == 0
    hostile.server.behaviour.ignore_filter = True  # each lookup answers the CEO first
    hostile.server.behaviour.lose_posts = 1  # bob is created; the answer never arrives
    intern = ldap_tree.add_user("bob")
    # The lookup after the lost answer, and the one after the resend's 409, answer the CEO
    # and ann only: bob's record fails instead of being linked to the CEO's account.
    failed = sync(ldap_tree, hostile, tmp_path, max_retries=1)
    # A full reconciliation adopts bob: the listing finds him by his userName.
    assert sync(ldap_tree, hostile, tmp_path, "reset", "--failed").returncode == 0
    adopted = sync(ldap_tree, hostile, tmp_path)
    ldap_tree.delete(intern)
    disabled = sync(ldap_tree, hostile, tmp_path)  # bob leaves the directory: disabled
    assert hostile.server.users[ceo]["active"] is True
    assert hostile.server.users[ceo]["displayName"] == "The CEO"
    users = {u["userName"]: u for u in hostile.server.users.values()}
    assert users["bob@example.com"]["active"] is False
    assert [failed.returncode, adopted.returncode, disabled.returncode] == [1, 0, 0]
    assert "POST /Users: target answered 409 uniqueness" in failed.stderr
