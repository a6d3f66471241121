"""The engine against a real Samba AD DC, as administrators run it: OUs, a scope group,
Jira* groups, uSNChanged change detection, UPNs that change, accounts that are disabled."""

from __future__ import annotations

from pathlib import Path

import pytest

from scimsync.cycle.check import check_directory
from scimsync.cycle.run import CycleReport
from scimsync.emulator import RunningEmulator
from tests.fixtures.samba import AdTree, rid_of
from tests.harness import AdChannel

pytestmark = pytest.mark.ad


@pytest.fixture
def channel(ad_tree: AdTree, emulator: RunningEmulator, tmp_path: Path) -> AdChannel:
    return AdChannel(ad_tree, emulator, tmp_path)


def mode(report: CycleReport) -> str:
    return report.prepared.view.mode


def active(channel: AdChannel, user_name: str) -> bool:
    return bool(channel.users()[user_name]["active"])


def scoped(channel: AdChannel, *users: str) -> tuple[str, str]:
    """A scope group and a Jira-Developers group holding these users."""
    ad = channel.ad
    scope = ad.add_group("atlassian-users", users)
    developers = ad.add_group("Jira-Developers", users)
    channel.source["users"] = {"group_dn": scope}
    channel.source["groups"] = {"filter": "(&(objectClass=group)(cn=Jira-*))"}
    return scope, developers


def test_a_user_who_left_the_scope_group_stays_out_of_groups_and_comes_back(
    channel: AdChannel,
) -> None:
    ad = channel.ad
    alice, bob, carol = (ad.add_user(n) for n in ("alice", "bob", "carol"))
    scope, _ = scoped(channel, alice, bob, carol)
    assert channel.sync().exit_code == 0
    everyone = {ad.upn("alice"), ad.upn("bob"), ad.upn("carol")}
    assert channel.member_names("Jira-Developers") == everyone

    ad.remove_members(scope, [alice])
    left = channel.sync()
    assert mode(left) == "incremental"
    assert not active(channel, ad.upn("alice"))
    assert channel.member_names("Jira-Developers") == everyone - {ad.upn("alice")}

    ad.modify(bob, givenName="Robert")  # another member of the group changes: no flap
    touched = channel.sync()
    assert (mode(touched), touched.prepared.plan.summary()) == ("incremental", {"update": 1})
    assert channel.member_names("Jira-Developers") == everyone - {ad.upn("alice")}

    ad.add_members(scope, [alice])  # and back
    back = channel.sync()
    assert mode(back) == "incremental"
    assert active(channel, ad.upn("alice"))
    assert channel.member_names("Jira-Developers") == everyone
    channel.store().reset()
    assert channel.sync().prepared.plan.operations == ()


def test_a_leaver_whose_upn_changed_is_disabled_all_the_same(channel: AdChannel) -> None:
    ad = channel.ad
    dan = ad.add_user("dan")
    scoped(channel, dan)
    channel.sync()
    ad.modify(dan, userPrincipalName=ad.upn("daniel"))  # userName is write-once
    conflicted = channel.sync()
    assert [c.name for c in conflicted.prepared.plan.conflicts] == [ad.upn("daniel")]
    ad.disable(dan)
    report = channel.sync()
    assert report.outcome.applied == {"disable": 1}
    assert not active(channel, ad.upn("dan"))
    with channel.store() as store:
        [row] = store.failures().values()
        conflicts = [r for r in store.audit_log() if r.event == "conflict"]
    assert row.action == "conflict"
    assert [r.name for r in conflicts] == [ad.upn("daniel")]


@pytest.mark.parametrize("target_accepts", [True, False])
def test_a_upn_change_with_user_name_changes_update(
    channel: AdChannel, target_accepts: bool
) -> None:
    ad = channel.ad
    erin = ad.add_user("erin")
    scoped(channel, erin)
    channel.options["user_name_changes"] = "update"
    channel.sync()
    if not target_accepts:
        channel.emulator.configure(user_name="immutable")
    ad.modify(erin, userPrincipalName=ad.upn("erin.smith"))
    report = channel.sync()
    assert report.prepared.plan.conflicts == ()
    if target_accepts:
        assert report.exit_code == 0
        assert ad.upn("erin.smith") in channel.users()
        assert channel.member_names("Jira-Developers") == {ad.upn("erin.smith")}
    else:
        assert report.exit_code == 1
        assert "mutability" in report.outcome.failed[0].cause
        assert ad.upn("erin") in channel.users()


