"""
The commands of :class:`~mailframe.core.ClientConnection`, how it reads the
EHLO reply, pairs replies with commands under PIPELINING (RFC 2920), and
what it refuses to send.

Every server transcript here is fed whole, one byte at a time and with
trailing data (:func:`tests.core.test_client_helpers.check`).
"""

from __future__ import annotations

import pytest

from mailframe.address import NULL_PATH, Mailbox
from mailframe.core import (
    NEED_DATA,
    REPLY_LINE,
    ClientAuth,
    ClientAuthCancel,
    ClientAuthResponse,
    ClientBdat,
    ClientCommand,
    ClientConnection,
    ClientData,
    ClientEhlo,
    ClientEndOfMessage,
    ClientHelo,
    ClientLimits,
    ClientMail,
    ClientNoop,
    ClientQuit,
    ClientRcpt,
    ClientRset,
    ClientStartTls,
    ClientState,
    ConnectionClosed,
    Greeting,
    LocalProtocolError,
    ProtocolViolation,
    Response,
    dsn_mail_parameters,
    dsn_rcpt_parameters,
)
from mailframe.envelope import DSNOptions
from mailframe.errors import LocalError
from mailframe.reply import Reply
from tests.core.test_client_helpers import (
    EHLO_PIPELINING,
    GREETING,
    Raised,
    Sent,
    check,
    drain,
    feed,
    outstanding,
    session,
    state,
)

EHLO = ClientEhlo("client.example")
MAIL = ClientMail(Mailbox("alice", "client.example"))
RCPT = ClientRcpt(Mailbox("bob", "mx.example"))
RCPT2 = ClientRcpt(Mailbox("carol", "mx.example"))
EHLO_PLAIN = session("250-mx.example", "250-SIZE 1000000", "250 8BITMIME")
OK = session("250 2.0.0 OK")


def greeted(ehlo_reply: bytes = EHLO_PIPELINING, *, tls: bool = False) -> ClientConnection:
    """A connection that has been greeted and whose EHLO got *ehlo_reply*."""
    conn = ClientConnection(tls=tls)
    assert isinstance(feed(conn, GREETING)[0], Greeting)
    assert conn.send(EHLO) == b"EHLO client.example\r\n"
    [event] = feed(conn, ehlo_reply)
    assert isinstance(event, Response) and event.command == EHLO, event
    return conn


# -- A whole session ---------------------------------------------------------


def test_esmtp_session() -> None:
    """A complete session, byte for byte, without PIPELINING."""
    transcript = check(
        GREETING
        + EHLO_PLAIN
        + session("250 2.1.0 OK", "250 2.1.5 OK", "354 Go ahead", "250 2.0.0 Queued as 1")
        + session("221 2.0.0 Bye"),
        [
            [EHLO],
            [MAIL],
            [RCPT],
            [ClientData()],
            [b"Subject: hi\r\n\r\nHello.\r\n", ClientEndOfMessage()],
            [ClientQuit()],
        ],
        eof=True,
    )
    assert transcript.sent == (
        b"EHLO client.example\r\n"
        b"MAIL FROM:<alice@client.example>\r\n"
        b"RCPT TO:<bob@mx.example>\r\n"
        b"DATA\r\n"
        b"Subject: hi\r\n\r\nHello.\r\n.\r\n"
        b"QUIT\r\n"
    )
    assert transcript.events == [
        Greeting(Reply(220, None, "mx.example ESMTP")),
        Response(EHLO, Reply(250, None, ("mx.example", "SIZE 1000000", "8BITMIME"))),
        Response(MAIL, Reply(250, "2.1.0", "OK")),
        Response(RCPT, Reply(250, "2.1.5", "OK")),
        Response(ClientData(), Reply(354, None, "Go ahead")),
        Response(ClientEndOfMessage(), Reply(250, "2.0.0", "Queued as 1")),
        Response(ClientQuit(), Reply(221, "2.0.0", "Bye")),
        ConnectionClosed(),
    ]
    assert transcript.state is ClientState.CLOSED
    assert transcript.outstanding == ()


def test_pipelined_session_pairs_replies_in_order() -> None:
    """RFC 2920 §3.1: MAIL, RCPT, RCPT and DATA in one group; replies in order."""
    transcript = check(
        GREETING
        + EHLO_PIPELINING
        + session("250 2.1.0 OK", "550 5.1.1 No such user", "250 2.1.5 OK", "354 Go ahead")
        + session("250 2.0.0 Queued", "221 2.0.0 Bye"),
        [
            [EHLO],
            [MAIL, RCPT, RCPT2, ClientData()],
            [b"Hi\r\n", ClientEndOfMessage(), ClientQuit()],
        ],
    )
    assert transcript.sent == (
        b"EHLO client.example\r\n"
        b"MAIL FROM:<alice@client.example>\r\nRCPT TO:<bob@mx.example>\r\n"
        b"RCPT TO:<carol@mx.example>\r\nDATA\r\n"
        b"Hi\r\n.\r\nQUIT\r\n"
    )
    assert [(r.command, r.reply.code) for r in transcript.responses] == [
        (EHLO, 250),
        (MAIL, 250),
        (RCPT, 550),
        (RCPT2, 250),
        (ClientData(), 354),
        (ClientEndOfMessage(), 250),
        (ClientQuit(), 221),
    ]
    # The group was written at once, before any of its replies.
    assert transcript.items[3:7] == tuple(
        Sent(line)
        for line in (
            b"MAIL FROM:<alice@client.example>\r\n",
            b"RCPT TO:<bob@mx.example>\r\n",
            b"RCPT TO:<carol@mx.example>\r\n",
            b"DATA\r\n",
        )
    )


