"""The cycle's views (scimsync.cycle.views): which records one cycle looks at.

The incremental view is built from a change set and the store alone, so it is tested with a
real SQLite store and change sets made here; the full and one-user views read the
directory, so they are tested end to end with the `channel` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from scimsync.config import Config
from scimsync.cycle.views import View, incremental_view, scope_moves
from scimsync.directory import ChangeSet
from scimsync.mapping import compile_rules
from scimsync.model import Kind, LinkedGroup, LinkedUser, SourceGroup, SourceUser
from scimsync.state import Store
from tests.harness import Channel


def settings(groups: bool = True) -> Config:
    """Nothing is contacted: the view reads the change set and the store only."""
    return Config.model_validate(
        {
            "state": "sqlite://",
            "source": {
                "url": "ldap://127.0.0.1:1",
                "base_dn": "dc=example,dc=com",
                "users": {"filter": "(objectClass=inetOrgPerson)"},
                "groups": {"filter": "(objectClass=groupOfNames)"},
            },
            "target": {"type": "atlassian", "url": "http://127.0.0.1:1/scim", "token": "t"},
            "options": {"groups": groups},
            "mapping": {"userName": "mail", "emails.work": "mail", "displayName": "cn"},
        }
    )


def entry(guid: str, *, mail: bool = True) -> SourceUser:
    attributes = {"cn": (guid,), **({"mail": (f"{guid}@example.com",)} if mail else {})}
    return SourceUser(guid, f"uid={guid},dc=example,dc=com", attributes, disabled=False)


def link(guid: str, *, in_scope: bool = True) -> LinkedUser:
    return LinkedUser(guid, f"T-{guid}", f"{guid}@example.com", True, {}, in_scope=in_scope)


def changes(
    users: Sequence[SourceUser] = (),
    groups: Sequence[SourceGroup] = (),
    gone_users: frozenset[str] = frozenset(),
) -> ChangeSet:
    return ChangeSet(
        users={u.guid: u for u in users},
        groups={g.guid: g for g in groups},
        gone_users=gone_users,
        gone_groups=frozenset(),
        watermark="w2",
    )


@pytest.fixture
def store() -> Iterator[Store]:
    """u1 and u2 linked and in scope, u3 linked but out of scope; Eng holds u1 and u2."""
    with Store.open("sqlite://", "main") as made:
        made.save_users([link("u1"), link("u2"), link("u3", in_scope=False)])
        made.save_group(LinkedGroup("g1", "T-g1", "Eng", frozenset({"u1", "u2"})))
        made.save_group(LinkedGroup("g2", "T-g2", "Ops", frozenset({"u2"})))
        yield made


def view_of(change: ChangeSet, store: Store, config: Config | None = None) -> View:
    config = config or settings()
    return incremental_view(
        change,
        compile_rules(config.rules),
        config,
        store,
        lambda: store.linked_ids(Kind.USER, in_scope=True),
    )


def test_a_quiet_directory_is_an_empty_view_at_the_new_watermark(store: Store) -> None:
    view = view_of(changes(), store)
    assert (view.mode, view.watermark, view.universe) == ("incremental", "w2", frozenset())
    assert (view.desired.users, view.desired.groups, view.linked_users) == ({}, {}, {})


def test_a_changed_user_brings_the_linked_groups_that_hold_it(store: Store) -> None:
    view = view_of(changes([entry("u1")]), store)
    assert view.desired.users.keys() == view.linked_users.keys() == {"u1"}
    # Eng is unchanged in the directory: planned from its link, members still in scope.
    assert view.desired.groups.keys() == view.linked_groups.keys() == {"g1"}
    assert view.desired.groups["g1"].member_source_ids == {"u1", "u2"}
    assert view.desired.groups["g1"].display_name == "Eng"
    assert view.universe == frozenset({("user", "u1"), ("group", "g1")})
    assert view.other_members == {"u2"}  # linked, outside the universe, a member here
    assert (view.scope_entered, view.scope_left) == (frozenset(), frozenset())


def test_a_deleted_user_leaves_its_groups_and_stays_linked_in_the_view(store: Store) -> None:
    view = view_of(changes(gone_users=frozenset({"u2"})), store)
    assert view.desired.users == {}
    assert view.linked_users.keys() == {"u2"}  # so that the planner deprovisions it
    assert view.desired.groups["g1"].member_source_ids == {"u1"}
    assert view.desired.groups["g2"].member_source_ids == frozenset()
    assert view.universe == frozenset({("user", "u2"), ("group", "g1"), ("group", "g2")})
    assert view.scope_left == {"u2"}
    assert view.other_members == {"u1"}


def test_a_user_back_in_scope_is_seen_entering_and_joins_changed_groups(store: Store) -> None:
    eng = SourceGroup("g1", "cn=Eng,dc=example,dc=com", "Eng", frozenset({"u1", "u3"}))
    view = view_of(changes([entry("u3")], [eng]), store)
    assert view.scope_entered == {"u3"}
    assert view.desired.groups["g1"].member_source_ids == {"u1", "u3"}


def test_a_user_out_of_scope_is_no_member_of_a_changed_group(store: Store) -> None:
    eng = SourceGroup("g1", "cn=Eng,dc=example,dc=com", "Eng", frozenset({"u1", "u3", "u9"}))
    view = view_of(changes(groups=[eng]), store)
    assert view.desired.groups["g1"].member_source_ids == {"u1"}  # u3 left, u9 never linked


def test_a_new_user_joins_a_changed_group_inside_the_universe(store: Store) -> None:
    eng = SourceGroup("g1", "cn=Eng,dc=example,dc=com", "Eng", frozenset({"u1", "u5"}))
    view = view_of(changes([entry("u5")], [eng]), store)
    assert view.desired.groups["g1"].member_source_ids == {"u1", "u5"}
    assert view.linked_users == {}
    assert view.universe == frozenset({("user", "u5"), ("group", "g1")})
    assert view.other_members == {"u1", "u2"}


def test_a_deleted_group_is_linked_in_the_view_and_not_desired(store: Store) -> None:
    gone = ChangeSet({}, {}, frozenset(), gone_groups=frozenset({"g2"}), watermark="w2")
    view = view_of(gone, store)
    assert view.linked_groups.keys() == {"g2"}
    assert view.desired.groups == {}
    assert view.universe == frozenset({("group", "g2")})


def test_an_unmappable_linked_user_keeps_its_memberships(store: Store) -> None:
    view = view_of(changes([entry("u1", mail=False)]), store)
    assert [f.source_id for f in view.desired.failures] == ["u1"]
    assert view.desired.users == {}
    assert view.desired.groups["g1"].member_source_ids == {"u1", "u2"}
    assert view.scope_left == frozenset()  # kept as it is, never deprovisioned
    assert view.other_members == {"u2"}


def test_without_groups_the_view_holds_users_only(store: Store) -> None:
    view = view_of(changes([entry("u1")], gone_users=frozenset({"u2"})), store, settings(False))
    assert view.desired.groups == {}
    assert view.linked_groups == {}
    assert view.universe == frozenset({("user", "u1"), ("user", "u2")})
    assert view.other_members == frozenset()


def test_scope_moves_compare_the_scope_with_the_links() -> None:
    linked = {"u1": link("u1"), "u2": link("u2"), "u3": link("u3", in_scope=False)}
    assert scope_moves(linked, {"u1", "u3"}) == (frozenset({"u3"}), frozenset({"u2"}))
    assert scope_moves(linked, {"u1", "u2"}) == (frozenset(), frozenset())


# --- full and one-user views, end to end ---------------------------------------------------


def test_a_full_view_sees_linked_users_leave_and_enter_the_scope(channel: Channel) -> None:
    a, b = channel.tree.add_user("fa"), channel.tree.add_user("fb")
    scope = channel.tree.add_group("full-scope", [a, b])
    channel.source["users"] = {"group_dn": scope}
    channel.options["groups"] = False
    first = channel.sync().prepared.view
    assert (first.mode, first.universe, first.desired.source_user_count) == ("full", None, 2)
    channel.tree.remove_members(scope, [b])
    channel.tree.delete_attribute(a, "mail")  # unmappable now: kept, still in scope
    with channel.store() as store:
        store.reset()  # the next cycle is a full reconciliation
    left = channel.sync().prepared.view
    assert left.mode == "full"
    assert (left.scope_left, left.scope_entered) == (frozenset({channel.tree.guid(b)}), frozenset())
    channel.tree.add_members(scope, [b])
    with channel.store() as store:
        store.reset()
    back = channel.sync().prepared.view
    assert (back.scope_entered, back.scope_left) == (frozenset({channel.tree.guid(b)}), frozenset())


def test_a_one_user_view_holds_that_user_and_its_groups(channel: Channel) -> None:
    a = channel.tree.add_user("oa", mail="Oa@Example.com")
    b = channel.tree.add_user("ob")
    eng, hr = channel.tree.add_group("one-eng", [a, b]), channel.tree.add_group("one-hr", [a, b])
    channel.tree.add_group("one-ops", [b])
    ann, bob = channel.tree.guid(a), channel.tree.guid(b)
    eng_id, hr_id = channel.tree.guid(eng), channel.tree.guid(hr)
    view = channel.plan(only_user="oa@example.com").view  # userName matches in any case
    assert view.mode == "user"
    assert view.desired.users.keys() == {ann}
    # Groups nothing links yet count only when they hold the user; Ops does not.
    assert view.universe == frozenset({("user", ann), ("group", eng_id), ("group", hr_id)})
    assert view.desired.groups[eng_id].member_source_ids == {ann}
    assert (view.absent, view.unknown) == (None, False)
    channel.sync()
    channel.tree.remove_members(hr, [a])
    view = channel.plan(only_user="oa@example.com").view
    # The user's own memberships as the directory has them; the others' as linked.
    assert view.desired.groups[hr_id].member_source_ids == {bob}
    assert view.desired.groups[eng_id].member_source_ids == {ann, bob}


def test_a_one_user_view_says_why_no_user_in_scope_has_the_name(channel: Channel) -> None:
    inside, outside = channel.tree.add_user("wa"), channel.tree.add_user("wb")
    channel.source["users"] = {"group_dn": channel.tree.add_group("why-scope", [inside])}
    out = channel.plan(only_user="wb@example.com").view
    assert out.absent is not None and out.absent.startswith(f"{outside} is out of scope: ")
    assert not out.unknown
    nobody = channel.plan(only_user="nobody@example.com").view
    assert nobody.absent == "no entry under source.base_dn has mail=nobody@example.com"
    assert nobody.unknown
