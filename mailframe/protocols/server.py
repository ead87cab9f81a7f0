"""
The SMTP server: a thin Twisted protocol around
:class:`mailframe.core.ServerConnection`.

The protocol moves bytes between the transport and the core, asks the
listener's policies, streams message data into a queue writer and answers
the final dot only once the queue store says the message is durable.
"""

from __future__ import annotations

import base64
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from email.utils import formatdate
from functools import lru_cache, partial
from typing import Any

import attrs
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import interfaces
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe import core
from mailframe.envelope import ClientInfo, Envelope
from mailframe.interfaces import IQueueStore, IQueueWriter
from mailframe.protocols._chain import ask_policies
from mailframe.protocols._sasl import MECHANISMS, Challenge, SaslExchange, start_exchange
from mailframe.protocols._tls import ServerTLS, describe_tls
from mailframe.protocols._write import write_now
from mailframe.reply import Reply
from mailframe.verdict import Action, Verdict

__all__ = [
    "AuthFailures",
    "ConnectionCounts",
    "ServerSettings",
    "SMTPServerFactory",
    "SMTPServerProtocol",
]

#: RFC 5321 §4.5.3.2.7: the server waits at least 5 minutes for a command.
MIN_IDLE_TIMEOUT = 300.0
#: While a reply is being decided, more than this many pipelined commands
#: waiting for their replies, or this many octets of input, pause reading
#: (RFC 2920 §3.1 lets a server stop reading; the client then waits).
MAX_PIPELINED_COMMANDS = 100
MAX_PIPELINED_OCTETS = 64 * 1024

_PLUGIN_FAILURE = Reply(451, "4.3.0", "Error: internal error in processing")
_NO_ROOM = Reply(452, "4.3.1", "Error: insufficient system storage")
_COMMIT_FAILED = Reply(451, "4.3.0", "Error: queue file write error")
_TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
_STARTTLS = Reply(220, "2.0.0", "Ready to start TLS")
_NEED_TLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
_NEED_AUTH = Reply(530, "5.7.0", "Authentication required")
_AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
_AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
_AUTH_UNAVAILABLE = Reply(454, "4.7.0", "Temporary authentication failure")
_AUTH_MECHANISM = Reply(504, "5.5.4", "Error: unsupported authentication mechanism")
_AUTH_TOO_MANY = Reply(421, "4.7.0", "Error: too many failed authentication attempts")


class AuthFailures:
    """
    Failed AUTH attempts per client address, shared by a server's listeners.

    Each failure delays the reply to it by *delay* times the failures so
    far; at *limit* failures the client gets ``421`` and is disconnected,
    and stays refused until *forget_after* seconds pass without a failure.
    """

    def __init__(self, clock: interfaces.IReactorTime, limit: int = 3, delay: float = 1.0,
                 forget_after: float = 600.0) -> None:
        self.clock = clock
        self.limit = limit
        self.delay = delay
        self.forget_after = forget_after
        self._failures: dict[str, tuple[int, float]] = {}

    def count(self, address: str) -> int:
        """The failures of *address* that are not forgotten yet."""
        failures, last = self._failures.get(address, (0, 0.0))
        if failures and self.clock.seconds() - last > self.forget_after:
            del self._failures[address]
            return 0
        return failures

    def failed(self, address: str) -> int:
        """Count one more failure; return the failures so far."""
        failures = self.count(address) + 1
        self._failures[address] = (failures, self.clock.seconds())
        return failures

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


