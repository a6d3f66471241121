"""Whole cycles at scale: initial sync, no-change cycle, 100 changes; incremental vs full.

Run: .venv/bin/python -m bench.sync_scale [--users 100000] [--groups 2000] [--latency-ms 0 50]

Real slapd (sandbox) and the Atlassian emulator in a subprocess. Each cycle runs in a child
process of its own so that its peak RSS is its own. Printed per cycle: wall time, requests
by method as the emulator counted them, peak RSS, and user creates per second from the
cycle's audit trail. The full reconciliation of the same change is the baseline the
incremental cycle is compared with, in the same run. "100 changes" are 100 changed
directory entries (see make_changes).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx2
import ldap
import yaml

from bench.read_directory import populate
from scimsync.emulator import PREFIX
from scimsync.sandbox.ports import listening_port
from scimsync.sandbox.slapd import Slapd

TOKEN = "bench-token"
WRITES = ("POST", "PUT", "PATCH", "DELETE")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Row:
    label: str
    seconds: float
    requests: dict[str, int]
    rss_mb: float
    exit_code: int
    creates_per_s: float | None = None

    def line(self) -> str:
        reqs = " ".join(f"{m}={self.requests.get(m, 0)}" for m in ("GET", *WRITES))
        writes = sum(self.requests.get(m, 0) for m in WRITES)
        rate = f"{self.creates_per_s:9.0f}" if self.creates_per_s else f"{'':9}"
        return (
            f"| {self.label:<36} | {self.seconds:8.2f} | {writes:7d} | {reqs:<52} | "
            f"{self.rss_mb:7.0f} | {rate} | {self.exit_code} |"
        )


HEADER = (
    f"| {'cycle':<36} | {'wall s':>8} | {'writes':>7} | {'requests by method':<52} | "
    f"{'RSS MB':>7} | creates/s | rc |\n"
    f"|{'-' * 38}|{'-' * 10}|{'-' * 9}|{'-' * 54}|{'-' * 9}|{'-' * 11}|----|"
)


@contextmanager
def emulator(latency_ms: float) -> Iterator[str]:
    command = [sys.executable, "-m", "scimsync.emulator", "--port", "0", "--token", TOKEN]
    command += ["--latency-ms", str(latency_ms)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{listening_port(process, timeout=20)}"  # it bound port 0
    finally:
        process.terminate()
        process.wait(10)


def stats(url: str) -> dict[str, int]:
    response = httpx2.get(f"{url}/_emulator/stats", headers=AUTH, timeout=10)
    by_method: dict[str, int] = response.json()["by_method"]
    return by_method


def run_cycle(config: Path, emulator_url: str, label: str, *extra: str) -> Row:
    row = measure_cycle(config, emulator_url, label, *extra)
    print(row.line(), flush=True)
    return row


def measure_cycle(config: Path, emulator_url: str, label: str, *extra: str) -> Row:
    """One `scimsync sync` in a child process: wall time, its own peak RSS, its requests."""
    before = stats(emulator_url)
    audited = last_audit_id(config.parent / "state.db")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "scimsync", "--config", str(config), "sync", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    after = stats(emulator_url)
    delta = {m: after.get(m, 0) - before.get(m, 0) for m in after}
    rate = create_rate(config.parent / "state.db", audited)
    return Row(label, seconds, delta, usage.ru_maxrss / 1024, process.returncode, rate)


def last_audit_id(state: Path) -> int:
    if not state.exists():
        return 0
    with closing(sqlite3.connect(state)) as db:
        found: int | None = db.execute("SELECT max(id) FROM audit").fetchone()[0]
    return found or 0


def create_rate(state: Path, after_id: int) -> float | None:
    """User creates per second of a cycle, first to last, from its audit trail: the
    engine's own throughput, without the directory read and the group phase."""
    count: int
    first: str
    last: str
    with closing(sqlite3.connect(state)) as db:
        count, first, last = db.execute(
            "SELECT count(*), min(at), max(at) FROM audit "
            "WHERE event = 'create' AND kind = 'user' AND success AND id > ?",
            (after_id,),
        ).fetchone()
    if count < 100:
        return None
    span = datetime.fromisoformat(last) - datetime.fromisoformat(first)
    return (count - 1) / span.total_seconds()


CHANGES = 100


