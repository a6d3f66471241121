"""Retries, rate limits and lost responses: faults injected at the HTTP level.

Where a real server can answer, the fault transport wraps a real scim2-server and only
adds what no server produces on demand (dropped connections, lost responses, 429s).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Literal

import httpx2
import pytest

from scimsync.config import TargetConfig
from scimsync.emulator import RunningEmulator
from scimsync.target import open_target
from scimsync.target.errors import (
    RateLimited,
    RenameRefused,
    ServerError,
    TargetUnreachable,
    Uniqueness,
)
from scimsync.target.pacing import TokenBucket, retry_after
from tests.fixtures.scim2 import Scim2Tenant

pytestmark = pytest.mark.anyio

Fault = Literal["pass", "503", "refuse", "lose", "429", "empty"]


class Sleeps:
    """An injected sleep that records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


class Faulty(httpx2.AsyncBaseTransport):
    """A real transport beneath, with a fault chosen per request by `plan`."""

    def __init__(
        self, plan: Callable[[httpx2.Request], Fault], retry_after: str | None = None
    ) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.plan = plan
        self.retry_after = retry_after
        self.faults: list[Fault] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        fault = self.plan(request)
        self.faults.append(fault)
        if fault == "refuse":
            raise httpx2.ConnectError("connection refused", request=request)
        if fault == "503":
            return httpx2.Response(503, json={"status": "503", "detail": "try later"})
        if fault == "empty":  # a read that does not see a write yet (replication lag)
            return httpx2.Response(200, json={"totalResults": 0, "Resources": []})
        if fault == "429":
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return httpx2.Response(429, headers=headers, json={"status": "429"})
        response = await self.inner.handle_async_request(request)
        if fault == "lose":  # the server acted; the client never hears back
            await response.aclose()
            raise httpx2.RemoteProtocolError("server disconnected", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


# The generic profile reads these once per client: the scripts below leave them be.
DISCOVERY = ("/ServiceProviderConfig", "/Schemas")


def first_n(n: int, fault: Fault) -> Callable[[httpx2.Request], Fault]:
    """`fault` for the first n requests that are not discovery."""
    count = iter(range(1_000_000))

    def plan(request: httpx2.Request) -> Fault:
        if request.url.path.endswith(DISCOVERY):
            return "pass"
        return fault if next(count) < n else "pass"

    return plan


def scripted(script: dict[tuple[str, int], Fault]) -> Callable[[httpx2.Request], Fault]:
    """Faults for the n-th request of a method, e.g. {("POST", 1): "lose"}; discovery
    requests pass uncounted."""
    seen: dict[str, int] = {}

    def plan(request: httpx2.Request) -> Fault:
        if request.url.path.endswith(DISCOVERY):
            return "pass"
        seen[request.method] = seen.get(request.method, 0) + 1
        return script.get((request.method, seen[request.method]), "pass")

    return plan


def user(name: str) -> dict[str, str | bool]:
    return {"userName": name, "emails.work": name}


async def test_random_5xx_and_dropped_connections_are_survived(scim2: Scim2Tenant) -> None:
    rng = random.Random(7)
    faults: list[Fault] = ["503", "refuse", "lose"]

    def plan(request: httpx2.Request) -> Fault:
        return rng.choice(faults) if rng.random() < 0.3 else "pass"

    wire, sleeps = Faulty(plan), Sleeps()
    config = scim2.config(max_retries=10, max_concurrency=4)
    async with open_target(config, sleep=sleeps, transport=wire) as target:
        made = await asyncio.gather(
            *(target.create_user(user(f"f{i}@example.com"), True) for i in range(20))
        )
        group = await target.create_group("faulty", [u.id for u in made[:10]])
        await target.add_members(group.id, [u.id for u in made[10:]])
        await target.remove_members(group.id, [u.id for u in made[:5]])
        listed = [u async for u in target.iter_users()]
        final = await target.get_group(group.id)
    assert {f for f in wire.faults} >= {"503", "refuse", "lose"}
    assert len(sleeps.waits) == len(wire.faults) - wire.faults.count("pass")
    assert sorted(u.user_name for u in listed) == sorted(f"f{i}@example.com" for i in range(20))
    assert final.member_ids == {u.id for u in made[5:]}


async def test_lost_post_response_is_found_before_resending(scim2: Scim2Tenant) -> None:
    wire = Faulty(scripted({("POST", 1): "lose"}))
    async with open_target(scim2.config(), sleep=Sleeps(), transport=wire) as target:
        created = await target.create_user(user("lost@example.com"), True)
        assert target.request_counts["POST"] == 1  # the lookup found it: no resend
        assert created.user_name == "lost@example.com"
        assert [u.id async for u in target.iter_users()] == [created.id]


async def test_lost_post_response_then_409_returns_the_existing_user(scim2: Scim2Tenant) -> None:
    # The lookup before the resend misses (the write is not visible yet), the resend
    # answers 409, and the second lookup finds our own user.
    wire = Faulty(scripted({("POST", 1): "lose", ("GET", 1): "empty"}))
    async with open_target(scim2.config(), sleep=Sleeps(), transport=wire) as target:
        created = await target.create_user(user("lost@example.com"), True)
        assert target.request_counts["POST"] == 2
        assert created.user_name == "lost@example.com"
        assert [u.id async for u in target.iter_users()] == [created.id]


async def test_lost_group_post_then_409_returns_the_group_with_all_members(
    scim2: Scim2Tenant,
) -> None:
    async with open_target(scim2.config(membership_chunk_size=2)) as plain:
        ids = [(await plain.create_user(user(f"g{i}@example.com"), True)).id for i in range(3)]
    wire = Faulty(scripted({("POST", 1): "lose"}))
    config = scim2.config(membership_chunk_size=2)
    async with open_target(config, sleep=Sleeps(), transport=wire) as target:
        group = await target.create_group("lost-group", ids)
        assert group.member_ids == frozenset(ids)
        assert (await target.get_group(group.id)).member_ids == frozenset(ids)
        assert [g.id async for g in target.iter_groups()] == [group.id]


async def test_409_on_a_first_attempt_is_a_real_conflict(scim2: Scim2Tenant) -> None:
    # A refused connection means the first POST never left: its 409 is someone else's user.
    async with open_target(scim2.config()) as plain:
        await plain.create_user(user("taken@example.com"), True)
    wire = Faulty(scripted({("POST", 1): "refuse"}))
    async with open_target(scim2.config(), sleep=Sleeps(), transport=wire) as target:
        with pytest.raises(Uniqueness):
            await target.create_user(user("taken@example.com"), True)


async def test_429_storm_waits_as_retry_after_says(scim2: Scim2Tenant) -> None:
    wire, sleeps = Faulty(first_n(5, "429"), retry_after="3"), Sleeps()
    async with open_target(scim2.config(), sleep=sleeps, transport=wire) as target:
        assert await target.find_user("a@example.com") is None
    assert sleeps.waits == pytest.approx([3.0] * 5, abs=0.05)


async def test_retry_after_as_an_http_date(scim2: Scim2Tenant) -> None:
    # An HTTP date has whole seconds; the wait is that instant less the time it is read,
    # which falls between `before` and `after` however slow the machine is.
    when = (datetime.now(UTC) + timedelta(seconds=90)).replace(microsecond=0)
    wire, sleeps = (
        Faulty(first_n(1, "429"), retry_after=format_datetime(when, usegmt=True)),
        Sleeps(),
    )
    config = scim2.config(retry_max_seconds=600)
    async with open_target(config, sleep=sleeps, transport=wire) as target:
        before = datetime.now(UTC)
        assert await target.find_user("a@example.com") is None
        after = datetime.now(UTC)
    [wait] = sleeps.waits
    assert (when - after).total_seconds() <= wait <= (when - before).total_seconds()


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after("7") == 7.0
    assert retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=lambda: now) == 30.0
    assert retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now=lambda: now) == 0.0
    assert retry_after("soon") is None and retry_after(None) is None


