"""A hostile or broken target must not mislink, exhaust or kill scimsync (issue 12).

Each test points the real client at the hostile server (tests/fixtures/hostile.py), a real
HTTP server on a loopback port with one misbehaviour switched on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scimsync import config
from scimsync.target import ScimTarget, open_target
from scimsync.target.errors import (
    BrokenListing,
    InvalidResponse,
    ResponseTooLarge,
    ScimError,
    TargetUnreachable,
    Uniqueness,
)
from tests.fixtures.hostile import RunningHostile

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


async def no_wait(_seconds: float) -> None:
    await asyncio.sleep(0)


def user(name: str) -> dict[str, str | bool]:
    return {"userName": name, "emails.work": name}


# --- item 1: a looked-up row counts only when its key is the one asked for -------------


async def test_a_lost_create_is_never_linked_to_another_user(hostile: RunningHostile) -> None:
    server = hostile.server
    ceo = server.add_user("ceo@example.com")
    server.add_user("cfo@example.com")
    server.behaviour.ignore_filter = True  # every lookup answers the CEO first
    server.behaviour.lose_posts = 1  # the intern is created; the answer never arrives
    async with open_target(hostile.config(), sleep=no_wait) as target:
        # The lookup after the lost answer finds no intern among the rows it was given, the
        # resend answers 409, and the lookup after that finds none either: not the CEO.
        with pytest.raises(Uniqueness):
            await target.create_user(user("intern@example.com"), True)
    assert server.users[ceo]["userName"] == "ceo@example.com"


async def test_a_lost_group_create_is_never_linked_to_site_admins(
    hostile: RunningHostile,
) -> None:
    server = hostile.server
    server.add_group("site-admins")
    server.add_group("jira-admins")
    server.behaviour.ignore_filter = True
    server.behaviour.lose_posts = 1
    async with open_target(hostile.config(), sleep=no_wait) as target:
        with pytest.raises(Uniqueness):
            await target.create_group("new-team")


async def test_a_lost_create_is_found_when_the_lookup_answers_it(hostile: RunningHostile) -> None:
    server = hostile.server
    server.add_user("ceo@example.com")
    server.behaviour.lose_posts = 1  # the filter is honoured: the lookup finds our user
    async with open_target(hostile.config(), sleep=no_wait) as target:
        created = await target.create_user(user("intern@example.com"), True)
    assert created.user_name == "intern@example.com"
    assert [u["userName"] for u in server.users.values()].count("intern@example.com") == 1


async def test_adoption_lookups_ignore_rows_that_do_not_match(hostile: RunningHostile) -> None:
    server = hostile.server
    server.add_user("ceo@example.com", externalId="guid-ceo")
    server.add_group("site-admins")
    server.behaviour.ignore_filter = True
    async with open_target(hostile.config()) as target:
        assert await target.find_user("intern@example.com") is None
        assert await target.find_user_by_external_id("guid-intern") is None
        assert await target.find_group("new-team") is None


async def test_lookup_keys_compare_as_scim_says(hostile: RunningHostile) -> None:
    server = hostile.server
    alice = server.add_user("Alice@Example.com", externalId="Guid-A")
    team = server.add_group("Team-A")
    server.behaviour.ignore_filter = True  # the client alone decides what matches
    async with open_target(hostile.config()) as target:
        found = await target.find_user("alice@example.com")  # userName: case-insensitive
        assert found is not None and found.id == alice
        assert (await target.find_group("team-a")) is not None  # displayName too
        assert await target.find_user_by_external_id("guid-a") is None  # externalId: exact
        by_guid = await target.find_user_by_external_id("Guid-A")
        assert by_guid is not None and by_guid.id == alice
    assert team in server.groups


@pytest.mark.parametrize("bad_id", ["../Users/{ceo}", "{ceo}?x", "{ceo}#x", "..", ""])
async def test_an_id_that_would_point_a_request_elsewhere_is_refused(
    hostile: RunningHostile, bad_id: str
) -> None:
    server = hostile.server
    ceo = server.add_user("ceo@example.com")
    server.users["intern"] = {"id": bad_id.format(ceo=ceo), "userName": "intern@example.com"}
    async with open_target(hostile.config()) as target:
        with pytest.raises(InvalidResponse, match="expected a User, got an id"):
            await target.find_user("intern@example.com")
        with pytest.raises(InvalidResponse):
            await listed(target, "Users")


async def test_a_created_group_reports_the_members_the_target_kept(
    hostile: RunningHostile,
) -> None:
    server = hostile.server
    ids = [server.add_user(f"m{i}@example.com") for i in range(3)]
    server.behaviour.echo_members = True  # answers with the members asked for, keeps none
    async with open_target(hostile.config()) as target:
        group = await target.create_group("echoed", ids)
    assert group.member_ids == frozenset()
    assert server.groups[group.id]["members"] == []


# --- item 2: bounded memory and time ---------------------------------------------------


@pytest.mark.parametrize("declare_length", [True, False])
async def test_a_huge_body_is_refused_not_read(
    hostile: RunningHostile, declare_length: bool
) -> None:
    server = hostile.server
    id = server.add_user("a@example.com")
    server.behaviour.pad_to = 48 * MiB
    server.behaviour.declare_length = declare_length
    async with open_target(hostile.config(max_response_bytes=MiB)) as target:
        with pytest.raises(ResponseTooLarge) as caught:
            await target.get_user(id)
    message = str(caught.value)
    assert message.startswith(f"GET /Users/{id}: ") and "target.max_response_bytes" in message
    (exchange,) = server.find("GET /Users")
    assert exchange.body_bytes < exchange.body_size  # the client hung up: not read whole


async def test_a_gzip_bomb_is_refused_past_the_decoded_cap(hostile: RunningHostile) -> None:
    server = hostile.server
    server.behaviour.gzip_bomb = 64 * MiB  # about 64 kB on the wire
    async with open_target(hostile.config(max_response_bytes=MiB)) as target:
        with pytest.raises(ResponseTooLarge, match=r"target\.max_response_bytes"):
            await target.find_user("a@example.com")


async def test_a_body_within_the_cap_is_read(hostile: RunningHostile) -> None:
    server = hostile.server
    id = server.add_user("a@example.com")
    server.behaviour.pad_to = MiB // 2
    async with open_target(hostile.config(max_response_bytes=MiB)) as target:
        assert (await target.get_user(id)).user_name == "a@example.com"
        server.behaviour.gzip_bomb = MiB // 2  # compressed, and within the cap decoded
        assert await target.find_user("a@example.com") is None


async def test_a_drip_fed_answer_ends_at_the_request_deadline(hostile: RunningHostile) -> None:
    server = hostile.server
    id = server.add_user("a@example.com")
    # Each byte comes far within the per-read timeout; the whole answer would take ~6 s.
    server.behaviour.drip_seconds = 0.02
    server.behaviour.pad_to = 300
    config = hostile.config(timeout=1, max_retries=0)
    async with open_target(config) as target:
        with pytest.raises(TargetUnreachable) as caught:
            await target.get_user(id)
    assert "within 1 s (target.timeout)" in str(caught.value)
    assert "\n" not in str(caught.value)
    (exchange,) = server.find("GET /Users")
    assert exchange.body_bytes < exchange.body_size


async def listed(target: ScimTarget, kind: str) -> list[Any]:
    if kind == "Users":
        return [u async for u in target.iter_users()]
    return [g async for g in target.iter_groups()]


@pytest.mark.parametrize("kind", ["Users", "Groups"])
async def test_a_listing_that_never_ends_is_stopped(hostile: RunningHostile, kind: str) -> None:
    hostile.server.behaviour.listing = "endless"  # fresh objects on every page, no total
    async with open_target(hostile.config(max_listing=1000)) as target:
        with pytest.raises(BrokenListing) as caught:
            await listed(target, kind)
    assert str(caught.value).startswith(f"GET /{kind}: ")
    assert "target.max_listing" in str(caught.value)
    assert len(hostile.server.find(f"GET /{kind}")) == 11  # 1,000 listed, then one page more


async def test_a_listing_that_outgrows_its_total_is_stopped(hostile: RunningHostile) -> None:
    hostile.server.behaviour.listing = "growing"  # totalResults always one page ahead
    async with open_target(hostile.config()) as target:
        with pytest.raises(BrokenListing, match="first totalResults"):
            await listed(target, "Users")


async def test_a_repeated_page_stops_the_listing(hostile: RunningHostile) -> None:
    for i in range(5):
        hostile.server.add_user(f"r{i}@example.com")
    hostile.server.behaviour.listing = "repeat"  # startIndex ignored, none answered
    async with open_target(hostile.config()) as target:
        with pytest.raises(BrokenListing, match="repeats the one before"):
            await listed(target, "Users")


async def test_a_start_index_that_does_not_advance_stops_the_listing(
    hostile: RunningHostile,
) -> None:
    hostile.server.add_group("g")
    hostile.server.behaviour.listing = "rewind"  # always answers startIndex 1
    async with open_target(hostile.config()) as target:
        with pytest.raises(BrokenListing, match="asked for startIndex 2, the target answered 1"):
            await listed(target, "Groups")


async def test_a_total_beyond_the_maximum_stops_the_listing_at_once(
    hostile: RunningHostile,
) -> None:
    hostile.server.add_user("a@example.com")
    hostile.server.behaviour.listing = "huge_total"
    async with open_target(hostile.config()) as target:
        with pytest.raises(BrokenListing, match=r"5000000 Users, more than target\.max_listing"):
            await listed(target, "Users")


async def test_an_honest_listing_over_many_pages_is_read_whole(hostile: RunningHostile) -> None:
    ids = {hostile.server.add_user(f"h{i}@example.com") for i in range(25)}
    async with open_target(hostile.config(page_size=7, max_listing=25)) as target:
        assert {u.id for u in await listed(target, "Users")} == ids


# --- item 3: no malformed answer escapes as anything but the package's errors -----------


async def call(target: ScimTarget, what: str, id: str) -> object:
    if what == "find_user":
        return await target.find_user("a@example.com")
    if what == "get_user":
        return await target.get_user(id)
    if what == "iter_users":
        return await listed(target, "Users")
    if what == "iter_groups":
        return await listed(target, "Groups")
    if what == "create_user":
        return await target.create_user(user("new@example.com"), True)
    return await target.get_group(id)


REQUESTS = {
    "find_user": "GET /Users",
    "get_user": "GET /Users/",
    "iter_users": "GET /Users",
    "iter_groups": "GET /Groups",
    "create_user": "POST /Users",
    "get_group": "GET /Groups/",
}


@pytest.mark.parametrize(
    "malformed", ["not_json", "bad_gzip", "list", "no_id", "resources_object", "deep"]
)
@pytest.mark.parametrize("what", list(REQUESTS))
async def test_a_malformed_answer_is_an_invalid_response(
    hostile: RunningHostile, malformed: Any, what: str
) -> None:
    id = hostile.server.add_user("a@example.com")
    hostile.server.behaviour.malformed = malformed
    result: object = None
    error: ScimError | None = None
    async with open_target(hostile.config(), sleep=no_wait) as target:
        try:
            result = await call(target, what, id)
        except ScimError as exc:
            error = exc
    assert isinstance(error, InvalidResponse), f"{what} answered {result!r}"
    assert str(error).startswith(REQUESTS[what]), str(error)
    assert "\n" not in str(error)


# --- the new settings -------------------------------------------------------------------


def test_the_limits_have_defaults_and_name_their_key_when_wrong() -> None:
    raw: dict[str, Any] = {
        "source": {"url": "ldap://127.0.0.1:389", "base_dn": "dc=x", "users": {"filter": "(a=b)"}},
        "target": {"url": "http://127.0.0.1:8080/scim", "token": "t"},
    }
    loaded = config.parse(raw, "scimsync.yaml", env={})
    assert loaded.target.max_response_bytes == 64 * MiB
    assert loaded.target.max_listing == 1_000_000
    raw["target"]["max_response_bytes"] = 10
    with pytest.raises(config.ConfigError) as caught:
        config.parse(raw, "scimsync.yaml", env={})
    assert str(caught.value).startswith("scimsync.yaml: target.max_response_bytes")
    assert "\n" not in str(caught.value)
