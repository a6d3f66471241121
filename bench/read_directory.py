"""How long LdapDirectory.read() takes for 10,000 users and 100 groups on a local slapd.

Run: .venv/bin/python -m bench.read_directory [--users N] [--groups N] [--nested]
"""

from __future__ import annotations

import argparse
import time

from scimsync.config import SourceConfig
from scimsync.directory import LdapDirectory
from scimsync.sandbox.loading import Loadable
from scimsync.sandbox.slapd import Slapd

ATTRS = ("uid", "mail", "givenName", "sn", "cn", "title")


def populate(server: Loadable, users: int, groups: int) -> str:
    base = f"ou=bench,{server.base_dn}"
    people = f"ou=people,{base}"

    def ou(dn: str, name: str) -> tuple[str, dict[str, list[bytes]]]:
        return dn, {"objectClass": [b"organizationalUnit"], "ou": [name.encode()]}

    server.add_entries([ou(base, "bench"), ou(people, "people"), ou(f"ou=groups,{base}", "groups")])
    server.add_entries(
        (
            f"uid=u{i:06d},{people}",
            {
                "objectClass": [b"inetOrgPerson"],
                "uid": [f"u{i:06d}".encode()],
                "cn": [f"User {i}".encode()],
                "givenName": [b"User"],
                "sn": [str(i).encode()],
                "mail": [f"u{i:06d}@example.com".encode()],
                "title": [b"Engineer"],
            },
        )
        for i in range(users)
    )
    per_group = max(1, users // groups)
    server.add_entries(
        (
            f"cn=g{g:03d},ou=groups,{base}",
            {
                "objectClass": [b"groupOfNames"],
                "cn": [f"g{g:03d}".encode()],
                # each group holds a slice of users plus the next slice's first half
                "member": [
                    f"uid=u{i % users:06d},{people}".encode()
                    for i in range(g * per_group, g * per_group + per_group * 3 // 2)
                ],
            },
        )
        for g in range(groups)
    )
    everyone = [f"uid=u{i:06d},{people}".encode() for i in range(users)]
    server.add_entries(
        [(f"cn=everyone,{base}", {"objectClass": [b"groupOfNames"], "member": everyone})]
    )
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with Slapd() as server:
        started = time.perf_counter()
        base = populate(server, args.users, args.groups)
        print(f"loaded {args.users} users, {args.groups} groups in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        settings = {
            "url": server.url,
            "bind_dn": server.bind_dn,
            "bind_password": server.password,
            "base_dn": base,
            "page_size": args.page_size,
            "groups": {"filter": "(&(objectClass=groupOfNames)(!(cn=everyone)))"},
        }
        scopes = {
            "users.filter": {"filter": "(objectClass=inetOrgPerson)"},
            "users.group_dn": {"group_dn": f"cn=everyone,{base}"},
        }
        for scope, users in scopes.items():
            config = SourceConfig.model_validate({**settings, "users": users})
            print(f"scope {scope}:")
            measure(config, args.rounds)


def measure(config: SourceConfig, rounds: int) -> None:
    for round_ in range(1, rounds + 1):
        started = time.perf_counter()
        with LdapDirectory(config, ATTRS) as directory:
            snapshot = directory.read()
        elapsed = time.perf_counter() - started
        members = sum(len(g.member_guids) for g in snapshot.groups.values())
        print(
            f"  round {round_}: read {len(snapshot.users)} users, {len(snapshot.groups)} groups "
            f"({members} memberships) in {elapsed:.2f} s "
            f"({len(snapshot.users) / elapsed:,.0f} users/s)"
        )


if __name__ == "__main__":
    main()
