"""The supply chain: every package installed from a hash-pinned lock, and a bootstrap that
keeps its apt log private."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
LOCKS = ("bootstrap.txt", "lock.txt", "uv.txt")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)")
STALE = "out of date: run `make lock` and commit requirements/"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(filename: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of each requirement in a requirements/*.txt file."""
    text = (REQUIREMENTS / filename).read_text().replace("\\\n", " ")
    entries: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{filename}: not an exact pin: {line.strip()}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        entries[normalized(match["name"])] = (match["version"], hashes)
    return entries


def pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


@pytest.mark.parametrize("filename", LOCKS)
def test_every_locked_package_is_pinned_with_its_hashes(filename: str) -> None:
    entries = locked(filename)
    assert entries
    unhashed = [name for name, (_, hashes) in entries.items() if not hashes]
    assert unhashed == []


def test_the_lock_holds_every_dependency_at_its_pyproject_pin() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    lock = locked("lock.txt")
    for requirement in wanted:
        match = PIN.match(requirement)
        assert match, f"pyproject.toml: {requirement!r} is not an exact pin"
        name, version = normalized(match["name"]), match["version"]
        assert name in lock, f"{name} is not in requirements/lock.txt, {STALE}"
        assert lock[name][0] == version, f"{name} {version} in pyproject.toml, {STALE}"


def test_pip_and_the_build_backend_are_pinned_where_bootstrap_installs_them_first() -> None:
    build_system = pyproject()["build-system"]
    assert isinstance(build_system, dict)
    bootstrap = locked("bootstrap.txt")
    assert "pip" in bootstrap
    for requirement in build_system["requires"]:
        match = PIN.match(requirement)
        assert match, f"[build-system] requires {requirement!r}: not an exact pin"
        name = normalized(match["name"])
        assert bootstrap.get(name, ("",))[0] == match["version"], f"{name}: {STALE}"


@pytest.mark.skipif(os.geteuid() != 0, reason="bootstrap installs system packages only as root")
def test_bootstrap_writes_its_apt_log_to_a_private_file_and_removes_it(tmp_path: Path) -> None:
    # apt-get failing on demand: a stand-in on PATH records where its output goes.
    fakes, private_tmp, seen = tmp_path / "bin", tmp_path / "tmp", tmp_path / "apt-log"
    fakes.mkdir()
    private_tmp.mkdir()
    (fakes / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")  # nothing is installed
    (fakes / "apt-get").write_text(
        "#!/bin/sh\n"
        f'stat -c "%n %a" "$(readlink /proc/$$/fd/1)" >{seen}\n'
        "echo 'E: Unable to locate package slapd'\n"
        "exit 100\n"
    )
    for fake in fakes.iterdir():
        fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fakes}:{os.environ['PATH']}", TMPDIR=str(private_tmp))
    result = subprocess.run(
        [str(ROOT / "scripts" / "bootstrap")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "E: Unable to locate package slapd" in result.stderr  # the log's tail
    log_path, mode = seen.read_text().split()
    assert Path(log_path).parent == private_tmp
    assert mode == "600"
    assert list(private_tmp.iterdir()) == []