def test_outstanding_commands_and_accepted_recipients() -> None:
    conn = greeted()
    for command in (MAIL, RCPT, RCPT2, ClientData()):
        conn.send(command)
    assert outstanding(conn) == (MAIL, RCPT, RCPT2, ClientData())
    feed(conn, session("250 OK", "250 OK"))
    assert outstanding(conn) == (RCPT2, ClientData())
    assert conn.accepted_recipients == 1
    assert state(conn) is ClientState.RCPT
    feed(conn, session("452 4.5.3 Too many recipients", "354 Go"))
    assert outstanding(conn) == ()
    assert conn.accepted_recipients == 1
    assert state(conn) is ClientState.DATA
    assert conn.sending_data
    conn.send_data(b"x\r\n")
    conn.end_data()
    feed(conn, OK)
    assert conn.accepted_recipients == 0
    assert state(conn) is ClientState.READY


def test_data_refused_in_a_pipelined_group() -> None:
    """
    RFC 2920 §3.1: every recipient refused, and DATA with them; the data is
    not sent (the Response says why) and the transaction needs RSET.
    """
    transcript = check(
        GREETING
        + EHLO_PIPELINING
        + session("250 2.1.0 OK", "550 5.1.1 No", "554 5.5.1 No valid recipients", "250 OK"),
        [[EHLO], [MAIL, RCPT, ClientData()], [ClientRset()], [MAIL]],
    )
    assert transcript.codes == [250, 250, 550, 554, 250]
    assert transcript.sent.endswith(b"DATA\r\nRSET\r\nMAIL FROM:<alice@client.example>\r\n")
    assert transcript.state is ClientState.READY
    assert transcript.outstanding == (MAIL,)


def test_message_data_is_refused_after_data_was_refused() -> None:
    conn = greeted()
    for command in (MAIL, RCPT, ClientData()):
        conn.send(command)
    with pytest.raises(LocalProtocolError, match="not been answered 354"):
        conn.send_data(b"early\r\n")
    events = feed(conn, session("250 OK", "250 OK", "451 4.3.0 Try later"))
    assert events[-1] == Response(ClientData(), Reply(451, "4.3.0", "Try later"))
    with pytest.raises(LocalProtocolError, match="no message data is awaited"):
        conn.send_data(b"Hi\r\n")
    with pytest.raises(LocalProtocolError):
        conn.end_data()
    # The transaction is still open on the server: MAIL would be nested.
    assert state(conn) is ClientState.RCPT
    with pytest.raises(LocalProtocolError, match="MAIL in state rcpt"):
        conn.send(MAIL)
    assert conn.send(ClientRset()) == b"RSET\r\n"


def test_a_refused_mail_fails_the_rest_of_its_group() -> None:
    transcript = check(
        GREETING
        + EHLO_PIPELINING
        + session("550 5.7.1 Go away", "503 5.5.1 Need MAIL", "503 5.5.1 Need RCPT"),
        [[EHLO], [MAIL, RCPT, ClientData()], [MAIL]],
    )
    assert transcript.codes == [250, 550, 503, 503]
    assert transcript.state is ClientState.READY
    # A new MAIL may go at once: nothing was left open.
    assert transcript.outstanding == (MAIL,)


def test_a_pipelined_data_answered_354_without_recipients() -> None:
    """RFC 2920 §3.1: the client must then send the message, or just a dot."""
    conn = greeted()
    for command in (MAIL, RCPT, ClientData()):
        conn.send(command)
    feed(conn, session("250 OK", "550 No", "354 Go"))
    assert state(conn) is ClientState.DATA
    assert conn.accepted_recipients == 0
    assert conn.end_data() == b".\r\n"


def test_commands_may_follow_the_final_dot() -> None:
    """RFC 2920 §3.1: message content may begin a group; QUIT may follow it."""
    conn = greeted()
    for command in (MAIL, RCPT, ClientData()):
        conn.send(command)
    feed(conn, session("250 OK", "250 OK", "354 Go"))
    out = conn.send_data(b"Hi\r\n") + conn.end_data() + conn.send(MAIL) + conn.send(RCPT)
    assert out == b"Hi\r\n.\r\nMAIL FROM:<alice@client.example>\r\nRCPT TO:<bob@mx.example>\r\n"
    events = feed(conn, session("250 2.0.0 Queued", "250 OK", "250 OK"))
    assert [type(e.command) for e in events if isinstance(e, Response)] == [
        ClientEndOfMessage,
        ClientMail,
        ClientRcpt,
    ]
    assert state(conn) is ClientState.RCPT


