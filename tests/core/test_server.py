"""
The SMTP commands of :class:`~mailframe.core.ServerConnection`, their reply
codes (RFC 5321 §4.2, §4.3.2) and enhanced status codes (RFC 2034, RFC 3463).

Every session script here is fed whole, one byte at a time and with trailing
data (:func:`tests.core.helpers.check`).
"""

from __future__ import annotations

from typing import Any

import pytest

from mailframe.address import NULL_PATH, Mailbox
from mailframe.core import (
    NEED_DATA,
    PAUSED,
    BadCommand,
    ConnectionClosed,
    Data,
    Ehlo,
    EndOfMessage,
    Helo,
    Limits,
    Mail,
    MessageData,
    Noop,
    Quit,
    Rcpt,
    ServerConnection,
    State,
)
from mailframe.envelope import BodyType
from mailframe.reply import Reply
from tests.core.helpers import GREETING, answer, by_type, check, session

EHLO = "EHLO client.example"
MAIL = "MAIL FROM:<alice@client.example>"
RCPT = "RCPT TO:<bob@mx.example>"


def only_reply(script: bytes, **kwargs: Any) -> bytes:
    """The one reply (after the greeting and the EHLO/HELO) to the last line."""
    return check(script, **kwargs).replies[-1]


# -- A whole session -------------------------------------------------------


def test_esmtp_session() -> None:
    """A complete EHLO session, byte for byte."""
    transcript = check(session(EHLO, MAIL, RCPT, "DATA", "Subject: hi", "", "Hello.", ".", "QUIT"))
    assert transcript.replies == [
        b"220 mx.example ESMTP\r\n",
        b"250-mx.example\r\n250-SIZE 10485760\r\n250-8BITMIME\r\n"
        b"250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n",
        b"250 2.1.0 OK\r\n",
        b"250 2.1.5 OK\r\n",
        b"354 End data with <CR><LF>.<CR><LF>\r\n",
        b"250 2.0.0 OK\r\n",
        b"221 2.0.0 Bye\r\n",
    ]
    assert transcript.events == [
        Ehlo("client.example"),
        Mail(Mailbox("alice", "client.example")),
        Rcpt(Mailbox("bob", "mx.example")),
        Data(),
        MessageData(b"Subject: hi\r\n\r\nHello.\r\n"),
        EndOfMessage(23, b"Subject: hi\r\n\r\n", 0, None),
        Quit(),
    ]
    assert transcript.closed
    assert transcript.esmtp


def test_helo_session_also_has_enhanced_codes() -> None:
    """
    Enhanced status codes go on every reply that has one, after HELO too,
    as Postfix does: RFC 2034 clients read them, and others read them as
    text. A malformed command always gets its RFC 3463 code.
    """
    transcript = check(
        session(
            "HELO client.example", MAIL, RCPT, "DATA", "x", ".", "NOOP", "VRFY bob", "FOO", "QUIT"
        )
    )
    assert transcript.replies[1:] == [
        b"250 mx.example\r\n",
        b"250 2.1.0 OK\r\n",
        b"250 2.1.5 OK\r\n",
        b"354 End data with <CR><LF>.<CR><LF>\r\n",
        b"250 2.0.0 OK\r\n",
        b"250 2.0.0 OK\r\n",
        b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n",
        b"500 5.5.1 Command unrecognized\r\n",
        b"221 2.0.0 Bye\r\n",
    ]
    assert not transcript.esmtp


def test_enhanced_codes_on_every_reply_after_ehlo() -> None:
    transcript = check(
        session(
            EHLO,
            "NOOP",
            "RSET",
            "HELP",
            "VRFY x",
            "EXPN list",
            "FOO",
            "DATA",
            "MAIL FROM:<>",
            MAIL,
            "QUIT",
        )
    )
    for reply in transcript.replies[2:]:
        assert b" " in reply
        status = reply[4:].split(b" ")[0]
        assert status[:1] == reply[:1] and status.count(b".") == 2, reply


