"""
Command pipelining (RFC 2920) over raw asyncio streams, against
``twistd -n mailframe``: whole groups of commands in one write, and message
content followed by the next transaction's commands in the same write, as
RFC 2920 §3.1 allows.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.interop.conftest import Server

pytestmark = pytest.mark.interop


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines: list[bytes] = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 30)
        if not line:
            raise EOFError(b"".join(lines))
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def pipelined(port: int, count: int) -> list[tuple[int, bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await read_reply(reader))[0] == 220
        writer.write(b"EHLO pipe.example\r\n")
        code, features = await read_reply(reader)
        assert code == 250 and b"PIPELINING" in features
        replies: list[tuple[int, bytes]] = []
        group = b""
        for n in range(count):
            group += (f"MAIL FROM:<sender@example.org>\r\n"
                      f"RCPT TO:<pipe{n}@example.com>\r\n"
                      f"RCPT TO:<nobody{n}@elsewhere.example>\r\n"
                      f"DATA\r\n").encode()
            writer.write(group)
            await writer.drain()
            for _ in range(4 if n == 0 else 5):
                replies.append(await read_reply(reader))
            # Content first in the next group: the message, its final dot,
            # and the next transaction's commands, in one write.
            group = f"Subject: pipelined {n}\r\n\r\n..dot\r\nbody {n}\r\n.\r\n".encode()
        writer.write(group + b"QUIT\r\n")
        await writer.drain()
        replies.append(await read_reply(reader))
        replies.append(await read_reply(reader))
        assert await asyncio.wait_for(reader.read(), 30) == b""
        return replies
    finally:
        writer.close()


def test_groups_and_content_then_commands(server: Server) -> None:
    count = 5
    replies = asyncio.run(pipelined(server.port, count))
    codes = [code for code, _ in replies]
    # MAIL, RCPT, RCPT, DATA for the first; then the final dot's reply
    # ahead of the next MAIL, RCPT, RCPT, DATA; then the last dot and QUIT.
    assert codes == [250, 250, 250, 354] + [250, 250, 250, 250, 354] * (count - 1) + [250, 221]
    queued = [text for code, text in replies if text.startswith(b"250 2.0.0 Ok: queued as ")]
    assert len(queued) == count
    ids = {re.search(rb"queued as (\S+)", text).group(1) for text in queued}  # type: ignore[union-attr]
    assert len(ids) == count
    for n in range(count):
        [message] = server.wait_delivered(f"pipe{n}", 1)
        assert message.endswith(f"Subject: pipelined {n}\n\n.dot\nbody {n}\n".encode())
