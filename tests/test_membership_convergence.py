"""Member removals land where a full reconciliation would, and the safety threshold holds
a deleted user's removal from its groups while the removal of a member added by hand goes."""

from __future__ import annotations

from tests.harness import Channel


# `openldap` detects changes by syncrepl, `generic` by modifyTimestamp polling.
def stored_members_at_the_target(channel: Channel) -> dict[str, set[str]]:
    """Each linked group's stored member set, as target user ids, by displayName."""
    with channel.store() as store:
        users = store.linked_users(with_values=False)
        return {
            group.display_name: {users[m].target_id for m in group.member_source_ids}
            for group in store.linked_groups().values()
        }


def target_members(channel: Channel) -> dict[str, set[str]]:
    return {
        name: {str(m["value"]) for m in group.get("members") or []}
        for name, group in channel.groups().items()
    }


def test_after_member_removals_a_reset_and_a_full_sync_write_nothing(channel: Channel) -> None:
    tree = channel.tree
    people = {name: tree.add_user(name) for name in ("anna", "ben", "cleo", "dan", "eve")}
    crowd = tree.add_users(150, prefix="c")
    dev = tree.add_group("dev", [people[n] for n in ("anna", "ben", "cleo", "dan")])
    ops = tree.add_group("ops", [people["anna"], people["ben"]])
    big = tree.add_group("big", [*crowd, people["anna"]])
    assert channel.sync().exit_code == 0

    tree.remove_members(dev, [people["ben"], people["cleo"]])
    tree.add_members(dev, [people["eve"]])  # additions and removals in one group
    tree.remove_members(ops, [people["ben"]])
    tree.remove_members(big, crowd[:120])  # over membership_chunk_size (100)
    tree.delete(people["dan"])  # refint drops dan from dev; his account is disabled
    changed = channel.sync()
    assert changed.exit_code == 0
    assert channel.member_names("dev") == {"anna@example.com", "eve@example.com"}
    assert channel.member_names("ops") == {"anna@example.com"}
    assert len(channel.member_names("big")) == 31
    assert stored_members_at_the_target(channel) == target_members(channel)

    channel.store().reset()
    channel.emulator.reset_stats()
    full = channel.sync()
    assert full.exit_code == 0
    assert full.prepared.view.mode == "full"
    assert full.prepared.plan.operations == ()
    assert channel.writes() == 0, channel.emulator.stats()["by_resource"]
    assert stored_members_at_the_target(channel) == target_members(channel)


def test_over_the_threshold_a_deleted_member_stays_in_its_group_and_a_hand_added_one_goes(
    channel: Channel,
) -> None:
    """remove_user_action: delete over max_deletions: the held user keeps his account and
    his place in the group (his removal follows from the held delete); the member added by
    hand is not ours and no deprovisioning of ours, so its removal goes ahead."""
    tree = channel.tree
    channel.options.update({"remove_user_action": "delete", "max_deletions": 1})
    anna, ben = tree.add_user("anna"), tree.add_user("ben")
    tree.add_user("cleo")
    tree.add_group("solo", [anna])  # anna is the group's only member that scimsync provisions
    tree.add_group("pair", [anna, ben])
    assert channel.sync().exit_code == 0
    hand = channel.create_target_user("hand@example.com")
    solo_id = channel.groups()["solo"]["id"]
    channel.patch_target(
        f"/Groups/{solo_id}", {"op": "add", "path": "members", "value": [{"value": hand}]}
    )
    anna_id = channel.users()["anna@example.com"]["id"]

    tree.delete(anna)  # refint leaves `solo` with no member; `pair` keeps ben
    tree.delete(ben)  # two deletes: over max_deletions
    channel.store().reset()  # a full reconciliation: it reads the target's members
    held = channel.sync()
    assert held.exit_code == 3
    assert {(op.action.value, op.name) for op in held.prepared.verdict.held} >= {
        ("delete", "anna@example.com"),
        ("delete", "ben@example.com"),
    }
    users = channel.users()
    assert {"anna@example.com", "ben@example.com"} <= set(users)
    assert users["anna@example.com"]["active"]
    assert channel.member_names("solo") == {"anna@example.com"}  # the hand-added one went
    assert channel.member_names("pair") == {"anna@example.com", "ben@example.com"}
    assert stored_members_at_the_target(channel) == target_members(channel)

    released = channel.sync(allow_deletions=True)
    assert released.exit_code == 0
    assert set(channel.users()) == {"cleo@example.com", "hand@example.com"}
    assert channel.member_names("solo") == set()
    assert channel.member_names("pair") == set()
    assert anna_id not in {m for members in target_members(channel).values() for m in members}
    assert stored_members_at_the_target(channel) == target_members(channel)

    channel.store().reset()
    channel.emulator.reset_stats()
    assert channel.sync().exit_code == 0
    assert channel.writes() == 0, channel.emulator.stats()["by_resource"]
