"""A throwaway Samba AD DC on loopback, after /work/shared/reference/test-servers/start-samba-ad.sh.

It listens on the fixed AD ports (389, 636, 88, ...), so it needs root and only one can run
at a time. Provisioning takes ~10 s, so the freshly provisioned directory is cached under
CACHE_DIR and copied for each start (~1 s to LDAP readiness).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Self

import ldap

from scimsync.sandbox.lifecycle import Lifecycle, terminate

CACHE_DIR = Path("/tmp/scimsync-samba-cache")
WORK_DIR = Path("/tmp/scimsync-samba")  # smb.conf holds absolute paths: always run here
REALM = "SYNC.TEST"
DOMAIN = "SYNCTEST"
ADMIN_PASSWORD = "Passw0rd!Test"


def _runtime_files(folder: str, names: list[str]) -> set[str]:
    """What a stopped DC leaves that the next start makes anew: sockets, messaging, logs."""
    runtime = {"msg.sock", "msg.lock", "samba.out", "log.%m"}
    return {n for n in names if n in runtime or stat.S_ISSOCK(os.lstat(f"{folder}/{n}").st_mode)}


class SambaUnavailableError(RuntimeError):
    """This machine cannot run a Samba AD DC (not root, packages missing, port taken)."""


class SambaDC(Lifecycle):
    url = "ldap://127.0.0.1:389"
    ldaps_url = "ldaps://127.0.0.1:636"
    base_dn = "DC=sync,DC=test"
    bind_dn = "Administrator@sync.test"
    password = ADMIN_PASSWORD

    def __init__(self, ready_timeout: float = 60.0, cache: Path = CACHE_DIR) -> None:
        """`cache`: the directory to start from, a copy of CACHE_DIR made by snapshot()."""
        self.dir = WORK_DIR
        self._cache = cache
        self._ready_timeout = ready_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def smb_conf(self) -> Path:
        return self.dir / "etc" / "smb.conf"

    def start(self) -> Self:
        self._check_machine()
        if not (self._cache / "etc" / "smb.conf").is_file():
            if self._cache != CACHE_DIR:
                raise SambaUnavailableError(f"no Samba DC snapshot in {self._cache}")
            self._provision()
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.copytree(self._cache, self.dir, symlinks=True)
        self._process = subprocess.Popen(
            [
                "samba", "-s", str(self.smb_conf), "--foreground", "--no-process-group",
                "-M", "single",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "samba.out").open("wb"),
        )  # fmt: skip
        self._wait_ready()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        process, self._process = self._process, None
        terminate(process, timeout)

    def snapshot(self, cache: Path) -> None:
        """Keep the directory as it is now in `cache` (stopping the DC for a consistent
        copy), and go on from there: a later SambaDC(cache=cache) starts with this data."""
        self.stop()
        partial = cache.with_name(cache.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(self.dir, partial, symlinks=True, ignore=_runtime_files)
        shutil.rmtree(cache, ignore_errors=True)
        partial.rename(cache)
        self._cache = cache
        self.start()

    def admin(self) -> ldap.ldapobject.LDAPObject:
        conn = ldap.initialize(self.url)
        conn.protocol_version = 3
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.simple_bind_s(self.bind_dn, self.password)
        return conn

    def samba_tool(self, *args: str) -> str:
        """Run samba-tool against this DC; returns its stdout."""
        argv = [
            "samba-tool", *args, "-s", str(self.smb_conf), "-H", self.url,
            "-U", f"Administrator%{self.password}",
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or [str(done.returncode)]
            raise RuntimeError(f"samba-tool {args[0]} failed: {tail[0]}")
        return done.stdout

    # --- internals --------------------------------------------------------------------

    def _check_machine(self) -> None:
        if os.geteuid() != 0:
            raise SambaUnavailableError("Samba AD DC needs root (it binds port 389)")
        for tool in ("samba", "samba-tool"):
            if shutil.which(tool) is None:
                raise SambaUnavailableError(f"{tool} not installed (make setup-ad)")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 389)) == 0:
                raise SambaUnavailableError("port 389 is taken (another LDAP server or Samba DC?)")

    def _provision(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        done = subprocess.run(
            [
                "samba-tool", "domain", "provision", f"--realm={REALM}", f"--domain={DOMAIN}",
                "--server-role=dc", "--dns-backend=NONE", f"--adminpass={ADMIN_PASSWORD}",
                f"--targetdir={self.dir}", "--host-ip=127.0.0.1", "--host-name=dc1",
                "--option=interfaces=lo", "--option=bind interfaces only=yes", "--use-rfc2307",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or [str(done.returncode)]
            raise SambaUnavailableError(f"samba-tool domain provision failed: {tail[0]}")
        conf = self.smb_conf.read_text()
        lines = []
        for original in conf.splitlines():
            stripped = original.strip()
            if stripped.startswith("server services ="):
                lines.append("\tserver services = ldap, cldap, kdc")
            elif stripped.startswith("log file ="):
                lines.append(f"\tlog file = {self.dir}/log.%m")
            else:
                lines.append(original)
            if stripped.startswith("workgroup ="):
                # simple binds over plain LDAP, as the tests and many real deployments use
                lines.append("\tldap server require strong auth = no")
                lines.append(f"\tpid directory = {self.dir}/run")
        self.smb_conf.write_text("\n".join(lines) + "\n")
        (self.dir / "run").mkdir(exist_ok=True)
        shutil.rmtree(CACHE_DIR, ignore_errors=True)
        shutil.copytree(self.dir, CACHE_DIR, symlinks=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._ready_timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                log = (self.dir / "samba.out").read_text(errors="replace").strip()
                raise SambaUnavailableError(
                    f"samba exited with {self._process.returncode}: {log[-200:]}"
                )
            try:
                self.admin().unbind_s()
                return
            except (ldap.SERVER_DOWN, ldap.UNAVAILABLE, ldap.BUSY):
                if time.monotonic() > deadline:
                    self.stop()
                    raise SambaUnavailableError(f"Samba not answering on {self.url}") from None
                time.sleep(0.2)  # poll interval while Samba starts its LDAP server
