"""
A nameserver on loopback for the resolver tests: UDP and TCP on one free
port of 127.0.0.1, each served by a thread of its own, answering from
:class:`tests.routing._zone.Zone`.

Some names behave as a broken or hostile network would; the first label
of the name asked decides:

- ``servfail``: SERVFAIL;
- ``timeout``: no answer at all;
- ``nochase``: the CNAME alone, without the records of its target;
- ``spoof-id``, ``spoof-question``, ``spoof-source``: first an answer
  pointing at :data:`SPOOFED` that has the wrong id, the wrong question, or
  comes from another port, then the true answer;
- ``spoof-only``: the three spoofed answers and never the true one;
- ``malformed``: the right id and question, then bytes that do not parse.

Over UDP an answer that does not fit the query's EDNS payload is truncated,
with TC set; over TCP every answer is whole.
"""

from __future__ import annotations

import socket
import struct
import threading

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.routing._zone import Zone, udp_wire

__all__ = ["SPOOFED", "DNSTestServer"]

#: The address that spoofed answers carry.
SPOOFED = "203.0.113.66"
# What a spoofed answer says, by the type asked.
_FORGED = {
    dns.rdatatype.A: SPOOFED,
    dns.rdatatype.AAAA: "2001:db8:bad::66",
    dns.rdatatype.MX: "10 spoofed.example.",
    dns.rdatatype.TXT: '"spoofed"',
}

# How often the serving threads look at the stop flag, in seconds.
_POLL = 0.05
# The most messages one TCP connection may carry, and the longest a peer
# may stay silent on it: the server is bounded whatever a client does.
_TCP_MESSAGES = 16
_TCP_IDLE = 2.0


class DNSTestServer:
    """
    Start with :meth:`start`, stop with :meth:`stop`.

    :ivar port: the port of both UDP and TCP, once started.
    :ivar queries: ``(transport, name, type)`` of each query received.
    """

    def __init__(self, zone: Zone | None = None) -> None:
        self.zone = zone if zone is not None else Zone()
        self.port = 0
        self.queries: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._spoofer: socket.socket | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> None:
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(8)
            break
        else:
            raise OSError("no port free for both UDP and TCP on 127.0.0.1")
        udp.settimeout(_POLL)
        tcp.settimeout(_POLL)
        self._udp, self._tcp, self.port = udp, tcp, port
        self._spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._spoofer.bind(("127.0.0.1", 0))
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, name=f"dns-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in (self._udp, self._tcp, self._spoofer):
            if sock is not None:
                sock.close()

    def asked(self, transport: str | None = None) -> list[tuple[str, str, str]]:
        with self._lock:
            return [q for q in self.queries if transport is None or q[0] == transport]

    # -- serving -------------------------------------------------------

    def _serve_udp(self) -> None:
        assert self._udp is not None
        while not self._stop.is_set():
            try:
                data, peer = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            query = self._parse(data, "udp")
            if query is None:
                continue
            for sock, datagram in self._udp_answers(query):
                try:
                    sock.sendto(datagram, peer)
                except OSError:
                    pass

    def _serve_tcp(self) -> None:
        assert self._tcp is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(_POLL)
                try:
                    self._serve_connection(conn)
                except OSError:
                    pass

    def _serve_connection(self, conn: socket.socket) -> None:
        for _ in range(_TCP_MESSAGES):
            head = self._read_exactly(conn, 2)
            if head is None:
                return
            data = self._read_exactly(conn, struct.unpack("!H", head)[0])
            if data is None:
                return
            query = self._parse(data, "tcp")
            if query is None:
                return
            label = _label(query)
            if label == "timeout":
                continue
            wire = self._answer(query, label).to_wire(max_size=65535)
            conn.sendall(struct.pack("!H", len(wire)) + wire)

    def _read_exactly(self, conn: socket.socket, size: int) -> bytes | None:
        """*size* octets, or ``None`` at the end, when idle or when stopping."""
        data = b""
        idle = 0.0
        while len(data) < size:
            if self._stop.is_set() or idle >= _TCP_IDLE:
                return None
            try:
                chunk = conn.recv(size - len(data))
            except TimeoutError:
                idle += _POLL
                continue
            if not chunk:
                return None
            data += chunk
        return data

    def _parse(self, data: bytes, transport: str) -> dns.message.Message | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None
        if len(query.question) != 1:
            return None
        question = query.question[0]
        with self._lock:
            self.queries.append(
                (transport, question.name.to_text(True), dns.rdatatype.to_text(question.rdtype))
            )
        return query

    def _answer(self, query: dns.message.Message, label: str) -> dns.message.Message:
        if label == "servfail":
            response = dns.message.make_response(query, recursion_available=True)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        return self.zone.respond(query, chase=label != "nochase")

    def _udp_answers(self, query: dns.message.Message) -> list[tuple[socket.socket, bytes]]:
        assert self._udp is not None and self._spoofer is not None
        label = _label(query)
        if label == "timeout":
            return []
        true = self._answer(query, label)
        if label == "malformed":
            return [(self._udp, true.to_wire()[: 12 + _question_length(query)] + b"\xff" * 7)]
        spoofs = {
            "spoof-id": [(self._udp, _spoofed(query, id_offset=1))],
            "spoof-question": [(self._udp, _spoofed(query, other_question=True))],
            "spoof-source": [(self._spoofer, _spoofed(query))],
        }
        if label == "spoof-only":
            return [answer for answers in spoofs.values() for answer in answers]
        return [*spoofs.get(label, []), (self._udp, udp_wire(true))]


def _label(query: dns.message.Message) -> str:
    return str(query.question[0].name.labels[0].decode("ascii", "replace")).lower()


def _question_length(query: dns.message.Message) -> int:
    # The question section: the name, then two octets each of type and class.
    return len(query.question[0].name.to_wire()) + 4


def _spoofed(query: dns.message.Message, id_offset: int = 0, other_question: bool = False) -> bytes:
    """An answer to *query* pointing at SPOOFED, wrong as asked."""
    forged = dns.message.make_response(query, recursion_available=True)
    forged.id = (query.id + id_offset) % 65536
    question = query.question[0]
    owner = question.name
    if other_question:
        owner = dns.name.from_text("elsewhere", origin=owner.parent())
        forged.question = [dns.rrset.RRset(owner, question.rdclass, question.rdtype)]
    text = _FORGED.get(question.rdtype, SPOOFED)
    rdtype = question.rdtype if question.rdtype in _FORGED else dns.rdatatype.A
    forged.answer.append(dns.rrset.from_text(owner, 300, dns.rdataclass.IN, rdtype, text))
    return forged.to_wire()
