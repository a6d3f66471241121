"""What a quiet incremental cycle costs at 10,000 users: LDAP searches and wall time.

Run: .venv/bin/python -m bench.quiet_cycles [--users 10000] [--groups 100] [--rounds 5]

Three servers, each loaded with the same tree (bench.read_directory's): 389 Directory
Server with its USN plugin (entryusn), 389-ds as installed (modifyTimestamp only), and
slapd with syncprov (syncrepl) as the reference. For each: one full cycle to the emulator
(in this process), then quiet cycles with nothing changed. The baseline, measured in the
same run, is a full read of the same directory, which is what a quiet cycle avoids.
Searches are counted at python-ldap (one per request, a paged search's every page).
389-ds needs root and 389-ds-base (`make setup-ad` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from ldap.ldapobject import SimpleLDAPObject

from bench.read_directory import ATTRS, populate
from scimsync.config import Config
from scimsync.cycle.run import sync
from scimsync.directory import LdapDirectory
from scimsync.emulator import RunningEmulator
from scimsync.sandbox.ds389 import Ds389
from scimsync.sandbox.loading import Loadable
from scimsync.sandbox.slapd import Slapd
from scimsync.state import Store


class Searches:
    """Counts every search python-ldap sends in this process (search_ext_s goes through
    search_ext, and so does syncrepl's refresh)."""

    count = 0

    @classmethod
    @contextmanager
    def counted(cls) -> Iterator[None]:
        real = SimpleLDAPObject.search_ext

        def counting(self: SimpleLDAPObject, *args: Any, **kwargs: Any) -> Any:
            cls.count += 1
            return real(self, *args, **kwargs)

        SimpleLDAPObject.search_ext = counting
        try:
            yield
        finally:
            SimpleLDAPObject.search_ext = real


def config(server: Loadable, base: str, emulator: RunningEmulator, state: Path) -> Config:
    return Config.model_validate(
        {
            "state": f"sqlite:///{state}",
            "source": {
                "url": server.url,
                "bind_dn": server.bind_dn,
                "bind_password": server.password,
                "base_dn": base,
                "directory": server.directory,
                "users": {"filter": "(objectClass=inetOrgPerson)"},
                "groups": {"filter": "(&(objectClass=groupOfNames)(!(cn=everyone)))"},
            },
            "target": {"url": emulator.url, "token": emulator.token, "max_concurrency": 16},
            "mapping": {"title": "title"},
        }
    )


def timed(action: Callable[[], object]) -> tuple[float, int, object]:
    """(seconds, searches, result) of one call."""
    before = Searches.count
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, Searches.count - before, result


def measure(
    label: str, make: Callable[[], AbstractContextManager[Loadable]], users: int, groups: int,
    rounds: int,
) -> list[str]:  # fmt: skip
    with make() as server, RunningEmulator() as emulator, tempfile.TemporaryDirectory() as work:
        base = populate(server, users, groups)
        settings = config(server, base, emulator, Path(work) / "state.db")

        def cycle() -> str:
            with Store.open(settings.state, settings.channel) as store:
                report = asyncio.run(sync(settings, store))
            assert report.exit_code == 0, f"{label}: exit {report.exit_code}"
            return report.prepared.view.mode

        first, _, _ = timed(cycle)
        quiet = [timed(cycle) for _ in range(rounds)]
        modes = {str(mode) for _, _, mode in quiet}  # each must be incremental

        def full_read() -> None:
            with LdapDirectory(settings.source, ATTRS) as directory:
                directory.read()

        baseline = [timed(full_read) for _ in range(3)]
    seconds = statistics.median(s for s, _, _ in quiet)
    searches = sorted({n for _, n, _ in quiet})
    base_seconds = statistics.median(s for s, _, _ in baseline)
    base_searches = sorted({n for _, n, _ in baseline})
    return [
        f"| {label} | {' / '.join(map(str, searches))} | {seconds:.2f} | "
        f"{' / '.join(map(str, base_searches))} | {base_seconds:.2f} | {first:.1f} | "
        f"{', '.join(sorted(modes))} |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    servers: list[tuple[str, Callable[[], AbstractContextManager[Loadable]]]] = [
        ("389-ds, USN plugin", lambda: Ds389(("usn", "refint"))),
        ("389-ds as installed", lambda: Ds389(("refint",))),
        ("slapd, syncrepl (reference)", Slapd),
    ]
    print(f"{args.users} users, {args.groups} groups; a quiet cycle is the median of "
          f"{args.rounds}, the baseline (a full read) of 3\n")  # fmt: skip
    print(
        "| server | searches, quiet cycle | s, quiet cycle | searches, full read (baseline) "
        "| s, full read | s, first full cycle | quiet modes |"
    )
    print("|---|---|---|---|---|---|---|")
    with Searches.counted():
        for label, make in servers:
            for line in measure(label, make, args.users, args.groups, args.rounds):
                print(line, flush=True)


if __name__ == "__main__":
    main()