def test_helo_after_ehlo_ends_esmtp() -> None:
    transcript = check(session(EHLO, "HELO client.example", "NOOP"))
    assert transcript.replies[-1] == b"250 2.0.0 OK\r\n"
    assert not transcript.esmtp


# -- Each command's reply --------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("NOOP", b"250 2.0.0 OK\r\n"),
        ("NOOP anything at all", b"250 2.0.0 OK\r\n"),
        ("noop", b"250 2.0.0 OK\r\n"),
        ("RSET", b"250 2.0.0 OK\r\n"),
        (
            "HELP",
            b"214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n"
            b"214 2.0.0 See RFC 5321\r\n",
        ),
        (
            "HELP MAIL",
            b"214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n"
            b"214 2.0.0 See RFC 5321\r\n",
        ),
        ("EXPN staff", b"502 5.5.1 EXPN is not available\r\n"),
        ("EXPN", b"502 5.5.1 EXPN is not available\r\n"),
        ("FROB", b"500 5.5.1 Command unrecognized\r\n"),
        ("", b"500 5.5.2 Error: bad syntax\r\n"),
        ("TURN", b"502 5.5.1 Command not implemented: TURN\r\n"),
        ("VRFY", b"501 5.5.4 Syntax: VRFY address\r\n"),
        ("RSET now", b"501 5.5.4 Syntax: RSET\r\n"),
        ("QUIT now", b"501 5.5.4 Syntax: QUIT\r\n"),
        ("EHLO", b"501 5.5.4 Syntax: EHLO hostname\r\n"),
        ("EHLO   ", b"501 5.5.4 Syntax: EHLO hostname\r\n"),
        ("HELO", b"501 5.5.4 Syntax: HELO hostname\r\n"),
    ],
)
def test_command_reply(line: str, reply: bytes) -> None:
    assert only_reply(session(EHLO, line)) == reply


def test_vrfy_never_reveals_users() -> None:
    """RFC 5321 §3.5.3: 252, the same whoever is asked about."""
    transcript = check(session(EHLO, "VRFY bob", "VRFY <bob@mx.example>", "VRFY nobody-at-all"))
    replies = transcript.replies[2:]
    assert replies[0].startswith(b"252 2.5.0 ")
    assert len(set(replies)) == 1


def test_ehlo_without_domain_before_greeting_state_changes_nothing() -> None:
    transcript = check(session("EHLO", "MAIL FROM:<>"))
    assert transcript.codes == [501, 503]
    assert transcript.state is State.GREETED


def test_ehlo_reply_lists_extensions() -> None:
    conn = ServerConnection("mx.example", Limits(max_message_size=0), ("STARTTLS", "SMTPUTF8"))
    reply = conn.helo_reply(Ehlo("c"))
    assert reply.text == (
        "mx.example",
        "SIZE",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "STARTTLS",
        "SMTPUTF8",
    )
    assert conn.advertised == frozenset(
        {"SIZE", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "DSN", "STARTTLS", "SMTPUTF8"}
    )
    assert conn.helo_reply(Helo("c")) == Reply(250, None, "mx.example")


def test_dsn_can_be_left_out() -> None:
    conn = ServerConnection("mx.example", Limits(max_message_size=0), ("DSN",), dsn=False)
    assert conn.helo_reply(Ehlo("c")).text == (
        "mx.example",
        "SIZE",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
    )


