"""
Writing a reply at once, when nothing else is waiting to be written.

:meth:`twisted.internet.abstract.FileDescriptor.write` buffers every write
and asks the reactor to say when the socket can take it: two ``epoll_ctl``
calls a write (one to watch the socket for writing, one to stop), and a
trip round the reactor's loop before the ``send``. An SMTP session writes
one short reply to each command, and the client waits for it, so the
socket can almost always take it at once; so can an SMTP client's socket
its commands. :func:`write_now` sends them
straight away when the transport is a plain TCP connection whose buffer
is empty, and leaves anything it could not send, and every other case, to
the transport's own :meth:`write`. The order of the bytes is kept, since
the socket is written directly only when nothing is waiting before it.

Under ``smtp-source``, this takes a small message's system calls on the
server from 17.6 to 9.3 (``strace -c``), all of the difference being
``epoll_ctl``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Client, Server

__all__ = ["write_now"]

# Twisted's TCP connections, exactly: a subclass may write differently.
_PLAIN_TCP = (Server, Client)


def write_now(transport: Any, data: bytes) -> None:
    """
    Write *data* to *transport*: straight to its socket if it is a TCP
    connection without TLS that is open, not closing and has nothing
    buffered; otherwise, or for what the socket does not take, through
    ``transport.write``.
    """
    if (
        type(transport) in _PLAIN_TCP
        and transport.connected
        and not transport.disconnecting
        and not transport.TLS
        and not transport.dataBuffer
        and not getattr(transport, "_tempDataBuffer", True)
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent == len(data):
                return
            data = data[sent:]
        # The connection is lost (sent is the reason): write() buffers the
        # data, and the reactor finds the loss when it next reads or writes.
    transport.write(data)
