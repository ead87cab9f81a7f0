"""
The SMTP client: a thin Twisted protocol around
:class:`mailframe.core.ClientConnection` that delivers a sequence of
transactions over one connection.

One :class:`SMTPClientProtocol` is one session with one server:

1. It reads the greeting. Anything but ``220`` fails
   :meth:`~SMTPClientProtocol.when_ready` with :class:`GreetingRefused`:
   the caller moves on to the next host (RFC 5321 §5.1; a ``554`` greeting
   says "no service here", not "this mail is refused", RFC 5321 §3.1).
2. It says EHLO, and HELO when EHLO gets a 5xx (RFC 5321 §3.2).
3. It starts TLS according to the policy of :class:`ClientSettings`
   (RFC 3207), and says EHLO again.
4. It authenticates with PLAIN or LOGIN when credentials are given
   (RFC 4954), only over TLS unless told otherwise.
5. Each :meth:`~SMTPClientProtocol.deliver` is one transaction: MAIL, RCPT
   for each recipient and DATA (or BDAT, RFC 3030), pipelined when the
   server offers PIPELINING (RFC 2920). The message is streamed from a file
   in chunks, with back-pressure from the transport; the core dot-stuffs
   it. A transaction that failed is followed by RSET before the next.
6. :meth:`~SMTPClientProtocol.quit` says QUIT and closes.

The socket gets ``TCP_NODELAY``: without it, pipelined commands and the
final dot wait for delayed acknowledgements (about 23 messages a second
over a reused connection).

What the server says about each recipient comes back as a
:class:`~mailframe.envelope.RecipientResult`: *delivered* for a 2xx to the
final dot, *transient* for a 4xx, *permanent* for a 5xx, always with the
remote reply as it was sent. When the session breaks (the connection is
lost, a timeout runs out, the server sends something that is not a valid
reply), the recipients still open are *transient*, with a local reply:
``451 4.4.2`` for a lost connection or a timeout, ``451 4.5.0`` for a
protocol violation. A connection lost after the final dot, before its
reply, is transient too, although the message may have arrived: a
duplicate is better than a loss (RFC 1047). Nothing the server does makes
an exception escape, and every wait has a timeout.

Rules applied before a transaction is sent, once the EHLO reply is known:

- A message larger than the server's SIZE (RFC 1870 §6.1) is refused for
  the whole transaction with ``552 5.3.4``, and not sent.
- A message whose envelope says ``BODY=8BITMIME`` goes only to a server
  that offers 8BITMIME (RFC 6152); to any other it fails with ``554 5.6.3``.
  mailframe does not downgrade 8-bit content to quoted-printable: that
  changes the body, which breaks DKIM signatures (RFC 6376 §5.3), and the
  servers that lack 8BITMIME are few. ``BODY=BINARYMIME`` needs BINARYMIME
  and CHUNKING (RFC 3030 §3), and goes with BDAT.
- A message *needs SMTPUTF8* (RFC 6531) when the sender or a recipient of
  the transaction has a non-ASCII address, or when the envelope carries
  the SMTPUTF8 flag and the message's header section has non-ASCII octets.
  Only then is ``SMTPUTF8`` given on MAIL. To a server without SMTPUTF8, a
  non-ASCII address fails with ``553 5.6.7`` (a non-ASCII sender fails
  every recipient), and a message that needs SMTPUTF8 only for its headers
  fails with ``554 5.6.9`` (RFC 6531 §3.2). A message received with
  SMTPUTF8 that is all ASCII goes to any server, without SMTPUTF8.
- ``AUTH=`` (RFC 4954 §5) is given when the transaction carries it and the
  server offers AUTH; ``SIZE=`` when the server offers SIZE.
- The DSN parameters (RFC 3461 §4) that the transaction carries, ``RET``
  and ``ENVID`` on MAIL and ``NOTIFY`` and ``ORCPT`` on each RCPT, are
  given when the server offers DSN, and left out otherwise (RFC 3461
  §5.2.2). A recipient delivered to a server that offers DSN has the
  :attr:`~mailframe.envelope.Handoff.PASSED_ON` handoff: that server
  reports on it from now on. Delivered to one that does not, it is
  :attr:`~mailframe.envelope.Handoff.RELAYED`.

With :attr:`ClientSettings.lmtp`, the session is an LMTP one (RFC 2033),
on :class:`~mailframe.core.LMTPClientConnection`: it says LHLO, and a
refusal of LHLO fails the session transiently (there is no HELO to fall
back on, and an SMTP server that answers LHLO with ``500`` is a mistake of
configuration, not of the mail); no TLS or AUTH is set up. Each recipient
accepted at RCPT gets its own reply after the final dot (RFC 2033 §4.2),
read in turn: a connection lost after some of them leaves the others
transient, with the ``451 4.4.2`` of a message that may have been
delivered. Delivered recipients have the
:attr:`~mailframe.envelope.Handoff.DELIVERED` handoff, as LMTP is final
delivery, whether the server offers DSN or not. The message goes with
DATA, never BDAT; one with ``BODY=BINARYMIME`` fails with ``554 5.6.3``.

Timeouts are those of the core's :class:`~mailframe.core.ClientLimits`
(RFC 5321 §4.5.3.2): 5 minutes for the greeting, MAIL and RCPT, 2 for the
354 to DATA, 3 for each write of message data, 10 for the reply to the
final dot. They run on the injected clock.
"""

from __future__ import annotations

import binascii
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Literal

import attrs
from twisted.internet import interfaces, ssl
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe import core
from mailframe.address import Mailbox, ReversePath, encode_xtext
from mailframe.envelope import BodyType, DeliveryStatus, DSNOptions, Handoff, RecipientResult
from mailframe.errors import PermanentDeliveryError, TransientDeliveryError
from mailframe.protocols._write import write_now
from mailframe.reply import Reply

