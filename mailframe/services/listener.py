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

    def startService(self) -> None:
        super().startService()

        def listened(port: IListeningPort) -> IListeningPort:
            self.port = port
            return port

        self.endpoint.listen(self.factory).addCallback(listened).chainDeferred(self.listening)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return port.stopListening() or succeed(None)
