"""Two channels in one store, reading the same directory entries: each sees only its own state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scimsync.config import Config
from scimsync.emulator import RunningEmulator
from tests.fixtures.slapd import Tree
from tests.harness import Channel


class NamedChannel(Channel):
    """The harness channel under its own `channel:` name in a store it shares."""

    def __init__(self, name: str, tree: Tree, emulator: RunningEmulator, store_url: str) -> None:
        super().__init__(tree, emulator, Path("/nonexistent"))
        self.name = name
        self.state_url = store_url

    def config(self) -> Config:
        return super().config().model_copy(update={"channel": self.name})


@pytest.fixture
def two_emulators() -> Iterator[tuple[RunningEmulator, RunningEmulator]]:
    with RunningEmulator() as first, RunningEmulator() as second:
        yield first, second


def member_names(channel: Channel, group: str) -> set[str]:
    return {name.split("@")[0] for name in channel.member_names(group)}


def test_channels_sharing_a_store_and_source_ids_see_only_their_own_state(
    ldap_tree: Tree,
    two_emulators: tuple[RunningEmulator, RunningEmulator],
    store_url: str,
) -> None:
    ann, ben, cas = (ldap_tree.add_user(uid) for uid in ("ann", "ben", "cas"))
    crew = ldap_tree.add_group("crew", [ann, ben])
    a = NamedChannel("a", ldap_tree, two_emulators[0], store_url)
    b = NamedChannel("b", ldap_tree, two_emulators[1], store_url)

    # Both first cycles create everything: b's links are not a's, though the GUIDs are.
    for channel in (a, b):
        first = channel.sync()
        assert first.prepared.view.mode == "full"
        assert first.outcome.applied["create"] == 4, first.outcome
        assert member_names(channel, "crew") == {"ann", "ben"}
    with a.store() as store_a, b.store() as store_b:
        guid = ldap_tree.guid(ann)
        assert store_a.linked_users()[guid].target_id != store_b.linked_users()[guid].target_id

    # A change to crew, met by a's incremental cycle alone.
    ldap_tree.add_members(crew, [cas])
    a.emulator.reset_stats()
    b.emulator.reset_stats()
    touched = a.sync()
    assert touched.prepared.view.mode == "incremental"
    assert member_names(a, "crew") == {"ann", "ben", "cas"}
    assert member_names(b, "crew") == {"ann", "ben"}
    assert b.emulator.stats()["total"] == 0
    with a.store() as store_a, b.store() as store_b:
        crew_id = ldap_tree.guid(crew)
        assert store_a.groups_holding({ldap_tree.guid(cas)}) == {crew_id}
        assert store_b.groups_holding({ldap_tree.guid(cas)}) == set()
        assert store_b.groups_holding({ldap_tree.guid(ann)}) == {crew_id}

    # b's incremental cycle still finds the change: a's watermark and memberships are not b's.
    caught_up = b.sync()
    assert caught_up.prepared.view.mode == "incremental"
    assert caught_up.outcome.applied == {"add_members": 1}, caught_up.outcome
    assert member_names(b, "crew") == {"ann", "ben", "cas"}

    # A departure deprovisioned by a only; b's quiet cycle then sees it by itself.
    ldap_tree.delete(ben)
    assert a.sync().outcome.applied.get("disable") == 1
    assert a.users()["ben@example.com"]["active"] is False
    assert b.users()["ben@example.com"]["active"] is True
    assert b.sync().outcome.applied.get("disable") == 1
    assert b.users()["ben@example.com"]["active"] is False
    assert member_names(b, "crew") == {"ann", "cas"}
