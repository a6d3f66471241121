"""After a cycle killed mid-write: link the creates that landed unrecorded."""

from __future__ import annotations

from scimsync import log
from scimsync.config import Config
from scimsync.cycle.mode import LAST_FULL
from scimsync.cycle.observe import managed_values
from scimsync.model import Kind, LinkedGroup, LinkedUser
from scimsync.state import Store
from scimsync.target import Target

logger = log.get(__name__)


async def recover_interrupted(store: Store, target: Target, config: Config) -> bool:
    """After a cycle that died mid-write: link the creates that landed unrecorded.

    The intents of a chunk are committed before its calls and its outcomes after, so a
    kill in between leaves intents without outcomes. A create that landed made an account
    scimsync never linked; adoption by name finds it again only while the directory still
    wants it, and an entry deleted meanwhile would leave it active for good. Every other
    operation is planned again from the links, and deletes and member changes are
    idempotent. Returns whether there was anything to recover: the cycle is then a full
    reconciliation, which compares everything linked with the directory.
    """
    intents = store.open_intents()
    if not intents:
        return False
    managed = set(config.rules)
    for intent in intents:
        if intent.action != "create":
            continue
        if intent.kind == "user":
            user = await target.find_user(intent.name)
            if user is not None and not store.linked_to(Kind.USER, [user.id]):
                values = managed_values(user.values, managed)
                store.save_user(
                    LinkedUser(intent.source_id, user.id, user.user_name, user.active, values)
                )
        else:
            group = await target.find_group(intent.name)
            if group is not None and not store.linked_to(Kind.GROUP, [group.id]):
                ours = store.linked_to(Kind.USER, group.member_ids)
                members = frozenset(ours.values())
                store.save_group(
                    LinkedGroup(intent.source_id, group.id, group.display_name, members)
                )
    store.forget_intents()
    store.clear_watermark(LAST_FULL)
    logger.warning("recovered from an interrupted cycle: this one is a full reconciliation")
    return True