# -- What is sent: rendering and the values -----------------------------------


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (ClientEhlo("client.example"), b"EHLO client.example\r\n"),
        (ClientEhlo("[192.0.2.1]"), b"EHLO [192.0.2.1]\r\n"),
        (ClientEhlo("[IPv6:2001:db8::1]"), b"EHLO [IPv6:2001:db8::1]\r\n"),
        (ClientHelo("client.example"), b"HELO client.example\r\n"),
        (ClientMail(NULL_PATH), b"MAIL FROM:<>\r\n"),
        (
            ClientMail(Mailbox("a b", "x.example"), {"SIZE": "10", "body": "8BITMIME"}),
            b'MAIL FROM:<"a b"@x.example> SIZE=10 BODY=8BITMIME\r\n',
        ),
        (
            ClientMail(Mailbox("j\u00f6rg", "b\u00fccher.example"), [("SMTPUTF8", None)]),
            "MAIL FROM:<j\u00f6rg@b\u00fccher.example> SMTPUTF8\r\n".encode(),
        ),
        (
            ClientMail(NULL_PATH, {"RET": "HDRS", "ENVID": "QQ314159"}),
            b"MAIL FROM:<> RET=HDRS ENVID=QQ314159\r\n",
        ),
        (ClientRcpt(Mailbox("postmaster", "")), b"RCPT TO:<postmaster>\r\n"),
        (
            ClientRcpt(Mailbox("bob", "mx.example"), {"NOTIFY": "SUCCESS,FAILURE"}),
            b"RCPT TO:<bob@mx.example> NOTIFY=SUCCESS,FAILURE\r\n",
        ),
        (
            ClientRcpt(Mailbox("bob", "mx.example"), {"ORCPT": "rfc822;b+2Bb@x.example"}),
            b"RCPT TO:<bob@mx.example> ORCPT=rfc822;b+2Bb@x.example\r\n",
        ),
        (ClientData(), b"DATA\r\n"),
        (ClientRset(), b"RSET\r\n"),
        (ClientNoop(), b"NOOP\r\n"),
        (ClientQuit(), b"QUIT\r\n"),
        (ClientStartTls(), b"STARTTLS\r\n"),
        (ClientBdat(0, True), b"BDAT 0 LAST\r\n"),
        (ClientBdat(1000), b"BDAT 1000\r\n"),
        (ClientAuth("plain", b"\x00user\x00pass"), b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n"),
        (ClientAuth("EXTERNAL", b""), b"AUTH EXTERNAL =\r\n"),
        (ClientAuth("LOGIN"), b"AUTH LOGIN\r\n"),
        (ClientAuthResponse(b"user"), b"dXNlcg==\r\n"),
        (ClientAuthResponse(b""), b"\r\n"),
        (ClientAuthCancel(), b"*\r\n"),
    ],
)
def test_rendering(command: ClientCommand, line: bytes) -> None:
    from mailframe.core._client import _render

    assert _render(command) == line


def test_sent_commands_render_the_same() -> None:
    conn = greeted(session("250-mx.example", "250-SMTPUTF8", "250-DSN", "250 8BITMIME"))
    mail = ClientMail(Mailbox("j\u00f6rg", "x.example"), {"SMTPUTF8": None, "RET": "FULL"})
    assert conn.send(mail) == "MAIL FROM:<j\u00f6rg@x.example> SMTPUTF8 RET=FULL\r\n".encode()


