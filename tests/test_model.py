"""The operation contract the planner and the executor share: phases, match keys, JSON."""

from __future__ import annotations

import pytest

from scimsync.model import Action, Kind, Operation, Phase, group_match_key, user_match_key

A = Action


@pytest.mark.parametrize(
    ("action", "kind", "phase"),
    [
        (A.CREATE, Kind.USER, Phase.USER_WRITES),
        (A.LINK, Kind.USER, Phase.USER_WRITES),
        (A.UPDATE, Kind.USER, Phase.USER_WRITES),
        (A.DISABLE, Kind.USER, Phase.USER_REMOVALS),
        (A.DELETE, Kind.USER, Phase.USER_REMOVALS),
        (A.CREATE, Kind.GROUP, Phase.GROUP_WRITES),
        (A.LINK, Kind.GROUP, Phase.GROUP_WRITES),
        (A.RENAME, Kind.GROUP, Phase.GROUP_WRITES),
        (A.ADD_MEMBERS, Kind.GROUP, Phase.MEMBERSHIPS),
        (A.REMOVE_MEMBERS, Kind.GROUP, Phase.MEMBERSHIPS),
        (A.DELETE, Kind.GROUP, Phase.GROUP_DELETIONS),
    ],
)
def test_each_operation_has_its_phase(action: Action, kind: Kind, phase: Phase) -> None:
    assert Operation(action, kind, "s1", "n").phase is phase


def test_phases_run_writes_then_memberships_then_removals() -> None:
    # Members exist before they are added; a user leaves its groups before it is deleted.
    assert sorted(Phase) == [
        Phase.USER_WRITES,
        Phase.GROUP_WRITES,
        Phase.MEMBERSHIPS,
        Phase.USER_REMOVALS,
        Phase.GROUP_DELETIONS,
    ]


def test_a_kind_read_back_as_its_word_is_the_same_kind() -> None:
    # The store holds the word; a phase computed from it must not depend on identity.
    assert Operation(A.DELETE, Kind("user"), "s1", "n").phase is Phase.USER_REMOVALS
    assert Operation(A.DELETE, "group", "s1", "n").phase is Phase.GROUP_DELETIONS  # type: ignore[arg-type]


def test_user_match_key_is_the_case_folded_user_name_or_external_id() -> None:
    values = {"externalId": "E-42", "userName": "ignored"}
    assert user_match_key("Ann@Example.COM", values, "userName") == "ann@example.com"
    assert user_match_key("ann@example.com", values, "externalId") == "e-42"
    assert user_match_key("ann@example.com", {}, "externalId") == ""
    assert group_match_key("Finance-EU") == "finance-eu"


def test_plan_json_keeps_active_and_the_previous_name_among_the_values() -> None:
    """`plan --json` and approval digests predate the typed fields: their form is kept."""
    link = Operation(A.LINK, Kind.USER, "u1", "ann", "T1", {"title": "CEO"}, active=False)
    assert link.to_json() == {
        "action": "link",
        "kind": "user",
        "source_id": "u1",
        "name": "ann",
        "target_id": "T1",
        "values": {"title": "CEO", "active": False},
    }
    renamed = Operation(
        A.RENAME, Kind.GROUP, "g1", "New", "T2", {"displayName": "New"}, previous_name="Old"
    )
    assert renamed.to_json()["values"] == {"displayName": "New", "previousName": "Old"}
    assert "values" not in Operation(A.DELETE, Kind.USER, "u1", "ann", "T1").to_json()
