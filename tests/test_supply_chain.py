"""The supply chain: a bootstrap that keeps its apt log private."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