def test_dsn_parameters_are_sent_when_dsn_is_offered() -> None:
    """RFC 3461 §4: RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT."""
    conn = greeted(session("250-mx.example", "250-PIPELINING", "250 DSN"))
    assert conn.dsn
    mail = ClientMail(NULL_PATH, dsn_mail_parameters("HDRS", "id+1"))
    rcpt = ClientRcpt(
        Mailbox("bob", "mx.example"),
        dsn_rcpt_parameters(DSNOptions(frozenset({"SUCCESS"}), "rfc822;b=b@x.example")),
    )
    assert conn.send(mail) + conn.send(rcpt) == (
        b"MAIL FROM:<> RET=HDRS ENVID=id+2B1\r\n"
        b"RCPT TO:<bob@mx.example> NOTIFY=SUCCESS ORCPT=rfc822;b+3Db@x.example\r\n"
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: ClientEhlo(""),
        lambda: ClientEhlo("client example"),
        lambda: ClientEhlo("client.example\r\nMAIL FROM:<>"),
        lambda: ClientHelo("[bad literal]"),
        lambda: ClientMail(NULL_PATH, {"SIZE": "1 2"}),
        lambda: ClientMail(NULL_PATH, {"SIZE": "big"}),
        lambda: ClientMail(NULL_PATH, {"BODY": "9BIT"}),
        lambda: ClientMail(NULL_PATH, {"SMTPUTF8": "yes"}),
        lambda: ClientMail(NULL_PATH, {"X-A": "a=b"}),
        lambda: ClientMail(NULL_PATH, {"X-A": "a\r\nRSET"}),
        lambda: ClientMail(NULL_PATH, {"X-A": ""}),
        lambda: ClientMail(NULL_PATH, {"-X": None}),
        lambda: ClientMail(NULL_PATH, {"X=Y": None}),
        lambda: ClientMail(NULL_PATH, [("X", None), ("x", None)]),
        lambda: ClientMail(NULL_PATH, {"X": "caf\u00e9"}),
        # RFC 6531 §3.4: a non-ASCII sender needs SMTPUTF8.
        lambda: ClientMail(Mailbox("j\u00f6rg", "x.example")),
        lambda: ClientRcpt(Mailbox("bob", "mx.example"), {"NOTIFY": "a b"}),
        # RFC 3461 §4: what a server would refuse with 501.
        lambda: ClientMail(NULL_PATH, {"RET": "ALL"}),
        lambda: ClientMail(NULL_PATH, {"RET": None}),
        lambda: ClientMail(NULL_PATH, {"ENVID": "a+2"}),
        lambda: ClientMail(NULL_PATH, {"ENVID": "a+0Ab"}),
        lambda: ClientMail(NULL_PATH, {"ENVID": "e" * 101}),
        lambda: ClientRcpt(Mailbox("bob", "mx.example"), {"NOTIFY": "NEVER,DELAY"}),
        lambda: ClientRcpt(Mailbox("bob", "mx.example"), {"NOTIFY": "DELAY,DELAY"}),
        lambda: ClientRcpt(Mailbox("bob", "mx.example"), {"NOTIFY": None}),
        lambda: ClientRcpt(Mailbox("bob", "mx.example"), {"ORCPT": "bob@mx.example"}),
        lambda: ClientRcpt(Mailbox("bob", "mx.example"), {"ORCPT": "rfc822;a+0Db"}),
        lambda: ClientBdat(-1),
        lambda: ClientAuth("PLAIN PLAIN"),
        lambda: ClientAuth(""),
        lambda: ClientAuth("A" * 21),
    ],
)
def test_commands_are_valid_when_built(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_parameters_are_kept_with_upper_case_keywords() -> None:
    mail = ClientMail(NULL_PATH, {"size": "5", "Body": "8bitmime"})
    assert mail.parameters == (("SIZE", "5"), ("BODY", "8bitmime"))
    assert mail.body == "8BITMIME"
    assert not mail.smtputf8
    assert ClientMail(NULL_PATH, [("X-A", None)]).parameters == (("X-A", None),)


def test_credentials_stay_out_of_repr() -> None:
    assert "secret" not in repr(ClientAuth("PLAIN", b"secret"))
    assert "secret" not in repr(ClientAuthResponse(b"secret"))


# -- The EHLO reply ----------------------------------------------------------


def test_extensions() -> None:
    transcript = check(
        GREETING
        + session(
            "250-mx.example Hello",
            "250-SIZE 35882577",
            "250-8BITMIME",
            "250-pipelining",
            "250-AUTH LOGIN PLAIN",
            "250-AUTH=LOGIN CRAM-MD5",
            "250-DSN",
            "250-SMTPUTF8",
            "250-CHUNKING",
            "250-STARTTLS",
            "250-ENHANCEDSTATUSCODES",
            "250-X-EXTENSION  with   spaces",
            "250-",
            "250 -not a keyword",
        ),
        [[EHLO]],
    )
    assert dict(transcript.extensions) == {
        "SIZE": "35882577",
        "8BITMIME": "",
        "PIPELINING": "",
        "AUTH": "LOGIN PLAIN CRAM-MD5",
        "DSN": "",
        "SMTPUTF8": "",
        "CHUNKING": "",
        "STARTTLS": "",
        "ENHANCEDSTATUSCODES": "",
        "X-EXTENSION": "with spaces",
    }
    conn = greeted(
        session("250-mx.example", "250-SIZE 35882577", "250-8BITMIME", "250-PIPELINING")
        + session("250-AUTH LOGIN plain", "250-DSN", "250-SMTPUTF8", "250-CHUNKING")
        + session("250 STARTTLS")
    )
    assert conn.max_size == 35882577
    assert conn.pipelining and conn.eightbitmime and conn.smtputf8
    assert conn.chunking and conn.starttls and conn.dsn
    assert conn.auth_mechanisms == frozenset({"LOGIN", "PLAIN"})
    assert conn.esmtp


def test_no_extensions_before_ehlo() -> None:
    conn = ClientConnection()
    assert conn.extensions == {}
    assert conn.max_size is None
    assert not (conn.pipelining or conn.eightbitmime or conn.smtputf8)
    assert not (conn.chunking or conn.starttls or conn.dsn)
    assert conn.auth_mechanisms == frozenset()
    with pytest.raises(TypeError):
        conn.extensions["SIZE"] = "1"  # type: ignore[index]


@pytest.mark.parametrize(
    ("line", "size"),
    [
        ("250 SIZE 1000", 1000),
        # RFC 1870 §4: no number, or 0, means no fixed limit.
        ("250 SIZE", None),
        ("250 SIZE 0", None),
        ("250 SIZE unlimited", None),
        ("250 SIZE 10 20", 10),
        ("250 8BITMIME", None),
    ],
)
def test_max_size(line: str, size: int | None) -> None:
    conn = greeted(session("250-mx.example", line))
    assert conn.max_size == size


def test_ehlo_refused_falls_back_to_helo() -> None:
    """RFC 5321 §3.2: an EHLO refused, the client may say HELO."""
    transcript = check(
        GREETING
        + session("502 5.5.2 Error: command not recognized", "250 mx.example")
        + session("250 OK"),
        [[EHLO], [ClientHelo("client.example")], [MAIL]],
    )
    assert transcript.codes == [502, 250, 250]
    assert transcript.sent == (
        b"EHLO client.example\r\nHELO client.example\r\nMAIL FROM:<alice@client.example>\r\n"
    )
    assert transcript.extensions == ()
    assert transcript.state is ClientState.MAIL


def test_no_extension_after_helo() -> None:
    conn = ClientConnection()
    feed(conn, GREETING)
    conn.send(EHLO)
    feed(conn, session("500 5.5.1 What?"))
    assert state(conn) is ClientState.GREETED
    with pytest.raises(LocalProtocolError, match="MAIL in state greeted"):
        conn.send(MAIL)
    conn.send(ClientHelo("client.example"))
    feed(conn, session("250 mx.example"))
    assert not conn.esmtp
    with pytest.raises(LocalProtocolError, match="parameters after HELO"):
        conn.send(ClientMail(NULL_PATH, {"X-UNKNOWN": None}))
    conn.send(MAIL)
    # Without PIPELINING, one command at a time.
    with pytest.raises(LocalProtocolError, match="does not offer PIPELINING"):
        conn.send(RCPT)


def test_a_second_ehlo_replaces_the_extensions() -> None:
    conn = greeted()
    conn.send(EHLO)
    feed(conn, session("250-mx.example", "250 CHUNKING"))
    assert dict(conn.extensions) == {"CHUNKING": ""}


# -- What the session does not allow ------------------------------------------


def test_nothing_before_the_greeting() -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError, match="before the greeting"):
        conn.send(EHLO)
    feed(conn, session("220-mx.example", "220 ESMTP"))
    assert conn.send(EHLO) == b"EHLO client.example\r\n"


