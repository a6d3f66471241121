"""A SIGKILL landing in each phase of a `sync`: the next `sync` converges, deprovisions no one
it should not, and duplicates nothing.

Each test makes one directory change that yields many operations of one phase, starts
`scimsync sync`, kills it when that phase's first request reaches the emulator (its stats
count requests as they arrive), and then syncs again until the target holds what the
directory says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from scimsync.emulator import RunningEmulator
from tests.fixtures.slapd import Tree
from tests.harness import source_settings

pytestmark = pytest.mark.slow

CHANGED = 200  # users the change touches, of USERS
USERS = 250
GROUPS = 50
LATENCY_MS = 20  # widens each phase's window so that the kill lands inside it


def uid(i: int) -> str:
    return f"u{i:06d}"


def group_name(i: int) -> str:
    return f"team-{i:02d}"


class World:
    """The directory as the test changed it, and what the target must end up holding."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.active = {uid(i): True for i in range(USERS)}
        self.titles = {uid(i): "" for i in range(USERS)}
        # Each group keeps one member no change touches (groupOfNames needs a member).
        self.groups = {
            group_name(g): {uid(CHANGED + g), uid(4 * g), uid(4 * g + 1)} for g in range(GROUPS)
        }
        self.dns = {group_name(g): tree.group_dn(group_name(g)) for g in range(GROUPS)}

    def build(self) -> None:
        self.tree.add_users(USERS)
        for name, members in self.groups.items():
            self.tree.add_group(name, [self.tree.user_dn(u) for u in sorted(members)])


def update_titles(world: World) -> None:
    for i in range(CHANGED):
        world.tree.modify(world.tree.user_dn(uid(i)), title=f"title {i}")
        world.titles[uid(i)] = f"title {i}"


def disable_users(world: World) -> None:
    for i in range(CHANGED):
        world.tree.modify(world.tree.user_dn(uid(i)), employeeType="disabled")
        world.active[uid(i)] = False


def delete_users(world: World) -> None:
    for i in range(CHANGED):
        world.tree.delete(world.tree.user_dn(uid(i)))  # refint drops them from their groups
        del world.active[uid(i)]
        for members in world.groups.values():
            members.discard(uid(i))


def add_members(world: World) -> None:
    for g, name in enumerate(sorted(world.groups)):
        joining = {uid(4 * g + 2), uid(4 * g + 3)}
        world.tree.add_members(world.dns[name], [world.tree.user_dn(u) for u in sorted(joining)])
        world.groups[name] |= joining


def remove_members(world: World) -> None:
    for g, name in enumerate(sorted(world.groups)):
        leaving = {uid(4 * g), uid(4 * g + 1)}
        world.tree.remove_members(world.dns[name], [world.tree.user_dn(u) for u in sorted(leaving)])
        world.groups[name] -= leaving


def rename_groups(world: World) -> None:
    for g in range(GROUPS):
        old, new = group_name(g), f"renamed-{g:02d}"
        world.dns[new] = world.tree.rename(world.dns.pop(old), f"cn={new}")
        world.groups[new] = world.groups.pop(old)


def delete_groups(world: World) -> None:
    for g in range(GROUPS):
        world.tree.delete(world.dns.pop(group_name(g)))
        del world.groups[group_name(g)]


# The directory taking a change back while the sync that applied part of it lies killed.


def clear_titles(world: World) -> None:
    for i in range(CHANGED):
        world.tree.delete_attribute(world.tree.user_dn(uid(i)), "title")
        world.titles[uid(i)] = ""


def enable_users(world: World) -> None:
    for i in range(CHANGED):
        world.tree.delete_attribute(world.tree.user_dn(uid(i)), "employeeType")
        world.active[uid(i)] = True


def add_members_back(world: World) -> None:
    for g, name in enumerate(sorted(world.groups)):
        back = {uid(4 * g), uid(4 * g + 1)}
        world.tree.add_members(world.dns[name], [world.tree.user_dn(u) for u in sorted(back)])
        world.groups[name] |= back


def remove_added_members(world: World) -> None:
    for g, name in enumerate(sorted(world.groups)):
        leaving = {uid(4 * g + 2), uid(4 * g + 3)}
        world.tree.remove_members(world.dns[name], [world.tree.user_dn(u) for u in sorted(leaving)])
        world.groups[name] -= leaving


