"""
Running an SMTP dialogue through the real server: :func:`run_transcript`.

The server is the one mailframe listens with,
:class:`~mailframe.protocols.server.SMTPServerFactory`, built from the
policies and the queue store a test chooses. It runs on a
:class:`~twisted.internet.testing.StringTransport` and a
:class:`~twisted.internet.testing.MemoryReactorClock`: no socket, no real
time. The client's side is a script of lines; each reply is matched with the
line it answers, as a pipelining client matches them (RFC 2920 §3.1).
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from mailframe.config import ComponentContext, Config
from mailframe.envelope import Envelope, QueueEntry
from mailframe.interfaces import IComponentMaker, IQueueStore, IResolver
from mailframe.protocols.server import ServerSettings, SMTPServerFactory, SMTPServerProtocol
from mailframe.reply import Reply
from mailframe.stores.memory import MemoryQueueStore
from mailframe.testing._fakes import MemoryResolver

__all__ = [
    "Exchange",
    "Transcript",
    "TranscriptStalled",
    "run_transcript",
]

#: Seconds of fake time that :func:`run_transcript` waits for each reply: the
#: longest of the client timeouts of RFC 5321 §4.5.3.2, ten minutes for the
#: reply to the final dot (§4.5.3.2.6).
DEFAULT_WAIT = 600.0

#: What :func:`run_transcript` sends: bytes as they are, the lines of a
#: string one at a time, or a sequence of steps.
ClientScript = bytes | str | Iterable[str | bytes | Sequence[str | bytes]]

_CRLF = b"\r\n"


@attrs.frozen
class Exchange:
    """
    One reply of the server, with the line it answers.

    :ivar command: the line the reply answers, as sent, without its CRLF: a
        command, a SASL response, or the ``.`` that ends a message (for
        BDAT, the BDAT command, whose reply follows its chunk). ``None`` for
        the greeting, and for a reply sent unasked, such as the ``421`` of
        an idle timeout or of too many errors.
    :ivar reply: the reply, or ``None`` when the server closed the
        connection before it answered this line.
    """

    command: str | None
    reply: Reply | None


@attrs.frozen
class Transcript:
    """
    What happened in a session that :func:`run_transcript` ran.

    :ivar exchanges: every reply with the line it answers, in order, the
        greeting first; lines left unanswered when the server closed the
        connection come last, with ``None`` for their reply.
    :ivar dialogue: the lines that crossed the connection, in order, each
        ``("C", line)`` from the client or ``("S", line)`` from the server,
        without CRLF; control characters are shown escaped (``\\n``).
    :ivar queue_ids: the queue ids of the messages the server committed, in
        the order of their commits.
    :ivar entries: the :class:`~mailframe.envelope.QueueEntry` of each, as
        the store holds it at the end (held messages in the ``hold`` state).
    :ivar messages: each message as stored: the server's ``Received:``
        field first, then the data as received, dot-stuffing undone.
    :ivar closed: whether the server closed the connection (after ``221``
        to QUIT, a ``421``, or a refused connection).
    :ivar elapsed: seconds of fake time the session took; a policy that
        answers late makes it longer.
    :ivar store: the queue store the messages went into.
    """

    exchanges: tuple[Exchange, ...]
    dialogue: tuple[tuple[str, str], ...]
    queue_ids: tuple[str, ...]
    entries: tuple[QueueEntry, ...]
    messages: tuple[bytes, ...]
    closed: bool
    elapsed: float
    store: Any = attrs.field(eq=False, repr=False)

    @property
    def replies(self) -> tuple[Reply, ...]:
        """Every reply of the server, in order, the greeting first."""
        return tuple(e.reply for e in self.exchanges if e.reply is not None)

    @property
    def codes(self) -> tuple[int, ...]:
        """The code of every reply, in order: ``(220, 250, 250, 550, ...)``."""
        return tuple(reply.code for reply in self.replies)

    @property
    def envelopes(self) -> tuple[Envelope, ...]:
        """The envelope of each message committed, in the order of commits."""
        return tuple(entry.envelope for entry in self.entries)

    def reply_to(self, command: str) -> Reply:
        """
        The reply to the first line sent that starts with *command*, in any
        case: ``reply_to("RCPT TO:<bob@")``, ``reply_to(".")`` for the end
        of the first message.

        :raises LookupError: when no such line was sent, or it went
            unanswered.
        """
        wanted = command.lower()
        for exchange in self.exchanges:
            if exchange.command is not None and exchange.command.lower().startswith(wanted):
                if exchange.reply is None:
                    raise LookupError(f"{exchange.command!r} was not answered")
                return exchange.reply
        sent = ", ".join(repr(e.command) for e in self.exchanges if e.command is not None)
        raise LookupError(f"no line sent starts with {command!r}; sent: {sent or 'none'}")

    def render(self) -> str:
        """
        The session as a dialogue, one line each, ``C:`` for the client and
        ``S:`` for the server::

            S: 220 mx.example.com ESMTP mailframe
            C: HELO client.example
            S: 250 mx.example.com
            C: QUIT
            S: 221 2.0.0 Bye
            -- closed by the server
        """
        lines = [f"{side}: {text}" if text else f"{side}:" for side, text in self.dialogue]
        if self.closed:
            lines.append("-- closed by the server")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class TranscriptStalled(Exception):
    """
    The server did not answer within the time :func:`run_transcript` waits
    (600 seconds by default): a Deferred that a policy or the queue
    store returned never fired, or waits on a clock other than the one of
    the transcript.

    :ivar transcript: the session up to there; the line left unanswered is
        in its :attr:`~Transcript.exchanges` with ``None`` for its reply.
    """

    def __init__(self, message: str, transcript: Transcript | None = None) -> None:
        super().__init__(message)
        self.transcript = transcript


class _Mode(enum.Enum):
    """What the client's next octets are, as the server reads them."""

    COMMAND = "command"
    DATA = "data"
    RESPONSE = "response"
    CHUNK = "chunk"


