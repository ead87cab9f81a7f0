"""
Hypothesis strategies for the values the core reads and writes: mailboxes
(RFC 5321 §4.1.2, RFC 6531 §3.3), replies (RFC 5321 §4.2, RFC 3463) and
message data.
"""

from __future__ import annotations

import ipaddress
import itertools
import string
from typing import Literal

from hypothesis import strategies as st

from mailframe.address import Mailbox
from mailframe.reply import Reply

SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
#: Non-ASCII characters that UTF-8 can encode (no surrogates).
NON_ASCII = st.characters(min_codepoint=0x80, exclude_categories=SURROGATES)
LET_DIG = string.ascii_letters + string.digits


def _atoms(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(st.text(alphabet, min_size=1, max_size=8), min_size=1, max_size=4).map(".".join)


#: Local parts that are a Dot-string.
dot_string = _atoms(st.sampled_from(ATEXT))
#: Local parts that need quoting: any printable ASCII and space.
quoted_local = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
utf8_local = _atoms(st.one_of(st.sampled_from(ATEXT), NON_ASCII)) | st.text(
    st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E), NON_ASCII), max_size=12
)

_label = st.builds(
    lambda first, middle, last: first + middle + last if middle or last else first,
    st.sampled_from(LET_DIG),
    st.text(st.sampled_from(LET_DIG + "-"), max_size=10),
    st.text(st.sampled_from(LET_DIG), max_size=1),
).filter(lambda label: not label.endswith("-"))
_utf8_label = st.text(st.one_of(st.sampled_from(LET_DIG), NON_ASCII), min_size=1, max_size=8)

domain = st.lists(_label, min_size=1, max_size=4).map(".".join)
utf8_domain = st.lists(_label | _utf8_label, min_size=1, max_size=4).map(".".join)
address_literal = st.one_of(
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ipaddress.IPv6Address(ip).compressed}]"),
    st.builds(
        lambda tag, content: f"[{tag}:{content}]",
        st.text(st.sampled_from(string.ascii_letters), min_size=1, max_size=5),
        st.text(
            st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="[\\]"),
            min_size=1,
            max_size=10,
        ),
    ),
)

ascii_mailboxes = st.one_of(
    st.builds(Mailbox, dot_string | quoted_local, domain | address_literal),
    st.sampled_from(["postmaster", "Postmaster", "POSTMASTER"]).map(lambda p: Mailbox(p, "")),
)
utf8_mailboxes = st.builds(Mailbox, utf8_local, utf8_domain | address_literal)
mailboxes = ascii_mailboxes | utf8_mailboxes


@st.composite
def statuses(draw: st.DrawFn, code: int) -> str:
    number = st.integers(0, 999)
    return f"{str(code)[0]}.{draw(number)}.{draw(number)}"


_text_line = st.text(
    st.characters(exclude_characters="\r\n", exclude_categories=SURROGATES), max_size=30
)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    code = draw(st.integers(200, 599))
    # RFC 3463 has no class 3: a 354 carries no enhanced status.
    status = None if code // 100 == 3 else draw(st.none() | statuses(code))
    text = draw(st.lists(_text_line, min_size=1, max_size=4))
    return Reply(code, status, tuple(text))


#: Lines of message data without their CRLF, many of them starting with dots.
data_lines = st.lists(
    st.one_of(
        st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
        st.sampled_from([b"", b".", b"..", b"...", b". ", b".x", b"..x", b"Received: x"]),
        st.binary(max_size=20)
        .filter(lambda b: b"\r" not in b and b"\n" not in b)
        .map(lambda b: b"." + b),
    ),
    max_size=30,
)


def stuff(content: bytes) -> bytes:
    """Dot-stuff *content* as a client does (RFC 5321 §4.5.2)."""
    return (b"\r\n" + content).replace(b"\r\n.", b"\r\n..")[2:]


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """*data* cut at random places into non-empty chunks."""
    if not data:
        return []
    cuts = draw(st.lists(st.integers(1, len(data) - 1), max_size=12)) if len(data) > 1 else []
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def bdat_chunks(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """*data* cut into BDAT chunks at random places; chunks may be empty."""
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=8))
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def bdat(chunks: list[bytes]) -> bytes:
    """*chunks* as BDAT commands with their data, the last one marked LAST."""
    out = []
    for index, chunk in enumerate(chunks):
        last = b" LAST" if index == len(chunks) - 1 else b""
        out.append(b"BDAT %d%s\r\n" % (len(chunk), last) + chunk)
    return b"".join(out)