# -- Sequence (503) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "reply"),
    [
        ((MAIL,), b"503 5.5.1 Error: send HELO/EHLO first\r\n"),
        ((EHLO, RCPT), b"503 5.5.1 Error: need MAIL command\r\n"),
        ((EHLO, "DATA"), b"503 5.5.1 Error: need RCPT command\r\n"),
        ((EHLO, MAIL, "DATA"), b"503 5.5.1 Error: need RCPT command\r\n"),
        ((EHLO, MAIL, MAIL), b"503 5.5.1 Error: nested MAIL command\r\n"),
        ((EHLO, MAIL, RCPT, "MAIL FROM:<>"), b"503 5.5.1 Error: nested MAIL command\r\n"),
        ((EHLO, MAIL, "RSET", RCPT), b"503 5.5.1 Error: need MAIL command\r\n"),
    ],
)
def test_bad_sequence(lines: tuple[str, ...], reply: bytes) -> None:
    assert only_reply(session(*lines)) == reply


def test_rejected_mail_leaves_no_transaction() -> None:
    refuse = by_type({Mail: Reply(550, "5.7.1", "No")})
    transcript = check(session(EHLO, MAIL, RCPT), replier=refuse)
    assert transcript.codes == [250, 550, 503]
    assert transcript.state is State.READY


def test_rejected_rcpt_is_not_counted() -> None:
    refuse = by_type({Rcpt: Reply(550, "5.1.1", "No such user")})
    transcript = check(session(EHLO, MAIL, RCPT, "DATA"), replier=refuse)
    assert transcript.codes == [250, 250, 550, 503]
    assert transcript.recipients == 0


def test_rejected_data_stays_in_transaction() -> None:
    refuse = by_type({Data: Reply(554, "5.5.1", "No valid recipients")})
    transcript = check(session(EHLO, MAIL, RCPT, "DATA", "NOOP"), replier=refuse)
    assert transcript.codes == [250, 250, 250, 554, 250]
    assert transcript.state is State.RCPT


def test_helo_and_rset_reset_the_transaction() -> None:
    for reset in ("RSET", "HELO client.example", EHLO):
        transcript = check(session(EHLO, MAIL, RCPT, reset, RCPT))
        assert transcript.codes[-1] == 503
        assert transcript.recipients == 0


# -- MAIL and RCPT ----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "event"),
    [
        ("MAIL FROM:<>", Mail(NULL_PATH)),
        ("mail from:<alice@client.example>", Mail(Mailbox("alice", "client.example"))),
        ("MAIL FROM: <alice@client.example>", Mail(Mailbox("alice", "client.example"))),
        ("MAIL FROM:alice@client.example", Mail(Mailbox("alice", "client.example"))),
        (
            "MAIL FROM:<@relay.example,@other.example:alice@client.example>",
            Mail(Mailbox("alice", "client.example")),
        ),
        ('MAIL FROM:<"a b>c"@client.example>', Mail(Mailbox("a b>c", "client.example"))),
        ("MAIL FROM:<alice@[192.0.2.1]>", Mail(Mailbox("alice", "[192.0.2.1]"))),
        (
            "MAIL FROM:<alice@client.example> SIZE=1000",
            Mail(Mailbox("alice", "client.example"), (("SIZE", "1000"),), size=1000),
        ),
        (
            "MAIL FROM:alice@client.example SIZE=1000",
            Mail(Mailbox("alice", "client.example"), (("SIZE", "1000"),), size=1000),
        ),
        (
            "MAIL FROM:<> BODY=8bitmime",
            Mail(NULL_PATH, (("BODY", "8bitmime"),), body=BodyType.EIGHT_BIT_MIME),
        ),
    ],
)
def test_mail(line: str, event: Mail) -> None:
    transcript = check(session(EHLO, line))
    assert transcript.events[-1] == event
    assert transcript.replies[-1] == b"250 2.1.0 OK\r\n"


