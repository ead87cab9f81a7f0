"""
:class:`ServerConnection`: the server side of an SMTP session, without I/O.

Bytes go in with :meth:`~ServerConnection.receive_data`; events come out of
:meth:`~ServerConnection.next_event`; each command event is answered with
:meth:`~ServerConnection.send`, which returns the bytes to write. Commands
are handed out one at a time: until the last one is answered,
``next_event`` returns :data:`PAUSED`. Replies therefore leave in command
order under PIPELINING (RFC 2920 §3.1) however long a policy takes.

Besides commands, the core reads the responses of an AUTH exchange
(RFC 4954 §4) and the octets of BDAT chunks (RFC 3030 §2); STARTTLS
(RFC 3207) throws away what it has buffered once it is answered ``220``.
"""

from __future__ import annotations

import functools

import attrs

from mailframe.address import Mailbox, ReversePath
from mailframe.core import _events as ev
from mailframe.core._commands import CommandError, parse_command, parse_sasl_response
from mailframe.core._limits import (
    AUTH_MAIL_EXTRA,
    DATA_CHUNK,
    DSN_MAIL_EXTRA,
    DSN_RCPT_EXTRA,
    HEADER_CAPTURE,
    SIZE_MAIL_EXTRA,
    Limits,
)
from mailframe.core._state import ALLOWED, CHUNK_STATES, TRANSITIONS, Outcome, State, outcome
from mailframe.envelope import DSNOptions
from mailframe.reply import Reply

__all__ = ["ServerConnection", "Transaction"]

_TERMINATOR = b"\r\n.\r\n"

_SEQUENCE_ERRORS: dict[type[ev.Command], str] = {
    ev.Mail: "Error: send HELO/EHLO first",
    ev.Rcpt: "Error: need MAIL command",
    ev.Data: "Error: need RCPT command",
    ev.Bdat: "Error: need RCPT command",
    ev.Auth: "Error: send HELO/EHLO first",
}
_IN_TRANSACTION = (State.MAIL, State.RCPT, State.BDAT)

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
        ("Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP", "See RFC 5321"),
    ),
    # RFC 3207 §4.
    ev.StartTls: Reply(220, "2.0.0", "Ready to start TLS"),
    # RFC 4954 §4: the core itself knows no mechanism, and verifies nothing.
    ev.Auth: Reply(504, "5.5.4", "Unrecognized authentication type"),
    ev.AuthResponse: Reply(535, "5.7.8", "Authentication credentials invalid"),
    ev.AuthCancel: Reply(501, "5.0.0", "Authentication cancelled"),
}
_MAIL_OK = Reply(250, "2.1.0", "OK")
_RCPT_OK = Reply(250, "2.1.5", "OK")
_MESSAGE_OK = Reply(250, "2.0.0", "OK")

#: The positive replies that each of these commands may get; any other
#: positive reply is a mistake of the caller (RFC 5321 §4.1.1.4, RFC 3207
#: §4, RFC 4954 §4: "*" is always refused with 501).
_POSITIVE_CODES: dict[type[ev.Command], frozenset[int]] = {
    ev.Data: frozenset({354}),
    ev.StartTls: frozenset({220}),
    ev.Auth: frozenset({235, 334}),
    ev.AuthResponse: frozenset({235, 334}),
    ev.AuthCancel: frozenset(),
}


@attrs.define
class Transaction:
    """
    The mail transaction in progress, as far as replies have accepted it.

    :ivar dsn: the accepted recipients that gave NOTIFY or ORCPT
        (RFC 3461 §4.1, §4.2), with their options, in order.
    """

    sender: ReversePath | None = None
    mail: ev.Mail | None = None
    recipients: list[Mailbox] = attrs.Factory(list)
    dsn: list[tuple[Mailbox, DSNOptions]] = attrs.Factory(list)


_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
#: Every octet but CR and LF. A piece has no bare CR or LF when what is
#: left after ``bytes.translate`` deletes these is twice its CRLFs: one
#: pass of that costs less than counting CRs and LFs apart.
_NOT_LINE_ENDS = bytes(octet for octet in range(256) if octet not in b"\r\n")


