"""
Delivery over LMTP (RFC 2033): the last hop, into a mail store such as
Dovecot or Cyrus, which delivers to each recipient's mailbox and says how
it went for each one.

:class:`LMTPTransport` is the :class:`~mailframe.interfaces.IDeliveryTransport`
named by routes such as
``Route("lmtp", {"endpoint": "unix:path=/run/dovecot/lmtp"})``. Its
session is an :class:`~mailframe.protocols.client.SMTPClientProtocol` in
LMTP mode, on the client core's
:class:`~mailframe.core.LMTPClientConnection`.

The route's arguments:

``endpoint``
    a Twisted client endpoint string
    (:func:`~twisted.internet.endpoints.clientFromString`), such as
    ``tcp:host=127.0.0.1:port=24`` or ``unix:path=/run/dovecot/lmtp``.
    Without it, :attr:`LMTPTransportSettings.endpoint` is used. A string
    that cannot be parsed fails the recipients transiently with
    ``451 4.3.5``: a mistake in the configuration must not bounce mail.

What a delivery does:

1. It connects to the endpoint, reads the ``220`` greeting and says LHLO
   with :attr:`LMTPTransportSettings.lhlo_name`. A connection that cannot
   be made in :attr:`LMTPTransportSettings.connect_timeout` seconds
   (``451 4.4.1``), any other greeting, a refused LHLO or a timeout fails
   every recipient transiently.
2. The recipients go in transactions of at most
   :attr:`LMTPTransportSettings.recipients_per_transaction`, one after the
   other on that connection, which is closed with QUIT after the last.
   A connection that the server closed between two transactions is opened
   again once.
3. A recipient refused at RCPT has that reply. Each recipient that RCPT
   accepted has its own reply after the final dot (RFC 2033 §4.2): ``2xx``
   is delivered, with the :attr:`~mailframe.envelope.Handoff.DELIVERED`
   handoff (a SUCCESS notification says "delivered"); ``4xx`` is
   transient; ``5xx`` permanent. A connection lost or timed out before
   all the replies are in leaves the recipients without one transient:
   the message may have reached them, but a duplicate is better than a
   loss.

The message sent is the stored message with the fields that policies
added (:attr:`Envelope.added_headers
<mailframe.envelope.Envelope.added_headers>`) before it, streamed from the
queue store and dot-stuffed by the core. ``Return-Path:`` is the LMTP
server's to add, as the final delivery agent (RFC 5321 §4.4). When the
server offers DSN in its LHLO reply, the envelope's parameters go on as
over SMTP (RFC 3461 §5.2.2): ``RET`` and ``ENVID`` on MAIL, ``NOTIFY`` and
``ORCPT`` on each RCPT.

Results name the endpoint string as the remote host.

Call :meth:`LMTPTransport.stop` when the service stops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.address import Mailbox
from mailframe.components import ComponentMaker, Setting, SettingError
from mailframe.core import ClientLimits
from mailframe.envelope import DeliveryStatus, DSNOptions, QueueEntry, RecipientResult, Route
from mailframe.errors import MailframeError
from mailframe.interfaces import IDeliveryTransport, IQueueStore
from mailframe.protocols.client import (
    ClientSettings,
    ConnectionUnusable,
    SessionFailed,
    SessionRejected,
    SMTPClientProtocol,
    Transaction,
)
from mailframe.reply import Reply
from mailframe.transports._outgoing import (
    BAD_ROUTE,
    SHUTTING_DOWN,
    OutgoingMessage,
    dsn_options,
    fail_all,
    open_outgoing,
    status_of,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RECIPIENTS_PER_TRANSACTION",
    "LMTPTransport",
    "LMTPTransportSettings",
    "lmtp_maker",
    "parse_endpoint",
]

#: Seconds to wait for the connection to the LMTP server to be made.
DEFAULT_CONNECT_TIMEOUT = 30.0
#: Recipients in one transaction, as Postfix's
#: ``lmtp_destination_recipient_limit``. RFC 2033 sets no limit; the
#: server may refuse more with a 452 at RCPT, and those recipients wait.
DEFAULT_RECIPIENTS_PER_TRANSACTION = 50

_DEFAULT_LIMITS = ClientLimits()


def _check_lhlo(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    ClientSettings(helo=value, lmtp=True)


@attrs.frozen
class LMTPTransportSettings:
    """
    The settings of :class:`LMTPTransport`.

    :ivar lhlo_name: our host name, said in LHLO.
    :ivar endpoint: the client endpoint string of routes that give none,
        or ``None``: then every route must give one.
    :ivar recipients_per_transaction: recipients in one transaction.
    :ivar connect_timeout: seconds to wait for the connection.
    :ivar limits: the client's limits and timeouts: the greeting and the
        reply to each command, each write of message data, and each
        recipient's reply after the final dot
        (:attr:`~mailframe.core.ClientLimits.data_termination_timeout`).
    """

    lhlo_name: str = attrs.field(validator=_check_lhlo)
    endpoint: str | None = None
    recipients_per_transaction: int = attrs.field(
        default=DEFAULT_RECIPIENTS_PER_TRANSACTION, validator=attrs.validators.ge(1))
    connect_timeout: float = attrs.field(default=DEFAULT_CONNECT_TIMEOUT,
                                         validator=attrs.validators.gt(0))
    limits: ClientLimits = attrs.Factory(ClientLimits)


class _BadRoute(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reply = Reply(451, BAD_ROUTE, f"Bad LMTP route: {reason}")





def parse_endpoint(reactor: Any, text: str) -> IStreamClientEndpoint:
    """
    The client endpoint of *text*, such as ``unix:path=/run/dovecot/lmtp``.

    :raises ValueError: when *text* is not a client endpoint string.
    """
    if not text.strip():
        raise ValueError("an empty endpoint")
    try:
        endpoint: IStreamClientEndpoint = clientFromString(reactor, text)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{text!r} is not a client endpoint string: {error}") from None
    return endpoint


@implementer(IDeliveryTransport)
class LMTPTransport:
    """
    Delivers over LMTP to the endpoint of the route; see the module.

    :param store: where messages are read from.
    :param reactor: connects the endpoints (``IReactorTCP``,
        ``IReactorUNIX``) and is the clock of every timeout
        (``IReactorTime``).
    :param settings: the :class:`LMTPTransportSettings`.
    """

    log = Logger()

    def __init__(self, store: IQueueStore, reactor: Any, settings: LMTPTransportSettings) -> None:
        self.store = store
        self.reactor = reactor
        self.settings = settings
        self._protocols: set[SMTPClientProtocol] = set()
        self._opening: set[SMTPClientProtocol] = set()
        self._connecting: set[Deferred[Any]] = set()
        self._stopping = False

    # -- IDeliveryTransport ----------------------------------------------------------

    def deliver(
        self, entry: QueueEntry, recipients: Sequence[tuple[Mailbox, Mailbox]], route: Route
    ) -> Deferred[list[RecipientResult]]:
        return Deferred.fromCoroutine(self._deliver(entry, list(recipients), route))

    def stop(self) -> Deferred[None]:
        """
        Stop delivering: later deliveries fail transiently; connections
        being made or set up are dropped now, the others closed once their
        transaction is done.

        :return: a Deferred that fires once every connection is closed.
        """
        self._stopping = True
        for d in list(self._connecting):
            d.cancel()
        for protocol in list(self._protocols):
            if protocol in self._opening:
                protocol.abort()
            else:
                protocol.quit()
        closing = [protocol.when_closed() for protocol in self._protocols]
        if not closing:
            return succeed(None)
        return DeferredList(closing).addCallback(lambda _: None)

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        return len(self._protocols)

    # -- one delivery ----------------------------------------------------------------

    async def _deliver(
        self, entry: QueueEntry, recipients: list[tuple[Mailbox, Mailbox]], route: Route
    ) -> list[RecipientResult]:
        if not recipients:
            return []
        if route.reject is not None:
            return fail_all(recipients, route.reject, DeliveryStatus.PERMANENT)
        if self._stopping:
            return fail_all(recipients, SHUTTING_DOWN, DeliveryStatus.TRANSIENT)
        try:
            text, endpoint = self._endpoint(route)
        except _BadRoute as error:
            self.log.error("Bad LMTP route {route}: {reason}", route=route, reason=str(error))
            return fail_all(recipients, error.reply, DeliveryStatus.TRANSIENT)
        try:
            message = await self._open_message(entry)
        except Exception:
            self.log.failure("Cannot read the message of {queue_id}", queue_id=entry.queue_id)
            reply = Reply(451, "4.3.0", "Cannot read the queued message")
            return fail_all(recipients, reply, DeliveryStatus.TRANSIENT)
        results: list[RecipientResult] = []
        try:
            await self._deliver_to(text, endpoint, entry, message, recipients, results)
        except Exception:
            self.log.failure("LMTP delivery of {queue_id} failed", queue_id=entry.queue_id)
            reply = Reply(451, "4.3.0", "Local error in the LMTP transport")
            results.extend(fail_all(recipients[len(results):], reply, DeliveryStatus.TRANSIENT))
        finally:
            message.file.close()
        return results

    def _endpoint(self, route: Route) -> tuple[str, IStreamClientEndpoint]:
        text = route.arguments.get("endpoint", self.settings.endpoint)
        if text is None:
            raise _BadRoute("the route names no endpoint, and the transport has none")
        try:
            return text, parse_endpoint(self.reactor, text)
        except ValueError as error:
            raise _BadRoute(str(error)) from None

    async def _open_message(self, entry: QueueEntry) -> OutgoingMessage:
        return await open_outgoing(self.store, entry)

    async def _deliver_to(
        self, text: str, endpoint: IStreamClientEndpoint, entry: QueueEntry,
        message: OutgoingMessage, items: list[tuple[Mailbox, Mailbox]],
        out: list[RecipientResult],
    ) -> None:
        """Deliver in batches over one connection, appending to *out* in order."""
        envelope = entry.envelope
        size = self.settings.recipients_per_transaction
        protocol: SMTPClientProtocol | None = None
        failure: MailframeError | None = None
        try:
            for start in range(0, len(items), size):
                batch = items[start : start + size]
                if failure is None and self._stopping:
                    failure = SessionFailed(SHUTTING_DOWN)
                if failure is not None:
                    out.extend(fail_all(batch, failure.reply, status_of(failure), text))
                    continue
                dsn = [dsn_options(envelope, r, o) for r, o in batch]
                transaction = Transaction(
                    envelope.sender, [r for r, _ in batch], message.file, message.size,
                    prefix=message.prefix, body=envelope.body, smtputf8=envelope.smtputf8,
                    utf8_headers=message.utf8_headers, auth=envelope.auth,
                    ret=envelope.ret, envid=envelope.envid,
                    dsn=dsn if any(o != DSNOptions() for o in dsn) else (),
                    checkpoint=message.renew,
                )
                retried = False
                while True:
                    if protocol is None:
                        try:
                            protocol = await self._connect(text, endpoint)
                        except (SessionFailed, SessionRejected) as error:
                            self.log.info("No LMTP session with {endpoint}: {reply}",
                                          endpoint=text, reply=str(error.reply),
                                          queue_id=entry.queue_id)
                            failure = error
                            out.extend(fail_all(batch, error.reply, status_of(error), text))
                            break
                    try:
                        results = await protocol.deliver(transaction)
                    except ConnectionUnusable as error:
                        # Nothing of this transaction was accepted.
                        protocol.abort()
                        protocol = None
                        if retried:
                            failure = error
                            out.extend(fail_all(batch, error.reply, DeliveryStatus.TRANSIENT,
                                             text))
                            break
                        retried = True
                        continue
                    out.extend(attrs.evolve(result, original=original)
                               for result, (_, original) in zip(results, batch, strict=True))
                    if not protocol.usable:
                        protocol.quit()
                        protocol = None
                    break
        finally:
            if protocol is not None:
                protocol.quit()

    async def _connect(self, text: str, endpoint: IStreamClientEndpoint) -> SMTPClientProtocol:
        """
        One LMTP session with *endpoint*, set up.

        :raises SessionFailed: when it cannot be connected or set up.
        """
        settings = self.settings
        client = ClientSettings(helo=settings.lhlo_name, tls="none", limits=settings.limits,
                                lmtp=True)
        protocol = SMTPClientProtocol(client, self.reactor, text)
        connecting = connectProtocol(endpoint, protocol)
        self._connecting.add(connecting)
        timer = self.reactor.callLater(settings.connect_timeout, connecting.cancel)
        try:
            await connecting
        except Exception as error:
            if self._stopping:
                raise SessionFailed(SHUTTING_DOWN) from None
            why = (str(error) if timer.active()
                   else f"no connection in {settings.connect_timeout:g} seconds")
            # RFC 3463 §3.5: X.4.1, no answer from host.
            raise SessionFailed(Reply(
                451, "4.4.1", f"Cannot connect to the LMTP server at {text}: {why}")) from None
        finally:
            if timer.active():
                timer.cancel()
            self._connecting.discard(connecting)
        self._protocols.add(protocol)
        protocol.when_closed().addCallback(lambda _: self._protocols.discard(protocol))
        self._opening.add(protocol)
        try:
            await protocol.when_ready()
        finally:
            self._opening.discard(protocol)
        self.log.debug("LMTP session with {endpoint}", endpoint=text)
        return protocol


# -- the plugin ------------------------------------------------------------------------


def _build_lmtp(settings: Mapping[str, Any], context: Any) -> LMTPTransport:
    endpoint = settings["endpoint"]
    if endpoint is not None:
        try:
            parse_endpoint(context.reactor, endpoint)
        except ValueError as error:
            raise SettingError("endpoint", str(error)) from None
    lhlo_name = settings["lhlo_name"] or context.config.hostname
    command = settings["command_timeout"]
    limits = ClientLimits(
        greeting_timeout=command, mail_timeout=command, rcpt_timeout=command,
        data_initiation_timeout=command, command_timeout=command,
        data_block_timeout=settings["data_timeout"],
        data_termination_timeout=settings["delivery_timeout"],
    )
    try:
        transport_settings = LMTPTransportSettings(
            lhlo_name=lhlo_name, endpoint=endpoint,
            recipients_per_transaction=settings["recipients_per_transaction"],
            connect_timeout=settings["connect_timeout"], limits=limits,
        )
    except ValueError as error:
        raise SettingError("lhlo_name", str(error)) from None
    return LMTPTransport(context.store, context.reactor, transport_settings)


#: The ``lmtp`` transport plugin.
lmtp_maker = ComponentMaker(
    kind="transport",
    name="lmtp",
    description="Delivers by LMTP to a mail store such as Dovecot, with a result per recipient",
    factory=_build_lmtp,
    schema={
        "endpoint": Setting(
            "string", None,
            "The client endpoint string of routes that give none, such as"
            " unix:path=/run/dovecot/lmtp or tcp:host=127.0.0.1:port=24."),
        "lhlo_name": Setting(
            "string", None, "The name said in LHLO; by default the server's hostname."),
        "recipients_per_transaction": Setting(
            "integer", DEFAULT_RECIPIENTS_PER_TRANSACTION,
            "The most recipients in one LMTP transaction.", minimum=1),
        "connect_timeout": Setting(
            "duration", DEFAULT_CONNECT_TIMEOUT,
            "How long to wait for the connection to the LMTP server.", minimum=0.001),
        "command_timeout": Setting(
            "duration", _DEFAULT_LIMITS.command_timeout,
            "How long to wait for the greeting, and for the reply to each command.",
            minimum=0.001),
        "data_timeout": Setting(
            "duration", _DEFAULT_LIMITS.data_block_timeout,
            "How long each write of message data may wait for the server to read.",
            minimum=0.001),
        "delivery_timeout": Setting(
            "duration", _DEFAULT_LIMITS.data_termination_timeout,
            "How long to wait for each recipient's reply after the end of the message.",
            minimum=0.001),
    },
)