@attrs.define
class _Line:
    """A line sent that is owed a reply; *kind* names those whose reply changes the mode."""

    command: str | None
    kind: str | None = None


def _printable(line: bytes) -> str:
    text = line.decode("utf-8", errors="backslashreplace")
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


def _chunk_size(argument: str) -> int | None:
    """The size of ``BDAT chunk-size [LAST]``, read as the core reads it (RFC 3030 §2)."""
    words = argument.split()
    if not 1 <= len(words) <= 2 or not words[0].isascii() or not words[0].isdigit():
        return None
    if len(words[0]) > 20 or (len(words) == 2 and words[1].upper() != "LAST"):
        return None
    return int(words[0])


class _Client:
    """
    The client's side: what it sent, what it was told, and which reply
    answers which line.

    Lines are owed replies in the order sent. Whether the lines after DATA
    are message data, and after AUTH a SASL response, is known only from
    the reply, so the lines after those commands wait unread until it comes.
    """

    def __init__(self, chunking: bool) -> None:
        self.chunking = chunking
        self.exchanges: list[Exchange] = []
        self.dialogue: list[tuple[str, str]] = []
        self.owed: deque[_Line] = deque([_Line(None)])
        self._mode = _Mode.COMMAND
        self._blocked = False
        self._chunk = 0
        self._unread = bytearray()
        self._unshown = bytearray()
        self._output = bytearray()

    def sent(self, data: bytes) -> None:
        self._unshown += data
        while (end := self._unshown.find(_CRLF)) >= 0:
            self.dialogue.append(("C", _printable(bytes(self._unshown[:end]))))
            del self._unshown[: end + 2]
        self._unread += data
        self._read()

    def received(self, data: bytes) -> None:
        """One write of the server: a reply, and perhaps a ``421`` after it."""
        self._output += data
        for index, raw in enumerate(self._replies()):
            self.dialogue.extend(("S", _printable(line)) for line in raw[:-2].split(_CRLF))
            reply = Reply.parse(raw)
            if index == 0 and self.owed:
                line = self.owed.popleft()
                self.exchanges.append(Exchange(line.command, reply))
                self._answered(line, reply)
            else:
                self.exchanges.append(Exchange(None, reply))

    def finish(self) -> None:
        """The connection is closed: what is still owed goes unanswered."""
        if self._unshown:
            self.dialogue.append(("C", _printable(bytes(self._unshown)) + " [no CRLF]"))
            self._unshown.clear()
        self.exchanges.extend(Exchange(line.command, None) for line in self.owed)
        self.owed.clear()

    def _replies(self) -> Iterator[bytes]:
        """Whole replies out of the output: up to a line without ``-`` after its code."""
        start = 0
        while (end := self._output.find(_CRLF, start)) >= 0:
            line = self._output[start:end]
            start = end + 2
            if line[3:4] != b"-":
                raw = bytes(self._output[:start])
                del self._output[:start]
                start = 0
                yield raw

    def _answered(self, line: _Line, reply: Reply) -> None:
        if line.kind is None:
            return
        self._blocked = False
        self._mode = _Mode.COMMAND
        if line.kind == "DATA" and reply.code == 354:
            self._mode = _Mode.DATA
        elif line.kind in ("AUTH", "RESPONSE") and reply.code == 334:
            self._mode = _Mode.RESPONSE
        elif line.kind == "STARTTLS" and reply.code == 220:
            # RFC 3207 §4.2: what was sent before the handshake is thrown away.
            self._unread.clear()
        self._read()

    def _owe(self, command: str | None, kind: str | None = None) -> None:
        self.owed.append(_Line(command, kind))
        self._blocked = kind is not None

    def _read(self) -> None:
        unread = self._unread
        while not self._blocked:
            if self._mode is _Mode.CHUNK:
                # RFC 3030 §2: a chunk is octets, not lines.
                take = min(self._chunk, len(unread))
                del unread[:take]
                self._chunk -= take
                if self._chunk:
                    return
                self._mode = _Mode.COMMAND
                continue
            end = unread.find(_CRLF)
            if end < 0:
                return
            line = bytes(unread[:end])
            del unread[: end + 2]
            text = _printable(line)
            if self._mode is _Mode.DATA:
                # RFC 5321 §4.1.1.4: the message ends at CRLF "." CRLF.
                if line == b".":
                    self._mode = _Mode.COMMAND
                    self._owe(text)
                continue
            if self._mode is _Mode.RESPONSE:
                self._owe(text, "RESPONSE")
                continue
            verb, _, argument = line.decode("utf-8", errors="replace").partition(" ")
            verb = verb.upper()
            size = _chunk_size(argument) if verb == "BDAT" and self.chunking else None
            if verb in ("DATA", "AUTH", "STARTTLS"):
                self._owe(text, verb)
            elif size is not None:
                self._owe(text)
                self._chunk = size
                self._mode = _Mode.CHUNK
            else:
                self._owe(text)


