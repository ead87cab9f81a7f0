"""
:class:`ClientConnection`: the client side of an SMTP session, without I/O.

Commands go in with :meth:`~ClientConnection.send`, which returns the bytes
to write; message data with :meth:`~ClientConnection.send_data` and
:meth:`~ClientConnection.end_data`. The server's bytes go in with
:meth:`~ClientConnection.receive_data`, and :meth:`~ClientConnection.next_event`
turns them into events: the :class:`Greeting`, then one :class:`Response`
for each command, in the order the commands were sent, so that replies
pair with their commands under PIPELINING (RFC 2920 §3.1).

The connection refuses (with :class:`LocalProtocolError`) to send what the
session does not allow: a command out of sequence, an extension the server
did not offer, a second command before the reply to the first when the
server does not offer PIPELINING. What the server sends that is not a valid
reply becomes a :class:`ProtocolViolation` event, never an exception.

Clocks are the adapter's: :attr:`ClientConnection.reply_timeout` says how
long to wait for what is awaited now (RFC 5321 §4.5.3.2).
"""

from __future__ import annotations

import binascii
import re
import types
from collections import deque
from collections.abc import Mapping

from mailframe.core import _client_events as ce
from mailframe.core import _events as ev
from mailframe.core._client_limits import ClientLimits
from mailframe.core._client_replies import ReplyReader
from mailframe.core._client_state import (
    ALLOWED,
    CAN_FOLLOW,
    EXPECTED,
    TRANSITIONS,
    ClientState,
    Verb,
    outcome,
    verb_of,
)
from mailframe.core._limits import COMMAND_LINE
from mailframe.core._state import Outcome
from mailframe.errors import LocalError
from mailframe.reply import Reply, ReplyError

__all__ = ["ClientConnection", "LocalProtocolError"]


class LocalProtocolError(LocalError):
    """
    The caller asked the client to do what the SMTP session does not allow
    now: nothing was sent, and nothing changed. It carries the reply of
    :class:`~mailframe.errors.LocalError` (``451 4.3.0``), the transient
    failure that the recipients of the message get.
    """

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
        self.args = (message,)

    def __str__(self) -> str:
        return self.message


# RFC 5321 §4.1.1.1: ehlo-line = ehlo-keyword *( SP / "=" ehlo-param ); the
# "=" is the form of AUTH that some servers still send (AUTH=LOGIN).
_EHLO_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:[ =](.*))?\Z")
_DIGITS = re.compile(r"[0-9]{1,20}\Z")

#: The EHLO keyword that each MAIL parameter needs (RFC 5321 §4.1.1.2: a
#: client sends only parameters of extensions the server offered):
#: RFC 1870, RFC 6531,
#: RFC 4954 §5, RFC 3461 §4, RFC 8689, RFC 6710, RFC 4865, RFC 2852. BODY
#: needs the keyword of its value (:data:`_BODY_TYPES`). A parameter not
#: listed here is sent after EHLO unchecked.
_MAIL_PARAMETERS = {
    "SIZE": "SIZE",
    "SMTPUTF8": "SMTPUTF8",
    "AUTH": "AUTH",
    "RET": "DSN",
    "ENVID": "DSN",
    "REQUIRETLS": "REQUIRETLS",
    "MT-PRIORITY": "MT-PRIORITY",
    "HOLDFOR": "FUTURERELEASE",
    "HOLDUNTIL": "FUTURERELEASE",
    "BY": "DELIVERBY",
}
#: BODY=7BIT and BODY=8BITMIME need 8BITMIME (RFC 6152 §2); BINARYMIME
#: needs BINARYMIME and CHUNKING (RFC 3030 §3).
_BODY_TYPES = {
    "7BIT": ("8BITMIME",),
    "8BITMIME": ("8BITMIME",),
    "BINARYMIME": ("BINARYMIME", "CHUNKING"),
}
#: RFC 3461 §4: NOTIFY and ORCPT need DSN.
_RCPT_PARAMETERS = {"NOTIFY": "DSN", "ORCPT": "DSN"}

