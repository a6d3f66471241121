"""Turning raw LDAP values into ours: DNs for comparison, GUIDs, text, account status."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Mapping, Sequence

import ldap.dn
from ldap.filter import escape_filter_chars

from scimsync.config import AccountStatus

RawEntry = Mapping[str, Sequence[bytes]]

# An optional "#'0101'B" UID suffix on uniqueMember values (RFC 4517 NameAndOptionalUID).
_OPTIONAL_UID = re.compile(r"#'[01]*'B$")


# DNs with nothing to escape or unescape, one attribute per RDN and no space beside a
# separator: the common case, where lower-casing is all the parser would do.
_PLAIN_DN = re.compile(
    r"^[^\\\"+#;<>=,\s][^\\\"+#;<>=,]*=[^\\\"+#;<>=,]+(?:,[^\\\"+#;<>=,]+=[^\\\"+#;<>=,]+)*$"
)
_AWKWARD_SPACE = (" ,", ", ", " =", "= ")
_OTHER_WHITESPACE = re.compile(r"[^\S ]")  # tabs and the like: the parser's to judge


def normalize_dn(dn: str) -> str:
    """A comparable form of a DN: escapes canonical, types and values lower-cased."""
    if (
        _PLAIN_DN.match(dn)
        and not dn.endswith(" ")
        and not any(pair in dn for pair in _AWKWARD_SPACE)
        and not _OTHER_WHITESPACE.search(dn)
    ):
        return dn.lower()
    return _parsed_dn(dn)


def _parsed_dn(dn: str) -> str:
    # python-ldap's dn2str leaves a value's edge whitespace (a tab, say) unescaped, so its
    # output can parse to something else: re-parse until the form is its own normal form.
    form = _parsed_once(dn)
    for _ in range(3):
        again = _parsed_once(form)
        if again == form:
            break
        form = again
    return form


def _parsed_once(dn: str) -> str:
    try:
        rdns = ldap.dn.str2dn(dn)
    except (ldap.DECODING_ERROR, UnicodeDecodeError):  # e.g. a #hex value not UTF-8
        return dn.lower()  # not stripped: a normal form must be its own normal form
    return str(
        ldap.dn.dn2str(
            [
                sorted((kind.lower(), value.lower(), flags) for kind, value, flags in rdn)
                for rdn in rdns
            ]
        )
    )


def within(dn: str, base: str) -> bool:
    """Whether normalised `dn` is `base` or below it (both normalised)."""
    return dn == base or dn.endswith("," + base)


def member_dn(value: bytes) -> str:
    return normalize_dn(_OPTIONAL_UID.sub("", value.decode("utf-8", "replace")))


def rdn_value(dn: str) -> str:
    try:
        return str(ldap.dn.str2dn(dn)[0][0][1])
    except (ldap.DECODING_ERROR, IndexError):
        return dn


def guid_text(attribute: str, raw: bytes) -> str:
    """The canonical GUID string. AD's objectGUID is 16 bytes, little-endian mixed order."""
    # Interned: one GUID string however many groups and records name it.
    if attribute.lower() == "objectguid" and len(raw) == 16:
        return sys.intern(str(uuid.UUID(bytes_le=raw)))
    return sys.intern(raw.decode("ascii").strip().lower())


def guid_assertion(attribute: str, text: str) -> str:
    """An equality filter's assertion value for a GUID spelled as guid_text() spells it."""
    if attribute.lower() == "objectguid":
        try:
            raw = uuid.UUID(text).bytes_le
        except ValueError:
            return str(escape_filter_chars(text))
        return "".join(f"\\{byte:02x}" for byte in raw)  # RFC 4515 3: escaped octets
    return str(escape_filter_chars(text))


def sid_rid(sid: bytes) -> int | None:
    """The last sub-authority (the RID) of a binary SID (MS-DTYP 2.4.2.2), else None."""
    if len(sid) < 12 or (len(sid) - 8) % 4 or sid[1] * 4 + 8 != len(sid):
        return None
    return int.from_bytes(sid[-4:], "little")


def get(entry: RawEntry, attribute: str) -> Sequence[bytes] | None:
    """Attribute names come back as the server spells them; look them up case-blind."""
    found = entry.get(attribute)
    if found is not None:
        return found
    wanted = attribute.lower()
    for name, values in entry.items():
        if name.lower() == wanted:
            return values
    return None


def text_attributes(entry: RawEntry, skip: str) -> dict[str, tuple[str, ...]]:
    """Lower-cased names, UTF-8 values. Values that are not UTF-8 (photos, SIDs) are dropped:
    nothing maps binary data to SCIM, and a half-decoded value would be worse than none."""
    out: dict[str, tuple[str, ...]] = {}
    for name, values in entry.items():
        key = name.lower()
        if key == skip:
            continue
        texts: list[str] = []
        for value in values:
            try:
                texts.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                continue
        if texts:
            out[key] = tuple(texts)
    return out


def is_disabled(status: AccountStatus | None, entry: RawEntry) -> bool:
    if status is None:
        return False
    values = get(entry, status.attribute) or ()
    if status.ad_bitmask:
        # userAccountControl flag ACCOUNTDISABLE = 0x2 (MS-ADTS 2.2.16).
        return any(_int(value) & 0x2 for value in values)
    if status.disabled_if_present:
        return bool(values)
    wanted = (status.disabled_value or "").casefold()
    return any(value.decode("utf-8", "replace").casefold() == wanted for value in values)


def _int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0
