"""A change of the identity attribute is a re-key, never a deprovisioning.

Links, pushed member sets and failures are keyed by source ids, the values of
source.guid_attribute. Switching the attribute (entryUUID to nsUniqueId for a move to 389
Directory Server, say) would make every linked record look gone and every entry new. The
store remembers which attribute its links use (the `identity` watermark row); when the
configured one differs, one scan reads both attributes of every entry and the links follow
their entries, in one transaction, before the cycle's full reconciliation.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from scimsync import log
from scimsync.config import Config, ConfigError
from scimsync.directory import LdapDirectory
from scimsync.directory.reader import Identity
from scimsync.model import Kind, LinkedGroup, LinkedUser
from scimsync.state import FailureRecord, Store
from scimsync.state.watermarks import IDENTITY

logger = log.get(__name__)

KEY = "source.guid_attribute"


class RekeyRefusedError(ConfigError):
    """The links cannot follow their entries to the new identity attribute."""


@dataclass(frozen=True, slots=True)
class Rekey:
    old_attribute: str
    new_attribute: str
    new_ids: dict[str, str]  # old source id -> new one, for every linked record found
    users: int  # linked users and groups re-pointed
    groups: int
    not_found: int  # linked records no entry has the old id of: left as they are

    @property
    def cause(self) -> str:
        text = (
            f"{KEY} changed from {self.old_attribute} to {self.new_attribute}: "
            f"{self.users} users and {self.groups} groups re-keyed"
        )
        if self.not_found:
            text += f"; {self.not_found} linked records not found by {self.old_attribute}"
        return text


def configured(config: Config) -> str:
    return config.source.guid_attribute or "entryUUID"


def changed_from(config: Config, store: Store) -> str | None:
    """The attribute the store's links use, when it is not the configured one."""
    stored = store.watermark(IDENTITY)
    if stored is None or stored.lower() == configured(config).lower():
        return None
    return stored


def pending(config: Config, store: Store) -> Rekey | None:
    """The re-key the store needs before the next cycle, matched against the directory
    (writes nothing); None when the links use the configured attribute already.
    Raises RekeyRefusedError when the links cannot follow."""
    old = changed_from(config, store)
    if old is None:
        return None
    users, groups = store.linked_ids(Kind.USER), store.linked_ids(Kind.GROUP)
    if not users and not groups:
        return Rekey(old, configured(config), {}, 0, 0, 0)
    failing = set(store.failures())  # of unlinked records too
    with LdapDirectory(config.source, ()) as directory:
        identities = directory.identities(old)
        return match(old, configured(config), identities, users, groups, failing)


def match(
    old: str,
    new: str,
    identities: Iterable[Identity],
    users: Collection[str],
    groups: Collection[str],
    failing: Collection[tuple[Kind, str]] = (),
) -> Rekey:
    """Each linked record's new id, from the entry that has its old one. `failing`: the
    ids of failure rows, re-keyed too where found (a refused record stays on record as
    refused, not audited again as new)."""
    linked = set(users) | set(groups)
    wanted = linked | {source_id for _, source_id in failing}
    new_ids: dict[str, str] = {}
    where: dict[str, str] = {}  # old id -> DN, for messages
    lacking: list[str] = []  # DNs of linked entries without the new attribute
    readable = False  # whether any entry has the old attribute at all
    for entry in identities:
        if entry.old is None:
            continue
        readable = True
        if entry.old not in wanted:
            continue
        if entry.new is None:
            if entry.old in linked:
                lacking.append(entry.dn)
        else:
            new_ids[entry.old] = entry.new
            where[entry.old] = entry.dn
    if not linked & new_ids.keys() and not lacking:
        how = (
            f"none of the {len(linked)} linked entries is found by it"
            if readable
            else "no entry under source.base_dn has it"
        )
        raise RekeyRefusedError(
            f"{KEY}: the store's links use {old}, but {how}: set {KEY} back to {old}, "
            "or start a new store (or channel) and let adoption link the existing accounts "
            "(options.match_users_by)"
        )
    if lacking:
        raise RekeyRefusedError(
            f"{KEY} {new}: {len(lacking)} linked entries have no {new} (e.g. {lacking[0]}), "
            f"so their links cannot follow them: give every entry a {new}, or set {KEY} "
            f"back to {old}"
        )
    for kind, ids in (("user", users), ("group", groups)):
        holder: dict[str, str] = {}
        # Failure rows are keyed by kind and id too: none may land on another's new id.
        for source_id in {*ids, *(sid for k, sid in failing if k == kind)}:
            new_id = new_ids.get(source_id, source_id)
            other = holder.setdefault(new_id, source_id)
            if other != source_id:
                dns = " and ".join(where.get(s, s) for s in sorted((other, source_id)))
                raise RekeyRefusedError(
                    f"{KEY} {new} is not unique: {dns} both have {new_id!r}; choose an "
                    f"attribute unique to each entry, or set {KEY} back to {old}"
                )
    return Rekey(
        old,
        new,
        new_ids,
        users=sum(1 for s in users if s in new_ids),
        groups=sum(1 for s in groups if s in new_ids),
        not_found=len(linked - new_ids.keys()),
    )


