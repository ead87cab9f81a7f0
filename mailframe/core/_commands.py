"""
Parsing of one SMTP command line into an event (RFC 5321 §4.1).

Each parse either returns a command event or raises :class:`CommandError`
with the reply that the command gets.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from typing import TypeVar

from mailframe.address import AddressError, decode_xtext, parse_forward_path, parse_reverse_path
from mailframe.core import _events as ev
from mailframe.core._dsn import parse_envid, parse_notify, parse_orcpt, parse_ret
from mailframe.envelope import BodyType
from mailframe.reply import Reply

__all__ = ["CommandError", "Parameters", "parse_command", "parse_sasl_response"]

# RFC 5321 §4.1.2: esmtp-keyword and esmtp-value.
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")
_DIGITS = re.compile(r"[0-9]{1,20}\Z")
# RFC 4422 §3.1: sasl-mech, in any case.
_MECHANISM = re.compile(r"[A-Za-z0-9_-]{1,20}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: Commands of RFC 5321 and its predecessors, and extensions, that are known
#: but not served (STARTTLS and BDAT unless offered).
_NOT_IMPLEMENTED = frozenset({"SEND", "SOML", "SAML", "TURN", "ETRN", "ATRN", "BDAT", "STARTTLS"})

Parameters = tuple[tuple[str, str | None], ...]
_T = TypeVar("_T")


class CommandError(Exception):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(str(reply))


def _error(code: int, status: str, text: str) -> CommandError:
    return CommandError(Reply(code, status, text))


def _split_path(argument: str, keyword: str) -> tuple[str, str]:
    """
    Split ``FROM:<path> params`` into the path and the parameter text.

    The path may hold spaces and ``>`` inside a quoted local part, and ``>``
    or ``"`` inside an address literal (RFC 5321 §4.1.3). A path without
    angle brackets is taken up to the first space, as Postfix does with
    ``strict_rfc821_envelopes = no``.
    """
    if argument[: len(keyword) + 1].upper() != keyword + ":":
        raise _error(501, "5.5.4", f"Syntax: {keyword}:<address>")
    rest = argument[len(keyword) + 1 :].lstrip(" ")
    if not rest:
        raise _error(501, "5.5.4", f"Syntax: {keyword}:<address>")
    if not rest.startswith("<"):
        path, space, params = rest.partition(" ")
        return f"<{path}>", space + params
    end = rest.find(">")
    if end > 0 and '"' not in rest[:end] and "[" not in rest[:end]:
        # Neither a quoted local part nor an address literal comes before
        # the first ">": it ends the path. Most paths are like this, and
        # need no walk through their characters.
        return rest[: end + 1], rest[end + 1 :]
    quoted = False
    escaped = False
    literal = False
    for index, char in enumerate(rest):
        if escaped:
            escaped = False
        elif literal:
            literal = char != "]"
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "[" and not quoted:
            literal = True
        elif char == ">" and not quoted:
            return rest[: index + 1], rest[index + 1 :]
    raise _error(501, "5.5.4", f"Syntax: {keyword}:<address>: missing '>'")


def _parameters(text: str) -> Parameters:
    """Parse ``KEY[=VALUE]`` words (RFC 5321 §4.1.2 Mail-parameters)."""
    if text and not text.startswith(" "):
        raise _error(501, "5.5.4", "Syntax error in parameters")
    seen: dict[str, str | None] = {}
    for word in text.split():
        key, equals, value = word.partition("=")
        if not _KEYWORD.match(key) or (equals and not _VALUE.match(value)):
            raise _error(501, "5.5.4", f"Bad parameter syntax: {word}")
        key = key.upper()
        if key in seen:
            raise _error(501, "5.5.4", f"Duplicate parameter: {key}")
        seen[key] = value if equals else None
    return tuple(seen.items())


def _xtext(value: str | None) -> str:
    """The decoded xtext of RFC 3461 §4, for AUTH=, or a 501."""
    try:
        text = decode_xtext(value or "")
    except ValueError:
        raise _error(501, "5.5.4", "Bad AUTH parameter syntax") from None
    if not text or _CONTROL.search(text):
        # "+0D+0A" would put a line end into logs and trace fields.
        raise _error(501, "5.5.4", "Bad AUTH parameter syntax")
    return text


def _dsn_value(parse: Callable[[str | None], _T], key: str, value: str | None) -> _T:
    """A DSN parameter checked by *parse* (RFC 3461 §4), or a 501."""
    try:
        return parse(value)
    except ValueError:
        raise _error(501, "5.5.4", f"Bad {key} parameter") from None


def _needs_smtputf8(path_text: str, parse: Callable[[str, bool], object]) -> bool:
    """Whether *path_text* is a valid path only with the UTF-8 grammar."""
    if path_text.isascii():
        return False
    try:
        parse(path_text, True)
    except AddressError:
        return False
    return True


#: RFC 6531 §3.5: 553 with X.6.7 (RFC 5248) for a non-ASCII address in a
#: transaction whose MAIL did not ask for SMTPUTF8.
_NEEDS_SMTPUTF8 = (553, "5.6.7", "SMTPUTF8 is required for non-ASCII addresses")


def _mail(argument: str, extensions: frozenset[str], max_size: int) -> ev.Mail:
    path_text, params_text = _split_path(argument, "FROM")
    parameters = _parameters(params_text)
    size: int | None = None
    body = BodyType.SEVEN_BIT
    smtputf8 = False
    auth: str | None = None
    ret: str | None = None
    envid: str | None = None
    dsn = "DSN" in extensions
    for key, value in parameters:
        if key == "SIZE" and "SIZE" in extensions:
            if value is None or not _DIGITS.match(value):
                raise _error(501, "5.5.4", "Bad SIZE parameter")
            size = int(value)
        elif key == "BODY" and "8BITMIME" in extensions:
            try:
                body = BodyType((value or "").upper())
            except ValueError:
                raise _error(501, "5.5.4", f"Unsupported BODY type: {value}") from None
            if body is BodyType.BINARY_MIME and "BINARYMIME" not in extensions:
                raise _error(501, "5.5.4", f"Unsupported BODY type: {value}")
        elif key == "SMTPUTF8" and "SMTPUTF8" in extensions and value is None:
            smtputf8 = True
        elif key == "AUTH" and "AUTH" in extensions:
            # RFC 4954 §5: an xtext-encoded mailbox, or "<>".
            auth = _xtext(value)
        elif key == "RET" and dsn:
            ret = _dsn_value(parse_ret, key, value)
        elif key == "ENVID" and dsn:
            envid = _dsn_value(parse_envid, key, value)
        else:
            raise _error(555, "5.5.4", f"Unsupported MAIL parameter: {key}")
    try:
        sender = parse_reverse_path(path_text, utf8=smtputf8)
    except AddressError:
        if "SMTPUTF8" in extensions and _needs_smtputf8(path_text, parse_reverse_path):
            raise _error(*_NEEDS_SMTPUTF8) from None
        raise _error(501, "5.1.7", f"Bad sender address syntax: {path_text}") from None
    if max_size and size is not None and size > max_size:
        # RFC 1870 §6.2.
        raise _error(552, "5.3.4", "Message size exceeds fixed maximum message size")
    return ev.Mail(sender, parameters, size, body, smtputf8, auth, ret, envid)


def _rcpt(argument: str, extensions: frozenset[str], smtputf8: bool) -> ev.Rcpt:
    path_text, params_text = _split_path(argument, "TO")
    parameters = _parameters(params_text)
    notify: frozenset[str] | None = None
    orcpt: str | None = None
    dsn = "DSN" in extensions
    for key, value in parameters:
        if key == "NOTIFY" and dsn:
            notify = _dsn_value(parse_notify, key, value)
        elif key == "ORCPT" and dsn:
            orcpt = _dsn_value(parse_orcpt, key, value)
        else:
            raise _error(555, "5.5.4", f"Unsupported RCPT parameter: {key}")
    try:
        recipient = parse_forward_path(path_text, utf8=smtputf8)
    except AddressError:
        if "SMTPUTF8" in extensions and _needs_smtputf8(path_text, parse_forward_path):
            raise _error(*_NEEDS_SMTPUTF8) from None
        raise _error(501, "5.1.3", f"Bad recipient address syntax: {path_text}") from None
    return ev.Rcpt(recipient, parameters, notify, orcpt)


def _base64(text: bytes, what: str) -> bytes:
    """
    Strict base64 (RFC 4954 §4): any character outside the alphabet, and
    padding anywhere but at the end, gets 501 5.5.2.
    """
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _error(501, "5.5.2", f"Error: invalid base64 in {what}") from None


def _auth(argument: str) -> ev.Auth:
    """AUTH mechanism [initial-response] (RFC 4954 §4)."""
    words = argument.split()
    if not 1 <= len(words) <= 2 or not _MECHANISM.match(words[0]):
        raise _error(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
    if len(words) == 1:
        return ev.Auth(words[0].upper(), None)
    # A zero-length initial response is sent as "=".
    initial = words[1]
    data = b"" if initial == "=" else _base64(initial.encode("utf-8"), "initial response")
    return ev.Auth(words[0].upper(), data)


def _bdat(argument: str) -> ev.Bdat:
    """BDAT chunk-size [LAST] (RFC 3030 §2)."""
    words = argument.split()
    if (
        not 1 <= len(words) <= 2
        or not _DIGITS.match(words[0])
        or (len(words) == 2 and words[1].upper() != "LAST")
    ):
        raise _error(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]")
    return ev.Bdat(int(words[0]), len(words) == 2)


def parse_sasl_response(line: bytes) -> ev.AuthResponse | ev.AuthCancel:
    """
    Parse one line, without its CRLF, that answers a ``334`` challenge
    (RFC 4954 §4): ``*`` cancels, anything else is strict base64.

    :raises CommandError: ``501 5.5.2`` when the line is not base64.
    """
    if line == b"*":
        return ev.AuthCancel()
    return ev.AuthResponse(_base64(line, "response"))


def _no_argument(verb: str, argument: str, event: ev.Command) -> ev.Command:
    if argument.strip():
        raise _error(501, "5.5.4", f"Syntax: {verb}")
    return event


def parse_command(
    line: bytes,
    extensions: frozenset[str] = frozenset(),
    max_size: int = 0,
    smtputf8: bool = False,
    offered: frozenset[str] | None = None,
) -> ev.Command:
    """
    Parse one command line, without its CRLF.

    :param extensions: the EHLO keywords that were advertised; parameters of
        extensions that were not advertised get 555.
    :param max_size: the SIZE limit, for early refusal (RFC 1870 §6.2).
    :param smtputf8: the transaction's MAIL carried SMTPUTF8.
    :param offered: the EHLO keywords the server offers, whether or not the
        client has seen them (by default *extensions*). STARTTLS and BDAT
        (``CHUNKING``) get 502 unless offered, AUTH gets ``503 5.5.1``
        (RFC 4954 §4).
    :raises CommandError: with the reply for a malformed command.
    """
    if b"\x00" in line:
        raise _error(500, "5.5.2", "NUL character in command")
    if b"\r" in line or b"\n" in line:
        # RFC 5321 §2.3.8: only CRLF ends a line.
        raise _error(500, "5.5.2", "Bare CR or LF in command")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _error(500, "5.5.2", "Command is not valid UTF-8") from None
    verb, _, argument = text.partition(" ")
    verb = verb.upper()
    if verb == "EHLO" or verb == "HELO":
        name = argument.strip()
        if not name:
            raise _error(501, "5.5.4", f"Syntax: {verb} hostname")
        return ev.Ehlo(name) if verb == "EHLO" else ev.Helo(name)
    if verb == "MAIL":
        return _mail(argument, extensions, max_size)
    if verb == "RCPT":
        return _rcpt(argument, extensions, smtputf8)
    if verb == "DATA":
        return _no_argument(verb, argument, ev.Data())
    if verb == "RSET":
        return _no_argument(verb, argument, ev.Rset())
    if verb == "QUIT":
        return _no_argument(verb, argument, ev.Quit())
    if verb == "NOOP":
        return ev.Noop()
    if verb == "VRFY":
        if not argument.strip():
            raise _error(501, "5.5.4", "Syntax: VRFY address")
        return ev.Vrfy(argument.strip())
    if verb == "EXPN":
        return ev.Expn(argument.strip())
    if verb == "HELP":
        return ev.Help(argument.strip())
    if offered is None:
        offered = extensions
    if verb == "STARTTLS" and "STARTTLS" in offered:
        # RFC 3207 §4: STARTTLS takes no parameters.
        return _no_argument(verb, argument, ev.StartTls())
    if verb == "AUTH":
        if "AUTH" not in offered:
            raise _error(503, "5.5.1", "Error: authentication not enabled")
        return _auth(argument)
    if verb == "BDAT" and "CHUNKING" in offered:
        return _bdat(argument)
    if not verb:
        raise _error(500, "5.5.2", "Error: bad syntax")
    if verb in _NOT_IMPLEMENTED:
        raise _error(502, "5.5.1", f"Command not implemented: {verb}")
    raise _error(500, "5.5.1", "Command unrecognized")