def rename_groups_back(world: World) -> None:
    for g in range(GROUPS):
        old, new = f"renamed-{g:02d}", group_name(g)
        world.dns[new] = world.tree.rename(world.dns.pop(old), f"cn={new}")
        world.groups[new] = world.groups.pop(old)


# How much of each phase's change the target holds: the kill waits for the first of it.


def users_made(emulator: RunningEmulator) -> int:
    return len(emulator.users())


def users_retitled(emulator: RunningEmulator) -> int:
    return sum(1 for u in emulator.users() if u.get("title"))


def users_inactive(emulator: RunningEmulator) -> int:
    return sum(1 for u in emulator.users() if not u["active"])


def users_deleted(emulator: RunningEmulator) -> int:
    return USERS - len(emulator.users())


def memberships_added(emulator: RunningEmulator) -> int:
    return sum(len(g.get("members") or []) > 3 for g in emulator.groups())


def memberships_removed(emulator: RunningEmulator) -> int:
    return sum(len(g.get("members") or []) < 3 for g in emulator.groups())


def groups_renamed(emulator: RunningEmulator) -> int:
    return sum(str(g["displayName"]).startswith("renamed-") for g in emulator.groups())


def groups_deleted(emulator: RunningEmulator) -> int:
    return GROUPS - len(emulator.groups())


@dataclass(frozen=True)
class Phase:
    name: str
    change: Callable[[World], None] | None  # None: the first sync, with an empty target
    request: str  # the emulator's stats key of the phase's requests
    needed: int  # requests the phase needs when nothing is killed
    landed: Callable[[RunningEmulator], int]  # the phase's changes the target holds
    undo: Callable[[World], None] | None = None
    remove_user_action: str = "disable"
    deletes: int = 0  # DELETE /Users the phase is meant to send
    disables: int = 0  # users meant to end inactive


PHASES = [
    Phase("creates", None, "POST Users", USERS, users_made),
    Phase("updates", update_titles, "PATCH Users", CHANGED, users_retitled, clear_titles),
    Phase(
        "disables",
        disable_users,
        "PATCH Users",
        CHANGED,
        users_inactive,
        enable_users,
        disables=CHANGED,
    ),
    Phase(
        "deletes",
        delete_users,
        "DELETE Users",
        CHANGED,
        users_deleted,
        remove_user_action="delete",
        deletes=CHANGED,
    ),
    Phase(
        "member additions",
        add_members,
        "PATCH Groups",
        GROUPS,
        memberships_added,
        remove_added_members,
    ),
    Phase(
        "member removals",
        remove_members,
        "PATCH Groups",
        GROUPS,
        memberships_removed,
        add_members_back,
    ),
    Phase(
        "group rename",
        rename_groups,
        "PATCH Groups",
        GROUPS,
        groups_renamed,
        rename_groups_back,
    ),
    Phase("group delete", delete_groups, "DELETE Groups", GROUPS, groups_deleted),
]
UNDONE = [p for p in PHASES if p.undo is not None]


def write_config(tree: Tree, emulator: RunningEmulator, work: Path, phase: Phase) -> Path:
    source = source_settings(tree)
    source["account_status"] = {"attribute": "employeeType", "disabled_value": "disabled"}
    path = work / "scimsync.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state": f"sqlite:///{work / 'state.db'}",
                "source": source,
                "target": {"url": emulator.url, "token": emulator.token, "max_concurrency": 8},
                "options": {
                    "max_deletions": "100%",
                    "remove_user_action": phase.remove_user_action,
                },
                "mapping": {"title": "title"},
            }
        )
    )
    path.chmod(0o600)
    return path