@pytest.mark.parametrize(
    ("line", "recipient"),
    [
        ("RCPT TO:<postmaster>", Mailbox("postmaster", "")),
        ("RCPT TO:<Postmaster>", Mailbox("Postmaster", "")),
        ("RCPT TO:<POSTMASTER>", Mailbox("POSTMASTER", "")),
        ("RCPT TO:<PostMaster@mx.example>", Mailbox("PostMaster", "mx.example")),
        ("rcpt to:<bob@mx.example>", Mailbox("bob", "mx.example")),
        ("RCPT TO:<@a.example,@b.example:bob@c.example>", Mailbox("bob", "c.example")),
        ("RCPT TO:<@a.example:bob@c.example>", Mailbox("bob", "c.example")),
        ('RCPT TO:<"bob smith"@mx.example>', Mailbox("bob smith", "mx.example")),
        ("RCPT TO:<bob@[IPv6:2001:db8::1]>", Mailbox("bob", "[IPv6:2001:db8::1]")),
    ],
)
def test_rcpt(line: str, recipient: Mailbox) -> None:
    transcript = check(session(EHLO, MAIL, line))
    assert transcript.events[-1] == Rcpt(recipient)
    assert transcript.replies[-1] == b"250 2.1.5 OK\r\n"
    assert recipient.is_postmaster or recipient.domain


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("MAIL FROM:", b"501 5.5.4 Syntax: FROM:<address>\r\n"),
        ("MAIL TO:<a@b.example>", b"501 5.5.4 Syntax: FROM:<address>\r\n"),
        ("MAIL FROM:<alice@client.example", b"501 5.5.4 Syntax: FROM:<address>: missing '>'\r\n"),
        ("MAIL FROM:<alice>", b"501 5.1.7 Bad sender address syntax: <alice>\r\n"),
        ("MAIL FROM:<postmaster>", b"501 5.1.7 Bad sender address syntax: <postmaster>\r\n"),
        ("MAIL FROM:<a@b@c.example>", b"501 5.1.7 Bad sender address syntax: <a@b@c.example>\r\n"),
        (
            "MAIL FROM:<@relay.example:>",
            b"501 5.1.7 Bad sender address syntax: <@relay.example:>\r\n",
        ),
        ("MAIL FROM:<a@b.example>SIZE=1", b"501 5.5.4 Syntax error in parameters\r\n"),
        ("MAIL FROM:<a@b.example> SIZE", b"501 5.5.4 Bad SIZE parameter\r\n"),
        ("MAIL FROM:<a@b.example> SIZE=ten", b"501 5.5.4 Bad SIZE parameter\r\n"),
        ("MAIL FROM:<a@b.example> SIZE=1 SIZE=2", b"501 5.5.4 Duplicate parameter: SIZE\r\n"),
        ("MAIL FROM:<a@b.example> BODY=9BIT", b"501 5.5.4 Unsupported BODY type: 9BIT\r\n"),
        (
            "MAIL FROM:<a@b.example> BODY=BINARYMIME",
            b"501 5.5.4 Unsupported BODY type: BINARYMIME\r\n",
        ),
        ("MAIL FROM:<a@b.example> =1", b"501 5.5.4 Bad parameter syntax: =1\r\n"),
        ("MAIL FROM:<a@b.example> X=a=b", b"501 5.5.4 Bad parameter syntax: X=a=b\r\n"),
        ("MAIL FROM:<a@b.example> FOO=1", b"555 5.5.4 Unsupported MAIL parameter: FOO\r\n"),
        ("MAIL FROM:<a@b.example> SMTPUTF8", b"555 5.5.4 Unsupported MAIL parameter: SMTPUTF8\r\n"),
        ("MAIL FROM:<a@b.example> AUTH=<>", b"555 5.5.4 Unsupported MAIL parameter: AUTH\r\n"),
    ],
)
def test_mail_refused(line: str, reply: bytes) -> None:
    assert only_reply(session(EHLO, line)) == reply


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("RCPT TO:<>", b"501 5.1.3 Bad recipient address syntax: <>\r\n"),
        ("RCPT TO:<bob>", b"501 5.1.3 Bad recipient address syntax: <bob>\r\n"),
        ("RCPT TO:<bob@>", b"501 5.1.3 Bad recipient address syntax: <bob@>\r\n"),
        (
            "RCPT TO:<bob@-mx.example>",
            b"501 5.1.3 Bad recipient address syntax: <bob@-mx.example>\r\n",
        ),
        (
            "RCPT TO:<b\xfcb@mx.example>",
            b"501 5.1.3 Bad recipient address syntax: <b\xc3\xbcb@mx.example>\r\n",
        ),
        ("RCPT TO:<postmaster@>", b"501 5.1.3 Bad recipient address syntax: <postmaster@>\r\n"),
        (
            "RCPT TO:<@a.example bob@c.example>",
            b"501 5.1.3 Bad recipient address syntax: <@a.example bob@c.example>\r\n",
        ),
        ("RCPT FROM:<bob@mx.example>", b"501 5.5.4 Syntax: TO:<address>\r\n"),
        ("RCPT TO:<bob@mx.example> FOO", b"555 5.5.4 Unsupported RCPT parameter: FOO\r\n"),
    ],
)
def test_rcpt_refused(line: str, reply: bytes) -> None:
    assert only_reply(session(EHLO, MAIL, line)) == reply


