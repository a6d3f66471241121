"""One bound python-ldap connection: TLS, timeouts, paged and pipelined searches, and
translation of every LDAP failure into one DirectoryError line (never with the password)."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import ldap
from ldap.controls import LDAPControl, SimplePagedResultsControl
from ldap.syncrepl import (
    SyncDoneControl,
    SyncInfoMessage,
    SyncRequestControl,
    SyncStateControl,
)

from scimsync.config import SourceConfig, redact_url
from scimsync.directory.errors import (
    DirectoryAuthError,
    DirectoryError,
    DirectoryUnreachable,
    NoSuchEntry,
    SyncUnavailable,
)
from scimsync.directory.values import RawEntry

Entry = tuple[str, dict[str, list[bytes]]]

# How many base-scope lookups are in flight at once (python-ldap's message-id API).
LOOKUP_WINDOW = 256

_UNREACHABLE = (ldap.SERVER_DOWN, ldap.CONNECT_ERROR, ldap.TIMEOUT, ldap.UNAVAILABLE)


@dataclass
class SyncRefresh:
    """What one RFC 4533 refreshOnly search returned."""

    entries: list[tuple[str, str, dict[str, list[bytes]]]] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)  # entryUUIDs
    cookie: str | None = None
    # False when the server could not replay its session log and fell back to a present
    # phase (RFC 4533 3.3.1): the entries are then all of them, and deletions are implicit.
    incremental: bool = True
    truncated: bool = False  # the server's size limit cut the refresh short


class Connection:
    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.url = redact_url(config.url)  # for messages: never the credentials a URL holds
        self._conn: Any = None

    # --- opening and closing ----------------------------------------------------------

    def open(self) -> None:
        cfg = self.config
        try:
            conn = ldap.initialize(cfg.url, bytes_mode=False)
        except ldap.LDAPError as exc:
            self._fail(exc, "connecting")
        conn.protocol_version = ldap.VERSION3
        # Referrals off: AD hands out referrals to other partitions that a simple bind
        # cannot follow (python-ldap docs, "OPT_REFERRALS").
        conn.set_option(ldap.OPT_REFERRALS, 0)
        # A signal (the daemon's SIGTERM) interrupts the wait for an answer; without
        # OPT_RESTART libldap reports that EINTR as "Can't contact LDAP server" instead of
        # waiting on (libldap result.c, wait4msg and LDAP_BOOL_RESTART).
        conn.set_option(ldap.OPT_RESTART, ldap.OPT_ON)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, cfg.connect_timeout)
        conn.set_option(ldap.OPT_TIMEOUT, cfg.timeout)
        conn.set_option(
            ldap.OPT_X_TLS_REQUIRE_CERT,
            ldap.OPT_X_TLS_DEMAND if cfg.verify_tls else ldap.OPT_X_TLS_NEVER,
        )
        if cfg.ca_file is not None:
            conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(cfg.ca_file))
        # TLS options take effect only in a new TLS context, created last (python-ldap FAQ).
        conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
        self._conn = conn
        if cfg.start_tls:
            try:
                conn.start_tls_s()
            except ldap.LDAPError as exc:
                self._fail(exc, "starting TLS")
        try:
            conn.simple_bind_s(cfg.bind_dn or "", cfg.password or "")
        except ldap.LDAPError as exc:
            self._fail(exc, f"binding as {cfg.bind_dn or 'anonymous'}")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(ldap.LDAPError):  # the session is over either way
                conn.unbind_s()

    # --- searches ---------------------------------------------------------------------

    def paged(
        self,
        base: str,
        filterstr: str,
        attrs: Sequence[str],
        controls: Sequence[LDAPControl] = (),
    ) -> Iterator[Entry]:
        """Every entry under base matching filterstr, a page at a time (RFC 2696), so the
        server's size limit never truncates the result."""
        doing = f"searching {base} for {filterstr}"
        control = SimplePagedResultsControl(True, size=self.config.page_size, cookie=b"")
        while True:
            try:
                msgid = self._conn.search_ext(
                    base,
                    ldap.SCOPE_SUBTREE,
                    filterstr,
                    list(attrs),
                    serverctrls=[control, *controls],
                )
                _, data, _, answered = self._conn.result3(msgid, timeout=self.config.timeout)
            except ldap.LDAPError as exc:
                self._fail(exc, doing)
            for dn, entry in data:
                if dn is not None:  # search references (AD) come back without a DN
                    yield dn, self._complete_ranges(dn, entry)
            cookie = next(
                (c.cookie for c in answered if c.controlType == control.controlType), None
            )
            if cookie is None:
                raise DirectoryError(
                    f"LDAP server {self.url} ignored the paged-results control {doing}"
                )
            if not cookie:
                return
            control.cookie = cookie

    def lookup(self, dns: Iterable[str], filterstr: str, attrs: Sequence[str]) -> Iterator[Entry]:
        """Each DN that exists and matches filterstr, by base-scope searches kept in flight
        together; DNs that do not exist (dangling members) are skipped."""
        pending: deque[tuple[int, str]] = deque()
        source = iter(dns)

        def refill() -> None:
            for dn in source:
                try:
                    msgid = self._conn.search_ext(dn, ldap.SCOPE_BASE, filterstr, list(attrs))
                except ldap.LDAPError as exc:
                    self._fail(exc, f"reading {dn}")
                pending.append((msgid, dn))
                if len(pending) >= LOOKUP_WINDOW:
                    return

        refill()
        while pending:
            msgid, dn = pending.popleft()
            try:
                _, data, _, _ = self._conn.result3(msgid, timeout=self.config.timeout)
            except (ldap.NO_SUCH_OBJECT, ldap.INVALID_DN_SYNTAX):
                data = []
            except ldap.LDAPError as exc:
                self._fail(exc, f"reading {dn}")
            for found_dn, entry in data:
                if found_dn is not None:
                    yield found_dn, self._complete_ranges(found_dn, entry)
            if len(pending) < LOOKUP_WINDOW // 2:
                refill()

    def read(self, dn: str, attrs: Sequence[str], what: str) -> Entry:
        """One entry that must exist; `what` names the config key that pointed at it."""
        try:
            data = self._conn.search_ext_s(
                dn, ldap.SCOPE_BASE, "(objectClass=*)", list(attrs), timeout=self.config.timeout
            )
        except ldap.NO_SUCH_OBJECT:
            raise NoSuchEntry(f"{what} {dn} does not exist on {self.url}") from None
        except ldap.LDAPError as exc:
            self._fail(exc, f"reading {dn}")
        found_dn, entry = data[0]
        return found_dn, self._complete_ranges(found_dn, entry)

    def sync_refresh(
        self, base: str, filterstr: str, attrs: Sequence[str], cookie: str | None
    ) -> SyncRefresh:
        """One RFC 4533 refreshOnly search: entries changed since `cookie` (with their
        entryUUID from the Sync State control), deleted entryUUIDs from syncIdSet messages,
        and the new cookie from the Sync Done control (python-ldap's ldap.syncrepl)."""
        doing = f"refreshing changes under {base}"
        out = SyncRefresh()
        control = SyncRequestControl(criticality=1, cookie=cookie, mode="refreshOnly")
        try:
            msgid = self._conn.search_ext(
                base, ldap.SCOPE_SUBTREE, filterstr, list(attrs), serverctrls=[control]
            )
            while True:
                kind, msg, _, ctrls, _, _ = self._conn.result4(
                    msgid, all=0, add_ctrls=1, add_intermediates=1, timeout=self.config.timeout
                )
                if kind == ldap.RES_SEARCH_RESULT:
                    for done in ctrls:
                        if isinstance(done, SyncDoneControl):
                            out.cookie = done.cookie or out.cookie
                            out.incremental = out.incremental and bool(done.refreshDeletes)
                    return out
                if kind == ldap.RES_SEARCH_ENTRY:
                    for dn, entry, entry_ctrls in msg:
                        _sync_entry(out, dn, entry, entry_ctrls)
                elif kind == ldap.RES_INTERMEDIATE:
                    for name, value, _ in msg:
                        if name == SyncInfoMessage.responseName:
                            _sync_info(out, SyncInfoMessage(value))
        except ldap.SIZELIMIT_EXCEEDED:
            out.truncated = True
            return out
        except ldap.UNAVAILABLE_CRITICAL_EXTENSION:
            raise SyncUnavailable(
                f"LDAP server {self.url} does not offer syncrepl ({doing}): no syncprov"
            ) from None
        except ldap.LDAPError as exc:
            self._fail(exc, doing)

    def any_entry(self, base: str, filterstr: str, controls: Sequence[LDAPControl] = ()) -> bool:
        """Whether one entry at most one level below base matches (a size limit of 1)."""
        try:
            data = self._conn.search_ext_s(
                base, ldap.SCOPE_ONELEVEL, filterstr, ["1.1"],
                serverctrls=list(controls), timeout=self.config.timeout, sizelimit=1,
            )  # fmt: skip
        except ldap.SIZELIMIT_EXCEEDED:
            return True
        except (ldap.NO_SUCH_OBJECT, ldap.INSUFFICIENT_ACCESS):
            return False
        except ldap.LDAPError as exc:
            self._fail(exc, f"searching {base} for {filterstr}")
        return any(dn is not None for dn, _ in data)

    def root_dse(self, attrs: Sequence[str]) -> RawEntry:
        try:
            data = self._conn.search_ext_s(
                "", ldap.SCOPE_BASE, "(objectClass=*)", list(attrs), timeout=self.config.timeout
            )
        except ldap.LDAPError as exc:
            self._fail(exc, "reading the root DSE")
        return data[0][1] if data else {}

    # --- internals --------------------------------------------------------------------

    def _complete_ranges(self, dn: str, entry: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
        """AD returns at most 1,500 values of a large attribute per request, as
        `member;range=0-1499`; fetch the rest with `member;range=1500-*` until the range
        ends in `*` (MS-ADTS 3.1.1.3.1.3.3, "Range Retrieval of Attribute Values")."""
        ranged = [name for name in entry if ";range=" in name.lower()]
        for name in ranged:
            attribute, _, bounds = name.partition(";")
            values = list(entry.pop(name))
            end = bounds.split("=", 1)[1].split("-", 1)[1]
            while end != "*":
                start = int(end) + 1
                wanted = f"{attribute};range={start}-*"
                try:
                    data = self._conn.search_ext_s(
                        dn, ldap.SCOPE_BASE, "(objectClass=*)", [wanted],
                        timeout=self.config.timeout,
                    )  # fmt: skip
                except ldap.LDAPError as exc:
                    self._fail(exc, f"reading {attribute} values from {start} of {dn}")
                part = next(
                    (
                        (key, got)
                        for key, got in data[0][1].items()
                        if key.lower().startswith(f"{attribute.lower()};range=")
                    ),
                    None,
                )
                if part is None:
                    break
                values.extend(part[1])
                end = part[0].split("=", 1)[1].split("-", 1)[1]
            entry[attribute] = values
        return entry

    def _fail(self, exc: ldap.LDAPError, doing: str) -> NoReturn:
        raise self.describe(exc, doing) from None

    def describe(self, exc: ldap.LDAPError, doing: str) -> DirectoryError:
        detail = _detail(exc)
        if isinstance(exc, ldap.INVALID_CREDENTIALS):
            message = (
                f"LDAP server {self.url} refused the bind as {self.config.bind_dn or 'anonymous'}: "
                "wrong bind DN or password (source.bind_dn, source.bind_password)"
            )
            return DirectoryAuthError(self._scrub(message))
        if isinstance(exc, _UNREACHABLE):
            if isinstance(exc, ldap.TIMEOUT):
                detail = f"no answer within {self.config.timeout:g} s"
            elif self._uses_tls() and _info(exc) in ("", "(unknown error code)"):
                # libldap (GnuTLS) reports a refused certificate with no detail at all.
                detail = (
                    "TLS handshake failed; is the server certificate trusted "
                    "(source.ca_file, source.verify_tls)?"
                )
            return DirectoryUnreachable(
                self._scrub(f"cannot reach LDAP server {self.url} ({doing}): {detail}")
            )
        if isinstance(exc, ldap.NO_SUCH_OBJECT):
            return DirectoryError(
                self._scrub(f"LDAP {doing} on {self.url} failed: the base DN does not exist")
            )
        if isinstance(exc, ldap.ADMINLIMIT_EXCEEDED):
            # Not the size limit, which paging gets past: how many entries one search may
            # examine. 389-ds's default is 5,000, paged or not.
            return DirectoryError(
                self._scrub(
                    f"LDAP {doing} on {self.url} failed: {detail}: the server lets "
                    f"{self.config.bind_dn or 'anonymous'} examine fewer entries than this "
                    "search needs (389-ds: nsPagedLookThroughLimit: -1 on that entry)"
                )
            )
        return DirectoryError(self._scrub(f"LDAP {doing} on {self.url} failed: {detail}"))

    def _uses_tls(self) -> bool:
        return self.config.start_tls or self.url.lower().startswith("ldaps:")

    def _scrub(self, message: str) -> str:
        line = " ".join(message.split())
        secret = self.config.password
        if secret and len(secret) >= 4:  # shorter would garble the DN and prove nothing
            line = line.replace(secret, "***")
        return line


def _sync_entry(
    out: SyncRefresh, dn: str, entry: dict[str, list[bytes]], ctrls: Sequence[Any]
) -> None:
    for state in ctrls:
        if not isinstance(state, SyncStateControl):
            continue
        if state.state == "delete":
            out.deleted.add(str(state.entryUUID))
        elif state.state == "present":
            out.incremental = False
        else:
            out.entries.append((dn, str(state.entryUUID), entry))
        if state.cookie:
            out.cookie = state.cookie


def _sync_info(out: SyncRefresh, info: Any) -> None:
    if info.newcookie is not None:
        out.cookie = info.newcookie
        return
    for phase in (info.refreshPresent, info.refreshDelete, info.syncIdSet):
        if phase is not None and phase.get("cookie"):
            out.cookie = phase["cookie"]
    if info.refreshPresent is not None:
        out.incremental = False
    if info.syncIdSet is not None:
        if info.syncIdSet["refreshDeletes"]:
            out.deleted.update(str(uuid) for uuid in info.syncIdSet["syncUUIDs"])
        else:
            out.incremental = False  # a present list: what is absent was deleted


def _info(exc: ldap.LDAPError) -> str:
    args = exc.args[0] if exc.args else {}
    return str(args.get("info") or "").strip() if isinstance(args, dict) else ""


def _detail(exc: ldap.LDAPError) -> str:
    args = exc.args[0] if exc.args else {}
    if not isinstance(args, dict):
        return str(args) or type(exc).__name__
    desc = str(args.get("desc") or type(exc).__name__)
    info = str(args.get("info") or "").strip()
    return f"{desc}: {info}" if info and info != desc else desc
