"""
A zone that answers queries as a recursive resolver would, built with
dnspython: the nameserver of the resolver tests, on loopback and in memory.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

__all__ = ["BIG_TXT", "MANY_V6", "ORIGIN", "ZONE", "Zone", "name", "udp_wire"]

ORIGIN = "mailframe.test."

#: More AAAA records than fit in a 1232-octet UDP answer.
MANY_V6 = [f"2001:db8::1:{n:x}" for n in range(1, 81)]
#: More TXT text than fits in a 1232-octet UDP answer.
BIG_TXT = [f"record {n:02d} " + "x" * 100 for n in range(20)]

#: The test zone. Names with special behaviour in the server
#: (servfail, timeout, spoof-*, malformed, nochase) are listed in
#: tests/routing/_dnsserver.py.
ZONE = (
    """
$TTL 300
@             SOA   ns hostmaster 1 3600 600 86400 60
@             NS    ns
ns            A     127.0.0.1
plain         MX    10 mx1.plain
plain         MX    10 mx2.plain
plain         MX    20 mx3.plain
mx1.plain     AAAA  2001:db8::1
mx1.plain     A     192.0.2.1
mx2.plain     A     192.0.2.2
mx3.plain     AAAA  2001:db8::3
nullmx        MX    0 .
alias         CNAME plain
chain         CNAME alias
nochase       CNAME plain
implicit      AAAA  2001:db8::10
implicit      A     192.0.2.10
nohost        TXT   "exists, but has no MX and no address"
badhost       MX    10 gone
badhost       MX    20 mx2.plain
allbad        MX    10 gone
allbad        MX    20 mx.nodata
mxservfail    MX    10 servfail
ours-better   MX    5 mx1.plain
ours-better   MX    10 mx.ours
ours-better   MX    10 mx2.plain
ours-better   MX    20 mx3.plain
ours-only     MX    10 MX.Ours
ours-only     MX    20 mx3.plain
mx.ours       A     192.0.2.99
nodata        HINFO "pdp" "tops-20"
mx.nodata     HINFO "pdp" "tops-20"
txt           TXT   "v=spf1 -all"
txt           TXT   "hello " "world"
loop1         CNAME loop2
loop2         CNAME loop1
dangling      CNAME gone
xn--bcher-kva MX    10 mx1.plain
servfail      A     192.0.2.50
spoof-id      A     192.0.2.53
spoof-question A    192.0.2.53
spoof-source  A     192.0.2.53
spoof-only    A     192.0.2.53
malformed     A     192.0.2.54
bigmx         MX    10 manyv6
"""
    + "".join(f"manyv6 AAAA {address}\n" for address in MANY_V6)
    + "".join(f'big TXT "{text}"\n' for text in BIG_TXT)
)


def name(label: str) -> str:
    """*label* in the test zone: ``name("plain") == "plain.mailframe.test"``."""
    return f"{label}.{ORIGIN}".rstrip(".")


class Zone:
    """
    Answers from a zone as a recursive resolver would: the CNAME chain
    followed (unless *chase* is false), NXDOMAIN and NODATA with the SOA in
    the authority section (RFC 2308 §3), REFUSED for names outside it.
    """

    def __init__(self, text: str = ZONE, origin: str = ORIGIN) -> None:
        self.zone = dns.zone.from_text(text, origin=origin, relativize=False)
        self.origin = dns.name.from_text(origin)

    def respond(self, query: dns.message.Message, chase: bool = True) -> dns.message.Message:
        response = dns.message.make_response(query, recursion_available=True)
        question = query.question[0]
        owner = question.name
        if not owner.is_subdomain(self.origin):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        for _ in range(16):
            node = self.zone.get_node(owner)
            if node is None:
                if not any(n.is_subdomain(owner) for n in self.zone.nodes):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                self._negative(response)
                return response
            data = node.get_rdataset(dns.rdataclass.IN, question.rdtype)
            if data is not None:
                response.answer.append(self._rrset(owner, data))
                return response
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None:
                self._negative(response)
                return response
            response.answer.append(self._rrset(owner, cname))
            owner = cname[0].target
            if not chase:
                return response
            if not owner.is_subdomain(self.origin):
                return response
        return response

    def _rrset(self, owner: dns.name.Name, data: dns.rdataset.Rdataset) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(owner, data.rdclass, data.rdtype)
        rrset.update(data)
        return rrset

    def _negative(self, response: dns.message.Message) -> None:
        soa = self.zone.get_rdataset(self.origin, dns.rdatatype.SOA)
        assert soa is not None
        rrset = self._rrset(self.origin, soa)
        rrset.ttl = min(soa.ttl, soa[0].minimum)
        response.authority.append(rrset)


def udp_wire(response: dns.message.Message) -> bytes:
    """The response as it fits in UDP: truncated, with TC, when too big."""
    return response.to_wire(prefer_truncation=True)
