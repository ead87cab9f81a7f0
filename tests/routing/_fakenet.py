"""
A reactor for resolver tests without sockets or real time: a
:class:`~twisted.internet.testing.MemoryReactorClock` whose UDP datagrams go
to nameservers scripted in Python, and come back after a little latency on
its clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import dns.message
import dns.rdatatype
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock

from tests.routing._zone import Zone, udp_wire

__all__ = ["LATENCY", "Datagram", "FakeNetwork", "Sent", "answers", "rcode_server", "zone_server"]

#: Seconds between a query and its answer.
LATENCY = 0.01

#: A datagram a scripted nameserver sends back: its bytes, and its source
#: address, or ``None`` for the nameserver's own.
Datagram = tuple[bytes, tuple[str, int] | None]
Nameserver = Callable[[dns.message.Message], list[Datagram]]


@attrs.frozen
class Sent:
    """One query as it left: from which local port, to whom, what."""

    port: int
    interface: str
    to: tuple[str, int]
    query: dns.message.Message


class FakeUDPPort:
    """A UDP port of :class:`FakeNetwork`."""

    def __init__(
        self, network: FakeNetwork, protocol: DatagramProtocol, interface: str, number: int
    ) -> None:
        self.network = network
        self.protocol = protocol
        self.interface = interface
        self.number = number
        self.closed = False

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.network.deliver(self, data, addr)

    def stopListening(self) -> None:
        self.closed = True

    def getHost(self) -> IPv4Address | IPv6Address:
        if ":" in self.interface:
            return IPv6Address("UDP", "::", self.number)
        return IPv4Address("UDP", "0.0.0.0", self.number)

    def receive(self, data: bytes, source: tuple[str, int]) -> None:
        if not self.closed:
            self.protocol.datagramReceived(data, source)


class FakeNetwork(MemoryReactorClock):
    """
    :ivar nameservers: address to a callable taking each query and returning
        the datagrams to send back; a query to an address not listed is lost.
    :ivar sent: every query sent, in order.
    :ivar ports: every UDP port opened, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nameservers: dict[tuple[str, int], Nameserver] = {}
        self.sent: list[Sent] = []
        self.ports: list[FakeUDPPort] = []
        self._next_port = 40000

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPPort:
        assert port == 0, "the resolver lets the system choose its port"
        self._next_port += 7
        opened = FakeUDPPort(self, protocol, interface, self._next_port)
        self.ports.append(opened)
        protocol.makeConnection(opened)  # type: ignore[arg-type]
        return opened

    def deliver(self, port: FakeUDPPort, data: bytes, to: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        self.sent.append(Sent(port.number, port.interface, to, query))
        server = self.nameservers.get(to)
        if server is None:
            return
        for datagram, source in server(query):
            self.callLater(LATENCY, port.receive, datagram, source or to)

    def asked(self) -> list[tuple[str, str]]:
        """``(name, type)`` of every query sent."""
        questions = [sent.query.question[0] for sent in self.sent]
        return [(q.name.to_text(True), dns.rdatatype.to_text(q.rdtype)) for q in questions]

    def open_ports(self) -> list[FakeUDPPort]:
        return [port for port in self.ports if not port.closed]


def zone_server(zone: Zone, chase: bool = True) -> Nameserver:
    """A nameserver answering from *zone*."""

    def answer(query: dns.message.Message) -> list[Datagram]:
        return [(udp_wire(zone.respond(query, chase)), None)]

    return answer


def rcode_server(rcode: int) -> Nameserver:
    """A nameserver answering every query with *rcode*."""

    def answer(query: dns.message.Message) -> list[Datagram]:
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        return [(response.to_wire(), None)]

    return answer


def answers(*wires: Callable[[dns.message.Message], Any]) -> Nameserver:
    """A nameserver sending, for each query, what each of *wires* makes of it."""

    def answer(query: dns.message.Message) -> list[Datagram]:
        out: list[Datagram] = []
        for make in wires:
            made = make(query)
            out.append(made if isinstance(made, tuple) else (made, None))
        return out

    return answer