def settle(config: Config, store: Store, *, settings_unchanged: bool) -> Rekey | None:
    """Before a cycle reads anything: re-key the store if the identity attribute changed,
    and record the attribute where it is known (a store made before it was recorded whose
    settings did not change since, or one without links).

    `settings_unchanged`: the settings the last full cycle ran with are the configured ones.
    """
    if store.watermark(IDENTITY) is None:
        if settings_unchanged or not (
            store.count_linked(Kind.USER) or store.count_linked(Kind.GROUP)
        ):
            store.set_watermark(IDENTITY, configured(config))
        return None  # otherwise recorded at the end of the next full cycle
    rekey = pending(config, store)
    if rekey is None:
        return None
    if not rekey.users and not rekey.groups:  # no links: nothing to re-point, no event
        store.set_watermark(IDENTITY, rekey.new_attribute)
        return None
    with store.atomic():  # all of it, or nothing
        cycle_id = store.begin_run("rekey")
        store.rekey(rekey.new_ids)
        store.set_watermark(IDENTITY, rekey.new_attribute)
        name = f"{KEY} {rekey.old_attribute} to {rekey.new_attribute}"
        store.audit(cycle_id, "rekey", "cycle", "", None, True, rekey.cause, name=name)
        summary = {"rekey user": rekey.users, "rekey group": rekey.groups}
        store.finish_run(cycle_id, "ok", summary, rekey.cause)
    logger.info(
        "re-keyed the store to the new identity attribute",
        old=rekey.old_attribute,
        new=rekey.new_attribute,
        users=rekey.users,
        groups=rekey.groups,
        not_found=rekey.not_found,
    )
    if rekey.not_found:
        logger.warning(
            "linked records not found by the old identity attribute: this full "
            "reconciliation treats them as gone from the directory",
            attribute=rekey.old_attribute,
            count=rekey.not_found,
        )
    return rekey


# --- a dry run sees the links as a re-key would leave them --------------------------------


def users_rekeyed(
    linked: Mapping[str, LinkedUser], new_ids: Mapping[str, str]
) -> dict[str, LinkedUser]:
    moved = (replace(u, source_id=new_ids.get(u.source_id, u.source_id)) for u in linked.values())
    return {u.source_id: u for u in moved}


def groups_rekeyed(
    linked: Mapping[str, LinkedGroup], new_ids: Mapping[str, str]
) -> dict[str, LinkedGroup]:
    moved = (
        replace(
            g,
            source_id=new_ids.get(g.source_id, g.source_id),
            member_source_ids=frozenset(new_ids.get(m, m) for m in g.member_source_ids),
        )
        for g in linked.values()
    )
    return {g.source_id: g for g in moved}


def failures_rekeyed(
    failures: Mapping[tuple[Kind, str], FailureRecord], new_ids: Mapping[str, str]
) -> dict[tuple[Kind, str], FailureRecord]:
    moved = (replace(f, source_id=new_ids.get(f.source_id, f.source_id)) for f in failures.values())
    return {(f.kind, f.source_id): f for f in moved}
