"""Loading entries into a throwaway LDAP server as its administrator."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import ldap
import ldap.modlist
from ldif import LDIFRecordList  # type: ignore[import-untyped]  # part of python-ldap

Entries = Iterable[tuple[str, Mapping[str, Sequence[bytes]]]]


class Loadable:
    """A server with `url`, `admin_dn` and `admin_password`, which tests fill with entries
    under `base_dn` and read as `bind_dn` with `password` in the `directory` flavour."""

    admin_dn: str
    admin_password: str
    base_dn: str
    bind_dn: str
    password: str
    directory: str

    @property
    def url(self) -> str:
        raise NotImplementedError

    def admin(self) -> ldap.ldapobject.LDAPObject:
        """A connection bound as the administrator (unlimited, may write)."""
        conn = ldap.initialize(self.url)
        conn.protocol_version = 3
        conn.simple_bind_s(self.admin_dn, self.admin_password)
        return conn

    def add_entries(self, entries: Entries) -> int:
        """Add entries (dn, {attr: [bytes]}) in order, pipelined; returns how many."""
        conn = self.admin()
        try:
            pending: list[int] = []
            pending_dns: set[str] = set()
            count = 0

            def flush() -> None:
                for msgid in pending:
                    conn.result3(msgid)
                pending.clear()
                pending_dns.clear()

            for dn, attrs in entries:
                # Pipelined adds run concurrently: a child must wait for its parent.
                parent = dn.split(",", 1)[-1].lower()
                if parent in pending_dns or len(pending) >= 200:
                    flush()
                pending.append(conn.add_ext(dn, ldap.modlist.addModlist(dict(attrs))))
                pending_dns.add(dn.lower())
                count += 1
            flush()
            return count
        finally:
            conn.unbind_s()

    def load_ldif(self, path: Path | str) -> int:
        with Path(path).open("rb") as stream:
            parser = LDIFRecordList(stream)
            parser.parse()
        return self.add_entries(parser.all_records)
