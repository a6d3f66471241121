"""The state store against real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from scimsync.model import Kind, LinkedGroup, LinkedUser
from scimsync.retry import Attempt, is_due
from scimsync.state import (
    Approval,
    AuditRecord,
    ChannelLocked,
    StateError,
    Store,
    base,
    fingerprint,
    held_digest,
    journal,
)
from scimsync.state.connect import create_engine, safe_url
from scimsync.state.locking import lock_file_path
from scimsync.state.migrate import VERSION_TABLE, alembic_config, current_revision, head_revision
from scimsync.state.tables import metadata

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(store_url: str, clock: Clock) -> Iterator[Store]:
    with Store.open(store_url, "main", clock=clock) as opened:
        yield opened


def user(source_id: str, name: str = "", active: bool = True, **values: str | bool) -> LinkedUser:
    name = name or f"{source_id}@example.com"
    return LinkedUser(source_id, f"t-{source_id}", name, active, {"userName": name, **values})


# -- schema ------------------------------------------------------------------


def test_migrates_an_empty_database_and_reopens_without_changes(store_url: str) -> None:
    Store.open(store_url, "main").close()
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert context.get_current_revision() == head_revision()
            # The hand-written migration and tables.py describe the same schema.
            assert compare_metadata(context, metadata) == []
            tables = set(sa.inspect(conn).get_table_names())
        assert {"links", "members", "runs", "audit", "intents", "failures"} <= tables
        with Store.open(store_url, "main") as again:
            again.save_user(user("u1"))
            assert again.count_linked(Kind.USER) == 1
    finally:
        engine.dispose()


def test_revision_0004_drops_links_fingerprint_and_keeps_the_links(store_url: str) -> None:
    """A store written by revision 0003 (a fingerprint per user) opens with its links."""
    row = {
        "channel_id": 1, "kind": "user", "source_id": "u1", "target_id": "t-u1",
        "name": "u1@example.com", "active": True,
        "values_json": '{"userName":"u1@example.com"}', "fingerprint": "0" * 32,
    }  # fmt: skip
    links_0003 = sa.table("links", *(sa.column(name) for name in row))
    engine = create_engine(sa.make_url(store_url))
    try:
        with engine.connect() as conn, conn.begin():
            command.upgrade(alembic_config(conn), "0003")
            conn.execute(sa.text("INSERT INTO channels (name) VALUES ('main')"))
            conn.execute(sa.insert(links_0003).values(row))
        with Store.open(store_url, "main") as store:  # migrates to the newest revision
            assert store.linked_users() == {"u1": user("u1")}
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("links")}
    finally:
        engine.dispose()
    assert "fingerprint" not in columns and "values_json" in columns


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store.open(f"sqlite:///{path}", "main").close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_in_memory_sqlite_keeps_its_data_for_the_store_lifetime() -> None:
    with Store.open("sqlite://", "main") as store:
        store.save_user(user("u1"))
        assert list(store.linked_users()) == ["u1"]


# -- links -------------------------------------------------------------------


def test_save_user_inserts_then_updates_in_place(store: Store) -> None:
    store.save_user(user("u1", title="Engineer"))
    store.save_user(user("u2"))
    store.save_user(user("u1", "alice@example.com", active=False, title="Manager"))

    users = store.linked_users()
    assert set(users) == {"u1", "u2"}
    assert users["u1"] == LinkedUser(
        "u1",
        "t-u1",
        "alice@example.com",
        False,
        {"userName": "alice@example.com", "title": "Manager"},
    )
    assert store.count_linked(Kind.USER) == 2
    assert store.count_linked(Kind.GROUP) == 0
    assert store.linked_users_by_ids(["u2", "missing"]) == {"u2": users["u2"]}
    assert store.linked_ids(Kind.USER) == {"u1", "u2"}
    bare = store.linked_users(with_values=False)["u1"]
    assert (bare.target_id, bare.user_name, bare.active, bare.values) == (
        "t-u1",
        "alice@example.com",
        False,
        {},
    )
    assert store.linked_ids(Kind.GROUP) == set()

    store.forget(Kind.USER, "u1")
    assert set(store.linked_users()) == {"u2"}


def test_values_keep_booleans_and_unicode(store: Store) -> None:
    values: dict[str, str | bool] = {
        "displayName": "Zoë Ångström",
        "emails.work": "z@example.com",
        "active": False,
    }
    store.save_user(LinkedUser("u1", "t1", "zoe", True, values))
    assert store.linked_users()["u1"].values == values


def test_fingerprint_ignores_key_order_and_sees_any_change() -> None:
    assert fingerprint({"a": "1", "b": True}) == fingerprint({"b": True, "a": "1"})
    assert fingerprint({"a": "1"}) != fingerprint({"a": "2"})
    assert fingerprint({"a": True}) != fingerprint({"a": "true"})
    assert len(fingerprint({})) == 32


def test_batch_save_and_lookup_by_many_ids(store: Store) -> None:
    store.save_users(user(f"u{i}") for i in range(2500))
    assert store.count_linked(Kind.USER) == 2500
    wanted = [f"u{i}" for i in range(0, 2500, 2)]
    found = store.linked_users_by_ids(wanted)
    assert sorted(found) == sorted(wanted)
    assert found["u42"].user_name == "u42@example.com"


class MemberWrites:
    """Counts the member rows each statement writes, as sent to the database driver."""

    def __init__(self) -> None:
        self.inserted = 0
        self.deleted = 0
        self.read = 0

    def __call__(
        self,
        _conn: object,
        _cursor: object,
        statement: str,
        parameters: object,
        _context: object,
        executemany: bool,
    ) -> None:
        rows = len(parameters) if executemany and isinstance(parameters, list) else 1
        text = " ".join(statement.split()).upper()
        if text.startswith("INSERT INTO MEMBERS"):
            self.inserted += rows
        elif text.startswith("DELETE FROM MEMBERS"):
            self.deleted += rows
        elif text.startswith("SELECT MEMBERS.GROUP_ID, MEMBERS.MEMBER_ID"):
            self.read += 1


@pytest.fixture
def member_writes() -> Iterator[MemberWrites]:
    counter = MemberWrites()
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", counter)
    try:
        yield counter
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", counter)


def test_group_member_changes_write_only_the_difference(
    store: Store, member_writes: MemberWrites
) -> None:
    first = frozenset(f"u{i}" for i in range(3000))
    store.save_group(LinkedGroup("g1", "tg1", "Engineers", first))
    store.save_group(LinkedGroup("g2", "tg2", "Others", frozenset({"u1"})))
    assert member_writes.inserted == 3001

    second = (first - {"u0", "u1"}) | {"x1", "x2", "x3"}
    member_writes.inserted = member_writes.read = 0
    store.save_group(LinkedGroup("g1", "tg1", "Engineering", second))
    assert (member_writes.inserted, member_writes.deleted, member_writes.read) == (3, 2, 1)

    groups = store.linked_groups()
    assert groups["g1"] == LinkedGroup("g1", "tg1", "Engineering", second)
    assert groups["g2"].member_source_ids == {"u1"}
    assert store.linked_groups_by_ids(["g2"]) == {"g2": groups["g2"]}
    assert store.count_linked(Kind.GROUP) == 2
    assert store.groups_holding(["u1", "x1"]) == {"g2", "g1"}
    assert store.groups_holding(["u2999"]) == {"g1"}
    assert store.groups_holding(["u0", "nobody"]) == set()  # u0 left g1

    # A caller that knows the stored set (the executor does) spares the read-back.
    member_writes.inserted = member_writes.read = 0
    store.save_groups([LinkedGroup("g1", "tg1", "Engineering", second | {"x4"})], {"g1": second})
    assert (member_writes.inserted, member_writes.read) == (1, 0)
    assert store.linked_groups()["g1"].member_source_ids == second | {"x4"}


def test_forget_drops_a_group_members_and_a_user_memberships(store: Store) -> None:
    store.save_users([user("u1"), user("u2")])
    store.save_group(LinkedGroup("g1", "tg1", "A", frozenset({"u1", "u2"})))
    store.save_group(LinkedGroup("g2", "tg2", "B", frozenset({"u2"})))

    store.forget(Kind.USER, "u2")
    groups = store.linked_groups()
    assert groups["g1"].member_source_ids == {"u1"}
    assert groups["g2"].member_source_ids == frozenset()

    store.forget(Kind.GROUP, "g1")
    assert store.groups_holding(["u1"]) == set()  # the group's member rows went with it
    store.save_group(LinkedGroup("g1", "tg1-new", "A", frozenset()))
    assert store.linked_groups()["g1"].member_source_ids == frozenset()


def test_forget_keeps_the_other_kind_and_other_channels(store_url: str) -> None:
    """Source ids are unique per kind and channel only: with guid_attribute cn, user "admin"
    may be in group "admin", and every channel of one directory has the same ids."""
    admins = LinkedGroup("admin", "tg-admin", "admin", frozenset({"admin"}))
    with Store.open(store_url, "prod") as prod, Store.open(store_url, "test") as test:
        for store in (prod, test):
            store.save_user(user("admin"))
            store.save_group(admins)

        prod.forget(Kind.USER, "admin")
        assert prod.linked_users() == {}
        assert prod.linked_groups() == {
            "admin": LinkedGroup("admin", "tg-admin", "admin", frozenset())
        }
        prod.forget(Kind.GROUP, "admin")
        assert prod.linked_groups() == {}
        assert test.linked_users() == {"admin": user("admin")}
        assert test.linked_groups() == {"admin": admins}


def test_linked_user_named_ignores_case(store: Store) -> None:
    store.save_users([user("u1", "Alice@Example.com", title="Engineer"), user("u2")])
    # The pushed values are left out: the caller wants the target account only.
    assert store.linked_user_named("alice@EXAMPLE.com") == LinkedUser(
        "u1", "t-u1", "Alice@Example.com", True, {}
    )
    found = store.linked_user_named("u2@example.com")
    assert found is not None and found.target_id == "t-u2"
    assert store.linked_user_named("carol@example.com") is None


def test_rekey_repoints_every_record_and_drops_what_names_old_ids(
    store_url: str, clock: Clock
) -> None:
    """u1 and u2 swap ids (each old id is the other's new one), g1 gets a new one, g2 and
    u3 keep theirs; another channel with the same ids is left alone."""

    def everything(store: Store) -> tuple[object, ...]:
        return (
            store.linked_users(),
            store.linked_groups(),
            store.failures(),
            store.open_intents(),
            store.staged_deletions(),
            store.approval(),
            store.watermark("users"),
        )

    with (
        Store.open(store_url, "prod", clock=clock) as prod,
        Store.open(store_url, "test", clock=clock) as test,
    ):
        for store in (prod, test):
            store.save_users([user("u1"), user("u2"), user("u3")])
            store.save_group(LinkedGroup("g1", "tg1", "A", frozenset({"u1", "u3"})))
            store.save_group(LinkedGroup("g2", "tg2", "B", frozenset({"u2", "g1"})))
            store.record_failure(
                Attempt(Kind.USER, "u1", "u1@example.com", "update", "500", "fp"),
                now=T0,
                max_retries=5,
            )
            store.record_failure(
                Attempt(Kind.GROUP, "g1", "A", "update", "500", "fp"), now=T0, max_retries=5
            )
            cycle = store.begin_run("full")
            store.intend_many(
                cycle, [("update", Kind.USER, "u2", "b"), ("update", Kind.GROUP, "g1", "A")]
            )
            store.stage_deletions(cycle, [{"action": "delete", "kind": "user", "source_id": "u3"}])
            store.approve_held()
            store.set_watermark("users", "w1")
        untouched = everything(test)

        prod.rekey({"u1": "u2", "u2": "u1", "g1": "G1", "u3": "u3"})

        users = {sid: (u.target_id, u.user_name) for sid, u in prod.linked_users().items()}
        assert users == {
            "u2": ("t-u1", "u1@example.com"),
            "u1": ("t-u2", "u2@example.com"),
            "u3": ("t-u3", "u3@example.com"),
        }
        assert prod.linked_groups() == {
            "G1": LinkedGroup("G1", "tg1", "A", frozenset({"u2", "u3"})),
            "g2": LinkedGroup("g2", "tg2", "B", frozenset({"u1", "G1"})),
        }
        failures = prod.failures()
        assert set(failures) == {("user", "u2"), ("group", "G1")}
        assert failures[(Kind.USER, "u2")].name == "u1@example.com"
        intents = [(i.kind, i.source_id, i.name) for i in prod.open_intents()]
        assert intents == [("user", "u1", "b"), ("group", "G1", "A")]
        # The held operations and their approval named old ids: the next cycle decides again.
        assert prod.staged_deletions() == [] and prod.approval() is None
        assert prod.watermark("users") == "w1"
        assert everything(test) == untouched


# -- runs and audit ----------------------------------------------------------


def test_runs_newest_first_with_results_and_summary(store: Store, clock: Clock) -> None:
    first = store.begin_run("full")
    clock.advance(seconds=30)
    store.finish_run(first, "ok", {"create": 3, "update": 1})
    clock.advance(minutes=1)
    second = store.begin_run("incremental")

    runs = store.runs()
    assert [r.cycle_id for r in runs] == [second, first]
    assert len(first) == 32 and first != second
    assert runs[1].mode == "full"
    assert runs[1].started_at == T0
    assert runs[1].finished_at == T0 + timedelta(seconds=30)
    assert runs[1].result == "ok"
    assert runs[1].summary == {"create": 3, "update": 1}
    assert runs[0].result is None and runs[0].finished_at is None
    assert store.runs(limit=1) == runs[:1]


def test_audit_log_since_and_limit(store: Store, clock: Clock) -> None:
    cycle = store.begin_run("full")
    store.audit(cycle, "create", Kind.USER, "u1", "t1", True, name="alice")
    clock.advance(minutes=5)
    store.audit(cycle, "update", Kind.USER, "u2", "t2", False, cause="HTTP 400: bad email")
    clock.advance(minutes=5)
    store.audit(cycle, "create", Kind.GROUP, "g1", None, True)

    everything = store.audit_log()
    assert [(a.event, a.source_id) for a in everything] == [
        ("create", "u1"),
        ("update", "u2"),
        ("create", "g1"),
    ]
    assert everything[0] == AuditRecord(
        cycle, T0, "create", Kind.USER, "u1", "t1", True, None, "alice"
    )
    assert everything[1].success is False and everything[1].cause == "HTTP 400: bad email"

    since = store.audit_log(since=T0 + timedelta(minutes=5))
    assert [a.source_id for a in since] == ["u2", "g1"]
    assert [a.source_id for a in store.audit_log(limit=2)] == ["u2", "g1"]
    assert store.audit_log(since=T0 + timedelta(hours=1)) == []


RETENTION = timedelta(days=400)


def finished_run(store: Store, mode: str = "full") -> str:
    cycle = store.begin_run(mode)
    store.finish_run(cycle, "ok", {})
    return cycle


def test_prune_deletes_old_audit_and_runs_and_keeps_what_is_read(
    store: Store, clock: Clock
) -> None:
    """Now is day 500; 400 days of retention put the cutoff at day 100."""

    def on_day(day: float) -> None:
        clock.now = T0 + timedelta(days=day)

    old = finished_run(store)
    store.audit(old, "create", Kind.USER, "u1", "t1", True, name="alice")
    crashed = store.begin_run("full")  # its process died: never finished
    held = finished_run(store)
    store.stage_deletions(held, [{"action": "delete", "kind": "user", "source_id": "u5"}])
    interrupted = finished_run(store)
    store.intend_many(interrupted, [("create", Kind.USER, "u6", "fay")])
    on_day(50)
    spanning, _ = store.count_cycle("quiet", "ok")
    on_day(150)
    assert store.count_cycle("quiet", "ok") == (spanning, False)  # quiet from day 50 to 150
    on_day(100 - 1 / 24)
    last_old = finished_run(store)
    store.audit(last_old, "update", Kind.USER, "u2", "t2", False, cause="HTTP 500")
    ends_at_cutoff = store.begin_run("full")  # began before the cutoff, finished at it
    on_day(100)  # at the cutoff, not older
    store.finish_run(ends_at_cutoff, "ok", {})
    boundary = finished_run(store)
    store.audit(boundary, "update", Kind.USER, "u3", "t3", True)
    on_day(500)
    store.audit(finished_run(store), "create", Kind.GROUP, "g1", None, True)
    cutoff = clock.now - RETENTION
    assert cutoff == T0 + timedelta(days=100)
    kept_window = store.audit_log(since=cutoff)

    assert store.prune(cutoff) == (2, 2)

    assert store.audit_log() == kept_window
    assert store.audit_log(since=cutoff) == kept_window
    assert [a.source_id for a in kept_window] == ["u3", "g1"]
    kept = {r.cycle_id for r in store.runs(limit=100)}
    assert {old, last_old} & kept == set()
    assert {crashed, held, interrupted, spanning, ends_at_cutoff, boundary} <= kept
    assert len(kept) == 7
    assert store.prune(cutoff) == (0, 0)  # nothing left to do, and nothing else goes


def test_prune_keeps_the_newest_run_however_old(store: Store, clock: Clock) -> None:
    finished_run(store)
    clock.advance(minutes=1)
    newest = finished_run(store)
    clock.advance(days=1000)
    assert store.prune(clock.now - RETENTION) == (0, 1)
    assert [r.cycle_id for r in store.runs()] == [newest]


def test_prune_goes_by_chunks_and_stops_between_them(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "PRUNE_CHUNK", 3)
    cycle = finished_run(store)
    store.audit_many(
        AuditRecord(cycle, T0 + timedelta(minutes=i), "update", Kind.USER, f"u{i}", None, True)
        for i in range(10)
    )
    clock.advance(days=500)
    asked: list[int] = []

    def stop_after_one_chunk() -> bool:
        asked.append(len(store.audit_log()))
        return len(asked) > 1

    assert store.prune(clock.now - RETENTION, should_stop=stop_after_one_chunk) == (3, 0)
    assert asked == [10, 7, 7]  # before each audit chunk, then before the runs
    assert store.prune(clock.now - RETENTION) == (7, 0)  # 3 + 3 + 1: until a chunk falls short
    assert store.audit_log() == []


def test_prune_keeps_other_channels_rows(store_url: str, clock: Clock) -> None:
    with (
        Store.open(store_url, "prod", clock=clock) as prod,
        Store.open(store_url, "test", clock=clock) as test,
    ):
        for store in (prod, test):
            finished_run(store)
            store.audit(finished_run(store), "create", Kind.USER, "u1", "t1", True)
        clock.advance(days=500)
        assert prod.prune(clock.now - RETENTION) == (1, 1)
        assert len(test.audit_log()) == 1 and len(test.runs()) == 2


def test_prune_chunks_count_this_channel_s_rows_only(
    store_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "PRUNE_CHUNK", 2)
    with (
        Store.open(store_url, "prod", clock=clock) as prod,
        Store.open(store_url, "test", clock=clock) as test,
    ):
        for i in range(3):  # test's old entries come first
            test.audit("c", "update", Kind.USER, f"t{i}", None, True)
            clock.advance(minutes=1)
        prod.audit("c", "update", Kind.USER, "p", None, True)
        clock.advance(days=500)
        assert prod.prune(clock.now - RETENTION) == (1, 0)
        assert len(test.audit_log()) == 3


def test_runs_are_the_newest_ten_unless_asked_and_carry_their_counts(
    store: Store, clock: Clock
) -> None:
    cycles = []
    for _ in range(12):
        cycles.append(finished_run(store))
        clock.advance(minutes=1)
    assert [r.cycle_id for r in store.runs()] == cycles[::-1][:10]
    assert len(store.runs(limit=12)) == 12
    quiet, _ = store.count_cycle("quiet", "ok")
    store.count_cycle("quiet", "ok")
    assert (store.runs(1)[0].cycle_id, store.runs(1)[0].cycles) == (quiet, 2)


def test_deactivated_users_named_finds_only_inactive_links_of_this_channel(
    store_url: str,
) -> None:
    with Store.open(store_url, "prod") as prod, Store.open(store_url, "test") as test:
        prod.save_users([user("u1", "Ann@X.com", active=False, title="t"), user("u2", "bo@x.com")])
        test.save_users([user("u3", "cy@x.com", active=False)])
        found = prod.deactivated_users_named(["ann@x.com", "bo@x.com", "cy@x.com", "zed@x.com"])
        assert found == {"ann@x.com": LinkedUser("u1", "t-u1", "Ann@X.com", False, {})}
        assert prod.deactivated_users_named([]) == {}


def test_done_drops_only_the_intent_of_that_action_in_this_channel(store_url: str) -> None:
    with Store.open(store_url, "prod") as prod, Store.open(store_url, "test") as test:
        for store in (prod, test):
            store.intend_many(
                "c", [("create", Kind.USER, "u1", "a"), ("update", Kind.USER, "u1", "a")]
            )
        prod.done_many("c", [("create", Kind.USER, "u1")])
        assert [i.action for i in prod.open_intents()] == ["update"]
        assert len(test.open_intents()) == 2


def test_the_audit_log_of_one_cycle_newest_last(store: Store, clock: Clock) -> None:
    first, second = store.begin_run("full"), store.begin_run("full")
    store.audit(second, "create", Kind.USER, "late", None, True)
    clock.advance(minutes=-5)  # an entry written later may carry an earlier time
    store.audit(first, "create", Kind.USER, "early", None, True)
    clock.advance(minutes=10)
    store.audit(second, "update", Kind.USER, "late", None, True)
    assert [a.event for a in store.audit_log(cycle_id=second)] == ["create", "update"]
    assert [a.source_id for a in store.audit_log()] == ["early", "late", "late"]


def test_lookups_by_more_ids_than_a_statement_may_bind_are_chunked(store: Store) -> None:
    """PostgreSQL binds at most 65,535 parameters a statement (its wire protocol's 16-bit
    count): a directory of 70,000 users looked up at once must be split, never refused."""
    store.save_users([user("u1")])
    store.save_group(LinkedGroup("g1", "tg1", "G", frozenset({"u1"})))
    many = [f"x{i}" for i in range(70_000)]
    assert store.linked_users_by_ids([*many, "u1"]).keys() == {"u1"}
    assert store.linked_groups_by_ids([*many, "g1"]).keys() == {"g1"}
    assert store.linked_to(Kind.USER, [*many, "t-u1"]) == {"t-u1": "u1"}
    assert store.groups_holding([*many, "u1"]) == {"g1"}
    assert store.deactivated_users_named(many) == {}
    store.set_in_scope([*many, "u1"], False)
    assert store.linked_ids(Kind.USER, in_scope=False) == {"u1"}


def test_a_user_s_scope_flag_is_stored_per_user_and_channel(store_url: str) -> None:
    with Store.open(store_url, "prod") as prod, Store.open(store_url, "test") as test:
        for store in (prod, test):
            store.save_users([user("u1"), user("u2")])
            store.save_group(LinkedGroup("u1", "tg", "G", frozenset()))  # a group, same id
        prod.set_in_scope(["u1"], False)
        assert prod.linked_users()["u1"].in_scope is False
        assert prod.linked_users()["u2"].in_scope is True
        assert test.linked_ids(Kind.USER, in_scope=False) == set()
        prod.save_users([replace(user("u3"), in_scope=False)])
        assert prod.linked_users_by_ids(["u3"])["u3"].in_scope is False
        assert prod.linked_users(with_values=False)["u3"].in_scope is False


def test_saving_several_groups_at_once_keeps_each_one_s_removals(store: Store) -> None:
    store.save_groups(
        [
            LinkedGroup("g1", "t1", "A", frozenset({"u1", "u2"})),
            LinkedGroup("g2", "t2", "B", frozenset({"u3", "u4"})),
        ]
    )
    store.save_groups(
        [
            LinkedGroup("g1", "t1", "A", frozenset({"u1"})),
            LinkedGroup("g2", "t2", "B", frozenset({"u3"})),
        ]
    )
    assert {sid: g.member_source_ids for sid, g in store.linked_groups().items()} == {
        "g1": {"u1"},
        "g2": {"u3"},
    }


def test_clearing_watermarks_keeps_the_ones_asked_for(store: Store) -> None:
    for key in ("users", "groups", "approval"):
        store.set_watermark(key, "w")
    store.clear_watermarks(keep=("approval",))
    assert [store.watermark(k) for k in ("users", "groups", "approval")] == [None, None, "w"]


def test_a_failure_with_no_cause_is_stored_with_an_empty_one(store: Store) -> None:
    store.record_failure(Attempt(Kind.USER, "u1", "a", "create", "", "fp"), now=T0, max_retries=5)
    assert store.failures()[(Kind.USER, "u1")].cause == ""


def test_times_must_carry_a_zone(store: Store) -> None:
    naive = datetime(2026, 1, 1)  # the point of the test
    with pytest.raises(ValueError, match=r"^the state store takes timezone-aware datetimes only$"):
        store.audit_log(since=naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record_failure(
            Attempt(Kind.USER, "u1", "a", "create", "500", "fp"), now=naive, max_retries=5
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        store.prune(naive)


def test_audit_from_several_threads_loses_nothing(store: Store) -> None:
    cycle = store.begin_run("full")

    def write(worker: int) -> None:
        for i in range(25):
            store.audit(cycle, "update", Kind.USER, f"w{worker}-{i}", None, True)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.audit_log()) == 100


# -- crash safety ------------------------------------------------------------


def test_intents_left_open_by_a_crash_survive_a_reopen(store_url: str, clock: Clock) -> None:
    with Store.open(store_url, "main", clock=clock) as store:
        cycle = store.begin_run("full")
        store.intend_many(cycle, [("create", Kind.USER, "u1", "alice")])
        store.done_many(cycle, [("create", Kind.USER, "u1")])
        store.intend_many(cycle, [("delete", Kind.GROUP, "g9", "Old group")])
        # The process "dies" here: no done_many() for the second intent.

    with Store.open(store_url, "main") as reopened:
        [left] = reopened.open_intents()
        assert (left.cycle_id, left.action, left.kind, left.source_id, left.name) == (
            cycle,
            "delete",
            "group",
            "g9",
            "Old group",
        )
        assert left.at == T0
        reopened.forget_intents()
        assert reopened.open_intents() == []


def test_intents_by_the_chunk(store: Store) -> None:
    cycle = store.begin_run("full")
    store.intend_many(cycle, [("create", Kind.USER, f"u{i}", f"user {i}") for i in range(3)])
    store.intend_many(cycle, [("delete", Kind.GROUP, "g1", "old")])
    store.done_many(cycle, [("create", Kind.USER, "u0"), ("create", Kind.USER, "u2")])
    store.done_many("another-cycle", [("delete", Kind.GROUP, "g1")])  # not this cycle's
    left = sorted((i.action, i.source_id) for i in store.open_intents())
    assert left == [("create", "u1"), ("delete", "g1")]


# -- failures ----------------------------------------------------------------


def test_failures_back_off_then_quarantine(store: Store) -> None:
    def fail(now: datetime, fp: str = "fp1") -> None:
        store.record_failure(
            Attempt(Kind.USER, "u1", "alice", "update", "HTTP 500", fp), now=now, max_retries=3
        )

    fail(T0)
    first = store.failures()[(Kind.USER, "u1")]
    assert (first.attempts, first.quarantined) == (1, False)
    assert first.next_retry_at == T0 + timedelta(minutes=1)
    assert not is_due(first, T0 + timedelta(seconds=59))
    assert is_due(first, T0 + timedelta(minutes=1))
    assert is_due(first, T0, source_fingerprint="changed")

    fail(T0 + timedelta(minutes=1))
    second = store.failures()[(Kind.USER, "u1")]
    assert second.attempts == 2
    assert second.next_retry_at == T0 + timedelta(minutes=3)
    assert second.first_failed_at == T0

    record = store.record_failure(
        Attempt(Kind.USER, "u1", "alice", "update", "HTTP 500 again", "fp1"),
        now=T0 + timedelta(minutes=3),
        max_retries=3,
    )
    assert (record.attempts, record.quarantined) == (3, True)
    assert record.next_retry_at == T0 + timedelta(minutes=3 + 4)
    assert store.failures()[(Kind.USER, "u1")] == record
    assert not is_due(record, T0 + timedelta(days=30))

    # The source object changed: a fresh start.
    fail(T0 + timedelta(hours=1), fp="fp2")
    fresh = store.failures()[(Kind.USER, "u1")]
    assert (fresh.attempts, fresh.quarantined, fresh.source_fingerprint) == (1, False, "fp2")


def test_failures_clear_one_and_reset_all(store: Store) -> None:
    for source_id in ("u1", "u2"):
        store.record_failure(
            Attempt(Kind.USER, source_id, source_id, "create", "409", "fp"), now=T0, max_retries=5
        )
    store.record_failure(
        Attempt(Kind.GROUP, "g1", "G", "create", "500", "fp"), now=T0, max_retries=5
    )

    store.clear_failure(Kind.USER, "u1")
    assert set(store.failures()) == {("user", "u2"), ("group", "g1")}
    assert store.reset_failures() == 2
    assert store.failures() == {}


def test_a_long_cause_is_clipped(store: Store) -> None:
    record = store.record_failure(
        Attempt(Kind.USER, "u1", "a", "create", "x" * 10_000, "fp"), now=T0, max_retries=5
    )
    assert len(record.cause) == len(store.failures()[(Kind.USER, "u1")].cause) == 2000


# -- staged deletions and watermarks -----------------------------------------


def test_staged_deletions_are_replaced_as_a_set(store: Store) -> None:
    ops: list[dict[str, object]] = [
        {"action": "disable", "kind": "user", "source_id": f"u{i}", "name": f"user {i}"}
        for i in range(3)
    ]
    store.stage_deletions("c1", ops)
    assert store.staged_deletions() == ops

    store.stage_deletions("c2", ops[2:])
    assert store.staged_deletions() == ops[2:]
    store.stage_deletions("c3", [])
    assert store.staged_deletions() == []


def test_watermarks_set_overwrite_and_reset(store: Store) -> None:
    assert store.watermark("users") is None
    store.set_watermark("users", "20260301120000Z")
    store.set_watermark("users", "20260301130000Z")
    store.set_watermark("dirsync", "cookie==")
    assert store.watermark("users") == "20260301130000Z"

    store.reset()
    assert (store.watermark("users"), store.watermark("dirsync")) == (None, None)


HELD: list[dict[str, object]] = [
    {"action": "delete", "kind": "user", "source_id": f"u{i}", "name": f"user {i}"}
    for i in range(3)
]


def test_approve_held_covers_exactly_what_is_staged(store_url: str, clock: Clock) -> None:
    with Store.open(store_url, "main", clock=clock) as store:
        assert store.approve_held() is None  # nothing held, nothing to approve
        assert store.approval() is None
        store.stage_deletions("c1", HELD)
        clock.advance(minutes=5)
        approval = store.approve_held()
    assert approval == Approval(T0 + timedelta(minutes=5), held_digest(HELD), 3)
    with Store.open(store_url, "main") as running:  # the instance that applies it
        assert running.approval() == approval


def test_clearing_one_watermark_or_the_approval_keeps_the_rest(
    store_url: str, clock: Clock
) -> None:
    with (
        Store.open(store_url, "prod", clock=clock) as prod,
        Store.open(store_url, "test", clock=clock) as test,
    ):
        for store in (prod, test):
            store.set_watermark("users", "w1")
            store.set_watermark("groups", "w2")
            store.stage_deletions("c1", HELD)
            store.approve_held()
        approval = test.approval()

        prod.clear_watermark("users")
        assert (prod.watermark("users"), prod.watermark("groups")) == (None, "w2")
        assert prod.approval() == approval
        prod.clear_approval()
        assert prod.approval() is None
        assert prod.watermark("groups") == "w2"
        assert prod.staged_deletions() == HELD  # still held, no longer approved

        assert (test.watermark("users"), test.watermark("groups")) == ("w1", "w2")
        assert test.approval() == approval


# -- channels and locking ----------------------------------------------------


def test_channels_in_one_database_are_isolated(store_url: str) -> None:
    with Store.open(store_url, "prod") as prod, Store.open(store_url, "test") as test:
        prod.save_user(user("u1"))
        prod.save_group(LinkedGroup("g1", "tg1", "G", frozenset({"u1"})))
        prod.set_watermark("users", "w1")
        prod.record_failure(
            Attempt(Kind.USER, "u9", "x", "create", "500", "fp"), now=T0, max_retries=5
        )
        prod.stage_deletions("c", [{"source_id": "u5"}])
        prod.audit(prod.begin_run("full"), "create", Kind.USER, "u1", "t1", True)
        prod.intend_many("c", [("create", Kind.USER, "u2", "b")])

        assert test.linked_users() == {} and test.linked_groups() == {}
        assert test.groups_holding({"u1"}) == set() and prod.groups_holding({"u1"}) == {"g1"}
        assert test.linked_ids(Kind.USER) == set() and test.linked_to(Kind.USER, ["t-u1"]) == {}
        assert test.watermark("users") is None
        assert test.failures() == {} and test.staged_deletions() == []
        assert test.runs() == [] and test.audit_log() == [] and test.open_intents() == []

        test.save_group(LinkedGroup("g1", "other", "G", frozenset()))
        test.reset()
        test.forget_intents()
        test.clear_failure(Kind.USER, "u9")
        test.clear_watermarks()
        assert set(prod.failures()) == {(Kind.USER, "u9")}
        assert prod.linked_groups()["g1"].member_source_ids == {"u1"}
        assert prod.watermark("users") == "w1"
        assert len(prod.open_intents()) == 1

        with prod.lock(), test.lock():
            pass  # different channels never block each other


def test_a_second_store_cannot_lock_the_same_channel(store_url: str) -> None:
    with Store.open(store_url, "main") as first, Store.open(store_url, "main") as second:
        with first.lock(), pytest.raises(ChannelLocked, match="'main'"), second.lock():
            pass
        with second.lock():  # released when the holder is done
            pass


def test_in_memory_stores_lock_each_their_own_database() -> None:
    with (
        Store.open("sqlite://", "main") as first,
        Store.open("sqlite://", "main") as second,
        first.lock(),
        second.lock(),  # two private databases: neither waits for the other
        pytest.raises(ChannelLocked, match="already locked in this process"),
        first.lock(),
    ):
        pass


LOCK_PROBE = """
import sys
from scimsync.state import ChannelLocked, Store
with Store.open(sys.argv[1], "main") as store:
    try:
        with store.lock():
            print("locked")
    except ChannelLocked as exc:
        print("refused:", exc)
"""


def test_another_process_cannot_lock_a_held_channel(store_url: str) -> None:
    def probe() -> str:
        done = subprocess.run(
            [sys.executable, "-c", LOCK_PROBE, store_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    with Store.open(store_url, "main") as store:
        with store.lock():
            assert probe().startswith("refused: channel 'main' is locked")
        assert probe() == "locked"


# -- errors ------------------------------------------------------------------


def test_unreachable_postgres_is_one_line_without_the_password(closed_port: int) -> None:
    url = (
        f"postgresql+psycopg://scimsync:s3cret-pw@127.0.0.1:{closed_port}/nowhere?connect_timeout=3"
    )
    with pytest.raises(StateError) as caught:
        Store.open(url, "main")
    message = str(caught.value)
    assert message.startswith("cannot open the store at postgresql+psycopg://scimsync:***@")
    assert "s3cret-pw" not in message
    assert "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "invalid state store URL"),
        ("mysql://u:s3cret-pw@h/db", r"unsupported state store mysql://u:\*\*\*@h/db"),
    ],
)
def test_bad_urls_are_named_without_the_password(url: str, expected: str) -> None:
    with pytest.raises(StateError, match=expected) as caught:
        Store.open(url, "main")
    assert "s3cret-pw" not in str(caught.value)


def test_an_unopenable_sqlite_path_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "state.db"
    with pytest.raises(StateError) as caught:
        Store.open(f"sqlite:///{path}", "main")
    # The driver's own words, not SQLAlchemy's wrapping of them.
    assert (
        str(caught.value)
        == f"cannot open the store at sqlite:///{path}: unable to open database file"
    )


def test_a_driver_complaint_is_its_first_line_without_the_password() -> None:
    url = sa.make_url("postgresql+psycopg://scimsync:s3cret-pw@db.example.com/scimsync")
    echoed = psycopg.OperationalError('FATAL:  password "s3cret-pw" rejected\nDETAIL:  why')
    assert base.describe(sa.exc.OperationalError(None, None, echoed), url) == (
        'FATAL:  password "***" rejected'
    )
    # A driver error without a message is named by its class.
    silent = sa.exc.OperationalError(None, None, psycopg.OperationalError())
    assert base.describe(silent, url) == "OperationalError"
    # Not every error reaching it comes from SQLAlchemy (no `orig`): a lock file's, say.
    assert base.describe(PermissionError("lock: denied"), url) == "lock: denied"


@pytest.mark.postgres
def test_repr_hides_the_password(postgres_url: str) -> None:
    url = sa.make_url(postgres_url).set(password="s3cret-pw")
    # trust auth accepts any password, so this store opens.
    with Store.open(url.render_as_string(hide_password=False), "main") as store:
        assert "s3cret-pw" not in repr(store)
        assert "***" in store.where


# -- atomic groups of writes -------------------------------------------------


def test_atomic_keeps_all_or_nothing(store: Store) -> None:
    cycle = store.begin_run("full")
    store.intend_many(cycle, [("create", Kind.USER, "u1", "alice")])
    [intent] = store.open_intents()

    with pytest.raises(RuntimeError), store.atomic():
        store.save_user(user("u1"))
        store.audit(cycle, "create", Kind.USER, "u1", "t-u1", True)
        store.done_many(cycle, [("create", Kind.USER, "u1")])
        raise RuntimeError("crash before commit")
    assert store.linked_users() == {}
    assert store.audit_log() == []
    assert store.open_intents() == [intent]

    with store.atomic():
        store.save_user(user("u1"))
        store.audit(cycle, "create", Kind.USER, "u1", "t-u1", True)
        store.done_many(cycle, [("create", Kind.USER, "u1")])
        assert list(store.linked_users()) == ["u1"]  # reads see the block's own writes
    assert list(store.linked_users()) == ["u1"]
    assert len(store.audit_log()) == 1
    assert store.open_intents() == []


def test_a_lock_file_that_cannot_be_opened_is_a_state_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    # A directory where the lock file belongs: refused even to root, unlike permissions.
    lock_file_path(sa.make_url(url), "main").mkdir()
    with (
        Store.open(url, "main") as store,
        pytest.raises(StateError, match=r"cannot create the lock file .*directory"),
        store.lock(),
    ):
        pass


@pytest.mark.postgres
def test_losing_the_database_mid_run_is_a_one_line_state_error(postgres_url: str) -> None:
    url = sa.make_url(postgres_url)
    with Store.open(postgres_url, "main") as store:
        store.save_user(user("u1"))
        admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE "{url.database}" WITH (FORCE)'))
        finally:
            admin.dispose()
        with pytest.raises(StateError) as caught:
            store.linked_users()
        assert re.fullmatch(
            r"state store postgresql\+psycopg://\S+: .*does not exist", str(caught.value)
        )


# -- read-only (plan) --------------------------------------------------------


def test_readonly_on_an_empty_database_reads_empty_and_creates_nothing(store_url: str) -> None:
    with Store.open(store_url, "main", readonly=True) as store:
        assert store.linked_users() == {} and store.failures() == {} and store.runs() == []
        assert store.watermark("users") is None
        with pytest.raises(StateError, match="read-only"):
            store.save_user(user("u1"))
        with store.lock():
            pass
    url = sa.make_url(store_url)
    if url.get_backend_name() == "sqlite":
        assert not Path(str(url.database)).exists()
        return
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
    finally:
        engine.dispose()


def test_readonly_on_an_older_schema_asks_for_an_upgrade_and_does_none(store_url: str) -> None:
    engine = create_engine(sa.make_url(store_url))
    try:
        with engine.connect() as conn, conn.begin():
            command.upgrade(alembic_config(conn), "0003")
        with pytest.raises(StateError) as caught:
            Store.open(store_url, "main", readonly=True)
        with engine.connect() as conn:
            assert current_revision(conn) == "0003"
    finally:
        engine.dispose()
    assert str(caught.value) == (
        f"the store at {safe_url(sa.make_url(store_url))} has schema revision 0003, this "
        f"scimsync expects {head_revision()}: run `scimsync sync` once to upgrade it"
    )


def test_readonly_reads_what_a_writer_recorded_and_writes_nothing(store_url: str) -> None:
    with Store.open(store_url, "main") as writer:
        writer.save_user(user("u1"))
        writer.record_failure(
            Attempt(Kind.USER, "u2", "b", "create", "500", "fp"), now=T0, max_retries=5
        )
    with Store.open(store_url, "main", readonly=True) as reader:
        assert list(reader.linked_users()) == ["u1"]
        with pytest.raises(StateError, match="read-only"):
            reader.clear_failure(Kind.USER, "u2")
        assert list(reader.failures()) == [("user", "u2")]
    with Store.open(store_url, "unknown-channel", readonly=True) as stranger:
        assert stranger.linked_users() == {}
    with Store.open(store_url, "main") as writer:
        assert writer.count_linked(Kind.USER) == 1


def test_store_counts_repeated_cycles_into_one_run_and_filters_audit_by_name(
    store_url: str,
) -> None:
    with Store.open(store_url, "main") as store:
        quiet, new = store.count_cycle("quiet", "ok")
        assert new and store.count_cycle("quiet", "ok") == (quiet, False)
        refused, new = store.count_cycle("full", "failed", "key refused")
        assert new and store.count_cycle("full", "failed", "key refused") == (refused, False)
        other, new = store.count_cycle("full", "failed", "another cause")
        assert new and other != refused
        runs = [(r.cycle_id, r.result, r.cycles, r.cause) for r in store.runs()]
        assert runs == [
            (other, "failed", 1, "another cause"),
            (refused, "failed", 2, "key refused"),
            (quiet, "ok", 2, None),
        ]
        store.audit(quiet, "create", Kind.USER, "u1", "t1", True, name="Ann@Example.com")
        store.audit(quiet, "create", Kind.GROUP, "g1", "t2", True, name="crew")
        store.audit(quiet, "key_refused", "cycle", "", None, False, "401", name="https://x")
        assert [a.source_id for a in store.audit_log(user="ann@example.COM")] == ["u1"]
        assert [a.source_id for a in store.audit_log(user="u1")] == ["u1"]
        assert [a.source_id for a in store.audit_log(group="CREW")] == ["g1"]
        assert store.audit_log(user="crew") == []  # a group's name is not a user's
        assert len(store.audit_log(user="u1", group="g1")) == 2
