"""`make demo`: a throwaway directory and the local Atlassian emulator, driven by the real CLI."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import ldap

from scimsync.emulator import RunningEmulator
from scimsync.sandbox.slapd import Slapd

HERE = Path(__file__).parent
PEOPLE = "ou=people,dc=example,dc=com"
GROUPS = "ou=groups,dc=example,dc=com"

CONFIG = """\
state: sqlite:///{state}
source:
  url: {ldap_url}
  bind_dn: {bind_dn}
  bind_password: ${{DEMO_LDAP_PASSWORD}}
  base_dn: dc=example,dc=com
  directory: openldap
  users:
    group_dn: cn=atlassian-users,{groups}
    nested: true
  groups:
    filter: (objectClass=groupOfNames)
    nested: true
  account_status:
    attribute: employeeType
    disabled_value: disabled
target:
  type: atlassian
  url: {target_url}
  token: ${{DEMO_ATLASSIAN_TOKEN}}
options:
  remove_user_action: disable
  max_deletions: 10
mapping:
  userName: mail
  emails.work: mail
  externalId: "{{{{ guid }}}}"
  displayName: "{{{{ givenName }}}} {{{{ sn }}}}"
  title: title
  department: departmentNumber
"""


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m" if sys.stdout.isatty() else f"\n== {title}", flush=True)


def scimsync(config: Path, env: dict[str, str], *args: str) -> int:
    print(f"$ scimsync {' '.join(args)}", flush=True)
    command = [sys.executable, "-m", "scimsync", "--config", str(config), *args]
    return subprocess.run(command, env=env, check=False).returncode


def change_directory(server: Slapd) -> None:
    conn = server.admin()
    try:
        conn.modify_s(f"uid=bob,{PEOPLE}", [(ldap.MOD_ADD, "employeeType", [b"disabled"])])
        print("  bob is disabled (employeeType: disabled)")
        conn.rename_s(f"cn=design,{GROUPS}", "cn=product-design", delold=1)
        print("  group design is renamed to product-design (same entryUUID)")
        conn.modify_s(
            f"cn=support,{GROUPS}", [(ldap.MOD_DELETE, "member", [f"uid=ivan,{PEOPLE}".encode()])]
        )
        print("  ivan leaves support (and with it Atlassian's scope)")
        conn.modify_s(
            f"uid=alice,{PEOPLE}", [(ldap.MOD_REPLACE, "title", [b"Distinguished Engineer"])]
        )
        print("  alice's title is now Distinguished Engineer")
    finally:
        conn.unbind_s()


def summarise(emulator: RunningEmulator) -> None:
    users = emulator.users()
    active = sum(1 for user in users if user.get("active", True))
    print(f"  {len(users)} users ({active} active, {len(users) - active} deactivated)")
    for group in sorted(emulator.groups(), key=lambda g: str(g["displayName"])):
        members = group.get("members") or []
        print(f"  group {group['displayName']}: {len(members)} members")
    stats = emulator.stats()
    print(f"  requests served: {stats.get('by_method', stats)}")


def main() -> int:
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="scimsync-demo-") as work, Slapd() as server:
        step("a throwaway OpenLDAP with the sample directory")
        count = server.load_ldif(HERE / "directory.ldif")
        print(f"  {server.url}: {count} entries (32 people, 6 groups, nested; mallory disabled)")
        with RunningEmulator(token=token) as emulator:
            print(f"  Atlassian emulator at {emulator.url}")
            config = Path(work) / "scimsync.yaml"
            config.write_text(
                CONFIG.format(
                    state=Path(work) / "state.db",
                    ldap_url=server.url,
                    bind_dn=server.bind_dn,
                    groups=GROUPS,
                    target_url=emulator.url,
                )
            )
            config.chmod(0o600)
            env = dict(os.environ, DEMO_LDAP_PASSWORD=server.password, DEMO_ATLASSIAN_TOKEN=token)
            step("check: the config, the directory and the target")
            if scimsync(config, env, "check") != 0:
                return 1
            step("plan: what the first sync will do (a dry run)")
            scimsync(config, env, "plan")
            step("sync")
            if scimsync(config, env, "sync") != 0:
                return 1
            step("the directory changes")
            change_directory(server)
            step("plan and sync again: only what changed")
            scimsync(config, env, "plan")
            if scimsync(config, env, "sync") != 0:
                return 1
            step("status")
            scimsync(config, env, "status")
            step("what the target now holds")
            summarise(emulator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
