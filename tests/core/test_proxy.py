"""
The PROXY protocol header (HAProxy's ``proxy-protocol.txt``): version 1
text (§2.1) and version 2 binary (§2.2), fed whole, one byte at a time and
with the proxied protocol's bytes behind it; headers rendered here by the
letter of the spec are parsed back to what was rendered.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailframe.core import (
    NEED_DATA,
    HeaderReceived,
    ProxyAddress,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
)
from mailframe.core._proxy import MAX_V1_LINE, MAX_V2_LENGTH, V2_SIGNATURE

LOCAL, PROXY = 0x0, 0x1
UNSPEC, TCP4, TCP6, UNIX_STREAM, UDP4 = 0x00, 0x11, 0x21, 0x31, 0x12


def render_v1(header: ProxyHeader) -> bytes:
    """§2.1, as a sender writes it."""
    if header.source is None or header.destination is None:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP6" if header.source.ipv6 else "TCP4"
    return (f"PROXY {family} {header.source.host} {header.destination.host}"
            f" {header.source.port} {header.destination.port}\r\n").encode("ascii")


def render_v2(header: ProxyHeader, tlvs: bytes = b"", command: int | None = None) -> bytes:
    """§2.2, as a sender writes it; a header without addresses is LOCAL."""
    source, destination = header.source, header.destination
    if source is None or destination is None:
        block, family = b"", UNSPEC
        command = LOCAL if command is None else command
    else:
        packed = [ipaddress.ip_address(a.host).packed for a in (source, destination)]
        block = b"".join(packed) + struct.pack("!HH", source.port, destination.port)
        family = TCP6 if source.ipv6 else TCP4
        command = PROXY if command is None else command
    block += tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


def v2(command: int, family: int, block: bytes, version: int = 2) -> bytes:
    """A version 2 header with every field chosen."""
    return (V2_SIGNATURE + bytes([version << 4 | command, family])
            + struct.pack("!H", len(block)) + block)


def parse(data: bytes) -> HeaderReceived:
    """Parse *data* in one piece; it must hold a whole header."""
    result = ProxyHeaderParser().receive_data(data)
    assert isinstance(result, HeaderReceived)
    return result


def parse_bytewise(data: bytes) -> HeaderReceived:
    """Feed *data* one byte at a time; the header is whole at its last byte."""
    parser = ProxyHeaderParser()
    for index in range(len(data) - 1):
        assert parser.receive_data(data[index : index + 1]) is NEED_DATA, index
    result = parser.receive_data(data[-1:])
    assert isinstance(result, HeaderReceived)
    return result


def refused(data: bytes) -> str:
    with pytest.raises(ProxyHeaderError) as caught:
        ProxyHeaderParser().receive_data(data)
    return str(caught.value)


TCP4_HEADER = ProxyHeader(1, ProxyAddress("192.0.2.10", 56324), ProxyAddress("198.51.100.1", 25))
TCP6_HEADER = ProxyHeader(1, ProxyAddress("2001:db8::1", 1), ProxyAddress("2001:db8::25", 25))

V1_CASES = [
    (b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 25\r\n", TCP4_HEADER),
    (b"PROXY TCP6 2001:db8::1 2001:db8::25 1 25\r\n", TCP6_HEADER),
    (b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 2001:db8::25 1 25\r\n", TCP6_HEADER),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1)),
    # §2.1: whatever follows UNKNOWN is ignored.
    (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
     b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n", ProxyHeader(1)),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
     ProxyHeader(1, ProxyAddress("0.0.0.0", 0), ProxyAddress("255.255.255.255", 65535))),
]


# -- Version 1 -------------------------------------------------------------------


@pytest.mark.parametrize(("line", "header"), V1_CASES)
def test_v1_whole(line: bytes, header: ProxyHeader) -> None:
    assert parse(line) == HeaderReceived(header, b"")


@pytest.mark.parametrize(("line", "header"), V1_CASES)
def test_v1_one_byte_at_a_time(line: bytes, header: ProxyHeader) -> None:
    assert parse_bytewise(line) == HeaderReceived(header, b"")


@pytest.mark.parametrize(("line", "header"), V1_CASES)
def test_v1_with_smtp_behind_it(line: bytes, header: ProxyHeader) -> None:
    smtp = b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"
    assert parse(line + smtp) == HeaderReceived(header, smtp)


@pytest.mark.parametrize(("line", "header"), V1_CASES)
def test_v1_at_every_split_point(line: bytes, header: ProxyHeader) -> None:
    data = line + b"QUIT\r\n"
    for split in range(1, len(data)):
        parser = ProxyHeaderParser()
        first = parser.receive_data(data[:split])
        if split < len(line):
            assert first is NEED_DATA
            assert parser.receive_data(data[split:]) == HeaderReceived(header, b"QUIT\r\n")
        else:
            assert first == HeaderReceived(header, data[len(line) : split])


def test_v1_longest_line_is_accepted() -> None:
    line = (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
            b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
    assert len(line) == MAX_V1_LINE
    assert parse_bytewise(line).header == ProxyHeader(1)


def test_v1_without_crlf_in_107_octets_is_refused() -> None:
    parser = ProxyHeaderParser()
    assert parser.receive_data(b"PROXY UNKNOWN " + b"x" * (MAX_V1_LINE - 15)) is NEED_DATA
    with pytest.raises(ProxyHeaderError, match="no CRLF in the first 107"):
        parser.receive_data(b"x")


def test_v1_cr_at_the_last_octet_is_refused_at_once() -> None:
    # The CR is the 107th octet: its LF would be the 108th.
    assert "no CRLF" in refused(b"PROXY UNKNOWN " + b"x" * (MAX_V1_LINE - 15) + b"\r")


def test_v1_cr_waits_for_its_lf() -> None:
    parser = ProxyHeaderParser()
    assert parser.receive_data(b"PROXY UNKNOWN\r") is NEED_DATA
    assert parser.receive_data(b"\n") == HeaderReceived(ProxyHeader(1))


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 25\n",  # bare LF (§2.1)
        b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 25\rX\n",  # bare CR
        b"PROXY TCP4 192.0.2.10 198.51.100.1 56324\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 25 7\r\n",  # one too many
        b"PROXY  TCP4 192.0.2.10 198.51.100.1 56324 25\r\n",  # two spaces
        b"PROXY TCP5 192.0.2.10 198.51.100.1 56324 25\r\n",
        b"PROXY tcp4 192.0.2.10 198.51.100.1 56324 25\r\n",
        b"PROXY TCP4 192.0.2.010 198.51.100.1 56324 25\r\n",  # heading zero
        b"PROXY TCP4 192.0.2.256 198.51.100.1 56324 25\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.1 56324 25\r\n",  # wrong family
        b"PROXY TCP6 192.0.2.10 2001:db8::25 56324 25\r\n",
        b"PROXY TCP6 ::ffff:192.0.2.10 2001:db8::25 56324 25\r\n",  # not hex groups
        b"PROXY TCP6 fe80::1%eth0 2001:db8::25 56324 25\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 056324 25\r\n",  # heading zero
        b"PROXY TCP4 192.0.2.10 198.51.100.1 65536 25\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 -1 25\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 +1 25\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 \xd9\xa1 25\r\n",  # not ASCII
        b"PROXY UNKNOWNX\r\n",
        b"PROXY\r\n",
    ],
)
def test_v1_malformed(line: bytes) -> None:
    refused(line)


@pytest.mark.parametrize("start", [b"EHLO client.example\r\n", b"E", b"proxy ", b"PROXYTCP4",
                                   b"\x16\x03\x01", b"\r\n\r\n\x00\r\nQUIT\r"])
def test_anything_else_is_refused_at_its_first_wrong_octet(start: bytes) -> None:
    refused(start)


def test_nothing_may_be_fed_after_the_header() -> None:
    parser = ProxyHeaderParser()
    assert isinstance(parser.receive_data(b"PROXY UNKNOWN\r\n"), HeaderReceived)
    with pytest.raises(RuntimeError):
        parser.receive_data(b"more")


def test_nothing_may_be_fed_after_an_error() -> None:
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyHeaderError):
        parser.receive_data(b"HELO")
    with pytest.raises(RuntimeError):
        parser.receive_data(b"PROXY UNKNOWN\r\n")


# -- Version 2 -------------------------------------------------------------------


V2_TCP4 = ProxyHeader(2, ProxyAddress("192.0.2.10", 56324), ProxyAddress("198.51.100.1", 25))
V2_TCP6 = ProxyHeader(2, ProxyAddress("2001:db8::1", 1), ProxyAddress("2001:db8::25", 25))
#: §2.2.4: a PP2_TYPE_NOOP TLV of four octets, and §2.2.5 a unique id.
TLVS = b"\x04\x00\x04abcd" + b"\x05\x00\x08uniqueid"

V2_CASES = [
    (render_v2(V2_TCP4), V2_TCP4),
    (render_v2(V2_TCP6), V2_TCP6),
    (render_v2(V2_TCP4, TLVS), V2_TCP4),
    (render_v2(ProxyHeader(2)), ProxyHeader(2)),
    # §2.2: LOCAL ignores the address block, which must still be skipped.
    (render_v2(V2_TCP4, command=LOCAL), ProxyHeader(2)),
    # §2.2: UNSPEC names no client; neither does AF_UNIX here.
    (v2(PROXY, UNSPEC, b"ignored"), ProxyHeader(2)),
    (v2(PROXY, UNIX_STREAM, b"/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")), ProxyHeader(2)),
    (v2(PROXY, 0x10, bytes(12)), ProxyHeader(2)),  # AF_INET over UNSPEC
    # §2.2: an IPv4-mapped address stays what it is.
    (v2(PROXY, TCP6, ipaddress.ip_address("::ffff:192.0.2.10").packed + bytes(16)
        + b"\x00\x01\x00\x19"),
     ProxyHeader(2, ProxyAddress("::ffff:c000:20a", 1), ProxyAddress("::", 25))),
]


@pytest.mark.parametrize(("data", "header"), V2_CASES)
def test_v2_whole(data: bytes, header: ProxyHeader) -> None:
    assert parse(data) == HeaderReceived(header, b"")


@pytest.mark.parametrize(("data", "header"), V2_CASES)
def test_v2_one_byte_at_a_time(data: bytes, header: ProxyHeader) -> None:
    assert parse_bytewise(data) == HeaderReceived(header, b"")


@pytest.mark.parametrize(("data", "header"), V2_CASES)
def test_v2_at_every_split_point(data: bytes, header: ProxyHeader) -> None:
    whole = data + b"EHLO client.example\r\n"
    for split in range(1, len(whole)):
        parser = ProxyHeaderParser()
        first = parser.receive_data(whole[:split])
        if split < len(data):
            assert first is NEED_DATA
            assert parser.receive_data(whole[split:]) == HeaderReceived(
                header, b"EHLO client.example\r\n")
        else:
            assert first == HeaderReceived(header, whole[len(data) : split])


def test_v2_longest_allowed_length() -> None:
    data = render_v2(V2_TCP4, b"\x04" + struct.pack("!H", MAX_V2_LENGTH - 15) + b"x" * (
        MAX_V2_LENGTH - 15))
    assert len(data) == 16 + MAX_V2_LENGTH
    assert parse(data + b"QUIT\r\n") == HeaderReceived(V2_TCP4, b"QUIT\r\n")


def test_v2_longer_length_is_refused_before_it_is_read() -> None:
    header = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_LENGTH + 1)
    assert "longer than 2048" in refused(header)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (v2(PROXY, TCP4, bytes(12), version=1), "version 1 is not"),
        (v2(PROXY, TCP4, bytes(12), version=3), "version 3 is not"),
        (v2(0x2, TCP4, bytes(12)), "neither LOCAL nor PROXY"),
        (v2(0xF, TCP4, bytes(12)), "neither LOCAL nor PROXY"),
        (v2(PROXY, 0x41, bytes(12)), "not defined"),  # family 4
        (v2(PROXY, 0x13, bytes(12)), "not defined"),  # protocol 3
        (v2(PROXY, UDP4, bytes(12)), "datagram"),
        (v2(PROXY, TCP4, bytes(11)), "too short"),
        (v2(PROXY, TCP6, bytes(35)), "too short"),
        (v2(PROXY, TCP4, b""), "too short"),
    ],
)
def test_v2_malformed(data: bytes, why: str) -> None:
    assert why in refused(data)


def test_v2_bad_version_is_refused_as_soon_as_it_arrives() -> None:
    parser = ProxyHeaderParser()
    assert parser.receive_data(V2_SIGNATURE) is NEED_DATA
    with pytest.raises(ProxyHeaderError):
        parser.receive_data(b"\x11")


# -- Round trips ----------------------------------------------------------------


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


def _headers(version: int, hosts: st.SearchStrategy[str]) -> st.SearchStrategy[ProxyHeader]:
    address = st.builds(ProxyAddress, hosts, ports)
    return st.builds(ProxyHeader, st.just(version), address, address)


v1_headers = st.one_of(_headers(1, ipv4), _headers(1, ipv6), st.just(ProxyHeader(1)))
v2_headers = st.one_of(_headers(2, ipv4), _headers(2, ipv6), st.just(ProxyHeader(2)))
tlv = st.builds(lambda kind, value: bytes([kind]) + struct.pack("!H", len(value)) + value,
                st.integers(0, 255), st.binary(max_size=40))


@given(v1_headers, st.binary(max_size=64), st.data())
def test_v1_round_trip(header: ProxyHeader, trailing: bytes, data: st.DataObject) -> None:
    wire = render_v1(header) + trailing
    split = data.draw(st.integers(0, len(wire)))
    parser = ProxyHeaderParser()
    result = parser.receive_data(wire[:split])
    if result is NEED_DATA:
        result = parser.receive_data(wire[split:])
        assert result == HeaderReceived(header, trailing)
    else:
        assert result == HeaderReceived(header, wire[len(render_v1(header)) : split])


@given(v2_headers, st.lists(tlv, max_size=5).map(b"".join), st.binary(max_size=64), st.data())
def test_v2_round_trip(
    header: ProxyHeader, tlvs: bytes, trailing: bytes, data: st.DataObject
) -> None:
    rendered = render_v2(header, tlvs)
    wire = rendered + trailing
    split = data.draw(st.integers(0, len(wire)))
    parser = ProxyHeaderParser()
    result = parser.receive_data(wire[:split])
    if result is NEED_DATA:
        assert parser.receive_data(wire[split:]) == HeaderReceived(header, trailing)
    else:
        assert result == HeaderReceived(header, wire[len(rendered) : split])


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    parser = ProxyHeaderParser()
    try:
        result = parser.receive_data(data)
    except ProxyHeaderError:
        return
    assert result is NEED_DATA or isinstance(result, HeaderReceived)
