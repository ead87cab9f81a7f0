"""
The PROXY protocol header that a load balancer such as HAProxy sends before
anything else on a connection, naming the client it accepted the connection
from.

Both versions of HAProxy's ``proxy-protocol.txt`` are read: version 1, one
line of text (§2.1), and version 2, a binary block (§2.2). Bytes are fed in
as they arrive, in pieces of any size; the parser answers
:data:`~mailframe.core.NEED_DATA` until the header is whole, then the header
and whatever followed it, or raises :class:`ProxyHeaderError`.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

from mailframe.core._events import NEED_DATA, Sentinel

__all__ = [
    "MAX_V1_LINE",
    "MAX_V2_LENGTH",
    "V1_PREFIX",
    "V2_SIGNATURE",
    "HeaderReceived",
    "ProxyAddress",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderParser",
]

#: §2.1: a version 1 header starts with "PROXY" and one space.
V1_PREFIX = b"PROXY "
#: §2.1: the longest version 1 line, CRLF included ("PROXY UNKNOWN" with two
#: full IPv6 addresses and ports); without a CRLF in it, the line is invalid.
MAX_V1_LINE = 107
#: §2.2: the twelve octets that start a version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: §2.2: signature, version and command, family and protocol, length.
V2_FIXED = len(V2_SIGNATURE) + 4
#: §2.2: the length field could announce 65535 octets of addresses and
#: TLVs, but the header is meant to fit in the first 536-octet segment
#: (§2); this much room after the fixed part leaves space for every TLV
#: HAProxy sends (§2.2.1-§2.2.7) and bounds what one header can make us
#: buffer.
MAX_V2_LENGTH = 2048

#: §2.2: the high four bits of the 13th octet: version 2 is the only one.
_V2_VERSION = 0x2
#: §2.2: the low four bits of the 13th octet: the command.
_V2_LOCAL = 0x0
_V2_PROXY = 0x1
#: §2.2: the high four bits of the 14th octet: the address family.
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
#: §2.2: the low four bits of the 14th octet: the transport protocol.
_UNSPEC, _STREAM, _DGRAM = 0x0, 0x1, 0x2
#: §2.2: the address blocks of TCP over IPv4 and over IPv6.
_INET_BLOCK = struct.Struct("!4s4sHH")
_INET6_BLOCK = struct.Struct("!16s16sHH")

_LENGTH = struct.Struct("!H")
_MAX_PORT = 65535
#: §2.1: the two protocols a version 1 line names, and their families.
_V1_FAMILIES = {"TCP4": 4, "TCP6": 6}


class ProxyHeaderError(Exception):
    """
    The bytes are not a PROXY header that §2.1 or §2.2 allows; the
    connection is to be dropped (§2.1: "Any sequence which does not exactly
    match the protocol must be discarded").
    """


@attrs.frozen
class ProxyAddress:
    """
    One end of the proxied connection.

    :ivar host: an IPv4 or IPv6 address, in Python's canonical text form.
    :ivar port: the TCP port.
    """

    host: str = attrs.field()
    port: int = attrs.field(validator=[attrs.validators.ge(0), attrs.validators.le(_MAX_PORT)])

    @host.validator
    def _check_host(self, attribute: object, value: str) -> None:
        ipaddress.ip_address(value)

    @property
    def ipv6(self) -> bool:
        """``True`` for an IPv6 address."""
        return ":" in self.host


@attrs.frozen
class ProxyHeader:
    """
    What a PROXY header said.

    :ivar version: 1 (text) or 2 (binary).
    :ivar source: the client the proxy accepted the connection from, or
        ``None`` when the header names none: a version 2 LOCAL command (the
        proxy's own health check), a version 1 ``UNKNOWN`` line, or a family
        that is not TCP over IPv4 or IPv6.
    :ivar destination: the address the client connected to, or ``None``
        along with :attr:`source`.
    """

    version: int
    source: ProxyAddress | None = None
    destination: ProxyAddress | None = None

    @property
    def local(self) -> bool:
        """``True`` when the header names no client."""
        return self.source is None


@attrs.frozen
class HeaderReceived:
    """
    The header is whole.

    :ivar header: what it said.
    :ivar trailing: the bytes that came after it in the same pieces: the
        start of the proxied protocol.
    """

    header: ProxyHeader
    trailing: bytes = b""


class ProxyHeaderParser:
    """
    Reads one PROXY header, version 1 or 2, from bytes fed in pieces.

    Input that cannot begin a header is refused at its first wrong octet,
    so a client that speaks SMTP at once is not kept waiting.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._done = False

    def receive_data(self, data: bytes) -> HeaderReceived | Sentinel:
        """
        Add *data*; return :data:`~mailframe.core.NEED_DATA` until the
        header is whole, then a :class:`HeaderReceived`.

        :raises ProxyHeaderError: when the bytes cannot be a header; no more
            may be fed after that, nor after the header.
        """
        if self._done:
            raise RuntimeError("the PROXY header has already been read")
        self._buffer += data
        buffer = self._buffer
        try:
            if buffer[:1] == V2_SIGNATURE[:1]:
                result = _parse_v2(buffer)
            else:
                result = _parse_v1(buffer)
        except ProxyHeaderError:
            self._done = True
            self._buffer = b""
            raise
        if isinstance(result, HeaderReceived):
            self._done = True
            self._buffer = b""
        return result


def _parse_v1(buffer: bytes) -> HeaderReceived | Sentinel:
    """§2.1: one line of text."""
    prefix = buffer[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(prefix):
        raise ProxyHeaderError("not a PROXY header")
    end = _line_end(buffer[:MAX_V1_LINE])
    if end < 0:
        if len(buffer) >= MAX_V1_LINE:
            raise ProxyHeaderError(f"no CRLF in the first {MAX_V1_LINE} octets of a"
                                   " version 1 header")
        return NEED_DATA
    if buffer[end : end + 2] != b"\r\n":
        raise ProxyHeaderError("a version 1 header must end with CRLF")
    try:
        line = buffer[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("a version 1 header must be ASCII") from None
    return HeaderReceived(_v1_fields(line.split(" ")), buffer[end + 2 :])


def _line_end(buffer: bytes) -> int:
    """Where the first CR or LF is, or -1: neither may stand alone (§2.1)."""
    ends = [i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0]
    if not ends:
        return -1
    end = min(ends)
    if buffer[end : end + 1] == b"\r" and end + 1 == len(buffer):
        return -1  # the LF may be on its way
    return end


def _v1_fields(fields: list[str]) -> ProxyHeader:
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        # §2.1: the receiver must ignore whatever follows UNKNOWN.
        return ProxyHeader(1)
    if len(fields) != 6 or fields[1] not in _V1_FAMILIES:
        raise ProxyHeaderError("a version 1 header is PROXY TCP4|TCP6 SOURCE DESTINATION"
                               " SPORT DPORT, or PROXY UNKNOWN")
    family = _V1_FAMILIES[fields[1]]
    source, destination = (_v1_address(family, text) for text in fields[2:4])
    source_port, destination_port = (_v1_port(text) for text in fields[4:6])
    return ProxyHeader(1, ProxyAddress(source, source_port),
                       ProxyAddress(destination, destination_port))


def _v1_address(version: int, text: str) -> str:
    # Python refuses leading zeros in IPv4 (§2.1 forbids them too); scope
    # ids and embedded IPv4 are not the hex groups §2.1 asks for.
    wrong = ProxyHeaderError(f"{text!r} is not an address of TCP{version}")
    if "%" in text or (version == 6 and "." in text):
        raise wrong
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise wrong from None
    if address.version != version:
        raise wrong
    return str(address)


def _v1_port(text: str) -> int:
    # §2.1: decimal, in [0..65535], without heading zeroes.
    if (not text.isascii() or not text.isdigit() or len(text) > 5
            or (len(text) > 1 and text[0] == "0") or int(text) > _MAX_PORT):
        raise ProxyHeaderError(f"{text!r} is not a port")
    return int(text)


def _parse_v2(buffer: bytes) -> HeaderReceived | Sentinel:
    """§2.2: a binary block."""
    signature = buffer[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        raise ProxyHeaderError("not a PROXY header")
    if len(buffer) > len(V2_SIGNATURE):
        version, command = buffer[12] >> 4, buffer[12] & 0x0F
        if version != _V2_VERSION:
            raise ProxyHeaderError(f"version {version} is not PROXY protocol version 2")
        if command not in (_V2_LOCAL, _V2_PROXY):
            raise ProxyHeaderError(f"command {command:#x} is neither LOCAL nor PROXY")
    if len(buffer) > len(V2_SIGNATURE) + 1:
        family, protocol = buffer[13] >> 4, buffer[13] & 0x0F
        if family > _AF_UNIX or protocol > _DGRAM:
            raise ProxyHeaderError(f"family and protocol {buffer[13]:#04x} are not defined")
    if len(buffer) < V2_FIXED:
        return NEED_DATA
    (length,) = _LENGTH.unpack_from(buffer, 14)
    if length > MAX_V2_LENGTH:
        raise ProxyHeaderError(f"a version 2 header of {length} octets is longer than"
                               f" {MAX_V2_LENGTH}")
    if len(buffer) < V2_FIXED + length:
        return NEED_DATA
    block = buffer[V2_FIXED : V2_FIXED + length]
    header = _v2_addresses(buffer[12] & 0x0F, buffer[13] >> 4, buffer[13] & 0x0F, block)
    return HeaderReceived(header, buffer[V2_FIXED + length :])


def _v2_addresses(command: int, family: int, protocol: int, block: bytes) -> ProxyHeader:
    if command == _V2_LOCAL:
        # §2.2: LOCAL ignores the address block, whatever the family says.
        return ProxyHeader(2)
    if protocol == _DGRAM:
        # §2.2 lets the receiver reject what it does not support; SMTP is
        # only ever carried over a stream.
        raise ProxyHeaderError("a version 2 header names a datagram protocol")
    if protocol == _UNSPEC or family not in (_AF_INET, _AF_INET6):
        # §2.2: UNSPEC names no client, and neither does AF_UNIX here.
        return ProxyHeader(2)
    layout, make = (
        (_INET_BLOCK, ipaddress.IPv4Address) if family == _AF_INET
        else (_INET6_BLOCK, ipaddress.IPv6Address)
    )
    if len(block) < layout.size:
        raise ProxyHeaderError(f"the address block is {len(block)} octets, too short for"
                               f" its family ({layout.size})")
    source, destination, source_port, destination_port = layout.unpack_from(block)
    return ProxyHeader(
        2,
        ProxyAddress(str(make(source)), source_port),
        ProxyAddress(str(make(destination)), destination_port),
    )
