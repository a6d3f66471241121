"""LdapDirectory against a real slapd: scope, nesting, status, escaping, paging, TLS, errors."""

from __future__ import annotations

import os
import platform
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import ldap
import pytest

from scimsync.config import UserScope
from scimsync.directory import (
    DirectoryAuthError,
    DirectoryError,
    DirectoryUnreachable,
    LdapDirectory,
    Snapshot,
)
from scimsync.sandbox.slapd import Slapd
from tests.fixtures.slapd import Tree
from tests.harness import eventually

ATTRS = ("uid", "mail", "cn", "givenName", "sn")


def read(tree: Tree, **overrides: object) -> Snapshot:
    with LdapDirectory(tree.config(**overrides), ATTRS) as directory:
        return directory.read()


def uids(snapshot: Snapshot) -> set[str]:
    return {user.attributes["uid"][0] for user in snapshot.users.values()}


def names(snapshot: Snapshot) -> set[str]:
    return {group.name for group in snapshot.groups.values()}


def assert_one_clean_line(message: str, password: str) -> None:
    assert "\n" not in message
    assert "Traceback" not in message and "{'" not in message  # no raw python-ldap dicts
    assert password not in message


@pytest.fixture
def org(ldap_tree: Tree) -> Tree:
    """alice, bob in `app`; carol in `sub` (nested in `app`); dave outside; eve in dept 7."""
    t = ldap_tree
    for uid in ("alice", "bob", "carol", "dave"):
        t.add_user(uid, departmentNumber="42")
    t.add_user("eve", departmentNumber="7")
    sub = t.add_group("sub", [t.user_dn("carol")])
    t.add_group("app", [t.user_dn("alice"), t.user_dn("bob"), sub])
    t.add_group("other", [t.user_dn("dave"), t.user_dn("eve")])
    return t


# --- user scope -------------------------------------------------------------------------


def test_users_by_group_direct_members_only(org: Tree) -> None:
    snapshot = read(org, users={"group_dn": org.group_dn("app")})
    assert uids(snapshot) == {"alice", "bob"}


def test_users_by_group_nested_include_members_of_subgroups(org: Tree) -> None:
    snapshot = read(org, users={"group_dn": org.group_dn("app"), "nested": True})
    assert uids(snapshot) == {"alice", "bob", "carol"}


def test_users_by_filter(org: Tree) -> None:
    snapshot = read(org, users={"filter": "(departmentNumber=7)"})
    assert uids(snapshot) == {"eve"}


def test_users_by_group_and_filter_must_satisfy_both(org: Tree) -> None:
    org.modify(org.user_dn("bob"), departmentNumber="7")
    scope = {"group_dn": org.group_dn("app"), "nested": True, "filter": "(departmentNumber=42)"}
    assert uids(read(org, users=scope)) == {"alice", "carol"}


def test_user_carries_guid_dn_and_lowercased_requested_attributes(org: Tree) -> None:
    snapshot = read(org, users={"filter": "(uid=alice)"})
    [user] = snapshot.users.values()
    assert user.guid == org.guid(org.user_dn("alice"))
    assert user.dn == org.user_dn("alice")
    org.modify(user.dn, givenName="Alice")
    [again] = read(org, users={"filter": "(uid=alice)"}).users.values()
    assert again.attributes["givenname"] == ("Alice",)
    assert "givenname" not in user.attributes  # absent attributes are simply missing
    assert "departmentnumber" not in user.attributes  # not requested
    assert user.attributes["mail"] == ("alice@example.com",)
    assert user.attributes["entryuuid"] == (user.guid,)
    assert not user.disabled


def test_missing_group_dn_is_one_line_naming_the_key(org: Tree) -> None:
    missing = org.group_dn("nope")
    with pytest.raises(DirectoryError) as caught:
        read(org, users={"group_dn": missing})
    assert str(caught.value) == f"users.group_dn {missing} does not exist on {org.server.url}"


# --- group scope and membership --------------------------------------------------------


def test_groups_by_filter_with_direct_member_users(org: Tree) -> None:
    snapshot = read(org, groups={"filter": "(objectClass=groupOfNames)"})
    by_name = {g.name: g for g in snapshot.groups.values()}
    assert set(by_name) == {"app", "sub", "other"}
    guid = org.guid
    assert by_name["app"].member_guids == {guid(org.user_dn("alice")), guid(org.user_dn("bob"))}
    assert by_name["app"].guid == guid(org.group_dn("app"))
    # dave and eve are not in the user scope, but member_guids lists every member user
    assert by_name["other"].member_guids == {guid(org.user_dn("dave")), guid(org.user_dn("eve"))}


