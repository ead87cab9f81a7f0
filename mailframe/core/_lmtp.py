"""
:class:`LMTPClientConnection`: the client side of an LMTP session
(RFC 2033), without I/O.

LMTP is SMTP for the last hop, into a mail store that delivers to each
recipient itself. For a client it differs from SMTP in two ways only, and
this connection is a :class:`~mailframe.core.ClientConnection` with those
two changes:

- :class:`ClientEhlo` is sent as ``LHLO`` (RFC 2033 §4.1), and answered
  with the same list of extensions. There is no HELO to fall back on.
- The final dot is answered once for each recipient that RCPT accepted,
  in the order of the RCPT commands (RFC 2033 §4.2), so that each
  recipient has its own outcome. Each of those replies comes from
  ``next_event`` as a :class:`Response` to a :class:`ClientEndOfMessage`
  that names its recipient. A final dot after a ``354`` that followed no
  accepted recipient (RFC 2920 §3.1; an LMTP server should refuse DATA
  then, RFC 2033 §4.2) awaits one reply, as in SMTP.

BDAT is not sent: RFC 2033 defines the replies of each recipient for the
end of DATA only.
"""

from __future__ import annotations

from mailframe.address import Mailbox
from mailframe.core import _client_events as ce
from mailframe.core import _events as ev
from mailframe.core._client import _DEFAULT_LIMITS, ClientConnection, LocalProtocolError
from mailframe.core._client_limits import ClientLimits

__all__ = ["LMTPClientConnection"]


class LMTPClientConnection(ClientConnection):
    """
    The client side of one LMTP session; see the module.

    :param limits: the session's limits and timeouts. The timeout of the
        reply to the final dot (:attr:`ClientLimits.data_termination_timeout`)
        is that of each recipient's reply.
    :param tls: the connection is already encrypted.
    """

    def __init__(self, limits: ClientLimits = _DEFAULT_LIMITS, *, tls: bool = False) -> None:
        super().__init__(limits, tls=tls)
        # The recipients of the current transaction that RCPT accepted, in
        # the order of the RCPT commands.
        self._accepted: list[Mailbox] = []

    def send(self, command: ce.ClientCommand) -> bytes:
        """
        As :meth:`ClientConnection.send`, with :class:`ClientEhlo` sent as
        ``LHLO``.

        :raises LocalProtocolError: also for HELO (RFC 2033 §4.1: LHLO
            replaces HELO and EHLO) and for BDAT.
        """
        if isinstance(command, ce.ClientHelo):
            raise LocalProtocolError("cannot send HELO: LMTP has LHLO only (RFC 2033 §4.1)")
        if isinstance(command, ce.ClientBdat):
            raise LocalProtocolError(
                "cannot send BDAT over LMTP: the replies for each recipient follow DATA"
            )
        line = super().send(command)
        if isinstance(command, ce.ClientEhlo):
            # RFC 2033 §4.1: "LHLO" SP Domain CRLF, as EHLO's.
            return b"LHLO" + line[len(b"EHLO") :]
        return line

    def next_event(self) -> ce.ClientEvent | ev.Sentinel:
        """
        As :meth:`ClientConnection.next_event`; after the final dot, a
        :class:`Response` for each accepted recipient.
        """
        event = super().next_event()
        if isinstance(event, ce.Response) and event.reply.code < 300:
            # Replies come in the order of the commands, so a MAIL accepted
            # starts the list of the recipients that follow it.
            if isinstance(event.command, ce.ClientMail):
                self._accepted = []
            elif isinstance(event.command, ce.ClientRcpt):
                self._accepted.append(event.command.recipient)
        return event

    def _end_of_message(self) -> list[ce.ClientEndOfMessage]:
        # RFC 2033 §4.2: one reply for each accepted RCPT, in their order.
        accepted, self._accepted = self._accepted, []
        return [ce.ClientEndOfMessage(recipient) for recipient in accepted] or [
            ce.ClientEndOfMessage()
        ]
