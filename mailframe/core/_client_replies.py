"""
Reading SMTP replies (RFC 5321 §4.2) from a server that may send anything.

Every line is checked as soon as it ends, and an unterminated line as soon
as it has grown past the limit or shows a bare CR or LF, so that a bad
reply is reported early and what is buffered stays bounded: at most
:attr:`ClientLimits.reply_lines` lines of :attr:`ClientLimits.reply_line`
octets each.
"""

from __future__ import annotations

from mailframe.core._client_limits import ClientLimits
from mailframe.reply import Reply, ReplyError

__all__ = ["ReplyReader"]

#: The most octets of a bad line quoted in a :class:`ReplyError`.
_QUOTE = 80
#: Replies already parsed, by their octets. A server sends the same few
#: replies again and again (``250`` to MAIL and RCPT, ``354``), and a
#: :class:`Reply` is frozen, so each is parsed once. Only replies of up to
#: :data:`PARSED_OCTETS` are kept, and the whole cache is dropped when it
#: holds :data:`PARSED_REPLIES`: it stays under 128 KiB whatever a server
#: sends.
_PARSED: dict[bytes, Reply] = {}
PARSED_OCTETS = 512
PARSED_REPLIES = 256


def _quote(data: bytes | bytearray) -> str:
    """*data* escaped for a log line, and cut short if long."""
    text = repr(bytes(data[:_QUOTE]))
    return text + "..." if len(data) > _QUOTE else text


def _check_bare(data: bytes | bytearray, start: int, end: int) -> None:
    """
    Refuse a CR or LF in ``data[start:end]`` (RFC 5321 §2.3.8: only CRLF
    ends a line), quoting the line up to it, however the line arrived.
    """
    found = [
        index for index in (data.find(b"\r", start, end), data.find(b"\n", start)) if index >= 0
    ]
    if found:
        raise ReplyError(f"bare CR or LF in a reply line: {_quote(data[: min(found) + 1])}")


class ReplyReader:
    """
    Takes complete replies off the front of a buffer, one at a time.

    :meth:`read` raises :class:`~mailframe.reply.ReplyError` for anything
    that is not a reply within the limits; the reader is then of no more
    use until :meth:`reset`.
    """

    def __init__(self, limits: ClientLimits) -> None:
        self._line_limit = limits.reply_line
        self._max_lines = limits.reply_lines
        self.reset()

    def reset(self) -> None:
        """Forget the reply read so far (after STARTTLS, RFC 3207 §4.2)."""
        self._lines: list[bytes] = []
        self._code = b""
        # Octets at the head of the buffer already searched in vain for CRLF.
        self._searched = 0

    @property
    def partial(self) -> bool:
        """Some lines of a reply were read, but not its last one."""
        return bool(self._lines)

    def read(self, buffer: bytearray) -> Reply | None:
        """
        Take the next complete reply from *buffer*, or the lines that have
        arrived of it (then return ``None``).

        :raises ReplyError: the server sent something that is not a reply.
        """
        while True:
            # A CRLF may straddle the end of what was searched before.
            start = max(0, self._searched - 1)
            end = buffer.find(b"\r\n", start)
            if end < 0:
                self._check_unterminated(buffer, start)
                self._searched = len(buffer)
                return None
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            self._searched = 0
            reply = self._take(line)
            if reply is not None:
                return reply

    def _check_unterminated(self, buffer: bytearray, start: int) -> None:
        # RFC 5321 §2.3.8: only CRLF ends a line. There is no CRLF in the
        # buffer, so any LF is bare, and so is any CR but a last one (its
        # LF may be on the way).
        _check_bare(buffer, start, len(buffer) - 1)
        content = len(buffer) - (1 if buffer.endswith(b"\r") else 0)
        if content + 2 > self._line_limit:
            raise ReplyError(f"reply line longer than {self._line_limit} octets: {_quote(buffer)}")

    def _take(self, line: bytes) -> Reply | None:
        """Take one line, without its CRLF; return the reply it ends, if any."""
        if len(line) + 2 > self._line_limit:
            # RFC 5321 §4.5.3.1.5 says 512; longer lines are taken up to
            # the limit (REPLY_LINE_LIMIT by default).
            raise ReplyError(f"reply line longer than {self._line_limit} octets: {_quote(line)}")
        _check_bare(line, 0, len(line))
        code = line[:3]
        mark = line[3:4]
        # RFC 5321 §4.2: Reply-code [ ("-" / SP) textstring ]; codes 2yz
        # to 5yz (a 1yz is never used in SMTP, §4.2.1).
        if len(code) != 3 or not code.isdigit() or code[:1] not in b"2345" or mark not in b" -":
            raise ReplyError(f"malformed reply line: {_quote(line)}")
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            # RFC 5321 §4.2 text is ASCII; an SMTPUTF8 server may send
            # UTF-8 (RFC 6531), never anything else.
            raise ReplyError(f"reply text is not UTF-8: {_quote(line)}") from None
        if self._lines and code != self._code:
            # RFC 5321 §4.2.1: every line of a reply has the same code.
            raise ReplyError(
                f"reply lines disagree on the code: {_quote(self._code)} then {_quote(line)}"
            )
        self._code = code
        self._lines.append(line)
        if len(self._lines) > self._max_lines:
            raise ReplyError(f"reply of more than {self._max_lines} lines: {_quote(line)}")
        if mark == b"-":
            return None
        data = b"\r\n".join(self._lines) + b"\r\n"
        self._lines = []
        reply = _PARSED.get(data)
        if reply is not None:
            return reply
        try:
            reply = Reply.parse(data)
        except ValueError as error:
            # ReplyError, or a reply that cannot be built; neither is
            # expected once the lines passed the checks above.
            raise ReplyError(str(error)) from None
        if len(data) <= PARSED_OCTETS:
            if len(_PARSED) >= PARSED_REPLIES:
                _PARSED.clear()
            _PARSED[data] = reply
        return reply