@attrs.frozen
class ServerSettings:
    """
    The settings of one listener.

    :ivar hostname: the server's name, in the greeting and ``Received:``.
    :ivar limits: the session limits of the core.
    :ivar idle_timeout: seconds to wait for the next command; at least
        :data:`MIN_IDLE_TIMEOUT`.
    :ivar max_connections: connections served at once; more get 421.
    :ivar max_per_client: connections from one address; more get 421.
    :ivar limit_exemptions: addresses (``ipaddress`` networks) exempt from
        the per-client limit (Postfix's
        ``smtpd_client_event_limit_exceptions``).
    :ivar name: the listener's name, in ``ClientInfo.listener`` and the logs.
    :ivar extensions: extra EHLO keywords to advertise.
    :ivar tls: the certificates that STARTTLS offers (RFC 3207), or
        ``None`` for no STARTTLS. A listener on an ``ssl:`` endpoint
        (RFC 8314) is in TLS from the start and never offers STARTTLS.
    :ivar require_tls: refuse MAIL with ``530 5.7.0`` until TLS is active.
    :ivar auth: ``"none"``, ``"offered"`` or ``"required"`` (refuse MAIL with
        ``530 5.7.0`` until AUTH succeeded), RFC 4954.
    :ivar auth_without_tls: offer AUTH before TLS is active (by default it
        is offered only over TLS, so passwords never cross in clear).
    :ivar checker: the :mod:`twisted.cred` checker of
        :class:`~twisted.cred.credentials.IUsernamePassword` that AUTH uses.
    :ivar smtputf8: advertise SMTPUTF8 (RFC 6531).
    :ivar chunking: advertise CHUNKING, and accept BDAT (RFC 3030).
    :ivar dsn: advertise DSN, and keep its parameters in the envelope
        (RFC 3461): RET and ENVID of MAIL, NOTIFY and ORCPT of each RCPT.
        Without it they get ``555``.
    """

    hostname: str
    limits: core.Limits = attrs.Factory(core.Limits)
    idle_timeout: float = attrs.field(default=MIN_IDLE_TIMEOUT,
                                      validator=attrs.validators.ge(MIN_IDLE_TIMEOUT))
    max_connections: int = 1000
    max_per_client: int = 100
    limit_exemptions: tuple[Any, ...] = ()
    name: str = "smtp"
    extensions: tuple[str, ...] = ()
    tls: ServerTLS | None = None
    require_tls: bool = False
    auth: str = attrs.field(default="none", validator=attrs.validators.in_(
        ("none", "offered", "required")))
    auth_without_tls: bool = False
    checker: Any = None
    smtputf8: bool = True
    chunking: bool = True
    dsn: bool = True


_NO_REASONS: frozenset[str] = frozenset()


