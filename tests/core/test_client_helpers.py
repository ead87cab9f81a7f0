"""
Drive a :class:`~mailframe.core.ClientConnection` with what a server sends,
and record what happens, so that one server transcript can be fed whole,
one byte at a time and with trailing data, and the results compared (as
:mod:`tests.core.helpers` does for the server core).

The client's side is a list of *groups*: each group is sent as soon as
every command sent before it has been answered (the first once the
greeting is in), so that a group of several commands is a pipelined group
(RFC 2920). A group holds commands, given to ``send``, and bytes, given to
``send_data``. A :class:`~mailframe.core.LocalProtocolError` is recorded
and ends the sending.

:func:`feed` feeds a connection that a test drives by hand, and checks the
same way that feeding it one byte at a time, or with trailing data, gives
the same events.

:class:`Pair` connects a client core to a real
:class:`~mailframe.core.ServerConnection`, for sessions of one core
against the other.

The tests at the end check the harness itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from typing import Any

import attrs

from mailframe.core import (
    NEED_DATA,
    PAUSED,
    ClientCommand,
    ClientConnection,
    ClientEhlo,
    ClientEvent,
    ClientLimits,
    ClientQuit,
    ClientState,
    Command,
    ConnectionClosed,
    Greeting,
    LocalProtocolError,
    MessageData,
    Response,
    Sentinel,
    ServerConnection,
)
from mailframe.reply import Reply
from tests.core.helpers import FEEDINGS, session

__all__ = [
    "EHLO_PIPELINING",
    "Group",
    "GREETING",
    "SERVER_GREETING",
    "Pair",
    "Raised",
    "Sent",
    "Step",
    "check",
    "drain",
    "feed",
    "outstanding",
    "run",
    "session",
    "state",
]

GREETING = session("220 mx.example ESMTP")
EHLO_PIPELINING = session("250-mx.example", "250-PIPELINING", "250-SIZE 1000000", "250 8BITMIME")

#: Appended in the "trailing" feeding: part of a reply line, which must
#: change nothing that came before it.
TRAILING = b"250 2.0.0 O"

Step = ClientCommand | bytes
Group = Sequence[Step]


@attrs.frozen
class Sent:
    """Bytes that the client core gave to write."""

    data: bytes


@attrs.frozen
class Raised:
    """A :class:`LocalProtocolError` raised by a send, with its message."""

    message: str


Item = ClientEvent | Sent | Raised


@attrs.frozen
class ClientTranscript:
    """What a client session did with a server transcript."""

    items: tuple[Item, ...]
    state: ClientState
    extensions: tuple[tuple[str, str], ...]
    tls: bool
    outstanding: tuple[ClientCommand, ...]
    accepted_recipients: int

    @property
    def events(self) -> list[ClientEvent]:
        return [item for item in self.items if not isinstance(item, Sent | Raised)]

    @property
    def responses(self) -> list[Response]:
        return [item for item in self.items if isinstance(item, Response)]

    @property
    def codes(self) -> list[int]:
        """The code of each reply to a command."""
        return [response.reply.code for response in self.responses]

    @property
    def sent(self) -> bytes:
        return b"".join(item.data for item in self.items if isinstance(item, Sent))

    @property
    def raised(self) -> list[str]:
        return [item.message for item in self.items if isinstance(item, Raised)]


def run(
    chunks: Iterable[bytes],
    groups: Iterable[Group] = (),
    *,
    eof: bool = False,
    secured: Iterable[bytes] | None = None,
    limits: ClientLimits | None = None,
    tls: bool = False,
) -> ClientTranscript:
    """
    Feed *chunks*, pulling every event after each and sending the next
    group whenever nothing is outstanding; then (with *eof*) close.

    :param secured: what the server sends once STARTTLS was answered 220;
        the plaintext chunks left then are dropped, as a TLS layer would.
    """
    conn = ClientConnection(limits or ClientLimits(), tls=tls)
    items: list[Item] = []
    pending = deque(groups)
    plain = conn.tls

    def send_ready() -> None:
        while pending and not conn.outstanding and not conn.closed:
            if conn.state is ClientState.CONNECTED:
                return
            group = pending.popleft()
            try:
                for step in group:
                    out = conn.send_data(step) if isinstance(step, bytes) else conn.send(step)
                    items.append(Sent(out))
            except LocalProtocolError as error:
                items.append(Raised(str(error)))
                pending.clear()

    def pump() -> None:
        while True:
            event = conn.next_event()
            if isinstance(event, Sentinel):
                assert event is NEED_DATA
                return
            items.append(event)
            send_ready()

    for chunk in chunks:
        conn.receive_data(chunk)
        pump()
        if conn.tls and not plain:
            break
    if secured is not None:
        assert conn.tls and not plain, "STARTTLS did not start TLS"
        for chunk in secured:
            conn.receive_data(chunk)
            pump()
    if eof:
        conn.receive_data(b"")
        pump()
        assert conn.next_event() is NEED_DATA
    return ClientTranscript(
        tuple(items),
        conn.state,
        tuple(conn.extensions.items()),
        conn.tls,
        conn.outstanding,
        conn.accepted_recipients,
    )


def check(
    script: bytes,
    groups: Iterable[Group] = (),
    *,
    secured: bytes | None = None,
    **kwargs: Any,
) -> ClientTranscript:
    """
    Run the server's *script* fed whole, one byte at a time, and with
    trailing data, and assert that the transcripts agree. Returns the
    transcript.
    """
    groups = list(groups)
    transcripts = {
        name: run(
            feeding(script + (TRAILING if name == "trailing" and secured is None else b"")),
            groups,
            secured=None
            if secured is None
            else feeding(secured + (TRAILING if name == "trailing" else b"")),
            **kwargs,
        )
        for name, feeding in _FEEDINGS.items()
    }
    first, *_rest = transcripts.values()
    for name, transcript in transcripts.items():
        assert transcript == first, f"feeding {name!r} differs"
    return first


_FEEDINGS: dict[str, Callable[[bytes], list[bytes]]] = {
    "whole": FEEDINGS["whole"],
    "bytewise": FEEDINGS["bytewise"],
    # The trailing octets are added by check(), after the plaintext or
    # after what comes over TLS.
    "trailing": FEEDINGS["whole"],
}

SERVER_GREETING = Reply(220, None, "mx.example ESMTP")

#: Answers a server event; ``None`` means the default reply.
Replier = Callable[[ServerConnection, Command], Reply | None]


class Pair:
    """
    A client core talking to a server core: what one writes, the other
    reads at once.

    :ivar server_events: every event of the server, in order, with
        consecutive :class:`MessageData` merged.
    """

    def __init__(
        self,
        server: ServerConnection | None = None,
        client: ClientConnection | None = None,
        replier: Replier | None = None,
        greeting: Reply = SERVER_GREETING,
    ) -> None:
        self.server = server if server is not None else ServerConnection("mx.example")
        self.client = client if client is not None else ClientConnection()
        self.replier = replier
        self.server_events: list[object] = []
        self.client.receive_data(self.server.send(greeting))

    def send(self, *steps: Step) -> bytes:
        """Send commands and message data from the client; return the bytes."""
        out = b"".join(
            self.client.send_data(step) if isinstance(step, bytes) else self.client.send(step)
            for step in steps
        )
        if out:
            self.server.receive_data(out)
        return out

    def close(self) -> list[ClientEvent]:
        """The server closes the connection; return the client's events."""
        self.client.receive_data(b"")
        return self.exchange()

    def exchange(self) -> list[ClientEvent]:
        """
        Let the server answer everything it has read, and return the
        client's events.
        """
        events: list[ClientEvent] = []
        while True:
            out = self._serve()
            if out:
                # b"" would mean the server closed.
                self.client.receive_data(out)
            progress = False
            while True:
                event = self.client.next_event()
                if isinstance(event, Sentinel):
                    assert event is NEED_DATA
                    break
                events.append(event)
                progress = True
            if not out and not progress:
                return events

    def _serve(self) -> bytes:
        out: list[bytes] = []
        while True:
            event = self.server.next_event()
            if event is NEED_DATA or event is PAUSED:
                return b"".join(out)
            events = self.server_events
            if isinstance(event, MessageData) and events and isinstance(events[-1], MessageData):
                events[-1] = MessageData(events[-1].data + event.data)
            else:
                events.append(event)
            if isinstance(event, Command):
                reply = self.replier(self.server, event) if self.replier is not None else None
                out.append(self.server.send(reply or self.server.default_reply(event)))
            elif isinstance(event, ConnectionClosed):
                return b"".join(out)

    @property
    def message_data(self) -> list[bytes]:
        """The data of each run of :class:`MessageData` the server produced."""
        return [event.data for event in self.server_events if isinstance(event, MessageData)]


