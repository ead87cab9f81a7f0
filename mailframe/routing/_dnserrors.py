"""
What every :class:`~mailframe.interfaces.IResolver` shares: the errors of
DNS lookups, and how a name is written for a query.

They live apart from :mod:`mailframe.routing.resolver` so that code using a
resolver, and the in-memory resolver of :mod:`mailframe.testing`, can use
them without importing dnspython.
"""

from __future__ import annotations

import idna

from mailframe.errors import PermanentDeliveryError, TransientDeliveryError
from mailframe.reply import Reply

__all__ = ["MAX_CNAME_CHAIN", "DNSNameNotFound", "DNSTemporaryError", "ascii_name"]

#: The most CNAME records a lookup follows before it gives up, as BIND's
#: limit of chained aliases in one answer does; a chain longer than this is
#: a loop or a mistake (RFC 1034 §3.6.2 asks that chains be avoided).
MAX_CNAME_CHAIN = 8

# RFC 1035 §2.3.4: 63 octets a label, 255 a name on the wire, which is 253
# characters of text without the trailing dot.
_MAX_LABEL = 63
_MAX_NAME = 253


def ascii_name(name: str) -> str:
    """
    *name* as it goes into a query: lower case, every non-ASCII label turned
    into its A-label (RFC 5890 §2.3.2.1, with the UTS #46 mapping that
    browsers and MTAs use), without the trailing dot.

    ``ascii_name("Bücher.Example.") == "xn--bcher-kva.example"``. ASCII
    labels are kept as they are, so ``_dmarc`` or ``_25._tcp`` still work.

    :raises ValueError: when *name* is empty, has an empty label, a label
        or a total length over the limits of RFC 1035 §2.3.4, or a label
        that IDNA refuses.
    """
    if not name.isascii():
        name = idna.uts46_remap(name, std3_rules=False, transitional=False)
    text = name[:-1] if name.endswith(".") else name
    labels = text.split(".")
    out = []
    for label in labels:
        if not label.isascii():
            label = idna.alabel(label).decode("ascii")
        if not label or len(label) > _MAX_LABEL:
            raise ValueError(f"{name!r} has an empty or too long label")
        out.append(label.lower())
    joined = ".".join(out)
    if len(joined) > _MAX_NAME:
        raise ValueError(f"{name!r} is longer than {_MAX_NAME} characters")
    return joined


class DNSNameNotFound(PermanentDeliveryError):
    """
    The name does not exist: the DNS answered NXDOMAIN (RFC 1035 §4.1.1,
    RCODE 3), or the name cannot be written in the DNS at all.

    Its reply, ``550 5.1.2``, says that the destination system does not
    exist (RFC 3463 §3.2, "Bad destination system address").

    :ivar name: the name that was looked up.
    """

    default_reply = Reply(550, "5.1.2", "Domain does not exist")

    def __init__(self, name: str, reply: Reply | None = None) -> None:
        self.name = name
        super().__init__(
            reply if reply is not None else Reply(550, "5.1.2", f"{name}: domain does not exist")
        )


class DNSTemporaryError(TransientDeliveryError):
    """
    A lookup failed and may succeed later: the nameservers answered SERVFAIL
    or refused, did not answer in time, or answered something malformed.

    Its reply, ``451 4.4.3``, is the status of a failed directory server
    (RFC 3463 §3.5, "Directory server failure").

    :ivar name: the name that was looked up.
    :ivar reason: what went wrong, for logs.
    """

    default_reply = Reply(451, "4.4.3", "DNS lookup failed")

    def __init__(
        self, name: str, reason: str = "lookup failed", reply: Reply | None = None
    ) -> None:
        self.name = name
        self.reason = reason
        super().__init__(
            reply
            if reply is not None
            else Reply(451, "4.4.3", f"DNS lookup of {name} failed: {reason}")
        )