def test_esmtp_parameters_need_ehlo() -> None:
    """RFC 5321 §4.1.1.11: no parameters unless EHLO advertised them."""
    transcript = check(
        session(
            "HELO client.example",
            "MAIL FROM:<a@b.example> SIZE=10",
            "MAIL FROM:<a@b.example> BODY=8BITMIME",
        )
    )
    assert transcript.replies[-2:] == [
        b"555 5.5.4 Unsupported MAIL parameter: SIZE\r\n",
        b"555 5.5.4 Unsupported MAIL parameter: BODY\r\n",
    ]


def test_parameters_of_advertised_extensions_are_passed_on() -> None:
    """AUTH= (RFC 4954 §5) and the DSN parameters (RFC 3461 §4)."""
    transcript = check(
        session(
            EHLO,
            "MAIL FROM:<a@b.example> AUTH=<> RET=HDRS ENVID=x1",
            "RCPT TO:<c@d.example> NOTIFY=NEVER ORCPT=rfc822;c@d.example",
        ),
        extensions=("AUTH PLAIN", "DSN"),
    )
    assert transcript.codes == [250, 250, 250]
    mail, rcpt = transcript.events[-2:]
    assert isinstance(mail, Mail) and isinstance(rcpt, Rcpt)
    assert mail.parameters == (("AUTH", "<>"), ("RET", "HDRS"), ("ENVID", "x1"))
    assert rcpt.parameters == (("NOTIFY", "NEVER"), ("ORCPT", "rfc822;c@d.example"))


def test_smtputf8() -> None:
    transcript = check(
        session(
            EHLO,
            "MAIL FROM:<j\u00f6rg@b\u00fccher.example> SMTPUTF8",
            "RCPT TO:<\u7528\u6237@\u4f8b\u5b50.example>",
        ),
        extensions=("SMTPUTF8",),
    )
    assert transcript.codes == [250, 250, 250]
    assert transcript.events[-1] == Rcpt(Mailbox("\u7528\u6237", "\u4f8b\u5b50.example"))


def test_utf8_address_needs_smtputf8() -> None:
    """RFC 6531 §3.5: 553 5.6.7 when MAIL did not ask for SMTPUTF8."""
    transcript = check(
        session(EHLO, "MAIL FROM:<j\u00f6rg@b\u00fccher.example>"), extensions=("SMTPUTF8",)
    )
    assert transcript.codes == [250, 553]
    assert transcript.replies[-1] == b"553 5.6.7 SMTPUTF8 is required for non-ASCII addresses\r\n"


