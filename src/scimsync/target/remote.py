"""What the cycle sees of the target: remote objects and the Target interface."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Hashable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from scimsync.model import ScimValues


@dataclass(frozen=True)
class RemoteUser:
    id: str
    user_name: str
    active: bool
    values: dict[str, str | bool]


@dataclass(frozen=True)
class RemoteGroup:
    id: str
    display_name: str
    member_ids: frozenset[str]


class Target(Protocol):
    """A SCIM service provider, as the cycle reads it and the executor writes to it.

    Implementations (target.scim, target.atlassian) retry what may be retried and raise
    the target package's errors only: a RecordError fails one record, a CycleError (an
    unreachable target, a refused key, a broken listing) the cycle. `find_*` return only
    an object whose key equals the one asked for, or None; `iter_*` list every object,
    page by page. Requests inside `retries_for(record)` share that record's retry budget
    for the cycle. Only what the cycle and the executor call: the implementations have more
    (the service provider's configuration for `check`, single-sided member changes).
    """

    async def find_user(self, user_name: str) -> RemoteUser | None: ...
    async def find_user_by_external_id(self, external_id: str) -> RemoteUser | None: ...
    async def find_group(self, display_name: str) -> RemoteGroup | None: ...
    async def get_user(self, id: str) -> RemoteUser: ...
    async def get_group(self, id: str) -> RemoteGroup: ...
    async def group_members(self, id: str) -> frozenset[str]: ...
    def iter_users(self) -> AsyncIterator[RemoteUser]: ...
    def iter_groups(self) -> AsyncIterator[RemoteGroup]: ...
    async def create_user(self, values: ScimValues, active: bool) -> RemoteUser: ...
    async def update_user(
        self, id: str, changed: ScimValues, removed: Collection[str] = ()
    ) -> None: ...
    async def rename_user(self, id: str, user_name: str) -> None: ...
    async def set_active(self, id: str, active: bool) -> None: ...
    async def delete_user(self, id: str) -> None: ...
    async def create_group(
        self, display_name: str, member_ids: Collection[str] = ()
    ) -> RemoteGroup: ...
    async def rename_group(self, id: str, display_name: str) -> None: ...
    async def recreate_group(self, old: RemoteGroup, display_name: str) -> RemoteGroup: ...
    async def change_members(
        self, group_id: str, *, add: Collection[str] = (), remove: Collection[str] = ()
    ) -> None: ...
    async def delete_group(self, id: str) -> None: ...
    def retries_for(self, record: Hashable) -> AbstractContextManager[None]: ...