def drain(conn: ClientConnection) -> list[ClientEvent]:
    """Every event the connection has now."""
    events: list[ClientEvent] = []
    while not isinstance(event := conn.next_event(), Sentinel):
        events.append(event)
    assert event is NEED_DATA
    return events


def snapshot(conn: ClientConnection, *, buffer: bool = True) -> tuple[object, ...]:
    """What a caller can see of a connection (its buffer only with *buffer*)."""
    return (
        conn.state,
        conn.outstanding,
        dict(conn.extensions),
        conn.tls,
        conn.esmtp,
        conn.authenticated,
        conn.accepted_recipients,
        conn.sending_data,
        conn.chunk_remaining,
        conn.reply_timeout,
        conn.buffered if buffer else None,
    )


def feed(conn: ClientConnection, data: bytes) -> list[ClientEvent]:
    """
    Feed *data* (``b""``: the server closes) and return every event it
    gives. Copies of the connection are fed the same data one byte at a
    time and, when it ends a line, with trailing data; all three must give
    the same events and leave the connection the same (but for the
    trailing octets in its buffer).
    """
    others: list[tuple[ClientConnection, list[ClientEvent], bool]] = []
    if data:
        feedings = [FEEDINGS["bytewise"](data)]
        if data.endswith(b"\r\n"):
            feedings.append([data + TRAILING])
        for chunks in feedings:
            copy = deepcopy(conn)
            events: list[ClientEvent] = []
            for chunk in chunks:
                copy.receive_data(chunk)
                events += drain(copy)
            others.append((copy, events, chunks[-1].endswith(TRAILING)))
    conn.receive_data(data)
    expected = drain(conn)
    for copy, events, trailing in others:
        assert events == expected, "trailing" if trailing else "bytewise"
        assert snapshot(copy, buffer=not trailing) == snapshot(conn, buffer=not trailing)
    return expected