@pytest.mark.parametrize(
    ("ehlo_reply", "commands", "message"),
    [
        (EHLO_PIPELINING, [RCPT], "RCPT in state ready"),
        (EHLO_PIPELINING, [ClientData()], "DATA in state ready"),
        (EHLO_PIPELINING, [MAIL, ClientData()], "DATA in state mail"),
        (EHLO_PIPELINING, [MAIL, MAIL], "MAIL in state mail"),
        (EHLO_PIPELINING, [ClientAuthResponse(b"x")], "AUTH response in state ready"),
        (EHLO_PIPELINING, [ClientEndOfMessage()], "no message data is awaited"),
        # RFC 2920 §3.1: these end a group.
        (EHLO_PIPELINING, [ClientNoop(), MAIL], "before the reply to NOOP, which ends"),
        (EHLO_PIPELINING, [EHLO, MAIL], "before the reply to EHLO, which ends"),
        (EHLO_PIPELINING, [ClientQuit(), ClientQuit()], "before the reply to QUIT"),
        (EHLO_PIPELINING, [MAIL, RCPT, ClientData(), ClientRset()], "reply to DATA"),
        (EHLO_PLAIN, [MAIL, RCPT], "does not offer PIPELINING"),
        # Only extensions the server offered (RFC 5321 §4.1.1.2).
        (EHLO_PIPELINING, [ClientStartTls()], "does not offer STARTTLS"),
        (EHLO_PIPELINING, [ClientAuth("PLAIN")], "does not offer AUTH"),
        (EHLO_PIPELINING, [MAIL, RCPT, ClientBdat(1, True)], "does not offer CHUNKING"),
        (EHLO_PIPELINING, [ClientMail(NULL_PATH, {"RET": "FULL"})], "does not offer DSN"),
        (EHLO_PIPELINING, [MAIL, ClientRcpt(RCPT.recipient, {"NOTIFY": "NEVER"})], "offer DSN"),
        (EHLO_PLAIN, [ClientMail(NULL_PATH, {"SMTPUTF8": None})], "does not offer SMTPUTF8"),
        (EHLO_PLAIN, [ClientMail(NULL_PATH, {"AUTH": "<>"})], "does not offer AUTH"),
        (
            session("250-mx.example", "250 CHUNKING"),
            [ClientMail(NULL_PATH, {"SIZE": "10"})],
            "does not offer SIZE",
        ),
        (
            session("250-mx.example", "250 CHUNKING"),
            [ClientMail(NULL_PATH, {"BODY": "8BITMIME"})],
            "does not offer 8BITMIME",
        ),
        (EHLO_PIPELINING, [ClientMail(NULL_PATH, {"BODY": "BINARYMIME"})], "offer BINARYMIME"),
        (
            session("250-mx.example", "250 BINARYMIME"),
            [ClientMail(NULL_PATH, {"BODY": "BINARYMIME"})],
            "does not offer CHUNKING",
        ),
        (
            session("250-mx.example", "250 CHUNKING"),
            [ClientMail(NULL_PATH, {"BODY": "7BIT"})],
            "does not offer 8BITMIME",
        ),
        (
            session("250-mx.example", "250-PIPELINING", "250-BINARYMIME", "250 CHUNKING"),
            [ClientMail(NULL_PATH, {"BODY": "BINARYMIME"}), RCPT, ClientData()],
            "DATA for BODY=BINARYMIME",
        ),
        # RFC 6531 §3.4.
        (EHLO_PIPELINING, [MAIL, ClientRcpt(Mailbox("j\u00f6rg", "x.example"))], "SMTPUTF8"),
    ],
)
def test_refused_sends(ehlo_reply: bytes, commands: list[ClientCommand], message: str) -> None:
    """The last command is refused, and changes nothing."""
    conn = greeted(ehlo_reply)
    *before, last = commands
    for command in before:
        conn.send(command)
    then = (conn.outstanding, conn.state)
    with pytest.raises(LocalProtocolError, match=message):
        conn.send(last)
    assert (outstanding(conn), state(conn)) == then