class _Transport(StringTransport):
    """
    A :class:`~twisted.internet.testing.StringTransport` that hands each
    write of the server to the client's side, and does the TLS handshake
    of STARTTLS at once, with no cryptography.
    """

    def __init__(self, client: _Client, peer: IPv4Address | IPv6Address) -> None:
        super().__init__(peerAddress=peer)
        self.client = client
        self.server: SMTPServerProtocol | None = None

    def write(self, data: bytes) -> None:
        super().write(data)
        self.client.received(data)

    def startTLS(self, options: object) -> None:
        alsoProvides(self, ISSLTransport)
        if self.server is not None:
            self.server.handshakeCompleted()


class _Components:
    """Builds what the makers given to :func:`run_transcript` make, each once."""

    def __init__(
        self,
        makers: Sequence[Any],
        settings: Mapping[str, Mapping[str, Any]],
        context: ComponentContext,
    ) -> None:
        self.makers: dict[tuple[str, str], Any] = {}
        for maker in makers:
            key = (maker.kind, maker.name)
            if key in self.makers:
                raise ValueError(f"two {maker.kind} makers are named {maker.name!r}")
            self.makers[key] = maker
        unknown = set(settings) - {name for _, name in self.makers}
        if unknown:
            raise ValueError(
                f"settings for plugins no maker is named: {', '.join(sorted(unknown))}"
            )
        self.settings = settings
        self.context = attrs.evolve(context, component=self.get)
        self.built: dict[tuple[str, str], Any] = {}

    def of_kind(self, kind: str) -> list[Any]:
        return [self.get(k, name) for k, name in self.makers if k == kind]

    def get(self, kind: str, name: str) -> Any:
        """The component of *kind* named *name*: ``context.component``."""
        key = (kind, name)
        if key not in self.built:
            maker = self.makers.get(key)
            if maker is None:
                raise LookupError(f"run_transcript was given no {kind} maker named {name!r}")
            self.built[key] = maker.build(self.settings.get(name, {}), self.context)
        return self.built[key]


