"""Map: the directory's records as the target should hold them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace

from scimsync import log
from scimsync.mapping import Mapper
from scimsync.model import DesiredGroup, DesiredUser, MappingFailure, SourceGroup, SourceUser

logger = log.get(__name__)


@dataclass(frozen=True, slots=True)
class Desired:
    """A view's desired records, and the users that could not be mapped."""

    users: dict[str, DesiredUser]
    groups: dict[str, DesiredGroup]
    failures: tuple[MappingFailure, ...]
    source_user_count: int | None  # None: not a full read, so no empty-directory check

    def __repr__(self) -> str:  # short, like Plan's
        return (
            f"Desired({len(self.users)} users, {len(self.groups)} groups, "
            f"{len(self.failures)} failures)"
        )


def map_users(
    sources: Iterable[SourceUser], mapper: Mapper, *, log_warnings: bool = True
) -> tuple[dict[str, DesiredUser], tuple[MappingFailure, ...]]:
    """Mapped users by source id, and those the mapping refused."""
    users: dict[str, DesiredUser] = {}
    failures: list[MappingFailure] = []
    for source in sources:
        mapped = mapper.map_user(source)
        if isinstance(mapped, MappingFailure):
            failures.append(mapped)
        else:
            users[mapped.source_id] = mapped
    if log_warnings:  # a cycle maps once with its own Mapper: one line per rule per cycle
        for line in mapper.warnings():
            logger.warning(line)
    return users, tuple(failures)


def map_groups(
    sources: Iterable[SourceGroup], mapper: Mapper, member: Callable[[str], bool]
) -> dict[str, DesiredGroup]:
    """Groups with their members limited to the users scimsync provisions."""
    groups: dict[str, DesiredGroup] = {}
    for source in sources:
        desired = mapper.map_group(source)
        members = frozenset(m for m in desired.member_source_ids if member(m))
        groups[desired.source_id] = replace(desired, member_source_ids=members)
    return groups


def unmapped_but_linked(
    failures: Iterable[MappingFailure], linked: Collection[str]
) -> frozenset[str]:
    """Linked users whose record can't be mapped now: kept as they are, never deprovisioned."""
    return frozenset(f.source_id for f in failures if f.source_id in linked)
