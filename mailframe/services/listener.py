"""A service that listens on one server endpoint and knows its port."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory

__all__ = ["ListeningService"]


class ListeningService(Service):
    """
    Listens on *endpoint* with *factory* while running.

    :ivar listening: a Deferred that fires with the
        :class:`~twisted.internet.interfaces.IListeningPort` once listening,
        or fails if the endpoint could not listen.
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, factory: Factory, description: str = ""
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()
        self._started: Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        """
        Listen now, while twistd still has the privileges that a port below
        1024 needs (before ``--uid``/``--gid`` take effect), but accept no
        connection until :meth:`startService`: the queue must recover
        first. Connections that arrive meanwhile wait in the backlog.
        """
        super().privilegedStartService()
        self._listen(accepting=False)

    def startService(self) -> None:
        super().startService()
        if self._started is None:
            self._listen(accepting=True)
        elif self.port is not None:
            _accept(self.port, True)

    def _listen(self, accepting: bool) -> None:
        def listened(port: IListeningPort) -> IListeningPort:
            self.port = port
            _accept(port, accepting or bool(self.running))
            return port

        self._started = self.endpoint.listen(self.factory).addCallback(listened)
        self._started.chainDeferred(self.listening)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return port.stopListening() or succeed(None)


def _accept(port: IListeningPort, accepting: bool) -> None:
    """Start or stop accepting connections on *port*, where it can."""
    method = getattr(port, "startReading" if accepting else "stopReading", None)
    if method is not None:
        method()