def test_local_protocol_error_carries_a_transient_reply() -> None:
    error = LocalProtocolError("cannot send DATA")
    assert isinstance(error, LocalError)
    assert error.reply == Reply(451, "4.3.0", "Local error in processing")
    assert str(error) == "cannot send DATA"


def test_no_service_greeting_allows_only_quit() -> None:
    """RFC 5321 §3.1: after 554, QUIT."""
    transcript = check(session("554 5.7.1 No service for you"), [[EHLO]])
    assert transcript.state is ClientState.NO_SERVICE
    assert transcript.raised == ["cannot send EHLO in state no-service"]
    transcript = check(session("554 5.7.1 No", "221 Bye"), [[ClientQuit()]], eof=True)
    assert transcript.codes == [221]
    assert transcript.events[-1] == ConnectionClosed()


def test_421_greeting_closes() -> None:
    transcript = check(session("421 4.3.2 Too busy"), [[EHLO]], eof=True)
    assert transcript.events == [
        Greeting(Reply(421, "4.3.2", "Too busy")),
        ConnectionClosed(),
    ]
    assert transcript.state is ClientState.CLOSED
    assert transcript.sent == b""


def test_quit_closes() -> None:
    transcript = check(
        GREETING + session("221 2.0.0 Bye") + b"250 ignored\r\n", [[ClientQuit()]], eof=True
    )
    assert transcript.events[1:] == [
        Response(ClientQuit(), Reply(221, "2.0.0", "Bye")),
        ConnectionClosed(),
    ]
    conn = ClientConnection()
    feed(conn, GREETING)
    conn.send(ClientQuit())
    feed(conn, session("221 Bye"))
    assert conn.closed
    with pytest.raises(LocalProtocolError, match="connection is closed"):
        conn.send(ClientNoop())


def test_a_421_answers_the_command_and_closes() -> None:
    """RFC 5321 §3.8: the pipelined commands after it are never answered."""
    transcript = check(
        GREETING + EHLO_PIPELINING + session("250 OK", "421 4.7.0 Closing") + b"550 late\r\n",
        [[EHLO], [MAIL, RCPT, RCPT2]],
        eof=True,
    )
    assert transcript.events[-2:] == [
        Response(RCPT, Reply(421, "4.7.0", "Closing")),
        ConnectionClosed(),
    ]
    assert transcript.state is ClientState.CLOSED
    assert transcript.outstanding == (RCPT2,)


def test_an_unsolicited_421_is_a_response_to_nothing() -> None:
    """A server that times out while message data is written says 421 and closes."""
    conn = greeted()
    for command in (MAIL, RCPT, ClientData()):
        conn.send(command)
    feed(conn, session("250 OK", "250 OK", "354 Go"))
    conn.send_data(b"Subject: slow\r\n")
    events = feed(conn, session("421 4.4.2 mx.example Error: timeout exceeded"))
    assert events == [Response(None, Reply(421, "4.4.2", "mx.example Error: timeout exceeded"))]
    assert conn.closed
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send_data(b"more\r\n")
    assert feed(conn, b"") == [ConnectionClosed()]


def test_the_server_closing_mid_reply() -> None:
    transcript = check(
        GREETING + EHLO_PIPELINING + session("250 OK") + b"250-2.1.5 OK\r\n250 2.1",
        [[EHLO], [MAIL, RCPT]],
        eof=True,
    )
    assert transcript.events[-2:] == [
        Response(MAIL, Reply(250, None, "OK")),
        ConnectionClosed(),
    ]
    assert transcript.outstanding == (RCPT,)
    assert transcript.state is ClientState.CLOSED


