"""
The listening service: it binds while twistd still has its privileges, and
accepts connections only once the service starts.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

from mailframe.services.listener import ListeningService


class FakePort:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.stopped = False

    def startReading(self) -> None:
        self.calls.append("start")

    def stopReading(self) -> None:
        self.calls.append("stop")

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


class FakeEndpoint:
    def __init__(self) -> None:
        self.port = FakePort()
        self.listens = 0

    def listen(self, factory: Any) -> Deferred[Any]:
        self.listens += 1
        return succeed(self.port)


class ListeningServiceTests(SynchronousTestCase):
    def make(self) -> tuple[ListeningService, FakeEndpoint]:
        endpoint = FakeEndpoint()
        return ListeningService(endpoint, Factory.forProtocol(Protocol), "tcp:25"), endpoint

    def test_binds_early_and_accepts_when_started(self) -> None:
        service, endpoint = self.make()
        service.privilegedStartService()
        self.assertEqual(endpoint.listens, 1)
        self.assertEqual(endpoint.port.calls, ["stop"])
        self.assertIs(self.successResultOf(service.listening), endpoint.port)
        service.startService()
        self.assertEqual(endpoint.listens, 1)
        self.assertEqual(endpoint.port.calls, ["stop", "start"])
        self.successResultOf(service.stopService())
        self.assertTrue(endpoint.port.stopped)

    def test_without_privileged_start_listens_at_start(self) -> None:
        service, endpoint = self.make()
        service.startService()
        self.assertEqual(endpoint.listens, 1)
        self.assertEqual(endpoint.port.calls, ["start"])
        self.assertIs(self.successResultOf(service.listening), endpoint.port)
