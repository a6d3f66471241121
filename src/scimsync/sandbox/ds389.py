"""A throwaway 389 Directory Server on a free loopback port (root and 389-ds-base needed).

lib389, which creates the instance, is Debian's (python3-lib389, for /usr/bin/python3),
not ours: ds389_instance.py runs under that interpreter. An instance takes about ten
seconds to create and lives under /etc/dirsrv/slapd-NAME and /var/lib/dirsrv/slapd-NAME
until stop() removes it. Like the slapd sandbox, it has a read-only account `cn=reader`
limited to 500 entries a search, paged searches unlimited, so tests prove paging.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Self

import ldap

from scimsync.sandbox.lifecycle import Lifecycle
from scimsync.sandbox.loading import Loadable
from scimsync.sandbox.ports import hold_port

SUFFIX = "dc=example,dc=com"
ADMIN_DN = "cn=Directory Manager"
READER_DN = f"cn=reader,{SUFFIX}"
READER_PASSWORD = "reader-secret"
SIZE_LIMIT = 500
SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter Debian's lib389 is installed for
_HELPER = Path(__file__).with_name("ds389_instance.py")


class Ds389Error(RuntimeError):
    """389 Directory Server is not installed, or the instance could not be made."""


class Ds389(Lifecycle, Loadable):
    """`plugins`: any of usn (entryusn), refint (referential integrity) and contentsync
    (Content Synchronization, RFC 4533, with the retro changelog it needs)."""

    base_dn = SUFFIX
    directory = "389ds"  # the source.directory flavour that reads it, and its GUID
    guid_attribute = "nsUniqueId"
    admin_dn = ADMIN_DN
    bind_dn = READER_DN
    password = READER_PASSWORD
    size_limit = SIZE_LIMIT

    def __init__(self, plugins: tuple[str, ...] = ("usn", "refint")) -> None:
        self.plugins = plugins
        self.name = f"scimsync{secrets.token_hex(4)}"
        self.admin_password = secrets.token_urlsafe(12)
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise Ds389Error("389 Directory Server has no port before start()")
        return self._port

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def start(self) -> Self:
        if shutil.which("ns-slapd", path="/usr/sbin:/usr/bin") is None:
            raise Ds389Error("ns-slapd not found: install 389-ds-base")
        # Held until ns-slapd listens (it binds with SO_REUSEADDR): nobody else gets it.
        with hold_port() as held:
            self._port = held.getsockname()[1]
            try:
                self._helper(
                    "create", self.name, str(self._port), SUFFIX, self.admin_password, *self.plugins
                )
            except Ds389Error:
                self.stop()  # a half-made instance is removed, not left under /etc/dirsrv
                raise
        self._add_reader()
        return self

    def stop(self) -> None:
        if self._port is not None:
            self._port = None
            self._helper("remove", self.name)

    def _add_reader(self) -> None:
        self.add_entries(
            [
                (
                    READER_DN,
                    {
                        "objectClass": [b"top", b"person"],
                        "cn": [b"reader"],
                        "sn": [b"reader"],
                        "userPassword": [READER_PASSWORD.encode()],
                        "nsSizeLimit": [str(SIZE_LIMIT).encode()],
                        "nsPagedSizeLimit": [b"-1"],
                        # 389-ds examines at most 5,000 entries a search unless told:
                        # a bind account for directories larger than that needs this.
                        "nsPagedLookThroughLimit": [b"-1"],
                    },
                )
            ]
        )
        aci = (
            '(targetattr="*")(version 3.0; acl "scimsync reader"; '
            f'allow (read, search, compare) userdn="ldap:///{READER_DN}";)'
        )
        conn = self.admin()
        try:
            conn.modify_s(SUFFIX, [(ldap.MOD_ADD, "aci", [aci.encode()])])
        finally:
            conn.unbind_s()

    def _helper(self, *args: str) -> None:
        try:
            done = subprocess.run(
                [SYSTEM_PYTHON, str(_HELPER), *args],
                capture_output=True,
                check=False,
                timeout=180,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Ds389Error(f"389 Directory Server instance {self.name}: {exc}") from None
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise Ds389Error(
                f"389 Directory Server instance {self.name}: {args[0]} failed: " + " / ".join(tail)
            )