def test_nothing_after_the_server_closed() -> None:
    conn = ClientConnection()
    assert feed(conn, GREETING[:5]) == []
    assert feed(conn, b"") == [ConnectionClosed()]
    assert feed(conn, GREETING) == []
    assert conn.next_event() is NEED_DATA
    assert conn.buffered == 0
    with pytest.raises(LocalProtocolError):
        conn.send(EHLO)


def test_complete_replies_before_the_close_are_handed_out() -> None:
    conn = greeted()
    conn.send(ClientNoop())
    conn.receive_data(OK)
    conn.receive_data(b"")
    assert conn.next_event() == Response(ClientNoop(), Reply(250, "2.0.0", "OK"))
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() is NEED_DATA


# -- STARTTLS (RFC 3207) -----------------------------------------------------

EHLO_TLS = session("250-mx.example", "250-PIPELINING", "250 STARTTLS")
EHLO_SECURED = session("250-mx.example", "250-PIPELINING", "250 AUTH PLAIN")


def test_starttls_session() -> None:
    transcript = check(
        GREETING + EHLO_TLS + session("220 2.0.0 Ready to start TLS"),
        [[EHLO], [ClientStartTls()], [EHLO], [ClientQuit()]],
        secured=EHLO_SECURED + session("221 Bye"),
    )
    assert transcript.codes == [250, 220, 250, 221]
    assert transcript.sent == (
        b"EHLO client.example\r\nSTARTTLS\r\nEHLO client.example\r\nQUIT\r\n"
    )
    assert transcript.tls


def test_replies_sent_in_the_clear_after_220_are_discarded() -> None:
    """
    The client side of CVE-2011-0411: a man in the middle appends replies
    to the 220; they must not be taken as replies to what is sent over TLS.
    """
    injected = session("250-mx.example", "250 PIPELINING", "250 2.1.0 OK")
    conn = greeted(EHLO_TLS)
    conn.send(ClientStartTls())
    # In one read, as a TLS layer would leave it: fed a byte at a time, the
    # injected replies would go to the handshake instead.
    conn.receive_data(session("220 2.0.0 Go ahead") + injected)
    events = drain(conn)
    assert events == [Response(ClientStartTls(), Reply(220, "2.0.0", "Go ahead"))]
    assert conn.buffered == 0
    assert conn.tls
    # RFC 3207 §4.2: the client forgets what the server said; EHLO again.
    assert conn.extensions == {}
    assert state(conn) is ClientState.GREETED
    with pytest.raises(LocalProtocolError, match="MAIL in state greeted"):
        conn.send(MAIL)
    conn.send(EHLO)
    assert feed(conn, EHLO_SECURED)[0] == Response(
        EHLO, Reply(250, None, ("mx.example", "PIPELINING", "AUTH PLAIN"))
    )
    with pytest.raises(LocalProtocolError, match="TLS is already on"):
        conn.send(ClientStartTls())


def test_a_partial_reply_before_the_220_is_forgotten_too() -> None:
    conn = greeted(EHLO_TLS)
    conn.send(ClientStartTls())
    conn.receive_data(session("220 Go ahead") + b"250-partial\r\n250")
    assert isinstance(conn.next_event(), Response)
    conn.send(EHLO)
    # Not merged with the "250-partial" line that came in the clear.
    events = feed(conn, EHLO_SECURED)
    assert events == [Response(EHLO, Reply(250, None, ("mx.example", "PIPELINING", "AUTH PLAIN")))]


def test_starttls_refused_changes_nothing() -> None:
    transcript = check(
        GREETING + EHLO_TLS + session("454 4.7.0 TLS not available", "250 OK"),
        [[EHLO], [ClientStartTls()], [MAIL]],
    )
    assert transcript.codes == [250, 454, 250]
    assert not transcript.tls
    assert ("STARTTLS", "") in transcript.extensions


def test_implicit_tls_never_sends_starttls() -> None:
    conn = greeted(EHLO_TLS, tls=True)
    with pytest.raises(LocalProtocolError, match="TLS is already on"):
        conn.send(ClientStartTls())


def test_starttls_ends_a_group() -> None:
    conn = greeted(EHLO_TLS)
    conn.send(ClientStartTls())
    with pytest.raises(LocalProtocolError, match="reply to STARTTLS"):
        conn.send(EHLO)


# -- AUTH (RFC 4954) ---------------------------------------------------------

EHLO_AUTH = session("250-mx.example", "250-PIPELINING", "250 AUTH PLAIN LOGIN")


def test_auth_exchange() -> None:
    transcript = check(
        GREETING + EHLO_AUTH + session("334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 2.7.0 OK"),
        [
            [EHLO],
            [ClientAuth("LOGIN")],
            [ClientAuthResponse(b"user")],
            [ClientAuthResponse(b"pw")],
            [MAIL],
        ],
    )
    assert transcript.sent == b"EHLO client.example\r\nAUTH LOGIN\r\ndXNlcg==\r\ncHc=\r\n" + (
        b"MAIL FROM:<alice@client.example>\r\n"
    )
    assert transcript.responses[1].reply == Reply(334, None, "VXNlcm5hbWU6")
    assert transcript.state is ClientState.READY


