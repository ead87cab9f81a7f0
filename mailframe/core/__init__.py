"""
The sans-I/O SMTP core: bytes in, events out; replies in, bytes out.

Nothing here imports Twisted, zope.interface or dnspython, reads a clock or
touches a socket, so the same state machines serve any I/O framework and are
tested by feeding them bytes.
"""

from mailframe.core._commands import CommandError, parse_command, parse_sasl_response
from mailframe.core._events import (
    NEED_DATA,
    PAUSED,
    Auth,
    AuthCancel,
    AuthResponse,
    BadCommand,
    Bdat,
    Command,
    ConnectionClosed,
    Data,
    Ehlo,
    EndOfMessage,
    Event,
    Expn,
    Helo,
    Help,
    Mail,
    MessageData,
    Noop,
    Quit,
    Rcpt,
    Rset,
    Sentinel,
    StartTls,
    Vrfy,
)
from mailframe.core._limits import (
    AUTH_MAIL_EXTRA,
    COMMAND_LINE,
    DSN_MAIL_EXTRA,
    DSN_RCPT_EXTRA,
    MIN_RECIPIENTS,
    SASL_LINE,
    SIZE_MAIL_EXTRA,
    Limits,
)
from mailframe.core._server import ServerConnection, Transaction
from mailframe.core._state import State

__all__ = [
    "AUTH_MAIL_EXTRA",
    "Auth",
    "AuthCancel",
    "AuthResponse",
    "BadCommand",
    "Bdat",
    "COMMAND_LINE",
    "Command",
    "CommandError",
    "ConnectionClosed",
    "DSN_MAIL_EXTRA",
    "DSN_RCPT_EXTRA",
    "Data",
    "Ehlo",
    "EndOfMessage",
    "Event",
    "Expn",
    "Helo",
    "Help",
    "Limits",
    "MIN_RECIPIENTS",
    "Mail",
    "MessageData",
    "NEED_DATA",
    "Noop",
    "PAUSED",
    "Quit",
    "Rcpt",
    "Rset",
    "SASL_LINE",
    "SIZE_MAIL_EXTRA",
    "Sentinel",
    "ServerConnection",
    "StartTls",
    "State",
    "Transaction",
    "Vrfy",
    "parse_command",
    "parse_sasl_response",
]