class _Throttle:
    """
    Pauses the transport while any reason to pause holds: a queue writer
    whose buffers are full, or a backlog of pipelined commands.
    """

    def __init__(self, transport: interfaces.IPushProducer) -> None:
        self._transport = transport
        # Replaced rather than changed: an idle session shares the empty one.
        self._reasons: frozenset[str] = _NO_REASONS

    def hold(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pauseProducing()
        self._reasons = self._reasons | {reason}

    def let_go(self, reason: str) -> None:
        if reason in self._reasons:
            self._reasons = self._reasons - {reason}
            if not self._reasons:
                self._transport.resumeProducing()


@implementer(interfaces.IPushProducer)
class _WriterProducer:
    """What a queue writer sees as its producer: one reason of the throttle."""

    def __init__(self, throttle: _Throttle) -> None:
        self._throttle = throttle

    def pauseProducing(self) -> None:
        self._throttle.hold("writer")

    def resumeProducing(self) -> None:
        self._throttle.let_go("writer")

    def stopProducing(self) -> None:
        self._throttle.let_go("writer")


def _client_info(peer: object, listener: str) -> ClientInfo:
    if isinstance(peer, IPv4Address | IPv6Address):
        host = peer.host
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return ClientInfo(address=host, port=peer.port, listener=listener)
    return ClientInfo(listener=listener)


@implementer(interfaces.IHandshakeListener)
class SMTPServerProtocol(Protocol):
    """
    One SMTP server session.

    Commands are handled one at a time, in order: the next is taken from the
    core only when the last one has its reply. A policy that answers late
    therefore never reorders replies, whatever order Deferreds fire in.
    """

    log = Logger()

    def __init__(self, factory: SMTPServerFactory) -> None:
        self.factory = factory
        self.client = ClientInfo()
        # Made again in connectionMade, once the transport tells whether the
        # session is in TLS from the start.
        self.conn = core.ServerConnection(factory.settings.hostname, factory.settings.limits,
                                          dsn=factory.settings.dsn)
        self._writer: IQueueWriter | None = None
        self._waiting = False
        self._running = False
        self._throttle: _Throttle | None = None
        self._timer: interfaces.IDelayedCall | None = None
        self._gone = False
        self._committing = False
        self._close_after_reply = False
        self._sasl: SaslExchange | None = None
        self._tls_started = False

    # -- Twisted protocol -------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        settings = self.factory.settings
        self.client = _client_info(self.transport.getPeer(), settings.name)
        # An ssl: endpoint (RFC 8314) gives a transport that is TLS already.
        implicit = interfaces.ISSLTransport.providedBy(self.transport)
        self.conn = core.ServerConnection(settings.hostname, settings.limits, tls=implicit,
                                          dsn=settings.dsn)
        self.conn.set_extensions(self._extensions())
        self._throttle = _Throttle(self.transport)  # type: ignore[arg-type]
        self._arm_timer()
        refusal = self.factory.admit(self)
        if refusal is not None:
            self._send(Reply(421, "4.7.0", f"{self.conn.hostname} {refusal}"))
            return
        self._decide(self._greet_hook, self._greeted)

    def dataReceived(self, data: bytes) -> None:
        self._arm_timer()
        self.conn.receive_data(data)
        self._process()

    def handshakeCompleted(self) -> None:
        """TLS is up (after STARTTLS, or at once on an ``ssl:`` endpoint)."""
        self.client = attrs.evolve(self.client, tls=describe_tls(self.transport))
        self.log.debug("TLS with {client.address}: {client.tls}", client=self.client)

    def _extensions(self) -> tuple[str, ...]:
        """The EHLO keywords this session offers now, beyond the core's own."""
        settings = self.factory.settings
        extensions = list(settings.extensions)
        if settings.tls is not None and not self.conn.tls:
            extensions.append("STARTTLS")
        if (settings.auth != "none" and settings.checker is not None
                and (self.conn.tls or settings.auth_without_tls)):
            extensions.append("AUTH " + " ".join(MECHANISMS))
        if settings.smtputf8:
            extensions.append("SMTPUTF8")
        if settings.chunking:
            extensions.append("CHUNKING")
        return tuple(extensions)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._tls_started and self.client.tls is None and not self._gone:
            self.log.info("TLS handshake with {client.address} failed: {error}",
                          client=self.client, error=reason.getErrorMessage())
        self._gone = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._committing:
            self._abort_writer()
        self.factory.forget(self)

    # -- the command loop ---------------------------------------------------

    def _process(self) -> None:
        if self._running:
            return
        self._running = True
        try:
            while not self._waiting and not self._gone and not self.conn.closed:
                event = self.conn.next_event()
                if isinstance(event, core.MessageData):
                    if self._writer is None:
                        # The first chunk of a BDAT transaction.
                        self._open_writer()
                    assert self._writer is not None
                    self._writer.write(event.data)
                elif isinstance(event, core.ConnectionClosed):
                    self._abort_writer()
                    self._lose()
                elif isinstance(event, core.Command):
                    self._decide(partial(self._handle, event), self._send)
                else:
                    break
        finally:
            self._running = False
        if self._throttle is not None:
            if self._waiting and (self.conn.buffered > MAX_PIPELINED_OCTETS
                                  or self.conn.buffered_commands > MAX_PIPELINED_COMMANDS):
                self._throttle.hold("pipeline")
            else:
                self._throttle.let_go("pipeline")

    def _decide(
        self,
        decide: Callable[[], Reply | Deferred[Reply]],
        then: Callable[[Reply], None],
    ) -> None:
        """
        Run *decide*; pass its reply to *then*, at once if it is ready, else
        when its Deferred fires. An exception becomes one logged 451.
        """
        try:
            result = decide()
        except Exception:
            self.log.failure("Error in a policy or store; answering 451", client=self.client)
            result = _PLUGIN_FAILURE
        if not isinstance(result, Deferred):
            then(result)
            return
        self._waiting = True

        def done(reply: Reply) -> None:
            self._waiting = False
            if self._gone:
                return
            then(reply)
            self._process()

        def failed(failure: Failure) -> None:
            self.log.failure("Error in a policy or store; answering 451", failure,
                             client=self.client)
            done(_PLUGIN_FAILURE)

        result.addCallbacks(done, failed)

    def _send(self, reply: Reply) -> None:
        if self._gone:
            return
        assert self.transport is not None
        was_tls = self.conn.tls
        write_now(self.transport, self.conn.send(reply))
        if self.conn.tls and not was_tls:
            self._start_tls()
        if self.conn.closed or self._close_after_reply:
            if self._close_after_reply and not self.conn.closed:
                write_now(self.transport, self.conn.send(self.conn.shutdown_reply()))
            self._abort_writer()
            self._lose()

    def _start_tls(self) -> None:
        """
        The 220 to STARTTLS is written; the core has thrown away whatever the
        client sent after STARTTLS, and forgotten the session (RFC 3207 §4.2).
        """
        tls = self.factory.settings.tls
        assert tls is not None and self.transport is not None
        self._tls_started = True
        self.client = attrs.evolve(self.client, helo="", esmtp=False, authenticated_as=None)
        self.transport.startTLS(tls.options())  # type: ignore[attr-defined]
        self.conn.set_extensions(self._extensions())

    def _lose(self) -> None:
        if self.transport is not None and not self._gone:
            self.transport.loseConnection()

    # -- the greeting ---------------------------------------------------------

    def _greet_hook(self) -> Reply | Deferred[Reply]:
        return _verdict_reply(
            ask_policies(self.factory.policies, "connect", self.client),
            Reply(220, None, f"{self.conn.hostname} ESMTP mailframe"),
        )

    def _greeted(self, reply: Reply) -> None:
        if not reply.is_positive:
            # A refused connection is told why, then closed.
            reply = Reply(421 if reply.is_transient else 554, None, reply.text)
        self._send(reply)
        if reply.code == 554:
            self._lose()
        self._process()

    # -- commands ---------------------------------------------------------------

    def _handle(self, event: core.Command) -> Reply | Deferred[Reply]:
        if self.factory.shutting_down and not isinstance(event, core.EndOfMessage):
            return self.conn.shutdown_reply()
        if isinstance(event, core.BadCommand):
            self._sasl = None  # a malformed SASL response ends the exchange
            return event.reply
        if isinstance(event, core.Ehlo | core.Helo):
            return self._helo(event)
        if isinstance(event, core.Mail):
            return self._mail(event)
        if isinstance(event, core.Rcpt):
            return self._rcpt(event)
        if isinstance(event, core.Data):
            self._open_writer()
            return self.conn.default_reply(event)
        if isinstance(event, core.EndOfMessage):
            return self._complete(event.size, event.headers, event.problem)
        if isinstance(event, core.Bdat):
            return self._bdat(event)
        if isinstance(event, core.StartTls):
            return _STARTTLS
        if isinstance(event, core.Auth):
            return self._auth(event)
        if isinstance(event, core.AuthResponse):
            return self._auth_step(event.data)
        if isinstance(event, core.AuthCancel):
            self._sasl = None
        return self.conn.default_reply(event)

    def _helo(self, event: core.Ehlo | core.Helo) -> Reply | Deferred[Reply]:
        ok = self.conn.helo_reply(event)
        esmtp = isinstance(event, core.Ehlo)

        def remember(reply: Reply) -> Reply:
            if reply.is_positive:
                self.client = attrs.evolve(self.client, helo=event.name, esmtp=esmtp)
            return reply

        result = _verdict_reply(ask_policies(self.factory.policies, "helo", self.client,
                                             event.name), ok)
        if isinstance(result, Deferred):
            return result.addCallback(remember)
        return remember(result)

    def _mail(self, event: core.Mail) -> Reply | Deferred[Reply]:
        settings = self.factory.settings
        if settings.require_tls and not self.conn.tls:
            return _NEED_TLS
        if settings.auth == "required" and not self.conn.authenticated:
            return _NEED_AUTH
        if not self.factory.store.has_room(event.size or 0):
            return _NO_ROOM
        return _verdict_reply(
            ask_policies(self.factory.policies, "mail", self.client, event.sender,
                         dict(event.parameters)),
            self.conn.default_reply(event),
        )

    def _rcpt(self, event: core.Rcpt) -> Reply | Deferred[Reply]:
        sender = self.conn.transaction.sender

        def outcome(reply: Reply) -> Reply:
            if not reply.is_positive:
                self.log.info(
                    "Recipient {recipient} refused from {client.address}: {reply}",
                    sender=str(sender), recipient=str(event.recipient), client=self.client,
                    status="rejected", reply=str(reply),
                )
            return reply

        result = _verdict_reply(
            ask_policies(self.factory.policies, "rcpt", self.client, sender,
                         event.recipient, dict(event.parameters)),
            self.conn.default_reply(event),
        )
        if isinstance(result, Deferred):
            return result.addCallback(outcome)
        return outcome(result)

    def _open_writer(self) -> None:
        """Start the message in the store, with our ``Received:`` on top."""
        writer = self.factory.store.open_writer()
        self._writer = writer
        writer.write(self._received_header(writer.queue_id))
        assert self._throttle is not None
        writer.registerProducer(_WriterProducer(self._throttle), True)

    def _auth_parameter(self, mail: core.Mail) -> str | None:
        """
        What ``AUTH=`` to pass on (RFC 4954 §5): only an authenticated
        client is trusted to name the submitter; by default its identity.
        """
        identity = self.client.authenticated_as
        if identity is None:
            return None
        return mail.auth if mail.auth is not None else identity

    def _bdat(self, event: core.Bdat) -> Reply | Deferred[Reply]:
        """One BDAT chunk has been read (RFC 3030 §2)."""
        if self._writer is None:
            self._open_writer()
        if event.last:
            return self._complete(event.total, event.headers, event.problem)
        if event.problem is not None:
            self._abort_writer()
            return event.problem
        return Reply(250, "2.0.0", f"{event.size} octets received")

    # -- AUTH (RFC 4954) -----------------------------------------------------------

    def _auth(self, event: core.Auth) -> Reply | Deferred[Reply]:
        failures = self.factory.auth_failures
        if failures.count(self.client.address) >= failures.limit:
            return _AUTH_TOO_MANY
        exchange = start_exchange(event.mechanism)
        if exchange is None:
            return _AUTH_MECHANISM
        self._sasl = exchange
        return self._auth_step(event.initial)

    def _auth_step(self, response: bytes | None) -> Reply | Deferred[Reply]:
        exchange, self._sasl = self._sasl, None
        if exchange is None:
            return Reply(503, "5.5.1", "Error: no authentication in progress")
        outcome = exchange.step(response)
        if isinstance(outcome, Challenge):
            self._sasl = exchange
            return Reply(334, None, base64.b64encode(outcome.data).decode("ascii"))
        if isinstance(outcome, Reply):
            return self._auth_failed(outcome) if outcome.code == 535 else outcome
        username = outcome.username
        checker = self.factory.settings.checker
        d = maybeDeferred(checker.requestAvatarId,
                          UsernamePassword(username.encode("utf-8"),
                                           outcome.password.encode("utf-8")))

        def succeeded(avatar: object) -> Reply:
            self.factory.auth_failures.succeeded(self.client.address)
            self.client = attrs.evolve(self.client, authenticated_as=username)
            self.log.info("{client.address} authenticated as {username}",
                          client=self.client, username=username)
            return _AUTH_OK

        def failed(failure: Failure) -> Reply | Deferred[Reply]:
            if failure.check(UnauthorizedLogin):
                self.log.info("AUTH failed for {username} from {client.address}",
                              username=username, client=self.client)
                return self._auth_failed(_AUTH_FAILED)
            self.log.failure("The AUTH checker failed", failure)
            return _AUTH_UNAVAILABLE

        return d.addCallbacks(succeeded, failed)

    def _auth_failed(self, reply: Reply) -> Deferred[Reply]:
        """Count a failure, and answer it late: later for each failure."""
        failures = self.factory.auth_failures
        count = failures.failed(self.client.address)
        if count >= failures.limit:
            reply = _AUTH_TOO_MANY
        return deferLater(self.factory.clock, failures.delay * count, lambda: reply)

    def _received_header(self, queue_id: str) -> bytes:
        """The trace field of RFC 5321 §4.4, with RFC 3848 protocol names."""
        client = self.client
        mail = self.conn.transaction.mail
        # RFC 3848 and RFC 6531 §3.7.4 name the protocol.
        if mail is not None and mail.smtputf8:
            protocol = "UTF8SMTP"
        else:
            protocol = "ESMTP" if client.esmtp else "SMTP"
        if client.esmtp and client.tls:
            protocol += "S"
        if client.esmtp and client.authenticated_as:
            protocol += "A"
        host = client.hostname or "unknown"
        literal = f"[{client.address}]" if client.address else "[local]"
        if ":" in client.address:
            literal = f"[IPv6:{client.address}]"
        lines = [f"Received: from {client.helo or 'unknown'} ({host} {literal})"]
        if client.tls:
            lines.append(f"\t(using {client.tls})")
        if client.authenticated_as:
            lines.append(f"\t(Authenticated sender: {client.authenticated_as})")
        lines.append(f"\tby {self.conn.hostname} (mailframe) with {protocol} id {queue_id}")
        recipients = self.conn.transaction.recipients
        stamp = _date_stamp(int(self.factory.clock.seconds()))
        if len(recipients) == 1:
            lines.append(f"\tfor <{recipients[0]}>; {stamp}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{stamp}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def _complete(
        self, size: int, headers: bytes, problem: Reply | None
    ) -> Reply | Deferred[Reply]:
        """The whole message has arrived (final dot, or BDAT LAST)."""
        writer = self._writer
        if writer is None:
            return _PLUGIN_FAILURE
        writer.unregisterProducer()
        assert self._throttle is not None
        self._throttle.let_go("writer")
        transaction = self.conn.transaction
        assert transaction.mail is not None and transaction.sender is not None
        mail = transaction.mail
        envelope = Envelope(
            sender=transaction.sender,
            recipients=tuple(transaction.recipients),
            body=mail.body,
            size=mail.size,
            smtputf8=mail.smtputf8,
            client=self.client,
            received_at=self.factory.clock.seconds(),
            auth=self._auth_parameter(mail),
            ret=mail.ret,
            envid=mail.envid,
            dsn=tuple(transaction.dsn),
        )
        if problem is not None:
            self._abort_writer()
            self._log_message(envelope, writer.queue_id, size, "rejected", problem)
            return problem
        verdict = ask_policies(self.factory.policies, "end_of_data", envelope, headers,
                               writer.open_message)
        if isinstance(verdict, Deferred):
            return verdict.addCallback(self._finish, writer, envelope, size)
        return self._finish(verdict, writer, envelope, size)

    def _finish(
        self, verdict: Verdict, writer: IQueueWriter, envelope: Envelope,
        size: int,
    ) -> Reply | Deferred[Reply]:
        queue_id = writer.queue_id
        refusal = verdict.effective_reply
        if refusal is not None:
            self._abort_writer()
            self._log_message(envelope, queue_id, size, "rejected", refusal)
            return refusal
        if verdict.action is Action.DISCARD:
            self._abort_writer()
            reply = Reply(250, "2.0.0", f"Ok: discarded as {queue_id}")
            self._log_message(envelope, queue_id, size, "discarded", reply)
            return reply
        if verdict.headers:
            envelope = attrs.evolve(envelope, added_headers=verdict.headers)
        self._committing = True
        # A held message goes straight into hold: no runner can claim it
        # between its commit and its hold.
        hold = None
        if verdict.action is Action.HOLD:
            hold = verdict.reason or "held by policy"
        committed: Deferred[Any] = (
            writer.commit(envelope) if hold is None else writer.commit(envelope, hold=hold)
        )

        def queued(qid: str) -> Reply:
            self._committing = False
            self._writer = None
            reply = Reply(250, "2.0.0", f"Ok: queued as {qid}")
            self._log_message(envelope, qid, size,
                              "held" if verdict.action is Action.HOLD else "queued", reply)
            self.factory.queued(qid)
            return reply

        def failed(failure: Failure) -> Reply:
            self._committing = False
            self._writer = None
            self.log.failure("Could not commit {queue_id}", failure, queue_id=queue_id)
            return _COMMIT_FAILED

        return committed.addCallbacks(queued, failed)

    def _log_message(
        self, envelope: Envelope, queue_id: str, size: int, status: str, reply: Reply
    ) -> None:
        # The line is made here, once, and the format names only it: a text
        # observer formats each field of a format through string.Formatter,
        # which cost more than the rest of a discarded message's handling.
        # The fields stay in the event for observers that want them.
        sender, nrcpt, text = str(envelope.sender), len(envelope.recipients), str(reply)
        self.log.info(
            "{line}",
            line=f"{queue_id}: {status} from=<{sender}> size={size} nrcpt={nrcpt}"
                 f" client={envelope.client.address}: {text}",
            queue_id=queue_id, status=status, sender=sender,
            recipients=[str(r) for r in envelope.recipients],
            nrcpt=nrcpt, client=envelope.client, size=size, reply=text,
        )

    def _abort_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.unregisterProducer()
            writer.abort()

    # -- timeouts and shutdown -----------------------------------------------------

    def _arm_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.factory.settings.idle_timeout)
        else:
            self._timer = self.factory.clock.callLater(
                self.factory.settings.idle_timeout, self._timed_out
            )

    def _timed_out(self) -> None:
        if self._committing or self._waiting:
            self._arm_timer()
            return
        self.log.info("Idle timeout for {client.address}", client=self.client)
        self._unsolicited(_TIMEOUT)

    def _unsolicited(self, reply: Reply) -> None:
        """Send a 421 outside the command sequence and close (RFC 5321 §3.8)."""
        if self._gone:
            return
        assert self.transport is not None
        self.transport.write(reply.render())
        self._abort_writer()
        self._lose()

    def shut_down(self) -> None:
        """
        Close the session now: at once if it is between commands, or right
        after the reply to a final dot that is being committed.
        """
        if self._committing or self._waiting:
            self._close_after_reply = True
        else:
            self._unsolicited(self.conn.shutdown_reply())


