"""The target client against a real, independent SCIM 2.0 server (scim2-server)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest

from scimsync.target import open_target
from scimsync.target.errors import (
    InvalidFilter,
    InvalidValue,
    NotFound,
    Unauthorized,
    Uniqueness,
)
from tests.fixtures.scim2 import Scim2Tenant

pytestmark = pytest.mark.anyio

ALICE: dict[str, str | bool] = {
    "userName": "alice@example.com",
    "externalId": "guid-alice",
    "emails.work": "alice@example.com",
    "name.givenName": "Alice",
    "name.familyName": "Liddell",
    "displayName": "Alice Liddell",
    "title": "Engineer",
    "department": "R&D",
    "organization": "Example",
    "phoneNumbers.work": "+1 555 0100",
}


def user(name: str, **extra: str) -> dict[str, str | bool]:
    return {"userName": name, "emails.work": name, **extra}


async def test_user_lifecycle_round_trips_every_mapped_attribute(scim2: Scim2Tenant) -> None:
    async with open_target(scim2.config()) as target:
        created = await target.create_user(ALICE, active=True)
        assert created.values == ALICE
        assert (await target.get_user(created.id)).values == ALICE
        assert (await target.find_user("alice@example.com")) == created
        assert (await target.find_user_by_external_id("guid-alice")) == created
        assert await target.find_user("nobody@example.com") is None

        await target.update_user(
            created.id,
            {"title": "Manager", "department": "Ops", "phoneNumbers.mobile": "+1 555 0199"},
            removed={"name.givenName", "organization"},
        )
        after = await target.get_user(created.id)
        expected = dict(ALICE, title="Manager", department="Ops")
        expected["phoneNumbers.mobile"] = "+1 555 0199"
        del expected["name.givenName"], expected["organization"]
        assert after.values == expected

        await target.set_active(created.id, False)
        assert (await target.get_user(created.id)).active is False

        await target.delete_user(created.id)
        await target.delete_user(created.id)  # 404 counts as done
        with pytest.raises(NotFound):
            await target.get_user(created.id)


async def test_removing_the_only_phone_clears_phone_numbers(scim2: Scim2Tenant) -> None:
    async with open_target(scim2.config()) as target:
        created = await target.create_user(
            user("p@example.com", **{"phoneNumbers.work": "1"}), True
        )
        await target.update_user(created.id, {}, removed={"phoneNumbers.work"})
        assert "phoneNumbers.work" not in (await target.get_user(created.id)).values


async def test_groups_and_chunked_membership(scim2: Scim2Tenant) -> None:
    async with open_target(scim2.config(membership_chunk_size=3)) as target:
        ids = [(await target.create_user(user(f"u{i}@example.com"), True)).id for i in range(8)]
        group = await target.create_group("jira-users", ids[:5])  # POST 3, PATCH add 2
        assert group.member_ids == frozenset(ids[:5])
        assert (await target.get_group(group.id)).member_ids == frozenset(ids[:5])
        assert await target.find_group("jira-users") == await target.get_group(group.id)

        patches = target.request_counts["PATCH"]
        await target.add_members(group.id, ids[5:])  # 3 ids: one chunk
        await target.remove_members(group.id, ids[:7])  # 7 ids: chunks of 3, 3, 1
        assert target.request_counts["PATCH"] - patches == 1 + 3
        assert (await target.get_group(group.id)).member_ids == {ids[7]}

        await target.rename_group(group.id, "jira-software-users")
        renamed = await target.get_group(group.id)
        assert renamed.display_name == "jira-software-users"
        assert await target.find_group("jira-users") is None

        await target.delete_group(group.id)
        await target.delete_group(group.id)
        with pytest.raises(NotFound):
            await target.get_group(group.id)


async def test_members_in_and_out_of_a_group_go_in_one_patch(scim2: Scim2Tenant) -> None:
    async with open_target(scim2.config(membership_chunk_size=3)) as target:
        ids = [(await target.create_user(user(f"c{i}@example.com"), True)).id for i in range(6)]
        group = await target.create_group("confluence-users", ids[:3])
        patches = target.request_counts["PATCH"]
        await target.change_members(group.id, add=ids[3:5], remove=ids[:1])  # 3 ids: one PATCH
        assert target.request_counts["PATCH"] - patches == 1
        assert (await target.get_group(group.id)).member_ids == {*ids[1:5]}
        await target.change_members(group.id, add=ids[5:], remove=ids[1:4])  # 4 ids: 1 + 1
        assert target.request_counts["PATCH"] - patches == 3
        assert (await target.get_group(group.id)).member_ids == {ids[4], ids[5]}


async def test_recreate_group_moves_members_and_deletes_the_old(scim2: Scim2Tenant) -> None:
    async with open_target(scim2.config()) as target:
        ids = [(await target.create_user(user(f"r{i}@example.com"), True)).id for i in range(3)]
        old = await target.create_group("old-name", ids)
        new = await target.recreate_group(old, "new-name")
        assert new.id != old.id
        assert (await target.get_group(new.id)).member_ids == frozenset(ids)
        with pytest.raises(NotFound):
            await target.get_group(old.id)


async def test_paging_across_250_users_in_pages_of_at_most_100(scim2: Scim2Tenant) -> None:
    async with open_target(scim2.config(page_size=1000, max_concurrency=8)) as target:
        names = [f"page{i:03}@example.com" for i in range(250)]
        made = await asyncio.gather(*(target.create_user(user(n), True) for n in names))
        gets = target.request_counts["GET"]
        listed = [u.user_name async for u in target.iter_users()]
        # Concurrent first updates share one ServiceProviderConfig read.
        await asyncio.gather(*(target.set_active(u.id, False) for u in made[:20]))
        assert target.request_counts["GET"] - gets == 3 + 1
        assert sorted(listed) == names  # in pages of 100: page_size is capped
        assert target.last_total_results == 250


async def test_duplicate_user_name_is_uniqueness(scim2: Scim2Tenant) -> None:
    async with open_target(scim2.config()) as target:
        await target.create_user(user("dup@example.com"), True)
        with pytest.raises(Uniqueness) as caught:
            await target.create_user(user("dup@example.com"), True)
        assert caught.value.status == 409
        assert caught.value.scim_type == "uniqueness"
        assert str(caught.value).startswith("POST /Users: target answered 409 uniqueness")
        assert "\n" not in str(caught.value)


async def test_missing_objects_are_not_found(scim2: Scim2Tenant) -> None:
    async with open_target(scim2.config()) as target:
        with pytest.raises(NotFound) as caught:
            await target.get_user("no-such-id")
        assert caught.value.status == 404
        with pytest.raises(NotFound):
            await target.update_user("no-such-id", {"title": "x"})
        with pytest.raises(NotFound):
            await target.add_members("no-such-group", ["x"])


async def test_bad_filter_is_invalid_filter(scim2: Scim2Tenant) -> None:
    async with open_target(scim2.config()) as target:
        with pytest.raises(InvalidFilter) as caught:
            await target.http.send("GET", "Users", params={"filter": "userName eq"})
        assert (caught.value.status, caught.value.scim_type) == (400, "invalidFilter")


async def test_filter_values_are_escaped(scim2: Scim2Tenant) -> None:
    async with open_target(scim2.config()) as target:
        tricky = 'o"brien\\x@example.com'
        created = await target.create_user(user(tricky), True)
        assert await target.find_user(tricky) == created


async def test_wrong_token_is_one_line_without_the_token(scim2: Scim2Tenant) -> None:
    secret = "wrong-token-7d1e"
    async with open_target(scim2.config(token=secret, max_retries=5)) as target:
        with pytest.raises(Unauthorized) as caught:
            await target.find_user("a@example.com")
        # The ServiceProviderConfig, which needs no credential (RFC 7644 4), then the
        # lookup's one attempt: a 401 is never retried.
        assert target.request_counts["GET"] == 2
    message = str(caught.value)
    assert message == (
        "target rejected the API key (401): the directory API key is invalid or expired "
        "and must be rotated"
    )
    assert secret not in message and secret not in repr(caught.value)


async def test_generic_profile_puts_when_patch_is_unsupported(scim2_no_patch: Scim2Tenant) -> None:
    async with open_target(scim2_no_patch.config()) as target:
        assert (await target.service_provider_config())["patch"] == {"supported": False}
        created = await target.create_user(ALICE, True)
        ids = [(await target.create_user(user(f"n{i}@example.com"), True)).id for i in range(3)]
        group = await target.create_group("no-patch", ids[:1])
        await target.update_user(created.id, {"title": "Boss"}, removed={"department"})
        await target.set_active(created.id, False)
        await target.add_members(group.id, ids[1:])
        await target.remove_members(group.id, ids[:1])
        await target.rename_group(group.id, "no-patch-2")
        assert target.request_counts["PATCH"] == 0
        after = await target.get_user(created.id)
        assert after.values["title"] == "Boss" and "department" not in after.values
        assert after.values["organization"] == "Example" and after.active is False
        final = await target.get_group(group.id)
        assert (final.display_name, final.member_ids) == ("no-patch-2", frozenset(ids[1:]))


async def test_atlassian_profile_never_sends_user_name_in_updates(scim2: Scim2Tenant) -> None:
    async with open_target(scim2.config(type="atlassian")) as target:
        created = await target.create_user(user("keep@example.com"), True)
        await target.update_user(created.id, {"userName": "changed@example.com", "title": "T"})
        after = await target.get_user(created.id)
        assert (after.user_name, after.values["title"]) == ("keep@example.com", "T")
        patches = target.request_counts["PATCH"]
        await target.update_user(created.id, {"userName": "again@example.com"})
        assert target.request_counts["PATCH"] == patches  # nothing left to send


async def test_atlassian_profile_refuses_users_without_email_before_sending(
    scim2: Scim2Tenant,
) -> None:
    async with open_target(scim2.config(type="atlassian")) as target:
        with pytest.raises(InvalidValue, match=r"emails\.work is required"):
            await target.create_user({"userName": "noemail"}, True)
        created = await target.create_user(user("e@example.com"), True)
        with pytest.raises(InvalidValue, match=r"emails\.work cannot be cleared"):
            await target.update_user(created.id, {}, removed={"emails.work"})
        assert target.request_counts["POST"] == 1 and target.request_counts["PATCH"] == 0


class InFlight(httpx2.AsyncBaseTransport):
    """Counts requests in flight at the real transport beneath it."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.now = 0
        self.peak = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await self.inner.handle_async_request(request)
        finally:
            self.now -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_requests_in_flight_never_exceed_max_concurrency(scim2: Scim2Tenant) -> None:
    wire = InFlight()
    async with open_target(scim2.config(max_concurrency=3), transport=wire) as target:
        results: list[Any] = await asyncio.gather(
            *(target.find_user(f"x{i}@example.com") for i in range(30))
        )
    assert results == [None] * 30
    assert wire.peak == 3
