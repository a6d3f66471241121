"""A full reconciliation puts back a linked group's name as the target holds it: a rename
that landed but was never recorded (a killed cycle) or one made by hand."""

from __future__ import annotations

from pathlib import Path

from scimsync.emulator import RunningEmulator
from tests.fixtures.slapd import Tree
from tests.harness import Channel


def test_a_group_renamed_at_the_target_is_named_back_by_a_full_reconciliation(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> None:
    channel = Channel(ldap_tree, emulator, tmp_path)
    anna = ldap_tree.add_user("anna")
    ldap_tree.add_group("team", [anna])
    assert channel.sync().exit_code == 0
    team = channel.groups()["team"]["id"]
    # What a killed cycle leaves when its rename landed and the directory then took the
    # rename back: the store still holds "team", the target holds the other name.
    channel.patch_target(
        f"/Groups/{team}", {"op": "replace", "path": "displayName", "value": "renamed"}
    )
    channel.store().reset()
    full = channel.sync()
    assert full.exit_code == 0
    assert [(op.action.value, op.name) for op in full.prepared.plan.operations] == [
        ("rename", "team")
    ]
    assert set(channel.groups()) == {"team"}
    assert channel.groups()["team"]["id"] == team
    assert channel.member_names("team") == {"anna@example.com"}
    channel.store().reset()
    assert channel.sync().prepared.plan.operations == ()
