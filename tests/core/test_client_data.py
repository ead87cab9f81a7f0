"""
Message data from :class:`~mailframe.core.ClientConnection`: dot-stuffing
after DATA (RFC 5321 §4.5.2) on every line however the message is cut,
BDAT chunks of exact size (RFC 3030), and whole sessions of the client core
against the real :class:`~mailframe.core.ServerConnection`.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailframe.address import Mailbox
from mailframe.core import (
    Auth,
    AuthResponse,
    Bdat,
    ClientAuth,
    ClientAuthResponse,
    ClientBdat,
    ClientConnection,
    ClientData,
    ClientEhlo,
    ClientEndOfMessage,
    ClientMail,
    ClientNoop,
    ClientQuit,
    ClientRcpt,
    ClientRset,
    ClientStartTls,
    ClientState,
    Command,
    ConnectionClosed,
    Ehlo,
    EndOfMessage,
    Greeting,
    LocalProtocolError,
    Mail,
    Rcpt,
    Response,
    ServerConnection,
)
from mailframe.reply import Reply
from tests.core import strategies
from tests.core.test_client_helpers import (
    EHLO_PIPELINING,
    GREETING,
    Pair,
    feed,
    session,
    state,
)

EHLO = ClientEhlo("client.example")
MAIL = ClientMail(Mailbox("alice", "client.example"))
RCPT = ClientRcpt(Mailbox("bob", "mx.example"))
RCPT2 = ClientRcpt(Mailbox("carol", "mx.example"))


def in_data() -> ClientConnection:
    """A connection whose DATA was answered 354."""
    conn = ClientConnection()
    feed(conn, GREETING)
    conn.send(EHLO)
    feed(conn, EHLO_PIPELINING)
    for command in (MAIL, RCPT, ClientData()):
        conn.send(command)
    events = feed(conn, session("250 OK", "250 OK", "354 Go ahead"))
    assert [type(event) for event in events] == [Response] * 3
    assert conn.sending_data
    return conn


def stuffed(*chunks: bytes) -> bytes:
    conn = in_data()
    return b"".join(conn.send_data(chunk) for chunk in chunks) + conn.end_data()


# -- Dot-stuffing (RFC 5321 §4.5.2) ------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "wire"),
    [
        ([b"Hello\r\n"], b"Hello\r\n.\r\n"),
        # The first line of the message too.
        ([b".\r\n"], b"..\r\n.\r\n"),
        ([b".hidden\r\n"], b"..hidden\r\n.\r\n"),
        ([b"a\r\n.\r\n..\r\n"], b"a\r\n..\r\n...\r\n.\r\n"),
        # Across chunk boundaries: after a chunk that ended with CRLF...
        ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r\n", b".", b"\r\n"], b"a\r\n..\r\n.\r\n"),
        # ...or with the CR of a CRLF whose LF comes next.
        ([b"a\r", b"\n.b\r\n"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r", b"\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),
        ([b"", b".", b"", b"x\r\n"], b"..x\r\n.\r\n"),
        ([b"a", b".b\r\n"], b"a.b\r\n.\r\n"),
        # Nothing else is changed: bare LF and bare CR stay, and a dot after
        # them does not start a line.
        ([b"a\n.b\r\n"], b"a\n.b\r\n.\r\n"),
        ([b"a\r.b\r\n"], b"a\r.b\r\n.\r\n"),
        ([b"a\r", b".b\r\n"], b"a\r.b\r\n.\r\n"),
        ([b"a\r\r\n.\r\n"], b"a\r\r\n..\r\n.\r\n"),
        # end_data adds a CRLF only when the data did not end with one.
        ([], b".\r\n"),
        ([b"no line end"], b"no line end\r\n.\r\n"),
        ([b"ends with CR\r"], b"ends with CR\r\r\n.\r\n"),
        ([b".", b"."], b"...\r\n.\r\n"),
    ],
)
def test_dot_stuffing(chunks: list[bytes], wire: bytes) -> None:
    assert stuffed(*chunks) == wire


def test_data_state_is_left_by_end_data() -> None:
    conn = in_data()
    assert conn.sending_data
    conn.send_data(b"x\r\n")
    with pytest.raises(LocalProtocolError, match="end the message data first"):
        conn.send(ClientNoop())
    conn.end_data()
    assert not conn.sending_data
    assert conn.outstanding == (ClientEndOfMessage(),)
    with pytest.raises(LocalProtocolError, match="no message data is awaited"):
        conn.send_data(b"more\r\n")
    with pytest.raises(LocalProtocolError):
        conn.end_data()


def test_end_of_message_through_send() -> None:
    conn = in_data()
    assert conn.send(ClientEndOfMessage()) == b".\r\n"
    assert feed(conn, session("250 2.0.0 Queued as ABC")) == [
        Response(ClientEndOfMessage(), Reply(250, "2.0.0", "Queued as ABC"))
    ]
    assert state(conn) is ClientState.READY


def test_a_new_message_starts_at_a_line_start() -> None:
    conn = in_data()
    conn.send_data(b"no line end")
    conn.end_data()
    for command in (MAIL, RCPT, ClientData()):
        conn.send(command)
    assert len(feed(conn, session("250 OK", "250 OK", "250 OK", "354 Go"))) == 4
    assert state(conn) is ClientState.DATA
    assert conn.send_data(b".x\r\n") == b"..x\r\n"


# -- BDAT (RFC 3030) ---------------------------------------------------------

EHLO_CHUNKING = session("250-mx.example", "250-PIPELINING", "250 CHUNKING")


def chunking() -> ClientConnection:
    conn = ClientConnection()
    feed(conn, GREETING)
    conn.send(EHLO)
    feed(conn, EHLO_CHUNKING)
    assert conn.chunking
    return conn


def test_bdat_sends_chunks_as_they_are() -> None:
    conn = chunking()
    out = conn.send(MAIL) + conn.send(RCPT)
    out += conn.send(ClientBdat(7))
    assert conn.sending_data and conn.chunk_remaining == 7
    with pytest.raises(LocalProtocolError, match="7 octets of the BDAT chunk"):
        conn.send(ClientBdat(1, True))
    with pytest.raises(LocalProtocolError, match="only 7 left"):
        conn.send_data(b"12345678")
    out += conn.send_data(b".\r\n") + conn.send_data(b".\r\n.")
    assert conn.chunk_remaining == 0 and not conn.sending_data
    with pytest.raises(LocalProtocolError):
        conn.end_data()
    out += conn.send_chunk(b"\r\n.\r\n", last=True)
    assert out == (
        b"MAIL FROM:<alice@client.example>\r\nRCPT TO:<bob@mx.example>\r\n"
        b"BDAT 7\r\n.\r\n.\r\n.BDAT 5 LAST\r\n\r\n.\r\n"
    )
    assert conn.outstanding == (MAIL, RCPT, ClientBdat(7), ClientBdat(5, True))
    events = feed(conn, session("250 OK", "250 OK", "250 2.0.0 7 octets", "250 2.0.0 Queued"))
    assert [event.command for event in events if isinstance(event, Response)] == [
        MAIL,
        RCPT,
        ClientBdat(7),
        ClientBdat(5, True),
    ]
    assert conn.state is ClientState.READY


def test_bdat_and_data_do_not_mix() -> None:
    conn = chunking()
    conn.send(MAIL)
    conn.send(RCPT)
    conn.send_chunk(b"abc")
    with pytest.raises(LocalProtocolError, match="DATA in state bdat"):
        conn.send(ClientData())
    assert conn.send_chunk(b"", last=True) == b"BDAT 0 LAST\r\n"


def test_a_refused_chunk_ends_the_transaction() -> None:
    conn = chunking()
    conn.send(MAIL)
    conn.send(RCPT)
    conn.send_chunk(b"abc")
    assert len(feed(conn, session("250 OK", "250 OK", "552 5.3.4 Too big"))) == 3
    assert conn.state is ClientState.READY
    assert conn.accepted_recipients == 0


# -- The client core against the server core ---------------------------------


def test_full_session_against_the_server_core() -> None:
    """
    Greeting, EHLO with PIPELINING, pipelined MAIL, RCPT, RCPT and DATA,
    the message, QUIT: each reply pairs with its command.
    """
    pair = Pair()
    assert pair.exchange() == [Greeting(Reply(220, None, "mx.example ESMTP"))]
    pair.send(EHLO)
    [ehlo] = pair.exchange()
    assert isinstance(ehlo, Response) and ehlo.command == EHLO
    assert pair.client.pipelining
    assert pair.client.max_size == pair.server.limits.max_message_size
    assert pair.send(MAIL, RCPT, RCPT2, ClientData()) == (
        b"MAIL FROM:<alice@client.example>\r\nRCPT TO:<bob@mx.example>\r\n"
        b"RCPT TO:<carol@mx.example>\r\nDATA\r\n"
    )
    assert pair.exchange() == [
        Response(MAIL, Reply(250, "2.1.0", "OK")),
        Response(RCPT, Reply(250, "2.1.5", "OK")),
        Response(RCPT2, Reply(250, "2.1.5", "OK")),
        Response(ClientData(), Reply(354, None, "End data with <CR><LF>.<CR><LF>")),
    ]
    message = b"Subject: test\r\n\r\n.leading dot\r\n..two\r\n.\r\nlast\r\n"
    pair.send(message[:20], message[20:], ClientEndOfMessage(), ClientQuit())
    assert pair.exchange() == [
        Response(ClientEndOfMessage(), Reply(250, "2.0.0", "OK")),
        Response(ClientQuit(), Reply(221, "2.0.0", "Bye")),
    ]
    assert pair.close() == [ConnectionClosed()]
    assert pair.message_data == [message]
    commands = [event for event in pair.server_events if isinstance(event, Command)]
    assert [type(command) for command in commands] == [
        Ehlo,
        Mail,
        Rcpt,
        Rcpt,
        type(commands[4]),
        EndOfMessage,
        type(commands[6]),
    ]
    assert isinstance(commands[5], EndOfMessage) and commands[5].problem is None


def test_refusals_pair_with_their_commands() -> None:
    def refuse_carol(server: ServerConnection, command: Command) -> Reply | None:
        if isinstance(command, Rcpt) and command.recipient.local_part == "carol":
            return Reply(550, "5.1.1", "No such user")
        return None

    pair = Pair(replier=refuse_carol)
    pair.exchange()
    pair.send(EHLO)
    pair.exchange()
    pair.send(MAIL, RCPT2, RCPT, RCPT2, ClientData())
    responses = pair.exchange()
    assert [(r.command, r.reply.code) for r in responses if isinstance(r, Response)] == [
        (MAIL, 250),
        (RCPT2, 550),
        (RCPT, 250),
        (RCPT2, 550),
        (ClientData(), 354),
    ]
    assert pair.client.accepted_recipients == 1


def test_bdat_session_against_the_server_core() -> None:
    pair = Pair(ServerConnection("mx.example", extensions=("CHUNKING",)))
    pair.exchange()
    pair.send(EHLO)
    pair.exchange()
    client = pair.client
    out = client.send(MAIL) + client.send(RCPT)
    out += client.send_chunk(b"Subject: x\r\n\r\n.")
    out += client.send_chunk(b"\r\n.\r\n", last=True)
    out += client.send(ClientQuit())
    pair.server.receive_data(out)
    responses = pair.exchange()
    assert [(type(r.command), r.reply.code) for r in responses if isinstance(r, Response)] == [
        (ClientMail, 250),
        (ClientRcpt, 250),
        (ClientBdat, 250),
        (ClientBdat, 250),
        (ClientQuit, 221),
    ]
    assert b"".join(pair.message_data) == b"Subject: x\r\n\r\n.\r\n.\r\n"


def test_starttls_against_the_server_core() -> None:
    pair = Pair(ServerConnection("mx.example", extensions=("STARTTLS",)))
    pair.exchange()
    pair.send(EHLO)
    pair.exchange()
    assert pair.client.starttls
    pair.send(ClientStartTls())
    assert pair.exchange() == [
        Response(ClientStartTls(), Reply(220, "2.0.0", "Ready to start TLS"))
    ]
    assert pair.server.tls and pair.client.tls
    assert pair.client.state is ClientState.GREETED
    pair.send(EHLO)
    [response] = pair.exchange()
    assert isinstance(response, Response) and response.reply.code == 250
    # RFC 3207 §4.2: not offered again.
    assert not pair.client.starttls


def test_auth_against_the_server_core() -> None:
    def login(server: ServerConnection, command: Command) -> Reply | None:
        if isinstance(command, Auth):
            return Reply(334, None, "")
        if isinstance(command, AuthResponse):
            assert command.data == b"\x00user\x00password"
            return Reply(235, "2.7.0", "Authentication successful")
        return None

    pair = Pair(ServerConnection("mx.example", extensions=("AUTH PLAIN",)), replier=login)
    pair.exchange()
    pair.send(EHLO)
    pair.exchange()
    assert pair.client.auth_mechanisms == frozenset({"PLAIN"})
    pair.send(ClientAuth("PLAIN"))
    [challenge] = pair.exchange()
    assert challenge == Response(ClientAuth("PLAIN"), Reply(334, None, ""))
    pair.send(ClientAuthResponse(b"\x00user\x00password"))
    [done] = pair.exchange()
    assert isinstance(done, Response) and done.reply.code == 235
    assert pair.client.authenticated and pair.server.authenticated


def test_rset_against_the_server_core() -> None:
    pair = Pair()
    pair.exchange()
    pair.send(EHLO)
    pair.exchange()
    pair.send(MAIL, RCPT, ClientRset(), MAIL)
    codes = [r.reply.code for r in pair.exchange() if isinstance(r, Response)]
    assert codes == [250, 250, 250, 250]
    assert pair.client.state is ClientState.MAIL
    assert pair.server.transaction.sender == MAIL.sender


@given(st.lists(st.booleans(), min_size=1, max_size=12), st.booleans())
def test_pipelined_replies_pair_with_their_commands(refused: list[bool], greylist: bool) -> None:
    """
    However the server answers a pipelined group of recipients, each reply
    comes back with its own RCPT, and DATA gets 354 only with a recipient.
    """
    recipients = [ClientRcpt(Mailbox(f"user{i}", "mx.example")) for i in range(len(refused))]
    code = 450 if greylist else 550

    def replier(server: ServerConnection, command: Command) -> Reply | None:
        if isinstance(command, Rcpt):
            if refused[int(command.recipient.local_part[4:])]:
                return Reply(code, f"{code // 100}.1.1", "No")
        return None

    pair = Pair(replier=replier)
    pair.exchange()
    pair.send(EHLO)
    pair.exchange()
    pair.send(MAIL, *recipients, ClientData())
    responses = [r for r in pair.exchange() if isinstance(r, Response)]
    assert [r.command for r in responses] == [MAIL, *recipients, ClientData()]
    assert [r.reply.code for r in responses[1:-1]] == [code if x else 250 for x in refused]
    accepted = refused.count(False)
    assert pair.client.accepted_recipients == accepted
    assert responses[-1].reply.code == (354 if accepted else 503)
    assert pair.client.sending_data == bool(accepted)


# -- Properties: the client core into the server core --------------------------


def deliver(chunks: list[bytes]) -> tuple[bytes, EndOfMessage]:
    """Send *chunks* with DATA from the client core to the server core."""
    pair = Pair()
    pair.exchange()
    pair.send(EHLO)
    pair.exchange()
    pair.send(MAIL, RCPT, ClientData())
    pair.exchange()
    pair.send(*chunks, ClientEndOfMessage(), ClientQuit())
    responses = pair.exchange()
    assert [r.reply.code for r in responses if isinstance(r, Response)][-1] == 221
    [end] = [event for event in pair.server_events if isinstance(event, EndOfMessage)]
    return b"".join(pair.message_data), end


@given(strategies.data_lines, st.data())
@example([b".", b"..", b"..."], None)
@example([b"", b"."], None)
def test_message_lines_round_trip(lines: list[bytes], draw: st.DataObject | None) -> None:
    """
    Lines with CRLF ends, many starting with dots, cut anywhere into
    send_data calls, come out of the server core byte for byte.
    """
    content = b"".join(line + b"\r\n" for line in lines)
    chunks = draw.draw(strategies.splits(content)) if draw is not None else [content]
    data, end = deliver(chunks)
    assert data == content
    assert end.size == len(content)
    assert end.problem is None


@given(st.binary(max_size=300), st.data())
@example(b"\r\n.\r\n", None)
@example(b"\n.\n", None)
@example(b".\r", None)
@example(b"x\r\n.", None)
def test_arbitrary_bytes_round_trip(body: bytes, draw: st.DataObject | None) -> None:
    """
    Any octets at all, bare CR and LF included, cut anywhere: the server
    reads them back exactly, with the CRLF that end_data adds when the
    data does not end with one; a terminator inside the data never ends
    the message early.
    """
    chunks = draw.draw(strategies.splits(body)) if draw is not None else [body]
    data, _end = deliver(chunks)
    assert data == (body if body.endswith(b"\r\n") or not body else body + b"\r\n")


@given(st.binary(max_size=300), st.data())
@example(b"\r\n.\r\nQUIT\r\n", None)
@example(b"", None)
def test_bdat_round_trip(body: bytes, draw: st.DataObject | None) -> None:
    """Any octets, cut into random BDAT chunks and pipelined, come back exact."""
    chunks = draw.draw(strategies.bdat_chunks(body)) if draw is not None else [body]
    pair = Pair(ServerConnection("mx.example", extensions=("CHUNKING",)))
    pair.exchange()
    pair.send(EHLO)
    pair.exchange()
    out = pair.client.send(MAIL) + pair.client.send(RCPT)
    for index, chunk in enumerate(chunks):
        out += pair.client.send_chunk(chunk, last=index == len(chunks) - 1)
    out += pair.client.send(ClientQuit())
    assert out.endswith(b"QUIT\r\n")
    pair.server.receive_data(out)
    responses = [r for r in pair.exchange() if isinstance(r, Response)]
    assert [r.command for r in responses] == [
        MAIL,
        RCPT,
        *(ClientBdat(len(chunk), i == len(chunks) - 1) for i, chunk in enumerate(chunks)),
        ClientQuit(),
    ]
    assert b"".join(pair.message_data) == body
    [last] = [e for e in pair.server_events if isinstance(e, Bdat) and e.last]
    assert last.total == len(body)
