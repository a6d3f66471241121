"""The Atlassian emulator over real HTTP: each documented rule, and each way it misbehaves."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest

from scimsync.emulator import RunningEmulator
from tests.fixtures.ports import emulator_url

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"

# A dropped connection reaches the client as a disconnect or, mid-read, as a reset.
DROPPED = (httpx2.RemoteProtocolError, httpx2.ReadError)


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[httpx2.Client]:
    headers = {"Authorization": f"Bearer {emulator.token}"}
    with httpx2.Client(base_url=emulator.url, headers=headers, timeout=10) as http:
        yield http


def user_body(name: str, /, **extra: Any) -> dict[str, Any]:
    return {
        "schemas": [USER],
        "userName": name,
        "emails": [{"value": name, "type": "work", "primary": True}],
        **extra,
    }


def create_user(client: httpx2.Client, name: str, /, **extra: Any) -> dict[str, Any]:
    response = client.post("/Users", json=user_body(name, **extra))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def create_group(client: httpx2.Client, name: str, members: Sequence[str] = ()) -> dict[str, Any]:
    body = {"schemas": [GROUP], "displayName": name, "members": [{"value": m} for m in members]}
    response = client.post("/Groups", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def patch(client: httpx2.Client, url: str, *operations: dict[str, Any]) -> httpx2.Response:
    return client.patch(url, json={"schemas": [PATCH], "Operations": list(operations)})


def assert_error(response: httpx2.Response, status: int, scim_type: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body: dict[str, Any] = response.json()
    assert body["schemas"] == [ERROR]
    assert body["status"] == str(status)  # a string, as Atlassian sends it
    assert body.get("scimType") == scim_type
    return body


# --- users -------------------------------------------------------------------------------


def test_a_created_user_has_a_uuid_defaults_and_meta(client: httpx2.Client) -> None:
    response = client.post("/Users", json=user_body("ann@example.com"))
    assert response.status_code == 201
    assert response.headers["content-type"].startswith("application/scim+json")
    user = response.json()
    assert len(user["id"]) == 36 and user["id"].count("-") == 4
    assert user["active"] is True
    assert user["meta"]["resourceType"] == "User"
    assert response.headers["location"] == user["meta"]["location"]
    assert client.get(user["meta"]["location"]).json()["userName"] == "ann@example.com"


@pytest.mark.parametrize(
    "change",
    [
        {"schemas": ["urn:example:other"]},
        {"userName": None},
        {"userName": ""},
        {"emails": []},
        {"emails": [{"value": "a@example.com"}]},
        {
            "emails": [
                {"value": "a@example.com", "primary": True},
                {"value": "b@example.com", "primary": True},
            ]
        },
        {"active": "yes"},
    ],
    ids=[
        "schemas",
        "no-userName",
        "empty-userName",
        "no-emails",
        "no-primary",
        "two-primaries",
        "active-not-bool",
    ],
)
def test_a_user_without_its_required_fields_is_refused(
    client: httpx2.Client, emulator: RunningEmulator, change: dict[str, Any]
) -> None:
    body = {k: v for k, v in {**user_body("a@example.com"), **change}.items() if v is not None}
    assert_error(client.post("/Users", json=body), 400, "invalidValue")
    assert emulator.users() == []


def test_user_names_are_unique_whatever_their_case(client: httpx2.Client) -> None:
    create_user(client, "bob@example.com")
    body = user_body("BOB@example.com", emails=[{"value": "other@example.com", "primary": True}])
    assert_error(client.post("/Users", json=body), 409, "uniqueness")


def test_an_email_belongs_to_one_user(client: httpx2.Client) -> None:
    create_user(client, "cat@example.com")
    body = user_body("cat2", emails=[{"value": "Cat@example.com", "primary": True}])
    error = assert_error(client.post("/Users", json=body), 409, "uniqueness")
    assert error["detail"] == "Resource [USER]: with email[Cat@example.com] already exists."


def test_the_enterprise_extension_keeps_only_organization_and_department(
    client: httpx2.Client,
) -> None:
    extension = {"organization": "Acme", "department": "R&D", "employeeNumber": "7"}
    user = create_user(client, "dan@example.com", **{ENTERPRISE: extension})
    assert user[ENTERPRISE] == {"organization": "Acme", "department": "R&D"}
    assert user["schemas"] == [USER, ENTERPRISE]


def test_put_clears_the_attributes_it_leaves_out(client: httpx2.Client) -> None:
    user = create_user(
        client,
        "eve@example.com",
        title="CTO",
        name={"givenName": "Eve"},
        active=False,
        **{ENTERPRISE: {"department": "Ops"}},
    )
    response = client.put(f"/Users/{user['id']}", json=user_body("eve@example.com"))
    assert response.status_code == 200
    replaced = client.get(f"/Users/{user['id']}").json()
    for cleared in ("title", "name", ENTERPRISE):
        assert cleared not in replaced
    assert replaced["active"] is True  # back to its default
    assert replaced["meta"]["created"] == user["meta"]["created"]


def test_put_on_a_missing_user_is_404(client: httpx2.Client) -> None:
    assert_error(client.put("/Users/nope", json=user_body("x@example.com")), 404, None)


def test_patch_forms_atlassian_clients_send(client: httpx2.Client) -> None:
    user = create_user(client, "fay@example.com", title="Dev")
    url = f"/Users/{user['id']}"
    response = patch(
        client,
        url,
        {"op": "replace", "path": "name.givenName", "value": "Fay"},
        {"op": "replace", "path": "active", "value": False},
        {"op": "replace", "path": f"{ENTERPRISE}:department", "value": "Sales"},
        {"op": "Replace", "value": {"displayName": "Fay F", "nickName": "ff"}},
        {"op": "remove", "path": "title"},
        {"op": "add", "path": "emails", "value": [{"value": "fay2@example.com", "primary": True}]},
    )
    assert response.status_code == 200, response.text
    patched = client.get(url).json()
    assert patched["name"] == {"givenName": "Fay"}
    assert patched["active"] is False
    assert patched[ENTERPRISE] == {"department": "Sales"}
    assert (patched["displayName"], patched["nickName"]) == ("Fay F", "ff")
    assert "title" not in patched
    primary = [e["value"] for e in patched["emails"] if e.get("primary")]
    assert primary == ["fay2@example.com"]
    assert len(patched["emails"]) == 2

    response = patch(
        client, url, {"op": "replace", "path": 'emails[type eq "work"].value', "value": "f@x.org"}
    )
    assert response.status_code == 200, response.text
    assert "f@x.org" in [e["value"] for e in response.json()["emails"]]


def test_a_patch_with_one_bad_operation_changes_nothing(client: httpx2.Client) -> None:
    user = create_user(client, "gus@example.com", title="Dev")
    url = f"/Users/{user['id']}"
    response = patch(
        client,
        url,
        {"op": "replace", "path": "title", "value": "Boss"},
        {"op": "replace", "path": "shoeSize", "value": "44"},
    )
    assert_error(response, 400, "invalidPath")
    assert client.get(url).json()["title"] == "Dev"
    assert_error(patch(client, url, {"op": "remove", "path": "emails"}), 400, "invalidValue")
    assert_error(
        patch(client, url, {"op": "replace", "path": "id", "value": "x"}), 400, "mutability"
    )


def test_a_user_name_changes_only_to_a_free_name(client: httpx2.Client) -> None:
    create_user(client, "taken@example.com")
    user = create_user(client, "hal@example.com")
    url = f"/Users/{user['id']}"
    taken = patch(client, url, {"op": "replace", "path": "userName", "value": "Taken@example.com"})
    assert_error(taken, 409, "uniqueness")
    free = patch(client, url, {"op": "replace", "path": "userName", "value": "hal2@example.com"})
    assert free.status_code == 200
    found = client.get("/Users", params={"filter": 'userName eq "hal2@example.com"'}).json()
    assert [u["id"] for u in found["Resources"]] == [user["id"]]


def test_delete_removes_the_user_and_its_memberships(
    client: httpx2.Client, emulator: RunningEmulator
) -> None:
    user = create_user(client, "ida@example.com")
    other = create_user(client, "jon@example.com")
    group = create_group(client, "team", [user["id"], other["id"]])
    assert [g["value"] for g in client.get(f"/Users/{user['id']}").json()["groups"]] == [
        group["id"]
    ]
    assert client.delete(f"/Users/{user['id']}").status_code == 204
    assert_error(client.get(f"/Users/{user['id']}"), 404, None)
    assert_error(client.delete(f"/Users/{user['id']}"), 404, None)
    members = client.get(f"/Groups/{group['id']}").json()["members"]
    assert [m["value"] for m in members] == [other["id"]]
    assert [u["id"] for u in emulator.users()] == [other["id"]]


# --- filters and paging ------------------------------------------------------------------


def test_the_supported_eq_filters(client: httpx2.Client) -> None:
    kim = create_user(client, "kim@example.com", externalId="GUID-1")
    create_user(client, "lee@example.com", externalId="guid-1")
    group = create_group(client, "Admins")
    by_name = client.get("/Users", params={"filter": 'username EQ "KIM@example.com"'}).json()
    assert [u["id"] for u in by_name["Resources"]] == [kim["id"]]
    by_external = client.get("/Users", params={"filter": 'externalId eq "GUID-1"'}).json()
    assert [u["id"] for u in by_external["Resources"]] == [kim["id"]]  # case-exact
    groups = client.get("/Groups", params={"filter": 'displayName eq "admins"'}).json()
    assert [g["id"] for g in groups["Resources"]] == [group["id"]]
    none = client.get("/Users", params={"filter": 'userName eq "nobody"'}).json()
    assert (none["totalResults"], none["Resources"]) == (0, [])


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        ("Users", 'userName sw "kim"'),
        ("Users", 'emails[type eq "work"].value eq "a@b.c"'),
        ("Users", 'displayName eq "Kim"'),
        ("Users", 'userName eq "a" and active eq true'),
        ("Users", "active pr"),
        ("Groups", 'id eq "x"'),
        ("Groups", 'userName eq "x"'),
    ],
)
def test_other_filters_are_invalid(client: httpx2.Client, resource: str, expression: str) -> None:
    assert_error(client.get(f"/{resource}", params={"filter": expression}), 400, "invalidFilter")


def test_pages_hold_at_most_100_of_250_users(client: httpx2.Client) -> None:
    for i in range(250):
        create_user(client, f"user{i:03}@example.com")
    seen: list[str] = []
    start = 1
    while True:
        page = client.get("/Users", params={"startIndex": start, "count": 500}).json()
        assert page["totalResults"] == 250
        assert page["startIndex"] == start
        assert page["itemsPerPage"] == len(page["Resources"]) <= 100
        seen += [u["id"] for u in page["Resources"]]
        if start + page["itemsPerPage"] > page["totalResults"]:
            break
        start += page["itemsPerPage"]
    assert len(seen) == len(set(seen)) == 250
    assert [
        len(client.get("/Users", params={"startIndex": s}).json()["Resources"])
        for s in (1, 101, 201)
    ] == [100, 100, 50]
    assert client.get("/Users", params={"count": 0}).json()["itemsPerPage"] == 0


# --- groups ------------------------------------------------------------------------------


def test_group_names_are_unique(client: httpx2.Client) -> None:
    create_group(client, "devs")
    body = {"schemas": [GROUP], "displayName": "Devs"}
    assert_error(client.post("/Groups", json=body), 409, "uniqueness")


def test_member_patches_in_every_documented_form(client: httpx2.Client) -> None:
    ids = [create_user(client, f"m{i}@example.com")["id"] for i in range(4)]
    group = create_group(client, "crew")
    url = f"/Groups/{group['id']}"

    def members() -> list[str]:
        return [m["value"] for m in client.get(url).json()["members"]]

    added = patch(
        client, url, {"op": "add", "path": "members", "value": [{"value": i} for i in ids]}
    )
    assert added.status_code == 200
    assert [m["value"] for m in added.json()["members"]] == ids  # the full group comes back
    assert added.json()["members"][0]["type"] == "User"
    by_filter = patch(client, url, {"op": "remove", "path": f'members[value eq "{ids[0]}"]'})
    assert by_filter.status_code == 200
    assert members() == ids[1:]
    listed = patch(client, url, {"op": "remove", "path": "members", "value": [{"value": ids[1]}]})
    assert listed.status_code == 200
    assert members() == ids[2:]
    again = patch(client, url, {"op": "remove", "path": f'members[value eq "{ids[0]}"]'})
    assert again.status_code == 200  # removing a non-member is a no-op, so retries succeed
    replaced = patch(
        client, url, {"op": "replace", "path": "members", "value": [{"value": ids[0]}]}
    )
    assert replaced.status_code == 200
    assert members() == [ids[0]]
    unknown = patch(client, url, {"op": "add", "path": "members", "value": [{"value": "ghost"}]})
    assert_error(unknown, 400, "invalidValue")
    assert members() == [ids[0]]


@pytest.mark.parametrize("mode", ["allowed", "immutable"])
def test_renaming_a_group_in_each_mode(
    client: httpx2.Client, emulator: RunningEmulator, mode: str
) -> None:
    emulator.configure(rename=mode)
    group = create_group(client, "old")
    create_group(client, "taken")
    url = f"/Groups/{group['id']}"
    response = patch(client, url, {"op": "replace", "path": "displayName", "value": "new"})
    if mode == "allowed":
        assert response.status_code == 200
        assert client.get(url).json()["displayName"] == "new"
        clash = patch(client, url, {"op": "replace", "value": {"displayName": "TAKEN"}})
        assert_error(clash, 409, "uniqueness")
    else:
        assert_error(response, 400, "mutability")
        assert client.get(url).json()["displayName"] == "old"
        put = client.put(url, json={"schemas": [GROUP], "displayName": "new"})
        assert_error(put, 400, "mutability")
        same = client.put(url, json={"schemas": [GROUP], "displayName": "old"})
        assert same.status_code == 200


@pytest.mark.parametrize("mode", ["accepted", "refused"])
def test_removing_a_member_by_value_filter_in_each_mode(
    client: httpx2.Client, emulator: RunningEmulator, mode: str
) -> None:
    emulator.configure(member_filter=mode)
    ids = [create_user(client, f"{n}@example.com")["id"] for n in "ab"]
    url = f"/Groups/{create_group(client, 'team', ids)['id']}"
    by_filter = patch(client, url, {"op": "remove", "path": f'members[value eq "{ids[0]}"]'})
    members = [m["value"] for m in client.get(url).json()["members"]]
    if mode == "accepted":
        assert by_filter.status_code == 200
        assert members == [ids[1]]
    else:
        assert_error(by_filter, 400, "invalidPath")
        assert members == ids
        value_list = {"op": "remove", "path": "members", "value": [{"value": ids[0]}]}
        by_list = patch(client, url, value_list)
        assert by_list.status_code == 200
        assert [m["value"] for m in client.get(url).json()["members"]] == [ids[1]]


def test_deleting_a_group(client: httpx2.Client) -> None:
    group = create_group(client, "gone")
    assert client.delete(f"/Groups/{group['id']}").status_code == 204
    assert_error(client.get(f"/Groups/{group['id']}"), 404, None)
    assert_error(client.delete(f"/Groups/{group['id']}"), 404, None)
    create_group(client, "gone")  # the name is free again


def test_excluded_members_are_left_out(client: httpx2.Client) -> None:
    user = create_user(client, "nat@example.com")
    group = create_group(client, "big", [user["id"]])
    listed = client.get("/Groups", params={"excludedAttributes": "members"}).json()
    assert "members" not in listed["Resources"][0]
    assert listed["Resources"][0]["displayName"] == "big"
    one = client.get(f"/Groups/{group['id']}", params={"excludedAttributes": "members"}).json()
    assert "members" not in one and one["id"] == group["id"]


# --- protocol and discovery --------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc"])
def test_requests_without_the_token_are_401(emulator: RunningEmulator, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx2.get(f"{emulator.url}/Users", headers=headers)
    assert_error(response, 401, None)
    assert httpx2.get(f"{emulator.url.split('/scim')[0]}/_emulator/stats").status_code == 401


def test_service_provider_config_states_atlassians_support(client: httpx2.Client) -> None:
    config = client.get("/ServiceProviderConfig").json()
    assert config["patch"]["supported"] is True
    assert config["filter"] == {"supported": True, "maxResults": 100}
    for unsupported in ("bulk", "sort", "etag", "changePassword"):
        assert config[unsupported]["supported"] is False
    types = client.get("/ResourceTypes").json()["Resources"]
    assert {t["name"] for t in types} == {"User", "Group"}
    schema_ids = {s["id"] for s in client.get("/Schemas").json()["Resources"]}
    assert schema_ids == {USER, GROUP, ENTERPRISE}
    assert client.get(f"/Schemas/{ENTERPRISE}").json()["id"] == ENTERPRISE


def test_unknown_paths_and_bad_json_answer_scim_errors(client: httpx2.Client) -> None:
    assert_error(client.get("/Bulk"), 404, None)
    bad = client.post("/Users", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(bad, 400, "invalidSyntax")


# --- misbehaviour ------------------------------------------------------------------------


def test_above_the_rate_requests_get_429_with_retry_after(
    client: httpx2.Client, emulator: RunningEmulator
) -> None:
    # A frozen clock: all 20 requests fall in one second however slowly they are served.
    now = [100.0]
    emulator.set_rate_clock(lambda: now[0])
    emulator.configure(rate=5)
    statuses = [client.get("/ServiceProviderConfig") for _ in range(20)]
    assert [r.status_code for r in statuses] == [200] * 5 + [429] * 15
    assert_error(statuses[5], 429, "tooMany")
    assert {r.headers["Retry-After"] for r in statuses[5:]} == {"1"}
    now[0] = 100.5
    assert client.get("/ServiceProviderConfig").headers["Retry-After"] == "1"
    now[0] = 101.0  # the first slot frees a second after it was taken
    assert client.get("/ServiceProviderConfig").status_code == 200
    assert emulator.stats()["by_status"] == {"200": 6, "429": 16}


def test_latency_is_added_without_blocking_other_requests(emulator: RunningEmulator) -> None:
    emulator.configure(latency_ms=300)
    headers = {"Authorization": f"Bearer {emulator.token}"}

    async def concurrently(n: int) -> list[int]:
        async with httpx2.AsyncClient(base_url=emulator.url, headers=headers) as http:
            responses = await asyncio.gather(
                *(http.get("/ServiceProviderConfig") for _ in range(n))
            )
        return [r.status_code for r in responses]

    started = time.monotonic()
    assert asyncio.run(concurrently(4)) == [200] * 4
    assert time.monotonic() - started >= 0.3  # a lower bound: the sleep cannot end early
    # Had one request's latency held up the others, they would have been served one by one.
    assert emulator.stats()["max_in_flight"] == 4


def _outcomes(client: httpx2.Client, n: int) -> dict[str, int]:
    outcomes = {"ok": 0, "5xx": 0, "dropped": 0}
    for _ in range(n):
        try:
            status = client.get("/ServiceProviderConfig").status_code
        except DROPPED:
            outcomes["dropped"] += 1
            continue
        outcomes["5xx" if status >= 500 else "ok"] += 1
    return outcomes


def test_faults_strike_at_roughly_the_configured_rate(
    client: httpx2.Client, emulator: RunningEmulator
) -> None:
    emulator.configure(fault_rate=0.3, seed=11)
    outcomes = _outcomes(client, 400)
    faults = outcomes["5xx"] + outcomes["dropped"]
    assert 0.2 * 400 < faults < 0.4 * 400, outcomes
    assert outcomes["dropped"] > 0 and outcomes["5xx"] > 0
    assert emulator.stats()["dropped"] == outcomes["dropped"]
    emulator.configure(seed=11)
    assert _outcomes(client, 400) == outcomes  # the seed makes a run reproducible


def test_a_fault_never_half_applies_a_write(
    client: httpx2.Client, emulator: RunningEmulator
) -> None:
    emulator.configure(fault_rate=0.5, seed=3)
    created: set[str] = set()
    for i in range(60):
        try:
            response = client.post("/Users", json=user_body(f"w{i}@example.com"))
        except DROPPED:
            continue
        if response.status_code == 201:
            created.add(response.json()["userName"])
    assert 0 < len(created) < 60
    assert {u["userName"] for u in emulator.users()} == created


def test_a_lost_response_leaves_the_post_applied(
    client: httpx2.Client, emulator: RunningEmulator
) -> None:
    emulator.configure(lost_response_rate=1.0)
    with pytest.raises(DROPPED):
        client.post("/Users", json=user_body("lost@example.com"))
    emulator.configure(lost_response_rate=0.0)
    assert_error(client.post("/Users", json=user_body("lost@example.com")), 409, "uniqueness")
    found = client.get("/Users", params={"filter": 'userName eq "lost@example.com"'}).json()
    assert found["totalResults"] == 1


# --- control -----------------------------------------------------------------------------


def test_stats_count_by_method_and_resource_and_reset(
    client: httpx2.Client, emulator: RunningEmulator
) -> None:
    user = create_user(client, "oz@example.com")
    client.get(f"/Users/{user['id']}")
    client.get("/Groups")
    control = httpx2.Client(
        base_url=emulator.url.split("/scim")[0],
        headers={"Authorization": f"Bearer {emulator.token}"},
    )
    stats = control.get("/_emulator/stats").json()
    assert stats["by_method"] == {"POST": 1, "GET": 2}
    assert stats["by_resource"] == {"POST Users": 1, "GET Users": 1, "GET Groups": 1}
    assert stats["by_status"] == {"201": 1, "200": 2}
    assert control.post("/_emulator/reset").status_code == 204
    assert control.get("/_emulator/stats").json()["total"] == 0
    assert emulator.stats()["total"] == 0


def test_modes_and_data_change_at_runtime_over_http(
    client: httpx2.Client, emulator: RunningEmulator
) -> None:
    control = httpx2.Client(
        base_url=emulator.url.split("/scim")[0],
        headers={"Authorization": f"Bearer {emulator.token}"},
    )
    assert control.post("/_emulator/config", json={"rename": "immutable"}).json()["rename"] == (
        "immutable"
    )
    group = create_group(client, "fixed")
    renamed = patch(
        client, f"/Groups/{group['id']}", {"op": "replace", "path": "displayName", "value": "moved"}
    )
    assert_error(renamed, 400, "mutability")
    assert_error(control.post("/_emulator/config", json={"fault_rate": 2}), 400, "invalidValue")
    assert_error(control.post("/_emulator/config", json={"colour": "red"}), 400, "invalidValue")
    assert_error(
        control.post("/_emulator/config", json={"hide_inactive": "yes"}), 400, "invalidValue"
    )
    assert control.get("/_emulator/state").json()["groups"][0]["displayName"] == "fixed"
    assert control.post("/_emulator/wipe").status_code == 204
    assert emulator.groups() == []


def test_the_data_file_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "emulator.json"
    with RunningEmulator(token="t", data_file=data) as first:
        headers = {"Authorization": "Bearer t"}
        with httpx2.Client(base_url=first.url, headers=headers) as http:
            user = create_user(http, "pat@example.com")
            group = create_group(http, "kept", [user["id"]])
    with RunningEmulator(token="t", data_file=data) as second:
        assert [u["id"] for u in second.users()] == [user["id"]]
        [kept] = second.groups()
        assert (kept["id"], [m["value"] for m in kept["members"]]) == (group["id"], [user["id"]])
        with httpx2.Client(base_url=second.url, headers=headers) as http:
            assert_error(http.post("/Users", json=user_body("pat@example.com")), 409, "uniqueness")


def test_port_0_runs_on_a_free_port_and_prints_its_target_url_once_listening() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "scimsync.emulator", "--port", "0", "--token", "sub-token"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = emulator_url(process)
        host, port = urlsplit(url).hostname, urlsplit(url).port
        assert host == "127.0.0.1" and port and url.endswith("/scim/directory/emulated")
        # At once, without retrying: a port bound but not yet listening refuses.
        socket.create_connection((host, port), timeout=10).close()
        response = httpx2.get(
            f"{url}/ServiceProviderConfig", headers={"Authorization": "Bearer sub-token"}
        )
        assert response.status_code == 200
        assert "sub-token" not in url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_bad_data_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "junk.json"
    data.write_text(json.dumps({"something": "else"}))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scimsync.emulator",
            "--port",
            "0",
            "--token",
            "t",
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(data) in result.stderr
    assert "Traceback" not in result.stderr


def test_hide_inactive_leaves_inactive_users_out_of_listings_and_filters_only(
    client: httpx2.Client, emulator: RunningEmulator
) -> None:
    """ACCESS-1293: some tenants list no deactivated user; GET by id still finds them."""
    ann = client.post("/Users", json=user_body("ann@example.com")).json()
    off = client.post("/Users", json=user_body("off@example.com", active=False)).json()
    emulator.configure(hide_inactive=True)
    listed = client.get("/Users").json()
    assert [u["id"] for u in listed["Resources"]] == [ann["id"]] and listed["totalResults"] == 1
    found = client.get("/Users", params={"filter": 'userName eq "off@example.com"'}).json()
    assert found["totalResults"] == 0
    assert client.get(f"/Users/{off['id']}").json()["active"] is False
    emulator.reset()  # back to the default: listed
    client.post("/Users", json=user_body("off@example.com", active=False)).raise_for_status()
    assert client.get("/Users").json()["totalResults"] == 1
