"""Create or remove a throwaway 389 Directory Server instance, without systemd.

Run by Debian's /usr/bin/python3, which has lib389 (package 389-ds-base), as root:

    ds389_instance.py create NAME PORT SUFFIX PASSWORD [PLUGIN ...]
    ds389_instance.py remove NAME

PLUGINs to enable: usn, refint, contentsync (with the retro changelog it needs). The recipe
is /work/shared/reference/test-servers/start-389ds.py: `dscreate` alone runs `systemctl
start dirsrv@NAME`, which fails here, so lib389 is told there is no systemd and starts
ns-slapd itself. The instance listens on 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import sys

sys.path.insert(0, "/usr/lib/python3/dist-packages")
from lib389 import DirSrv  # type: ignore[import-not-found]
from lib389.instance.options import General2Base, Slapd2Base  # type: ignore[import-not-found]
from lib389.instance.remove import remove_ds_instance  # type: ignore[import-not-found]
from lib389.instance.setup import SetupDs  # type: ignore[import-not-found]
from lib389.plugins import (  # type: ignore[import-not-found]
    ContentSyncPlugin,
    ReferentialIntegrityPlugin,
    RetroChangelogPlugin,
    USNPlugin,
)

DirSrv.with_systemd = lambda self: False
log = logging.getLogger("ds389")
logging.basicConfig(level=logging.ERROR)

PLUGINS = {
    "usn": (USNPlugin,),
    "refint": (ReferentialIntegrityPlugin,),
    "contentsync": (RetroChangelogPlugin, ContentSyncPlugin),
}


def create(name: str, port: int, suffix: str, password: str, plugins: list[str]) -> None:
    general = General2Base(log)
    for key, value in (
        ("full_machine_name", "localhost"),
        ("strict_host_checking", False),
        ("systemd", False),
        ("selinux", False),
    ):
        general.set(key, value)
    slapd = Slapd2Base(log)
    settings: tuple[tuple[str, object], ...] = (
        ("instance_name", name),
        ("port", port),
        ("secure_port", port + 1),
        ("root_password", password),
        ("self_sign_cert", False),
    )
    for option, setting in settings:
        slapd.set(option, setting)
    backend = {"name": "userroot", "suffix": suffix, "create_suffix_entry": True}
    setup = SetupDs(verbose=False, dryrun=False, log=log, containerised=False)
    setup.create_from_args(general.collect(), slapd.collect(), [backend], None)
    ds = DirSrv(verbose=False)
    ds.local_simple_allocate(serverid=name, password=password)
    ds.log = log
    ds.open()
    ds.config.set("nsslapd-listenhost", "127.0.0.1")
    for plugin in plugins:
        for kind in PLUGINS[plugin]:
            kind(ds).enable()
    ds.restart()
    print(ds.pid_file())


def remove(name: str) -> None:
    ds = DirSrv(verbose=False)
    ds.local_simple_allocate(serverid=name)
    ds.log = log
    remove_ds_instance(ds)


if __name__ == "__main__":
    if len(sys.argv) >= 6 and sys.argv[1] == "create":
        create(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6:])
    elif len(sys.argv) == 3 and sys.argv[1] == "remove":
        remove(sys.argv[2])
    else:
        sys.exit(__doc__)
