"""
Mailboxes, paths and domains, checked against the grammar of RFC 5321 §4.1.2
(with the UTF-8 extensions of RFC 6531 §3.3 when asked for).

A :class:`Mailbox` that exists is valid: building one checks it against the
grammar (with the UTF-8 extensions, since a mailbox does not know whether
SMTPUTF8 was used; :attr:`Mailbox.is_ascii` tells). Its local part is kept
unquoted; :meth:`Mailbox.render` quotes it again where the grammar requires,
so that ``Mailbox.parse(m.render(), utf8=not m.is_ascii) == m``.

The lengths of RFC 5321 §4.5.3.1 (local part 64, domain 255, path 256) are
sizes that a server must *accept*, not limits to enforce, so none is enforced
here: the command line length bounds what can arrive.

Addresses also travel as ESMTP parameter values, in the xtext of RFC 3461
§4 (``AUTH=``, ``ORCPT=``, ``ENVID=``): :func:`encode_xtext` and
:func:`decode_xtext` convert, and :func:`original_recipient` gives the
``ORCPT`` value that names a mailbox.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import attrs

__all__ = [
    "AddressError",
    "Mailbox",
    "NULL_PATH",
    "NullPath",
    "ReversePath",
    "decode_xtext",
    "encode_xtext",
    "is_domain",
    "original_recipient",
    "parse_forward_path",
    "parse_reverse_path",
]


class AddressError(ValueError):
    """A path, mailbox or domain does not match the RFC 5321 grammar."""


# RFC 6531 §3.3 UTF8-non-ascii: every code point above ASCII except the
# surrogates, which UTF-8 cannot encode.
_NON_ASCII = r"\u0080-\ud7ff\ue000-\U0010ffff"
# RFC 5322 atext as RFC 5321 §4.1.2 uses it, and RFC 6531 §3.3 UTF8-non-ascii.
# The hyphen is escaped: it must stay a literal when more is appended.
_ATEXT_ASCII = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_ATEXT_UTF8 = _ATEXT_ASCII + _NON_ASCII
_DOT_STRING = {
    False: re.compile(rf"[{_ATEXT_ASCII}]+(?:\.[{_ATEXT_ASCII}]+)*\Z"),
    True: re.compile(rf"[{_ATEXT_UTF8}]+(?:\.[{_ATEXT_UTF8}]+)*\Z"),
}
# qtextSMTP / quoted-pairSMTP (RFC 5321 §4.1.2).
_QUOTED_CHAR = {
    False: re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e]"),
    True: re.compile(rf"[\x20\x21\x23-\x5b\x5d-\x7e{_NON_ASCII}]|\\[\x20-\x7e]"),
}
# What a Quoted-string can carry at all, as qtextSMTP or quoted-pairSMTP.
_QUOTABLE = re.compile(rf"[\x20-\x7e{_NON_ASCII}]*\Z")
_SUB_DOMAIN = {
    False: re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z"),
    True: re.compile(
        rf"[A-Za-z0-9{_NON_ASCII}](?:[A-Za-z0-9{_NON_ASCII}-]*"
        rf"[A-Za-z0-9{_NON_ASCII}])?\Z"
    ),
}
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+\Z")
# RFC 3461 §4: xtext is xchar (printable ASCII but "+" and "=") and hexchar,
# "+" and two upper-case hex digits; lower-case digits are taken too.
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})*\Z")
_HEXCHAR = re.compile(rb"\+([0-9A-Fa-f]{2})")
# RFC 6533 §3 QCHAR: printable ASCII but "+", "=" and "\".
_QCHAR = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]")


@functools.lru_cache(maxsize=1024)
def is_domain(text: str, utf8: bool = False) -> bool:
    """
    ``True`` if *text* is a Domain of RFC 5321 §4.1.2.

    The answers for the last 1024 domains asked about are kept: a server
    checks the same few domains in path after path.
    """
    if not text or text.endswith("."):
        return False
    pattern = _SUB_DOMAIN[utf8]
    return all(pattern.match(label) for label in text.split("."))


def _is_address_literal(text: str) -> bool:
    if not (text.startswith("[") and text.endswith("]")):
        return False
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        if "%" in inner:
            # ipaddress takes a zone id (RFC 4007); IPv6-addr has none.
            return False
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return bool(_GENERAL_LITERAL.match(inner)) and not inner[0].isdigit()
    return True


def _unquote(text: str, utf8: bool) -> str:
    """The content of a Quoted-string, or raise :class:`AddressError`."""
    body = text[1:-1]
    pattern = _QUOTED_CHAR[utf8]
    out = []
    pos = 0
    while pos < len(body):
        match = pattern.match(body, pos)
        if match is None:
            raise AddressError(f"bad character in quoted local part: {text!r}")
        out.append(match.group()[-1])
        pos = match.end()
    return "".join(out)


def _check_local_part(instance: Mailbox, attribute: attrs.Attribute[str], value: str) -> None:
    # Anything a Quoted-string can carry (RFC 5321 §4.1.2); render() quotes
    # what is not a Dot-string.
    if not _QUOTABLE.match(value):
        raise AddressError(f"local part {value!r} cannot be written in a path")


def _check_domain(instance: Mailbox, attribute: attrs.Attribute[str], value: str) -> None:
    if value == "":
        if instance.local_part.lower() != "postmaster":
            raise AddressError(f"mailbox {instance.local_part!r} has no domain")
    elif not (is_domain(value, utf8=True) or _is_address_literal(value)):
        raise AddressError(f"bad domain {value!r}")


@attrs.frozen(cache_hash=True)
class Mailbox:
    """
    A mailbox: a local part and a domain or address literal.

    :ivar local_part: the local part, unquoted.
    :ivar domain: the domain or address literal as written, or ``""`` only for
        the special ``<postmaster>`` recipient of RFC 5321 §4.1.1.3.
    :raises AddressError: when built from parts that no path can carry.
    """

    local_part: str = attrs.field(validator=_check_local_part)
    domain: str = attrs.field(validator=_check_domain)
    # A mailbox is hashed and written many times on its way through the
    # queue (its log lines, its queue file, the next hop's RCPT): its
    # hash and its text are made once.
    _text: str | None = attrs.field(default=None, init=False, eq=False, repr=False)

    @classmethod
    def parse(cls, text: str, utf8: bool = False) -> Mailbox:
        """Parse ``local@domain``; raise :class:`AddressError` if invalid."""
        # A general address literal may hold "@" but never "[" (RFC 5321
        # §4.1.3 dcontent), so "@[" is where an address literal starts.
        at = text.rfind("@[") if text.endswith("]") else text.rfind("@")
        if at < 0:
            if text.lower() == "postmaster":
                return cls(text, "")
            raise AddressError(f"mailbox {text!r} has no domain")
        local, domain = text[:at], text[at + 1 :]
        if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
            local = _unquote(local, utf8)
        elif not _DOT_STRING[utf8].match(local):
            raise AddressError(f"bad local part in {text!r}")
        if not (is_domain(domain, utf8) or _is_address_literal(domain)):
            raise AddressError(f"bad domain in {text!r}")
        return cls(local, domain)

    @property
    def is_postmaster(self) -> bool:
        """``True`` for the local part ``postmaster`` in any case."""
        return self.local_part.lower() == "postmaster"

    @property
    def is_ascii(self) -> bool:
        """``True`` when no part of the mailbox needs SMTPUTF8."""
        return (self.local_part + self.domain).isascii()

    def render(self) -> str:
        """The mailbox as RFC 5321 writes it, quoting the local part if needed."""
        text = self._text
        if text is None:
            local = self.local_part
            if not _DOT_STRING[True].match(local):
                escaped = local.replace("\\", "\\\\").replace('"', '\\"')
                local = f'"{escaped}"'
            text = f"{local}@{self.domain}" if self.domain else local
            object.__setattr__(self, "_text", text)
        return text

    def __str__(self) -> str:
        return self.render()


@attrs.frozen
class NullPath:
    """The null reverse path ``<>``, used for bounces (RFC 5321 §4.5.5)."""

    def render(self) -> str:
        return ""

    def __str__(self) -> str:
        return ""


NULL_PATH = NullPath()
ReversePath = Mailbox | NullPath


def _strip_path(text: str, utf8: bool) -> str:
    """The Mailbox text of a Path, with any source route dropped."""
    if not (text.startswith("<") and text.endswith(">")):
        raise AddressError(f"path {text!r} is not in angle brackets")
    inner = text[1:-1]
    if inner.startswith("@"):
        # A-d-l: accepted and ignored (RFC 5321 §4.1.2, §C).
        route, colon, rest = inner.partition(":")
        if not colon or not rest:
            # A-d-l ":" Mailbox: a route is never followed by nothing.
            raise AddressError(f"source route in {text!r} has no mailbox")
        for hop in route.split(","):
            if not (hop.startswith("@") and is_domain(hop[1:], utf8)):
                raise AddressError(f"bad source route in {text!r}")
        inner = rest
    return inner


def parse_reverse_path(text: str, utf8: bool = False) -> ReversePath:
    """Parse the Reverse-path of MAIL FROM (``<>`` gives :data:`NULL_PATH`)."""
    inner = _strip_path(text, utf8)
    if inner == "":
        return NULL_PATH
    mailbox = Mailbox.parse(inner, utf8)
    if not mailbox.domain:
        raise AddressError(f"sender {text!r} has no domain")
    return mailbox


def parse_forward_path(text: str, utf8: bool = False) -> Mailbox:
    """Parse the Forward-path of RCPT TO; ``<postmaster>`` needs no domain."""
    return Mailbox.parse(_strip_path(text, utf8), utf8)


def encode_xtext(text: str) -> str:
    """
    *text* in xtext (RFC 3461 §4): its UTF-8 octets, each one that is not
    printable ASCII, and ``+`` and ``=``, written ``+XX`` in upper-case
    hex. ``decode_xtext(encode_xtext(text)) == text``.

    :raises ValueError: when *text* has a lone surrogate, which UTF-8
        cannot encode.
    """
    out = []
    for octet in text.encode("utf-8"):
        if 0x21 <= octet <= 0x7E and octet not in (0x2B, 0x3D):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)


def decode_xtext(text: str) -> str:
    """
    The text that the xtext *text* encodes (RFC 3461 §4): each ``+XX`` is
    the octet of hex value ``XX``, and the octets are read as UTF-8. What
    the text may hold (printable ASCII only, for ORCPT and ENVID) is for
    the caller to check.

    :raises ValueError: when *text* is not xtext (a ``+`` without two hex
        digits, ``=``, a space, a control or a non-ASCII character), or its
        octets are not UTF-8.
    """
    if not _XTEXT.match(text):
        raise ValueError(f"{text!r} is not xtext")
    octets = _HEXCHAR.sub(lambda match: bytes([int(match.group(1), 16)]), text.encode("ascii"))
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"the xtext {text!r} does not encode UTF-8") from None


def original_recipient(mailbox: Mailbox) -> str:
    """
    The ORCPT value that names *mailbox* (RFC 3461 §4.2), before its
    address is encoded in xtext: ``rfc822;`` and the address; for a
    non-ASCII address, ``utf-8;`` and its utf-8-addr-xtext form
    (RFC 6533 §3), each character outside QCHAR written ``\\x{HEX}``, so
    that the value stays printable ASCII as RFC 3461 §4.2 requires.
    """
    address = mailbox.render()
    if address.isascii():
        return f"rfc822;{address}"
    encoded = "".join(char if _QCHAR.match(char) else f"\\x{{{ord(char):02X}}}" for char in address)
    return f"utf-8;{encoded}"
