"""The Atlassian profile against the Atlassian emulator."""

from __future__ import annotations

import uuid

import pytest

from scimsync.config import TargetConfig
from scimsync.emulator import RunningEmulator
from scimsync.target import open_target
from scimsync.target.errors import NotFound, Uniqueness

pytestmark = pytest.mark.anyio


@pytest.fixture
def atlassian(emulator: RunningEmulator) -> TargetConfig:
    return TargetConfig(type="atlassian", url=emulator.url, token=emulator.token)


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}@example.com"


async def test_email_taken_by_another_user_is_uniqueness(atlassian: TargetConfig) -> None:
    shared = unique("shared")
    async with open_target(atlassian) as target:
        await target.create_user({"userName": unique("a"), "emails.work": shared}, True)
        with pytest.raises(Uniqueness) as caught:
            await target.create_user({"userName": unique("b"), "emails.work": shared}, True)
    assert caught.value.status == 409


async def test_duplicate_group_name_is_uniqueness(atlassian: TargetConfig) -> None:
    name = unique("group")
    async with open_target(atlassian) as target:
        await target.create_group(name)
        with pytest.raises(Uniqueness):
            await target.create_group(name)


async def test_user_and_group_lifecycle(atlassian: TargetConfig) -> None:
    config = atlassian.model_copy(update={"membership_chunk_size": 2})
    async with open_target(config) as target:
        users = [
            await target.create_user({"userName": n, "emails.work": n}, True)
            for n in (unique("m1"), unique("m2"), unique("m3"))
        ]
        ids = [u.id for u in users]
        group = await target.create_group(unique("team"), ids)
        assert (await target.get_group(group.id)).member_ids == frozenset(ids)
        await target.remove_members(group.id, ids[:2])
        assert (await target.get_group(group.id)).member_ids == {ids[2]}
        await target.change_members(group.id, add=ids[:1], remove=ids[2:])  # one PATCH
        assert (await target.get_group(group.id)).member_ids == {ids[0]}
        await target.rename_group(group.id, group.display_name + "-renamed")
        assert (await target.get_group(group.id)).display_name.endswith("-renamed")
        await target.update_user(ids[0], {"userName": "ignored", "title": "Lead"})
        after = await target.get_user(ids[0])
        assert (after.user_name, after.values.get("title")) == (users[0].user_name, "Lead")
        await target.set_active(ids[0], False)
        assert (await target.get_user(ids[0])).active is False
        await target.delete_group(group.id)
        await target.delete_user(ids[1])
        await target.delete_user(ids[1])
        with pytest.raises(NotFound):
            await target.get_group(group.id)
