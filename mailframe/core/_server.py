"""
:class:`ServerConnection`: the server side of an SMTP session, without I/O.

Bytes go in with :meth:`~ServerConnection.receive_data`; events come out of
:meth:`~ServerConnection.next_event`; each command event is answered with
:meth:`~ServerConnection.send`, which returns the bytes to write. Commands
are handed out one at a time: until the last one is answered,
``next_event`` returns :data:`PAUSED`. Replies therefore leave in command
order under PIPELINING (RFC 2920 §3.1) however long a policy takes.
"""

from __future__ import annotations

import attrs

from mailframe.address import Mailbox, ReversePath
from mailframe.core import _events as ev
from mailframe.core._commands import CommandError, parse_command
from mailframe.core._limits import (
    DATA_CHUNK,
    HEADER_CAPTURE,
    SIZE_MAIL_EXTRA,
    Limits,
)
from mailframe.core._state import ALLOWED, TRANSITIONS, State
from mailframe.reply import Reply

__all__ = ["ServerConnection", "Transaction"]

_TERMINATOR = b"\r\n.\r\n"

_SEQUENCE_ERRORS: dict[type[ev.Command], str] = {
    ev.Mail: "Error: send HELO/EHLO first",
    ev.Rcpt: "Error: need MAIL command",
    ev.Data: "Error: need RCPT command",
}

_DEFAULT_REPLIES: dict[type[ev.Command], Reply] = {
    ev.Noop: Reply(250, "2.0.0", "OK"),
    ev.Rset: Reply(250, "2.0.0", "OK"),
    ev.Quit: Reply(221, "2.0.0", "Bye"),
    ev.Data: Reply(354, None, "End data with <CR><LF>.<CR><LF>"),
    # RFC 5321 §3.5.3: 252 when the server will not verify; it never says
    # whether a user exists.
    ev.Vrfy: Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"),
    # RFC 5321 §3.5.2: EXPN may be disabled; 502 says so.
    ev.Expn: Reply(502, "5.5.1", "EXPN is not available"),
    ev.Help: Reply(
        214,
        "2.0.0",
        ("Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
         "See RFC 5321"),
    ),
}


@attrs.define
class Transaction:
    """The mail transaction in progress, as far as replies have accepted it."""

    sender: ReversePath | None = None
    mail: ev.Mail | None = None
    recipients: list[Mailbox] = attrs.Factory(list)


class _DataReader:
    """
    Reads message data up to CRLF.CRLF (RFC 5321 §4.1.1.4), undoing the dot
    stuffing of §4.5.2 and nothing else.

    The end of data is only CRLF.CRLF: bare CR and bare LF are never line
    ends, so no form of SMTP smuggling can end a message early. Their
    presence is noted, and the message is refused at its end.
    """

    def __init__(self, max_size: int, max_hops: int) -> None:
        self.max_size = max_size
        self.max_hops = max_hops
        self.size = 0
        self.bare_line_end = False
        self.line_start = True
        self.headers = bytearray()
        self.in_headers = True
        self.hops = 0
        self.finished = False

    @property
    def too_big(self) -> bool:
        return bool(self.max_size) and self.size > self.max_size

    def _note(self, chunk: bytes) -> None:
        self.size += len(chunk)
        crlf = chunk.count(b"\r\n")
        if chunk.count(b"\r") != crlf or chunk.count(b"\n") != crlf:
            self.bare_line_end = True
        if self.in_headers:
            self._scan_headers(chunk)

    def _scan_headers(self, chunk: bytes) -> None:
        start = len(self.headers)
        room = HEADER_CAPTURE - start
        self.headers += chunk[:room]
        view = bytes(self.headers)
        # The header section ends at the first empty line (RFC 5322 §2.1).
        if view.startswith(b"\r\n"):
            end = 2
        else:
            found = view.find(b"\r\n\r\n", max(0, start - 3))
            end = found + 4 if found >= 0 else -1
        if end >= 0:
            del self.headers[end:]
            self.in_headers = False
        elif len(self.headers) >= HEADER_CAPTURE:
            self.in_headers = False
        if not self.in_headers:
            self.hops = (b"\r\n" + bytes(self.headers)).lower().count(b"\r\nreceived:")

    def read(self, buffer: bytearray) -> tuple[bytes | None, bool]:
        """
        Take what can be taken from *buffer*.

        :return: ``(chunk, finished)``: a piece of unstuffed data (or
            ``None``), and whether the terminator was consumed.
        """
        if self.line_start:
            if buffer[:3] == b".\r\n":
                del buffer[:3]
                return None, True
            if len(buffer) < 3 and b".\r\n".startswith(bytes(buffer)):
                return None, False
            if buffer[:1] == b".":
                # A stuffed dot on the first line, or right after a chunk
                # that ended with CRLF.
                del buffer[:1]
        end = buffer.find(_TERMINATOR)
        if end >= 0:
            chunk = bytes(buffer[: end + 2])
            del buffer[: end + 5]
            finished = True
        else:
            last = buffer.rfind(b"\r\n")
            if last >= 0:
                chunk = bytes(buffer[: last + 2])
                del buffer[: last + 2]
            elif len(buffer) >= DATA_CHUNK:
                # A very long line: pass it on, keeping a trailing CR back
                # in case its LF is still on the way.
                keep = 1 if buffer.endswith(b"\r") else 0
                chunk = bytes(buffer[: len(buffer) - keep])
                del buffer[: len(chunk)]
            else:
                return None, False
            finished = False
        self.line_start = chunk.endswith(b"\r\n")
        chunk = chunk.replace(b"\r\n.", b"\r\n")
        self._note(chunk)
        return chunk, finished

    def problem(self) -> Reply | None:
        if self.too_big:
            # RFC 1870 §6.3: refused at the end of data, never in the middle.
            return Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        if self.bare_line_end:
            return Reply(550, "5.5.2", "Message contains a bare CR or LF; lines must end with CRLF")
        if self.hops > self.max_hops:
            # RFC 5321 §6.3: a loop.
            return Reply(554, "5.4.6", f"Too many hops ({self.hops} Received: fields)")
        return None


