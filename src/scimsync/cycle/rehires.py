"""Rehires: which new directory entries take over the account of someone who left.

A person who leaves and comes back gets a new directory entry (a new GUID) under the old
userName. Their Atlassian account was deactivated, not deleted (`remove_user_action:
disable`), and Atlassian keeps its userName and email: a POST for the new entry answers
409, or, on a tenant that hides inactive users, makes a second account. So a new entry
whose userName is that of a linked, deactivated user whose own entry is gone from the
directory is re-linked to that account (the store re-keyed from the old GUID to the new),
and the planner then sees a linked, inactive user and reactivates it.

Only with `match_users_by: userName`: an externalId usually maps the GUID, which a
rehire does not keep, so a rehire matched by externalId is a new account, as before.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from scimsync import log, rekey
from scimsync.config import Config
from scimsync.directory import LdapDirectory
from scimsync.model import Kind, LinkedUser, user_name_key
from scimsync.state import Store

if TYPE_CHECKING:  # views applies the rehires to the views it builds
    from scimsync.cycle.views import View

logger = log.get(__name__)

RELINKED = "relinked"  # the audit event


def find_rehires(
    directory: LdapDirectory, store: Store, view: View, config: Config
) -> dict[str, str]:
    """Old source id -> new, for the view's rehires (see the module)."""
    options = config.options
    if not options.relink_rehires or options.match_users_by != "userName":
        return {}
    unlinked = [u for sid, u in view.desired.users.items() if sid not in view.linked_users]
    counts = Counter(user_name_key(u.user_name) for u in unlinked)
    names = {name for name, count in counts.items() if count == 1}  # two: a conflict
    if not names:
        return {}
    if view.mode == "full":  # every link is in the view
        links = view.linked_users.values()
        held = {user_name_key(u.user_name): u for u in links if not u.active}
        held = {name: held[name] for name in names & held.keys()}
    else:
        held = store.deactivated_users_named(names)
    held = {n: link for n, link in held.items() if link.source_id not in view.desired.users}
    if not held:
        return {}
    present = directory.present_guids({link.source_id for link in held.values()})
    rehires: dict[str, str] = {}
    for user in unlinked:
        old = held.get(user_name_key(user.user_name))
        if old is not None and old.source_id not in present:
            rehires[old.source_id] = user.source_id
    return rehires


def with_rehires(view: View, store: Store, rehires: Mapping[str, str]) -> View:
    """The view as it is once the rehires' links are re-keyed to their new entries."""
    if not rehires:
        return view
    missing = [old for old in rehires if old not in view.linked_users]
    links: dict[str, LinkedUser] = {**view.linked_users, **store.linked_users_by_ids(missing)}
    moved = rekey.users_rekeyed(links, rehires)
    # A rehire's old link was out of scope; the new entry is in it.
    entered = {new for new in rehires.values() if not moved[new].in_scope}
    universe = view.universe
    if universe is not None:
        universe = universe | {(Kind.USER, new) for new in rehires.values()}
    return replace(
        view,
        linked_users=moved,
        linked_groups=rekey.groups_rekeyed(view.linked_groups, rehires),
        other_members=frozenset(rehires.get(m, m) for m in view.other_members),
        universe=universe,
        scope_entered=(view.scope_entered - rehires.keys()) | entered,
        scope_left=view.scope_left - rehires.keys(),
        rehires=dict(rehires),
    )


def record_rehires(store: Store, cycle_id: str, view: View) -> None:
    """Re-key the rehires' links, memberships and failures in the store, and audit each."""
    if not view.rehires:
        return
    with store.atomic():
        store.rekey(view.rehires)
        for old, new in view.rehires.items():
            link = view.linked_users[new]
            cause = f"a rehire: the account of {old}, whose directory entry is gone"
            store.audit(
                cycle_id, RELINKED, Kind.USER, new, link.target_id, True, cause, link.user_name
            )
            logger.info("rehire relinked", name=link.user_name, old=old, new=new)