__all__ = [
    "CHUNK_SIZE",
    "QUIT_TIMEOUT",
    "TLS_POLICIES",
    "ClientSettings",
    "ConnectionUnusable",
    "GreetingRefused",
    "SMTPClientProtocol",
    "SessionFailed",
    "SessionRejected",
    "TLSFailed",
    "TLSPolicy",
    "Transaction",
    "header_has_non_ascii",
    "status_of",
    "xtext",
]

TLSPolicy = Literal["none", "may", "encrypt", "verify"]

#: The TLS policies: ``none`` never starts TLS; ``may`` starts it when the
#: server offers it, and goes on in plaintext when it does not (a failed
#: handshake is retried in plaintext, on a new connection, by the caller);
#: ``encrypt`` requires TLS without checking the certificate; ``verify``
#: requires TLS with a certificate valid for the host name (RFC 6125).
TLS_POLICIES: tuple[TLSPolicy, ...] = ("none", "may", "encrypt", "verify")

#: Octets read from the message file at a time, and written at a time.
CHUNK_SIZE = 64 * 1024

#: How long to wait for the reply to QUIT before closing anyway. RFC 5321
#: names no value; once QUIT is sent nothing more depends on the session.
QUIT_TIMEOUT = 10.0
#: Seconds early that a timeout may fire rather than schedule its timer
#: again for what is left (see ``SMTPClientProtocol._arm``).
_TIMER_SLACK = 1e-6

#: The TLS options of the "may" and "encrypt" policies, made once.
_UNVERIFIED: ssl.CertificateOptions | None = None

#: The mechanisms the client uses, in order of preference (RFC 4616, and
#: LOGIN, which many servers still offer alone).
_MECHANISMS = ("PLAIN", "LOGIN")


