"""
Errors, each carrying the SMTP reply it becomes.

The hierarchy splits along two lines:

- :class:`ProtocolError` (the peer broke the rules) against
  :class:`LocalError` (we could not do what was asked);
- :class:`TransientDeliveryError` against :class:`PermanentDeliveryError` for
  delivery attempts.
"""

from __future__ import annotations

from mailframe.reply import Reply

__all__ = [
    "ConfigError",
    "LocalError",
    "MailframeError",
    "PermanentDeliveryError",
    "ProtocolError",
    "TransientDeliveryError",
]


class MailframeError(Exception):
    """
    Base of every mailframe error that maps to an SMTP reply.

    :ivar reply: the reply that a peer sees for this error.
    """

    default_reply = Reply(451, "4.3.0", "Local error in processing")

    def __init__(self, reply: Reply | None = None) -> None:
        self.reply = reply if reply is not None else self.default_reply
        super().__init__(str(self.reply))


class ProtocolError(MailframeError):
    """The peer sent something that the protocol does not allow."""

    default_reply = Reply(500, "5.5.2", "Syntax error")


class LocalError(MailframeError):
    """Something on our side failed; the peer may try again later."""


class TransientDeliveryError(MailframeError):
    """A delivery attempt failed and may succeed later."""

    default_reply = Reply(451, "4.4.0", "Temporary delivery failure")


class PermanentDeliveryError(MailframeError):
    """A delivery attempt failed and will never succeed."""

    default_reply = Reply(550, "5.0.0", "Permanent delivery failure")


class ConfigError(Exception):
    """
    A configuration value is wrong.

    :ivar key: the name of the option or config key.
    :ivar line: the line of the config file, when it came from one.
    """

    def __init__(self, key: str, message: str, line: int | None = None) -> None:
        self.key = key
        self.message = message
        self.line = line
        where = f" (line {line})" if line is not None else ""
        super().__init__(f"{key}{where}: {message}")
