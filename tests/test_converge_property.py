"""The real executor against the emulator: random directory edits always converge."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scimsync.emulator import RunningEmulator
from scimsync.sandbox.slapd import Slapd
from tests.fixtures.slapd import Tree
from tests.harness import Channel

USERS = [f"p{i}" for i in range(6)]
GROUPS = ["scope", "g0", "g1", "g2"]
_trees = itertools.count(1)

edits = st.lists(
    st.tuples(st.sampled_from(GROUPS), st.sampled_from(USERS), st.booleans()),
    min_size=1,
    max_size=12,
)


@pytest.mark.slow
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=edits, then=edits)
def test_random_edits_converge_to_the_directory(
    slapd: Slapd,
    emulator: RunningEmulator,
    first: list[tuple[str, str, bool]],
    then: list[tuple[str, str, bool]],
) -> None:
    emulator.reset()
    tree = Tree(slapd, f"prop{next(_trees)}")
    for uid in USERS:
        tree.add_user(uid)
    members: dict[str, set[str]] = {g: set() for g in GROUPS}
    dns = {g: tree.add_group(g, []) for g in GROUPS}  # the placeholder member stays
    with tempfile.TemporaryDirectory() as state_dir:
        channel = Channel(tree, emulator, Path(state_dir))
        channel.source["users"] = {"group_dn": dns["scope"]}
        for batch in (first, then):
            for group, uid, join in batch:
                if join and uid not in members[group]:
                    tree.add_members(dns[group], [tree.user_dn(uid)])
                    members[group].add(uid)
                elif not join and uid in members[group]:
                    tree.remove_members(dns[group], [tree.user_dn(uid)])
                    members[group].discard(uid)
            for _ in range(5):
                if not channel.sync().prepared.plan.operations:
                    break
            else:
                pytest.fail("five syncs and the plan is still not empty")
            in_scope = {f"{u}@example.com" for u in members["scope"]}
            active = {name for name, u in channel.users().items() if u["active"] is True}
            assert active == in_scope
            for group in GROUPS:
                expected = {f"{u}@example.com" for u in members[group]} & in_scope
                assert channel.member_names(group) == expected, group
        with channel.store() as store:
            store.reset()
        assert channel.sync().prepared.plan.operations == ()
