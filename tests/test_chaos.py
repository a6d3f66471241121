"""kill -9 of `scimsync run` at random points while the directory keeps changing: the
cycles after it converge, and the target then holds exactly what the directory says."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from scimsync.emulator import RunningEmulator
from tests.fixtures.slapd import Tree
from tests.harness import source_settings

pytestmark = pytest.mark.slow

KILLS = 10
GROUPS = ("jira-a", "jira-b", "jira-c")


class World:
    """The test's own account of the directory, changed at random, one entry at a time."""

    def __init__(self, tree: Tree, rng: random.Random) -> None:
        self.tree = tree
        self.rng = rng
        self.next = 0
        self.history: list[str] = []
        self.users: set[str] = set()  # uids that exist
        self.scope: set[str] = set()
        self.members: dict[str, set[str]] = {g: set() for g in GROUPS}
        for _ in range(12):
            self.users.add(self._new_uid())
        for uid in self.users:
            tree.add_user(uid)
        self.scope = set(self.users)
        self.scope_dn = tree.add_group("atlassian-users", [tree.user_dn(u) for u in self.scope])
        for group in GROUPS:
            self.members[group] = {u for u in self.users if rng.random() < 0.5}
            tree.add_group(group, [tree.user_dn(u) for u in self.members[group]])

    def _new_uid(self) -> str:
        self.next += 1
        return f"c{self.next:03d}"

    def change(self) -> None:
        tree, rng = self.tree, self.rng
        what = rng.choice(["add", "leave", "enter", "join", "part", "edit", "delete"])
        self.history.append(what)
        if what == "add" or not self.users:
            uid = self._new_uid()
            tree.add_user(uid)
            self.users.add(uid)
            tree.add_members(self.scope_dn, [tree.user_dn(uid)])
            self.scope.add(uid)
        elif what == "leave" and len(self.scope) > 1:
            uid = rng.choice(sorted(self.scope))
            tree.remove_members(self.scope_dn, [tree.user_dn(uid)])
            self.scope.discard(uid)
        elif what == "enter" and self.users - self.scope:
            uid = rng.choice(sorted(self.users - self.scope))
            tree.add_members(self.scope_dn, [tree.user_dn(uid)])
            self.scope.add(uid)
        elif what == "join":
            group = rng.choice(GROUPS)
            candidates = sorted(self.users - self.members[group])
            if candidates:
                uid = rng.choice(candidates)
                tree.add_members(tree.group_dn(group), [tree.user_dn(uid)])
                self.members[group].add(uid)
        elif what == "part":
            group = rng.choice(GROUPS)
            if len(self.members[group]) > 1:  # groupOfNames needs a member
                uid = rng.choice(sorted(self.members[group]))
                tree.remove_members(tree.group_dn(group), [tree.user_dn(uid)])
                self.members[group].discard(uid)
        elif what == "edit":
            uid = rng.choice(sorted(self.users))
            tree.modify(tree.user_dn(uid), title=f"t{rng.randrange(1000)}")
        elif what == "delete" and len(self.scope) > 2:
            uid = rng.choice(sorted(self.scope))
            for held in self.members.values():
                if uid in held and len(held) == 1:
                    return  # refint would leave the group without a member
            tree.delete(tree.user_dn(uid))  # memberof-refint drops it from its groups
            self.users.discard(uid)
            self.scope.discard(uid)
            for held in self.members.values():
                held.discard(uid)


def test_kill_9_of_run_at_random_points_then_the_target_converges(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("SCIMSYNC_CHAOS_SEED", "20261201")))
    world = World(ldap_tree, rng)
    config = tmp_path / "scimsync.yaml"
    settings = {
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "interval": 0.2,
        "source": {
            **source_settings(ldap_tree),
            "users": {"group_dn": world.scope_dn},
            "groups": {"filter": "(&(objectClass=groupOfNames)(cn=jira-*))"},
        },
        "target": {"url": emulator.url, "token": emulator.token},
        "options": {"max_deletions": "100%"},
    }

    def scimsync(*args: str) -> subprocess.Popen[bytes]:
        settings["metrics_listen"] = "127.0.0.1:0"  # run binds a free port itself
        config.write_text(yaml.safe_dump(settings))
        config.chmod(0o600)
        return subprocess.Popen(
            [sys.executable, "-m", "scimsync", "--config", str(config), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    landed = 0
    for _ in range(KILLS):
        before = emulator.stats()["total"]
        daemon = scimsync("run")
        for _ in range(rng.randrange(1, 4)):
            world.change()
        # Kill once the daemon is writing: after a random number of requests.
        wanted = before + rng.randrange(1, 6)
        deadline = time.monotonic() + 60
        while emulator.stats()["total"] < wanted and time.monotonic() < deadline:
            if daemon.poll() is not None:
                break
            time.sleep(0.01)  # polling the emulator's counter, not waiting for a time
        landed += emulator.stats()["total"] >= wanted
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=30)
    assert landed >= KILLS // 2  # most kills landed while the daemon was at work

    # The cycles after the kills, incremental ones, converge on their own.
    for _ in range(5):
        done = scimsync("sync")
        assert done.wait(timeout=120) in (0, 1)
    by_id = {str(u["id"]): u for u in emulator.users()}
    users = {str(u["userName"]): u for u in by_id.values()}
    expected_active = {f"{uid}@example.com" for uid in world.scope}
    assert {n for n, u in users.items() if u["active"]} == expected_active, world.history
    assert set(users) >= expected_active
    groups = {str(g["displayName"]): g for g in emulator.groups()}
    for group, held in world.members.items():
        members = {str(by_id[str(m["value"])]["userName"]) for m in groups[group]["members"]}
        assert members == {f"{uid}@example.com" for uid in held & world.scope}, group
    # ...and a full reconciliation finds nothing left to do.
    assert scimsync("reset").wait(timeout=60) == 0
    emulator.reset_stats()
    assert scimsync("sync").wait(timeout=120) == 0
    writes = emulator.stats()["by_method"]
    assert sum(writes.get(m, 0) for m in ("POST", "PATCH", "PUT", "DELETE")) == 0
