"""
:class:`~mailframe.core.LMTPClientConnection`: LHLO for EHLO, and a reply
for each accepted recipient after the final dot (RFC 2033 §4.1, §4.2).

Every server transcript is fed whole, one byte at a time and with trailing
data (:func:`tests.core.test_client_helpers.feed`).
"""

from __future__ import annotations

import pytest

from mailframe.address import Mailbox
from mailframe.core import (
    ClientBdat,
    ClientConnection,
    ClientData,
    ClientEhlo,
    ClientEndOfMessage,
    ClientHelo,
    ClientLimits,
    ClientMail,
    ClientQuit,
    ClientRcpt,
    ClientRset,
    ClientState,
    ConnectionClosed,
    Greeting,
    LMTPClientConnection,
    LocalProtocolError,
    Response,
)
from mailframe.reply import Reply
from tests.core.test_client_helpers import GREETING, feed, session, state

LHLO_REPLY = session("250-lmtp.example", "250-PIPELINING", "250-ENHANCEDSTATUSCODES",
                     "250 8BITMIME")
SENDER = Mailbox("sender", "example.com")
ALICE, BOB, CAROL = (Mailbox(name, "example.org") for name in ("alice", "bob", "carol"))


def ready(lhlo_reply: bytes = LHLO_REPLY,
          limits: ClientLimits | None = None) -> LMTPClientConnection:
    """A connection that was greeted, and whose LHLO got *lhlo_reply*."""
    conn = LMTPClientConnection(limits or ClientLimits())
    assert isinstance(feed(conn, GREETING)[0], Greeting)
    assert conn.send(ClientEhlo("client.example")) == b"LHLO client.example\r\n"
    [event] = feed(conn, lhlo_reply)
    assert isinstance(event, Response) and event.command == ClientEhlo("client.example")
    return conn


def open_data(conn: LMTPClientConnection, *recipients: Mailbox, refused: int = 0) -> bytes:
    """MAIL, RCPT for *recipients* (the first *refused* refused) and DATA, pipelined."""
    out = conn.send(ClientMail(SENDER))
    out += b"".join(conn.send(ClientRcpt(r)) for r in recipients)
    out += conn.send(ClientData())
    replies = ["250 2.1.0 OK"]
    replies += [f"550 5.1.1 <{r}> User doesn't exist" if i < refused else "250 2.1.5 OK"
                for i, r in enumerate(recipients)]
    replies.append("354 OK")
    events = feed(conn, b"".join(session(line) for line in replies))
    assert [e.reply.code for e in events if isinstance(e, Response)][-1] == 354
    assert conn.sending_data
    return out


def test_lhlo_and_its_extensions() -> None:
    conn = ready()
    assert conn.esmtp and conn.pipelining and conn.eightbitmime
    assert state(conn) is ClientState.READY
    assert isinstance(conn, ClientConnection)


def test_a_reply_for_each_accepted_recipient_in_rcpt_order() -> None:
    conn = ready()
    open_data(conn, ALICE, BOB, CAROL)
    assert conn.send_data(b"Subject: hi\r\n\r\n.dot\r\n") == b"Subject: hi\r\n\r\n..dot\r\n"
    assert conn.end_data() == b".\r\n"
    ends = tuple(ClientEndOfMessage(r) for r in (ALICE, BOB, CAROL))
    assert conn.outstanding == ends
    assert conn.reply_timeout == conn.limits.data_termination_timeout
    events = feed(conn, session("250 2.0.0 <alice@example.org> Saved")
                  + session("452 4.2.2 <bob@example.org> Mailbox full"))
    assert events == [
        Response(ends[0], Reply(250, "2.0.0", "<alice@example.org> Saved")),
        Response(ends[1], Reply(452, "4.2.2", "<bob@example.org> Mailbox full")),
    ]
    assert state(conn) is ClientState.READY
    # Each reply has its own timeout.
    assert conn.reply_timeout == conn.limits.data_termination_timeout
    [event] = feed(conn, session("552 5.2.2 <carol@example.org> Quota exceeded"))
    assert event == Response(ends[2], Reply(552, "5.2.2", "<carol@example.org> Quota exceeded"))
    assert conn.outstanding == ()
    assert conn.reply_timeout is None


def test_refused_recipients_get_no_reply_after_the_dot() -> None:
    conn = ready()
    open_data(conn, ALICE, BOB, CAROL, refused=1)
    conn.end_data()
    assert conn.outstanding == (ClientEndOfMessage(BOB), ClientEndOfMessage(CAROL))