def _steps(script: ClientScript) -> list[bytes]:
    """The writes of the client, in order."""
    if isinstance(script, bytes | bytearray):
        return [bytes(script)] if script else []
    if isinstance(script, str):
        text = script.replace("\r\n", "\n")
        if text.endswith("\n"):
            text = text[:-1]
        return [line.encode("utf-8") + _CRLF for line in text.split("\n")] if text else []
    steps = []
    for step in script:
        if isinstance(step, bytes | bytearray):
            steps.append(bytes(step))
        elif isinstance(step, str):
            steps.append(_line(step))
        else:
            steps.append(b"".join(_line(line) for line in step))
    return steps


def _line(line: str | bytes) -> bytes:
    data = line.encode("utf-8") if isinstance(line, str) else bytes(line)
    if b"\r" in data or b"\n" in data:
        raise ValueError(
            f"{line!r} is more than one line: give each line apart, a list of lines for a"
            " pipelined group, or bytes to send exactly"
        )
    return data + _CRLF


def _settle(client: _Client, transport: _Transport, clock: MemoryReactorClock, wait: float) -> bool:
    """
    Run the clock, from one delayed call to the next, until the server has
    answered every line sent or closed; ``False`` if *wait* seconds pass
    first.
    """
    deadline = clock.seconds() + wait
    clock.advance(0)
    while client.owed and not transport.disconnecting:
        due = [call.getTime() for call in clock.getDelayedCalls() if call.active()]
        if not due or min(due) > deadline:
            return False
        clock.advance(max(0.0, min(due) - clock.seconds()))
    return True