@lru_cache(maxsize=4)
def _date_stamp(second: int) -> str:
    """The RFC 5322 date of a trace field, made once a second."""
    return formatdate(second, localtime=False)


def _verdict_reply(
    verdict: Verdict | Deferred[Verdict], ok: Reply
) -> Reply | Deferred[Reply]:
    def pick(verdict: Verdict) -> Reply:
        refusal = verdict.effective_reply
        return refusal if refusal is not None else ok

    if isinstance(verdict, Deferred):
        return verdict.addCallback(pick)
    return pick(verdict)


class ConnectionCounts:
    """
    Sessions counted in total and per client address, shared by the
    listeners of one server so that their limits hold for all of them.
    """

    def __init__(self) -> None:
        self.total = 0
        self.per_client: Counter[str] = Counter()

    def add(self, address: str) -> None:
        self.total += 1
        self.per_client[address] += 1

    def remove(self, address: str) -> None:
        self.total -= 1
        self.per_client[address] -= 1
        if self.per_client[address] <= 0:
            del self.per_client[address]


class SMTPServerFactory(Factory):
    """
    Builds :class:`SMTPServerProtocol` sessions for one listener, and keeps
    the connection limits.

    :param settings: the listener's settings.
    :param store: the queue store that messages are written to.
    :param policies: the policies asked at each step, in order.
    :param clock: the clock for timeouts and ``Received:`` dates.
    :param on_queued: called with each new queue id once it is committed.
    :param counts: session counts shared with the server's other listeners;
        by default this listener counts its own.
    :param auth_failures: failed AUTH attempts, shared the same way.
    """

    protocol = SMTPServerProtocol

    def __init__(
        self,
        settings: ServerSettings,
        store: IQueueStore,
        policies: Sequence[Any],
        clock: interfaces.IReactorTime,
        on_queued: Callable[[str], None] | None = None,
        counts: ConnectionCounts | None = None,
        auth_failures: AuthFailures | None = None,
    ) -> None:
        self.settings = settings
        self.auth_failures = auth_failures if auth_failures is not None else AuthFailures(clock)
        self.store = store
        self.policies = list(policies)
        self.clock = clock
        self.shutting_down = False
        self._on_queued = on_queued
        self._sessions: set[SMTPServerProtocol] = set()
        self._counts = counts if counts is not None else ConnectionCounts()
        self._drained: list[Deferred[None]] = []

    def buildProtocol(self, addr: object) -> SMTPServerProtocol:
        protocol = SMTPServerProtocol(self)
        return protocol

    @property
    def sessions(self) -> frozenset[SMTPServerProtocol]:
        """The sessions that are connected now."""
        return frozenset(self._sessions)

    @property
    def connected(self) -> int:
        """
        The sessions connected now, on every listener that shares this
        factory's counts: what ``max_connections`` limits.
        """
        return self._counts.total

    def admit(self, session: SMTPServerProtocol) -> str | None:
        """Count a new session; the reason to refuse it, or ``None``."""
        address = session.client.address
        counts = self._counts
        if counts.total >= self.settings.max_connections:
            return "Error: too many connections"
        if (address and counts.per_client[address] >= self.settings.max_per_client
                and not _exempt(address, self.settings.limit_exemptions)):
            return f"Error: too many connections from {address}"
        self._sessions.add(session)
        counts.add(address)
        return None

    def forget(self, session: SMTPServerProtocol) -> None:
        """A session ended."""
        if session in self._sessions:
            self._sessions.discard(session)
            self._counts.remove(session.client.address)
        if not self._sessions:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def queued(self, queue_id: str) -> None:
        """A session committed *queue_id*."""
        if self._on_queued is not None:
            self._on_queued(queue_id)

    def shut_down(self, grace: float) -> Deferred[None]:
        """
        Stop serving: every later command gets ``421 4.3.2``; after *grace*
        seconds, sessions still open get an unsolicited 421 and are closed,
        each right after its pending commit if it has one.

        :return: a Deferred that fires when every session has ended.
        """
        self.shutting_down = True
        if not self._sessions:
            return succeed(None)
        drained: Deferred[None] = Deferred()
        self._drained.append(drained)
        timer = self.clock.callLater(grace, self._close_all)

        def stop_timer(result: None) -> None:
            if timer.active():
                timer.cancel()

        drained.addCallback(stop_timer)
        return drained

    def _close_all(self) -> None:
        for session in list(self._sessions):
            session.shut_down()


def _exempt(address: str, networks: Iterable[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
