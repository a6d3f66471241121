"""DN normalization: the fast path for plain DNs agrees with python-ldap's parser."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scimsync.directory.values import _parsed_dn, normalize_dn

value_chars = st.sampled_from([*"abcXYZ09 -_.é漢\t\u3000", "\\,", "+", "=", '"', "#", ";", "<"])
values = st.lists(value_chars, min_size=0, max_size=6).map("".join)
kinds = st.sampled_from(["uid", "CN", " ou ", "dc", "o"])
dns = st.lists(st.tuples(kinds, values), min_size=1, max_size=4).map(
    lambda rdns: ",".join(f"{k}={v}" for k, v in rdns)
)


@settings(max_examples=2000, deadline=None)
@given(dns)
def test_fast_path_agrees_with_the_parser(dn: str) -> None:
    assert normalize_dn(dn) == _parsed_dn(dn)


@settings(max_examples=2000, deadline=None)
@given(dns)
def test_a_dn_and_its_lower_case_have_one_normal_form(dn: str) -> None:
    # The reader's GUID scan relies on it: a lower-cased DN found among normal forms is one.
    assert normalize_dn(dn.lower()) == normalize_dn(dn)
    assert normalize_dn(normalize_dn(dn)) == normalize_dn(dn)


def test_examples() -> None:
    assert (
        normalize_dn("uid=Bob,OU=People,dc=Example,dc=com") == "uid=bob,ou=people,dc=example,dc=com"
    )
    assert normalize_dn("cn=R\\&D \\(*\\),ou=groups") == _parsed_dn("cn=R\\&D \\(*\\),ou=groups")


def test_a_hex_value_that_is_not_utf8_does_not_crash() -> None:
    assert normalize_dn("uid=#AA,ou=people") == "uid=#aa,ou=people"
