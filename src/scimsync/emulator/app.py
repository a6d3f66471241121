"""The Starlette application: Atlassian's SCIM routes plus the /_emulator control routes."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from scimsync.emulator import discovery
from scimsync.emulator.behaviour import (
    MemberFilterMode,
    Misbehaviour,
    RenameMode,
    Settings,
    SlidingWindow,
    Stats,
    UserNameMode,
    authorized,
)
from scimsync.emulator.errors import EmulatorError, invalid_value
from scimsync.emulator.patch import GroupState, filters_members, patched_group, patched_user
from scimsync.emulator.query import list_response, page, parse_filter, project, returns
from scimsync.emulator.responses import scim_response
from scimsync.emulator.schema import CORE_GROUP, clean_user, group_name, member_ids, require_schema
from scimsync.emulator.store import Directory, Group

DIRECTORY_ID = "emulated"
# Atlassian's base URL shape: https://api.atlassian.com/scim/directory/{directoryId}
# (atlassian-scim-api.md section 1); target.url is this path on the emulator's host.
PREFIX = f"/scim/directory/{DIRECTORY_ID}"


@dataclass
class Emulator:
    """Everything a running emulator holds; `app.state.emulator` in the Starlette app."""

    directory: Directory
    settings: Settings
    stats: Stats
    token: str
    misbehaviour: Misbehaviour | None = None

    def configure(self, **options: Any) -> None:
        self.settings.update(**options)
        if "seed" in options and self.misbehaviour is not None:
            self.misbehaviour.reseed(options["seed"])

    def rotate_token(self, token: str) -> None:
        """A new API key, as an org admin rotates it: the old one answers 401 from now on."""
        if not token.strip():
            raise ValueError("the bearer token is empty")
        self.token = token
        if self.misbehaviour is not None:
            self.misbehaviour.token = token

    def reset_modes(self) -> None:
        defaults = Settings()  # every mode but the seed, which only faults read
        self.configure(
            **{f.name: getattr(defaults, f.name) for f in fields(Settings) if f.name != "seed"}
        )
        if self.misbehaviour is not None:  # an empty rate window on the real clock
            self.misbehaviour.window = SlidingWindow()
            self.misbehaviour.clock = time.monotonic


def _base(request: Request) -> str:
    return f"{str(request.base_url).rstrip('/')}{PREFIX}"


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise EmulatorError(400, "the request body is not valid JSON", "invalidSyntax") from None


def _minimal(emulator: Emulator) -> bool:
    return emulator.settings.schema == "minimal"


def _filter(emulator: Emulator, params: Mapping[str, str]) -> str | None:
    """The request's filter, or None where the `filter: ignored` mode ignores it."""
    return params.get("filter") if emulator.settings.filter == "supported" else None


def _emulator(request: Request) -> Emulator:
    emulator: Emulator = request.app.state.emulator
    return emulator


# --- rendering -----------------------------------------------------------------------------


def render_user(emulator: Emulator, user: dict[str, Any], base: str) -> dict[str, Any]:
    body = {"schemas": user["schemas"], "id": user["id"]}
    body.update((k, v) for k, v in user.items() if k not in ("created", "lastModified"))
    groups = emulator.directory.groups_of(user["id"])
    if groups:
        body["groups"] = [
            {
                "value": g.id,
                "display": g.display_name,
                "type": "direct",
                "$ref": f"{base}/Groups/{g.id}",
            }
            for g in groups
        ]
    body["meta"] = {
        "resourceType": "User",
        "created": user["created"],
        "lastModified": user["lastModified"],
        "location": f"{base}/Users/{user['id']}",
    }
    return body