async def test_429_beyond_the_time_budget_is_rate_limited(scim2: Scim2Tenant) -> None:
    wire, sleeps = Faulty(lambda _: "429", retry_after="50"), Sleeps()
    config = scim2.config(retry_max_seconds=120, max_retries=10)
    async with open_target(config, sleep=sleeps, transport=wire) as target:
        with pytest.raises(RateLimited) as caught:
            await target.find_user("a@example.com")
    assert sleeps.waits == pytest.approx([50.0, 50.0], abs=0.05)
    assert caught.value.status == 429


async def test_a_429_holds_back_every_request_not_only_its_own(scim2: Scim2Tenant) -> None:
    wire, sleeps = Faulty(first_n(1, "429"), retry_after="4"), Sleeps()
    config = scim2.config(max_concurrency=1)
    async with open_target(config, sleep=sleeps, transport=wire) as target:
        await target.find_user("a@example.com")
        # The pause is shared: a request made during it waits too (the clock stood still).
        await target.find_user("b@example.com")
    assert sleeps.waits == pytest.approx([4.0, 4.0], abs=0.05)


async def test_persistent_5xx_gives_up_after_max_retries_with_growing_backoff(
    scim2: Scim2Tenant,
) -> None:
    wire, sleeps = Faulty(lambda _: "503"), Sleeps()
    async with open_target(scim2.config(max_retries=4), sleep=sleeps, transport=wire) as target:
        with pytest.raises(ServerError) as caught:
            await target.get_user("x")
    assert len(sleeps.waits) == 4 and len(wire.faults) == 5
    assert all(0 < wait <= 0.5 * 2**i for i, wait in enumerate(sleeps.waits))
    assert str(caught.value) == "GET /Users/x: target answered 503: try later"