def test_utf8_recipient_needs_smtputf8_on_mail() -> None:
    transcript = check(
        session(EHLO, MAIL, "RCPT TO:<\u7528\u6237@\u4f8b\u5b50.example>", RCPT),
        extensions=("SMTPUTF8",),
    )
    assert transcript.replies[-2:] == [
        b"553 5.6.7 SMTPUTF8 is required for non-ASCII addresses\r\n",
        b"250 2.1.5 OK\r\n",
    ]
    assert transcript.recipients == 1


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        # Not valid even with SMTPUTF8: a syntax error, as before.
        (
            "MAIL FROM:<j\u00f6rg@>",
            "501 5.1.7 Bad sender address syntax: <j\u00f6rg@>",
        ),
        (
            "MAIL FROM:<j\u00f6rg@b\u00fccher.example> SMTPUTF8",
            "250 2.1.0 OK",
        ),
    ],
)
def test_utf8_address_syntax(line: str, reply: str) -> None:
    transcript = check(session(EHLO, line), extensions=("SMTPUTF8",))
    assert transcript.replies[-1] == reply.encode() + b"\r\n"


def test_utf8_address_without_smtputf8_offered() -> None:
    """Where SMTPUTF8 is not offered, a non-ASCII address is a syntax error."""
    transcript = check(session(EHLO, "MAIL FROM:<j\u00f6rg@b\u00fccher.example>"))
    assert transcript.replies[-1] == (
        "501 5.1.7 Bad sender address syntax: <j\u00f6rg@b\u00fccher.example>\r\n".encode()
    )
    transcript = check(
        session("HELO client.example", "MAIL FROM:<j\u00f6rg@b\u00fccher.example>"),
        extensions=("SMTPUTF8",),
    )
    assert transcript.codes == [250, 501]


def test_command_not_utf8() -> None:
    assert only_reply(session(EHLO, b"NOOP \xff\r\n")) == (
        b"500 5.5.2 Command is not valid UTF-8\r\n"
    )


# -- SIZE (RFC 1870) ---------------------------------------------------------


def test_mail_size_over_the_limit() -> None:
    """RFC 1870 §6.2: 552 5.3.4 at MAIL."""
    limits = Limits(max_message_size=1000)
    transcript = check(
        session(EHLO, "MAIL FROM:<a@b.example> SIZE=1001", "MAIL FROM:<a@b.example> SIZE=1000"),
        limits=limits,
    )
    assert transcript.replies[-2:] == [
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n",
        b"250 2.1.0 OK\r\n",
    ]


def test_mail_size_without_a_limit() -> None:
    transcript = check(
        session(EHLO, "MAIL FROM:<a@b.example> SIZE=99999999999999999999"),
        limits=Limits(max_message_size=0),
    )
    assert transcript.codes == [250, 250]


# -- Recipients (RFC 5321 §4.5.3.1.8, §4.5.3.1.10) ------------------------------


def test_max_recipients() -> None:
    rcpts = [f"RCPT TO:<r{i}@mx.example>" for i in range(105)]
    transcript = check(
        session(EHLO, MAIL, *rcpts, "DATA", ".", "QUIT"), limits=Limits(max_recipients=100)
    )
    assert transcript.codes[:102] == [250] * 102
    assert transcript.replies[103:108] == [b"452 4.5.3 Error: too many recipients\r\n"] * 5
    assert transcript.codes[-3:] == [354, 250, 221]
    # Recipients over the limit are no errors: the client retries them.
    assert transcript.errors == 0


def test_default_max_recipients() -> None:
    assert Limits().max_recipients == 1000
    with pytest.raises(ValueError, match="max_recipients"):
        Limits(max_recipients=99)


# -- Errors (Postfix's smtpd_hard_error_limit) ----------------------------------


def test_too_many_errors_closes() -> None:
    transcript = check(session(EHLO, *["FOO"] * 25))
    assert transcript.codes == [250] + [500] * 20
    assert transcript.replies[-1] == (
        b"500 5.5.1 Command unrecognized\r\n421 4.7.0 mx.example Error: too many errors\r\n"
    )
    assert transcript.closed
    assert transcript.errors == 20