def test_a_failure_that_heals_leaves_the_list_without_a_full_reconciliation(
    channel: AdChannel,
) -> None:
    ad = channel.ad
    fay, gus = ad.add_user("fay"), ad.add_user("gus")
    scoped(channel, fay, gus)
    channel.sync()
    ad.modify(fay, mail=ad.upn("gus"))  # gus's address: the target answers 409
    assert channel.sync().exit_code == 1
    ad.modify(fay, mail=ad.upn("fay"))
    healed = channel.sync()
    assert mode(healed) == "incremental"
    assert healed.exit_code == 0
    with channel.store() as store:
        assert store.failures() == {}
    assert mode(channel.sync()) == "incremental"


@pytest.mark.parametrize("account", ["administrator", "plain domain user"])
def test_deletions_are_seen_whether_or_not_the_bind_account_reads_tombstones(
    channel: AdChannel, account: str
) -> None:
    ad = channel.ad
    if account == "plain domain user":
        channel.source["bind_dn"], channel.source["bind_password"] = ad.seed.reader()
    hal = ad.add_user("hal")
    ad.add_user("ivy")
    channel.source["groups"] = None
    channel.options["groups"] = False
    check = check_directory(channel.config())
    if account == "administrator":
        assert check.change_warning is None
        assert "tombstones" in check.change_detection
    else:
        assert check.change_warning is not None
        assert "cannot read deleted objects" in check.change_warning
        assert "GUID scan" in check.change_detection
    channel.sync()
    ad.delete(hal)
    report = channel.sync()
    assert (mode(report), report.prepared.plan.summary()) == ("incremental", {"disable": 1})
    assert not active(channel, ad.upn("hal"))
    assert active(channel, ad.upn("ivy"))


def test_primary_group_membership_counts_for_groups_and_for_the_user_scope(
    channel: AdChannel,
) -> None:
    ad = channel.ad
    jo, kim, lee = (ad.add_user(n) for n in ("jo", "kim", "lee"))
    primary = ad.add_group("Jira-Primary", [jo, kim])
    other = ad.add_group("Jira-Other", [lee])
    ad.modify(jo, primaryGroupID=str(rid_of(ad, primary)))  # AD drops jo from `member`
    channel.source["groups"] = {"filter": "(&(objectClass=group)(cn=Jira-*))"}
    assert channel.sync().exit_code == 0
    assert channel.member_names("Jira-Primary") == {ad.upn("jo"), ad.upn("kim")}

    ad.add_members(other, [kim])
    ad.modify(kim, primaryGroupID=str(rid_of(ad, other)))  # incremental: kim's primary moves
    report = channel.sync()
    assert mode(report) == "incremental"
    assert channel.member_names("Jira-Other") == {ad.upn("lee"), ad.upn("kim")}
    assert channel.member_names("Jira-Primary") == {ad.upn("jo"), ad.upn("kim")}
    channel.store().reset()
    assert channel.sync().prepared.plan.operations == ()  # a full reconciliation agrees


def test_a_user_whose_primary_group_is_the_scope_group_is_in_scope(channel: AdChannel) -> None:
    ad = channel.ad
    mo, ned = ad.add_user("mo"), ad.add_user("ned")
    scope = ad.add_group("atlassian-users", [mo, ned])
    ad.modify(mo, primaryGroupID=str(rid_of(ad, scope)))
    channel.source["users"] = {"group_dn": scope}
    channel.options["groups"] = False
    assert channel.sync().exit_code == 0
    assert set(channel.users()) == {ad.upn("mo"), ad.upn("ned")}


def test_the_ad_defaults_send_object_guid_as_external_id_and_user_says_why(
    channel: AdChannel,
) -> None:
    ad = channel.ad
    ora, pat = ad.add_user("ora"), ad.add_user("pat")
    scope = ad.add_group("atlassian-users", [ora])
    channel.source["users"] = {"group_dn": scope}
    channel.options["groups"] = False
    channel.sync()
    assert channel.users()[ad.upn("ora")]["externalId"] == ad.guid(ora)
    outside = channel.plan(only_user=ad.upn("pat"))
    assert outside.view.absent == (
        f"{pat} is out of scope: not a member of source.users.group_dn {scope} "
        "(users.nested is off)"
    )
    assert not outside.view.unknown
    nobody = channel.plan(only_user=ad.upn("nobody"))
    assert nobody.view.unknown
    assert nobody.view.absent == (
        f"no entry under source.base_dn has userPrincipalName={ad.upn('nobody')}"
    )
