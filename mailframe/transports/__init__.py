"""Built-in delivery transports."""

from mailframe.transports.maildir import MaildirTransport

__all__ = ["MaildirTransport"]
