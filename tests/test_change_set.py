"""ChangeSet: what one cycle learned of the directory, and merging two such answers."""

from __future__ import annotations

from scimsync.directory import ChangeSet
from scimsync.model import SourceGroup, SourceUser


def user(guid: str, mail: str = "") -> SourceUser:
    return SourceUser(guid=guid, dn=f"uid={guid}", attributes={"mail": (mail,)}, disabled=False)


def group(guid: str, name: str = "") -> SourceGroup:
    return SourceGroup(guid=guid, dn=f"cn={guid}", name=name or guid, member_guids=frozenset())


def change(
    users: tuple[SourceUser, ...] = (),
    groups: tuple[SourceGroup, ...] = (),
    gone_users: frozenset[str] = frozenset(),
    gone_groups: frozenset[str] = frozenset(),
    watermark: str = "w",
) -> ChangeSet:
    return ChangeSet(
        {u.guid: u for u in users}, {g.guid: g for g in groups}, gone_users, gone_groups, watermark
    )


def test_merged_holds_both_sides_and_keeps_its_own_watermark() -> None:
    polled = change((user("a"),), (group("g"),), frozenset({"x"}), frozenset({"gx"}), "new")
    revisited = change((user("b"),), (group("h"),), frozenset({"y"}), frozenset({"gy"}), "old")
    merged = polled.merged(revisited)
    assert merged.users.keys() == {"a", "b"}
    assert merged.groups.keys() == {"g", "h"}
    assert merged.gone_users == {"x", "y"}
    assert merged.gone_groups == {"gx", "gy"}
    assert merged.watermark == "new"


def test_merged_prefers_its_own_read_of_a_record_both_hold() -> None:
    fresh, stale = user("a", "new@example.com"), user("a", "old@example.com")
    renamed, before = group("g", "new name"), group("g", "old name")
    merged = change((fresh,), (renamed,)).merged(change((stale,), (before,)))
    assert merged.users["a"] is fresh
    assert merged.groups["g"] is renamed


def test_a_read_of_a_record_beats_the_other_side_s_gone() -> None:
    """A revisit that finds a record again outweighs the poll that reported it gone."""
    polled = change(gone_users=frozenset({"a"}), gone_groups=frozenset({"g"}))
    revisited = change((user("a"),), (group("g"),))
    for merged in (polled.merged(revisited), revisited.merged(polled)):
        assert merged.users.keys() == {"a"} and not merged.gone_users
        assert merged.groups.keys() == {"g"} and not merged.gone_groups


def test_empty_means_nothing_at_all() -> None:
    assert change().empty
    assert not change(users=(user("a"),)).empty
    assert not change(groups=(group("g"),)).empty
    assert not change(gone_users=frozenset({"a"})).empty
    assert not change(gone_groups=frozenset({"g"})).empty
