"""The sandbox's servers get ports nobody else has, and are found on them by their own sockets."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import ldap
import pytest

from scimsync.sandbox.ports import (
    NotListeningError,
    listening_port,
    listening_ports,
    wait_listening,
)
from scimsync.sandbox.slapd import Slapd, SlapdError
from tests.fixtures.slapd import RestartableSlapd

# Listens on two ports, binds a third without listening, connects out from a fourth.
_SERVER = """\
import socket, sys
listening = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
bound = socket.socket()
bound.bind(("127.0.0.1", 0))
client = socket.create_connection(listening[0].getsockname())
ports = [s.getsockname()[1] for s in (*listening, bound, client)]
print(*ports, flush=True)
sys.stdin.read()
"""


def test_listening_ports_are_exactly_those_the_process_listens_on() -> None:
    mine = socket.create_server(("127.0.0.1", 0))  # this process's: not the child's
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        first, second, bound, client = map(int, process.stdout.readline().split())
        assert listening_ports(process.pid) == {first, second}
        assert wait_listening(process, [first, second]) == {first, second}
        assert mine.getsockname()[1] not in listening_ports(process.pid)
        assert {bound, client}.isdisjoint(listening_ports(process.pid))
    finally:
        process.communicate("")
        mine.close()
    assert listening_ports(process.pid) == frozenset()  # exited: nothing listens


def test_an_http_server_on_port_0_is_found_on_the_port_it_says() -> None:
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        said = process.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (...) ...", once bound
        port = int(said.split(" port ")[1].split()[0])
        assert listening_ports(process.pid) == {port}
        assert listening_port(process) == port
    finally:
        process.terminate()
        process.wait(10)


def test_a_server_that_does_not_listen_is_reported_and_killed() -> None:
    process = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE)
    with pytest.raises(NotListeningError, match="did not listen"):
        listening_port(process, timeout=0.1)
    assert process.returncode is not None  # not left running by whoever gave up on it


def _marker(server: Slapd, name: str) -> None:
    entry = {"objectClass": [b"organizationalRole"], "cn": [name.encode()], "description": [b"m"]}
    server.add_entries([(f"cn={name},{server.base_dn}", entry)])


def _markers(url: str, server: Slapd) -> set[str]:
    """The markers seen through `url`, bound as the admin, over TLS for ldaps://."""
    conn = ldap.initialize(url)
    try:
        conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(server.ca_file))
        conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
        conn.simple_bind_s(server.admin_dn, server.admin_password)
        found = conn.search_s(server.base_dn, ldap.SCOPE_ONELEVEL, "(description=m)")
        return {dn for dn, _ in found}
    finally:
        conn.unbind_s()


def test_two_slapds_started_at_once_each_answer_on_their_own_ports() -> None:
    servers = [Slapd(), Slapd()]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Slapd.start, servers))
        for index, server in enumerate(servers):
            _marker(server, f"marker-{index}")
        assert len({port for s in servers for port in (s.port, s.tls_port)}) == 4
        for index, server in enumerate(servers):
            own = {f"cn=marker-{index},{server.base_dn}"}
            assert _markers(server.url, server) == own
            assert _markers(server.ldaps_url, server) == own
    finally:
        for server in servers:
            server.stop()


class _FakeLdap(socketserver.BaseRequestHandler):
    """Answers every request with a successful BindResponse: enough to pass for slapd."""

    def handle(self) -> None:
        while data := self.request.recv(4096):
            message_id = data[4]  # 30 LEN 02 01 ID: a short message with a one-byte id
            self.request.sendall(bytes([0x30, 12, 2, 1, message_id, 0x61, 7, 10, 1, 0, 4, 0, 4, 0]))


class _FakeLdapServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # as slapd does: the port it left may be in TIME_WAIT
    daemon_threads = True


@contextmanager
def _fake_ldap(port: int) -> Iterator[None]:
    server = _FakeLdapServer(("127.0.0.1", port), _FakeLdap)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_restart_reuses_the_ports_and_fails_if_another_server_took_one(tmp_path: Path) -> None:
    with RestartableSlapd(workdir=tmp_path / "slapd") as server:
        urls = server.url, server.ldaps_url
        server.stop()
        server.restart()
        assert (server.url, server.ldaps_url) == urls
        _marker(server, "kept")
        server.stop()
        with _fake_ldap(server.port), pytest.raises(SlapdError, match="taken"):
            server.restart()  # not fooled by the answers of the server now on its port
        server.restart()
        assert _markers(server.url, server) == {f"cn=kept,{server.base_dn}"}


def test_a_slapd_has_no_url_before_it_first_starts() -> None:
    server = Slapd()
    try:
        with pytest.raises(SlapdError, match="before its first start"):
            _ = server.url
    finally:
        server.stop()  # removes its directory