class _MessageScan:
    """
    What the core checks in a message, however it arrives (DATA or BDAT):
    its size (RFC 1870), bare CR or LF (RFC 5321 §2.3.8), and the
    ``Received:`` fields of its header section (§6.3).
    """

    def __init__(self, max_size: int, max_hops: int) -> None:
        self.max_size = max_size
        self.max_hops = max_hops
        self.size = 0
        self.bare_line_end = False
        self.headers = bytearray()
        self.in_headers = True
        self.hops = 0
        # The last octet noted was a CR whose LF may come in the next piece.
        self._cr_pending = False

    @property
    def too_big(self) -> bool:
        return bool(self.max_size) and self.size > self.max_size

    def _note(self, chunk: bytes) -> None:
        # A piece that never splits a CRLF (the DATA reader sees to it).
        self.size += len(chunk)
        if len(chunk.translate(None, _NOT_LINE_ENDS)) != 2 * chunk.count(b"\r\n"):
            self.bare_line_end = True
        if self.in_headers:
            self._scan_headers(chunk)

    def note_raw(self, piece: bytes) -> None:
        """Note a piece of BDAT data, cut anywhere (a CRLF may straddle pieces)."""
        self.size += len(piece)
        # CRs and LFs, less those that are halves of a CRLF.
        bare = len(piece.translate(None, _NOT_LINE_ENDS)) - 2 * piece.count(b"\r\n")
        if self._cr_pending:
            if piece.startswith(b"\n"):
                bare -= 1
            else:
                self.bare_line_end = True
        self._cr_pending = piece.endswith(b"\r")
        if self._cr_pending:
            bare -= 1
        if bare:
            self.bare_line_end = True
        if self.in_headers:
            self._scan_headers(piece)

    def _scan_headers(self, chunk: bytes) -> None:
        headers = self.headers
        start = len(headers)
        headers += chunk[: HEADER_CAPTURE - start]
        # The header section ends at the first empty line (RFC 5322 §2.1).
        if headers.startswith(b"\r\n"):
            end = 2
        else:
            found = headers.find(b"\r\n\r\n", max(0, start - 3))
            end = found + 4 if found >= 0 else -1
        if end >= 0:
            del headers[end:]
            self._end_headers()
        elif len(headers) >= HEADER_CAPTURE:
            self._end_headers()

    def _end_headers(self) -> None:
        self.in_headers = False
        # RFC 5321 §6.3: each relay adds one Received: field.
        self.hops = (b"\r\n" + self.headers).lower().count(b"\r\nreceived:")

    def finish(self) -> None:
        if self.in_headers:
            # The message ended inside its header section.
            self._end_headers()
        if self._cr_pending:
            # The message ends with a CR that no LF follows.
            self.bare_line_end = True

    def problem(self) -> Reply | None:
        if self.too_big:
            # RFC 1870 §6.3: refused at the end of data, never in the middle.
            return _TOO_BIG
        if self.bare_line_end:
            # RFC 5321 §2.3.8: lines end with CRLF only.
            return Reply(550, "5.5.2", "Message contains a bare CR or LF; lines must end with CRLF")
        if self.hops > self.max_hops:
            # RFC 5321 §6.3: a loop.
            return Reply(554, "5.4.6", f"Too many hops ({self.hops} Received: fields)")
        return None


class _DataReader(_MessageScan):
    """
    Reads message data up to CRLF.CRLF (RFC 5321 §4.1.1.4), undoing the dot
    stuffing of §4.5.2 and nothing else.

    The end of data is only CRLF.CRLF: bare CR and bare LF are never line
    ends (§2.3.8), so no form of SMTP smuggling can end a message early.
    Their presence is noted, and the message is refused at its end.

    Data is taken in chunks that end at the last CRLF received, searched
    with ``bytes.find`` and unstuffed with one ``replace``; a line with no
    CRLF yet is held back until it ends or reaches :data:`DATA_CHUNK`.
    """

    def __init__(self, max_size: int, max_hops: int) -> None:
        super().__init__(max_size, max_hops)
        #: The buffer starts a line whose first octet is still to be looked
        #: at (a terminator, a stuffed dot, or data).
        self.line_start = True
        self.finished = False
        # Octets at the head of the buffer already searched in vain for CRLF.
        self._searched = 0

    def read(self, buffer: bytearray) -> tuple[bytes | None, bool]:
        """
        Take what can be taken from *buffer*.

        :return: ``(chunk, finished)``: a piece of unstuffed data (or
            ``None``), and whether the terminator was consumed.
        """
        if self.line_start:
            if buffer[:3] == b".\r\n":
                del buffer[:3]
                self.finish()
                return None, True
            if len(buffer) < 3 and b".\r\n".startswith(buffer):
                return None, False
            if buffer[:1] == b".":
                # A stuffed dot on the first line, or right after a chunk
                # that ended with CRLF.
                del buffer[:1]
            # This line's first octet is dealt with, whether or not the rest
            # of the line is here yet.
            self.line_start = False
        # A CRLF may straddle the end of what was searched before.
        start = max(0, self._searched - 1)
        end = buffer.find(_TERMINATOR, start)
        if end >= 0:
            chunk = bytes(buffer[: end + 2])
            del buffer[: end + 5]
            finished = True
        else:
            last = buffer.rfind(b"\r\n", start)
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
                self._searched = len(buffer)
                return None, False
            finished = False
        self._searched = 0
        self.line_start = chunk.endswith(b"\r\n")
        chunk = chunk.replace(b"\r\n.", b"\r\n")
        self._note(chunk)
        if finished:
            self.finish()
        return chunk, finished


