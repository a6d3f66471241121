"""The command line's rough edges (issue 10, item 14), run as a user runs it: subprocesses."""

from __future__ import annotations

import contextlib
import http.server
import importlib.metadata
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from scimsync.emulator import RunningEmulator
from tests.fixtures.ports import emulator_url
from tests.fixtures.scim2 import Scim2Tenant
from tests.fixtures.slapd import Tree
from tests.test_cli import Cli, one_line_error

SCIM = "urn:ietf:params:scim:schemas:core:2.0:"


@pytest.fixture
def cli(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Cli:
    return Cli(ldap_tree, emulator, tmp_path)


def scimsync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI exactly as given: no --config put in front."""
    return subprocess.run(
        [sys.executable, "-m", "scimsync", *args],
        env=env if env is not None else dict(os.environ, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- help, version, where the global options go -------------------------------------------


def test_help_shows_where_the_config_comes_from() -> None:
    result = scimsync("--help")
    assert result.returncode == 0, result.stderr
    assert "[default: $SCIMSYNC_CONFIG or ./scimsync.yaml]" in result.stdout


def test_version_prints_the_installed_version() -> None:
    result = scimsync("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"scimsync {importlib.metadata.version('scimsync')}\n"


@pytest.mark.parametrize(
    ("command", "codes"),
    [
        ("check", ["0 ", "2 ", "4 "]),
        ("plan", ["0 ", "2 ", "5 "]),
        ("sync", ["0 ", "1 ", "2 ", "3 ", "4 ", "5 "]),
        ("status", ["0 ", "2 ", "5 "]),
        ("audit", ["0 ", "2 ", "5 "]),
        ("reset", ["0 ", "2 ", "5 "]),
    ],
)
def test_each_command_help_has_an_example_and_its_exit_codes(
    command: str, codes: list[str]
) -> None:
    result = scimsync(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())
    assert f"scimsync --config scimsync.yaml {command}" in text  # the example
    exits = text.split("Exit codes:", 1)[1]
    for code in codes:
        assert code in exits, exits


def test_global_options_may_follow_the_command(cli: Cli) -> None:
    cli.tree.add_user("jo")
    cli.path.write_text(yaml.safe_dump(cli.settings))
    cli.path.chmod(0o600)
    env = dict(cli.env, SCIMSYNC_CONFIG=str(cli.work / "absent.yaml"))
    result = scimsync("sync", "--log-format", "json", "--config", str(cli.path), env=env)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(event.get("event") == "cycle finished" for event in events)
    # The global form still works, and the later of two values wins.
    result = scimsync(
        "--log-format", "json", "--config", str(cli.path), "plan", "--log-format=text", env=env
    )
    assert result.returncode == 0, result.stderr
    assert not any(line.startswith("{") for line in result.stderr.splitlines())


# --- the state store ----------------------------------------------------------------------


def test_a_new_sqlite_store_is_readable_by_its_owner_only(cli: Cli) -> None:
    cli.tree.add_user("pia")
    previous = os.umask(0o022)  # the usual umask, under which the store came out 0644
    try:
        result = cli("sync")
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    files = sorted(cli.work.glob("state.db*"))
    assert cli.work / "state.db" in files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_an_existing_store_open_to_others_draws_a_warning(cli: Cli) -> None:
    assert cli("sync").returncode == 0
    (cli.work / "state.db").chmod(0o644)
    result = cli("status")
    assert result.returncode == 0, result.stderr
    assert "chmod 600" in result.stderr and str(cli.work / "state.db") in result.stderr
    assert stat.S_IMODE((cli.work / "state.db").stat().st_mode) == 0o644  # the admin's choice


@pytest.mark.parametrize("command", ["plan", "sync", "status", "audit", "reset"])
def test_a_corrupt_store_exits_5_with_one_line_naming_state(cli: Cli, command: str) -> None:
    store = cli.work / "state.db"
    store.write_bytes(b"this is not an SQLite database, whatever its name says\n" * 100)
    store.chmod(0o600)
    result = cli(command)
    assert result.returncode == 5, result.stdout + result.stderr
    line = one_line_error(result)
    assert line.startswith("scimsync: state: ") and str(store) in line


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """The file made read-only for this process: immutable for root, mode 0444 otherwise."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        return
    if subprocess.run(["chattr", "+i", str(path)], check=False).returncode != 0:
        pytest.skip("running as root where chattr +i is refused: cannot make a file read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_store_exits_5_with_one_line_naming_state(cli: Cli) -> None:
    cli.tree.add_user("ro")
    assert cli("sync").returncode == 0
    cli.tree.add_user("ro2")
    store = cli.work / "state.db"
    with unwritable(store):
        result = cli("sync")
    assert result.returncode == 5, result.stdout + result.stderr
    line = one_line_error(result)
    assert line.startswith("scimsync: state: ") and str(store) in line
    assert len(cli.emulator.users()) == 1  # nothing pushed that could not be recorded


# --- check: a SCIM service, one attempt ---------------------------------------------------


class JsonServer(http.server.ThreadingHTTPServer):
    """A real HTTP server that answers every GET with JSON of our choosing, by path suffix."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        super().__init__(("127.0.0.1", 0), JsonHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class JsonHandler(http.server.BaseHTTPRequestHandler):
    server: JsonServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        body = next((v for k, v in self.server.answers.items() if path.endswith(k)), {"ok": 1})
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


SERVICE_PROVIDER_CONFIG = {
    "schemas": [SCIM + "ServiceProviderConfig"],
    "patch": {"supported": True},
}


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({}, "GET /ServiceProviderConfig"),  # any JSON for any path
        (
            {
                "/ServiceProviderConfig": SERVICE_PROVIDER_CONFIG,
                "/Schemas": {"Resources": [{"id": SCIM + "Group"}]},
            },
            "GET /Schemas",
        ),
    ],
)
def test_check_refuses_a_server_that_is_not_scim(
    cli: Cli, answers: dict[str, Any], expected: str
) -> None:
    cli.tree.add_user("amy")
    server = JsonServer(answers)
    try:
        cli.settings["target"]["url"] = server.url
        result = cli("check")
    finally:
        server.close()
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert f"target.url: {server.url} is not a SCIM 2.0 service" in line
    assert expected in line
    assert "the API key works" not in result.stdout


def test_check_makes_one_attempt_at_a_closed_port(cli: Cli, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/scim"
    cli.settings["target"]["url"] = url
    result = cli("check")
    assert result.returncode == 4, result.stdout + result.stderr
    line = one_line_error(result)  # no "retried" warnings before it
    assert url in line and "after 1 attempt" in line


def test_check_makes_one_attempt_at_a_server_that_drops_connections(cli: Cli) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def drop_every_connection() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            connection.close()

    thread = threading.Thread(target=drop_every_connection, daemon=True)
    thread.start()
    try:
        cli.settings["target"]["url"] = f"http://127.0.0.1:{listener.getsockname()[1]}/scim"
        result = cli("check")
    finally:
        # close() alone leaves accept() blocked in the thread (Linux): shutdown wakes it.
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert result.returncode == 4, result.stdout + result.stderr
    one_line_error(result)
    assert len(accepted) == 1


def test_check_still_accepts_the_emulator(cli: Cli) -> None:
    cli.tree.add_user("kim")
    result = cli("check")
    assert result.returncode == 0, result.stderr
    assert "the API key works" in result.stdout and "patch yes" in result.stdout


def test_check_accepts_an_independent_scim_server(cli: Cli, scim2: Scim2Tenant) -> None:
    cli.tree.add_user("lou")
    cli.settings["target"] = {"type": "scim", "url": scim2.url, "token": scim2.token}
    result = cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the API key works" in result.stdout


# --- the emulator's data file -------------------------------------------------------------


class EmulatorProcess:
    """`scimsync emulate atlassian --data FILE` in a subprocess."""

    token = "edge-token"

    def __init__(self, data: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scimsync", "emulate", "atlassian", "--port", "0",
             "--token", self.token, "--data", str(data)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.http = httpx2.Client(
            base_url=emulator_url(self.process),  # printed once it accepts connections
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def user(self, name: str) -> dict[str, Any]:
        body = {
            "schemas": [SCIM + "User"],
            "userName": name,
            "emails": [{"value": name, "type": "work", "primary": True}],
        }
        response = self.http.post("/Users", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def stop(self, sig: signal.Signals) -> None:
        self.http.close()
        self.process.send_signal(sig)
        self.process.communicate(timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_emulator_data_survives_a_restart(tmp_path: Path, sig: signal.Signals) -> None:
    data = tmp_path / "emulator.json"
    first = EmulatorProcess(data)
    users = [first.user(f"u{i}@example.com") for i in range(5)]
    group = first.http.post(
        "/Groups",
        json={
            "schemas": [SCIM + "Group"],
            "displayName": "crew",
            "members": [{"value": u["id"]} for u in users[:3]],
        },
    ).json()
    patch = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [
            {"op": "add", "path": "members", "value": [{"value": users[4]["id"]}]},
            {"op": "remove", "path": f'members[value eq "{users[0]["id"]}"]'},
        ],
    }
    assert first.http.patch(f"/Groups/{group['id']}", json=patch).status_code in (200, 204)
    assert first.http.delete(f"/Users/{users[1]['id']}").status_code == 204
    first.stop(sig)
    if sig == signal.SIGTERM:  # a clean stop folded the journal into one snapshot
        assert len(data.read_bytes().splitlines()) == 1

    second = EmulatorProcess(data)
    try:
        listed = second.http.get("/Users").json()["Resources"]
        assert sorted(u["userName"] for u in listed) == [
            "u0@example.com", "u2@example.com", "u3@example.com", "u4@example.com"
        ]  # fmt: skip
        kept = second.http.get(f"/Groups/{group['id']}").json()
        assert sorted(m["value"] for m in kept["members"]) == sorted(
            [users[2]["id"], users[4]["id"]]
        )
        assert second.http.post("/Users", json={
            "schemas": [SCIM + "User"], "userName": "u3@example.com",
            "emails": [{"value": "u3@example.com", "type": "work", "primary": True}],
        }).status_code == 409  # fmt: skip
    finally:
        second.stop(signal.SIGTERM)


def test_emulator_appends_writes_instead_of_rewriting_its_file(tmp_path: Path) -> None:
    data = tmp_path / "emulator.json"
    with RunningEmulator(token="t", data_file=data) as emulator:
        with httpx2.Client(base_url=emulator.url, headers={"Authorization": "Bearer t"}) as http:
            http.post("/Users", json=user_body("first@example.com")).raise_for_status()
            # Held open, the file's inode cannot be reused by a replacement of it.
            with data.open("rb") as held:
                size = os.fstat(held.fileno()).st_size
                for index in range(20):
                    http.post("/Users", json=user_body(f"n{index}@example.com")).raise_for_status()
                assert data.stat().st_ino == os.fstat(held.fileno()).st_ino  # never replaced
                grown = data.stat().st_size - size
        one_line = len(json.dumps({"user": emulator.users()[-1]}))
    assert grown < 20 * one_line * 2  # each create added about one line, nothing more


def user_body(name: str) -> dict[str, Any]:
    return {
        "schemas": [SCIM + "User"],
        "userName": name,
        "emails": [{"value": name, "type": "work", "primary": True}],
    }
