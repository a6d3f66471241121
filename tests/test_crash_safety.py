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


def kill_at_writes(process: subprocess.Popen[bytes], emulator: RunningEmulator, goal: int) -> bool:
    """SIGKILL once the emulator has seen `goal` writes in all; False if the sync ended first."""
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

    # Kill points in the writes counted from the start, below what the whole sync needs
    # (2,000 creates, 10 group creates, 30 member PATCHes): each kill lands, the last ones
    # among the group creates and member additions.
    points = [*sorted(rng.sample(range(1, USERS), KILLS - 2)), USERS + 5, USERS + 20]
    kills = 0
    for point in points:
        if kill_at_writes(sync_process(config), emulator, point):
            kills += 1
        # A directory change between crashes: the next run must pick it up too.
        if kills == 3:
            ldap_tree.modify(dns[0], title="changed between crashes")
    assert kills == KILLS, "the sync finished before a kill point"

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


def answered_all(emulator: RunningEmulator) -> bool:
    stats = emulator.stats()
    answered: int = sum(stats["by_status"].values()) + stats["dropped"]
    return answered >= int(stats["total"])


def test_a_create_landed_unrecorded_whose_entry_is_then_deleted_is_not_left_active(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The kill comes after the target made the accounts and before the store linked them;
    the entries are deleted before the next sync, so adoption by name cannot find them."""
    dns = ldap_tree.add_users(200)
    config = write_config(ldap_tree, emulator, tmp_path)
    process = sync_process(config)
    deadline = time.monotonic() + 60
    while emulator.stats()["by_resource"].get("POST Users", 0) < 10:
        assert process.poll() is None and time.monotonic() < deadline, "no create was sent"
        time.sleep(0.002)  # polling the emulator's counter, with a deadline
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while not answered_all(emulator):  # the requests in flight at the kill end server-side
        assert time.monotonic() < deadline, "the emulator never answered every request"
        time.sleep(0.01)  # polling the emulator's counter, with a deadline
    landed = {str(u["userName"]) for u in emulator.users()}
    # Fewer than the first chunk (16 x max_concurrency creates): none of them is linked.
    assert 0 < len(landed) < 128, "the kill did not land among the first chunk's creates"
    for dn in dns:
        if f"{dn.split(',')[0].removeprefix('uid=')}@example.com" in landed:
            ldap_tree.delete(dn)

    finished = subprocess.run(
        [sys.executable, "-m", "scimsync", "--config", str(config), "sync"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout + finished.stderr
    users = emulator.users()
    names = Counter(str(u["userName"]) for u in users)
    assert len(names) == 200 and set(names.values()) == {1}, "lost or duplicated users"
    active = {str(u["userName"]) for u in users if u["active"]}
    assert active == set(names) - landed, "an account made for a deleted entry stayed active"