def state(conn: ClientConnection) -> ClientState:
    """The state now (a function, so that type checkers do not narrow it)."""
    return conn.state


def outstanding(conn: ClientConnection) -> tuple[ClientCommand, ...]:
    """The outstanding commands now (a function, for the same reason)."""
    return conn.outstanding


# -- the harness itself -----------------------------------------------------


def test_check_feeds_a_session_three_ways() -> None:
    transcript = check(
        GREETING + EHLO_PIPELINING + session("221 2.0.0 Bye"),
        [[ClientEhlo("client.example")], [ClientQuit()]],
        eof=True,
    )
    assert transcript.sent == b"EHLO client.example\r\nQUIT\r\n"
    assert transcript.events[0] == Greeting(Reply(220, None, "mx.example ESMTP"))
    assert transcript.events[-1] == ConnectionClosed()
    assert transcript.codes == [250, 221]


def test_a_refused_send_is_recorded_and_ends_the_sending() -> None:
    transcript = check(GREETING, [[ClientQuit(), ClientQuit()], [ClientQuit()]])
    assert transcript.sent == b"QUIT\r\n"
    assert len(transcript.raised) == 1


def test_pair_connects_the_two_cores() -> None:
    pair = Pair()
    assert pair.exchange() == [Greeting(Reply(220, None, "mx.example ESMTP"))]
    pair.send(ClientQuit())
    [response] = pair.exchange()
    assert response == Response(ClientQuit(), Reply(221, "2.0.0", "Bye"))
    assert pair.server.closed and pair.client.closed