_DEFAULT_LIMITS = ClientLimits()

#: The limit that each verb's reply is awaited under (RFC 5321 §4.5.3.2).
_TIMEOUTS: dict[Verb, str] = {
    Verb.MAIL: "mail_timeout",
    Verb.RCPT: "rcpt_timeout",
    Verb.DATA: "data_initiation_timeout",
    Verb.END_OF_MESSAGE: "data_termination_timeout",
    Verb.BDAT: "data_block_timeout",
    Verb.BDAT_LAST: "data_termination_timeout",
}

_IN_TRANSACTION = frozenset(
    {ClientState.MAIL, ClientState.RCPT, ClientState.DATA, ClientState.BDAT}
)

_FIXED_LINES: dict[Verb, bytes] = {
    Verb.DATA: b"DATA\r\n",
    Verb.RSET: b"RSET\r\n",
    Verb.NOOP: b"NOOP\r\n",
    Verb.QUIT: b"QUIT\r\n",
    Verb.STARTTLS: b"STARTTLS\r\n",
    Verb.AUTH_CANCEL: b"*\r\n",
}


def _base64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _render(command: ce.ClientCommand) -> bytes:
    """The line of *command*, CRLF included."""
    verb = verb_of(command)
    fixed = _FIXED_LINES.get(verb)
    if fixed is not None:
        return fixed
    if isinstance(command, ce.ClientEhlo | ce.ClientHelo):
        line = f"{verb.value} {command.name}"
    elif isinstance(command, ce.ClientMail):
        line = f"MAIL FROM:<{command.sender.render()}>{_parameters(command.parameters)}"
    elif isinstance(command, ce.ClientRcpt):
        line = f"RCPT TO:<{command.recipient.render()}>{_parameters(command.parameters)}"
    elif isinstance(command, ce.ClientBdat):
        line = f"BDAT {command.size} LAST" if command.last else f"BDAT {command.size}"
    elif isinstance(command, ce.ClientAuth):
        line = f"AUTH {command.mechanism}"
        if command.initial is not None:
            # RFC 4954 §4: a zero-length initial response is sent as "=".
            line += " " + (_base64(command.initial) if command.initial else "=")
    else:
        assert isinstance(command, ce.ClientAuthResponse)
        line = _base64(command.data)
    # A non-ASCII path goes out in UTF-8 (RFC 6531 §3.3).
    return line.encode("utf-8") + b"\r\n"


def _parameters(parameters: ce.Parameters) -> str:
    # RFC 5321 §4.1.2: SP esmtp-keyword ["=" esmtp-value].
    return "".join(f" {key}" if value is None else f" {key}={value}" for key, value in parameters)


def parse_extensions(reply: Reply) -> dict[str, str]:
    """
    The extensions that an EHLO reply offers (RFC 5321 §4.1.1.1): each
    keyword, upper-cased, to the rest of its line. A line that does not
    start with a keyword is skipped. When a keyword comes twice, the first
    line counts, but for AUTH, whose mechanisms are merged (servers list
    them both as ``AUTH`` and in the old ``AUTH=`` form).
    """
    found: dict[str, str] = {}
    for text in reply.text[1:]:
        match = _EHLO_LINE.match(text.strip())
        if match is None:
            continue
        keyword = match.group(1).upper()
        params = " ".join((match.group(2) or "").split())
        if keyword not in found:
            found[keyword] = params
        elif keyword == "AUTH":
            known = found[keyword].split()
            known += [word for word in params.split() if word not in known]
            found[keyword] = " ".join(known)
    return found


