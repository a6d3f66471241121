"""A throwaway OpenLDAP slapd on free loopback ports, in a temporary directory.

The configuration follows /work/shared/reference/test-servers/start-slapd.sh: mdb with
memberof, syncprov and accesslog (for change detection), a self-signed certificate for
ldaps:// and StartTLS, and a read-only service account `cn=reader` that, unlike the rootdn,
is subject to the size limit (500 per search; paged searches unlimited) so tests prove paging.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Self

import ldap
import ldap.modlist

from scimsync.sandbox.lifecycle import Lifecycle, terminate
from scimsync.sandbox.loading import Loadable
from scimsync.sandbox.ports import NotListeningError, hold_port, wait_listening

SUFFIX = "dc=example,dc=com"
ADMIN_DN = "cn=admin,dc=example,dc=com"
ADMIN_PASSWORD = "secret"
READER_DN = "cn=reader,dc=example,dc=com"
READER_PASSWORD = "reader-secret"
SIZE_LIMIT = 500

_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload syncprov
moduleload accesslog
moduleload memberof
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
TLSCertificateFile {d}/cert.pem
TLSCertificateKeyFile {d}/key.pem
# test-only ACL: everyone may read (incl. cn=accesslog), only the rootdn writes
access to * by * read

database mdb
suffix "cn=accesslog"
rootdn "{admin}"
directory {d}/accesslog
dbnosync
maxsize 104857600
index default eq
index entryCSN,objectClass,reqEnd,reqResult,reqStart,reqDN eq
overlay syncprov
syncprov-nopresent TRUE
syncprov-reloadhint TRUE

database mdb
suffix "{suffix}"
rootdn "{admin}"
rootpw {admin_password}
directory {d}/data
# a throwaway server: skip fsync, so loading 10,000 entries takes seconds
dbnosync
maxsize 1073741824
# slapd.conf(5) "limits": size.pr/size.prtotal lift the cap for paged searches only,
# as AD's MaxPageSize does; the rootdn is never limited.
limits users size.soft={limit} size.hard={limit} size.pr=unlimited size.prtotal=unlimited
index objectClass,entryCSN,entryUUID eq
index uid,cn,mail,member,uniqueMember eq
overlay memberof
memberof-refint TRUE
overlay syncprov
syncprov-checkpoint 100 10
syncprov-sessionlog 1000
overlay accesslog
logdb cn=accesslog
logops writes
logsuccess TRUE
logpurge 07+00:00 01+00:00
"""

_BASE_ENTRIES: list[tuple[str, dict[str, list[bytes]]]] = [
    (
        SUFFIX,
        {
            "objectClass": [b"top", b"dcObject", b"organization"],
            "o": [b"Example"],
            "dc": [b"example"],
        },
    ),
    (
        READER_DN,
        {
            "objectClass": [b"organizationalRole", b"simpleSecurityObject"],
            "cn": [b"reader"],
            "userPassword": [READER_PASSWORD.encode()],
        },
    ),
]


class SlapdError(RuntimeError):
    """slapd could not be configured or started."""


class Slapd(Lifecycle, Loadable):
    """Start with `start()` or `with Slapd() as server:`; `stop()` waits for the process to exit.

    Its ports (`port`, `tls_port`, and so `url`, `ldaps_url`) are known from the first
    `start()` on; a later `start()`, on the data a `workdir` keeps, listens on them again.
    `extra_urls` are more listeners, such as an ldapi:// socket.
    """

    base_dn = SUFFIX
    directory = "openldap"  # the source.directory flavour that reads it, and its GUID
    guid_attribute = "entryUUID"
    admin_dn = ADMIN_DN
    admin_password = ADMIN_PASSWORD
    bind_dn = READER_DN  # what a scimsync config binds as: read-only and size-limited
    password = READER_PASSWORD
    size_limit = SIZE_LIMIT

    def __init__(
        self,
        workdir: Path | None = None,
        ready_timeout: float = 15.0,
        extra_urls: Sequence[str] = (),
    ) -> None:
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="scimsync-slapd-")) if workdir is None else workdir
        self._ports: tuple[int, int] | None = None  # (ldap://, ldaps://) from the first start
        self._extra_urls = list(extra_urls)
        self._ready_timeout = ready_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._known_ports()[0]

    @property
    def tls_port(self) -> int:
        return self._known_ports()[1]

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "cert.pem"  # self-signed: the certificate is its own CA

    def start(self) -> Self:
        for sub in ("data", "accesslog"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._make_certificate()
        conf = self.dir / "slapd.conf"
        conf.write_text(
            _CONF.format(
                d=self.dir,
                admin=ADMIN_DN,
                admin_password=ADMIN_PASSWORD,
                suffix=SUFFIX,
                limit=SIZE_LIMIT,
            )
        )
        self._run(["slaptest", "-u", "-f", str(conf)], "slaptest")
        self._launch()
        self.add_entries(_BASE_ENTRIES)
        return self

    @property
    def pid(self) -> int:
        """The running slapd's process id (tests pause it with SIGSTOP)."""
        if self._process is None:
            raise RuntimeError("slapd is not running")
        return self._process.pid

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        terminate(process, timeout)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- internals --------------------------------------------------------------------

    def _make_certificate(self) -> None:
        self._run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout", str(self.dir / "key.pem"), "-out", str(self.ca_file),
            ],
            "openssl",
        )  # fmt: skip

    def _known_ports(self) -> tuple[int, int]:
        if self._ports is None:
            raise SlapdError("slapd has no ports before its first start()")
        return self._ports

    def _launch(self) -> None:
        """slapd on its ports: held for it until it listens, so nobody else gets them.

        slapd cannot bind port 0 itself (it takes `:0` for 389), hence the holding. The
        first launch holds free ports; a later one the same ports again, or fails.
        """
        with ExitStack() as held:
            socks = []
            for port in self._ports or (0, 0):
                try:
                    socks.append(held.enter_context(hold_port(port)))
                except OSError as exc:
                    raise SlapdError(f"slapd's port {port} is taken: {exc}") from None
            self._ports = (socks[0].getsockname()[1], socks[1].getsockname()[1])
            listeners = [f"{self.url}/", f"{self.ldaps_url}/", *self._extra_urls]
            conf = str(self.dir / "slapd.conf")
            with (self.dir / "slapd.log").open("ab") as log:
                # -d 0 keeps slapd in the foreground: we own the process and can wait for it.
                self._process = subprocess.Popen(
                    ["slapd", "-d", "0", "-f", conf, "-h", " ".join(listeners)],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            self._wait_ready()

    def _run(self, argv: list[str], what: str) -> None:
        done = subprocess.run(argv, capture_output=True, check=False)
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise SlapdError(f"{what} failed: {' '.join(tail) or done.returncode}")

    def _wait_ready(self) -> None:
        """Until slapd's own sockets listen on both ports: another server there cannot pass."""
        assert self._process is not None
        try:
            wait_listening(self._process, self._known_ports(), self._ready_timeout)
            # Listening comes after the databases are open; this proves it speaks LDAP.
            conn = ldap.initialize(self.url)
            conn.set_option(ldap.OPT_NETWORK_TIMEOUT, self._ready_timeout)
            conn.set_option(ldap.OPT_TIMEOUT, self._ready_timeout)
            conn.simple_bind_s("", "")
            conn.unbind_s()
        except (NotListeningError, ldap.LDAPError) as exc:
            log = (self.dir / "slapd.log").read_text(errors="replace").strip()
            self.stop()
            raise SlapdError(f"slapd on {self.url}, {self.ldaps_url}: {exc} {log[-300:]}") from None
