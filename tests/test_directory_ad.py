"""LdapDirectory against a real Samba AD DC: objectGUID, userAccountControl, range retrieval."""

from __future__ import annotations

import re

import ldap
import pytest

from scimsync.directory import DirectoryAuthError, LdapDirectory, Snapshot
from scimsync.directory.connection import Connection
from tests.fixtures.samba import BIG_COUNT, AdSeed

pytestmark = pytest.mark.ad

ATTRS = ("sAMAccountName", "mail", "givenName", "sn", "userPrincipalName")


def read(seed: AdSeed, **overrides: object) -> Snapshot:
    with LdapDirectory(seed.config(**overrides), ATTRS) as directory:
        return directory.read()


def by_sam(snapshot: Snapshot) -> dict[str, object]:
    return {u.attributes["samaccountname"][0]: u for u in snapshot.users.values()}


def test_object_guid_is_the_canonical_string_samba_tool_shows(samba_ad: AdSeed) -> None:
    snapshot = read(samba_ad, users={"filter": "(sAMAccountName=alice)"})
    [alice] = snapshot.users.values()
    shown = samba_ad.dc.samba_tool("user", "show", "alice", "--attributes=objectGUID")
    match = re.search(r"^objectGUID: (\S+)$", shown, re.MULTILINE)
    assert match is not None
    assert alice.guid == match.group(1)
    assert alice.attributes["objectguid"] == (alice.guid,)
    # AD resolves the same string as a GUID binding: <GUID=...> names alice's entry
    conn = samba_ad.dc.admin()
    [(dn, _)] = conn.search_s(f"<GUID={alice.guid}>", ldap.SCOPE_BASE, "(objectClass=*)", ["cn"])
    conn.unbind_s()
    assert dn == samba_ad.users["alice"]


def test_users_attributes_and_disabled_from_user_account_control(samba_ad: AdSeed) -> None:
    users = by_sam(read(samba_ad, base_dn=samba_ad.users["alice"].split(",", 1)[1]))
    assert set(users) == {"alice", "bob", "carol", "dave"}
    alice = users["alice"]
    assert alice.attributes["userprincipalname"] == ("alice@sync.test",)  # type: ignore[attr-defined]
    assert alice.attributes["givenname"] == ("Alice",)  # type: ignore[attr-defined]
    assert {sam for sam, u in users.items() if u.disabled} == {"carol"}  # type: ignore[attr-defined]


def test_users_of_nested_group(samba_ad: AdSeed) -> None:
    staff = samba_ad.groups["staff"]
    direct = by_sam(read(samba_ad, users={"group_dn": staff}))
    assert set(direct) == {"carol", "dave"}
    nested = by_sam(read(samba_ad, users={"group_dn": staff, "nested": True}))
    assert set(nested) == {"alice", "bob", "carol", "dave"}


def test_groups_flattened_and_special_names(samba_ad: AdSeed) -> None:
    snapshot = read(
        samba_ad,
        users={"filter": "(sAMAccountName=*)"},
        groups={"filter": "(|(cn=staff)(cn=R&D \\28\\2a\\29))", "nested": True},
    )
    users = by_sam(snapshot)
    guid = {sam: u.guid for sam, u in users.items()}  # type: ignore[attr-defined]
    groups = {g.name: g.member_guids for g in snapshot.groups.values()}
    assert groups == {
        "staff": {guid["alice"], guid["bob"], guid["carol"], guid["dave"]},
        "R&D (*)": {guid["alice"]},
    }


def test_range_retrieval_of_a_group_past_1500_members(samba_ad: AdSeed) -> None:
    big = samba_ad.groups["big"]
    # Windows AD cuts `member` to `member;range=0-1499` unasked (MaxValRange); Samba only
    # answers ranges when asked, so ask for the first range as AD would have served it
    # and let the connection fetch the rest from the real server.
    conn = Connection(samba_ad.config())
    conn.open()
    try:
        _, raw = conn.read(big, ["member;range=0-1499"], "group")
    finally:
        conn.close()
    assert list(raw) == ["member"]
    assert len(set(raw["member"])) == BIG_COUNT
    snapshot = read(samba_ad, users={"group_dn": big}, groups={"filter": "(cn=big)"})
    assert len(snapshot.users) == BIG_COUNT
    [group] = snapshot.groups.values()
    assert group.member_guids == set(snapshot.users)


def test_server_info_and_wrong_password(samba_ad: AdSeed) -> None:
    with LdapDirectory(samba_ad.config(), ATTRS) as directory:
        assert directory.server_info() == f"Active Directory at {samba_ad.dc.url}"
    with pytest.raises(DirectoryAuthError) as caught:
        read(samba_ad, bind_password="Wrong!Passw0rd")
    assert "Wrong!Passw0rd" not in str(caught.value)
    assert str(caught.value).startswith(f"LDAP server {samba_ad.dc.url} refused the bind as ")
