"""ServiceProviderConfig, ResourceTypes and Schemas as Atlassian's service advertises them."""

from __future__ import annotations

import functools
from typing import Any

from scim2_models import EnterpriseUser, Group, User

from scimsync.emulator.query import MAX_PAGE
from scimsync.emulator.schema import CORE_GROUP, CORE_USER, ENTERPRISE

SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"
RESOURCE_TYPE_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
CONFIG_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"

# The attributes of Atlassian's user model (atlassian-scim-api.md section 2).
_USER_ATTRIBUTES = (
    "userName",
    "name",
    "displayName",
    "nickName",
    "title",
    "preferredLanguage",
    "timezone",
    "active",
    "emails",
    "phoneNumbers",
    "groups",
)


def service_provider_config(base: str, *, filtering: bool = True) -> dict[str, Any]:
    # Patch yes; bulk, sort, etag, password change no; filter with 100 per page
    # (atlassian-scim-api.md sections 1, 5 and 6). `filtering` False: the `filter: ignored`
    # mode's server, which says so.
    return {
        "schemas": [CONFIG_SCHEMA],
        "documentationUri": "https://developer.atlassian.com/cloud/admin/user-provisioning/rest/",
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": filtering, "maxResults": MAX_PAGE},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": False},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "The directory API key as a bearer token",
                "primary": True,
            }
        ],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": f"{base}/ServiceProviderConfig",
        },
    }


def resource_types(base: str) -> list[dict[str, Any]]:
    return [
        {
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": "User",
            "name": "User",
            "endpoint": "/Users",
            "description": "User Account",
            "schema": CORE_USER,
            "schemaExtensions": [{"schema": ENTERPRISE, "required": False}],
            "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/User"},
        },
        {
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": "Group",
            "name": "Group",
            "endpoint": "/Groups",
            "description": "Group",
            "schema": CORE_GROUP,
            "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/Group"},
        },
    ]


@functools.cache
def _schema_bodies(minimal: bool = False) -> tuple[dict[str, Any], ...]:
    user = User.to_schema().model_dump(mode="json", exclude_none=True)
    kept = set(_USER_ATTRIBUTES) - ({"nickName"} if minimal else set())
    user["attributes"] = [a for a in user["attributes"] if a["name"] in kept]
    for attribute in user["attributes"]:
        if attribute["name"] == "emails":
            attribute["required"] = True  # required on create and modify (section 2)
        if attribute["name"] in ("emails", "phoneNumbers"):
            for sub in attribute["subAttributes"]:  # a value-less email or phone means nothing
                sub["required"] = sub["name"] == "value"
        if minimal and attribute["name"] == "emails":
            attribute["subAttributes"] = [
                s for s in attribute["subAttributes"] if s["name"] == "value"
            ]
        if minimal and attribute["name"] == "name":
            for sub in attribute["subAttributes"]:
                sub["required"] = sub["name"] == "formatted"
    enterprise = EnterpriseUser.to_schema().model_dump(mode="json", exclude_none=True)
    enterprise["attributes"] = [
        a for a in enterprise["attributes"] if a["name"] in ("organization", "department")
    ]
    group = Group.to_schema().model_dump(mode="json", exclude_none=True)
    group["attributes"] = [
        a for a in group["attributes"] if a["name"] in ("displayName", "members")
    ]
    for attribute in group["attributes"]:
        if attribute["name"] == "displayName":
            attribute["uniqueness"] = "server"  # POST with an existing name is a 409 (section 4)
        if minimal and attribute["name"] == "members":
            attribute["required"] = True
    return user, enterprise, group


def schemas(base: str, *, minimal: bool = False) -> list[dict[str, Any]]:
    """The /Schemas bodies; `minimal`: the `schema: minimal` mode's (see Settings)."""
    return [
        {**body, "meta": {"resourceType": "Schema", "location": f"{base}/Schemas/{body['id']}"}}
        for body in _schema_bodies(minimal)
    ]
