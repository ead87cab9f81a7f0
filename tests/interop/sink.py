"""
A downstream SMTP server on loopback for the interop tests: aiosmtpd in a
thread of the test process, which counts the ``Message-ID`` of every
message it accepts, so that a message delivered twice shows as a count of
two.

It can be told to answer ``451 4.3.0`` to every ``RCPT`` (so that mail
stays queued in the server that relays to it), and to stall after the final
dot of each message, before its reply, until :attr:`Sink.release` is set (so
that the relaying server can be stopped in the middle of a delivery). A
message counts as received only when the sink answers ``250`` for it.
"""

from __future__ import annotations

import asyncio
import collections
import re
import threading
import time
from types import TracebackType

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.interop.conftest import free_port

__all__ = ["STALL_LIMIT", "Sink"]

#: Seconds a stalled reply waits for :attr:`Sink.release` at most; then the
#: sink answers ``451`` and counts nothing.
STALL_LIMIT = 30.0
#: How often a stalled reply looks at :attr:`Sink.release`.
_POLL = 0.02

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


def message_id(message: bytes) -> str:
    """The ``Message-ID`` in the header section of *message*, or ``""``."""
    header = message.split(b"\r\n\r\n", 1)[0]
    match = _MESSAGE_ID.search(header)
    return match.group(1).decode("ascii", "replace") if match else ""


class Sink:
    """
    The aiosmtpd handler and its controller, on a free loopback port.

    :ivar defer: while true, every ``RCPT`` gets ``451 4.3.0``.
    :ivar stall: while true, the reply to each final dot waits for
        :attr:`release` (at most :data:`STALL_LIMIT` seconds).
    :ivar release: ends the stalls.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.defer = False
        self.stall = False
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._received: collections.Counter[str] = collections.Counter()
        self._stalling = 0
        self._dropped = 0
        self._deferred = 0
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    # -- what the tests read ----------------------------------------------------------

    def received(self) -> collections.Counter[str]:
        """A copy of the count of accepted messages, by ``Message-ID``."""
        with self._lock:
            return collections.Counter(self._received)

    @property
    def stalling(self) -> int:
        """Replies waiting for :attr:`release` now."""
        with self._lock:
            return self._stalling

    @property
    def dropped(self) -> int:
        """Stalled replies whose connection was closed by the client."""
        with self._lock:
            return self._dropped

    @property
    def deferred(self) -> int:
        """``RCPT`` commands answered with ``451``."""
        with self._lock:
            return self._deferred

    # -- aiosmtpd handler hooks -------------------------------------------------------

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.defer:
            with self._lock:
                self._deferred += 1
            return "451 4.3.0 Deferred by the test"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        found = message_id(envelope.original_content or b"")
        if self.stall and not await self._stalled(server):
            return "451 4.3.0 Not accepted after the stall"
        with self._lock:
            self._received[found] += 1
        return "250 2.0.0 Accepted"

    async def _stalled(self, server: SMTP) -> bool:
        """
        Wait for :attr:`release`; whether the client is still there then.
        aiosmtpd cancels the handler when the client closes the connection.
        """
        with self._lock:
            self._stalling += 1
        deadline = time.monotonic() + STALL_LIMIT
        try:
            while not self.release.is_set():
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(_POLL)
        except asyncio.CancelledError:
            with self._lock:
                self._dropped += 1
            raise
        finally:
            with self._lock:
                self._stalling -= 1
        if server.transport is None or server.transport.is_closing():
            with self._lock:
                self._dropped += 1
            return False
        return True

    # -- running ----------------------------------------------------------------------

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self.release.set()
        self._controller.stop()

    def __enter__(self) -> Sink:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
