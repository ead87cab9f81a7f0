"""
STARTTLS (RFC 3207): once answered 220, the core throws away every octet it
has buffered, so that nothing sent before the handshake is executed after
it (the CVE-2011-0411 class of attack), and the session starts over.

Every session script is fed whole, one byte at a time and with trailing
data (:func:`tests.core.helpers.check`); what follows the handshake is given
as *secured*.
"""

from __future__ import annotations

import pytest

from mailframe.core import (
    AUTH_MAIL_EXTRA,
    NEED_DATA,
    PAUSED,
    Auth,
    Ehlo,
    Limits,
    Mail,
    Noop,
    Quit,
    ServerConnection,
    StartTls,
    State,
)
from mailframe.reply import Reply
from tests.core.helpers import GREETING, answer, by_type, check, session

EHLO = "EHLO client.example"
MAIL = "MAIL FROM:<alice@client.example>"
RCPT = "RCPT TO:<bob@mx.example>"
TLS = ("STARTTLS",)
READY = b"220 2.0.0 Ready to start TLS\r\n"


def ehlo_keywords(reply: bytes) -> list[bytes]:
    return [line[4:] for line in reply.split(b"\r\n")[1:] if line]


def test_starttls_session() -> None:
    transcript = check(session(EHLO, "STARTTLS"), extensions=TLS, secured=session(EHLO, "QUIT"))
    assert transcript.events == [
        Ehlo("client.example"),
        StartTls(),
        Ehlo("client.example"),
        Quit(),
    ]
    assert transcript.replies[2] == READY
    assert b"STARTTLS" in ehlo_keywords(transcript.replies[1])
    # RFC 3207 §4.2: not advertised once TLS is up.
    assert b"STARTTLS" not in ehlo_keywords(transcript.replies[3])
    assert transcript.tls


def test_commands_pipelined_after_starttls_are_never_executed() -> None:
    """
    CVE-2011-0411: "STARTTLS\\r\\nNOOP\\r\\n" in one packet; after the 220
    the NOOP is gone, and so is whatever else came in the clear.
    """
    plaintext = session(EHLO, "STARTTLS", "NOOP", MAIL, RCPT, "DATA") + b"x\r\n.\r\n"
    transcript = check(plaintext, extensions=TLS, secured=session(EHLO, "NOOP"))
    assert transcript.events == [
        Ehlo("client.example"),
        StartTls(),
        Ehlo("client.example"),
        Noop(),
    ]
    assert transcript.codes == [250, 220, 250, 250]
    assert not any(isinstance(event, Mail) for event in transcript.events)


def test_input_buffered_before_the_220_is_discarded() -> None:
    """Octets that arrive while a policy decides on STARTTLS are thrown away too."""
    conn = ServerConnection("mx.example", extensions=TLS)
    conn.send(GREETING)
    conn.receive_data(session(EHLO, "STARTTLS", "NOOP"))
    answer(conn)
    assert conn.next_event() == StartTls()
    conn.receive_data(session("RSET") + b"MAIL FROM:<evil@")
    assert conn.next_event() is PAUSED
    assert conn.send(Reply(220, "2.0.0", "Go ahead")) == b"220 2.0.0 Go ahead\r\n"
    assert conn.buffered == 0
    assert conn.buffered_commands == 0
    assert conn.next_event() is NEED_DATA
    conn.receive_data(session(EHLO))
    assert conn.next_event() == Ehlo("client.example")


def test_ehlo_is_needed_again_after_tls() -> None:
    transcript = check(session(EHLO, "STARTTLS"), extensions=TLS, secured=session(MAIL, EHLO, MAIL))
    assert transcript.replies[3:] == [
        b"503 5.5.1 Error: send HELO/EHLO first\r\n",
        transcript.replies[4],
        b"250 2.1.0 OK\r\n",
    ]
    assert transcript.replies[4].startswith(b"250-mx.example\r\n")


def test_session_knowledge_is_reset() -> None:
    """RFC 3207 §4.2: the client's name, ESMTP and AUTH are forgotten."""
    conn = ServerConnection("mx.example", extensions=("STARTTLS", "AUTH PLAIN"))
    conn.send(GREETING)
    conn.receive_data(session(EHLO, "AUTH PLAIN AGEAYg==", "STARTTLS"))
    answer(conn)
    assert conn.next_event() == Auth("PLAIN", b"\x00a\x00b")
    conn.send(Reply(235, "2.7.0", "Authentication successful"))
    assert (conn.authenticated, conn.esmtp, conn.client_name) == (True, True, "client.example")
    assert conn.next_event() == StartTls()
    conn.send(conn.default_reply(StartTls()))
    assert (conn.tls, conn.authenticated, conn.esmtp, conn.client_name) == (True, False, False, "")
    assert conn.state is State.GREETED


def test_second_starttls() -> None:
    transcript = check(
        session(EHLO, "STARTTLS"), extensions=TLS, secured=session(EHLO, "STARTTLS", "NOOP")
    )
    assert transcript.replies[-2:] == [
        b"503 5.5.1 Error: TLS already active\r\n",
        b"250 2.0.0 OK\r\n",
    ]
    assert transcript.tls


def test_implicit_tls() -> None:
    """Port 465 (RFC 8314 §3.3): nothing to start, STARTTLS is not offered."""
    transcript = check(session(EHLO, "STARTTLS", "NOOP"), extensions=TLS, tls=True)
    assert b"STARTTLS" not in ehlo_keywords(transcript.replies[1])
    assert transcript.replies[2:] == [
        b"503 5.5.1 Error: TLS already active\r\n",
        b"250 2.0.0 OK\r\n",
    ]
    assert transcript.tls
    assert ServerConnection("mx.example", tls=True).tls
    assert not ServerConnection("mx.example").tls