def test_auth_with_initial_response_and_no_second_auth() -> None:
    conn = greeted(EHLO_AUTH)
    conn.send(ClientAuth("PLAIN", b"\x00u\x00p"))
    feed(conn, session("235 2.7.0 Authentication successful"))
    assert conn.authenticated
    with pytest.raises(LocalProtocolError, match="already authenticated"):
        conn.send(ClientAuth("PLAIN", b"\x00u\x00p"))


def test_auth_cancelled_and_refused() -> None:
    conn = greeted(EHLO_AUTH)
    conn.send(ClientAuth("LOGIN"))
    feed(conn, session("334 VXNlcm5hbWU6"))
    assert state(conn) is ClientState.AUTH
    with pytest.raises(LocalProtocolError, match="MAIL in state auth"):
        conn.send(MAIL)
    assert conn.send(ClientAuthCancel()) == b"*\r\n"
    feed(conn, session("501 5.0.0 Cancelled"))
    assert state(conn) is ClientState.READY
    conn.send(ClientAuth("PLAIN", b"\x00u\x00wrong"))
    events = feed(conn, session("535 5.7.8 Authentication credentials invalid"))
    assert isinstance(events[0], Response) and events[0].reply.code == 535
    assert not conn.authenticated
    assert state(conn) is ClientState.READY


def test_auth_initial_response_must_fit_a_command_line() -> None:
    """RFC 4954 §4: too long, it goes in answer to the 334 instead."""
    conn = greeted(EHLO_AUTH)
    with pytest.raises(LocalProtocolError, match="send it in answer to the 334"):
        conn.send(ClientAuth("PLAIN", b"x" * 400))
    assert outstanding(conn) == ()
    assert len(conn.send(ClientAuth("PLAIN", b"x" * 370))) <= 512


# -- Timeouts (RFC 5321 §4.5.3.2) --------------------------------------------


def test_timeout_defaults_are_the_rfc_values() -> None:
    limits = ClientLimits()
    assert limits.greeting_timeout == 300
    assert limits.mail_timeout == 300
    assert limits.rcpt_timeout == 300
    assert limits.data_initiation_timeout == 120
    assert limits.data_block_timeout == 180
    assert limits.data_termination_timeout == 600
    assert limits.reply_line == 8 * REPLY_LINE == 4096
    assert limits.reply_lines == 100


def test_reply_timeout_follows_what_is_awaited() -> None:
    limits = ClientLimits(
        greeting_timeout=1,
        mail_timeout=2,
        rcpt_timeout=3,
        data_initiation_timeout=4,
        data_block_timeout=5,
        data_termination_timeout=6,
        command_timeout=7,
    )
    conn = ClientConnection(limits)
    assert conn.reply_timeout == 1
    feed(conn, GREETING)
    assert conn.reply_timeout is None
    conn.send(EHLO)
    assert conn.reply_timeout == 7
    feed(conn, EHLO_PIPELINING)
    conn.send(MAIL)
    conn.send(RCPT)
    conn.send(ClientData())
    assert conn.reply_timeout == 2
    feed(conn, session("250 OK"))
    assert conn.reply_timeout == 3
    feed(conn, session("250 OK"))
    assert conn.reply_timeout == 4
    feed(conn, session("354 Go"))
    assert conn.reply_timeout is None
    conn.end_data()
    assert conn.reply_timeout == 6
    feed(conn, session("221 Bye"))
    assert conn.reply_timeout is None


def test_bdat_timeouts() -> None:
    conn = greeted(session("250-mx.example", "250-PIPELINING", "250 CHUNKING"))
    conn.send(MAIL)
    conn.send(RCPT)
    feed(conn, session("250 OK", "250 OK"))
    conn.send_chunk(b"abc")
    assert conn.reply_timeout == ClientLimits().data_block_timeout
    conn.send_chunk(b"def", last=True)
    feed(conn, session("250 OK"))
    assert conn.reply_timeout == ClientLimits().data_termination_timeout


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reply_line": REPLY_LINE - 1},
        {"reply_lines": 0},
        {"greeting_timeout": 0},
        {"data_block_timeout": -1.0},
    ],
)
def test_limits_are_valid_when_built(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ClientLimits(**kwargs)  # type: ignore[arg-type]


def test_raised_is_recorded_by_the_helper() -> None:
    transcript = check(GREETING + EHLO_PLAIN, [[EHLO], [MAIL, RCPT]])
    assert transcript.items[-1] == Raised(
        "cannot send RCPT before the reply to MAIL: the server does not offer PIPELINING"
    )
    assert isinstance(transcript.events[-1], Response)
    assert not any(isinstance(event, ProtocolViolation) for event in transcript.events)


def test_only_client_commands_are_sent() -> None:
    from mailframe.core import Noop

    conn = greeted()
    with pytest.raises(TypeError, match="not a client command"):
        conn.send(Noop())  # type: ignore[arg-type]
