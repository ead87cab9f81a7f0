"""Built-in delivery transports."""

from mailframe.transports.maildir import MaildirTransport

__all__ = ["MaildirTransport"]

from mailframe.transports.smtp import SMTPTransport, SMTPTransportSettings

__all__ += ["SMTPTransport", "SMTPTransportSettings"]