def test_error_limit_is_configurable() -> None:
    transcript = check(session("FOO", "NOOP", "BAR", "BAZ"), limits=Limits(max_errors=2))
    assert transcript.codes == [500, 250, 500]
    assert transcript.replies[-1].endswith(b"421 4.7.0 mx.example Error: too many errors\r\n")


def test_refused_messages_are_no_errors() -> None:
    script = session(EHLO, *[line for _ in range(25) for line in (MAIL, RCPT, "DATA", "x", ".")])
    refuse = by_type({EndOfMessage: Reply(554, "5.7.1", "Spam")})
    transcript = check(script, replier=refuse)
    assert transcript.codes.count(554) == 25
    assert not transcript.closed


# -- Line ends and NUL in commands ----------------------------------------------


def test_nul_in_command() -> None:
    assert only_reply(session(EHLO, b"NOOP\x00\r\n")) == b"500 5.5.2 NUL character in command\r\n"


def test_bare_lf_never_ends_a_command() -> None:
    """RFC 5321 §2.3.8: "NOOP<LF>QUIT<CRLF>" is one bad line, not QUIT."""
    transcript = check(session(EHLO) + b"NOOP\nQUIT\r\n" + b"NOOP\rQUIT\r\n")
    assert transcript.replies[2:] == [b"500 5.5.2 Bare CR or LF in command\r\n"] * 2
    assert not transcript.closed
    assert Quit() not in transcript.events


def test_lf_only_client_gets_nothing_until_the_line_is_too_long() -> None:
    transcript = check(b"EHLO client.example\nNOOP\n")
    assert transcript.replies == [GREETING.render()]


# -- Greeting and closing --------------------------------------------------------


def test_nothing_before_the_greeting() -> None:
    conn = ServerConnection("mx.example")
    conn.receive_data(b"EHLO early.example\r\n")
    assert conn.next_event() is PAUSED
    conn.send(GREETING)
    assert conn.next_event() == Ehlo("early.example")


def test_no_service_greeting() -> None:
    """RFC 5321 §3.1: after 554, 503 to everything but QUIT."""
    transcript = check(
        session(EHLO, MAIL, "NOOP", "QUIT"), greeting=Reply(554, None, "mx.example no service")
    )
    assert transcript.replies[1:] == [b"503 5.5.1 Error: no service here; only QUIT\r\n"] * 3 + [
        b"221 2.0.0 Bye\r\n"
    ]
    assert transcript.closed


def test_421_greeting_closes() -> None:
    conn = ServerConnection("mx.example")
    assert conn.send(Reply(421, "4.3.2", "busy")) == b"421 4.3.2 busy\r\n"
    assert conn.closed
    conn.receive_data(b"EHLO x\r\n")
    assert conn.next_event() is PAUSED
    assert conn.buffered == 0


def test_quit_closes_and_nothing_more_is_read() -> None:
    transcript = check(session(EHLO, "QUIT", "NOOP", "NOOP"))
    assert transcript.codes == [250, 221]
    assert transcript.events[-1] == Quit()
    assert transcript.state is State.CLOSED


def test_shutdown() -> None:
    """RFC 5321 §3.8: 421 at any time, with or without a command waiting."""
    conn = ServerConnection("mx.example")
    conn.send(GREETING)
    conn.receive_data(b"EHLO client.example\r\nNOOP\r\n")
    answer(conn)
    assert conn.next_event() == Noop()
    assert conn.send(conn.shutdown_reply()) == (
        b"421 4.3.2 mx.example Service shutting down, closing connection\r\n"
    )
    assert conn.closed
    assert conn.buffered == 0

    idle = ServerConnection("mx.example")
    idle.send(GREETING)
    idle.send(idle.shutdown_reply())
    assert idle.closed