def test_groups_nested_flattens_members_of_subgroups(org: Tree) -> None:
    snapshot = read(org, groups={"filter": "(cn=app)", "nested": True})
    [app] = snapshot.groups.values()
    assert app.member_guids == {org.guid(org.user_dn(u)) for u in ("alice", "bob", "carol")}


def test_groups_by_group_dn_are_the_groups_inside_it(org: Tree) -> None:
    inner = org.add_group("inner", [org.user_dn("dave")])
    org.add_members(org.group_dn("other"), [inner])
    catalogue = org.add_group("catalogue", [org.group_dn("app"), org.group_dn("other")])
    direct = read(org, groups={"group_dn": catalogue})
    assert names(direct) == {"app", "other"}
    nested = read(org, groups={"group_dn": catalogue, "nested": True})
    assert names(nested) == {"app", "other", "sub", "inner"}
    both = read(org, groups={"group_dn": catalogue, "nested": True, "filter": "(cn=*n*)"})
    assert names(both) == {"inner"}


def test_nesting_cycle_terminates_and_flattens_both_ways(ldap_tree: Tree) -> None:
    t = ldap_tree
    alice, bob = t.add_user("alice"), t.add_user("bob")
    a = t.add_group("a", [alice])
    b = t.add_group("b", [bob, a])
    t.add_members(a, [b])  # a -> b -> a
    snapshot = read(
        t,
        users={"group_dn": a, "nested": True},
        groups={"filter": "(|(cn=a)(cn=b))", "nested": True},
    )
    assert uids(snapshot) == {"alice", "bob"}
    both = {t.guid(alice), t.guid(bob)}
    assert {g.name: g.member_guids for g in snapshot.groups.values()} == {"a": both, "b": both}


def test_group_of_unique_names_and_dangling_members(ldap_tree: Tree) -> None:
    t = ldap_tree
    alice = t.add_user("alice")
    t.add_group(
        "uniq",
        [f"{alice}#'0101'B", t.user_dn("gone")],
        object_class="groupOfUniqueNames",
    )
    snapshot = read(
        t,
        users={"group_dn": t.group_dn("uniq")},
        groups={"filter": "(objectClass=groupOfUniqueNames)"},
    )
    assert uids(snapshot) == {"alice"}
    [group] = snapshot.groups.values()
    assert group.member_guids == {t.guid(alice)}


def test_group_name_attribute_is_configurable(org: Tree) -> None:
    org.modify(org.group_dn("sub"), description="Sub Team")
    snapshot = read(org, groups={"filter": "(cn=sub)", "name_attribute": "description"})
    assert names(snapshot) == {"Sub Team"}


# --- account status ---------------------------------------------------------------------


def test_disabled_when_flag_attribute_present(org: Tree) -> None:
    org.modify(org.user_dn("bob"), description="locked")
    snapshot = read(org, account_status={"attribute": "description", "disabled_if_present": True})
    disabled = {u.attributes["uid"][0] for u in snapshot.users.values() if u.disabled}
    assert disabled == {"bob"}


def test_disabled_when_flag_has_the_value(org: Tree) -> None:
    org.modify(org.user_dn("bob"), employeeType="DISABLED")
    org.modify(org.user_dn("carol"), employeeType="active")
    snapshot = read(org, account_status={"attribute": "employeeType", "disabled_value": "disabled"})
    disabled = {u.attributes["uid"][0] for u in snapshot.users.values() if u.disabled}
    assert disabled == {"bob"}


# --- special characters -----------------------------------------------------------------


def test_special_characters_in_names_and_values(ldap_tree: Tree) -> None:
    t = ldap_tree
    odd = t.add_user("zoë*()\\,+", cn="Zoë Ñandú (*)", sn="Ñandú", mail="zoe@example.com")
    plain = t.add_user("plain")
    group = t.add_group("R&D (*)", [odd])
    t.add_group("R&D", [plain])  # a name the (*) could otherwise widen to
    snapshot = read(t, users={"group_dn": group}, groups={"group_dn": t.add_group("all", [group])})
    [user] = snapshot.users.values()
    assert user.attributes["uid"] == ("zoë*()\\,+",)
    assert user.attributes["cn"] == ("Zoë Ñandú (*)",)
    [rnd] = snapshot.groups.values()
    assert (rnd.name, rnd.member_guids) == ("R&D (*)", frozenset({t.guid(odd)}))


def test_find_users_escapes_the_value(ldap_tree: Tree) -> None:
    t = ldap_tree
    t.add_user("a*", cn="star")
    t.add_user("ab")
    with LdapDirectory(t.config(), ATTRS) as directory:
        assert [u.attributes["uid"] for u in directory.find_users("uid", "a*")] == [("a*",)]
        assert list(directory.find_users("uid", "*")) == []
        assert list(directory.find_users("uid", "x)(uid=*")) == []