def make_changes(server: Slapd, base: str, users: int, groups: int, seed: int) -> None:
    """Change exactly 100 directory entries, the unit change detection sees (syncrepl and
    uSNChanged report changed entries): 50 users edited, 10 deleted, which takes them out
    of their groups (as in Active Directory and OpenLDAP with refint), 15 added and put in
    `everyone`, and membership moves, each changing two groups, for the rest."""
    rng = random.Random(seed)
    people, everyone = f"ou=people,{base}", f"cn=everyone,{base}"
    picks = (f"uid=u{i:06d},{people}" for i in rng.sample(range(users), users))
    changed: set[str] = set()
    conn = server.admin()

    def modify(dn: str, changes: list[tuple[int, str, list[bytes]]]) -> bool:
        try:
            conn.modify_s(dn, changes)
        except ldap.NO_SUCH_OBJECT:  # deleted by an earlier round of changes
            return False
        changed.add(dn.lower())
        return True

    def groups_of(dn: str) -> list[str]:
        found = conn.search_s(base, ldap.SCOPE_SUBTREE, f"(member={dn})", ["cn"])
        return sorted(d for d, _ in found)

    def edit_one() -> None:
        while not modify(next(picks), [(ldap.MOD_REPLACE, "title", [f"Changed {seed}".encode()])]):
            pass

    try:
        for _ in range(50):
            edit_one()
        deleted = 0
        while deleted < 10:
            dn = next(picks)
            holding = groups_of(dn)
            if not holding:
                continue
            conn.delete_s(dn)  # the sandbox's memberof-refint takes it out of its groups
            changed.update(entry.lower() for entry in [dn, *holding])
            deleted += 1
        added = [
            (
                f"uid=n{seed:02d}{k:04d},{people}",
                {
                    "objectClass": [b"inetOrgPerson"],
                    "uid": [f"n{seed:02d}{k:04d}".encode()],
                    "cn": [b"New User"],
                    "sn": [b"New"],
                    "mail": [f"n{seed:02d}{k:04d}@example.com".encode()],
                    "title": [b"Engineer"],
                },
            )
            for k in range(15)
        ]
        server.add_entries(added)
        changed.update(dn.lower() for dn, _ in added)
        modify(everyone, [(ldap.MOD_ADD, "member", [dn.encode() for dn, _ in added])])
        while len(changed) < CHANGES:
            dn = next(picks)
            held = [g for g in groups_of(dn) if g.lower() != everyone.lower()]
            target = f"cn=g{rng.randrange(groups):03d},ou=groups,{base}"
            if not held or target in held:
                continue
            if len(changed | {held[0].lower(), target.lower()}) > CHANGES:
                edit_one()  # one entry left to change: a move would change two
                continue
            modify(held[0], [(ldap.MOD_DELETE, "member", [dn.encode()])])
            modify(target, [(ldap.MOD_ADD, "member", [dn.encode()])])
    finally:
        conn.unbind_s()
    assert len(changed) == CHANGES, len(changed)


def write_config(
    work: Path, server: Slapd, base: str, target: str, concurrency: int, **extra: object
) -> Path:
    """The bench's config file; `extra` adds top-level settings (interval, metrics_listen)."""
    path = work / "scimsync.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                **extra,
                "state": f"sqlite:///{work / 'state.db'}",
                "source": {
                    "url": server.url,
                    "bind_dn": server.bind_dn,
                    "bind_password": server.password,
                    "base_dn": base,
                    "users": {"filter": "(objectClass=inetOrgPerson)"},
                    "groups": {"filter": "(objectClass=groupOfNames)"},
                },
                "target": {"url": target, "token": TOKEN, "max_concurrency": concurrency},
                "options": {"max_deletions": "100%"},
                "mapping": {"title": "title", "displayName": "cn"},
            }
        )
    )
    path.chmod(0o600)
    return path


def reset(config: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "scimsync", "--config", str(config), "reset"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def bench(users: int, groups: int, latency_ms: float, concurrency: int) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="scimsync-bench-") as tmp, Slapd() as server:
        started = time.perf_counter()
        base = populate(server, users, groups)
        print(f"  directory: {users} users, {groups + 1} groups loaded in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
        with emulator(latency_ms) as url:
            config = write_config(Path(tmp), server, base, url + PREFIX, concurrency)
            tag = f"{latency_ms:g} ms"
            rows.append(run_cycle(config, url, f"initial sync, {tag}"))
            rows.append(run_cycle(config, url, f"no change, incremental, {tag}"))
            reset(config)
            rows.append(run_cycle(config, url, f"no change, full (baseline), {tag}"))
            make_changes(server, base, users, groups, seed=1)
            rows.append(run_cycle(config, url, f"100 changes, incremental, {tag}"))
            make_changes(server, base, users, groups, seed=2)
            reset(config)
            rows.append(run_cycle(config, url, f"100 changes, full (baseline), {tag}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=2_000)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 50.0])
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(f"sync at scale: {args.users} users, {args.groups} groups, "
          f"max_concurrency {args.concurrency}", flush=True)  # fmt: skip
    print(HEADER, flush=True)
    for latency in args.latency_ms:
        bench(args.users, args.groups, latency, args.concurrency)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(the bench process itself: peak RSS {own:.0f} MB)")


if __name__ == "__main__":
    main()
