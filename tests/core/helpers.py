"""
Drive a :class:`~mailframe.core.ServerConnection` with a client script and
record what happens, so that one script can be fed in several ways and the
results compared (as h11's ``tests/test_io.py`` does).

A transcript is the list of events and reply bytes, in order. Consecutive
:class:`~mailframe.core.MessageData` events are merged into one, since how
message data is cut into events depends on how it arrived; everything else
must be the same whatever the feeding.

STARTTLS is modelled as a TLS layer would see it: once the core has answered
``220``, the plaintext still to be fed is dropped (a real handshake would
refuse it), and what the client sends over TLS (*secured*) is fed next. The
core's own discarding of what it had buffered is what the ``whole`` and
``trailing`` feedings exercise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from mailframe.core import (
    NEED_DATA,
    PAUSED,
    Bdat,
    Command,
    ConnectionClosed,
    EndOfMessage,
    Event,
    Limits,
    MessageData,
    Sentinel,
    ServerConnection,
    StartTls,
    State,
)
from mailframe.reply import Reply

GREETING = Reply(220, None, "mx.example ESMTP")

#: Appended in the "trailing" mode: an incomplete line, which must change
#: nothing that came before it.
TRAILING = b"NOOP"

#: Answers a command; ``None`` means the connection's default reply.
Replier = Callable[[ServerConnection, Command], Reply | None]
Item = Event | bytes


@attrs.frozen
class Transcript:
    """What a session did with a script: events, replies and final state."""

    items: tuple[Item, ...]
    state: State
    esmtp: bool
    errors: int
    closed: bool
    recipients: int
    tls: bool = False
    authenticated: bool = False

    @property
    def replies(self) -> list[bytes]:
        return [item for item in self.items if isinstance(item, bytes)]

    @property
    def events(self) -> list[Event]:
        return [item for item in self.items if not isinstance(item, bytes)]

    @property
    def codes(self) -> list[int]:
        """The code of each reply, after the greeting."""
        return [int(reply[:3]) for reply in self.replies[1:]]

    @property
    def messages(self) -> list[tuple[bytes, EndOfMessage]]:
        """Each message's data with its end-of-message event."""
        out = []
        data = b""
        for item in self.items:
            if isinstance(item, MessageData):
                data += item.data
            elif isinstance(item, EndOfMessage):
                out.append((data, item))
                data = b""
        return out

    @property
    def chunked_messages(self) -> list[tuple[bytes, Bdat]]:
        """
        Each message sent with BDAT: its data with the event of the chunk
        that ended it (the LAST one, or one that was refused).
        """
        out = []
        data = b""
        items = self.items
        for index, item in enumerate(items):
            if isinstance(item, MessageData):
                data += item.data
            elif isinstance(item, EndOfMessage):
                data = b""
            elif isinstance(item, Bdat):
                reply = items[index + 1]
                assert isinstance(reply, bytes)
                if item.last or int(reply[:3]) >= 400:
                    out.append((data, item))
                    data = b""
        return out


def by_type(replies: Mapping[type[Command], Reply]) -> Replier:
    """A replier that answers some command types with fixed replies."""

    def replier(conn: ServerConnection, command: Command) -> Reply | None:
        return replies.get(type(command))

    return replier


def run(
    chunks: Iterable[bytes],
    *,
    eof: bool = False,
    replier: Replier | None = None,
    greeting: Reply = GREETING,
    limits: Limits | None = None,
    extensions: tuple[str, ...] = (),
    tls: bool = False,
    secured: Iterable[bytes] | None = None,
    tls_extensions: tuple[str, ...] | None = None,
    conn: ServerConnection | None = None,
) -> Transcript:
    """
    Greet, feed *chunks* one at a time, pulling every event after each and
    answering each command at once, then (with *eof*) close.

    :param tls: the connection starts with TLS (implicit TLS).
    :param secured: what the client sends once STARTTLS was answered 220;
        the plaintext chunks left then are dropped, as a TLS layer would.
    :param tls_extensions: the extensions to advertise once TLS is up.
    """
    if conn is None:
        conn = ServerConnection("mx.example", limits or Limits(), extensions, tls=tls)
    items: list[Item] = [conn.send(greeting)]
    plain = conn.tls
    for chunk in chunks:
        conn.receive_data(chunk)
        _pump(conn, items, replier, tls_extensions)
        if conn.tls and not plain:
            break
    if secured is not None:
        assert conn.tls and not plain, "STARTTLS did not start TLS"
        for chunk in secured:
            conn.receive_data(chunk)
            _pump(conn, items, replier, tls_extensions)
    if eof:
        conn.receive_data(b"")
        _pump(conn, items, replier, tls_extensions)
    return Transcript(
        tuple(items),
        conn.state,
        conn.esmtp,
        conn.errors,
        conn.closed,
        len(conn.transaction.recipients),
        conn.tls,
        conn.authenticated,
    )


def _pump(
    conn: ServerConnection,
    items: list[Item],
    replier: Replier | None,
    tls_extensions: tuple[str, ...] | None = None,
) -> None:
    while True:
        event = conn.next_event()
        if isinstance(event, Sentinel):
            assert event is NEED_DATA or event is PAUSED
            return
        if isinstance(event, MessageData) and items and isinstance(items[-1], MessageData):
            items[-1] = MessageData(items[-1].data + event.data)
        else:
            items.append(event)
        if isinstance(event, Command):
            reply = replier(conn, event) if replier is not None else None
            items.append(conn.send(reply if reply is not None else conn.default_reply(event)))
            if isinstance(event, StartTls) and conn.tls and tls_extensions is not None:
                # As an adapter does once the handshake is done.
                conn.set_extensions(tls_extensions)
        elif isinstance(event, ConnectionClosed):
            assert conn.next_event() is NEED_DATA
            return


def answer(conn: ServerConnection, count: int = 1) -> None:
    """Take the next *count* events, each a command, and give default replies."""
    for _ in range(count):
        event = conn.next_event()
        assert isinstance(event, Command), event
        conn.send(conn.default_reply(event))


def state(conn: ServerConnection) -> State:
    """The state now (a function, so that type checkers do not narrow it)."""
    return conn.state


def split(data: bytes, size: int) -> list[bytes]:
    """*data* in pieces of *size* octets."""
    return [data[i : i + size] for i in range(0, len(data), size)]


FEEDINGS: dict[str, Callable[[bytes], list[bytes]]] = {
    "whole": lambda data: [data],
    "bytewise": lambda data: split(data, 1),
    "trailing": lambda data: [data + TRAILING],
}


def check(
    script: bytes,
    *,
    feedings: Iterable[str] = FEEDINGS,
    secured: bytes | None = None,
    **kwargs: Any,
) -> Transcript:
    """
    Run *script* fed whole, one byte at a time, and with trailing data, and
    assert that the three transcripts agree. Returns the transcript.

    :param secured: what the client sends after a successful STARTTLS in
        *script*; it is fed the same way.
    """
    transcripts = {
        name: run(
            FEEDINGS[name](script),
            secured=None if secured is None else FEEDINGS[name](secured),
            **kwargs,
        )
        for name in feedings
    }
    first, *_rest = transcripts.values()
    for name, transcript in transcripts.items():
        assert transcript == first, f"feeding {name!r} differs"
    return first


def session(*lines: bytes | str) -> bytes:
    """A client script: each line gets CRLF; ``bytes`` are taken as they are."""
    out = []
    for line in lines:
        out.append(line.encode("utf-8") + b"\r\n" if isinstance(line, str) else line)
    return b"".join(out)