async def test_refused_connections_end_as_target_unreachable(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    config = TargetConfig(type="scim", url=url, token="t", max_retries=3)
    sleeps = Sleeps()
    async with open_target(config, sleep=sleeps) as target:
        with pytest.raises(TargetUnreachable) as caught:
            await target.get_user("a")
    assert len(sleeps.waits) == 3
    assert str(caught.value).startswith(f"target {url} unreachable: GET /Users/a:")
    assert "\n" not in str(caught.value)


async def test_timeouts_end_as_target_unreachable() -> None:
    def timeout(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=request)

    config = TargetConfig(type="scim", url="http://t.invalid", token="t", max_retries=2)
    sleeps = Sleeps()
    async with open_target(config, sleep=sleeps, transport=httpx2.MockTransport(timeout)) as target:
        with pytest.raises(TargetUnreachable, match="ReadTimeout after 3 attempts"):
            await target.get_group("g")
    assert len(sleeps.waits) == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class Stamped(httpx2.AsyncBaseTransport):
    """Records the (fake) time each request reaches the wire; answers like a real server."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.clock = clock
        self.times: list[float] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.times.append(self.clock())
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def most_in_any_second(times: list[float]) -> int:
    ordered = sorted(times)
    return max(sum(1 for t in ordered if start <= t < start + 1.0 - 1e-9) for start in ordered)


async def test_rate_limit_spaces_requests(scim2: Scim2Tenant) -> None:
    clock = FakeClock()
    wire = Stamped(clock)
    config = scim2.config(rate_limit=10)
    async with open_target(config, sleep=clock.sleep, clock=clock, transport=wire) as target:
        for i in range(24):  # and the ServiceProviderConfig, read first
            await target.find_user(f"r{i}@example.com")
    assert len(wire.times) == 25
    assert most_in_any_second(wire.times) == 10
    assert clock.now == pytest.approx(2.4)


async def test_rate_limit_holds_for_concurrent_callers() -> None:
    # The clock stands still: every caller reserves its slot at once, then sleeps to it.
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    bucket = TokenBucket(5, clock=lambda: 100.0, sleep=sleep)
    await asyncio.gather(*(bucket.acquire() for _ in range(20)))
    slots = [0.0, *waits]
    assert sorted(slots) == pytest.approx([i * 0.2 for i in range(20)])
    assert most_in_any_second(slots) == 5


def patches(emulator: RunningEmulator) -> tuple[int, int]:
    """(PATCH /Groups served, 400s answered) since the emulator's counters were reset."""
    stats = emulator.stats()
    return stats["by_resource"].get("PATCH Groups", 0), stats["by_status"].get("400", 0)


async def test_membership_removal_falls_back_to_a_value_list_and_remembers(
    emulator: RunningEmulator,
) -> None:
    emulator.configure(member_filter="refused")
    config = TargetConfig(url=emulator.url, token=emulator.token, membership_chunk_size=2)
    async with open_target(config) as target:
        a, b, c, kept = [await target.create_user(user(f"{n}@example.com"), True) for n in "abck"]
        group = await target.create_group("team", [a.id, b.id, c.id, kept.id])
        emulator.reset_stats()
        await target.remove_members(group.id, [a.id, b.id, c.id])
        # One refused filter PATCH, then both chunks as value lists: the form is remembered.
        assert patches(emulator) == (3, 1)
        assert (await target.get_group(group.id)).member_ids == {kept.id}
    async with open_target(config) as target:
        added = await target.create_user(user("n@example.com"), True)
        emulator.reset_stats()
        await target.change_members(group.id, add=[added.id], remove=[kept.id])
        # The refused filter form is retried as a value list, with the addition still in it.
        assert patches(emulator) == (2, 1)
        assert (await target.get_group(group.id)).member_ids == {added.id}


async def test_refused_rename_names_the_recreate_option(emulator: RunningEmulator) -> None:
    emulator.configure(rename="immutable")
    config = TargetConfig(url=emulator.url, token=emulator.token)
    async with open_target(config) as target:
        group = await target.create_group("old")
        with pytest.raises(RenameRefused) as caught:
            await target.rename_group(group.id, "new")
    assert caught.value.scim_type == "mutability"
    assert "options.group_rename: recreate" in str(caught.value)
    assert [g["displayName"] for g in emulator.groups()] == ["old"]