def test_recipients_of_an_earlier_transaction_do_not_count() -> None:
    conn = ready()
    conn.send(ClientMail(SENDER))
    conn.send(ClientRcpt(ALICE))
    conn.send(ClientRset())
    feed(conn, session("250 2.1.0 OK") + session("250 2.1.5 OK") + session("250 2.0.0 OK"))
    open_data(conn, BOB)
    conn.end_data()
    assert conn.outstanding == (ClientEndOfMessage(BOB),)


def test_the_next_transaction_may_follow_the_dot() -> None:
    """RFC 2920 §3.1: the message data may start a pipelined group."""
    conn = ready()
    open_data(conn, ALICE, BOB)
    out = conn.end_data() + conn.send(ClientMail(SENDER)) + conn.send(ClientRcpt(CAROL))
    assert out == b".\r\nMAIL FROM:<sender@example.com>\r\nRCPT TO:<carol@example.org>\r\n"
    events = feed(conn, session("250 2.0.0 Saved") * 2 + session("250 2.1.0 OK")
                  + session("250 2.1.5 OK"))
    assert [e.command for e in events if isinstance(e, Response)] == [
        ClientEndOfMessage(ALICE), ClientEndOfMessage(BOB), ClientMail(SENDER),
        ClientRcpt(CAROL)]
    assert state(conn) is ClientState.RCPT
    conn.send(ClientData())
    feed(conn, session("354 OK"))
    conn.end_data()
    assert conn.outstanding == (ClientEndOfMessage(CAROL),)


def test_a_lone_dot_after_354_to_no_recipient_awaits_one_reply() -> None:
    conn = ready()
    open_data(conn, ALICE, refused=1)
    assert conn.end_data() == b".\r\n"
    assert conn.outstanding == (ClientEndOfMessage(),)


def test_421_between_the_replies_closes() -> None:
    conn = ready()
    open_data(conn, ALICE, BOB)
    conn.end_data()
    events = feed(conn, session("250 2.0.0 Saved") + session("421 4.3.2 Shutting down"))
    assert [e.reply.code for e in events if isinstance(e, Response)] == [250, 421]
    assert conn.closed


def test_connection_closed_between_the_replies() -> None:
    conn = ready()
    open_data(conn, ALICE, BOB)
    conn.end_data()
    events = feed(conn, session("250 2.0.0 Saved"))
    assert len(events) == 1
    assert feed(conn, b"") == [ConnectionClosed()]
    assert conn.closed


def test_a_3xx_after_the_dot_is_a_violation() -> None:
    conn = ready()
    open_data(conn, ALICE)
    conn.end_data()
    [event] = feed(conn, session("354 Again?"))
    assert not isinstance(event, Response)
    assert conn.closed


def test_helo_and_bdat_are_refused() -> None:
    conn = LMTPClientConnection()
    feed(conn, GREETING)
    with pytest.raises(LocalProtocolError, match="LHLO"):
        conn.send(ClientHelo("client.example"))
    conn = ready(session("250-lmtp.example", "250-PIPELINING", "250 CHUNKING"))
    conn.send(ClientMail(SENDER))
    conn.send(ClientRcpt(ALICE))
    feed(conn, session("250 2.1.0 OK") + session("250 2.1.5 OK"))
    with pytest.raises(LocalProtocolError, match="BDAT"):
        conn.send(ClientBdat(10, last=True))
    with pytest.raises(LocalProtocolError, match="BDAT"):
        conn.send_chunk(b"0123456789", last=True)
    assert conn.outstanding == ()


def test_other_commands_are_those_of_smtp() -> None:
    conn = ready(limits=ClientLimits(command_timeout=7))
    assert conn.send(ClientQuit()) == b"QUIT\r\n"
    assert conn.reply_timeout == 7
    feed(conn, session("221 2.0.0 Bye"))
    assert conn.closed


def test_smtp_keeps_one_reply_for_the_message() -> None:
    conn = ClientConnection()
    feed(conn, GREETING)
    assert conn.send(ClientEhlo("client.example")) == b"EHLO client.example\r\n"
    feed(conn, LHLO_REPLY)
    conn.send(ClientMail(SENDER))
    conn.send(ClientRcpt(ALICE))
    conn.send(ClientRcpt(BOB))
    conn.send(ClientData())
    feed(conn, session("250 OK") * 3 + session("354 Go on"))
    conn.end_data()
    assert conn.outstanding == (ClientEndOfMessage(),)