class ClientConnection:
    """
    The client side of one SMTP session: delivery of messages to one
    server over one connection.

    :param limits: the session's limits and timeouts.
    :param tls: the connection is already encrypted (implicit TLS,
        RFC 8314 §3.3): STARTTLS is never sent.

    :ivar state: the state of the session as the server's replies have
        confirmed it (:class:`ClientState`).
    :ivar tls: the connection is encrypted: implicit TLS, or STARTTLS was
        answered ``220``.
    :ivar esmtp: EHLO (not HELO) was accepted.
    :ivar authenticated: AUTH was answered ``235``.
    :ivar accepted_recipients: RCPT commands of the current transaction
        that were accepted. RFC 2920 §3.1: when a pipelined DATA gets
        ``354`` although this is 0, send the final dot alone.
    """

    def __init__(self, limits: ClientLimits = _DEFAULT_LIMITS, *, tls: bool = False) -> None:
        self.limits = limits
        self.state = ClientState.CONNECTED
        self.tls = tls
        self.esmtp = False
        self.authenticated = False
        self.accepted_recipients = 0
        self._extensions: dict[str, str] = {}
        # The state that the commands sent would lead to if all succeeded.
        self._projected = ClientState.CONNECTED
        self._queue: deque[ce.ClientCommand] = deque()
        self._buffer = bytearray()
        self._reader = ReplyReader(limits)
        self._eof = False
        self._closed_event_sent = False
        # The MAIL of the transaction being sent, for the checks of RCPT
        # and DATA.
        self._mail: ce.ClientMail | None = None
        # Message data after 354: whether the next octet starts a line, and
        # whether the last octet written was a CR.
        self._writing_data = False
        self._line_start = True
        self._cr_pending = False
        # Octets of the current BDAT chunk still to be written.
        self._chunk_remaining = 0

    # -- what the server offers ------------------------------------------

    @property
    def extensions(self) -> Mapping[str, str]:
        """
        The extensions of the accepted EHLO reply: upper-case keyword to
        its parameters (``""`` for none). Empty before EHLO, after HELO,
        and once STARTTLS is answered ``220`` (RFC 3207 §4.2).
        """
        return types.MappingProxyType(self._extensions)

    @property
    def max_size(self) -> int | None:
        """
        The server's fixed message size limit in octets (RFC 1870), or
        ``None``: no SIZE, or SIZE with no number or ``0``, which mean no
        fixed limit (RFC 1870 §4).
        """
        value = self._extensions.get("SIZE")
        if not value:
            return None
        first = value.split()[0]
        if not _DIGITS.match(first):
            return None
        return int(first) or None

    @property
    def pipelining(self) -> bool:
        """PIPELINING is offered (RFC 2920)."""
        return "PIPELINING" in self._extensions

    @property
    def eightbitmime(self) -> bool:
        """8BITMIME is offered (RFC 6152)."""
        return "8BITMIME" in self._extensions

    @property
    def smtputf8(self) -> bool:
        """SMTPUTF8 is offered (RFC 6531)."""
        return "SMTPUTF8" in self._extensions

    @property
    def chunking(self) -> bool:
        """CHUNKING, the BDAT command, is offered (RFC 3030)."""
        return "CHUNKING" in self._extensions

    @property
    def starttls(self) -> bool:
        """STARTTLS is offered (RFC 3207)."""
        return "STARTTLS" in self._extensions

    @property
    def dsn(self) -> bool:
        """DSN is offered (RFC 3461)."""
        return "DSN" in self._extensions

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        """The SASL mechanisms offered with AUTH (RFC 4954 §3), upper-cased."""
        return frozenset(word.upper() for word in self._extensions.get("AUTH", "").split())

    # -- the session -----------------------------------------------------

    @property
    def closed(self) -> bool:
        """
        Nothing more can be sent: ``221`` or ``421`` was received, the
        server sent something that is not a reply, or it closed.
        """
        return self.state is ClientState.CLOSED

    @property
    def outstanding(self) -> tuple[ce.ClientCommand, ...]:
        """
        The commands sent and not yet answered, oldest first. Once the
        connection is closed, those that never were.
        """
        return tuple(self._queue)

    @property
    def sending_data(self) -> bool:
        """
        :meth:`send_data` takes message data now: DATA was answered
        ``354`` and :meth:`end_data` was not called yet, or a BDAT chunk
        has octets still to be written.
        """
        return self._writing_data or self._chunk_remaining > 0

    @property
    def chunk_remaining(self) -> int:
        """Octets of the current BDAT chunk still to be written."""
        return self._chunk_remaining

    @property
    def reply_timeout(self) -> float | None:
        """
        How long to wait, in seconds, for the reply awaited now: the
        greeting, or the reply to the oldest command in :attr:`outstanding`
        (RFC 5321 §4.5.3.2); ``None`` when no reply is awaited. Writes of
        message data have their own limit,
        :attr:`ClientLimits.data_block_timeout`.
        """
        if self.state is ClientState.CLOSED:
            return None
        if self.state is ClientState.CONNECTED:
            return self.limits.greeting_timeout
        if not self._queue:
            return None
        name = _TIMEOUTS.get(verb_of(self._queue[0]), "command_timeout")
        timeout: float = getattr(self.limits, name)
        return timeout

    @property
    def buffered(self) -> int:
        """Octets received and not yet turned into events."""
        return len(self._buffer)

    # -- sending ---------------------------------------------------------

    def send(self, command: ce.ClientCommand) -> bytes:
        """
        Render *command* and return the bytes to write. Its reply will come
        as a :class:`Response` from :meth:`next_event`.

        Addresses are written with :meth:`Mailbox.render
        <mailframe.address.Mailbox.render>` (UTF-8 for SMTPUTF8) and
        parameters as ``KEY=VALUE``. :class:`ClientEndOfMessage` is the same
        as :meth:`end_data`. After :class:`ClientBdat`, write the chunk with
        :meth:`send_data` before anything else.

        :raises LocalProtocolError: when the session does not allow
            *command* now: before the greeting; out of sequence (RFC 5321
            §4.1.4); while message data is being written; before the reply
            to the last command, unless the server offers PIPELINING and
            that command may be followed (RFC 2920 §3.1); for STARTTLS,
            AUTH, BDAT, or a MAIL or RCPT parameter, that the server did not
            offer (RFC 5321 §4.1.1.2, §4.1.1.3); STARTTLS once TLS is on (RFC 3207
            §4.2); AUTH once authenticated, or with an initial response too
            long for a command line (RFC 4954 §4); a non-ASCII recipient in
            a transaction without SMTPUTF8 (RFC 6531 §3.4); DATA for
            ``BODY=BINARYMIME`` (RFC 3030 §3).
        """
        if isinstance(command, ce.ClientEndOfMessage):
            return self.end_data()
        verb = verb_of(command)
        self._check_sequence(command, verb)
        self._check_extensions(command, verb)
        line = _render(command)
        if isinstance(command, ce.ClientAuth) and len(line) > COMMAND_LINE:
            # RFC 4954 §4: send AUTH without it, and the response after 334.
            raise LocalProtocolError(
                f"AUTH {command.mechanism} with this initial response is longer than"
                f" {COMMAND_LINE} octets; send it in answer to the 334 instead"
            )
        self._sent(command, verb)
        if isinstance(command, ce.ClientMail):
            self._mail = command
        elif isinstance(command, ce.ClientRset | ce.ClientEhlo | ce.ClientHelo):
            self._mail = None
        elif isinstance(command, ce.ClientBdat):
            self._chunk_remaining = command.size
        return line

    def send_chunk(self, data: bytes, last: bool = False) -> bytes:
        """
        Send *data* as one BDAT chunk (RFC 3030 §2): the ``BDAT`` line with
        its exact size, then the octets as they are. The same as
        :meth:`send` of ``ClientBdat(len(data), last)`` and
        :meth:`send_data` of *data*.
        """
        line = self.send(ce.ClientBdat(len(data), last))
        return line + self.send_data(data) if data else line

    def send_data(self, data: bytes) -> bytes:
        """
        Write message data and return the bytes to send.

        After DATA's ``354``, *data* is dot-stuffed (RFC 5321 §4.5.2): a
        dot that starts a line is doubled, on the first line too and where
        the line began in an earlier call, however the message was cut.
        Nothing else changes: lines should end with CRLF, and a bare CR or
        LF goes out as it is (a careful server refuses it, RFC 5321
        §2.3.8). After :class:`ClientBdat`, *data* goes out as it is, and
        counts against the chunk's size.

        :raises LocalProtocolError: when no message data is awaited (DATA
            was not answered ``354``, or ``end_data`` was called), or for
            more octets than the BDAT chunk has left.
        """
        if self._chunk_remaining:
            if len(data) > self._chunk_remaining:
                raise LocalProtocolError(
                    f"{len(data)} octets given, but the BDAT chunk has only"
                    f" {self._chunk_remaining} left"
                )
            self._chunk_remaining -= len(data)
            return bytes(data)
        if not self._writing_data:
            raise LocalProtocolError(self._why_no_data())
        if not data:
            return b""
        out = data.replace(b"\r\n.", b"\r\n..")
        if self._line_start and data[:1] == b".":
            out = b"." + out
        elif self._cr_pending and data[:2] == b"\n.":
            # The CRLF before this dot was cut between two calls.
            out = b"\n." + out[1:]
        self._line_start = data.endswith(b"\r\n") or (self._cr_pending and data == b"\n")
        self._cr_pending = data.endswith(b"\r")
        return out

    def end_data(self) -> bytes:
        """
        End the message sent after DATA: the final ``.`` line (RFC 5321
        §4.1.1.4), with a CRLF before it only when the data did not end
        with one. The reply comes as a :class:`Response` to
        :class:`ClientEndOfMessage`.

        :raises LocalProtocolError: when no message is being written.
        """
        if not self._writing_data:
            raise LocalProtocolError(self._why_no_data())
        terminator = b".\r\n" if self._line_start else b"\r\n.\r\n"
        self._writing_data = False
        for command in self._end_of_message():
            self._sent(command, Verb.END_OF_MESSAGE)
        return terminator

    def _end_of_message(self) -> list[ce.ClientEndOfMessage]:
        """
        What the final dot awaits replies to: in SMTP, one, the outcome of
        the message (LMTP awaits one for each recipient).
        """
        return [ce.ClientEndOfMessage()]

    def _why_no_data(self) -> str:
        if self.closed:
            return "the connection is closed"
        if any(isinstance(command, ce.ClientData) for command in self._queue):
            return "DATA has not been answered 354 yet"
        return "no message data is awaited: send DATA and wait for 354, or BDAT"

    def _sent(self, command: ce.ClientCommand, verb: Verb) -> None:
        self._queue.append(command)
        self._projected = TRANSITIONS.get((self._projected, verb, EXPECTED[verb]), self._projected)

    def _check_sequence(self, command: ce.ClientCommand, verb: Verb) -> None:
        name = verb.value
        if self.closed:
            raise LocalProtocolError(f"cannot send {name}: the connection is closed")
        if self.state is ClientState.CONNECTED:
            # RFC 5321 §3.1: the client waits for the greeting.
            raise LocalProtocolError(f"cannot send {name} before the greeting")
        if self._chunk_remaining:
            raise LocalProtocolError(
                f"cannot send {name}: {self._chunk_remaining} octets of the BDAT chunk"
                " are still to be written"
            )
        if self._writing_data:
            raise LocalProtocolError(f"cannot send {name}: end the message data first")
        if self._queue:
            last = verb_of(self._queue[-1])
            if not self.pipelining:
                raise LocalProtocolError(
                    f"cannot send {name} before the reply to {last.value}:"
                    " the server does not offer PIPELINING"
                )
            if last not in CAN_FOLLOW:
                # RFC 2920 §3.1.
                raise LocalProtocolError(
                    f"cannot send {name} before the reply to {last.value}, which ends"
                    " a pipelined group"
                )
        if verb not in ALLOWED[self._projected]:
            raise LocalProtocolError(
                f"cannot send {name} in state {self._projected.value}"
                f"{' (as the commands sent leave it)' if self._queue else ''}"
            )

    def _check_extensions(self, command: ce.ClientCommand, verb: Verb) -> None:
        name = verb.value
        if verb is Verb.STARTTLS:
            if self.tls:
                # RFC 3207 §4.2: no second handshake.
                raise LocalProtocolError("cannot send STARTTLS: TLS is already on")
            self._need("STARTTLS", name)
        elif verb is Verb.AUTH:
            self._need("AUTH", name)
            if self.authenticated:
                # RFC 4954 §4: no AUTH after a successful one.
                raise LocalProtocolError("cannot send AUTH: already authenticated")
        elif verb in (Verb.BDAT, Verb.BDAT_LAST):
            self._need("CHUNKING", name)
        elif isinstance(command, ce.ClientMail):
            self._check_parameters(command.parameters, _MAIL_PARAMETERS, "MAIL")
            body = command.body
            for keyword in _BODY_TYPES.get(body or "", ()):
                self._need(keyword, f"MAIL with BODY={body}")
        elif isinstance(command, ce.ClientRcpt):
            self._check_parameters(command.parameters, _RCPT_PARAMETERS, "RCPT")
            mail = self._mail
            if not command.recipient.is_ascii and (mail is None or not mail.smtputf8):
                # RFC 6531 §3.4.
                raise LocalProtocolError(
                    f"cannot send RCPT TO:<{command.recipient}>: a non-ASCII address needs"
                    " a transaction started with SMTPUTF8"
                )
        elif verb is Verb.DATA and self._mail is not None and self._mail.body == "BINARYMIME":
            # RFC 3030 §3: BINARYMIME only with BDAT.
            raise LocalProtocolError("cannot send DATA for BODY=BINARYMIME: use BDAT")

    def _check_parameters(
        self, parameters: ce.Parameters, needs: Mapping[str, str], name: str
    ) -> None:
        if parameters and not self.esmtp:
            # RFC 5321 §4.1.1.2: parameters come with extensions, which
            # need EHLO.
            raise LocalProtocolError(f"cannot send {name} with parameters after HELO")
        for key, _ in parameters:
            keyword = needs.get(key)
            if keyword is not None:
                self._need(keyword, f"{name} with {key}")

    def _need(self, keyword: str, what: str) -> None:
        if keyword not in self._extensions:
            # Only extensions the server offered (RFC 5321 §4.1.1.2 and
            # §4.1.1.3 for parameters; RFC 3207 §4, RFC 4954 §4 and RFC 3030
            # §2 for their commands).
            raise LocalProtocolError(f"cannot send {what}: the server does not offer {keyword}")

    # -- receiving -------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """
        Feed bytes from the server; ``b""`` means the server closed. Once
        the session is closed, octets are not kept; once the server has
        closed, nothing more is taken.
        """
        if self._eof:
            return
        if not data:
            self._eof = True
        elif not self.closed:
            self._buffer += data

    def next_event(self) -> ce.ClientEvent | ev.Sentinel:
        """
        The next event, or :data:`~mailframe.core.NEED_DATA`.

        :class:`Greeting` first, then a :class:`Response` for each command
        sent, in order. A :class:`ProtocolViolation` ends the session; so
        do ``221`` and ``421``. :class:`~mailframe.core.ConnectionClosed`
        comes once the server has closed and every complete reply before
        that has been handed out (a reply cut short is dropped); after it,
        there is nothing more.
        """
        if self._closed_event_sent:
            return ev.NEED_DATA
        if not self.closed:
            try:
                reply = self._reader.read(self._buffer)
            except ReplyError as error:
                return self._violation(str(error))
            if reply is not None:
                return self._dispatch(reply)
        if self._eof:
            self._closed_event_sent = True
            self._close()
            return ev.ConnectionClosed()
        return ev.NEED_DATA

    def _dispatch(self, reply: Reply) -> ce.ClientEvent:
        if self.state is ClientState.CONNECTED:
            return self._greeting(reply)
        if not self._queue:
            if reply.code == 421:
                # RFC 5321 §3.8: the server may say 421 and close at any
                # time, such as on a timeout while message data is written.
                self._close()
                return ce.Response(None, reply)
            return self._violation(f"a reply to no command: {reply}")
        command = self._queue[0]
        verb = verb_of(command)
        if reply.code == 421:
            # RFC 5321 §3.8: the commands after it will not be answered.
            self._queue.popleft()
            self._close()
            return ce.Response(command, reply)
        result = outcome(verb, reply.code)
        if result is None:
            return self._violation(f"{reply.code} is not a reply to {verb.value}: {reply}")
        next_state = TRANSITIONS.get((self.state, verb, result))
        if next_state is None and result is Outcome.CONTINUE:
            # The server waits for input that the session does not expect.
            return self._violation(
                f"{reply.code} to {verb.value} in state {self.state.value}: {reply}"
            )
        self._queue.popleft()
        self._apply(verb, result, reply)
        if next_state is not None:
            self.state = next_state
        if self.state not in _IN_TRANSACTION:
            self.accepted_recipients = 0
        if not self._queue or result is not EXPECTED[verb]:
            self._project()
        return ce.Response(command, reply)

    def _apply(self, verb: Verb, result: Outcome, reply: Reply) -> None:
        """What a reply does besides moving the state."""
        accepted = result is Outcome.ACCEPTED
        if verb is Verb.EHLO and accepted:
            self._extensions = parse_extensions(reply)
            self.esmtp = True
        elif verb is Verb.HELO and accepted:
            self._extensions = {}
            self.esmtp = False
        elif verb is Verb.RCPT and accepted:
            self.accepted_recipients += 1
        elif verb is Verb.DATA and result is Outcome.CONTINUE:
            self._writing_data = True
            self._line_start = True
            self._cr_pending = False
        elif verb is Verb.STARTTLS and accepted:
            self._start_tls()
        elif verb in (Verb.AUTH, Verb.AUTH_RESPONSE) and accepted:
            self.authenticated = True
        elif verb is Verb.QUIT and accepted:
            self._close()

    def _project(self) -> None:
        """Apply the commands still unanswered to the confirmed state."""
        state = self.state
        for command in self._queue:
            verb = verb_of(command)
            state = TRANSITIONS.get((state, verb, EXPECTED[verb]), state)
        self._projected = state

    def _greeting(self, reply: Reply) -> ce.ClientEvent:
        # RFC 5321 §4.3.2: 220, or 554 (and RFC 7504's 521); 421 closes.
        if reply.code == 421:
            self._close()
        elif reply.code == 220:
            self.state = self._projected = ClientState.GREETED
        elif reply.code >= 400:
            # RFC 5321 §3.1: only QUIT now.
            self.state = self._projected = ClientState.NO_SERVICE
        else:
            return self._violation(f"a greeting must be 220, 554 or 421: {reply}")
        return ce.Greeting(reply)

    def _start_tls(self) -> None:
        """
        RFC 3207 §4.2: the client forgets what the server said, and what it
        sent in the clear before the handshake is never read as a reply (the
        client side of the CVE-2011-0411 class of attack).
        """
        del self._buffer[:]
        self._reader.reset()
        self.tls = True
        self.esmtp = False
        self.authenticated = False
        self._extensions = {}

    def _violation(self, reason: str) -> ce.ProtocolViolation:
        self._close()
        return ce.ProtocolViolation(reason)

    def _close(self) -> None:
        self.state = self._projected = ClientState.CLOSED
        self._writing_data = False
        self._chunk_remaining = 0
        del self._buffer[:]
        self._reader.reset()
