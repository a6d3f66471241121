"""`scimsync run`: cycles on an interval, /healthz and /metrics, a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx2
import pytest
import yaml

from scimsync.emulator import RunningEmulator
from scimsync.sandbox.slapd import free_port
from tests.fixtures.slapd import Tree
from tests.harness import source_settings

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll a condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def daemon(
    ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    config = tmp_path / "scimsync.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state": f"sqlite:///{tmp_path / 'state.db'}",
                "interval": 0.5,
                "metrics_listen": f"127.0.0.1:{port}",
                "source": source_settings(ldap_tree),
                "target": {"url": emulator.url, "token": emulator.token},
                "mapping": {"title": "title"},
            }
        )
    )
    config.chmod(0o600)
    process = subprocess.Popen(
        [sys.executable, "-m", "scimsync", "--config", str(config), "--log-format", "json", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def get(url: str) -> httpx2.Response | None:
    try:
        return httpx2.get(url, timeout=2)
    except httpx2.TransportError:
        return None


def test_daemon_syncs_changes_serves_health_and_metrics_and_stops_on_sigterm(
    daemon: tuple[subprocess.Popen[str], str], ldap_tree: Tree, emulator: RunningEmulator
) -> None:
    process, base = daemon
    dn = ldap_tree.add_user("dana", title="Engineer")

    def title_at_target() -> str | None:
        users = {u["userName"]: u for u in emulator.users()}
        user = users.get("dana@example.com")
        return str(user.get("title")) if user else None

    assert eventually(title_at_target, "the first cycle") == "Engineer"
    health = eventually(lambda: get(f"{base}/healthz"), "/healthz")
    assert health.status_code == 200 and health.text.strip() == "ok"

    ldap_tree.modify(dn, title="Manager")
    eventually(lambda: title_at_target() == "Manager", "the change to reach the target")

    metrics = eventually(lambda: get(f"{base}/metrics"), "/metrics").text
    for name in (
        "scimsync_cycle_duration_seconds_count",
        'scimsync_operations_total{action="create",result="ok"} 1.0',
        'scimsync_operations_total{action="update",result="ok"} 1.0',
        "scimsync_pending_records 0.0",
        "scimsync_quarantined_records 0.0",
        "scimsync_last_success_timestamp_seconds",
    ):
        assert name in metrics, name

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert '"event": "daemon stopped"' in stderr