def _now(d: Any, clock: MemoryReactorClock, what: str) -> Any:
    """The result of *d*, which the store must give on the fake clock."""
    if not isinstance(d, Deferred):
        return d
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        clock.advance(0)
    if not results:
        raise TranscriptStalled(f"the queue store did not answer {what} on the fake clock")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def run_transcript(
    script: ClientScript,
    policies: Iterable[Any] = (),
    *,
    store: IQueueStore | None = None,
    makers: Sequence[IComponentMaker] = (),
    plugin_settings: Mapping[str, Mapping[str, Any]] | None = None,
    hostname: str | None = None,
    settings: ServerSettings | None = None,
    client_address: str = "192.0.2.1",
    client_port: int = 40000,
    tls: bool = False,
    clock: MemoryReactorClock | None = None,
    resolver: IResolver | None = None,
    config: Config | None = None,
    wait: float = DEFAULT_WAIT,
) -> Transcript:
    """
    Run one SMTP session through mailframe's server, built with *policies*
    and *store*, and return what was said and what was queued.

    The server is :class:`~mailframe.protocols.server.SMTPServerFactory`
    on a fake transport and *clock*. After the greeting, and after each
    step of *script*, the client waits for every reply it is owed, as a
    client does, while the clock runs from one delayed call to the next: a
    policy may answer with a Deferred that fires later, from a
    ``callLater`` or ``deferLater`` on *clock*. A reply that takes more
    than *wait* seconds of fake time raises :exc:`TranscriptStalled`; a
    Deferred that never fires therefore fails the test instead of hanging
    it. Once the script is sent, the client closes the connection, if the
    server has not.

    :param script: what the client sends. ``bytes`` are sent as they are,
        in one write. A ``str`` is lines, sent one at a time, each with
        CRLF added. Otherwise a sequence of steps, one write each: a
        ``str`` is one line (CRLF added); a list or tuple of lines is a
        pipelined group (RFC 2920), sent at once; ``bytes`` are sent as
        they are. Message data is sent as given: dot-stuff lines that start
        with ``.`` (RFC 5321 §4.5.2) yourself.
    :param policies: :class:`~mailframe.interfaces.IPolicy` providers,
        asked in order, after those that *makers* build. With none, every
        command is accepted.
    :param store: the :class:`~mailframe.interfaces.IQueueStore`; a
        :class:`~mailframe.stores.MemoryQueueStore` on *clock* by default.
        It must answer on *clock*: a store that works in threads does not.
    :param makers: :class:`~mailframe.interfaces.IComponentMaker`\\ s,
        built as a config file would have them built: each policy maker
        makes a policy, asked before *policies*; a store maker makes the
        store, instead of *store*; routers and transports are built only
        when another component asks for them with ``context.component``.
    :param plugin_settings: plugin name to its settings, as in the
        ``[plugins.NAME]`` table of a config file, checked by its maker.
    :param hostname: the server's name; ``mx.example.com`` unless
        *settings* names one.
    :param settings: the listener's
        :class:`~mailframe.protocols.server.ServerSettings`, for limits,
        AUTH, STARTTLS or extensions; the TLS handshake of STARTTLS is
        simulated, and :attr:`ClientInfo.tls
        <mailframe.envelope.ClientInfo.tls>` then reads ``"TLS"``.
    :param client_address: the client's IP address, IPv4 or IPv6.
    :param client_port: the client's port.
    :param tls: the session is in TLS from the start, as on an ``ssl:``
        listener (RFC 8314): policies see :attr:`ClientInfo.tls
        <mailframe.envelope.ClientInfo.tls>` set, and AUTH can be offered.
    :param clock: the clock of the server, its store and the components
        that makers build; give the same one to components you build
        yourself. A new one by default; give one to run several sessions
        over the same time, advancing it between them.
    :param resolver: the :class:`~mailframe.interfaces.IResolver` of the
        makers' context; a :class:`~mailframe.testing.MemoryResolver` that
        knows no names by default.
    :param config: the :class:`~mailframe.config.Config` of the makers'
        context; by default the default config with *hostname*.
    :param wait: the seconds of fake time to wait for each reply.
    :raises TranscriptStalled: when the server has not answered within
        *wait*, with the session up to there.
    :raises ValueError: for a step of more than one line, or makers and
        settings that do not match.
    """
    clock = clock if clock is not None else MemoryReactorClock()
    start = clock.seconds()
    if settings is None:
        settings = ServerSettings(hostname=hostname or "mx.example.com")
    elif hostname is not None:
        settings = attrs.evolve(settings, hostname=hostname)
    steps = _steps(script)
    chain = list(policies)
    if makers:
        config = config if config is not None else Config(hostname=settings.hostname)
        context = ComponentContext(
            reactor=clock,
            random=random.Random(0),
            resolver=resolver if resolver is not None else MemoryResolver(),
            tls=settings.tls,
            log=Logger(namespace="mailframe.plugins"),
            config=config,
            listener=next(iter(config.effective_listeners()), None),
        )
        components = _Components(makers, plugin_settings or {}, context)
        stores = components.of_kind("store")
        if len(stores) + (store is not None) > 1:
            raise ValueError("give run_transcript one store: a store maker, or store=")
        if stores:
            store = stores[0]
        if store is None:
            store = MemoryQueueStore(clock, random=random.Random(0))
        components.context = attrs.evolve(components.context, store=store)
        chain = components.of_kind("policy") + chain
    elif plugin_settings:
        raise ValueError("plugin_settings are for the components that makers build")
    if store is None:
        store = MemoryQueueStore(clock, random=random.Random(0))

    queued: list[str] = []
    factory = SMTPServerFactory(settings, store, chain, clock, on_queued=queued.append)
    peer_type = IPv6Address if ":" in client_address else IPv4Address
    peer = peer_type("TCP", client_address, client_port)
    client = _Client(chunking=settings.chunking)
    transport = _Transport(client, peer)
    protocol = factory.buildProtocol(peer)
    transport.server = protocol
    if tls:
        alsoProvides(transport, ISSLTransport)
    protocol.makeConnection(transport)
    if tls:
        protocol.handshakeCompleted()
    settled = _settle(client, transport, clock, wait)
    for step in steps:
        if not settled or transport.disconnecting:
            break
        client.sent(step)
        protocol.dataReceived(step)
        settled = _settle(client, transport, clock, wait)
    unanswered = client.owed[0].command if client.owed else None
    closed = bool(transport.disconnecting)
    client.finish()
    protocol.connectionLost(Failure(ConnectionDone()))

    entries = []
    messages = []
    for queue_id in queued:
        entry = _now(store.get(queue_id), clock, f"get({queue_id!r})")
        if entry is None:
            continue
        entries.append(entry)
        message = _now(store.open_message(queue_id), clock, f"open_message({queue_id!r})")
        messages.append(message.read())
    transcript = Transcript(
        exchanges=tuple(client.exchanges),
        dialogue=tuple(client.dialogue),
        queue_ids=tuple(queued),
        entries=tuple(entries),
        messages=tuple(messages),
        closed=closed,
        elapsed=clock.seconds() - start,
        store=store,
    )
    if not settled:
        what = "the greeting" if unanswered is None else repr(unanswered)
        raise TranscriptStalled(
            f"The server did not answer {what} within {wait:g} seconds of fake time: a"
            " Deferred that a policy or the queue store returned never fired, or waits on a"
            " clock other than the transcript's. The session so far:\n" + transcript.render(),
            transcript,
        )
    return transcript
