"""The listener of `scimsync run` (/healthz, /metrics) under idle, stalled and concurrent clients.

A real HealthServer on a free loopback port, driven over real TCP connections; waits are
bounded by socket and client timeouts, never by sleeps.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from scimsync.metrics import HealthServer, Metrics

PROBE_TIMEOUT = 10.0  # far above an answer's time; reached only when the listener is stuck


@pytest.fixture
def listener() -> Iterator[HealthServer]:
    server = HealthServer(Metrics(), "127.0.0.1:0", stale_after=60, read_timeout=0.5)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect(server: HealthServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=PROBE_TIMEOUT)


def probe(server: HealthServer) -> httpx2.Response:
    return httpx2.get(f"http://127.0.0.1:{server.port}/healthz", timeout=PROBE_TIMEOUT)


def test_healthz_answers_while_another_connection_sends_nothing(listener: HealthServer) -> None:
    with connect(listener):
        answer = probe(listener)
    assert answer.status_code == 200 and answer.text == "starting\n"


def test_a_connection_that_sends_nothing_or_stalls_is_closed_after_the_read_timeout(
    listener: HealthServer,
) -> None:
    with connect(listener) as silent, connect(listener) as stalled:
        stalled.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the end of its headers
        # recv returns b"" once the server has closed the connection; a listener without a
        # read timeout would let the PROBE_TIMEOUT pass instead (socket.timeout).
        assert silent.recv(1) == b""
        assert stalled.recv(1) == b""
    assert probe(listener).status_code == 200


def test_concurrent_probes_all_answer_beside_idle_connections(listener: HealthServer) -> None:
    idle = [connect(listener) for _ in range(4)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: probe(listener), range(16)))
            scrapes = list(
                pool.map(
                    lambda _: httpx2.get(
                        f"http://127.0.0.1:{listener.port}/metrics", timeout=PROBE_TIMEOUT
                    ),
                    range(8),
                )
            )
    finally:
        for connection in idle:
            connection.close()
    assert [a.status_code for a in answers] == [200] * 16
    assert all("scimsync_cycles_total" in s.text for s in scrapes)


def test_the_address_names_the_port_bound_for_port_0(listener: HealthServer) -> None:
    """What `run` logs at start: with `metrics_listen` port 0, the only place it shows."""
    assert listener.port > 0 and listener.address == f"127.0.0.1:{listener.port}"


def test_an_ipv6_listen_address_is_served() -> None:
    """`metrics_listen: "[::1]:PORT"` passes config validation, so it must serve."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    server = HealthServer(Metrics(), "[::1]:0", stale_after=60)
    server.start()
    try:
        assert server.address == f"[::1]:{server.port}"
        answer = httpx2.get(f"http://{server.address}/healthz", timeout=5)
        assert answer.status_code == 200
    finally:
        server.stop()
