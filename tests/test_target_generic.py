"""The generic SCIM profile by the RFCs, against the emulator's non-Atlassian modes: a server
without filtering, one whose /Schemas define less and require more, one that fails on
filtered member paths, and a record whose requests keep failing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scimsync.config import TargetConfig
from scimsync.cycle.check import check_target
from scimsync.emulator import RunningEmulator
from scimsync.target import RemoteUser, ScimTarget, open_target
from scimsync.target.errors import ServerError
from scimsync.target.schema import parse_schemas
from tests.fixtures.slapd import Tree
from tests.harness import Channel


@pytest.fixture
def channel(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Channel:
    made = Channel(ldap_tree, emulator, tmp_path)
    made.target["type"] = "scim"
    return made


def generic(emulator: RunningEmulator, **settings: Any) -> TargetConfig:
    return TargetConfig(type="scim", url=emulator.url, token=emulator.token, **settings)


async def no_sleep(seconds: float) -> None:
    return None


async def made_user(target: ScimTarget, user_name: str) -> RemoteUser:
    return await target.create_user({"userName": user_name, "emails.work": user_name}, True)


def requests(emulator: RunningEmulator, key: str) -> int:
    return int(emulator.stats()["by_resource"].get(key, 0))


# --- filter.supported false ----------------------------------------------------------------


def test_without_filtering_an_existing_account_is_found_by_listing(channel: Channel) -> None:
    """A server that says filter.supported false answers everyone to `filter=`: a lookup
    that trusted its first rows would miss the account and create a second one."""
    channel.emulator.configure(filter="ignored")
    channel.options["groups"] = False
    channel.sync()  # the first, full cycle: nothing yet
    for i in range(4):  # accounts the target lists before the one looked for
        channel.create_target_user(f"other{i}@example.com")
    existing = channel.create_target_user("late@example.com", title="Old")
    channel.tree.add_user("late", title="Engineer")
    report = channel.sync()
    assert report.prepared.view.mode == "incremental"
    assert report.prepared.plan.summary() == {"link": 1}
    assert report.exit_code == 0
    assert channel.users()["late@example.com"]["id"] == existing
    assert len(channel.users()) == 5


@pytest.mark.anyio
async def test_lookups_without_filtering_list_once_a_cycle(emulator: RunningEmulator) -> None:
    emulator.configure(filter="ignored")
    async with open_target(generic(emulator, page_size=10)) as target:
        made = [await made_user(target, f"u{i}@x.test") for i in range(25)]
        emulator.reset_stats()
        assert (await target.find_user("U7@x.test")) is not None  # userName is caseExact false
        assert (await target.find_user("u24@x.test")).id == made[24].id  # type: ignore[union-attr]
        assert await target.find_user("nobody@x.test") is None
        assert (await target.find_user_by_external_id("u3@x.test")) is None
        created = await target.create_user(
            {"userName": "new@x.test", "emails.work": "n@x.test"}, True
        )
        assert (await target.find_user("new@x.test")).id == created.id  # type: ignore[union-attr]
    listing_pages = 3  # 25 users at 10 a page, for userName; externalId lists once more
    # One listing per attribute looked up, then one GET /Users/{id} per account found.
    assert requests(emulator, "GET Users") == 2 * listing_pages + 3


@pytest.mark.anyio
async def test_with_filtering_lookups_send_the_filter(emulator: RunningEmulator) -> None:
    async with open_target(generic(emulator)) as target:
        await made_user(target, "f@x.test")
        emulator.reset_stats()
        assert await target.find_user("f@x.test") is not None
    assert requests(emulator, "GET Users") == 1


# --- /Schemas: undefined sub-attributes, required attributes --------------------------------


def test_sub_attributes_the_schema_leaves_out_are_not_sent(channel: Channel) -> None:
    """`schema: minimal` refuses emails.type and emails.primary and requires name.formatted;
    the profile reads /Schemas and sends what the server defines."""
    channel.emulator.configure(schema="minimal")
    channel.mapping["name.formatted"] = "cn"
    channel.mapping["userName"] = {"template": "{{ uid }}@example.com"}  # not the email
    anna = channel.tree.add_user("anna")
    channel.tree.add_group("team", [anna])
    channel.tree.add_group("empty", [])
    first = channel.sync()
    assert first.exit_code == 0, first.prepared.plan
    users = channel.users()
    assert users["anna@example.com"]["emails"] == [{"value": "anna@example.com"}]
    assert channel.member_names("team") == {"anna@example.com"}
    assert "empty" in channel.groups()  # sent with `members: []`, which this server requires
    channel.tree.modify(anna, mail="anna.b@example.com")  # an email change is a PATCH
    channel.sync()
    assert channel.users()["anna@example.com"]["emails"] == [{"value": "anna.b@example.com"}]
    with channel.store() as store:
        store.reset()
    again = channel.sync()  # a full reconciliation reads the untyped email back as ours
    assert again.prepared.plan.operations == ()


def test_a_new_groups_members_go_in_its_post(channel: Channel) -> None:
    tree = channel.tree
    members = [tree.add_user(f"m{i}") for i in range(3)]
    tree.add_group("crew", members)
    assert channel.sync().exit_code == 0
    assert len(channel.member_names("crew")) == 3
    assert requests(channel.emulator, "PATCH Groups") == 0


@pytest.mark.anyio
async def test_check_names_what_the_target_requires_and_does_not_define(channel: Channel) -> None:
    channel.emulator.configure(schema="minimal")
    channel.mapping["nickName"] = "uid"  # `minimal` defines no nickName
    checked = await check_target(channel.config())
    assert checked.schema_warnings == (
        "the target requires name.formatted of a user (its /Schemas); `mapping` does not fill it",
        "mapping: nickName is not in the target's User schema (its /Schemas): it may be "
        "dropped or refused",
    )
    channel.emulator.configure(schema="atlassian")
    del channel.mapping["nickName"]
    assert (await check_target(channel.config())).schema_warnings == ()


def test_the_schema_parser_reads_case_blind_and_ignores_junk() -> None:
    schema = parse_schemas(
        {
            "Resources": [
                "junk",
                {
                    "id": "urn:ietf:params:scim:schemas:core:2.0:User",
                    "attributes": [
                        {"name": "userName", "required": True},
                        {"name": "Emails", "subAttributes": [{"name": "Value"}, {"nope": 1}]},
                        {"name": "id", "required": True, "mutability": "readOnly"},
                        {
                            "name": "name",
                            "subAttributes": [
                                {"name": "formatted", "required": True, "mutability": "readOnly"},
                                {"name": "familyName", "required": True},
                            ],
                        },
                    ],
                },
            ]
        }
    )
    assert schema.prune_user(
        {"emails": [{"value": "a@b", "type": "work", "primary": True}], "title": "x"}
    ) == {"emails": [{"value": "a@b"}], "title": "x"}
    # Not id, nor name.formatted: readOnly. The filled name's familyName: required.
    assert schema.unfilled_user_attributes(["emails.work", "name.givenName"]) == [
        "userName",
        "name.familyName",
    ]
    assert parse_schemas(None).prune_user({"emails": [{"type": "w"}]}) == {
        "emails": [{"type": "w"}]
    }


# --- a 500 on a filtered member removal ----------------------------------------------------


@pytest.mark.anyio
async def test_a_500_on_a_member_filter_tries_the_value_list_once_and_keeps_it(
    emulator: RunningEmulator,
) -> None:
    emulator.configure(member_filter="failing")
    async with open_target(generic(emulator, retries_per_record=1), sleep=no_sleep) as target:
        ids = [(await made_user(target, f"r{i}@x.test")).id for i in range(3)]
        group = await target.create_group("removals", ids)
        emulator.reset_stats()
        with target.retries_for(("group", "removals")):
            await target.remove_members(group.id, ids[:1])
        # The filter form and its one retry, then the value list.
        assert emulator.stats()["by_status"]["500"] == 2
        assert requests(emulator, "PATCH Groups") == 3
        await target.remove_members(group.id, ids[1:2])  # the value list straight away
        assert emulator.stats()["by_status"]["500"] == 2
        assert requests(emulator, "PATCH Groups") == 4
        assert (await target.get_group(group.id)).member_ids == {ids[2]}


@pytest.mark.anyio
async def test_when_the_value_list_fails_too_the_first_failure_is_raised(
    emulator: RunningEmulator,
) -> None:
    emulator.configure(member_filter="failing")
    async with open_target(generic(emulator, max_retries=0), sleep=no_sleep) as target:
        user = await made_user(target, "v@x.test")
        group = await target.create_group("gone-soon", [user.id])
        await target.delete_group(group.id)  # the value list's PATCH meets a 404
        with pytest.raises(ServerError) as caught:
            await target.remove_members(group.id, [user.id])
    assert "evaluating the member filter" in str(caught.value)


# --- a retry budget per record per cycle ---------------------------------------------------


@pytest.mark.anyio
async def test_a_records_requests_share_one_retry_budget(emulator: RunningEmulator) -> None:
    async with open_target(generic(emulator, retries_per_record=2), sleep=no_sleep) as target:
        user = await made_user(target, "b@x.test")
        emulator.configure(fault_rate=1.0, fault_methods="writes", seed=2)
        emulator.reset_stats()
        with target.retries_for(("user", "b")):
            with pytest.raises(ServerError):
                await target.set_active(user.id, False)  # 1 attempt + the 2 retries
            with pytest.raises(ServerError):
                await target.set_active(user.id, False)  # the budget is spent: 1 attempt
        assert requests(emulator, "PATCH Users") == 4
        with target.retries_for(("user", "other")), pytest.raises(ServerError):
            await target.set_active(user.id, False)  # another record has its own budget
        assert requests(emulator, "PATCH Users") == 7
        with pytest.raises(ServerError):  # outside any record: target.max_retries (6)
            await target.set_active(user.id, False)
        assert requests(emulator, "PATCH Users") == 14


@pytest.mark.anyio
async def test_429s_spend_no_record_budget(emulator: RunningEmulator) -> None:
    async with open_target(generic(emulator, retries_per_record=0)) as target:
        emulator.configure(rate=1)  # one request a second: the second meets a 429
        user = await made_user(target, "p@x.test")
        with target.retries_for(("user", "p")):
            await target.set_active(user.id, False)  # waits out the 429, and is sent
    assert emulator.stats()["by_status"].get("429", 0) >= 1
    assert emulator.users()[0]["active"] is False
