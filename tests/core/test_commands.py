"""
:func:`~mailframe.core.parse_command` on its own: one command line, without
its CRLF, to one event or a :class:`~mailframe.core.CommandError` carrying
its reply (RFC 5321 §4.1).
"""

from __future__ import annotations

import pytest

from mailframe.address import NULL_PATH, Mailbox
from mailframe.core import (
    Auth,
    Bdat,
    CommandError,
    Data,
    Ehlo,
    Expn,
    Helo,
    Help,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    Vrfy,
    parse_command,
)
from mailframe.core._commands import _split_path
from mailframe.envelope import BodyType

ESMTP = frozenset({"SIZE", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES"})


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"EHLO client.example", Ehlo("client.example")),
        (b"ehlo [192.0.2.1]", Ehlo("[192.0.2.1]")),
        (b"HeLo client.example ", Helo("client.example")),
        (b"DATA", Data()),
        (b"data ", Data()),
        (b"RSET", Rset()),
        (b"QUIT", Quit()),
        (b"NOOP", Noop()),
        (b"NOOP whatever", Noop()),
        (b"VRFY bob", Vrfy("bob")),
        (b"EXPN list", Expn("list")),
        (b"EXPN", Expn("")),
        (b"HELP", Help("")),
        (b"HELP DATA", Help("DATA")),
        (b"MAIL FROM:<>", Mail(NULL_PATH)),
        (b"RCPT TO:<postmaster>", Rcpt(Mailbox("postmaster", ""))),
    ],
)
def test_parse(line: bytes, event: object) -> None:
    assert parse_command(line) == event