def _check_policy(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in TLS_POLICIES:
        raise ValueError(f"TLS policy {value!r} is not one of {', '.join(TLS_POLICIES)}")


def _check_helo(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    core.ClientEhlo(value)


def _check_credentials(
    instance: object, attribute: attrs.Attribute[tuple[str, str] | None],
    value: tuple[str, str] | None,
) -> None:
    if value is not None and (len(value) != 2 or not value[0]):
        raise ValueError("credentials are a (username, password) pair with a username")


@attrs.frozen
class ClientSettings:
    """
    How one session behaves.

    :ivar helo: our name, for EHLO and HELO: a domain or an address literal.
    :ivar tls: the TLS policy, one of :data:`TLS_POLICIES`.
    :ivar trust_root: what ``verify`` trusts: an
        :class:`~twisted.internet.interfaces.IOpenSSLTrustRoot`, or ``None``
        for the platform's certificate authorities.
    :ivar credentials: ``(username, password)`` to authenticate with
        (RFC 4954), or ``None``. When given, the session fails (transiently)
        unless AUTH succeeds, so that mail that needs it is never sent
        without it.
    :ivar auth_without_tls: send credentials over a connection without
        TLS. By default the session refuses to, and fails transiently.
    :ivar chunking: use BDAT (RFC 3030) when the server offers CHUNKING.
    :ivar limits: the core's limits and timeouts (RFC 5321 §4.5.3.2).
    :ivar chunk_size: octets read from the message file and written at a
        time.
    :ivar lmtp: speak LMTP (RFC 2033) instead of SMTP; see the module.
        *tls* and *credentials* are not used then.
    """

    helo: str = attrs.field(validator=_check_helo)
    tls: TLSPolicy = attrs.field(default="may", validator=_check_policy)
    trust_root: Any = None
    credentials: tuple[str, str] | None = attrs.field(
        default=None, repr=False, validator=_check_credentials
    )
    auth_without_tls: bool = False
    chunking: bool = False
    limits: core.ClientLimits = attrs.Factory(core.ClientLimits)
    chunk_size: int = attrs.field(default=CHUNK_SIZE, validator=attrs.validators.ge(1))
    lmtp: bool = False


def _recipients(value: Any) -> tuple[Mailbox, ...]:
    return tuple(value)


def _dsn(value: Iterable[DSNOptions]) -> tuple[DSNOptions, ...]:
    return tuple(value)


_NO_DSN = DSNOptions()


@attrs.frozen(eq=False)
class Transaction:
    """
    One message to some recipients: what one MAIL transaction sends.

    :ivar sender: the reverse path.
    :ivar recipients: the recipients, at least one.
    :ivar message: a binary file with the message; it is read from its
        start (the protocol seeks to 0) to its end, a chunk at a time.
    :ivar size: the octets that are sent: *prefix* and the file.
    :ivar prefix: octets sent before the file, such as header fields that
        policies added, each ending with CRLF.
    :ivar body: the BODY= of the envelope (RFC 6152, RFC 3030).
    :ivar smtputf8: the envelope carries the SMTPUTF8 flag (RFC 6531).
    :ivar utf8_headers: the header section (*prefix* included) has
        non-ASCII octets; see :func:`header_has_non_ascii`.
    :ivar auth: the ``AUTH=`` mailbox (RFC 4954 §5): a mailbox, ``"<>"``,
        or ``None`` for none.
    :ivar ret: the ``RET=`` of the envelope (RFC 3461 §4.3), or ``None``.
    :ivar envid: the ``ENVID=`` of the envelope (RFC 3461 §4.4), decoded,
        or ``None``.
    :ivar dsn: the :class:`~mailframe.envelope.DSNOptions` of each
        recipient (``NOTIFY=`` and ``ORCPT=``, RFC 3461 §4.1, §4.2), in the
        order of :attr:`recipients`; empty when none has any.
    :ivar checkpoint: called before the message data and again before its
        end (the final dot, or ``BDAT … LAST``), returning a Deferred; when
        it fails the session is dropped without ending the message, and
        every recipient not yet answered gets a transient result. The queue
        runner's transports renew the entry's lease with it.
    """

    sender: ReversePath
    recipients: tuple[Mailbox, ...] = attrs.field(converter=_recipients)
    message: IO[bytes]
    size: int = attrs.field(validator=attrs.validators.ge(0))
    prefix: bytes = b""
    body: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False
    utf8_headers: bool = False
    auth: str | None = None
    ret: str | None = None
    envid: str | None = None
    dsn: tuple[DSNOptions, ...] = attrs.field(default=(), converter=_dsn)
    checkpoint: Callable[[], Deferred[None]] | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("a transaction needs at least one recipient")
        if self.dsn and len(self.dsn) != len(self.recipients):
            raise ValueError("a transaction has DSN options for each recipient, or none")

    def dsn_options(self, index: int) -> DSNOptions:
        """The DSN options of the recipient at *index*."""
        return self.dsn[index] if self.dsn else _NO_DSN

    @property
    def utf8_header_section(self) -> bool:
        """The message needs SMTPUTF8 for its header section."""
        return self.smtputf8 and self.utf8_headers


# -- errors of the session -------------------------------------------------------


class SessionFailed(TransientDeliveryError):
    """
    The session could not be set up, or broke before a transaction got any
    reply: try the next address. Its :attr:`reply` is the transient failure
    that the recipients get when no address is left.
    """


class GreetingRefused(SessionFailed):
    """
    The server greeted with something else than ``220`` (RFC 5321 §3.1,
    §4.3.2): it gives no service now. Move on to the next host (RFC 5321
    §5.1); a 5xx greeting is not a refusal of the mail, so the recipients
    get a transient :attr:`reply` when no host is left.

    :ivar greeting: the greeting, as the server sent it.
    """

    def __init__(self, greeting: Reply, reply: Reply) -> None:
        super().__init__(reply)
        self.greeting = greeting


class TLSFailed(SessionFailed):
    """
    The TLS handshake failed, or the certificate was not valid for the host
    name. Under the ``may`` policy, try the same address again in
    plaintext, on a new connection.
    """


class ConnectionUnusable(SessionFailed):
    """
    A transaction was not started: the session had ended, or broke before
    MAIL got a reply, so no recipient can have been accepted. Deliver it on
    another connection.
    """


class SessionRejected(PermanentDeliveryError):
    """
    The server refused the session with a 5xx to HELO (RFC 5321 §4.1.1.1):
    a 5xx to a command is final for the recipients, unlike a 5xx greeting.
    """


# -- helpers -----------------------------------------------------------------------


def status_of(reply: Reply) -> DeliveryStatus:
    """What a server's reply to the end of a message means for a recipient."""
    if reply.code < 400:
        return DeliveryStatus.DELIVERED
    if reply.code < 500:
        return DeliveryStatus.TRANSIENT
    return DeliveryStatus.PERMANENT


def _transient(reply: Reply, context: str) -> Reply:
    """
    *reply* for a recipient whose mail must wait: as it is when it is a 4xx;
    a 5xx becomes a 4xx with the same detail, quoting it (as Postfix does
    for a 5xx greeting).
    """
    if reply.is_transient:
        return reply
    status = "4" + reply.status[1:] if reply.status else "4.0.0"
    return Reply(451, status, f"{context}: {reply}")


def xtext(text: str) -> str:
    """
    *text* in xtext (RFC 3461 §4): ``+``, ``=``, controls, space and
    non-ASCII octets as ``+XX``, for ``AUTH=`` (RFC 4954 §5). The same as
    :func:`mailframe.address.encode_xtext`.
    """
    return encode_xtext(text)


#: The most octets scanned for the end of the header section. A header
#: section this long is refused by every server anyway.
_HEADER_SCAN_LIMIT = 16 * 1024 * 1024


def header_has_non_ascii(prefix: bytes, message: IO[bytes], chunk_size: int = CHUNK_SIZE) -> bool:
    """
    Whether the header section of *prefix* followed by *message*, up to the
    first empty line (RFC 5322 §2.1), has an octet above 127. The file is
    read a chunk at a time, and left at its start.
    """

    def pieces() -> Iterator[bytes]:
        yield prefix
        while chunk := message.read(chunk_size):
            yield chunk

    message.seek(0)
    try:
        # A CRLF before the message, so that one that starts with the empty
        # line has an empty header section.
        carry = b"\r\n"
        scanned = 0
        for piece in pieces():
            window = carry + piece
            end = window.find(b"\r\n\r\n")
            if not (window if end < 0 else window[:end]).isascii():
                return True
            if end >= 0:
                return False
            carry = window[-3:]
            scanned += len(piece)
            if scanned > _HEADER_SCAN_LIMIT:
                break
        return False
    finally:
        message.seek(0)


class _MessageReader:
    """Reads *prefix*, then *message* from its start, a chunk at a time."""

    def __init__(self, prefix: bytes, message: IO[bytes], chunk_size: int) -> None:
        self._prefix = prefix
        self._message = message
        self._chunk_size = chunk_size
        message.seek(0)

    def read(self) -> bytes:
        if self._prefix:
            size = self._chunk_size
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            if len(data) < size:
                data += self._message.read(size - len(data))
            return data
        return self._message.read(self._chunk_size)


#: The result of recipients whose message was stopped before its end because
#: the transaction's checkpoint (the queue entry's lease) failed.
_CHECKPOINT_FAILED = Reply(451, "4.3.0", "Delivery stopped before the end of the message:"
                                         " the queue entry's lease was lost")


class _Broken(Exception):
    """The session cannot go on; *reply* is for the recipients still open."""

    def __init__(self, reply: Reply, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


class _OneShot:
    """A result that any number of observers wait for."""

    def __init__(self) -> None:
        self._result: Any = None
        self._done = False
        self._waiting: list[Deferred[Any]] = []

    @property
    def done(self) -> bool:
        return self._done

    def observe(self) -> Deferred[Any]:
        if self._done:
            return fail(self._result) if isinstance(self._result, Failure) else succeed(
                self._result)
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        return d

    def fire(self, result: Any) -> None:
        if self._done:
            return
        self._done = True
        self._result = result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


# -- the protocol ------------------------------------------------------------------


@implementer(interfaces.IHandshakeListener, interfaces.IPushProducer)
class SMTPClientProtocol(Protocol):
    """
    One SMTP client session: see the module's description.

    :param settings: how the session behaves.
    :param clock: the clock of the timeouts.
    :param host: the server's name: it is checked against the certificate
        under the ``verify`` policy, and named in results and logs.
    :param address: the server's address, for logs.

    :ivar tls: TLS is on.
    :ivar transactions: the transactions started on this connection.
    """

    log = Logger()

    def __init__(
        self,
        settings: ClientSettings,
        clock: interfaces.IReactorTime,
        host: str,
        address: str = "",
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.host = host
        self.address = address
        self.conn: core.ClientConnection = (
            core.LMTPClientConnection(settings.limits) if settings.lmtp
            else core.ClientConnection(settings.limits))
        self.transactions = 0
        self._events: deque[core.ClientEvent] = deque()
        self._waiter: Deferred[core.ClientEvent] | None = None
        self._timer: interfaces.IDelayedCall | None = None
        #: When the wait that the timer guards times out, and what it waits
        #: for (``None``: the reply that :meth:`_awaited` names then).
        self._deadline: float | None = None
        self._waiting_for: str | None = None
        self._broken: _Broken | None = None
        self._closing_reply: Reply | None = None
        self._lost = False
        self._paused = False
        self._producing = False
        self._resume_waiter: Deferred[None] | None = None
        self._handshake: Deferred[None] | None = None
        self._ready = _OneShot()
        self._closed = _OneShot()
        self._pending: deque[tuple[Transaction, Deferred[list[RecipientResult]]]] = deque()
        self._running = False
        self._quitting = False
        self._needs_rset = False

    # -- what the caller sees -----------------------------------------------------

    @property
    def tls(self) -> bool:
        """TLS is on."""
        return self.conn.tls

    @property
    def usable(self) -> bool:
        """
        The session is set up and healthy: it may take a transaction. An
        idle session stops being usable when the server closes it.
        """
        return (self._ready.done and self._broken is None and not self._lost
                and not self._quitting and not self.conn.closed
                and self.conn.state is not core.ClientState.CONNECTED)

    @property
    def where(self) -> str:
        """``host[address]``, for logs."""
        return f"{self.host}[{self.address}]" if self.address else self.host

    def when_ready(self) -> Deferred[None]:
        """
        Fires once the session is set up (greeting, EHLO, TLS, AUTH), or
        fails with :class:`SessionFailed` (:class:`GreetingRefused`,
        :class:`TLSFailed`: try the next address) or
        :class:`SessionRejected` (final for the recipients).
        """
        return self._ready.observe()

    def when_closed(self) -> Deferred[None]:
        """Fires once the connection is closed, whoever closed it."""
        return self._closed.observe()

    def deliver(self, transaction: Transaction) -> Deferred[list[RecipientResult]]:
        """
        Send *transaction* once the transactions before it are done.

        :return: a Deferred list of results, one for each recipient, in
            order, with ``remote`` set to the host name; or a failure with
            :class:`ConnectionUnusable` when the transaction was not
            started (no server reply to it), so that it may go elsewhere.
        """
        d: Deferred[list[RecipientResult]] = Deferred()
        self._pending.append((transaction, d))
        self._kick()
        return d

    def quit(self) -> Deferred[None]:
        """
        Say QUIT once the transactions asked for are done, and close.

        :return: a Deferred that fires once the connection is closed.
        """
        self._quitting = True
        closed = self.when_closed()
        self._kick()
        return closed

    def abort(self) -> None:
        """Drop the connection now."""
        self._quitting = True
        self._break(Reply(451, "4.4.2", f"Connection with {self.host} closed by us"),
                    "aborted")

    # -- Twisted protocol --------------------------------------------------------

    def connectionMade(self) -> None:
        # Nagle's algorithm would hold pipelined commands and the final dot
        # for the peer's delayed acknowledgement.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        setup = Deferred.fromCoroutine(self._setup())
        setup.addBoth(self._setup_done)

    def dataReceived(self, data: bytes) -> None:
        if not data:
            # The core takes b"" for the end of the connection.
            return
        self.conn.receive_data(data)
        self._pump()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._stop_timer()
        why = reason.getErrorMessage()
        if self._handshake is not None:
            self._break(Reply(451, "4.7.5", f"TLS handshake with {self.host} failed: {why}"),
                        f"TLS handshake failed: {why}")
        # Complete replies that came before the close are still read.
        self.conn.receive_data(b"")
        self._pump()
        self._break(self._lost_reply(), f"connection lost: {why}")
        self._closed.fire(None)

    def handshakeCompleted(self) -> None:
        """TLS is up (after the 220 to STARTTLS)."""
        handshake, self._handshake = self._handshake, None
        if handshake is not None:
            self._cancel_timer()
            handshake.callback(None)

    # -- IPushProducer: the transport's back-pressure on message data ---------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        waiter, self._resume_waiter = self._resume_waiter, None
        if waiter is not None:
            self._cancel_timer()
            waiter.callback(None)

    def stopProducing(self) -> None:
        # The connection is going; connectionLost tells why.
        self._paused = True

    # -- events from the core --------------------------------------------------

    def _pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if isinstance(event, core.Sentinel):
                return
            if isinstance(event, core.ProtocolViolation):
                self._break(event.reply, f"protocol violation: {event.reason}")
                continue
            if isinstance(event, core.ConnectionClosed):
                self._break(self._lost_reply(), "the server closed the connection")
                continue
            if isinstance(event, core.Response):
                if event.command is None:
                    # RFC 5321 §3.8: the server closes on its own.
                    self._break(event.reply, f"the server closed with {event.reply}")
                    continue
                if event.reply.code == 421:
                    self._closing_reply = event.reply
            self._events.append(event)
            waiter, self._waiter = self._waiter, None
            if waiter is not None:
                self._cancel_timer()
                waiter.callback(self._events.popleft())

    def _next_event(self, timeout: float | None = None) -> Deferred[core.ClientEvent]:
        if self._events:
            return succeed(self._events.popleft())
        if self._broken is not None:
            return fail(self._copy_broken())
        if self.conn.closed:
            # A 421 (or 221) closed the session: nothing more will come.
            reply = self._closing_reply or self._lost_reply()
            self._break(reply, f"the server closed the session: {reply}")
            return fail(self._copy_broken())
        d: Deferred[core.ClientEvent] = Deferred()
        self._waiter = d
        if timeout is None:
            timeout = self.conn.reply_timeout or self.settings.limits.command_timeout
        self._arm(timeout)
        return d

    async def _reply(self, timeout: float | None = None) -> Reply:
        """The next reply: the greeting, or the reply to the oldest command."""
        event = await self._next_event(timeout)
        assert isinstance(event, core.Greeting | core.Response)
        return event.reply

    def _awaited(self) -> str:
        if self.conn.state is core.ClientState.CONNECTED:
            return "the greeting"
        outstanding = self.conn.outstanding
        if outstanding:
            name = type(outstanding[0]).__name__.removeprefix("Client")
            names = {"EndOfMessage": "the end of the message", "Data": "DATA",
                     "Bdat": "BDAT", "StartTls": "STARTTLS", "AuthResponse": "AUTH"}
            return f"the reply to {names.get(name, name.upper())}"
        return "a reply"

    # -- breaking and timers -----------------------------------------------------

    def _lost_reply(self) -> Reply:
        return Reply(451, "4.4.2", f"Lost connection with {self.host}")

    def _break(self, reply: Reply, reason: str, graceful: bool = False) -> None:
        """
        End the session: the first reason counts. Close the connection (at
        once, unless *graceful*), and wake whoever waits.
        """
        if self._broken is None:
            self._broken = _Broken(reply, reason)
            if not self._quitting:
                self.log.info("SMTP session with {where} ended: {reason}",
                              where=self.where, address=self.address, reason=reason,
                              reply=str(reply))
        self._stop_timer()
        if not self._lost and self.transport is not None:
            abort = None if graceful else getattr(self.transport, "abortConnection", None)
            (abort or self.transport.loseConnection)()
        for name in ("_waiter", "_resume_waiter", "_handshake"):
            waiter = getattr(self, name)
            if waiter is not None:
                setattr(self, name, None)
                waiter.errback(self._copy_broken())

    def _copy_broken(self) -> _Broken:
        assert self._broken is not None
        return _Broken(self._broken.reply, self._broken.reason)

    def _arm(self, seconds: float, what: str | None = None) -> None:
        """
        Time out in *seconds* unless :meth:`_cancel_timer` is called first.

        Every reply is waited for with a timeout, several times a message:
        rather than a timer scheduled and cancelled for each, one timer
        stays scheduled, and when it fires before the current deadline it
        is scheduled again for the rest (see :meth:`_timer_fired`).
        """
        deadline = self.clock.seconds() + seconds
        self._deadline, self._waiting_for = deadline, what
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() <= deadline:
                return
            timer.cancel()
        self._timer = self.clock.callLater(seconds, self._timer_fired)

    def _cancel_timer(self) -> None:
        """Nothing is waited for now; the timer, if any, does nothing when it fires."""
        self._deadline = None

    def _stop_timer(self) -> None:
        """Cancel the timer itself: the session is over."""
        self._deadline = None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timer_fired(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        left = deadline - self.clock.seconds()
        if left > _TIMER_SLACK:
            self._timer = self.clock.callLater(left, self._timer_fired)
            return
        what = self._waiting_for
        self._timed_out(what if what is not None else self._awaited())

    def _timed_out(self, what: str) -> None:
        self._deadline = None
        # RFC 3463 §3.5: X.4.2, bad connection.
        self._break(Reply(451, "4.4.2", f"Timed out waiting for {what} from {self.host}"),
                    f"timed out waiting for {what}")

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self._lost:
            write_now(self.transport, data)

    def _send(self, *commands: core.ClientCommand) -> None:
        self._write(b"".join(self.conn.send(command) for command in commands))

    # -- setting the session up ----------------------------------------------------

    def _setup_done(self, result: object) -> None:
        if isinstance(result, Failure):
            if not result.check(SessionFailed, SessionRejected):
                self.log.failure("SMTP session setup with {where} failed", result,
                                 where=self.where)
                result = Failure(SessionFailed(
                    Reply(451, "4.3.0", f"Local error in the session with {self.host}")))
            self._quitting = True
            if self._broken is None:
                error = result.value
                assert isinstance(error, SessionFailed | SessionRejected)
                self._break(error.reply, f"session setup failed: {error.reply}",
                            graceful=True)
        self._ready.fire(result)
        self._kick()

    async def _setup(self) -> None:
        try:
            greeting = await self._reply()
            if greeting.code != 220:
                if self.conn.state is core.ClientState.NO_SERVICE:
                    # RFC 5321 §3.1: after a refusal, QUIT.
                    self._send(core.ClientQuit())
                raise GreetingRefused(
                    greeting, _transient(greeting, f"{self.host} refused to talk to us"))
            if self.settings.lmtp:
                await self._lhlo()
                return
            await self._hello()
            await self._start_tls()
            await self._authenticate()
        except _Broken as broken:
            raise SessionFailed(broken.reply) from None

    async def _hello(self) -> None:
        """EHLO, and HELO when EHLO gets a 5xx (RFC 5321 §3.2)."""
        name = self.settings.helo
        self._send(core.ClientEhlo(name))
        reply = await self._reply()
        if reply.is_permanent:
            self._send(core.ClientHelo(name))
            reply = await self._reply()
            if reply.is_permanent:
                raise SessionRejected(reply)
        if not reply.code < 400:
            raise SessionFailed(reply)

    async def _lhlo(self) -> None:
        """LHLO (RFC 2033 §4.1); a refusal is transient, whatever its code."""
        self._send(core.ClientEhlo(self.settings.helo))
        reply = await self._reply()
        if reply.code >= 400:
            raise SessionFailed(_transient(reply, f"{self.host} refused LHLO"))

    async def _start_tls(self) -> None:
        policy = self.settings.tls
        if policy == "none" or self.conn.tls:
            return
        required = policy in ("encrypt", "verify")
        can_start = interfaces.ITLSTransport.providedBy(self.transport)
        if not self.conn.starttls or not can_start:
            if required:
                # RFC 3463 §3.8: X.7.4, security features not supported.
                raise SessionFailed(Reply(
                    451, "4.7.4", f"TLS is required, but {self.host} does not offer STARTTLS"))
            return
        self._send(core.ClientStartTls())
        reply = await self._reply()
        if reply.code != 220:
            if required:
                raise SessionFailed(_transient(
                    reply, f"TLS is required, but {self.host} refused STARTTLS"))
            self.log.info("{where} refused STARTTLS, going on in plaintext: {reply}",
                          where=self.where, reply=str(reply))
            return
        try:
            options = self._tls_options()
        except Exception as error:
            raise SessionFailed(Reply(
                451, "4.7.5", f"Cannot start TLS with {self.host}: {error}")) from None
        self._handshake = Deferred()
        handshake = self._handshake
        self._arm(self.settings.limits.command_timeout, "the TLS handshake")
        self.transport.startTLS(options)  # type: ignore[union-attr]
        try:
            await handshake
        except _Broken as broken:
            raise TLSFailed(Reply(451, "4.7.5", f"TLS with {self.host} failed:"
                                  f" {broken.reason}")) from None
        self.log.debug("TLS with {where}", where=self.where)
        # RFC 3207 §4.2: the client discards what it knew and says EHLO again.
        await self._hello()

    def _tls_options(self) -> Any:
        if self.settings.tls == "verify":
            # RFC 6125: the certificate must be valid for the host name
            # (or the IP address of an address literal).
            return ssl.optionsForClientTLS(self.host, trustRoot=self.settings.trust_root)
        # Opportunistic and "encrypt": any certificate (RFC 7435). One
        # context serves every session.
        global _UNVERIFIED
        if _UNVERIFIED is None:
            _UNVERIFIED = ssl.CertificateOptions()
        return _UNVERIFIED

    async def _authenticate(self) -> None:
        credentials = self.settings.credentials
        if credentials is None:
            return
        if not self.conn.tls and not self.settings.auth_without_tls:
            # RFC 4954 §4 and §14: never a password in the clear.
            raise SessionFailed(Reply(
                451, "4.7.10", f"Not sending credentials to {self.host} without TLS"))
        offered = self.conn.auth_mechanisms
        mechanism = next((m for m in _MECHANISMS if m in offered), None)
        if mechanism is None:
            raise SessionFailed(Reply(
                451, "4.7.0", f"{self.host} offers no authentication mechanism we use"
                f" ({', '.join(_MECHANISMS)})"))
        username, password = (part.encode("utf-8") for part in credentials)
        if mechanism == "PLAIN":
            plain = b"\x00" + username + b"\x00" + password
            # RFC 4954 §4: an initial response too long for the command
            # line is sent after the 334 instead.
            fits = len(binascii.b2a_base64(plain, newline=False)) + 13 <= core.COMMAND_LINE
            self._send(core.ClientAuth("PLAIN", plain if fits else None))
            steps = [] if fits else [plain]
        else:
            self._send(core.ClientAuth("LOGIN"))
            steps = [username, password]
        reply = await self._reply()
        while reply.code == 334:
            if not steps:
                self._send(core.ClientAuthCancel())
                reply = await self._reply()
                break
            self._send(core.ClientAuthResponse(steps.pop(0)))
            reply = await self._reply()
        if reply.code != 235:
            raise SessionFailed(_transient(reply, f"Authentication with {self.host} failed"))

    # -- transactions ------------------------------------------------------------

    def _kick(self) -> None:
        if self._running or not self._ready.done:
            return
        if not self._pending and not self._quitting:
            return
        self._running = True
        Deferred.fromCoroutine(self._work()).addErrback(
            lambda failure: self.log.failure("SMTP client loop", failure))

    async def _work(self) -> None:
        try:
            while self._pending:
                transaction, d = self._pending.popleft()
                try:
                    results = await self._guarded(transaction)
                except ConnectionUnusable as error:
                    d.errback(error)
                else:
                    d.callback(results)
            if self._quitting:
                await self._quit()
        finally:
            self._running = False

    async def _quit(self) -> None:
        if self._lost:
            return
        if self._can_quit:
            try:
                self._send(core.ClientQuit())
                await self._reply(min(self.conn.reply_timeout or QUIT_TIMEOUT, QUIT_TIMEOUT))
            except _Broken:
                return
            except core.LocalProtocolError:
                pass
        if not self._lost and self.transport is not None:
            self._stop_timer()
            self.transport.loseConnection()

    @property
    def _can_quit(self) -> bool:
        return (self._broken is None and not self.conn.closed
                and self.conn.state in (core.ClientState.READY, core.ClientState.GREETED,
                                        core.ClientState.NO_SERVICE))

    async def _guarded(self, transaction: Transaction) -> list[RecipientResult]:
        if not (self._ready.done and self._broken is None and not self._lost
                and not self.conn.closed and self.conn.state is not core.ClientState.CONNECTED):
            reply = self._broken.reply if self._broken is not None else self._lost_reply()
            raise ConnectionUnusable(reply)
        self.transactions += 1
        try:
            return await self._transaction(transaction)
        except ConnectionUnusable:
            raise
        except Exception:
            self.log.failure("SMTP transaction with {where} failed", where=self.where)
            reply = Reply(451, "4.3.0", f"Local error in the session with {self.host}")
            self._break(reply, "local error")
            return [self._result(r, reply) for r in transaction.recipients]

    def _result(self, recipient: Mailbox, reply: Reply,
                status: DeliveryStatus | None = None) -> RecipientResult:
        status = status or status_of(reply)
        if status is DeliveryStatus.DELIVERED:
            # RFC 3461 §5.2.2: a server that offers DSN was given the
            # parameters, and reports from now on. LMTP delivers: the
            # mail goes no further ("delivered", RFC 3464 §2.3.3).
            if self.settings.lmtp:
                handoff = Handoff.DELIVERED
            else:
                handoff = Handoff.PASSED_ON if self.conn.dsn else Handoff.RELAYED
            return RecipientResult(recipient, status, reply, remote=self.host, handoff=handoff)
        return RecipientResult(recipient, status, reply, remote=self.host)

    def _local_refusals(self, t: Transaction) -> list[Reply | None]:
        """The rules applied before a transaction is sent (see the module)."""
        conn = self.conn
        count = len(t.recipients)
        limit = conn.max_size
        if limit is not None and t.size > limit:
            # RFC 1870 §6.1: a message over the fixed limit is not sent.
            return [Reply(552, "5.3.4", f"Message of {t.size} octets exceeds the limit of"
                          f" {limit} octets of {self.host}")] * count
        if t.body is BodyType.EIGHT_BIT_MIME and not conn.eightbitmime:
            return [Reply(554, "5.6.3", f"{self.host} does not accept 8-bit messages"
                          " (no 8BITMIME), and mailframe does not convert them")] * count
        if t.body is BodyType.BINARY_MIME and self.settings.lmtp:
            # RFC 3030 §3: BINARYMIME goes with BDAT, which is not sent
            # over LMTP (see the module).
            return [Reply(554, "5.6.3", f"Binary messages are not sent to {self.host}"
                          " over LMTP")] * count
        if t.body is BodyType.BINARY_MIME and not (
                "BINARYMIME" in conn.extensions and conn.chunking):
            return [Reply(554, "5.6.3", f"{self.host} does not accept binary messages"
                          " (no BINARYMIME with CHUNKING)")] * count
        if conn.smtputf8:
            return [None] * count
        # RFC 6531 §3.2: SMTPUTF8 is needed and not offered.
        if isinstance(t.sender, Mailbox) and not t.sender.is_ascii:
            return [Reply(553, "5.6.7", f"{self.host} does not accept the non-ASCII sender"
                          f" <{t.sender}> (no SMTPUTF8)")] * count
        out: list[Reply | None] = []
        for recipient in t.recipients:
            if not recipient.is_ascii:
                out.append(Reply(553, "5.6.7", f"{self.host} does not accept non-ASCII"
                                 " addresses (no SMTPUTF8)"))
            elif t.utf8_header_section:
                out.append(Reply(554, "5.6.9", f"{self.host} does not accept UTF-8 header"
                                 " fields (no SMTPUTF8)"))
            else:
                out.append(None)
        return out

    def _mail(self, t: Transaction, recipients: list[Mailbox]) -> core.ClientMail:
        conn = self.conn
        parameters: list[tuple[str, str | None]] = []
        if "SIZE" in conn.extensions:
            parameters.append(("SIZE", str(t.size)))
        if t.body is BodyType.EIGHT_BIT_MIME:
            parameters.append(("BODY", "8BITMIME"))
        elif t.body is BodyType.BINARY_MIME:
            parameters.append(("BODY", "BINARYMIME"))
        sender_ascii = not isinstance(t.sender, Mailbox) or t.sender.is_ascii
        needs_utf8 = (not sender_ascii or t.utf8_header_section
                      or not all(r.is_ascii for r in recipients))
        if needs_utf8 and conn.smtputf8:
            parameters.append(("SMTPUTF8", None))
        if t.auth is not None and "AUTH" in conn.extensions:
            parameters.append(("AUTH", "<>" if t.auth == "<>" else xtext(t.auth)))
        if conn.dsn:
            parameters.extend(core.dsn_mail_parameters(t.ret, t.envid))
        return core.ClientMail(t.sender, parameters)

    def _rcpt(self, t: Transaction, index: int) -> core.ClientRcpt:
        recipient = t.recipients[index]
        if not self.conn.dsn:
            return core.ClientRcpt(recipient)
        return core.ClientRcpt(recipient, core.dsn_rcpt_parameters(t.dsn_options(index)))

    async def _transaction(self, t: Transaction) -> list[RecipientResult]:
        outcome = self._local_refusals(t)
        todo = [index for index, reply in enumerate(outcome) if reply is None]
        if not todo:
            return self._results(t, outcome)
        conn = self.conn
        pipelining = conn.pipelining
        bdat = not self.settings.lmtp and (
            t.body is BodyType.BINARY_MIME or (self.settings.chunking and conn.chunking))
        answered = False
        try:
            if self._needs_rset or conn.state is not core.ClientState.READY:
                self._send(core.ClientRset())
                reply = await self._reply()
                if reply.code >= 400:
                    self._break(reply, f"RSET refused: {reply}")
                    raise ConnectionUnusable(_transient(reply, f"{self.host} refused RSET"))
            self._needs_rset = True
            recipients = [t.recipients[i] for i in todo]
            mail = self._mail(t, recipients)
            rcpts = [self._rcpt(t, i) for i in todo]
            group: list[core.ClientCommand] = [mail, *rcpts]
            if not bdat:
                group.append(core.ClientData())
            if pipelining:
                # RFC 2920 §3.1: one group, replies in order.
                self._send(*group)
            else:
                self._send(mail)
            reply = await self._reply()
            answered = True
            if reply.code >= 300:
                for i in todo:
                    outcome[i] = reply
                if pipelining:
                    await self._drain(len(group) - 1)
                return self._results(t, outcome)
            accepted: list[int] = []
            for i, rcpt in zip(todo, rcpts, strict=True):
                if not pipelining:
                    self._send(rcpt)
                reply = await self._reply()
                if reply.code < 300:
                    accepted.append(i)
                else:
                    outcome[i] = reply
            if bdat:
                if accepted:
                    await self._checkpoint(t)
                    final = await self._send_bdat(t)
                    for i in accepted:
                        outcome[i] = final
            else:
                if not pipelining:
                    if not accepted:
                        return self._results(t, outcome)
                    self._send(core.ClientData())
                reply = await self._reply()
                if reply.code == 354 and not accepted:
                    # RFC 2920 §3.1: 354 with no recipient; send just the dot.
                    self._write(conn.end_data())
                    await self._reply()
                elif reply.code == 354 and self.settings.lmtp:
                    await self._checkpoint(t)
                    await self._send_data_lmtp(t, accepted, outcome)
                elif reply.code == 354:
                    await self._checkpoint(t)
                    final = await self._send_data(t)
                    for i in accepted:
                        outcome[i] = final
                else:
                    for i in accepted:
                        outcome[i] = reply
            done = [outcome[i] for i in accepted]
            self._needs_rset = not done or any(
                reply is None or reply.code >= 400 for reply in done)
            return self._results(t, outcome)
        except _Broken as broken:
            if not answered:
                raise ConnectionUnusable(broken.reply) from None
            for i in todo:
                if outcome[i] is None:
                    outcome[i] = broken.reply
            return self._results(t, outcome, transient=broken.reply)

    def _results(self, t: Transaction, outcome: list[Reply | None],
                 transient: Reply | None = None) -> list[RecipientResult]:
        results = []
        for recipient, reply in zip(t.recipients, outcome, strict=True):
            assert reply is not None
            status = DeliveryStatus.TRANSIENT if reply is transient else None
            results.append(self._result(recipient, reply, status))
        return results

    async def _drain(self, count: int) -> None:
        """Read the replies to the rest of a failed pipelined group."""
        for _ in range(count):
            try:
                await self._reply()
            except _Broken:
                return

    # -- message data ------------------------------------------------------------

    def _writable(self) -> Deferred[None]:
        """Fires when the transport takes more data (RFC 5321 §4.5.3.2.5)."""
        if self._broken is not None:
            return fail(self._copy_broken())
        if self.conn.closed:
            reply = self._closing_reply or self._lost_reply()
            self._break(reply, f"the server closed the session: {reply}")
            return fail(self._copy_broken())
        if not self._paused:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._resume_waiter = d
        self._arm(self.settings.limits.data_block_timeout, "the server to read message data")
        return d

    def _start_producing(self) -> None:
        assert self.transport is not None
        self._paused = False
        self._producing = True
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]

    def _stop_producing(self) -> None:
        if self._producing:
            self._producing = False
            if not self._lost and self.transport is not None:
                self.transport.unregisterProducer()  # type: ignore[attr-defined]

    def _after_end(self, broken: _Broken) -> _Broken:
        if broken.reply.status == "4.4.2":
            return _Broken(Reply(451, "4.4.2", f"{broken.reply.text[0]} after the end of"
                                 " the message; it may have been delivered"), broken.reason)
        return broken

    async def _checkpoint(self, t: Transaction) -> None:
        """
        Run the transaction's checkpoint; when it fails, drop the session
        before the message ends, so that the message is not delivered.
        """
        if t.checkpoint is None:
            return
        try:
            await t.checkpoint()
        except Exception as error:
            self._break(_CHECKPOINT_FAILED, f"stopped before the end of the message: {error!r}")
            raise self._copy_broken() from None

    async def _send_data(self, t: Transaction) -> Reply:
        """Stream the message after 354, end it, and read the reply."""
        await self._stream_data(t)
        try:
            return await self._reply()
        except _Broken as broken:
            raise self._after_end(broken) from None

    async def _send_data_lmtp(self, t: Transaction, accepted: list[int],
                              outcome: list[Reply | None]) -> None:
        """
        Stream the message after 354, end it, and read the reply of each
        accepted recipient into *outcome*, in the order of RCPT
        (RFC 2033 §4.2).
        """
        await self._stream_data(t)
        try:
            for i in accepted:
                outcome[i] = await self._reply()
        except _Broken as broken:
            raise self._after_end(broken) from None

    async def _stream_data(self, t: Transaction) -> None:
        """
        Stream the message after 354, and end it with the final dot.

        The dot goes out in one write with the last chunk, which is read
        ahead to know it is the last: a small message costs one ``send``
        after 354, not two. The checkpoint runs before that write, so that
        a failed one still stops the message before its end.
        """
        reader = _MessageReader(t.prefix, t.message, self.settings.chunk_size)
        self._start_producing()
        try:
            chunk = reader.read()
            while True:
                following = reader.read() if chunk else b""
                if not following:
                    break
                await self._writable()
                self._write(self.conn.send_data(chunk))
                chunk = following
            await self._checkpoint(t)
            await self._writable()
            data = self.conn.send_data(chunk) if chunk else b""
            self._write(data + self.conn.end_data())
        finally:
            self._stop_producing()

    async def _send_bdat(self, t: Transaction) -> Reply:
        """
        Send the message in BDAT chunks (RFC 3030 §2), pipelined when the
        server offers PIPELINING; the last one is ``BDAT n LAST``. A chunk
        refused ends the message (RFC 3030 §2: no more chunks are sent).
        """
        reader = _MessageReader(t.prefix, t.message, self.settings.chunk_size)
        pipelining = self.conn.pipelining
        unanswered = 0
        refused: Reply | None = None
        last = False
        chunk = reader.read()
        self._start_producing()
        try:
            while True:
                following = reader.read() if chunk else b""
                last = not following
                if last:
                    await self._checkpoint(t)
                await self._writable()
                self._write(self.conn.send_chunk(chunk, last=last))
                if last:
                    break
                if pipelining:
                    unanswered += 1
                    while self._events and unanswered:
                        unanswered -= 1
                        reply = await self._reply()
                        if reply.code >= 400:
                            refused = reply
                            break
                else:
                    reply = await self._reply()
                    if reply.code >= 400:
                        refused = reply
                if refused is not None:
                    break
                chunk = following
        finally:
            self._stop_producing()
        try:
            for _ in range(unanswered):
                reply = await self._reply()
                if reply.code >= 400 and refused is None:
                    refused = reply
            if refused is not None:
                if not last:
                    return refused
                await self._reply()
                return refused
            return await self._reply()
        except _Broken as broken:
            raise self._after_end(broken) from None

