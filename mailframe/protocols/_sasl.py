"""
The server side of the SASL mechanisms PLAIN (RFC 4616) and LOGIN, for
SMTP AUTH (RFC 4954). Each exchange ends with a username and password for
a :mod:`twisted.cred` checker, or with a reply that refuses.
"""

from __future__ import annotations

import attrs

from mailframe.reply import Reply

__all__ = ["MECHANISMS", "Challenge", "Credentials", "SaslExchange", "start_exchange"]

#: The mechanisms offered, in the order EHLO lists them.
MECHANISMS = ("PLAIN", "LOGIN")

_MALFORMED = Reply(501, "5.5.2", "Error: malformed authentication response")


@attrs.frozen
class Challenge:
    """Send this to the client (base64-encoded, in a 334 reply)."""

    data: bytes


@attrs.frozen
class Credentials:
    """The exchange is over: check these."""

    username: str
    password: str


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class SaslExchange:
    """One exchange of one mechanism: :meth:`step` is fed each response."""

    def step(self, response: bytes | None) -> Challenge | Credentials | Reply:
        raise NotImplementedError


class _Plain(SaslExchange):
    def step(self, response: bytes | None) -> Challenge | Credentials | Reply:
        if response is None:
            return Challenge(b"")
        parts = response.split(b"\x00")
        if len(parts) != 3:
            return _MALFORMED
        authzid, authcid, password = (_text(p) for p in parts)
        if authzid is None or authcid is None or password is None or not authcid:
            return _MALFORMED
        if authzid and authzid != authcid:
            return Reply(535, "5.7.8", "Error: authorization identity not supported")
        return Credentials(authcid, password)


class _Login(SaslExchange):
    def __init__(self) -> None:
        self._username: str | None = None

    def step(self, response: bytes | None) -> Challenge | Credentials | Reply:
        if response is None:
            return Challenge(b"Username:")
        text = _text(response)
        if text is None:
            return _MALFORMED
        if self._username is None:
            if not text:
                return _MALFORMED
            self._username = text
            return Challenge(b"Password:")
        return Credentials(self._username, text)


def start_exchange(mechanism: str) -> SaslExchange | None:
    """A new exchange for *mechanism*, or ``None`` if it is not offered."""
    if mechanism == "PLAIN":
        return _Plain()
    if mechanism == "LOGIN":
        return _Login()
    return None
