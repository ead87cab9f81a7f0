"""
write_now: a reply goes straight to the socket of an idle plain TCP
connection, and through the transport's buffer in every other case, with
the bytes in order either way. Over real loopback connections.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import main, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.tcp import Client, Server
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mailframe.protocols._write import write_now

_Test = Generator[Deferred[Any], Any, None]


class Collect(Protocol):
    """The client side: everything received, until the server closes."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.data: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)
        received = b"".join(self.data)
        if len(received) >= self.expected and not self.done.called:
            self.done.callback(received)


class Act(Protocol):
    """The server side: runs the test's function on the connected transport."""

    def __init__(self, act: Callable[[Server], None]) -> None:
        self.act = act

    def connectionMade(self) -> None:
        self.act(self.transport)  # type: ignore[arg-type]


class WriteNowTests(TestCase):
    timeout = 30
    @inlineCallbacks
    def exchange(self, act: Callable[[Server], None], expected: int) -> _Test:
        """Connect over loopback, let *act* write, and return what arrived."""
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: Act(act)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Collect(expected)
        factory = ClientFactory.forProtocol(lambda: client)
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        self.addCleanup(connector.disconnect)
        received = yield client.done
        return received

    def watch_buffering(self, transport: Server, calls: list[str]) -> None:
        real = transport.startWriting

        def start() -> None:
            calls.append("startWriting")
            real()

        transport.startWriting = start  # type: ignore[method-assign]

    @inlineCallbacks
    def test_an_idle_connection_is_written_at_once(self) -> _Test:
        calls: list[str] = []
        seen: list[bool] = []

        def act(transport: Server) -> None:
            self.watch_buffering(transport, calls)
            write_now(transport, b"250 2.0.0 Ok\r\n")
            seen.append(bool(transport.dataBuffer or transport._tempDataBuffer))

        received = yield self.exchange(act, 14)
        self.assertEqual(received, b"250 2.0.0 Ok\r\n")
        # Nothing was buffered, and the reactor was not asked to write.
        self.assertEqual((calls, seen), ([], [False]))

    @inlineCallbacks
    def test_after_buffered_data_it_waits_its_turn(self) -> _Test:
        calls: list[str] = []
        blob = bytes(range(256)) * 40_000  # 10 MB: more than a socket takes at once

        def act(transport: Server) -> None:
            transport.write(blob)
            self.watch_buffering(transport, calls)
            write_now(transport, b"tail")

        received = yield self.exchange(act, len(blob) + 4)
        self.assertEqual(received, blob + b"tail")
        self.assertEqual(calls, ["startWriting"])

    @inlineCallbacks
    def test_what_the_socket_does_not_take_is_buffered(self) -> _Test:
        def act(transport: Server) -> None:
            real_send = transport.writeSomeData
            transport.writeSomeData = lambda data: 3  # type: ignore[method-assign]
            write_now(transport, b"250 partial\r\n")
            transport.writeSomeData = real_send  # type: ignore[method-assign]

        received = yield self.exchange(act, 10)
        # The first 3 octets were "sent" by the stand-in; the rest was buffered.
        self.assertEqual(received, b" partial\r\n")

    @inlineCallbacks
    def test_a_lost_connection_leaves_the_data_to_write(self) -> _Test:
        written: list[bytes] = []

        def act(transport: Server) -> None:
            real_send, real_write = transport.writeSomeData, transport.write
            # The first send finds the connection lost; the reactor's later
            # ones (of the buffered data) do not, so the data still arrives.
            transport.writeSomeData = lambda data: main.CONNECTION_LOST  # type: ignore

            def write(data: bytes) -> None:
                written.append(data)
                real_write(data)

            transport.write = write  # type: ignore[method-assign]
            write_now(transport, b"421 bye\r\n")
            transport.writeSomeData = real_send  # type: ignore[method-assign]

        received = yield self.exchange(act, 9)
        self.assertEqual((written, received), ([b"421 bye\r\n"], b"421 bye\r\n"))

    @inlineCallbacks
    def test_tls_and_closing_connections_are_buffered(self) -> _Test:
        calls: list[str] = []

        def act(transport: Server) -> None:
            real_send, real_write = transport.writeSomeData, transport.write
            transport.writeSomeData = lambda data: calls.append("direct")  # type: ignore
            transport.write = lambda data: calls.append("write")  # type: ignore
            transport.TLS = True  # as startTLS() sets it
            write_now(transport, b"x")
            transport.TLS = False
            transport.disconnecting = True
            write_now(transport, b"x")
            transport.disconnecting = False
            transport.writeSomeData, transport.write = real_send, real_write  # type: ignore
            write_now(transport, b"ok")

        received = yield self.exchange(act, 2)
        self.assertEqual((calls, received), (["write", "write"], b"ok"))

    @inlineCallbacks
    def test_a_client_connection_is_written_at_once(self) -> _Test:
        server = Collect(6)
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        calls: list[str] = []

        def act(transport: Any) -> None:
            self.assertIsInstance(transport, Client)
            self.watch_buffering(transport, calls)
            write_now(transport, b"EHLO\r\n")

        connector = reactor.connectTCP(
            "127.0.0.1", port.getHost().port, ClientFactory.forProtocol(lambda: Act(act)))
        self.addCleanup(connector.disconnect)
        received = yield server.done
        self.assertEqual((received, calls), (b"EHLO\r\n", []))

    def test_other_transports_get_write(self) -> None:
        transport = StringTransport()
        write_now(transport, b"250 OK\r\n")
        self.assertEqual(transport.value(), b"250 OK\r\n")
