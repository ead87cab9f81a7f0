"""
The queue runner: takes due entries from the store, routes each pending
recipient, hands each group of recipients to its transport, and records the
outcome durably.
"""

from __future__ import annotations

import random as _random
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe.address import Mailbox
from mailframe.envelope import DeliveryStatus, QueueEntry, RecipientResult, Route
from mailframe.interfaces import IDeliveryTransport, IQueueStore, IRouter
from mailframe.reply import Reply
from mailframe.services.schedule import DEFAULT_SCHEDULE, RetrySchedule

__all__ = ["QueueRunner"]

#: A recipient whose route names a transport that does not exist stays
#: queued with this reply.
NO_TRANSPORT = "no such delivery transport"


class QueueRunner(Service):
    """
    Delivers what is due in the queue, a batch at a time, and sleeps until
    woken or until the next poll.

    :param store: the queue.
    :param router: decides each recipient's route.
    :param transports: the delivery transports by name.
    :param clock: for scheduling.
    :param schedule: the retry schedule.
    :param random: jitter source.
    :param concurrency: entries delivered at once.
    :param poll_interval: seconds between looks at the queue when idle.
    :param lease: seconds an entry stays claimed by one attempt.
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
    ) -> None:
        self.store = store
        self.router = router
        self.transports = dict(transports)
        self.clock = clock
        self.schedule = schedule
        self.random = random or _random.Random()
        self.poll_interval = poll_interval
        self.lease = lease
        self._concurrency = concurrency
        self._timer: IDelayedCall | None = None
        self._pass: Deferred[bool] | None = None
        self._again = False
        self._in_flight: set[Deferred[None]] = set()

    def startService(self) -> None:
        super().startService()
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

    async def _attempt(self, entry: QueueEntry) -> None:
        groups: dict[Route, list[tuple[Mailbox, Mailbox]]] = {}
        for recipient in entry.pending:
            for final, original, route in await self.router.route(entry.envelope, recipient):
                groups.setdefault(route, []).append((final, original))
        results: list[RecipientResult] = []
        for route, recipients in groups.items():
            results.extend(await self._deliver(entry, route, recipients))
        for result in results:
            self.log.info(
                "{queue_id}: to=<{recipient}> status={status} reply={reply}",
                queue_id=entry.queue_id, recipient=str(result.recipient),
                original=str(result.original or result.recipient),
                sender=str(entry.envelope.sender), status=result.status.value,
                reply=str(result.reply), remote=result.remote,
                client=entry.envelope.client, size=entry.size,
            )
        await self.store.record(entry.queue_id, results)
        transient = [r for r in results if r.status is DeliveryStatus.TRANSIENT]
        if transient:
            delay = self.schedule.delay(entry.attempts + 1, self.random)
            await self.store.reschedule(entry.queue_id, self.clock.seconds() + delay,
                                        str(transient[0].reply))

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
            return all_with(DeliveryStatus.TRANSIENT,
                            Reply(451, "4.3.0", "Error in the delivery transport"))


