"""
The contracts of mailframe.

Every decision point of the mail path is one of these interfaces. Each has
an in-memory reference implementation in :mod:`mailframe.testing` and a
contract test suite that every implementation runs.

Methods that may wait return a :class:`~twisted.internet.defer.Deferred`;
policy hooks may also return their verdict directly.
"""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

__all__ = [
    "IComponentMaker",
    "IDeliveryTransport",
    "IPolicy",
    "IQueueStore",
    "IQueueWriter",
    "IRecipientValidator",
    "IResolver",
    "IRouter",
]


class IPolicy(Interface):
    """
    A policy that the SMTP server asks at each step of a session.

    Every hook returns a :class:`~mailframe.verdict.Verdict` or a Deferred
    that fires with one. Replies stay in command order under PIPELINING
    whatever order Deferreds fire in. An exception, or a failed Deferred,
    becomes one logged ``451 4.3.0`` reply for that command.

    Relay control, local-user checks, limits, DNSBL and SPF are policies.
    """

    def connect(client: Any) -> Any:
        """
        A client connected.

        :param client: a :class:`~mailframe.envelope.ClientInfo`, with the
            address from the PROXY header where there was one.
        :return: a verdict; REJECT or TEMPFAIL answer the greeting with the
            verdict's reply and close the connection.
        """

    def helo(client: Any, name: str) -> Any:
        """The client said HELO or EHLO *name*."""

    def mail(client: Any, sender: Any, parameters: Any) -> Any:
        """
        The client said MAIL FROM.

        :param sender: a :class:`~mailframe.address.Mailbox` or
            :data:`~mailframe.address.NULL_PATH`.
        :param parameters: the ESMTP parameters, a mapping of upper-case
            keyword to value (``None`` for a bare keyword).
        """

    def rcpt(client: Any, sender: Any, recipient: Any, parameters: Any) -> Any:
        """
        The client said RCPT TO.

        :param recipient: a :class:`~mailframe.address.Mailbox`.
        """

    def end_of_data(envelope: Any, headers: bytes, message: Any) -> Any:
        """
        The message has arrived, and is not yet committed.

        :param envelope: the :class:`~mailframe.envelope.Envelope`.
        :param headers: the message's header section as received (capped in
            size), ending with the empty line when there was one.
        :param message: a callable returning a Deferred that fires with a
            binary file object reading the whole message as received, for
            policies that scan bodies.
        :return: a verdict: REJECT or TEMPFAIL refuse the message, HOLD and
            DISCARD accept it, and ``headers`` are prepended.
        """


class IQueueWriter(Interface):
    """
    Where one incoming message is written, before it is committed.

    It is an :class:`~twisted.internet.interfaces.IConsumer`: a producer
    registered with it is paused while the writer's buffers are full, and
    resumed when they drain.
    """

    queue_id = Attribute(
        "The id of the entry, known before any byte is written, because it"
        " goes into the Received: header."
    )

    def registerProducer(producer: Any, streaming: bool) -> None:
        """Register a producer to pause while writes are pending."""

    def unregisterProducer() -> None:
        """Forget the registered producer."""

    def write(data: bytes) -> None:
        """Append *data* to the message."""

    def open_message() -> Any:
        """
        A Deferred firing with a binary file object that reads what was
        written so far; end-of-data policies use it to scan the message.
        """

    def commit(envelope: Any, hold: str | None = None) -> Any:
        """
        Make the message and its envelope durable, and queue it: as an
        ``incoming`` entry, or, when *hold* gives a reason, straight into
        ``hold``, so that no runner can claim it first.

        :return: a Deferred that fires with the queue id only once both the
            message and the envelope will survive a crash. Replying 250 to
            the client before it fires loses mail.
        """

    def abort() -> None:
        """Throw the message away. Safe to call at any time, also twice."""


class IQueueStore(Interface):
    """
    The queue: durable storage of messages and their delivery state.

    The ``mailframe queue`` commands use only this contract, so they work on
    every store, while a server uses the same store; they never call
    :meth:`recover` or :meth:`claim`, which belong to the server.
    """

    def recover() -> Any:
        """
        Make the store consistent after a crash or a restart: drop partial
        writes, and return entries that were claimed back to deferred.

        :return: a Deferred firing with the number of entries in the queue.
        """

    def has_room(size: int) -> bool:
        """``False`` when a message of *size* octets would not fit."""

    def open_writer() -> IQueueWriter:
        """Start receiving a new message."""

    def open_message(queue_id: str) -> Any:
        """A Deferred firing with a binary file object reading the message."""

    def claim(now: float, limit: int, lease: float) -> Any:
        """
        Take up to *limit* entries that are due at *now*, leasing each for
        *lease* seconds so that no other runner claims them.

        :return: a Deferred list of :class:`~mailframe.envelope.QueueEntry`.
        """

    def renew(queue_id: str, lease: float) -> Any:
        """Extend the lease on a claimed entry; fails if it was lost."""

    def record(entry: Any) -> Any:
        """
        Store the delivery state of a claimed entry: the recipients,
        attempts and warned flag of the :class:`~mailframe.envelope.QueueEntry`
        *entry*, whose queue id names it (its state, next attempt and
        envelope are not read). The recipients are the entry's own, in the
        same order.

        :return: a Deferred that fires once the state is durable; when the
            entry is :attr:`~mailframe.envelope.QueueEntry.done`, once it is
            removed. It fails with :class:`~mailframe.stores.NoSuchEntry`
            if an operator deleted the entry meanwhile.
        """

    def reschedule(queue_id: str, when: float, reason: str) -> Any:
        """
        Defer a claimed entry until *when*, releasing its lease. An entry
        that an operator held or deleted meanwhile stays as it is.
        """

    def notify_on_change(callback: Any) -> None:
        """
        Call *callback* with no arguments whenever entries may have become
        due through something other than this object: a ``mailframe
        queue`` command in another process, or another node sharing the
        store. A queue runner passes its ``wake``.
        """

    def list(state: Any = None, after: str | None = None, limit: int = 1000) -> Any:
        """
        A page of entries, in queue-id order, after *after*; call again with
        the last id to stream the whole queue in bounded memory.

        :param state: an :class:`~mailframe.envelope.EntryState` to filter on.
        """

    def get(queue_id: str) -> Any:
        """A Deferred firing with the entry, or ``None``."""

    def hold(queue_id: str, reason: str) -> Any:
        """Put an entry on hold."""

    def release(queue_id: str) -> Any:
        """Release a held entry; it becomes due now."""

    def delete(queue_id: str) -> Any:
        """Remove an entry and its message."""

    def requeue(queue_id: str) -> Any:
        """Make an entry due now, keeping its history."""

    def flush() -> Any:
        """Make every deferred entry due now."""

    def stats() -> Any:
        """A Deferred firing with :class:`~mailframe.envelope.QueueStats`."""

    def quarantine(queue_id: str, reason: str) -> Any:
        """Set an unreadable entry aside in ``corrupt``, out of delivery."""