class _Chunk:
    """The octets of one BDAT chunk still to be read, and what follows them."""

    __slots__ = ("command", "discard", "remaining")

    def __init__(self, remaining: int, command: ev.Command, discard: bool) -> None:
        self.remaining = remaining
        #: The Bdat of a chunk that was taken, or the BadCommand of one that
        #: is read only to be thrown away.
        self.command = command
        self.discard = discard


_DEFAULT_LIMITS = Limits()
_LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
# RFC 4954 §4: a response longer than the server's buffer fails AUTH.
_RESPONSE_TOO_LONG = Reply(500, "5.5.6", "Error: authentication response too long")


class ServerConnection:
    """
    The server side of one SMTP session.

    :param hostname: the name the server gives in its replies.
    :param limits: the session's limits.
    :param extensions: extra EHLO keywords to advertise (such as
        ``"STARTTLS"``), beyond SIZE, 8BITMIME, PIPELINING,
        ENHANCEDSTATUSCODES and DSN. ``STARTTLS``, ``AUTH`` and
        ``CHUNKING`` make the core serve STARTTLS, AUTH and BDAT.
    :param tls: the connection is already encrypted (implicit TLS,
        RFC 8314 §3.3): STARTTLS is neither advertised nor served.
    :param dsn: advertise DSN (RFC 3461), and take its parameters: RET
        and ENVID on MAIL, NOTIFY and ORCPT on RCPT, checked and decoded
        into :class:`~mailframe.core.Mail` and
        :class:`~mailframe.core.Rcpt` (``501 5.5.4`` when malformed).
        Without it they get ``555``.

    :ivar line_limit: the longest command line accepted, CRLF included:
        :attr:`Limits.command_line` plus what the advertised extensions add
        to MAIL or RCPT (RFC 1870 §3, RFC 3461 §4, RFC 4954 §5).
    :ivar errors: error replies so far; at :attr:`Limits.max_errors` the
        session ends with 421.
    :ivar tls: the connection is encrypted: implicit TLS, or STARTTLS was
        answered ``220``.
    :ivar authenticated: AUTH was answered ``235``; STARTTLS clears it, as
        it clears all the session knew of the client (RFC 3207 §4.2).
    """

    def __init__(
        self,
        hostname: str,
        limits: Limits = _DEFAULT_LIMITS,
        extensions: tuple[str, ...] = (),
        *,
        tls: bool = False,
        dsn: bool = True,
    ) -> None:
        self.hostname = hostname
        self.dsn = dsn
        self.limits = limits
        self.state = State.CONNECTED
        self.esmtp = False
        self.client_name = ""
        self.tls = tls
        self.authenticated = False
        self.transaction = Transaction()
        self.errors = 0
        self._extra = tuple(extensions)
        self._buffer = bytearray()
        self._eof = False
        self._discarding = False
        self._discarded_head = b""
        self._discarded_reply = _LINE_TOO_LONG
        self._pending: ev.Command | None = None
        self._reader: _DataReader | None = None
        # The BDAT chunk being read, and the message the chunks make up.
        self._chunk: _Chunk | None = None
        self._message: _MessageScan | None = None
        self._closed_event_sent = False
        self._advertise()

    def set_extensions(self, extensions: tuple[str, ...]) -> None:
        """
        Replace the extra EHLO keywords given to the constructor, such as
        ``"AUTH PLAIN LOGIN"`` once TLS is up. The next EHLO reply lists
        them, and :attr:`line_limit` follows what is advertised.
        """
        self._extra = tuple(extensions)
        self._advertise()

    def _advertise(self) -> None:
        self._advertised, self._keyword_set, self._offered = _offer(
            self.limits.max_message_size, self._extra, self.tls, self.dsn
        )
        self.line_limit = self._line_limit()

    def _line_limit(self) -> int:
        keywords = self._keyword_set
        mail = self.limits.command_line
        rcpt = self.limits.command_line
        if "SIZE" in keywords:
            mail += SIZE_MAIL_EXTRA
        if "DSN" in keywords:
            mail += DSN_MAIL_EXTRA
            rcpt += DSN_RCPT_EXTRA
        if "AUTH" in keywords:
            mail += AUTH_MAIL_EXTRA
        return max(mail, rcpt)

    @property
    def advertised(self) -> frozenset[str]:
        """The keywords of the EHLO reply, without their parameters."""
        return self._keyword_set

    @property
    def closed(self) -> bool:
        """``True`` once 221 or 421 was sent: close the connection."""
        return self.state is State.CLOSED

    @property
    def buffered(self) -> int:
        """
        Octets received and not yet turned into events. An adapter stops
        reading while this grows and :meth:`next_event` says :data:`PAUSED`.
        """
        return len(self._buffer)

    @property
    def buffered_commands(self) -> int:
        """
        Complete command lines received and not yet handed out: each is a
        reply still owed. Outside message data only; 0 while reading data.
        """
        if self._reader is not None or self._chunk is not None:
            return 0
        return self._buffer.count(b"\r\n")

    def receive_data(self, data: bytes) -> None:
        """
        Feed bytes from the client; ``b""`` means the client closed.

        Once the session is closed, or the client has closed, nothing more
        is taken in.
        """
        if self.state is State.CLOSED or self._eof:
            return
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> ev.Event | ev.Sentinel:
        """
        The next event, :data:`NEED_DATA` or :data:`PAUSED`.

        :data:`PAUSED` means a command is waiting for its reply, however many
        more are buffered behind it. After :class:`ConnectionClosed` there
        is nothing more: :data:`NEED_DATA`.
        """
        if self.state is State.CLOSED:
            return ev.PAUSED
        if self._closed_event_sent:
            return ev.NEED_DATA
        if self._reader is not None:
            return self._next_data_event()
        if self._chunk is not None:
            return self._next_chunk_event()
        if self._pending is not None or self.state is State.CONNECTED:
            return ev.PAUSED
        event = self._next_command()
        if event is ev.NEED_DATA and self._eof:
            return self._closed()
        if isinstance(event, ev.Command):
            self._pending = event
        return event

    def _closed(self) -> ev.ConnectionClosed:
        self._closed_event_sent = True
        self._reader = None
        self._chunk = None
        del self._buffer[:]
        return ev.ConnectionClosed()

    def _next_data_event(self) -> ev.Event | ev.Sentinel:
        reader = self._reader
        assert reader is not None
        while not reader.finished:
            before = reader.size
            chunk, reader.finished = reader.read(self._buffer)
            if chunk is None:
                if reader.finished:
                    break
                if self._eof:
                    # The client went away mid-message: no end of message.
                    return self._closed()
                return ev.NEED_DATA
            if reader.too_big:
                # RFC 1870 §6.3: the message is refused at its end. Until
                # then pass on nothing past the limit, however the data was
                # split, so that memory stays bounded.
                chunk = chunk[: max(0, reader.max_size - before)]
            if chunk:
                return ev.MessageData(chunk)
        return self._end_of_message(reader)

    def _end_of_message(self, reader: _DataReader) -> ev.EndOfMessage:
        self._reader = None
        self.state = State.END_OF_DATA
        event = ev.EndOfMessage(reader.size, bytes(reader.headers), reader.hops, reader.problem())
        self._pending = event
        return event

    def _start_chunk(self, bdat: ev.Bdat, checked: ev.Command) -> ev.Event | ev.Sentinel:
        """
        Read the octets of the chunk that *bdat* announced. RFC 3030 §2: a
        chunk is read even when its BDAT is refused (*checked* is then a
        :class:`BadCommand`), and thrown away, so that its octets are never
        taken for commands.
        """
        if checked is bdat:
            if self._message is None:
                self._message = _MessageScan(self.limits.max_message_size, self.limits.max_hops)
            self.state = CHUNK_STATES[bdat.last]
            self._chunk = _Chunk(bdat.size, bdat, discard=False)
        else:
            self._chunk = _Chunk(bdat.size, checked, discard=True)
        return self._next_chunk_event()

    def _next_chunk_event(self) -> ev.Event | ev.Sentinel:
        chunk = self._chunk
        assert chunk is not None
        buffer = self._buffer
        message = self._message
        while chunk.remaining:
            if not buffer:
                if self._eof:
                    # The client went away mid-chunk.
                    return self._closed()
                return ev.NEED_DATA
            if chunk.discard or message is None:
                take = min(chunk.remaining, len(buffer))
                chunk.remaining -= take
                del buffer[:take]
                continue
            # The octets are message data exactly as sent: no end-of-data
            # search, no dot-stuffing (RFC 3030 §2); passed on in pieces of
            # at most DATA_CHUNK octets.
            take = min(chunk.remaining, len(buffer), DATA_CHUNK)
            chunk.remaining -= take
            data = bytes(buffer[:take])
            del buffer[:take]
            before = message.size
            message.note_raw(data)
            if message.too_big:
                # As for DATA: nothing past the limit is passed on, so that
                # memory stays bounded; the chunk is still read to its end.
                data = data[: max(0, message.max_size - before)]
            if data:
                return ev.MessageData(data)
        self._chunk = None
        event = chunk.command
        if not chunk.discard and message is not None:
            assert isinstance(event, ev.Bdat)
            if event.last:
                message.finish()
                problem = message.problem()
            else:
                # RFC 3030 §2 (and RFC 1870 §6.3): the chunk that takes the
                # message over the limit is refused once it has been read.
                problem = _TOO_BIG if message.too_big else None
            event = ev.Bdat(
                event.size, event.last, message.size, bytes(message.headers), message.hops, problem
            )
        self._pending = event
        return event

    def _next_command(self) -> ev.Event | ev.Sentinel:
        buffer = self._buffer
        # RFC 5321 §2.3.8: only CRLF ends a line; a bare CR or LF is part of
        # the line and gets it refused.
        end = buffer.find(b"\r\n")
        if self._discarding:
            if end < 0:
                self._discard_but_cr(buffer)
                return ev.NEED_DATA
            del buffer[: end + 2]
            self._discarding = False
            return ev.BadCommand(self._discarded_reply, self._discarded_head)
        sasl = self.state is State.AUTH
        # RFC 4954 §4: a SASL response may be far longer than a command.
        limit = self.limits.sasl_line + 2 if sasl else self.line_limit
        too_long = _RESPONSE_TOO_LONG if sasl else _LINE_TOO_LONG
        if end < 0:
            if len(buffer) >= limit:
                # RFC 5321 §4.5.3.1.4: too long already. Discard up to the
                # next CRLF, then answer once, so that the buffer stays
                # bounded however long the line.
                self._discarded_head = b"" if sasl else bytes(buffer[: limit - 2])
                self._discarded_reply = too_long
                self._discard_but_cr(buffer)
                self._discarding = True
            return ev.NEED_DATA
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        if sasl:
            # A response may carry credentials: no BadCommand keeps it.
            if end + 2 > limit:
                return ev.BadCommand(too_long)
            try:
                return parse_sasl_response(line)
            except CommandError as error:
                return ev.BadCommand(error.reply)
        if end + 2 > limit:
            # RFC 5321 §4.5.3.1.4 (500 5.5.2 as in RFC 3463 §3.6); the event
            # keeps as much of the line as a command may have.
            return ev.BadCommand(too_long, line[: limit - 2])
        mail = self.transaction.mail
        try:
            command = parse_command(
                line,
                self._keyword_set if self.esmtp else frozenset(),
                self.limits.max_message_size,
                mail.smtputf8 if mail is not None else False,
                self._offered,
            )
        except CommandError as error:
            return ev.BadCommand(error.reply, line)
        checked = self._check_sequence(command, line)
        if isinstance(command, ev.Bdat):
            return self._start_chunk(command, checked)
        return checked

    @staticmethod
    def _discard_but_cr(buffer: bytearray) -> None:
        # Keep a final CR: it may be the first half of the CRLF that ends
        # the line being discarded.
        del buffer[: len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)]

    def _check_sequence(self, command: ev.Command, line: bytes) -> ev.Command:
        kind = type(command)
        state = self.state
        text = None
        if state is State.NO_SERVICE:
            if kind in ALLOWED[state]:
                return command
            # RFC 5321 §3.1: after a 554 greeting, 503 to all but QUIT.
            text = "Error: no service here; only QUIT"
        elif kind is ev.StartTls and self.tls:
            # RFC 3207 §4.2: no second handshake.
            text = "Error: TLS already active"
        elif kind is ev.Auth and self.authenticated:
            # RFC 4954 §4: no AUTH after a successful one.
            text = "Error: already authenticated"
        elif kind is ev.Auth and state is State.READY and not self.esmtp:
            # AUTH is an extension; a HELO client has seen none.
            text = "Error: send EHLO first"
        elif kind in ALLOWED[state]:
            if kind is ev.Rcpt and len(self.transaction.recipients) >= self.limits.max_recipients:
                # RFC 5321 §4.5.3.1.10.
                return ev.BadCommand(Reply(452, "4.5.3", "Error: too many recipients"), line)
            return command
        elif kind is ev.Mail and state in _IN_TRANSACTION:
            text = "Error: nested MAIL command"
        elif kind in (ev.StartTls, ev.Auth) and state in _IN_TRANSACTION:
            # RFC 3207 §4, RFC 4954 §4: not during a mail transaction.
            text = "Error: MAIL transaction in progress"
        elif state is State.BDAT:
            # RFC 3030 §2: DATA after BDAT in one transaction is 503, and
            # the recipients were settled before the first chunk.
            text = "Error: BDAT in progress"
        else:
            text = _SEQUENCE_ERRORS.get(kind, "Error: bad sequence of commands")
        return ev.BadCommand(Reply(503, "5.5.1", text), line)

    def default_reply(self, command: ev.Command) -> Reply:
        """
        The reply that the server gives to *command* when no policy has a
        say: for NOOP, RSET, QUIT, DATA, VRFY, EXPN, HELP, the refusals
        of :class:`BadCommand`, the end of a message or a BDAT chunk (its
        ``problem``, or 250), ``220`` to STARTTLS, and for AUTH, which the
        core cannot verify, ``504 5.5.4`` to :class:`Auth`, ``535 5.7.8``
        to :class:`AuthResponse` and ``501 5.0.0`` to :class:`AuthCancel`.
        """
        # The commonest commands first.
        if isinstance(command, ev.Rcpt):
            return _RCPT_OK
        if isinstance(command, ev.Mail):
            return _MAIL_OK
        if isinstance(command, (ev.EndOfMessage, ev.Bdat)):
            if command.problem is not None:
                return command.problem
            if isinstance(command, ev.Bdat) and not command.last:
                return Reply(250, "2.0.0", f"OK: {command.size} octets received")
            return _MESSAGE_OK
        if isinstance(command, ev.BadCommand):
            return command.reply
        if isinstance(command, (ev.Ehlo, ev.Helo)):
            return self.helo_reply(command)
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
        (:attr:`closed`); so does 221 to QUIT. ``220`` to STARTTLS throws
        away every octet received so far (start the TLS handshake right
        after writing it).

        :raises RuntimeError: for a positive reply that the command cannot
            have: DATA takes only 354, STARTTLS 220, AUTH and its responses
            334 or 235, and a cancelled AUTH none. Nothing changes then.
        """
        command = self._pending
        if command is not None and reply.code < 400:
            allowed = _POSITIVE_CODES.get(type(command))
            if allowed is not None and reply.code not in allowed:
                codes = " or ".join(str(code) for code in sorted(allowed)) or "a refusal"
                raise RuntimeError(
                    f"{type(command).__name__} must be answered with {codes}, not {reply}"
                )
        self._pending = None
        wire = reply.render()
        if self.state is State.CONNECTED:
            self.state = {220: State.GREETED, 554: State.NO_SERVICE}.get(reply.code, State.CLOSED)
            if self.closed:
                self._close()
            return wire
        if command is None and reply.code != 421:
            raise RuntimeError(f"no command is waiting for a reply; cannot send {reply}")
        if reply.code == 421 or (isinstance(command, ev.Quit) and reply.code == 221):
            self._close()
            return wire
        assert command is not None
        self._transition(command, reply)
        if reply.code >= 400 and _is_error(command, reply):
            self.errors += 1
            if self.errors >= self.limits.max_errors:
                self._close()
                closing = Reply(421, "4.7.0", f"{self.hostname} Error: too many errors")
                return wire + closing.render()
        return wire

    def _close(self) -> None:
        self.state = State.CLOSED
        self._reader = None
        self._chunk = None
        # Nothing more is read (RFC 5321 §4.1.1.10, §3.8).
        del self._buffer[:]

    def _reset_transaction(self) -> None:
        self.transaction = Transaction()
        self._message = None

    def _start_tls(self) -> None:
        """
        RFC 3207 §4.2: the session starts over, and the server forgets all
        it learned from the client. Octets received before the handshake
        are never executed (the CVE-2011-0411 class of attack).
        """
        del self._buffer[:]
        self._discarding = False
        self.tls = True
        self.esmtp = False
        self.client_name = ""
        self.authenticated = False
        self._reset_transaction()
        self._advertise()

    def _transition(self, command: ev.Command, reply: Reply) -> None:
        result = outcome(command, reply)
        accepted = result is Outcome.ACCEPTED
        # The commonest commands first.
        if isinstance(command, ev.Rcpt):
            if accepted:
                self.transaction.recipients.append(command.recipient)
                if command.dsn is not None:
                    self.transaction.dsn.append((command.recipient, command.dsn))
        elif isinstance(command, ev.Mail):
            if accepted:
                self.transaction = Transaction(command.sender, command)
                self._message = None
        elif isinstance(command, (ev.Helo, ev.Ehlo)) and accepted:
            self.esmtp = isinstance(command, ev.Ehlo)
            self.client_name = command.name
            self._reset_transaction()
        elif isinstance(command, ev.Rset) and accepted:
            self._reset_transaction()
        elif isinstance(command, ev.Data) and result is Outcome.CONTINUE:
            self._reader = _DataReader(self.limits.max_message_size, self.limits.max_hops)
        elif isinstance(command, ev.EndOfMessage):
            self._reset_transaction()
        elif isinstance(command, ev.Bdat) and (command.last or not accepted):
            self._reset_transaction()
        elif isinstance(command, ev.StartTls) and accepted:
            self._start_tls()
        elif isinstance(command, (ev.Auth, ev.AuthResponse)) and reply.code == 235:
            self.authenticated = True
        next_state = TRANSITIONS.get((self.state, type(command), result))
        if next_state is not None:
            self.state = next_state

    def shutdown_reply(self) -> Reply:
        """The 421 that tells a client the server is going down (RFC 5321 §3.8)."""
        return Reply(421, "4.3.2", f"{self.hostname} Service shutting down, closing connection")


def _is_error(command: ev.Command, reply: Reply) -> bool:
    """Whether *reply* to *command* counts towards :attr:`Limits.max_errors`."""
    if reply.code < 400 or isinstance(command, (ev.EndOfMessage, ev.Bdat)):
        # Refusing a message, or a chunk of one, is not the client's error.
        return False
    if reply.code == 452 and (
        isinstance(command, ev.Rcpt)
        or (isinstance(command, ev.BadCommand) and command.reply.code == 452)
    ):
        # RFC 5321 §4.5.3.1.10: a client told 452 for recipients beyond the
        # limit sends them in a later transaction; that is no error (as
        # Postfix's smtpd_recipient_overshoot_limit).
        return False
    return True


@functools.lru_cache(maxsize=64)
def _offer(
    size: int | None, extra: tuple[str, ...], tls: bool, dsn: bool
) -> tuple[tuple[str, ...], frozenset[str], frozenset[str]]:
    """
    The EHLO keywords (with their parameters), the keywords alone, and the
    commands recognised, for one set of settings. Sessions with the same
    settings share these values, so an idle session does not hold copies
    of its own.
    """
    if tls:
        # RFC 3207 §4.2: STARTTLS is not advertised once TLS is up.
        extra = tuple(k for k in extra if k.split(" ")[0].upper() != "STARTTLS")
    # DSN is the core's own to advertise, or not.
    extra = tuple(k for k in extra if k.split(" ")[0].upper() != "DSN")
    advertised = (
        "SIZE " + str(size) if size else "SIZE",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        *(["DSN"] if dsn else []),
        *extra,
    )
    keywords = frozenset(k.split(" ")[0].upper() for k in advertised)
    # Commands are recognised by what the server offers, whether or not the
    # client has said EHLO; STARTTLS stays known once TLS is up, to be
    # refused with 503.
    offered = keywords | {"STARTTLS"} if tls else keywords
    return advertised, keywords, offered