class ServerConnection:
    """
    The server side of one SMTP session.

    :param hostname: the name the server gives in its replies.
    :param limits: the session's limits.
    :param extensions: extra EHLO keywords to advertise (such as
        ``"STARTTLS"``), beyond SIZE, 8BITMIME, PIPELINING and
        ENHANCEDSTATUSCODES.
    """

    def __init__(
        self,
        hostname: str,
        limits: Limits = Limits(),
        extensions: tuple[str, ...] = (),
    ) -> None:
        self.hostname = hostname
        self.limits = limits
        self.state = State.CONNECTED
        self.esmtp = False
        self.client_name = ""
        self.transaction = Transaction()
        self.errors = 0
        self._extra = extensions
        self._buffer = bytearray()
        self._eof = False
        self._discarding = False
        self._pending: ev.Command | None = None
        self._reader: _DataReader | None = None
        self._closed_event_sent = False
        self._advertised = tuple(self._keywords())
        extra = SIZE_MAIL_EXTRA if "SIZE" in self._advertised else 0
        self.line_limit = limits.command_line + extra

    def _keywords(self) -> list[str]:
        size = self.limits.max_message_size
        return (
            ["SIZE " + str(size) if size else "SIZE", "8BITMIME", "PIPELINING",
             "ENHANCEDSTATUSCODES"]
            + list(self._extra)
        )

    @property
    def advertised(self) -> frozenset[str]:
        """The keywords of the EHLO reply, without their parameters."""
        return frozenset(k.split(" ")[0].upper() for k in self._advertised)

    @property
    def closed(self) -> bool:
        """``True`` once 221 or 421 was sent: close the connection."""
        return self.state is State.CLOSED

    @property
    def buffered(self) -> int:
        """Octets received and not yet turned into events."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client closed."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> ev.Event | ev.Sentinel:
        """The next event, :data:`NEED_DATA` or :data:`PAUSED`."""
        if self.state is State.CLOSED:
            return ev.PAUSED
        if self._reader is not None:
            return self._next_data_event()
        if self._pending is not None or self.state is State.CONNECTED:
            return ev.PAUSED
        event = self._next_command()
        if event is ev.NEED_DATA and self._eof:
            return self._closed()
        if isinstance(event, ev.Command):
            self._pending = event
        return event

    def _closed(self) -> ev.Event | ev.Sentinel:
        if self._closed_event_sent:
            return ev.NEED_DATA
        self._closed_event_sent = True
        return ev.ConnectionClosed()

    def _next_data_event(self) -> ev.Event | ev.Sentinel:
        reader = self._reader
        assert reader is not None
        while True:
            if reader.finished:
                return self._end_of_message(reader)
            chunk, reader.finished = reader.read(self._buffer)
            if chunk and not reader.too_big:
                return ev.MessageData(chunk)
            if chunk or reader.finished:
                # Too big: read on to the end, passing nothing on.
                continue
            if self._eof:
                self._reader = None
                return self._closed()
            return ev.NEED_DATA

    def _end_of_message(self, reader: _DataReader) -> ev.EndOfMessage:
        self._reader = None
        self.state = State.END_OF_DATA
        event = ev.EndOfMessage(reader.size, bytes(reader.headers), reader.hops, reader.problem())
        self._pending = event
        return event

    def _next_command(self) -> ev.Event | ev.Sentinel:
        buffer = self._buffer
        end = buffer.find(b"\r\n")
        if self._discarding:
            if end < 0:
                del buffer[:]
                return ev.NEED_DATA
            del buffer[: end + 2]
            self._discarding = False
            return ev.BadCommand(Reply(500, "5.5.2", "Error: line too long"))
        if end < 0:
            if len(buffer) >= self.line_limit:
                # RFC 5321 §4.5.3.1.4: discard up to the next CRLF, then answer.
                del buffer[:]
                self._discarding = True
            return ev.NEED_DATA
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        if end + 2 > self.line_limit:
            return ev.BadCommand(Reply(500, "5.5.2", "Error: line too long"), line)
        mail = self.transaction.mail
        try:
            command = parse_command(
                line,
                self.advertised if self.esmtp else frozenset(),
                self.limits.max_message_size,
                mail.smtputf8 if mail is not None else False,
            )
        except CommandError as error:
            return ev.BadCommand(error.reply, line)
        return self._check_sequence(command, line)

    def _check_sequence(self, command: ev.Command, line: bytes) -> ev.Command:
        kind = type(command)
        if kind in ALLOWED[self.state]:
            if kind is ev.Rcpt and len(self.transaction.recipients) >= self.limits.max_recipients:
                # RFC 5321 §4.5.3.1.10.
                return ev.BadCommand(Reply(452, "4.5.3", "Error: too many recipients"), line)
            return command
        if self.state is State.NO_SERVICE:
            text = "Error: no service here; only QUIT"
        elif kind is ev.Mail and self.state in (State.MAIL, State.RCPT):
            text = "Error: nested MAIL command"
        else:
            text = _SEQUENCE_ERRORS.get(kind, "Error: bad sequence of commands")
        return ev.BadCommand(Reply(503, "5.5.1", text), line)

    def default_reply(self, command: ev.Command) -> Reply:
        """
        The reply that the server gives to *command* when no policy has a
        say: for NOOP, RSET, QUIT, DATA, VRFY, EXPN, HELP, and the refusals
        of :class:`BadCommand`.
        """
        if isinstance(command, ev.BadCommand):
            return command.reply
        if isinstance(command, ev.Ehlo | ev.Helo):
            return self.helo_reply(command)
        if isinstance(command, ev.Mail | ev.Rcpt):
            return Reply(250, "2.1.0" if isinstance(command, ev.Mail) else "2.1.5", "OK")
        return _DEFAULT_REPLIES[type(command)]

    def helo_reply(self, command: ev.Ehlo | ev.Helo) -> Reply:
        """The positive reply to HELO or EHLO, listing extensions for EHLO."""
        first = f"{self.hostname}"
        if isinstance(command, ev.Helo):
            return Reply(250, None, first)
        return Reply(250, None, (first, *self._advertised))

    def send(self, reply: Reply) -> bytes:
        """
        Answer the command that is pending (or, in state ``CONNECTED``, send
        the greeting), and return the bytes to write.

        A 421 reply, or too many errors, closes the session
        (:attr:`closed`); so does 221 to QUIT.
        """
        command = self._pending
        self._pending = None
        out = [reply.render(enhanced=self.esmtp)]
        if self.state is State.CONNECTED:
            self.state = {220: State.GREETED, 554: State.NO_SERVICE}.get(reply.code, State.CLOSED)
            return out[0]
        if command is None and reply.code != 421:
            raise RuntimeError(f"no command is waiting for a reply; cannot send {reply}")
        if reply.code == 421 or isinstance(command, ev.Quit) and reply.code == 221:
            self.state = State.CLOSED
            return out[0]
        assert command is not None
        self._transition(command, reply)
        if reply.code >= 400 and not isinstance(command, ev.EndOfMessage):
            self.errors += 1
            if self.errors >= self.limits.max_errors:
                out.append(Reply(421, "4.7.0", f"{self.hostname} Error: too many errors")
                           .render(enhanced=self.esmtp))
                self.state = State.CLOSED
        return b"".join(out)

    def _transition(self, command: ev.Command, reply: Reply) -> None:
        positive = reply.code < 400
        if isinstance(command, ev.Helo | ev.Ehlo) and positive:
            self.esmtp = isinstance(command, ev.Ehlo)
            self.client_name = command.name
            self.transaction = Transaction()
        elif isinstance(command, ev.Rset) and positive:
            self.transaction = Transaction()
        elif isinstance(command, ev.Mail) and positive:
            self.transaction = Transaction(command.sender, command)
        elif isinstance(command, ev.Rcpt) and positive:
            self.transaction.recipients.append(command.recipient)
        elif isinstance(command, ev.Data) and positive:
            if reply.code != 354:
                raise RuntimeError(f"DATA must be answered with 354 to proceed, not {reply}")
            self._reader = _DataReader(self.limits.max_message_size, self.limits.max_hops)
        elif isinstance(command, ev.EndOfMessage):
            self.transaction = Transaction()
        next_state = TRANSITIONS.get((self.state, type(command), positive))
        if next_state is not None:
            self.state = next_state

    def shutdown_reply(self) -> Reply:
        """The 421 that tells a client the server is going down (RFC 5321 §3.8)."""
        return Reply(421, "4.3.2", f"{self.hostname} Service shutting down, closing connection")
