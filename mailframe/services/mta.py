"""
:class:`MailService`: the parts of a mail transfer agent, composed into one
Twisted service that starts and stops them in the right order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe.interfaces import IQueueStore
from mailframe.protocols._tls import ServerTLS
from mailframe.protocols.server import SMTPServerFactory
from mailframe.services.listener import ListeningService
from mailframe.services.queuerunner import QueueRunner
from mailframe.stores import StoreUnavailable

__all__ = ["MailService", "Stoppable"]


class Stoppable(Protocol):
    """A part that the service stops when it stops: ``stop()`` returns a Deferred."""

    def stop(self) -> Deferred[None]: ...

#: Default seconds that connected clients get to finish on shutdown.
DEFAULT_GRACE = 30.0


class MailService(MultiService):
    """
    Runs the queue store's recovery, then the listeners and the queue
    runner.

    On stop it stops listening, lets connected sessions finish for the grace
    period (every new command gets ``421 4.3.2``; a message whose final dot
    has arrived is committed and acknowledged), closes the rest with an
    unsolicited 421, and then stops the queue runner.

    :param store: the queue store.
    :param listeners: the listening services, each with its
        :class:`~mailframe.protocols.server.SMTPServerFactory`.
    :param runner: the queue runner.
    :param grace: seconds given to connected sessions on shutdown.
    :param tls: the STARTTLS certificates, which :meth:`reload` reads again.
    :param stoppables: parts to stop last, once the queue runner is done,
        such as a transport's pool of outbound connections.
    :param reloadables: parts whose ``reload()`` :meth:`reload` calls, such
        as a router's tables.

    :ivar ready: fires once the queue is recovered and every listener
        listens; fails if recovery failed or a listener could not listen.
    """

    log = Logger()

    def __init__(
        self,
        store: IQueueStore,
        listeners: Sequence[ListeningService],
        runner: QueueRunner,
        grace: float = DEFAULT_GRACE,
        tls: ServerTLS | None = None,
        stoppables: Sequence[Stoppable] = (),
        reloadables: Sequence[Any] = (),
    ) -> None:
        super().__init__()
        self.tls = tls
        self.stoppables = list(stoppables)
        self.reloadables = list(reloadables)
        self.store = store
        self.listeners = list(listeners)
        self.runner = runner
        self.grace = grace
        self.ready: Deferred[None] = Deferred()
        for service in self.listeners:
            service.setServiceParent(self)
        runner.setServiceParent(self)

    def startService(self) -> None:
        # Children start only after recovery: it clears partial writes, and
        # must not race new sessions writing.
        self.running = True
        d: Deferred[int] = self.store.recover()

        def recovered(count: int) -> Deferred[list[IListeningPort]]:
            self.log.info("Queue recovered with {count} entries", count=count)
            if self.running:
                MultiService.startService(self)
            return gatherResults([s.listening for s in self.listeners])

        def failed(failure: Failure) -> None:
            if failure.check(StoreUnavailable):
                # Not a bug: the message says what is wrong and what to do.
                self.log.critical("Could not start; not serving: {error}",
                                  error=failure.getErrorMessage())
            else:
                self.log.failure("Could not start; not serving", failure)
            self.ready.errback(failure)

        d.addCallback(recovered).addCallbacks(lambda _: self.ready.callback(None), failed)

    def reload(self) -> None:
        """
        Read the TLS certificate and key again, and the tables of the parts
        that have them (on SIGHUP). Sessions that are connected keep their
        certificate; new ones get the new one. A part that fails to reload
        keeps what it had, and the failure is logged: no mail is dropped.
        """
        if self.tls is not None:
            try:
                self.tls.reload()
            except Exception:
                self.log.failure("Could not reload the TLS certificate; keeping the old one")
        for part in self.reloadables:
            try:
                part.reload()
            except Exception:
                self.log.failure("Could not reload {part!r}; keeping what it had", part=part)

    def addresses(self) -> list[IAddress]:
        """The addresses the listeners listen on (once :attr:`ready`)."""
        return [s.port.getHost() for s in self.listeners if s.port is not None]

    def stopService(self) -> Deferred[None]:
        self.running = False
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        stops = [service.stopService() for service in self.listeners if service.running]
        await gatherResults(stops, consumeErrors=True)
        await gatherResults(
            [service.factory.shut_down(self.grace) for service in self.listeners
             if isinstance(service.factory, SMTPServerFactory)],
            consumeErrors=True,
        )
        if self.runner.running:
            await self.runner.stopService()
        await gatherResults([part.stop() for part in self.stoppables], consumeErrors=True)
