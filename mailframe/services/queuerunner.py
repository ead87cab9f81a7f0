"""
The queue runner: takes due entries from the store, routes each pending
recipient, hands each group of recipients to its transport, records the
outcome durably, and queues the delivery status notifications (RFC 3464)
that the outcome owes.

One attempt on a claimed entry goes:

1. A notification that an earlier attempt recorded as owed but did not
   queue (the process stopped in between) is queued first.
2. Each pending recipient is routed, and each group of recipients that
   share a route goes to its transport. A router that fails leaves its
   recipients pending, as a transport that fails does.
3. Each recipient's new state is recorded in the store *before* anything
   is done about it: delivered, bounced, expired (pending for longer than
   the queue lifetime), or still pending until the next attempt. A
   recipient whose outcome owes a notification is recorded with the
   notification's action in :attr:`~mailframe.envelope.QueuedRecipient.report`.
4. One notification lists every recipient of the attempt that is owed one;
   once it is queued (as an entry of its own, from ``<>``), the reports are
   cleared, and the store removes the entry if nothing is left to do.
5. An entry with recipients still pending gets one "delayed" notification
   once it has waited for the delay warning time, and is deferred on the
   retry schedule, never past the time it expires.

A crash at any point repeats a step rather than skipping one: mail may be
delivered or reported twice, never lost or left unreported.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import IO, Any, Protocol, TypeVar, cast

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe.address import NULL_PATH, Mailbox, NullPath
from mailframe.envelope import (
    DeliveryStatus,
    DSNOptions,
    Envelope,
    Handoff,
    QueuedRecipient,
    QueueEntry,
    RecipientResult,
    RecipientState,
    Route,
)
from mailframe.errors import MailframeError
from mailframe.interfaces import IDeliveryTransport, IQueueStore, IRouter
from mailframe.reply import Reply
from mailframe.services.dsn import DeliveryReport, RecipientReport, dsn_body_type, render_dsn
from mailframe.services.schedule import (
    DEFAULT_DELAY_WARNING,
    DEFAULT_MAX_LIFETIME,
    DEFAULT_SCHEDULE,
    RetrySchedule,
)
from mailframe.stores import LeaseLost, NoSuchEntry, StoreUnavailable

__all__ = [
    "DEFAULT_BOUNCE_SIZE_LIMIT",
    "DEFAULT_HOSTNAME",
    "NO_TRANSPORT",
    "BlockingRunner",
    "QueueRunner",
    "read_original",
]

_T = TypeVar("_T")

#: A recipient whose route names a transport that does not exist stays
#: queued with this reply.
NO_TRANSPORT = "no such delivery transport"

#: Octets of the original message that a notification may return: above
#: this, it returns the header section only (DESIGN "bounded memory";
#: Postfix's ``bounce_size_limit``).
DEFAULT_BOUNCE_SIZE_LIMIT = 50_000

#: The host name that notifications give as their Reporting-MTA, and in
#: their ``MAILER-DAEMON`` address, when none is configured.
DEFAULT_HOSTNAME = "localhost"

#: Octets read at a time while looking for the end of a header section.
_READ_CHUNK = 8192

#: The reply kept for a recipient that the router could not route.
_ROUTER_FAILED = Reply(451, "4.3.0", "Error in the router")
#: The reply kept for a recipient that the router gave no route at all.
_NO_ROUTE = Reply(451, "4.3.0", "The router gave no route")
#: The reply kept for a recipient that the transport gave no result for.
_NO_RESULT = Reply(451, "4.3.0", "No delivery result")
#: The reply kept for every recipient of a transport that failed.
_TRANSPORT_FAILED = Reply(451, "4.3.0", "Error in the delivery transport")

#: Which NOTIFY keyword (RFC 3461 §4.1) asks for a notification of each action.
_KEYWORD = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS",
            "relayed": "SUCCESS"}
#: The status a notification gives when the reply carried none.
_DEFAULT_STATUS = {"failed": "5.0.0", "delayed": "4.0.0", "delivered": "2.0.0",
                   "relayed": "2.0.0"}
#: When a router expanded one recipient into several, a transient failure
#: of any keeps it pending, then a permanent one bounces it.
_PRECEDENCE = (DeliveryStatus.TRANSIENT, DeliveryStatus.PERMANENT, DeliveryStatus.DELIVERED)

#: The DSN options of every notification's one recipient: no MTA reports
#: on a report.
_NOTIFY_NEVER = DSNOptions(notify=frozenset({"NEVER"}))


class BlockingRunner(Protocol):
    """
    Runs a blocking function, such as a read from the disk, away from the
    reactor's thread, and returns a Deferred that fires with its result.
    """

    def __call__(self, f: Callable[[], _T]) -> Deferred[_T]: ...


def _default_runner(clock: IReactorTime) -> BlockingRunner:
    """In the thread pool of *clock* when it is a reactor with threads, else at once."""
    if IReactorThreads.providedBy(clock):
        reactor = cast(IReactorThreads, clock)

        def in_thread(f: Callable[[], _T]) -> Deferred[_T]:
            return deferToThreadPool(reactor, reactor.getThreadPool(), f)

        return in_thread

    def at_once(f: Callable[[], _T]) -> Deferred[_T]:
        return maybeDeferred(f)

    return at_once


def read_original(file: IO[bytes], prefix: bytes, whole: bool, limit: int) -> tuple[bytes, bool]:
    """
    What of a queued message a notification returns, and close *file*.
    Blocking: run it away from the reactor.

    :param file: the stored message, positioned at its start.
    :param prefix: the header lines added in front of the stored message.
    :param whole: whether to return the whole message, if it is no larger
        than *limit*.
    :param limit: octets returned at most.
    :return: the whole message and ``True``, or its header section (the
        header lines without the empty line that ends them, cut after the
        last complete line within *limit*) and ``False``.
    """
    try:
        if whole:
            data = prefix + file.read(max(limit + 1 - len(prefix), 0))
            if len(data) <= limit:
                return data, True
            file.seek(0)
        return _header_section(file, prefix, limit), False
    finally:
        file.close()


def _header_section(file: IO[bytes], prefix: bytes, limit: int) -> bytes:
    data = prefix
    while True:
        if data.startswith(b"\r\n"):
            # No header fields at all: the message starts with the empty line.
            return b""
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            data = data[: end + 2]
            break
        if len(data) > limit:
            break
        chunk = file.read(_READ_CHUNK)
        if not chunk:
            break
        data += chunk
    if len(data) > limit:
        # Cut after the last complete line that fits.
        cut = data.rfind(b"\r\n", 0, limit)
        data = data[: cut + 2] if cut >= 0 else b""
    return data


def _decide(results: Sequence[RecipientResult]) -> RecipientResult:
    """
    The result that counts for an envelope recipient that a router may
    have expanded: a transient one if any, else a permanent one if any,
    else a delivered one.
    """
    return min(results, key=lambda r: _PRECEDENCE.index(r.status))


def _status(reply: Reply | None, action: str) -> str:
    """The Status field (RFC 3464 §2.3.4) for *reply*."""
    if reply is None:
        return _DEFAULT_STATUS[action]
    if reply.status is not None:
        return reply.status
    return f"{str(reply.code)[0]}.0.0"


def _address_type(mailbox: Mailbox) -> str:
    # RFC 6533 §3: "utf-8" for an address that "rfc822" cannot carry.
    return "rfc822" if mailbox.is_ascii else "utf-8"


class QueueRunner(Service):
    """
    Delivers what is due in the queue, a batch at a time, and sleeps until
    woken or until the next poll.

    :param store: the queue.
    :param router: decides each recipient's route.
    :param transports: the delivery transports by name.
    :param clock: for scheduling; when it is a reactor with threads, reading
        the original message for a notification runs in its thread pool.
    :param schedule: the retry schedule.
    :param random: jitter source, and the random parts of each
        notification's Message-ID and MIME boundary.
    :param concurrency: entries delivered at once.
    :param poll_interval: seconds between looks at the queue when idle.
    :param lease: seconds an entry stays claimed by one attempt.
    :param max_lifetime: seconds after its arrival when a message's pending
        recipients fail (expire) at their next failed attempt.
    :param delay_warning: seconds after its arrival when a message's sender
        gets one "delayed" notification about the recipients still pending;
        0 for none.
    :param hostname: the Reporting-MTA of notifications, and the domain of
        their ``MAILER-DAEMON`` address and Message-ID.
    :param bounce_size_limit: octets of the original message that a failure
        notification returns at most; a larger message, or one sent with
        ``RET=HDRS``, is returned as its header section only.
    :param double_bounce_recipient: who is told when a message from the
        null sender fails (it gets no notification itself; RFC 5321
        §4.5.5), with the header section of the message; ``None`` to only
        log it.
    :param run_blocking: runs a blocking read of the original message away
        from the reactor; by default in *clock*'s thread pool when it has
        one, else at once (as for a :class:`~twisted.internet.task.Clock`
        in tests).
    """

    log = Logger()

    def __init__(
        self,
        store: IQueueStore,
        router: IRouter,
        transports: Mapping[str, IDeliveryTransport],
        clock: IReactorTime,
        schedule: RetrySchedule = DEFAULT_SCHEDULE,
        random: _random.Random | None = None,
        concurrency: int = 20,
        poll_interval: float = 5.0,
        lease: float = 3600.0,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        delay_warning: float = DEFAULT_DELAY_WARNING,
        hostname: str = DEFAULT_HOSTNAME,
        bounce_size_limit: int = DEFAULT_BOUNCE_SIZE_LIMIT,
        double_bounce_recipient: Mailbox | None = None,
        run_blocking: BlockingRunner | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.transports = dict(transports)
        self.clock = clock
        self.schedule = schedule
        self.random = random or _random.Random()
        self.poll_interval = poll_interval
        self.lease = lease
        self.max_lifetime = max_lifetime
        self.delay_warning = delay_warning
        self.hostname = hostname
        self.bounce_size_limit = bounce_size_limit
        self.double_bounce_recipient = double_bounce_recipient
        self._run_blocking = run_blocking or _default_runner(clock)
        self._concurrency = concurrency
        self._timer: IDelayedCall | None = None
        self._pass: Deferred[bool] | None = None
        self._again = False
        self._subscribed = False
        self._in_flight: set[Deferred[None]] = set()

    def startService(self) -> None:
        super().startService()
        if not self._subscribed:
            self.store.notify_on_change(self.wake)
            self._subscribed = True
        self.wake()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting: list[Deferred[Any]] = list(self._in_flight)
        if self._pass is not None:
            waiting.append(self._pass)
        return gatherResults(waiting, consumeErrors=True).addCallback(lambda _: None)

    def wake(self) -> None:
        """Look at the queue soon: something new may be due."""
        if not self.running:
            return
        if self._pass is not None:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(0)
        else:
            self._timer = self.clock.callLater(0, self._run)

    def _run(self) -> None:
        self._timer = None
        self._again = False
        self._pass = Deferred.fromCoroutine(self._one_pass())
        self._pass.addErrback(self._pass_failed).addCallback(self._after_pass)

    def _pass_failed(self, failure: Failure) -> bool:
        if failure.check(StoreUnavailable):
            # Its database is down, say: one line each time, then try again.
            self.log.warn("Queue pass failed: {error}", error=failure.getErrorMessage())
        else:
            self.log.failure("Queue pass failed", failure)
        return False

    def _after_pass(self, full: bool) -> None:
        self._pass = None
        if not self.running:
            return
        delay = 0 if (full or self._again) else self.poll_interval
        self._timer = self.clock.callLater(delay, self._run)

    async def _one_pass(self) -> bool:
        """Claim one batch and start delivering it; ``True`` if it was full."""
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return False
        entries = await self.store.claim(self.clock.seconds(), free, self.lease)
        for entry in entries:
            d = Deferred.fromCoroutine(self._attempt(entry))
            d.addErrback(self._attempt_failed, entry.queue_id)
            self._in_flight.add(d)
            d.addCallback(self._done, d)
        return len(entries) >= free

    def _attempt_failed(self, failure: Failure, queue_id: str) -> None:
        self.log.failure("Delivery attempt for {queue_id} failed", failure, queue_id=queue_id)

    def _done(self, result: None, d: Deferred[None]) -> None:
        self._in_flight.discard(d)
        self.wake()

    # One attempt on a claimed entry.

    async def _attempt(self, entry: QueueEntry) -> None:
        try:
            await self._attempt_entry(entry)
        except NoSuchEntry:
            self.log.info("{queue_id} was deleted during its delivery attempt",
                          queue_id=entry.queue_id)
        except LeaseLost:
            # Another runner sharing the store took the entry over once the
            # lease ran out; it delivers the entry (again, perhaps).
            self.log.warn("{queue_id}: the lease ran out during the delivery attempt;"
                          " its outcome is left to the runner that took the entry over",
                          queue_id=entry.queue_id)
        except StoreUnavailable as error:
            self.log.warn("{queue_id}: could not record the delivery attempt: {error}",
                          queue_id=entry.queue_id, error=str(error))

    async def _attempt_entry(self, entry: QueueEntry) -> None:
        if entry.done:
            # Nothing is left to do: recording it lets the store remove it.
            await self.store.record(entry)
            return
        now = self.clock.seconds()
        if any(r.report is not None for r in entry.recipients):
            entry = await self._send_reports(entry, {}, now)
        if entry.pending:
            outcomes = await self._deliver_pending(entry)
            now = self.clock.seconds()
            entry = self._evolve(entry, outcomes, now)
            # Durable first: a crash from here on repeats what follows.
            await self.store.record(entry)
            entry = await self._send_reports(entry, outcomes, now)
        if entry.done:
            return
        if entry.pending:
            entry = await self._warn_if_delayed(entry, now)
        await self._reschedule(entry, now)

    async def _deliver_pending(self, entry: QueueEntry) -> dict[Mailbox, RecipientResult]:
        """Route and deliver every pending recipient; the result that counts for each."""
        results: dict[Mailbox, list[RecipientResult]] = {m: [] for m in entry.pending}
        groups: dict[Route, list[tuple[Mailbox, Mailbox]]] = {}
        for recipient in entry.pending:
            routed = await self._route(entry, recipient)
            if isinstance(routed, RecipientResult):
                results[recipient].append(routed)
                continue
            # The envelope's recipient, not the router's idea of it, is
            # what each result is counted for.
            for final, _, route in routed:
                groups.setdefault(route, []).append((final, recipient))
        for route, recipients in groups.items():
            originals = dict(recipients)
            for result in await self._deliver(entry, route, recipients):
                owner = next((m for m in (result.original, originals.get(result.recipient),
                                          result.recipient) if m in results), None)
                if owner is None:
                    self.log.warn("{queue_id}: transport {transport} reported on <{unknown}>,"
                                  " which it was not given", queue_id=entry.queue_id,
                                  transport=route.transport, unknown=str(result.recipient))
                    continue
                results[owner].append(result)
        for mailbox, found in results.items():
            if not found:
                found.append(RecipientResult(mailbox, DeliveryStatus.TRANSIENT, _NO_RESULT,
                                             original=mailbox))
        self._log_results(entry, results)
        return {mailbox: _decide(found) for mailbox, found in results.items()}

    async def _route(
        self, entry: QueueEntry, recipient: Mailbox
    ) -> Sequence[tuple[Mailbox, Mailbox, Route]] | RecipientResult:
        """
        The routes of *recipient*; or, when the router fails or gives none,
        a transient result, so that the recipient is tried again later.
        """
        try:
            # Most routers answer at once: no Deferred is made for them.
            routed: Sequence[tuple[Mailbox, Mailbox, Route]] = self.router.route(
                entry.envelope, recipient)
            if isinstance(routed, Deferred):
                routed = await routed
        except Exception as error:
            reply = error.reply if isinstance(error, MailframeError) else _ROUTER_FAILED
            if isinstance(error, MailframeError) and reply.is_transient:
                # A router that defers on purpose (a rate limit, a database
                # that is down) says why; that is not a bug to trace back.
                self.log.info("Router deferred <{mailbox}> of {queue_id}: {reply}",
                              mailbox=str(recipient), queue_id=entry.queue_id, reply=str(reply))
            else:
                self.log.failure("Router failed on <{mailbox}> of {queue_id}",
                                 mailbox=str(recipient), queue_id=entry.queue_id)
            return RecipientResult(recipient, DeliveryStatus.TRANSIENT,
                                   reply if reply.is_transient else _ROUTER_FAILED,
                                   original=recipient)
        if not routed:
            return RecipientResult(recipient, DeliveryStatus.TRANSIENT, _NO_ROUTE,
                                   original=recipient)
        return routed

    async def _deliver(
        self, entry: QueueEntry, route: Route, recipients: list[tuple[Mailbox, Mailbox]]
    ) -> list[RecipientResult]:
        def all_with(status: DeliveryStatus, reply: Reply) -> list[RecipientResult]:
            return [RecipientResult(r, status, reply, original=o) for r, o in recipients]

        if route.reject is not None:
            return all_with(DeliveryStatus.PERMANENT, route.reject)
        transport = self.transports.get(route.transport)
        if transport is None:
            return all_with(DeliveryStatus.TRANSIENT, Reply(451, "4.4.0", NO_TRANSPORT))
        try:
            return list(await transport.deliver(entry, recipients, route))
        except Exception:
            self.log.failure("Transport {transport} failed on {queue_id}",
                             transport=route.transport, queue_id=entry.queue_id)
            return all_with(DeliveryStatus.TRANSIENT, _TRANSPORT_FAILED)

    def _log_results(
        self, entry: QueueEntry, results: Mapping[Mailbox, Iterable[RecipientResult]]
    ) -> None:
        """One structured event for each recipient's outcome."""
        envelope = entry.envelope
        delay = self.clock.seconds() - envelope.received_at
        # What every line of the entry shares is made once, not once a
        # recipient; so is the recipient's text where it is the original.
        log, queue_id, sender = self.log, entry.queue_id, str(envelope.sender)
        client, size, attempt = envelope.client, entry.size, entry.attempts + 1
        for original, found in results.items():
            original_text = str(original)
            for result in found:
                # The line is made once, and the format names only it (see
                # SMTPServerProtocol._log_message); the fields stay in the event.
                recipient = (original_text if result.recipient == original
                             else str(result.recipient))
                status, reply = result.status.value, str(result.reply)
                log.info(
                    "{line}",
                    line=f"{queue_id}: to=<{recipient}> status={status} reply={reply}",
                    queue_id=queue_id, recipient=recipient, original=original_text,
                    sender=sender, status=status, reply=reply,
                    remote=result.remote, handoff=result.handoff.value,
                    client=client, size=size, delay=delay, attempt=attempt,
                )

    def _evolve(
        self, entry: QueueEntry, outcomes: Mapping[Mailbox, RecipientResult], now: float
    ) -> QueueEntry:
        """The entry after an attempt with *outcomes*, as the store records it."""
        envelope = entry.envelope
        attempts = entry.attempts + 1
        expires = envelope.received_at + self.max_lifetime
        # Drawn only for a recipient that waits: the random source may be
        # the system's, which costs a system call.
        next_attempt: float | None = None
        recipients = []
        for queued in entry.recipients:
            result = outcomes.get(queued.mailbox)
            if result is None:
                recipients.append(queued)
                continue
            # One evolve for each recipient: it is most of what this costs.
            if result.status is DeliveryStatus.DELIVERED:
                report = None
                if result.handoff is not Handoff.PASSED_ON:
                    report = self._owed(envelope, queued.mailbox, result.handoff.value)
                change: dict[str, Any] = {"state": RecipientState.DELIVERED, "report": report}
            elif result.status is DeliveryStatus.PERMANENT:
                change = {"state": RecipientState.BOUNCED,
                          "report": self._owed(envelope, queued.mailbox, "failed")}
            elif now >= expires:
                change = {"state": RecipientState.EXPIRED,
                          "report": self._owed(envelope, queued.mailbox, "failed")}
            else:
                if next_attempt is None:
                    next_attempt = self.schedule.next_attempt(
                        now, attempts, self.random, expires)
                change = {"next_attempt": next_attempt}
            recipients.append(attrs.evolve(queued, attempts=queued.attempts + 1,
                                           reply=result.reply, remote=result.remote, **change))
        evolved = attrs.evolve(entry, recipients=tuple(recipients), attempts=attempts)
        self._log_unreported(evolved, outcomes)
        return evolved

    def _owed(self, envelope: Envelope, mailbox: Mailbox, action: str) -> str | None:
        """
        The action of the notification that *action* for *mailbox* owes, or
        ``None``. A message from the null sender gets none (RFC 5321
        §4.5.5); its failures go to :attr:`double_bounce_recipient`, whatever
        NOTIFY said, unless it is the recipient that failed.
        """
        if isinstance(envelope.sender, NullPath):
            double = self.double_bounce_recipient
            owed = action == "failed" and double is not None and mailbox != double
            return action if owed else None
        return action if envelope.dsn_options(mailbox).wants(_KEYWORD[action]) else None

    def _log_unreported(
        self, entry: QueueEntry, outcomes: Mapping[Mailbox, RecipientResult]
    ) -> None:
        """Warn of failed recipients of a message from the null sender, who is never told."""
        if not isinstance(entry.envelope.sender, NullPath):
            return
        failed = [str(r.mailbox) for r in entry.recipients if r.mailbox in outcomes
                  and r.state in (RecipientState.BOUNCED, RecipientState.EXPIRED)]
        if failed:
            self.log.warn(
                "{queue_id}: delivery failed for {failed}; a message from the null sender"
                " gets no notification", queue_id=entry.queue_id, failed=", ".join(failed),
                double_bounce=str(self.double_bounce_recipient or ""),
            )

    async def _send_reports(
        self, entry: QueueEntry, outcomes: Mapping[Mailbox, RecipientResult], now: float
    ) -> QueueEntry:
        """
        Queue one notification for every recipient with a report owed, then
        record the reports as done. When the notification cannot be queued,
        the reports stay owed for the next attempt.
        """
        owed = [r for r in entry.recipients if r.report is not None]
        if not owed:
            return entry
        null_sender = isinstance(entry.envelope.sender, NullPath)
        to = self.double_bounce_recipient if null_sender else entry.envelope.sender
        if isinstance(to, Mailbox):
            reports = [self._report(entry, r, outcomes.get(r.mailbox), now) for r in owed]
            failure = any(r.report == "failed" for r in owed)
            if not await self._try_queue(entry, reports, to, failure and not null_sender, now):
                return entry
        cleared = tuple(attrs.evolve(r, report=None) for r in entry.recipients)
        entry = attrs.evolve(entry, recipients=cleared)
        await self.store.record(entry)
        return entry

    def _report(
        self,
        entry: QueueEntry,
        queued: QueuedRecipient,
        outcome: RecipientResult | None,
        now: float,
    ) -> RecipientReport:
        """
        The report owed for *queued*: about the final recipient whose
        result decided it in this attempt, or, for a report owed from an
        earlier attempt, about the recipient itself.
        """
        action = queued.report or "failed"
        final = queued.mailbox
        last_attempt = None
        if outcome is not None:
            final = outcome.recipient
            last_attempt = now
        return self._recipient_report(entry, queued, action, final, last_attempt)

    def _recipient_report(
        self,
        entry: QueueEntry,
        queued: QueuedRecipient,
        action: str,
        final: Mailbox,
        last_attempt: float | None,
        will_retry_until: float | None = None,
    ) -> RecipientReport:
        original = entry.envelope.dsn_options(queued.mailbox).orcpt
        if original is None and final != queued.mailbox:
            original = f"{_address_type(queued.mailbox)};{queued.mailbox}"
        return RecipientReport(
            final_recipient=final,
            action=action,
            status=_status(queued.reply, action),
            original=original,
            remote_mta=queued.remote,
            diagnostic=queued.reply,
            last_attempt=last_attempt,
            will_retry_until=will_retry_until,
        )

    async def _warn_if_delayed(self, entry: QueueEntry, now: float) -> QueueEntry:
        """
        Once a message has waited :attr:`delay_warning` seconds, queue one
        "delayed" notification (RFC 3464 §2.3.3) about its pending recipients
        that asked for one, and record that it was sent.
        """
        envelope = entry.envelope
        if self.delay_warning <= 0 or entry.warned:
            return entry
        if now - envelope.received_at < self.delay_warning:
            return entry
        until = envelope.received_at + self.max_lifetime
        reports = [
            self._recipient_report(entry, r, "delayed", r.mailbox, now, will_retry_until=until)
            for r in entry.recipients
            if r.state is RecipientState.PENDING
            and envelope.dsn_options(r.mailbox).wants("DELAY")
        ]
        if reports and isinstance(envelope.sender, Mailbox):
            if not await self._try_queue(entry, reports, envelope.sender, False, now):
                return entry
        entry = attrs.evolve(entry, warned=True)
        await self.store.record(entry)
        return entry

    async def _reschedule(self, entry: QueueEntry, now: float) -> None:
        """Defer the entry until its pending recipients are next due, with the first reply."""
        pending = [r for r in entry.recipients if r.state is RecipientState.PENDING]
        if pending:
            when = min(r.next_attempt for r in pending)
            reason = str(pending[0].reply) if pending[0].reply is not None else "pending"
        else:
            when = self.schedule.next_attempt(now, entry.attempts, self.random)
            reason = "a delivery status notification is not queued yet"
        await self.store.reschedule(entry.queue_id, when, reason)

    # Writing a notification.

    async def _try_queue(
        self,
        entry: QueueEntry,
        reports: Sequence[RecipientReport],
        to: Mailbox,
        full: bool,
        now: float,
    ) -> bool:
        """:meth:`_queue_report`, logging a failure; ``True`` if it was queued."""
        try:
            await self._queue_report(entry, reports, to, full, now)
        except NoSuchEntry:
            raise
        except Exception:
            self.log.failure("Could not queue a notification about {queue_id} to <{to}>",
                             queue_id=entry.queue_id, to=str(to))
            return False
        return True

    async def _queue_report(
        self,
        entry: QueueEntry,
        reports: Sequence[RecipientReport],
        to: Mailbox,
        full: bool,
        now: float,
    ) -> str:
        """
        Write and commit one notification about *entry* to *to*, returning
        the whole original message when *full* allows it and it fits in
        :attr:`bounce_size_limit`, else its header section.
        """
        envelope = entry.envelope
        prefix = b"".join(line.encode("utf-8") + b"\r\n" for line in envelope.added_headers)
        limit = self.bounce_size_limit
        # RFC 3461 §4.3: RET=HDRS asks for the header section only.
        whole = full and envelope.ret != "HDRS" and entry.size + len(prefix) <= limit
        file = await self.store.open_message(entry.queue_id)
        original, returned_whole = await self._run_blocking(
            partial(read_original, file, prefix, whole, limit))
        report = DeliveryReport(
            reporting_mta=self.hostname,
            queue_id=entry.queue_id,
            envelope=envelope,
            recipients=tuple(reports),
            created_at=now,
            message_id=f"<{entry.queue_id}.{self._token()}@{self.hostname}>",
            to=to,
        )
        # "=_" occurs in no base64 or quoted-printable text.
        boundary = f"=_{self._token()}{self._token()}"
        writer = self.store.open_writer()
        try:
            for chunk in render_dsn(report, original, returned_whole, boundary):
                writer.write(chunk)
            # RFC 3461 §6.1: from the null sender, so that nothing reports on
            # the report; NOTIFY=NEVER says the same to the next hops.
            queue_id: str = await writer.commit(Envelope(
                sender=NULL_PATH,
                recipients=(to,),
                body=dsn_body_type(report, original, returned_whole),
                smtputf8=report.smtputf8,
                received_at=now,
                dsn=((to, _NOTIFY_NEVER),),
            ))
        except BaseException:
            writer.abort()
            raise
        self.log.info(
            "{queue_id}: queued notification {notification} to <{to}> ({actions})",
            queue_id=entry.queue_id, notification=queue_id, to=str(to),
            actions=", ".join(sorted({r.action for r in reports})),
        )
        self.wake()
        return queue_id

    def _token(self) -> str:
        return f"{self.random.getrandbits(64):016x}"