@pytest.mark.parametrize("argument", ["now", "please wait", "="])
def test_starttls_takes_no_parameter(argument: str) -> None:
    transcript = check(session(EHLO, f"STARTTLS {argument}", "NOOP"), extensions=TLS)
    assert transcript.replies[2:] == [b"501 5.5.4 Syntax: STARTTLS\r\n", b"250 2.0.0 OK\r\n"]
    assert not transcript.tls


def test_starttls_not_offered() -> None:
    transcript = check(session(EHLO, "STARTTLS", "NOOP"))
    assert transcript.replies[2:] == [
        b"502 5.5.1 Command not implemented: STARTTLS\r\n",
        b"250 2.0.0 OK\r\n",
    ]
    assert not transcript.tls


@pytest.mark.parametrize("lines", [(MAIL,), (MAIL, RCPT)])
def test_starttls_during_a_transaction(lines: tuple[str, ...]) -> None:
    """RFC 3207 §4: only outside a mail transaction; the NOOP is still served."""
    transcript = check(session(EHLO, *lines, "STARTTLS", "NOOP"), extensions=TLS)
    assert transcript.replies[-2:] == [
        b"503 5.5.1 Error: MAIL transaction in progress\r\n",
        b"250 2.0.0 OK\r\n",
    ]
    assert not transcript.tls
    assert transcript.state is State.MAIL if len(lines) == 1 else State.RCPT


def test_starttls_before_ehlo() -> None:
    transcript = check(session("STARTTLS"), extensions=TLS, secured=session("HELO client.example"))
    assert transcript.codes == [220, 250]
    assert transcript.tls
    assert transcript.state is State.READY


def test_starttls_after_helo() -> None:
    transcript = check(
        session("HELO client.example", "STARTTLS"), extensions=TLS, secured=session(EHLO)
    )
    assert transcript.codes == [250, 220, 250]
    assert transcript.esmtp


def test_starttls_in_no_service() -> None:
    transcript = check(
        session("STARTTLS", "QUIT"),
        extensions=TLS,
        greeting=Reply(554, None, "mx.example no service"),
    )
    assert transcript.replies[1:] == [
        b"503 5.5.1 Error: no service here; only QUIT\r\n",
        b"221 2.0.0 Bye\r\n",
    ]


def test_refused_starttls_changes_nothing() -> None:
    """Any reply but 220 leaves the session as it was, buffered input included."""
    refuse = by_type({StartTls: Reply(454, "4.7.0", "TLS not available due to temporary reason")})
    transcript = check(session(EHLO, "STARTTLS", "NOOP", MAIL), extensions=TLS, replier=refuse)
    assert transcript.codes == [250, 454, 250, 250]
    assert transcript.events[-2] == Noop()
    assert isinstance(transcript.events[-1], Mail)
    assert not transcript.tls
    assert transcript.esmtp
    assert transcript.state is State.MAIL


def test_starttls_must_be_answered_220_to_proceed() -> None:
    conn = ServerConnection("mx.example", extensions=TLS)
    conn.send(GREETING)
    conn.receive_data(session(EHLO, "STARTTLS", "NOOP"))
    answer(conn)
    assert conn.next_event() == StartTls()
    with pytest.raises(RuntimeError, match="220"):
        conn.send(Reply(250, "2.0.0", "OK"))
    # Nothing changed: the command still waits for its reply.
    assert (conn.tls, conn.state) == (False, State.READY)
    assert conn.next_event() is PAUSED
    conn.send(Reply(220, "2.0.0", "Go ahead"))
    assert conn.tls
    assert conn.buffered == 0


def test_421_to_starttls_closes() -> None:
    transcript = check(
        session(EHLO, "STARTTLS", "NOOP"),
        extensions=TLS,
        replier=by_type({StartTls: Reply(421, "4.7.0", "bye")}),
    )
    assert transcript.codes == [250, 421]
    assert transcript.closed
    assert not transcript.tls


def test_extensions_change_once_tls_is_up() -> None:
    """The adapter adds AUTH after the handshake; the MAIL line may then grow."""
    transcript = check(
        session(EHLO, "STARTTLS"),
        extensions=TLS,
        tls_extensions=("AUTH PLAIN LOGIN",),
        secured=session(EHLO, "AUTH PLAIN AGEAYg=="),
    )
    assert b"AUTH PLAIN LOGIN" not in ehlo_keywords(transcript.replies[1])
    assert ehlo_keywords(transcript.replies[3])[-1] == b"AUTH PLAIN LOGIN"
    assert transcript.events[-1] == Auth("PLAIN", b"\x00a\x00b")


def test_set_extensions() -> None:
    conn = ServerConnection("mx.example", Limits(), ("STARTTLS",), dsn=False)
    base = conn.line_limit
    conn.set_extensions(("STARTTLS", "AUTH PLAIN"))
    assert conn.advertised >= {"STARTTLS", "AUTH"}
    assert conn.line_limit == base + AUTH_MAIL_EXTRA
    assert conn.helo_reply(Ehlo("c")).text[-2:] == ("STARTTLS", "AUTH PLAIN")
    conn.set_extensions(())
    assert "AUTH" not in conn.advertised
    assert conn.line_limit == base
    # Once TLS is up, STARTTLS is never advertised, whatever is set.
    secure = ServerConnection("mx.example", extensions=("STARTTLS", "SMTPUTF8"), tls=True)
    assert "STARTTLS" not in secure.advertised
    secure.set_extensions(("STARTTLS", "AUTH LOGIN"))
    assert secure.helo_reply(Ehlo("c")).text[-1:] == ("AUTH LOGIN",)
