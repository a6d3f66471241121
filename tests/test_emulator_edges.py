"""The emulator's edges: where its token comes from, an empty one, a host others can reach."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest

from scimsync.emulator import PREFIX, RunningEmulator, create_app, running
from tests.fixtures.ports import emulator_url

EMULATE = [sys.executable, "-m", "scimsync", "emulate", "atlassian"]
WARNING = (
    "scimsync emulate: warning: serving plain HTTP with test data on 0.0.0.0: "
    "reachable from other hosts\n"
)


def environment(token: str | None = None) -> dict[str, str]:
    """This process's environment, with SCIMSYNC_EMULATOR_TOKEN set to `token` or removed."""
    env = {k: v for k, v in os.environ.items() if k != "SCIMSYNC_EMULATOR_TOKEN"}
    if token is not None:
        env["SCIMSYNC_EMULATOR_TOKEN"] = token
    return env


def refused(args: Sequence[str], env_token: str | None = None) -> str:
    """Runs `emulate atlassian ARGS` expecting exit 2 with one line; returns that line."""
    result = subprocess.run(
        [*EMULATE, "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=environment(env_token),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


class Served:
    """A running `emulate atlassian` subprocess, and what it printed once stopped."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url
        self.stderr = ""

    def status(self, token: str | None) -> int:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx2.get(f"{self.url}/ServiceProviderConfig", headers=headers).status_code


@contextmanager
def serving(args: Sequence[str], env_token: str | None = None) -> Iterator[Served]:
    """`emulate atlassian --port 0 ARGS`, reached on 127.0.0.1; terminated on leaving."""
    process = subprocess.Popen(
        [*EMULATE, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(env_token),
    )
    served = Served(process, "")
    try:
        port = urlsplit(emulator_url(process)).port  # printed once it accepts connections
        served.url = f"http://127.0.0.1:{port}{PREFIX}"
        yield served
    finally:
        process.terminate()
        _, served.stderr = process.communicate(timeout=30)


# --- an empty token -------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_token_is_refused(token: str) -> None:
    assert "--token" in refused(["--token", token])


def test_a_whitespace_token_from_the_environment_is_refused() -> None:
    assert "SCIMSYNC_EMULATOR_TOKEN" in refused([], env_token=" ")


@pytest.mark.parametrize("env_token", [None, ""])  # an empty variable counts as unset
def test_no_token_at_all_is_one_line_naming_every_source(env_token: str | None) -> None:
    line = refused([], env_token=env_token)
    for source in ("--token", "--token-file", "SCIMSYNC_EMULATOR_TOKEN"):
        assert source in line


@pytest.mark.parametrize("token", ["", " \t"])
def test_create_app_and_running_emulator_refuse_an_empty_token(token: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        create_app(token)
    with pytest.raises(ValueError, match="empty"):
        RunningEmulator(token=token)


def test_running_emulator_without_a_token_picks_one() -> None:
    with RunningEmulator() as emulator:
        assert emulator.token.strip()
        headers = {"Authorization": f"Bearer {emulator.token}"}
        assert httpx2.get(f"{emulator.url}/Users", headers=headers).status_code == 200


# --- where the token comes from -------------------------------------------------------------


def test_the_token_from_a_file_is_the_one_accepted(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  file-token\n")
    with serving(["--token-file", str(token_file)]) as served:
        assert served.status("file-token") == 200
        assert served.status(None) == 401
        assert served.status("  file-token") == 401
    assert "file-token" not in served.stderr


def test_the_token_from_the_environment_is_the_one_accepted() -> None:
    with serving([], env_token="env-token") as served:
        assert served.status("env-token") == 200
        assert served.status(None) == 401


def test_a_token_file_wins_over_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    with serving(["--token-file", str(token_file)], env_token="env-token") as served:
        assert served.status("file-token") == 200
        assert served.status("env-token") == 401


def test_token_and_token_file_together_are_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    line = refused(["--token", "T", "--token-file", str(token_file)])
    assert "--token" in line and "--token-file" in line


def test_a_missing_token_file_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "token"
    assert str(missing) in refused(["--token-file", str(missing)])


def test_an_unreadable_token_file_is_one_line_naming_it(tmp_path: Path) -> None:
    # A directory: chmod 000 would not stop root, who may be running the tests.
    assert str(tmp_path) in refused(["--token-file", str(tmp_path)])


def test_a_token_file_not_in_utf8_is_one_line_naming_it(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xff\xfe\x00token")
    assert str(token_file) in refused(["--token-file", str(token_file)])


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_token_file_is_refused(tmp_path: Path, content: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    line = refused(["--token-file", str(token_file)])
    assert str(token_file) in line and "empty" in line


def test_a_token_file_of_several_lines_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-secret\nsecond-secret\n")
    line = refused(["--token-file", str(token_file)])
    assert str(token_file) in line
    assert "secret" not in line.replace(str(token_file), "")


# --- a host others can reach ----------------------------------------------------------------


def test_a_host_reachable_from_other_hosts_is_warned_about_but_served() -> None:
    with serving(["--token", "T", "--host", "0.0.0.0"]) as served:
        assert served.status("T") == 200
    assert served.stderr == WARNING


def test_a_loopback_host_is_not_warned_about() -> None:
    with serving(["--token", "T", "--host", "localhost"]) as served:
        assert served.status("T") == 200
    assert served.stderr == ""


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("emulator.example.com", False),
    ],
)
def test_which_hosts_count_as_loopback(host: str, loopback: bool) -> None:
    assert running.is_loopback(host) is loopback