# --- paging -----------------------------------------------------------------------------


def test_paging_reads_past_the_server_size_limit(ldap_tree: Tree) -> None:
    t = ldap_tree
    t.add_users(1200)
    conn = ldap.initialize(t.server.url)
    conn.simple_bind_s(t.server.bind_dn, t.server.password)
    with pytest.raises(ldap.SIZELIMIT_EXCEEDED):  # the limit is real for this account
        conn.search_s(t.base_dn, ldap.SCOPE_SUBTREE, "(objectClass=inetOrgPerson)", ["uid"])
    conn.unbind_s()
    assert t.server.size_limit < 1200
    snapshot = read(t, page_size=200)
    assert len(snapshot.users) == 1200
    group = t.add_group("big", t.add_users(600, prefix="g"))
    big = read(t, users={"group_dn": group}, groups={"filter": "(cn=big)"}, page_size=100)
    assert len(big.users) == 600
    assert len(next(iter(big.groups.values())).member_guids) == 600


def test_error_mid_read_raises_instead_of_returning_part(tmp_path: Path) -> None:
    with Slapd() as server:
        tree = Tree(server, "mid")
        tree.add_users(300)
        with LdapDirectory(tree.config(page_size=50), ATTRS) as directory:
            users = directory.iter_users()
            next(users)
            server.stop()
            with pytest.raises(DirectoryUnreachable) as caught:
                list(users)
    assert_one_clean_line(str(caught.value), server.password)
    assert server.url in str(caught.value)


# The syscalls a thread waiting on a socket sits in: poll, select, ppoll, pselect6.
WAITING_SYSCALLS = {"x86_64": {"7", "23", "271", "270"}, "aarch64": {"73", "72"}}


def in_wait(tid: int) -> bool:
    with open(f"/proc/self/task/{tid}/syscall") as f:
        return f.read().split()[0] in WAITING_SYSCALLS[platform.machine()]


