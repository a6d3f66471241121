"""A `sync` killed with SIGKILL at any moment leaves a state the next `sync` converges from."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from scimsync.emulator import RunningEmulator
from tests.fixtures.slapd import Tree
from tests.harness import source_settings

USERS = 2000
KILLS = 8


def write_config(tree: Tree, emulator: RunningEmulator, work: Path) -> Path:
    path = work / "scimsync.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state": f"sqlite:///{work / 'state.db'}",
                "source": source_settings(tree),
                "target": {"url": emulator.url, "token": emulator.token, "max_concurrency": 8},
                "options": {"max_deletions": "100%"},
                "mapping": {"title": "title"},
            }
        )
    )
    path.chmod(0o600)
    return path


def writes(emulator: RunningEmulator) -> int:
    by_method: dict[str, int] = emulator.stats()["by_method"]
    return sum(n for m, n in by_method.items() if m in ("POST", "PUT", "PATCH", "DELETE"))


def sync_process(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "scimsync", "--config", str(config), "sync"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_after_writes(process: subprocess.Popen[bytes], emulator: RunningEmulator, n: int) -> bool:
    """SIGKILL once the emulator has seen n more writes; False if the sync ended first."""
    goal = writes(emulator) + n
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if writes(emulator) >= goal:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.002)  # polling a condition with a deadline, not standing in for one
    process.wait(timeout=120)
    return False


@pytest.mark.slow
def test_sigkill_at_random_points_then_convergence(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    rng = random.Random(20261127)
    dns = ldap_tree.add_users(USERS)
    for g in range(10):
        ldap_tree.add_group(f"team-{g}", dns[g * 150 : g * 150 + 300])
    config = write_config(ldap_tree, emulator, tmp_path)

    kills = 0
    for _ in range(KILLS):
        if kill_after_writes(sync_process(config), emulator, rng.randint(1, 500)):
            kills += 1
        # A directory change between crashes: the next run must pick it up too.
        if kills == 3:
            ldap_tree.modify(dns[0], title="changed between crashes")
    assert kills >= KILLS // 2, "the sync finished before most kill points"

    finished = subprocess.run(
        [sys.executable, "-m", "scimsync", "--config", str(config), "sync"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout + finished.stderr

    users = emulator.users()
    names = Counter(str(u["userName"]) for u in users)
    assert len(names) == USERS and set(names.values()) == {1}, "lost or duplicated users"
    assert all(u["active"] for u in users)
    by_id = {str(u["id"]): str(u["userName"]) for u in users}
    groups = {str(g["displayName"]): g for g in emulator.groups()}
    assert sorted(groups) == sorted(f"team-{g}" for g in range(10)), "lost or duplicated groups"
    for g in range(10):
        members = {by_id[str(m["value"])] for m in groups[f"team-{g}"].get("members") or []}
        expected = {f"u{i:06d}@example.com" for i in range(g * 150, min(g * 150 + 300, USERS))}
        assert members == expected, f"team-{g} memberships"
    assert next(u for u in users if u["userName"] == "u000000@example.com")["title"] == (
        "changed between crashes"
    )

    emulator.reset_stats()
    again = subprocess.run(
        [sys.executable, "-m", "scimsync", "--config", str(config), "sync"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert again.returncode == 0
    assert writes(emulator) == 0, "a converged state still wrote"
