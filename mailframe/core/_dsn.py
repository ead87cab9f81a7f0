"""
The parameters of the DSN extension (RFC 3461 §4): RET and ENVID on MAIL,
NOTIFY and ORCPT on RCPT.

The ``parse_*`` functions check a value as sent and return it decoded; the
server core answers ``501`` to what they refuse, and the client core will
not build a command with it. :func:`dsn_mail_parameters` and
:func:`dsn_rcpt_parameters` go the other way, from the values an
:class:`~mailframe.envelope.Envelope` keeps to the parameters a client sends.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mailframe.address import decode_xtext, encode_xtext
from mailframe.core._limits import ENVID_LENGTH, ORCPT_LENGTH
from mailframe.envelope import DSNOptions

__all__ = [
    "NOTIFY_EVENTS",
    "RET_VALUES",
    "dsn_mail_parameters",
    "dsn_rcpt_parameters",
    "parse_envid",
    "parse_notify",
    "parse_orcpt",
    "parse_ret",
]

#: RFC 3461 §4.3: RET=FULL or RET=HDRS.
RET_VALUES = frozenset({"FULL", "HDRS"})
#: RFC 3461 §4.1: the events a NOTIFY list may name, in the order they are
#: sent; NEVER stands alone.
NOTIFY_EVENTS = ("SUCCESS", "FAILURE", "DELAY")
# RFC 3461 §4.2: addr-type is an atom (RFC 5322 §3.2.3, without CFWS).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\Z")
# RFC 3461 §4.2, §4.4: ORCPT and ENVID decode to printable US-ASCII.
_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z")


def parse_ret(value: str | None) -> str:
    """RET (RFC 3461 §4.3): ``FULL`` or ``HDRS`` in any case, upper-cased."""
    if value is None or value.upper() not in RET_VALUES:
        raise ValueError(f"RET must be FULL or HDRS, not {value!r}")
    return value.upper()


def _printable_xtext(value: str, what: str) -> str:
    try:
        text = decode_xtext(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not xtext") from None
    if not _PRINTABLE.match(text):
        raise ValueError(f"{what} {value!r} does not decode to printable ASCII")
    return text


def parse_envid(value: str | None) -> str:
    """
    ENVID (RFC 3461 §4.4): xtext of at most :data:`ENVID_LENGTH`
    characters, decoding to printable ASCII. Returns it decoded.
    """
    if not value:
        raise ValueError("ENVID needs a value")
    if len(value) > ENVID_LENGTH:
        raise ValueError(f"ENVID is longer than {ENVID_LENGTH} characters")
    return _printable_xtext(value, "ENVID")


def parse_notify(value: str | None) -> frozenset[str]:
    """
    NOTIFY (RFC 3461 §4.1): ``NEVER`` alone, or a comma-separated list of
    ``SUCCESS``, ``FAILURE`` and ``DELAY`` without repeats, in any case.
    Returns the keywords upper-cased.
    """
    if not value:
        raise ValueError("NOTIFY needs a value")
    keywords = value.upper().split(",")
    found = frozenset(keywords)
    if len(found) != len(keywords):
        raise ValueError(f"NOTIFY repeats a keyword: {value!r}")
    if found != {"NEVER"} and not found <= set(NOTIFY_EVENTS):
        raise ValueError(f"NOTIFY is NEVER alone, or some of SUCCESS, FAILURE, DELAY: {value!r}")
    return found


def parse_orcpt(value: str | None) -> str:
    """
    ORCPT (RFC 3461 §4.2): an address type (an atom), ``;`` and the
    address in xtext, at most :data:`ORCPT_LENGTH` characters in all, the
    address decoding to printable ASCII. Returns it with the address
    decoded, such as ``"rfc822;bob@example.com"``.
    """
    if not value:
        raise ValueError("ORCPT needs a value")
    if len(value) > ORCPT_LENGTH:
        raise ValueError(f"ORCPT is longer than {ORCPT_LENGTH} characters")
    addr_type, semicolon, address = value.partition(";")
    if not semicolon or not _ATOM.match(addr_type) or not address:
        raise ValueError(f"ORCPT is not addr-type;xtext: {value!r}")
    return f"{addr_type};{_printable_xtext(address, 'the ORCPT address')}"


def _parameter(
    pairs: list[tuple[str, str | None]], key: str, value: str, check: Callable[[str], object]
) -> None:
    # Only what the server side would take is sent.
    try:
        check(value)
    except ValueError:
        return
    pairs.append((key, value))


def dsn_mail_parameters(ret: str | None, envid: str | None) -> tuple[tuple[str, str | None], ...]:
    """
    The RET and ENVID parameters for MAIL (RFC 3461 §4.3, §4.4), from the
    values an envelope keeps: *envid* decoded, and encoded here in xtext.
    A value that RFC 3461 does not allow (which a received envelope never
    holds) is left out, so that it cannot stop the mail.
    """
    pairs: list[tuple[str, str | None]] = []
    if ret is not None:
        _parameter(pairs, "RET", ret.upper(), parse_ret)
    if envid is not None and _PRINTABLE.match(envid):
        _parameter(pairs, "ENVID", encode_xtext(envid), parse_envid)
    return tuple(pairs)


def dsn_rcpt_parameters(options: DSNOptions) -> tuple[tuple[str, str | None], ...]:
    """
    The NOTIFY and ORCPT parameters for RCPT (RFC 3461 §4.1, §4.2) from a
    recipient's :class:`~mailframe.envelope.DSNOptions`: the NOTIFY
    keywords in a fixed order, and the ORCPT address encoded in xtext. As
    for :func:`dsn_mail_parameters`, a value RFC 3461 does not allow is
    left out.
    """
    pairs: list[tuple[str, str | None]] = []
    if options.notify is not None:
        notify = {keyword.upper() for keyword in options.notify}
        known = ("NEVER", *NOTIFY_EVENTS)
        if notify <= set(known):
            value = ",".join(keyword for keyword in known if keyword in notify)
            _parameter(pairs, "NOTIFY", value, parse_notify)
    if options.orcpt is not None:
        addr_type, _, address = options.orcpt.partition(";")
        if _PRINTABLE.match(address):
            _parameter(pairs, "ORCPT", f"{addr_type};{encode_xtext(address)}", parse_orcpt)
    return tuple(pairs)