class IRouter(Interface):
    """Decides where each recipient goes."""

    def route(envelope: Any, recipient: Any) -> Any:
        """
        :return: a Deferred list of ``(recipient, original_recipient, Route)``
            tuples. A router may expand one address into several, keeping the
            original for DSN.
        """


class IRecipientValidator(Interface):
    """
    Knows, from local data alone (tables, aliases, user lists), whether a
    recipient exists: a router that can refuse a recipient provides it, so
    that the server refuses that recipient at RCPT instead of accepting the
    message and bouncing it later. It never looks anything up in DNS.
    """

    def validate(recipient: Any) -> Any:
        """
        :param recipient: a :class:`~mailframe.address.Mailbox`.
        :return: ``None`` (or a Deferred firing with ``None``) when the
            recipient may be accepted, or the
            :class:`~mailframe.reply.Reply` to refuse it with.
        """


class IDeliveryTransport(Interface):
    """Takes a message to where a route says."""

    def deliver(entry: Any, recipients: Any, route: Any) -> Any:
        """
        Deliver the message of *entry* to *recipients*, all of which share
        *route*.

        :param recipients: a sequence of ``(recipient, original)`` pairs.
        :return: a Deferred list of
            :class:`~mailframe.envelope.RecipientResult`, one per recipient.
        """


class IResolver(Interface):
    """
    DNS lookups, answering with values rather than DNS library objects.

    Every lookup returns a Deferred. Names are absolute: no search domain is
    ever appended, and a trailing dot changes nothing. Names are compared
    without regard to case; names with non-ASCII labels are looked up as
    their A-labels (RFC 5890 §2.3.2.1). A CNAME is followed to its target,
    and the answer is the target's records.

    - A name that exists without records of the type asked (NODATA,
      RFC 2308 §2.2) gives an empty list.
    - A name that does not exist (NXDOMAIN, RFC 2308 §2.1) fails with
      :class:`~mailframe.routing._dnserrors.DNSNameNotFound`, a permanent
      delivery error replying ``550 5.1.2``.
    - A failure that may pass (SERVFAIL, a refusal, no answer in time, a
      malformed answer) fails with
      :class:`~mailframe.routing._dnserrors.DNSTemporaryError`, a transient
      delivery error replying ``451 4.4.3``.

    Each call returns a new list, which the caller may change.
    """

    def lookup_mx(domain: str) -> Any:
        """
        The MX records of *domain*.

        :return: a Deferred list of ``(preference, host)`` pairs, in no
            particular order, with the host written without its trailing
            dot. A null MX (RFC 7505) is ``(0, ".")``: the root is the only
            host written as ``"."``.
        """

    def lookup_address(host: str) -> Any:
        """
        The addresses of *host*: its AAAA then its A records.

        :return: a Deferred list of IPv6 addresses and then IPv4 addresses,
            as text (``"2001:db8::25"``, ``"192.0.2.25"``). When one of the
            two lookups fails and the other finds addresses, those addresses
            are the answer.
        """

    def lookup_txt(name: str) -> Any:
        """
        The TXT records of *name*.

        :return: a Deferred list of strings, one for each record, its
            character-strings joined with nothing between them
            (RFC 7208 §3.3), decoded as UTF-8 with replacement characters.
        """


class IComponentMaker(IPlugin):
    """
    Builds one kind of component; found as a Twisted plugin in
    :mod:`mailframe.plugins` by
    ``twisted.plugin.getPlugins(IComponentMaker, mailframe.plugins)``.
    """

    kind = Attribute('"policy", "router", "transport" or "store".')
    name = Attribute("The unique name that a config file uses.")
    description = Attribute("One line for the user.")
    schema = Attribute(
        "A mapping of setting name to :class:`mailframe.components.Setting`;"
        " keys that it does not list are refused when a config file is checked."
    )

    def build(settings: Any, context: Any) -> Any:
        """
        Build the component.

        :param settings: the component's checked settings.
        :param context: a :class:`mailframe.config.ComponentContext` with the
            reactor, a random source, the resolver, the queue store, the TLS
            settings and a logger.
        """
