"""Links and pushed member sets: which target object stands for which source record."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scimsync.model import Kind, LinkedGroup, LinkedUser
from scimsync.state import tables as t
from scimsync.state.base import READ_CHUNK, WRITE_CHUNK, StoreBase, _chunks
from scimsync.state.records import canonical_json
from scimsync.state.watermarks import APPROVAL

REKEYING = "\u00a7"  # a temporary source id's prefix; source ids are ASCII (guid_text)


class Links(StoreBase):
    """Which target object stands for which source record, and the member sets pushed."""

    def linked_users(self, *, with_values: bool = True) -> dict[str, LinkedUser]:
        """Every linked user; `with_values=False` leaves the pushed values out (empty), for a
        caller that reads them from the target anyway: at 100,000 users that is 100 MB."""
        query = self._user_links_query(with_values)
        with self._read() as conn:
            return {row.source_id: _user(row) for row in conn.execute(query)}

    def linked_users_by_ids(
        self, source_ids: Collection[str], *, with_values: bool = True
    ) -> dict[str, LinkedUser]:
        found: dict[str, LinkedUser] = {}
        with self._read() as conn:
            for chunk in _chunks(source_ids, READ_CHUNK):
                query = self._user_links_query(with_values).where(t.links.c.source_id.in_(chunk))
                found.update((row.source_id, _user(row)) for row in conn.execute(query))
        return found

    def linked_ids(self, kind: Kind, *, in_scope: bool | None = None) -> set[str]:
        """The source ids of every link of a kind, without loading the links; with
        `in_scope`, only the users that were (True) or were not (False) in scope."""
        query = self._links_query(kind).with_only_columns(t.links.c.source_id)
        if in_scope is not None:
            query = query.where(t.links.c.in_scope == in_scope)
        with self._read() as conn:
            return set(conn.scalars(query))

    def set_in_scope(self, source_ids: Collection[str], in_scope: bool) -> None:
        """Record that these linked users entered (True) or left (False) the user scope."""
        c = t.links.c
        with self._write() as conn:
            for chunk in _chunks(source_ids, READ_CHUNK):
                conn.execute(
                    sa.update(t.links)
                    .where(
                        c.channel_id == self._channel_id,
                        c.kind == "user",
                        c.source_id.in_(chunk),
                    )
                    .values(in_scope=in_scope)
                )

    def linked_groups(self) -> dict[str, LinkedGroup]:
        with self._read() as conn:
            heads = list(conn.execute(self._links_query(Kind.GROUP)))
            members = self._members(conn, None)
        return {row.source_id: _group(row, members.get(row.source_id, ())) for row in heads}

    def linked_groups_by_ids(self, source_ids: Collection[str]) -> dict[str, LinkedGroup]:
        found: dict[str, LinkedGroup] = {}
        with self._read() as conn:
            for chunk in _chunks(source_ids, READ_CHUNK):
                query = self._links_query(Kind.GROUP).where(t.links.c.source_id.in_(chunk))
                heads = list(conn.execute(query))
                members = self._members(conn, [row.source_id for row in heads])
                for row in heads:
                    found[row.source_id] = _group(row, members.get(row.source_id, ()))
        return found

    def linked_user_named(self, user_name: str) -> LinkedUser | None:
        """The linked user whose userName is this one (case-insensitively), if any."""
        query = self._user_links_query(False).where(
            sa.func.lower(t.links.c.name) == user_name.lower()
        )
        with self._read() as conn:
            row = conn.execute(query.limit(1)).first()
        return None if row is None else _user(row)

    def deactivated_users_named(self, user_names: Collection[str]) -> dict[str, LinkedUser]:
        """userName (lower-case) -> the linked user deactivated at the target that holds it,
        of these names (lower-case): the accounts a rehire may take over."""
        c = t.links.c
        found: dict[str, LinkedUser] = {}
        with self._read() as conn:
            for chunk in _chunks(user_names, READ_CHUNK):
                query = self._user_links_query(False).where(
                    c.active.is_(False), sa.func.lower(c.name).in_(chunk)
                )
                found.update((row.name.lower(), _user(row)) for row in conn.execute(query))
        return found

    def linked_to(self, kind: Kind, target_ids: Collection[str]) -> dict[str, str]:
        """target id -> source id, for the given target ids that are linked."""
        c = t.links.c
        found: dict[str, str] = {}
        with self._read() as conn:
            for chunk in _chunks(target_ids, READ_CHUNK):
                query = self._links_query(kind).with_only_columns(c.target_id, c.source_id)
                found.update(
                    (row.target_id, row.source_id)
                    for row in conn.execute(query.where(c.target_id.in_(chunk)))
                )
        return found

    def groups_holding(self, member_ids: Collection[str]) -> set[str]:
        """Source ids of the linked groups that hold any of these members."""
        c = t.members.c
        found: set[str] = set()
        with self._read() as conn:
            for chunk in _chunks(member_ids, READ_CHUNK):
                query = sa.select(c.group_id).distinct()
                query = query.where(c.channel_id == self._channel_id, c.member_id.in_(chunk))
                found.update(conn.scalars(query))
        return found

    def count_linked(self, kind: Kind) -> int:
        query = self._links_query(kind).with_only_columns(sa.func.count())
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def save_user(self, user: LinkedUser) -> None:
        self.save_users([user])

    def save_users(self, users: Iterable[LinkedUser]) -> None:
        """Upsert users, WRITE_CHUNK per transaction."""
        for chunk in _chunks(users, WRITE_CHUNK):
            rows = [self._user_row(user) for user in chunk]
            with self._write() as conn:
                conn.execute(self._upsert_link(), rows)

    def save_group(self, group: LinkedGroup) -> None:
        self.save_groups([group])

    def save_groups(
        self, groups: Iterable[LinkedGroup], stored: Mapping[str, frozenset[str]] | None = None
    ) -> None:
        """Upsert groups; member rows change only where the set differs from what is stored.

        `stored`: member sets the caller knows to be the stored ones (the executor read them
        this cycle), so that a 100,000-member group is not read back to change one row.
        """
        known = stored or {}
        for chunk in _chunks(groups, 100):
            with self._write() as conn:
                conn.execute(self._upsert_link(), [self._group_row(g) for g in chunk])
                unknown = [g.source_id for g in chunk if g.source_id not in known]
                read = self._members(conn, unknown) if unknown else {}
                gone: list[dict[str, Any]] = []
                new: list[dict[str, Any]] = []
                for group in chunk:
                    sid = group.source_id
                    before = known[sid] if sid in known else read.get(sid, set())
                    after = group.member_source_ids
                    gone += [self._member_row(group.source_id, m) for m in before - after]
                    new += [self._member_row(group.source_id, m) for m in after - before]
                for rows in _chunks(gone, WRITE_CHUNK):
                    conn.execute(_delete_member, rows)
                for rows in _chunks(new, WRITE_CHUNK):
                    conn.execute(self._insert(t.members).on_conflict_do_nothing(), rows)

    def forget(self, kind: Kind, source_id: str) -> None:
        """Drop a link after the object was deleted at the target."""
        links, members = t.links.c, t.members.c
        with self._write() as conn:
            conn.execute(
                sa.delete(t.links).where(
                    links.channel_id == self._channel_id,
                    links.kind == kind,
                    links.source_id == source_id,
                )
            )
            # A deleted group has no members; a deleted user is in no group any more.
            column = members.group_id if kind == "group" else members.member_id
            conn.execute(
                sa.delete(t.members).where(
                    members.channel_id == self._channel_id, column == source_id
                )
            )

    def rekey(self, new_ids: Mapping[str, str]) -> None:
        """Re-point every record from its old source id to its new one: links, pushed member
        sets (groups and members alike), failures and open intents, in one transaction.
        Ids missing from new_ids stay. The held deletions and their approval name old ids
        and are dropped: the next cycle decides again."""
        pairs = [(old, new) for old, new in new_ids.items() if old != new]
        # Through a temporary id each, so that an old id that is also another's new id
        # never meets itself: every primary key stays unique at every step.
        temporary = {old: f"{REKEYING}{n}" for n, (old, _) in enumerate(pairs)}
        steps = [[(old, temporary[old]) for old, _ in pairs]]
        steps.append([(temporary[old], new) for old, new in pairs])
        columns = [
            t.links.c.source_id,
            t.members.c.group_id,
            t.members.c.member_id,
            t.failures.c.source_id,
            t.intents.c.source_id,
        ]
        with self._write() as conn:
            for step in steps:
                for column in columns:
                    table = column.table
                    where = [table.c.channel_id == self._channel_id]
                    if "kind" in table.c and table is not t.intents:
                        # The middle column of the primary key: the index serves each row.
                        where.append(sa.or_(table.c.kind == "user", table.c.kind == "group"))
                    statement = (
                        sa.update(table)
                        .where(*where, column == sa.bindparam("b_from"))
                        .values({column.name: sa.bindparam("b_to")})
                    )
                    for chunk in _chunks(step, WRITE_CHUNK):
                        conn.execute(statement, [{"b_from": a, "b_to": b} for a, b in chunk])
            for table in (t.staged_deletions, t.watermarks):
                query = sa.delete(table).where(table.c.channel_id == self._channel_id)
                if table is t.watermarks:
                    query = query.where(t.watermarks.c.key == APPROVAL)
                conn.execute(query)

    def _upsert_link(self) -> sa.Insert:
        return self._upsert(t.links, ["channel_id", "kind", "source_id"])

    def _links_query(self, kind: Kind) -> sa.Select[Any]:
        return sa.select(t.links).where(
            t.links.c.channel_id == self._channel_id, t.links.c.kind == kind
        )

    def _user_links_query(self, with_values: bool) -> sa.Select[Any]:
        query = self._links_query(Kind.USER)
        if with_values:
            return query
        c = t.links.c
        return query.with_only_columns(c.source_id, c.target_id, c.name, c.active, c.in_scope)

    def _members(self, conn: Connection, group_ids: list[str] | None) -> dict[str, set[str]]:
        """group source_id -> stored member source_ids; all groups when group_ids is None."""
        c = t.members.c
        out: dict[str, set[str]] = {}
        base = sa.select(c.group_id, c.member_id).where(c.channel_id == self._channel_id)
        queries = (
            [base]
            if group_ids is None
            else [base.where(c.group_id.in_(ids)) for ids in _chunks(group_ids, READ_CHUNK)]
        )
        for query in queries:
            for group_id, member_id in conn.execute(query):
                # Interned: the same GUID stands in many groups and in the links.
                out.setdefault(group_id, set()).add(sys.intern(member_id))
        return out

    def _user_row(self, user: LinkedUser) -> dict[str, Any]:
        return {
            "channel_id": self._channel_id,
            "kind": "user",
            "source_id": user.source_id,
            "target_id": user.target_id,
            "name": user.user_name,
            "active": user.active,
            "values_json": canonical_json(dict(user.values)),
            "in_scope": user.in_scope,
        }

    def _group_row(self, group: LinkedGroup) -> dict[str, Any]:
        return {
            "channel_id": self._channel_id,
            "kind": "group",
            "source_id": group.source_id,
            "target_id": group.target_id,
            "name": group.display_name,
            "active": True,
            "values_json": None,
            "in_scope": True,
        }

    def _member_row(self, group_id: str, member_id: str) -> dict[str, Any]:
        return {"channel_id": self._channel_id, "group_id": group_id, "member_id": member_id}


_delete_member = sa.delete(t.members).where(
    t.members.c.channel_id == sa.bindparam("channel_id"),
    t.members.c.group_id == sa.bindparam("group_id"),
    t.members.c.member_id == sa.bindparam("member_id"),
)


def _user(row: sa.Row[Any]) -> LinkedUser:
    return LinkedUser(
        source_id=sys.intern(row.source_id),
        target_id=row.target_id,
        user_name=row.name,
        active=row.active,
        values=json.loads(row.values_json or "{}") if "values_json" in row._fields else {},
        in_scope=row.in_scope,
    )


def _group(row: sa.Row[Any], members: Iterable[str]) -> LinkedGroup:
    return LinkedGroup(
        source_id=row.source_id,
        target_id=row.target_id,
        display_name=row.name,
        member_source_ids=frozenset(members),
    )
