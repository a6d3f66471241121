"""The emulated directory: users and groups in memory, indexed so every check is O(1)."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from scimsync.emulator.errors import EmulatorError, invalid_value, not_found


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _uniqueness(detail: str) -> EmulatorError:
    return EmulatorError(409, detail, "uniqueness")


# The journal is folded into the snapshot when it outgrows both: compaction then costs
# O(1) per write, amortised, and a restart never replays more than twice the data.
_COMPACT_MIN_BYTES = 4 << 20


@dataclass
class Group:
    id: str
    display_name: str
    external_id: str | None
    members: dict[str, None]  # an ordered set of user ids
    created: str
    last_modified: str


@dataclass
class Directory:
    """Users and groups with the indexes Atlassian's uniqueness rules need.

    Every public method holds the lock, so test threads may read snapshots while the
    server thread writes. With `data_file`, the file is JSON Lines: a snapshot of the
    whole directory, then one line per write since, appended before the write is
    answered (so a killed emulator loses nothing); `load` and `close` fold the lines
    into a new snapshot (temporary file, then rename).
    """

    data_file: Path | None = None
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    by_user_name: dict[str, str] = field(default_factory=dict)
    by_email: dict[str, str] = field(default_factory=dict)
    by_external_id: dict[str, dict[str, None]] = field(default_factory=dict)
    by_group_name: dict[str, str] = field(default_factory=dict)
    memberships: dict[str, dict[str, None]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _journal: IO[bytes] | None = field(default=None, init=False, repr=False)
    _journal_bytes: int = field(default=0, init=False, repr=False)
    _snapshot_bytes: int = field(default=0, init=False, repr=False)

    # --- users ---------------------------------------------------------------------------

    def user(self, user_id: str) -> dict[str, Any]:
        with self.lock:
            if user_id not in self.users:
                raise not_found("USER", user_id)
            return self.users[user_id]

    def create_user(self, cleaned: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._check_user_unique(cleaned, None)
            now = _now()
            user = {"id": str(uuid.uuid4()), **cleaned, "created": now, "lastModified": now}
            self._index_user(user)
            self._record({"user": user})
            return user

    def replace_user(self, user_id: str, cleaned: dict[str, Any]) -> dict[str, Any]:
        """PUT semantics: attributes left out of `cleaned` are cleared."""
        with self.lock:
            old = self.user(user_id)
            self._check_user_unique(cleaned, user_id)
            self._unindex_user(old)
            user = {
                "id": user_id,
                **cleaned,
                "created": old["created"],
                "lastModified": _now(),
            }
            self._index_user(user)
            self._record({"user": user})
            return user

    def delete_user(self, user_id: str) -> None:
        """Removes the record and its memberships; the id answers 404 from then on."""
        with self.lock:
            self._remove_user(self.user(user_id))
            self._record({"delete_user": user_id})

    def _remove_user(self, user: dict[str, Any]) -> None:
        for group_id in self.memberships.pop(user["id"], {}):
            self.groups[group_id].members.pop(user["id"], None)
        self._unindex_user(user)

    def find_users(self, attribute: str | None, value: str | None) -> list[dict[str, Any]]:
        with self.lock:
            if attribute is None or value is None:
                return list(self.users.values())
            if attribute == "userName":
                found = self.by_user_name.get(value.lower())
                return [self.users[found]] if found else []
            ids = self.by_external_id.get(value, {})
            return [self.users[i] for i in ids]

    def groups_of(self, user_id: str) -> list[Group]:
        with self.lock:
            return [self.groups[g] for g in self.memberships.get(user_id, {})]

    def _check_user_unique(self, user: dict[str, Any], own_id: str | None) -> None:
        holder = self.by_user_name.get(user["userName"].lower())
        if holder is not None and holder != own_id:
            raise _uniqueness(f"Resource [USER]: with userName[{user['userName']}] already exists.")
        for email in user["emails"]:
            holder = self.by_email.get(email["value"].lower())
            if holder is not None and holder != own_id:
                # The exact wording of Atlassian's 409 (atlassian-scim-api.md section 2).
                raise _uniqueness(f"Resource [USER]: with email[{email['value']}] already exists.")

    def _index_user(self, user: dict[str, Any]) -> None:
        user_id = user["id"]
        self.users[user_id] = user
        self.by_user_name[user["userName"].lower()] = user_id
        for email in user["emails"]:
            self.by_email[email["value"].lower()] = user_id
        if "externalId" in user:
            self.by_external_id.setdefault(user["externalId"], {})[user_id] = None

    def _unindex_user(self, user: dict[str, Any]) -> None:
        user_id = user["id"]
        del self.users[user_id]
        self.by_user_name.pop(user["userName"].lower(), None)
        for email in user["emails"]:
            if self.by_email.get(email["value"].lower()) == user_id:
                del self.by_email[email["value"].lower()]
        if "externalId" in user:
            holders = self.by_external_id.get(user["externalId"], {})
            holders.pop(user_id, None)
            if not holders:
                self.by_external_id.pop(user["externalId"], None)

    # --- groups --------------------------------------------------------------------------

    def group(self, group_id: str) -> Group:
        with self.lock:
            if group_id not in self.groups:
                raise not_found("GROUP", group_id)
            return self.groups[group_id]

    def create_group(self, name: str, external_id: str | None, members: list[str]) -> Group:
        with self.lock:
            self._check_group_name(name, None)
            self._check_members(members)
            now = _now()
            group = Group(str(uuid.uuid4()), name, external_id, {}, now, now)
            self._add_group(group, members)
            self._record({"group": _group_json(group)})
            return group

    def _add_group(self, group: Group, members: Iterable[str]) -> None:
        self.groups[group.id] = group
        self.by_group_name[group.display_name.lower()] = group.id
        self._set_members(group, dict.fromkeys(members))

    def update_group(
        self,
        group_id: str,
        name: str,
        external_id: str | None,
        members: dict[str, None],
        *,
        allow_rename: bool,
        touched: Collection[str] | None = None,
    ) -> Group:
        """Sets all of a group's state at once, after every check passed. `touched`: the
        only ids whose membership may differ (a PATCH's), so a 100,000-member group is not
        walked for a change of one."""
        with self.lock:
            group = self.group(group_id)
            if name != group.display_name:
                if not allow_rename:
                    raise EmulatorError(400, "displayName is immutable", "mutability")
                self._check_group_name(name, group_id)
            self._check_members(
                members if touched is None else [m for m in touched if m in members]
            )
            self.by_group_name.pop(group.display_name.lower(), None)
            self.by_group_name[name.lower()] = group_id
            group.display_name = name
            group.external_id = external_id
            self._set_members(group, members, touched)
            group.last_modified = _now()
            if touched is None:
                self._record({"group": _group_json(group)})
            else:  # a PATCH's few ids, not the whole member list of a large group
                attributes = _group_json(group, with_members=False)
                attributes["add"] = [m for m in touched if m in members]
                attributes["remove"] = [m for m in touched if m not in members]
                self._record({"group_change": attributes})
            return group

    def delete_group(self, group_id: str) -> None:
        with self.lock:
            self._remove_group(self.group(group_id))
            self._record({"delete_group": group_id})

    def _remove_group(self, group: Group) -> None:
        self._set_members(group, {})
        del self.groups[group.id]
        self.by_group_name.pop(group.display_name.lower(), None)

    def find_groups(self, display_name: str | None) -> list[Group]:
        with self.lock:
            if display_name is None:
                return list(self.groups.values())
            found = self.by_group_name.get(display_name.lower())
            return [self.groups[found]] if found else []

    def _check_group_name(self, name: str, own_id: str | None) -> None:
        holder = self.by_group_name.get(name.lower())
        if holder is not None and holder != own_id:
            raise _uniqueness(f"Resource [GROUP]: with displayName[{name}] already exists.")

    def _check_members(self, members: Iterable[str]) -> None:
        for user_id in members:
            if user_id not in self.users:
                raise invalid_value(f"member {user_id} is not a user of this directory")

    def _set_members(
        self, group: Group, members: dict[str, None], touched: Collection[str] | None = None
    ) -> None:
        """`touched`: the ids that may have changed; by default every old and new member."""
        for user_id in group.members.keys() | members.keys() if touched is None else touched:
            if user_id in members:
                self.memberships.setdefault(user_id, {})[group.id] = None
            else:
                self.memberships.get(user_id, {}).pop(group.id, None)
        group.members = members

    # --- whole directory -----------------------------------------------------------------

    def wipe(self) -> None:
        with self.lock:
            for index in (
                self.users,
                self.groups,
                self.by_user_name,
                self.by_email,
                self.by_external_id,
                self.by_group_name,
                self.memberships,
            ):
                index.clear()
            if self.data_file is not None:
                self._compact()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "users": copy.deepcopy(list(self.users.values())),
                "groups": [_group_json(g) for g in self.groups.values()],
            }

    def load(self) -> None:
        """Reads `data_file` (snapshot, then changes) and starts a new snapshot of it.

        A file that is not ours is a one-line error. A last line cut short (the
        emulator killed while appending) is dropped: its write was never answered.
        """
        if self.data_file is None:
            return
        try:
            lines = self.data_file.read_bytes().split(b"\n") if self.data_file.exists() else []
            with self.lock:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        if number == len(lines):  # no newline after it: a torn append
                            break
                        raise
                    if number == 1:
                        self._load_snapshot(entry)
                    else:
                        self._replay(entry)
                self._compact()
        except KeyError as exc:
            raise ValueError(f"{self.data_file}: not an emulator data file (no {exc})") from None
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{self.data_file}: not an emulator data file ({exc})") from None

    def close(self) -> None:
        """Folds the changes into a new snapshot; the emulator calls it when it stops."""
        with self.lock:
            if self._journal is not None:
                self._compact()
                self._journal.close()
                self._journal = None

    def _load_snapshot(self, data: dict[str, Any]) -> None:
        for user in data["users"]:
            self._index_user(user)
        for raw in data["groups"]:
            self._add_group(_group_from_json(raw), raw["members"])

    def _replay(self, entry: dict[str, Any]) -> None:
        """Applies one journal line; each was a write that passed every check."""
        if "user" in entry:
            user = entry["user"]
            if user["id"] in self.users:
                self._unindex_user(self.users[user["id"]])
            self._index_user(user)
        elif "delete_user" in entry:
            self._remove_user(self.users[entry["delete_user"]])
        elif "group" in entry:
            raw = entry["group"]
            if raw["id"] in self.groups:
                self._remove_group(self.groups[raw["id"]])
            self._add_group(_group_from_json(raw), raw["members"])
        elif "group_change" in entry:
            change = entry["group_change"]
            group = self.groups[change["id"]]
            self.by_group_name.pop(group.display_name.lower(), None)
            self.by_group_name[change["displayName"].lower()] = group.id
            group.display_name = change["displayName"]
            group.external_id = change.get("externalId")
            group.last_modified = change["lastModified"]
            members = dict(group.members)
            members.update(dict.fromkeys(change["add"]))
            for user_id in change["remove"]:
                members.pop(user_id, None)
            self._set_members(group, members, [*change["add"], *change["remove"]])
        elif "delete_group" in entry:
            self._remove_group(self.groups[entry["delete_group"]])
        else:
            raise ValueError(f"unknown change {sorted(entry)}")

    def _record(self, change: dict[str, Any]) -> None:
        """Appends one change in one write: the kernel has it before the answer is sent."""
        if self._journal is None:
            return
        line = (json.dumps(change) + "\n").encode()
        self._journal.write(line)
        self._journal_bytes += len(line)
        if self._journal_bytes > max(_COMPACT_MIN_BYTES, 2 * self._snapshot_bytes):
            self._compact()

    def _compact(self) -> None:
        """Writes the snapshot to a new file, renames it over the old one, appends from then on."""
        assert self.data_file is not None
        text = (json.dumps(self.snapshot()) + "\n").encode()
        with tempfile.NamedTemporaryFile(
            "wb", dir=self.data_file.parent, prefix=".emulator-", delete=False
        ) as handle:
            handle.write(text)
        os.replace(handle.name, self.data_file)
        if self._journal is not None:
            self._journal.close()
        self._journal = open(self.data_file, "ab", buffering=0)  # noqa: SIM115 (kept open)
        self._journal_bytes = 0
        self._snapshot_bytes = len(text)


def _group_json(group: Group, *, with_members: bool = True) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": group.id,
        "displayName": group.display_name,
        "externalId": group.external_id,
        "created": group.created,
        "lastModified": group.last_modified,
    }
    if with_members:
        raw["members"] = list(group.members)
    return raw


def _group_from_json(raw: dict[str, Any]) -> Group:
    return Group(
        raw["id"],
        raw["displayName"],
        raw.get("externalId"),
        {},
        raw["created"],
        raw["lastModified"],
    )