def sync(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scimsync", "--config", str(config), "sync"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def requests(emulator: RunningEmulator, key: str) -> int:
    by_resource: dict[str, int] = emulator.stats()["by_resource"]
    return by_resource.get(key, 0)


def kill_when_landed(config: Path, emulator: RunningEmulator, phase: Phase) -> None:
    """Start a sync; SIGKILL it once the phase's first request reached the emulator and the
    first of its changes is at the target: its chunk's calls are made, none recorded."""
    process = subprocess.Popen(
        [sys.executable, "-m", "scimsync", "--config", str(config), "sync"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    try:
        while requests(emulator, phase.request) == 0 or phase.landed(emulator) == 0:
            assert process.poll() is None, f"the sync ended before {phase.name} landed"
            assert time.monotonic() < deadline, f"no {phase.name} within the deadline"
            time.sleep(0.002)  # polling the emulator, with a deadline
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def killed_mid_phase(config: Path, emulator: RunningEmulator, phase: Phase) -> None:
    emulator.reset_stats()
    emulator.configure(latency_ms=LATENCY_MS)
    kill_when_landed(config, emulator, phase)
    sent, landed = requests(emulator, phase.request), phase.landed(emulator)
    assert 0 < sent < phase.needed, f"the kill did not land mid-phase ({sent} sent)"
    assert 0 < landed < phase.needed, f"{landed} of the phase's changes landed"
    emulator.configure(latency_ms=0)


def converge(config: Path) -> None:
    for _ in range(3):  # a sync may exit 1 for records it could not apply; they come back
        finished = sync(config)
        assert finished.returncode in (0, 1), finished.stdout + finished.stderr
        if finished.returncode == 0:
            return
    raise AssertionError(f"no sync exited 0: {finished.stdout}{finished.stderr}")


def assert_target_is_the_directory(emulator: RunningEmulator, world: World) -> None:
    users = emulator.users()
    names = Counter(str(u["userName"]) for u in users)
    assert set(names.values()) == {1}, "a user exists twice"
    expected_users = {f"{u}@example.com": active for u, active in world.active.items()}
    assert {str(u["userName"]): bool(u["active"]) for u in users} == expected_users
    titles = {str(u["userName"]): str(u.get("title") or "") for u in users}
    assert titles == {f"{u}@example.com": world.titles[u] for u in world.active}

    groups = emulator.groups()
    assert len({str(g["displayName"]) for g in groups}) == len(groups), "a group exists twice"
    by_id = {str(u["id"]): str(u["userName"]) for u in users}
    held = {
        str(g["displayName"]): {by_id[str(m["value"])] for m in g.get("members") or []}
        for g in groups
    }
    assert held == {
        name: {f"{u}@example.com" for u in members} for name, members in world.groups.items()
    }


def assert_converged(config: Path, emulator: RunningEmulator) -> None:
    emulator.reset_stats()
    again = sync(config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sum(n for k, n in emulator.stats()["by_resource"].items() if k[:3] != "GET") == 0


@pytest.mark.parametrize("phase", PHASES, ids=[p.name for p in PHASES])
def test_a_sigkill_in_the_phase_then_the_next_sync_converges(
    phase: Phase, ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    world = World(ldap_tree)
    world.build()
    config = write_config(ldap_tree, emulator, tmp_path, phase)
    if phase.change is not None:
        first = sync(config)
        assert first.returncode == 0, first.stdout + first.stderr
        phase.change(world)
    killed_mid_phase(config, emulator, phase)
    converge(config)
    assert_target_is_the_directory(emulator, world)

    stats: dict[str, int] = emulator.stats()["by_resource"]
    # Nobody deprovisioned beyond the change: a redone DELETE of an account already gone
    # adds a request (at most one chunk's worth), never an account.
    assert phase.deletes <= stats.get("DELETE Users", 0) <= phase.deletes + 128
    if phase.disables == 0 and phase.deletes == 0:
        assert all(u["active"] for u in emulator.users())
        assert "DELETE Users" not in stats
    if phase.request != "PATCH Users":
        assert "PATCH Users" not in stats, "a user was deactivated"
    assert_converged(config, emulator)


@pytest.mark.parametrize("phase", UNDONE, ids=[p.name for p in UNDONE])
def test_a_change_taken_back_after_a_sigkill_mid_phase_is_taken_back_at_the_target(
    phase: Phase, ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Part of the change landed unrecorded; the directory then undoes it: the next sync
    must undo what landed, which the store never heard of."""
    assert phase.change is not None and phase.undo is not None
    world = World(ldap_tree)
    world.build()
    config = write_config(ldap_tree, emulator, tmp_path, phase)
    first = sync(config)
    assert first.returncode == 0, first.stdout + first.stderr
    phase.change(world)
    killed_mid_phase(config, emulator, phase)
    phase.undo(world)
    converge(config)
    assert_target_is_the_directory(emulator, world)
    assert_converged(config, emulator)
