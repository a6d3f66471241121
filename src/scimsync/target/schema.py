"""What a target's /Schemas define (RFC 7643 section 7), and what follows for our payloads:
sub-attributes it does not define are left out, attributes it requires are named in `check`.

Names are compared case-insensitively (RFC 7643 section 2.1). A schema that is absent or
unreadable defines nothing, and then nothing is left out: the RFC's core schema is assumed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scimsync.target.payload import ENTERPRISE, ENTERPRISE_SCHEMA, GROUP_SCHEMA, USER_SCHEMA


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str
    required: bool
    writable: bool  # mutability is not readOnly: a client can fill it
    # None: no subAttributes given (a simple attribute, or a server that lists none).
    sub_attributes: Mapping[str, Attribute] | None = None


@dataclass(frozen=True, slots=True)
class ResourceSchema:
    id: str
    attributes: Mapping[str, Attribute] = field(default_factory=dict)  # by lowercased name

    def attribute(self, name: str) -> Attribute | None:
        return self.attributes.get(name.lower())


@dataclass(frozen=True, slots=True)
class ServerSchema:
    """The schemas a target lists, by id; empty when it lists none we can read."""

    by_id: Mapping[str, ResourceSchema] = field(default_factory=dict)

    @property
    def user(self) -> ResourceSchema | None:
        return self.by_id.get(USER_SCHEMA)

    @property
    def group(self) -> ResourceSchema | None:
        return self.by_id.get(GROUP_SCHEMA)

    def prune_user(self, body: dict[str, Any]) -> dict[str, Any]:
        """A User body without the sub-attributes the server's User schema leaves out."""
        return _prune(body, self.user)

    def prune_value(self, attribute: str, value: Any) -> Any:
        """A PATCH value for `attribute` of a User, pruned likewise."""
        return _prune({attribute: value}, self.user).get(attribute)

    def group_requires_members(self) -> bool:
        members = self.group.attribute("members") if self.group else None
        return members is not None and members.required

    def unfilled_user_attributes(self, mapped: Iterable[str]) -> list[str]:
        """What the server requires of a User that no mapped key fills: `name` or
        `name.formatted`. `active` and `schemas` scimsync always sends; an extension's
        required attributes count only when the mapping writes the extension."""
        keys = {key.lower() for key in mapped}
        filled = {key.split(".", 1)[0] for key in keys} | {"active", "schemas"}
        missing: list[str] = []
        for attribute in self.user.attributes.values() if self.user else ():
            top = attribute.name.lower()
            if not attribute.writable:
                continue
            if top not in filled:
                missing += [attribute.name] if attribute.required else []
            elif top not in _WRITTEN_WHOLE and attribute.sub_attributes:
                missing += [
                    f"{attribute.name}.{sub.name}"
                    for sub in attribute.sub_attributes.values()
                    if sub.required and sub.writable and f"{top}.{sub.name.lower()}" not in keys
                ]
        extension = self.by_id.get(ENTERPRISE_SCHEMA)
        if extension is not None and keys & {key.lower() for key in ENTERPRISE}:
            missing += [
                f"{ENTERPRISE_SCHEMA}:{attribute.name}"
                for attribute in extension.attributes.values()
                if attribute.required and attribute.writable and attribute.name.lower() not in keys
            ]
        return missing

    def undefined_user_attributes(self, mapped: Iterable[str]) -> list[str]:
        """Mapped keys the server's User schema does not define (it may drop or refuse
        them); none when the server lists no User schema."""
        if self.user is None:
            return []
        undefined: list[str] = []
        for key in mapped:
            top, _, sub = key.partition(".")
            if top in ENTERPRISE or top.lower() in _COMMON:
                continue  # the extension's schema is often unlisted; common ones always are
            attribute = self.user.attribute(top)
            if attribute is None:
                undefined.append(key)
            elif sub and top.lower() not in _WRITTEN_WHOLE and attribute.sub_attributes:
                undefined += [key] if sub.lower() not in attribute.sub_attributes else []
        return undefined


# RFC 7643 3.1: attributes of every resource, which no resource's schema lists.
_COMMON = frozenset({"id", "externalid", "meta"})
# scimsync writes these whole (value, type, primary): their sub-attributes are its own.
_WRITTEN_WHOLE = frozenset({"emails", "phonenumbers"})


def _prune(body: dict[str, Any], schema: ResourceSchema | None) -> dict[str, Any]:
    if schema is None:
        return body
    pruned: dict[str, Any] = {}
    for key, value in body.items():
        attribute = schema.attribute(key)
        subs = attribute.sub_attributes if attribute is not None else None
        if subs is None:
            pruned[key] = value
        elif isinstance(value, dict):
            pruned[key] = {k: v for k, v in value.items() if k.lower() in subs}
        elif isinstance(value, list):
            pruned[key] = [
                {k: v for k, v in item.items() if k.lower() in subs}
                if isinstance(item, dict)
                else item
                for item in value
            ]
        else:
            pruned[key] = value
    return pruned


def _attribute(raw: Any) -> Attribute | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        return None
    subs_raw = raw.get("subAttributes")
    subs: dict[str, Attribute] | None = None
    if isinstance(subs_raw, list) and subs_raw:
        subs = {}
        for sub_raw in subs_raw:
            sub = _attribute(sub_raw)
            if sub is not None:
                subs[sub.name.lower()] = sub
    return Attribute(
        name=raw["name"],
        required=raw.get("required") is True,
        writable=raw.get("mutability") != "readOnly",
        sub_attributes=subs,
    )


def parse_schemas(listed: Any) -> ServerSchema:
    """A ServerSchema from a GET /Schemas answer (a ListResponse, or a bare list)."""
    resources = listed.get("Resources") if isinstance(listed, dict) else listed
    by_id: dict[str, ResourceSchema] = {}
    for resource in resources if isinstance(resources, list) else []:
        if not isinstance(resource, dict) or not isinstance(resource.get("id"), str):
            continue
        raw = resource.get("attributes")
        parsed = (_attribute(item) for item in (raw if isinstance(raw, list) else []))
        attributes = [attribute for attribute in parsed if attribute is not None]
        by_id[resource["id"]] = ResourceSchema(
            resource["id"], {a.name.lower(): a for a in attributes}
        )
    return ServerSchema(by_id)
