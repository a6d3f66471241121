"""A provisioning channel wired to the test slapd subtree and the emulator, for end-to-end tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest

from scimsync.config import Config
from scimsync.cycle.prepare import Prepared, dry_run
from scimsync.cycle.run import CycleReport, sync
from scimsync.directory import LdapDirectory
from scimsync.emulator import RunningEmulator
from scimsync.state import Store
from tests.fixtures.samba import AdTree
from tests.fixtures.slapd import Tree

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Poll a condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def source_settings(tree: Tree, password: str | None = None) -> dict[str, Any]:
    """The `source` section reading a test subtree as the sandbox's reader account."""
    return {
        "url": tree.server.url,
        "bind_dn": tree.server.bind_dn,
        "bind_password": tree.server.password if password is None else password,
        "base_dn": tree.base_dn,
        "directory": tree.server.directory,
        "users": {"filter": "(objectClass=inetOrgPerson)"},
        "groups": {"filter": "(objectClass=groupOfNames)"},
    }


class SearchCounter:
    """Counts the search requests a directory sends (one per page of a paged search).

    python-ldap's search_ext_s sends through search_ext, so only that one is counted."""

    def __init__(self, directory: LdapDirectory, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        ldap_object = directory._conn._conn  # the python-ldap connection: real searches
        monkeypatch.setattr(ldap_object, "search_ext", self._counting(ldap_object.search_ext))

    def _counting(self, real: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return real(*args, **kwargs)

        return counted


class Channel:
    def __init__(self, tree: Tree, emulator: RunningEmulator, state_dir: Path) -> None:
        self.tree = tree
        self.emulator = emulator
        self.state_url = f"sqlite:///{state_dir / 'state.db'}"
        self.source: dict[str, Any] = source_settings(tree)
        self.source["account_status"] = {"attribute": "employeeType", "disabled_value": "disabled"}
        self.options: dict[str, Any] = {}
        self.mapping: dict[str, Any] = {
            "userName": "mail",
            "emails.work": "mail",
            "displayName": "cn",
            "title": "title",
        }
        self.target: dict[str, Any] = {"type": "atlassian"}  # the profile and its settings

    def config(self) -> Config:
        return Config.model_validate(
            {
                "state": self.state_url,
                "source": self.source,
                "target": {"url": self.emulator.url, "token": self.emulator.token, **self.target},
                "options": self.options,
                "mapping": self.mapping,
            }
        )

    def sync(self, **kwargs: Any) -> CycleReport:
        config = self.config()
        with Store.open(config.state, config.channel) as store:
            return asyncio.run(sync(config, store, **kwargs))

    def plan(self, **kwargs: Any) -> Prepared:
        config = self.config()
        with Store.open(config.state, config.channel) as store:
            return asyncio.run(dry_run(config, store, **kwargs))

    def store(self) -> Store:
        config = self.config()
        return Store.open(config.state, config.channel)

    # --- the target's view ---------------------------------------------------------------

    def http(self) -> httpx2.Client:
        return httpx2.Client(
            base_url=self.emulator.url,
            headers={"Authorization": f"Bearer {self.emulator.token}"},
            timeout=10,
        )

    def users(self) -> dict[str, dict[str, Any]]:
        """Target users by userName."""
        return {str(u["userName"]): u for u in self.emulator.users()}

    def groups(self) -> dict[str, dict[str, Any]]:
        return {str(g["displayName"]): g for g in self.emulator.groups()}

    def member_names(self, group: str) -> set[str]:
        by_id = {str(u["id"]): str(u["userName"]) for u in self.emulator.users()}
        members = self.groups()[group].get("members") or []
        return {by_id.get(str(m["value"]), str(m["value"])) for m in members}

    def create_target_user(self, user_name: str, **extra: Any) -> str:
        body = {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": user_name,
            "emails": [{"value": user_name, "type": "work", "primary": True}],
            **extra,
        }
        with self.http() as client:
            response = client.post("/Users", json=body)
            response.raise_for_status()
            return str(response.json()["id"])

    def create_target_group(self, name: str, member_ids: list[str] | None = None) -> str:
        body = {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": name,
            "members": [{"value": m} for m in member_ids or []],
        }
        with self.http() as client:
            response = client.post("/Groups", json=body)
            response.raise_for_status()
            return str(response.json()["id"])

    def patch_target(self, path: str, *operations: dict[str, Any]) -> None:
        """A change made by hand at the target, as an admin or another tool would."""
        body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"]}
        with self.http() as client:
            client.patch(path, json={**body, "Operations": list(operations)}).raise_for_status()

    def writes(self) -> int:
        """Write requests the emulator served since its counters were last reset."""
        by_method: dict[str, int] = self.emulator.stats()["by_method"]
        return sum(
            n for method, n in by_method.items() if method in ("POST", "PUT", "PATCH", "DELETE")
        )


class AdChannel(Channel):
    """The same channel reading an Active Directory tree with the flavour's defaults."""

    def __init__(self, tree: AdTree, emulator: RunningEmulator, state_dir: Path) -> None:
        self.ad = tree
        self.emulator = emulator
        self.state_url = f"sqlite:///{state_dir / 'state.db'}"
        self.source = tree.source()
        self.options = {}
        self.mapping = {}
        self.target = {"type": "atlassian"}