def render_group(
    emulator: Emulator, group: Group, base: str, params: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The group as GET returns it, `attributes` / `excludedAttributes` applied.

    Members are not even rendered when excluded: a 100,000-member group costs nothing then.
    """
    if params is not None:
        if not returns(params, "members"):
            group = replace(group, members={})
        return project(render_group(emulator, group, base), params)
    users = emulator.directory.users
    body: dict[str, Any] = {
        "schemas": [CORE_GROUP],
        "id": group.id,
        "displayName": group.display_name,
    }
    if group.external_id is not None:
        body["externalId"] = group.external_id
    body["members"] = [
        {
            "type": "User",
            "value": user_id,
            "display": users[user_id].get("displayName", users[user_id]["userName"]),
            "$ref": f"{base}/Users/{user_id}",
        }
        for user_id in group.members
        if user_id in users
    ]
    body["meta"] = {
        "resourceType": "Group",
        "created": group.created,
        "lastModified": group.last_modified,
        "location": f"{base}/Groups/{group.id}",
    }
    return body


# --- users ---------------------------------------------------------------------------------


async def list_users(request: Request) -> Response:
    emulator = _emulator(request)
    params = request.query_params
    attribute, value = parse_filter(_filter(emulator, params), ("userName", "externalId"))
    found = emulator.directory.find_users(attribute, value)
    if emulator.settings.hide_inactive:
        found = [user for user in found if user.get("active", True) is not False]
    start, items = page(params, found)
    base = _base(request)
    rendered = [project(render_user(emulator, u, base), params) for u in items]
    return scim_response(list_response(len(found), start, rendered))


async def create_user(request: Request) -> Response:
    emulator = _emulator(request)
    user = emulator.directory.create_user(
        clean_user(await _json(request), minimal=_minimal(emulator))
    )
    body = render_user(emulator, user, _base(request))
    response = scim_response(body, 201)
    response.headers["Location"] = body["meta"]["location"]
    return response


async def get_user(request: Request) -> Response:
    emulator = _emulator(request)
    user = emulator.directory.user(request.path_params["id"])
    return scim_response(project(render_user(emulator, user, _base(request)), request.query_params))


def _check_user_name(emulator: Emulator, before: dict[str, Any], after: dict[str, Any]) -> None:
    changed = str(after.get("userName", "")).lower() != str(before["userName"]).lower()
    if changed and emulator.settings.user_name == "immutable":
        raise EmulatorError(400, "userName is immutable", "mutability")


async def put_user(request: Request) -> Response:
    emulator = _emulator(request)
    body = await _json(request)
    user_id = request.path_params["id"]
    before = emulator.directory.user(user_id)  # 404 before 400 for a missing user
    _check_user_name(emulator, before, body)
    user = emulator.directory.replace_user(user_id, clean_user(body, minimal=_minimal(emulator)))
    body = render_user(emulator, user, _base(request))
    _unlink_if_external(emulator, before, user)
    return scim_response(body)


async def patch_user(request: Request) -> Response:
    emulator = _emulator(request)
    body = await _json(request)
    directory = emulator.directory
    with directory.lock:  # read, patch and write as one step
        user_id = request.path_params["id"]
        before = directory.user(user_id)
        patched = patched_user(before, body)
        _check_user_name(emulator, before, patched)
        user = directory.replace_user(user_id, clean_user(patched, minimal=_minimal(emulator)))
        body = render_user(emulator, user, _base(request))
        _unlink_if_external(emulator, before, user)
    return scim_response(body)


def _unlink_if_external(emulator: Emulator, before: dict[str, Any], after: dict[str, Any]) -> None:
    """With `verified_domains` set: an email changed into another domain makes the account
    external, and Atlassian unlinks it from the directory, its groups with it (ACCESS-1396).
    The answer still shows the write; the account is gone from the directory after it."""
    domains = emulator.settings.verified_domains
    if domains is None:
        return
    emails = {str(e["value"]).lower() for e in after.get("emails", [])}
    if emails == {str(e["value"]).lower() for e in before.get("emails", [])}:
        return
    if any(email.rsplit("@", 1)[-1] not in domains for email in emails):
        emulator.directory.delete_user(after["id"])


async def delete_user(request: Request) -> Response:
    _emulator(request).directory.delete_user(request.path_params["id"])
    return Response(status_code=204)


# --- groups --------------------------------------------------------------------------------


async def list_groups(request: Request) -> Response:
    emulator = _emulator(request)
    params = request.query_params
    _, name = parse_filter(_filter(emulator, params), ("displayName",))
    found = emulator.directory.find_groups(name)
    start, items = page(params, found)
    base = _base(request)
    rendered = [render_group(emulator, g, base, params) for g in items]
    return scim_response(list_response(len(found), start, rendered))


async def create_group(request: Request) -> Response:
    emulator = _emulator(request)
    body = require_schema(await _json(request), CORE_GROUP)
    external_id = body.get("externalId")
    if external_id is not None and not isinstance(external_id, str):
        raise invalid_value("externalId must be a string")
    if _minimal(emulator) and "members" not in body:
        raise invalid_value("members is required")
    group = emulator.directory.create_group(
        group_name(body.get("displayName")), external_id, member_ids(body.get("members"))
    )
    rendered = render_group(emulator, group, _base(request))
    response = scim_response(rendered, 201)
    response.headers["Location"] = rendered["meta"]["location"]
    return response


async def get_group(request: Request) -> Response:
    emulator = _emulator(request)
    group = emulator.directory.group(request.path_params["id"])
    return scim_response(render_group(emulator, group, _base(request), request.query_params))


def _allow_rename(emulator: Emulator) -> bool:
    # Sources disagree on renames (atlassian-scim-api.md section 4); `allowed` is the
    # default because Atlassian's own provisioning guide says renames are processed.
    mode: RenameMode = emulator.settings.rename
    return mode == "allowed"


async def put_group(request: Request) -> Response:
    emulator = _emulator(request)
    body = require_schema(await _json(request), CORE_GROUP)
    directory = emulator.directory
    group = directory.update_group(
        request.path_params["id"],
        group_name(body.get("displayName")),
        body.get("externalId"),
        dict.fromkeys(member_ids(body.get("members"))),
        allow_rename=_allow_rename(emulator),
    )
    return scim_response(render_group(emulator, group, _base(request)))


async def patch_group(request: Request) -> Response:
    emulator = _emulator(request)
    body = await _json(request)
    directory = emulator.directory
    if emulator.settings.member_filter == "failing" and filters_members(body):
        raise EmulatorError(500, "internal error evaluating the member filter")
    with directory.lock:
        group = directory.group(request.path_params["id"])
        new = patched_group(
            GroupState(group.display_name, group.external_id, group.members),
            body,
            member_filter=emulator.settings.member_filter == "accepted",
        )
        group = directory.update_group(
            group.id,
            new.display_name,
            new.external_id,
            new.members,
            allow_rename=_allow_rename(emulator),
            touched=new.touched,
        )
    # Atlassian answers a group PATCH with 200 and the full group (section 4); RFC 7644
    # 3.5.2 lets the client narrow that with attributes / excludedAttributes.
    return scim_response(render_group(emulator, group, _base(request), request.query_params))


async def delete_group(request: Request) -> Response:
    _emulator(request).directory.delete_group(request.path_params["id"])
    return Response(status_code=204)


# --- discovery -----------------------------------------------------------------------------


async def service_provider_config(request: Request) -> Response:
    filtering = _emulator(request).settings.filter == "supported"
    return scim_response(discovery.service_provider_config(_base(request), filtering=filtering))


async def list_resource_types(request: Request) -> Response:
    types = discovery.resource_types(_base(request))
    return scim_response(list_response(len(types), 1, types))


async def get_resource_type(request: Request) -> Response:
    for resource_type in discovery.resource_types(_base(request)):
        if resource_type["id"] == request.path_params["id"]:
            return scim_response(resource_type)
    raise EmulatorError(404, f"no resource type {request.path_params['id']}")


async def list_schemas(request: Request) -> Response:
    bodies = discovery.schemas(_base(request), minimal=_minimal(_emulator(request)))
    return scim_response(list_response(len(bodies), 1, bodies))


async def get_schema(request: Request) -> Response:
    for body in discovery.schemas(_base(request), minimal=_minimal(_emulator(request))):
        if body["id"] == request.path_params["id"]:
            return scim_response(body)
    raise EmulatorError(404, f"no schema {request.path_params['id']}")


# --- control -------------------------------------------------------------------------------


def _control(request: Request) -> Emulator:
    emulator = _emulator(request)
    if not authorized(request.scope, emulator.token):
        raise EmulatorError(401, "missing or invalid bearer token")
    return emulator


async def rotate_token(request: Request) -> Response:
    emulator = _control(request)
    body = await _json(request)
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise invalid_value('expected {"token": "<the new API key>"}')
    try:
        emulator.rotate_token(token)
    except ValueError as exc:
        raise invalid_value(str(exc)) from None
    return Response(status_code=204)


async def stats(request: Request) -> Response:
    return scim_response(_control(request).stats.as_dict())


async def reset_stats(request: Request) -> Response:
    _control(request).stats.reset()
    return Response(status_code=204)


async def wipe(request: Request) -> Response:
    _control(request).directory.wipe()
    return Response(status_code=204)


async def state(request: Request) -> Response:
    return scim_response(_control(request).directory.snapshot())


async def configure(request: Request) -> Response:
    emulator = _control(request)
    options = await _json(request)
    if not isinstance(options, dict):
        raise invalid_value("the config body must be a JSON object")
    try:
        emulator.configure(**options)
    except ValueError as exc:
        raise invalid_value(str(exc)) from None
    return scim_response(_settings(emulator))


async def show_config(request: Request) -> Response:
    return scim_response(_settings(_control(request)))


def _settings(emulator: Emulator) -> dict[str, Any]:
    s = emulator.settings
    return {
        "rename": s.rename,
        "user_name": s.user_name,
        "member_filter": s.member_filter,
        "filter": s.filter,
        "schema": s.schema,
        "hide_inactive": s.hide_inactive,
        "verified_domains": s.verified_domains,
        "rate": s.rate,
        "latency_ms": s.latency_ms,
        "fault_rate": s.fault_rate,
        "fault_methods": s.fault_methods,
        "lost_response_rate": s.lost_response_rate,
        "seed": s.seed,
    }


# --- errors and assembly -------------------------------------------------------------------


async def _scim_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EmulatorError)
    return scim_response(exc.body(), exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return scim_response(EmulatorError(exc.status_code, str(exc.detail)).body(), exc.status_code)


ROUTES = [
    Route(f"{PREFIX}/Users", list_users, methods=["GET"]),
    Route(f"{PREFIX}/Users", create_user, methods=["POST"]),
    Route(f"{PREFIX}/Users/{{id}}", get_user, methods=["GET"]),
    Route(f"{PREFIX}/Users/{{id}}", put_user, methods=["PUT"]),
    Route(f"{PREFIX}/Users/{{id}}", patch_user, methods=["PATCH"]),
    Route(f"{PREFIX}/Users/{{id}}", delete_user, methods=["DELETE"]),
    Route(f"{PREFIX}/Groups", list_groups, methods=["GET"]),
    Route(f"{PREFIX}/Groups", create_group, methods=["POST"]),
    Route(f"{PREFIX}/Groups/{{id}}", get_group, methods=["GET"]),
    Route(f"{PREFIX}/Groups/{{id}}", put_group, methods=["PUT"]),
    Route(f"{PREFIX}/Groups/{{id}}", patch_group, methods=["PATCH"]),
    Route(f"{PREFIX}/Groups/{{id}}", delete_group, methods=["DELETE"]),
    Route(f"{PREFIX}/ServiceProviderConfig", service_provider_config, methods=["GET"]),
    Route(f"{PREFIX}/ResourceTypes", list_resource_types, methods=["GET"]),
    Route(f"{PREFIX}/ResourceTypes/{{id}}", get_resource_type, methods=["GET"]),
    Route(f"{PREFIX}/Schemas", list_schemas, methods=["GET"]),
    Route(f"{PREFIX}/Schemas/{{id:path}}", get_schema, methods=["GET"]),
    Route("/_emulator/stats", stats, methods=["GET"]),
    Route("/_emulator/reset", reset_stats, methods=["POST"]),
    Route("/_emulator/wipe", wipe, methods=["POST"]),
    Route("/_emulator/state", state, methods=["GET"]),
    Route("/_emulator/config", show_config, methods=["GET"]),
    Route("/_emulator/config", configure, methods=["POST"]),
    Route("/_emulator/token", rotate_token, methods=["POST"]),
]


def create_app(
    token: str,
    *,
    rename: RenameMode = "allowed",
    user_name: UserNameMode = "mutable",
    member_filter: MemberFilterMode = "accepted",
    hide_inactive: bool = False,
    rate: float | None = None,
    latency_ms: float = 0,
    fault_rate: float = 0,
    lost_response_rate: float = 0,
    data_file: Path | None = None,
    seed: int | None = None,
) -> Starlette:
    """The emulator as an ASGI app; `app.state.emulator` gives tests direct access.

    An empty or blank token is a ValueError: every client would pass with no credential.
    """
    if not token.strip():
        raise ValueError("the bearer token is empty")
    settings = Settings()
    settings.update(
        rename=rename,
        user_name=user_name,
        member_filter=member_filter,
        hide_inactive=hide_inactive,
        rate=rate,
        latency_ms=latency_ms,
        fault_rate=fault_rate,
        lost_response_rate=lost_response_rate,
        seed=seed,
    )
    directory = Directory(data_file=data_file)
    directory.load()
    emulator = Emulator(directory, settings, Stats(), token)
    app = EmulatorApp(
        routes=ROUTES,
        exception_handlers={EmulatorError: _scim_error, HTTPException: _http_error},
    )
    app.state.emulator = emulator
    emulator.misbehaviour = Misbehaviour(
        functools.partial(Starlette.__call__, app), token, PREFIX, settings, emulator.stats
    )
    app.misbehaviour = emulator.misbehaviour
    return app


class EmulatorApp(Starlette):
    """Starlette with the misbehaviour layer outermost.

    Outermost because dropping a connection needs the server's own `send`, which
    Starlette's middleware stack wraps.
    """

    misbehaviour: Misbehaviour | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.misbehaviour is None:
            await super().__call__(scope, receive, send)
        else:
            await self.misbehaviour(scope, receive, send)