# -- Strict ordering (RFC 2920 §3.1) -----------------------------------------


def test_paused_while_a_reply_is_owed() -> None:
    conn = ServerConnection("mx.example")
    conn.send(GREETING)
    conn.receive_data(session(EHLO, MAIL, RCPT, "DATA", "x", ".", "QUIT"))
    assert conn.next_event() == Ehlo("client.example")
    for _ in range(3):
        assert conn.next_event() is PAUSED
    assert conn.buffered > 0
    conn.send(conn.default_reply(Ehlo("client.example")))
    assert conn.next_event() == Mail(Mailbox("alice", "client.example"))
    assert conn.next_event() is PAUSED
    conn.send(Reply(250, "2.1.0", "OK"))
    assert isinstance(conn.next_event(), Rcpt)
    assert conn.next_event() is PAUSED
    conn.send(Reply(250, "2.1.5", "OK"))
    assert conn.next_event() == Data()
    conn.send(Reply(354, None, "go"))
    assert conn.next_event() == MessageData(b"x\r\n")
    end = conn.next_event()
    assert isinstance(end, EndOfMessage)
    assert conn.next_event() is PAUSED
    assert conn.state is State.END_OF_DATA
    conn.send(Reply(250, "2.0.0", "queued"))
    assert (conn.state, conn.closed) == (State.READY, False)
    assert conn.next_event() == Quit()
    assert conn.next_event() is PAUSED


def test_send_without_a_command_is_an_error() -> None:
    conn = ServerConnection("mx.example")
    conn.send(GREETING)
    with pytest.raises(RuntimeError, match="no command is waiting"):
        conn.send(Reply(250, "2.0.0", "OK"))


def test_data_must_be_answered_354_to_proceed() -> None:
    conn = ServerConnection("mx.example")
    conn.send(GREETING)
    conn.receive_data(session(EHLO, MAIL, RCPT, "DATA"))
    answer(conn, 3)
    assert conn.next_event() == Data()
    with pytest.raises(RuntimeError, match="354"):
        conn.send(Reply(250, "2.0.0", "OK"))


def test_bad_command_replies_with_its_reply() -> None:
    transcript = check(session(EHLO, "FOO bar"))
    event = transcript.events[-1]
    assert event == BadCommand(Reply(500, "5.5.1", "Command unrecognized"), b"FOO bar")


# -- End of input -------------------------------------------------------------------


def test_eof_when_idle() -> None:
    transcript = check(session(EHLO), eof=True)
    assert transcript.events[-1] == ConnectionClosed()
    assert not transcript.closed


def test_eof_inside_a_command_line() -> None:
    transcript = check(session(EHLO) + b"MAIL FROM:<a@b", eof=True)
    assert transcript.events[-1] == ConnectionClosed()
    assert transcript.codes == [250]


def test_eof_after_pipelined_commands_serves_them_first() -> None:
    transcript = check(session(EHLO, "NOOP", "NOOP"), eof=True)
    assert transcript.codes == [250, 250, 250]
    assert transcript.events[-1] == ConnectionClosed()


def test_eof_while_a_reply_is_owed() -> None:
    conn = ServerConnection("mx.example")
    conn.send(GREETING)
    conn.receive_data(b"NOOP\r\n")
    conn.receive_data(b"")
    assert conn.next_event() == Noop()
    assert conn.next_event() is PAUSED
    conn.send(Reply(250, "2.0.0", "OK"))
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() is NEED_DATA


def test_sessions_with_equal_settings_share_their_advertisement() -> None:
    """An idle session keeps no copy of what every session offers alike."""
    from mailframe.core import ServerConnection

    first, second = ServerConnection("mx.example.com"), ServerConnection("mx.example.com")
    assert first.advertised is second.advertised
    other = ServerConnection("mx.example.com", extensions=("AUTH PLAIN",))
    assert "AUTH" in other.advertised and "AUTH" not in first.advertised