def pending_signals(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/status") as f:
        line = next(line for line in f if line.startswith("SigPnd:"))
    return int(line.split()[1], 16)


def test_a_signal_during_a_search_does_not_fail_the_read(ldap_tree: Tree) -> None:
    """The daemon's SIGTERM lands in whatever libldap is waiting on; unless libldap
    restarts the wait (OPT_RESTART) it reports the directory down, and the stop logs a
    failed cycle that never was."""
    ldap_tree.add_user("ann")
    server, main = ldap_tree.slapd, threading.get_native_id()
    interrupted = threading.Event()

    def interrupt_the_wait() -> None:
        eventually(lambda: in_wait(main), "the read to wait on the paused slapd")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
        # Delivered (its wait returned EINTR) once no longer pending: only then may the
        # answer come, or poll would return the answer instead of the interruption.
        eventually(lambda: not pending_signals(main), "the signal's delivery")
        interrupted.set()
        os.kill(server.pid, signal.SIGCONT)

    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    helper = threading.Thread(target=interrupt_the_wait)
    try:
        with LdapDirectory(ldap_tree.config(), ATTRS) as directory:
            os.kill(server.pid, signal.SIGSTOP)
            helper.start()
            snapshot = directory.read()
    finally:
        os.kill(server.pid, signal.SIGCONT)
        helper.join()
        signal.signal(signal.SIGUSR1, previous)
    assert interrupted.is_set()
    assert uids(snapshot) == {"ann"}


# --- TLS --------------------------------------------------------------------------------


def test_ldaps_with_ca_file(org: Tree) -> None:
    snapshot = read(org, url=org.slapd.ldaps_url, ca_file=org.slapd.ca_file)
    assert "alice" in uids(snapshot)


def test_start_tls_with_ca_file(org: Tree) -> None:
    snapshot = read(org, start_tls=True, ca_file=org.slapd.ca_file)
    assert "alice" in uids(snapshot)


@pytest.mark.parametrize("mode", ["ldaps", "start_tls"])
def test_tls_without_the_ca_fails_verification(org: Tree, mode: str) -> None:
    settings: dict[str, object] = (
        {"url": org.slapd.ldaps_url} if mode == "ldaps" else {"start_tls": True}
    )
    with pytest.raises(DirectoryUnreachable) as caught:
        read(org, **settings)
    message = str(caught.value)
    assert_one_clean_line(message, org.server.password)
    assert message.startswith("cannot reach LDAP server ")
    assert message.endswith(
        "TLS handshake failed; is the server certificate trusted "
        "(source.ca_file, source.verify_tls)?"
    )


def test_tls_verification_can_be_turned_off(org: Tree) -> None:
    assert "alice" in uids(read(org, url=org.slapd.ldaps_url, verify_tls=False))


# --- errors -----------------------------------------------------------------------------


def test_wrong_password(org: Tree) -> None:
    with pytest.raises(DirectoryAuthError) as caught:
        read(org, bind_password="not-the-password")
    message = str(caught.value)
    assert_one_clean_line(message, "not-the-password")
    assert message == (
        f"LDAP server {org.server.url} refused the bind as {org.server.bind_dn}: "
        "wrong bind DN or password (source.bind_dn, source.bind_password)"
    )


def test_unreachable_host(org: Tree, closed_port: int) -> None:
    url = f"ldap://127.0.0.1:{closed_port}"
    with pytest.raises(DirectoryUnreachable) as caught:
        read(org, url=url, connect_timeout=2)
    message = str(caught.value)
    assert_one_clean_line(message, org.server.password)
    assert message.startswith(f"cannot reach LDAP server {url} (binding as ")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP listener that accepts and never answers: an LDAP server that hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"ldap://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_operation_timeout(org: Tree, silent_server: str) -> None:
    with pytest.raises(DirectoryUnreachable) as caught:
        read(org, url=silent_server, timeout=0.5, connect_timeout=0.5)
    assert_one_clean_line(str(caught.value), org.server.password)
    assert "no answer within 0.5 s" in str(caught.value)


def test_bad_base_dn(org: Tree) -> None:
    base = "ou=missing,dc=example,dc=com"
    with pytest.raises(DirectoryError) as caught:
        read(org, base_dn=base)
    message = str(caught.value)
    assert not isinstance(caught.value, DirectoryUnreachable | DirectoryAuthError)
    assert_one_clean_line(message, org.server.password)
    assert message == (
        f"LDAP searching {base} for (objectClass=inetOrgPerson) on {org.server.url} failed: "
        "the base DN does not exist"
    )


def test_server_info_and_repr_hide_the_password(org: Tree) -> None:
    with LdapDirectory(org.config(), ATTRS) as directory:
        assert directory.server_info() == f"OpenLDAP at {org.server.url}"
        assert org.server.password not in repr(directory)


def test_ldif_organisation(slapd: Slapd, ldap_tree: Tree, tmp_path: Path) -> None:
    """tests/data/directory_org.ldif: escaped DNs, base64 UTF-8 values, mixed group classes."""
    # Moved under this test's own subtree, so the shared slapd takes it again on a rerun.
    text = (Path(__file__).parent / "data" / "directory_org.ldif").read_text(encoding="utf-8")
    moved = tmp_path / "directory_org.ldif"
    moved.write_text(text.replace("ou=ldif,dc=example,dc=com", f"ou=ldif,{ldap_tree.base_dn}"))
    assert slapd.load_ldif(moved) == 6
    own_ou = ldap_tree.base_dn.split(",", 1)[0]
    tree = Tree(slapd, f"ldif,{own_ou}", create=False)  # the LDIF brings its own ou=ldif
    assert tree.base_dn == f"ou=ldif,{ldap_tree.base_dn}"
    tree_base = tree.base_dn
    snapshot = read(
        tree,
        users={"group_dn": f"cn=R&D (*),{tree_base}", "nested": True},
        groups={"filter": "(cn=R&D \\28\\2a\\29)", "nested": True},
        account_status={"attribute": "employeeType", "disabled_value": "Disabled"},
    )
    users = {u.attributes["uid"][0]: u for u in snapshot.users.values()}
    assert set(users) == {"jose", "star*()", "kim"}
    assert users["jose"].attributes["cn"] == ("José Müller",)
    assert users["star*()"].attributes["cn"] == ("Star (*) \\ Back",)
    assert [uid for uid, u in users.items() if u.disabled] == ["star*()"]
    [group] = snapshot.groups.values()
    assert group.name == "R&D (*)"
    assert group.member_guids == set(snapshot.users)


def test_bad_filter_is_one_line_naming_it(org: Tree) -> None:
    # The config refuses this filter when it is read (tests/test_config.py); built past that
    # check, it shows what the directory says of a filter the server refuses.
    unchecked = UserScope.model_construct(filter="(uid=alice", group_dn=None, nested=False)
    with pytest.raises(DirectoryError) as caught:
        read(org, users=unchecked)
    message = str(caught.value)
    assert_one_clean_line(message, org.server.password)
    assert message == (
        f"LDAP searching {org.base_dn} for (uid=alice on {org.server.url} failed: Bad search filter"
    )