@pytest.mark.parametrize(
    ("line", "code", "status"),
    [
        (b"", 500, "5.5.2"),
        (b"NOOP\x00", 500, "5.5.2"),
        (b"\x00NOOP", 500, "5.5.2"),
        (b"NOOP\n", 500, "5.5.2"),
        (b"NO\rOP", 500, "5.5.2"),
        (b"NOOP \xc3", 500, "5.5.2"),
        (b"FOO", 500, "5.5.1"),
        (b"MAILFROM:<>", 500, "5.5.1"),
        (b"BDAT 10 LAST", 502, "5.5.1"),
        (b"STARTTLS", 502, "5.5.1"),
        (b"AUTH PLAIN", 503, "5.5.1"),
        (b"EHLO", 501, "5.5.4"),
        (b"VRFY ", 501, "5.5.4"),
        (b"DATA now", 501, "5.5.4"),
        (b"MAIL FROM:<a@b.example> SIZE=1", 555, "5.5.4"),
        (b"MAIL FROM:<bad>", 501, "5.1.7"),
        (b"RCPT TO:<bad>", 501, "5.1.3"),
        (b"RCPT TO:<a@b.example> X=1", 555, "5.5.4"),
    ],
)
def test_refused(line: bytes, code: int, status: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse_command(line)
    assert (caught.value.reply.code, caught.value.reply.status) == (code, status)


def test_parameters() -> None:
    mail = parse_command(b"MAIL FROM:<a@b.example> size=123 Body=8BITMIME", ESMTP, 1000)
    assert mail == Mail(
        Mailbox("a", "b.example"),
        (("SIZE", "123"), ("BODY", "8BITMIME")),
        size=123,
        body=BodyType.EIGHT_BIT_MIME,
    )


def test_size_limit() -> None:
    assert isinstance(parse_command(b"MAIL FROM:<> SIZE=1000", ESMTP, 1000), Mail)
    with pytest.raises(CommandError) as caught:
        parse_command(b"MAIL FROM:<> SIZE=1001", ESMTP, 1000)
    assert str(caught.value.reply) == ("552 5.3.4 Message size exceeds fixed maximum message size")


def test_binarymime_when_advertised() -> None:
    mail = parse_command(b"MAIL FROM:<> BODY=BINARYMIME", ESMTP | {"BINARYMIME"})
    assert isinstance(mail, Mail) and mail.body is BodyType.BINARY_MIME


def test_smtputf8_allows_utf8_addresses() -> None:
    line = "MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή> SMTPUTF8".encode()
    mail = parse_command(line, ESMTP | {"SMTPUTF8"})
    assert mail == Mail(
        Mailbox("δοκιμή", "παράδειγμα.δοκιμή"), (("SMTPUTF8", None),), smtputf8=True
    )
    rcpt = parse_command("RCPT TO:<用户@例子.广告>".encode(), ESMTP, smtputf8=True)
    assert rcpt == Rcpt(Mailbox("用户", "例子.广告"))
    with pytest.raises(CommandError):
        parse_command("RCPT TO:<用户@例子.广告>".encode(), ESMTP)


def test_quoted_local_part_with_brackets_and_spaces() -> None:
    rcpt = parse_command(b'RCPT TO:<"a > b \\" c"@d.example> NOTIFY=NEVER', ESMTP | {"DSN"})
    assert rcpt == Rcpt(
        Mailbox('a > b " c', "d.example"), (("NOTIFY", "NEVER"),), frozenset({"NEVER"})
    )


@pytest.mark.parametrize(
    ("argument", "split"),
    [
        ("TO:<a@b.example> NOTIFY=NEVER", ("<a@b.example>", " NOTIFY=NEVER")),
        ("FROM:<>", ("<>", "")),
        ("TO:<a>b@c.example>", ("<a>", "b@c.example>")),
        ('TO:<"a>b"@c.example> X', ('<"a>b"@c.example>', " X")),
        ("TO:<a@[tag:x>y]> X", ("<a@[tag:x>y]>", " X")),
        ('TO:<a@b.example> X="y>"', ("<a@b.example>", ' X="y>"')),
        ("TO: a@b.example X", ("<a@b.example>", " X")),
    ],
)
def test_split_path(argument: str, split: tuple[str, str]) -> None:
    """
    The first ``>`` ends the path, unless it is inside a quoted local part
    or an address literal (RFC 5321 §4.1.3) that comes before it.
    """
    keyword = argument.partition(":")[0]
    assert _split_path(argument, keyword) == split


OFFERED = ESMTP | {"STARTTLS", "AUTH", "CHUNKING"}


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"STARTTLS", StartTls()),
        (b"starttls ", StartTls()),
        (b"AUTH login", Auth("LOGIN", None)),
        (b"AUTH PLAIN =", Auth("PLAIN", b"")),
        (b"AUTH PLAIN AGEAYg==", Auth("PLAIN", b"\x00a\x00b")),
        (b"BDAT 0", Bdat(0)),
        (b"BDAT 0 LAST", Bdat(0, True)),
        (b"BDAT 12345678901234567890 last", Bdat(12345678901234567890, True)),
    ],
)
def test_parse_offered_commands(line: bytes, event: object) -> None:
    """STARTTLS, AUTH and BDAT are recognised when offered, even before EHLO."""
    assert parse_command(line, frozenset(), offered=OFFERED) == event


@pytest.mark.parametrize(
    ("line", "code", "status"),
    [
        (b"STARTTLS x", 501, "5.5.4"),
        (b"AUTH", 501, "5.5.4"),
        (b"AUTH PLAIN x y", 501, "5.5.4"),
        (b"AUTH PLAIN x", 501, "5.5.2"),
        (b"BDAT", 501, "5.5.4"),
        (b"BDAT 1 2", 501, "5.5.4"),
        (b"BDAT 123456789012345678901", 501, "5.5.4"),
        (b"MAIL FROM:<> AUTH=a+2", 501, "5.5.4"),
        ("MAIL FROM:<j\u00f6rg@b.example>".encode(), 553, "5.6.7"),
        ("RCPT TO:<j\u00f6rg@b.example>".encode(), 553, "5.6.7"),
    ],
)
def test_refused_offered_commands(line: bytes, code: int, status: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse_command(line, OFFERED | {"SMTPUTF8"})
    assert (caught.value.reply.code, caught.value.reply.status) == (code, status)
