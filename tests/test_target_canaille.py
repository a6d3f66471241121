"""Canaille 0.3.6 (pytest-iam) as a second independent SCIM target, through the engine.

What it can serve is users: its groups hold members by userName rather than id, so
group scenarios are not run (docs/scim-servers.md lists that and its other departures from
the RFCs). Users exercise what the generic profile reads of a server: no `count`
(page_size 0), filter.supported false (lookups by listing), and a /Schemas with
value-only emails and more required attributes than RFC 7643 asks for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scimsync.cycle.check import check_target
from scimsync.emulator import RunningEmulator
from tests.fixtures.canaille import Canaille
from tests.fixtures.slapd import Tree
from tests.harness import Channel


@pytest.fixture
def channel(
    ldap_tree: Tree, emulator: RunningEmulator, canaille: Canaille, tmp_path: Path
) -> Channel:
    made = Channel(ldap_tree, emulator, tmp_path)
    made.target = {"type": "scim", "url": canaille.url, "token": canaille.token, "page_size": 0}
    made.options["groups"] = False
    return made


def at_canaille(canaille: Canaille) -> dict[str, dict[str, object]]:
    return {str(u["userName"]): u for u in canaille.resources("Users")}


def fill_required(channel: Channel) -> None:
    channel.mapping.update({"name.formatted": "cn", "name.familyName": "sn"})


@pytest.mark.anyio
async def test_check_reads_what_canaille_requires(channel: Channel) -> None:
    checked = await check_target(channel.config())
    assert checked.features == "patch yes, bulk no, filter no"
    # The flavour's default mapping fills name.givenName and name.familyName, not formatted.
    assert checked.schema_warnings == (
        "the target requires name.formatted of a user (its /Schemas); `mapping` does not fill it",
    )
    fill_required(channel)
    assert (await check_target(channel.config())).schema_warnings == ()


def test_a_users_lifecycle_converges_at_canaille(channel: Channel, canaille: Canaille) -> None:
    fill_required(channel)
    tree = channel.tree
    anna, ben, cleo = (tree.add_user(uid, title="Engineer") for uid in ("anna", "ben", "cleo"))
    first = channel.sync()
    assert first.exit_code == 0, first.prepared.plan
    users = at_canaille(canaille)
    assert sorted(users) == ["anna@example.com", "ben@example.com", "cleo@example.com"]
    assert users["anna@example.com"]["emails"] == [{"value": "anna@example.com"}]

    tree.modify(anna, title="Lead")
    tree.modify(ben, employeeType="disabled")
    tree.delete(cleo)
    changed = channel.sync()
    assert changed.prepared.view.mode == "incremental"
    assert changed.exit_code == 0, changed.prepared.plan
    users = at_canaille(canaille)
    assert users["anna@example.com"]["title"] == "Lead"
    assert users["ben@example.com"]["active"] is False
    assert users["cleo@example.com"]["active"] is False  # out of scope: disabled, not deleted

    with channel.store() as store:
        store.reset()
    again = channel.sync()  # a full reconciliation, listing without `count`
    assert again.exit_code == 0
    assert again.prepared.plan.operations == ()


def test_an_existing_account_is_adopted_by_listing(channel: Channel, canaille: Canaille) -> None:
    fill_required(channel)
    channel.sync()  # the first, full cycle: nothing yet
    with canaille.client() as client:
        for uid in ("other", "dana"):
            client.post(
                "/Users",
                json={
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": f"{uid}@example.com",
                    "name": {"formatted": uid, "familyName": uid},
                    "emails": [{"value": f"{uid}@example.com"}],
                    "active": True,
                },
            ).raise_for_status()
    existing = at_canaille(canaille)["dana@example.com"]["id"]
    channel.tree.add_user("dana")
    report = channel.sync()
    assert report.prepared.plan.summary() == {"link": 1}
    assert report.exit_code == 0
    assert at_canaille(canaille)["dana@example.com"]["id"] == existing
    assert len(at_canaille(canaille)) == 2
