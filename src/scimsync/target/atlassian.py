"""The Atlassian Cloud profile: the generic client plus Atlassian's documented rules."""

from __future__ import annotations

from collections.abc import Collection

from scimsync.model import ScimValues
from scimsync.target.schema import ServerSchema
from scimsync.target.scim import ScimTarget, payload_error


class AtlassianTarget(ScimTarget):
    """Atlassian's user provisioning API (atlassian-scim-api.md).

    - userName is write-once: changing it is unconfirmed, so updates never send it (2);
      rename_user does, for `options.user_name_changes: update` only.
    - emails with one primary work address are required on create and modify (2).
    - PATCH and `eq` filters on userName, externalId and displayName are supported (4, 5),
      and its schema is known: no discovery request is needed.
    - PUT clears omitted attributes (2): updates are PATCH replace of changed paths only.
    """

    async def patch_supported(self) -> bool:
        return True

    async def filter_supported(self) -> bool:
        return True

    async def server_schema(self) -> ServerSchema:
        return ServerSchema()  # send everything: Atlassian defines what we map

    def check_create(self, values: ScimValues) -> None:
        super().check_create(values)
        if not values.get("emails.work"):
            raise payload_error(
                "emails.work is required to create a user at Atlassian (map it in `mapping`)"
            )

    def writable(
        self, changed: ScimValues, removed: Collection[str]
    ) -> tuple[dict[str, str | bool], set[str]]:
        writes, clears = super().writable(changed, removed)
        writes.pop("userName", None)
        clears.discard("userName")
        if "emails.work" in clears:
            raise payload_error("emails.work cannot be cleared at Atlassian: an email is required")
        return writes, clears
