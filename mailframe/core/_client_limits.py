"""
The limits of the client core: how much of a server's reply it reads before
calling the reply a protocol violation, and how long an adapter waits for
each reply (RFC 5321 §4.5.3.2).
"""

from __future__ import annotations

import attrs

__all__ = [
    "COMMAND_TIMEOUT",
    "DATA_BLOCK_TIMEOUT",
    "DATA_INITIATION_TIMEOUT",
    "DATA_TERMINATION_TIMEOUT",
    "GREETING_TIMEOUT",
    "MAIL_TIMEOUT",
    "RCPT_TIMEOUT",
    "REPLY_LINE",
    "REPLY_LINE_LIMIT",
    "REPLY_LINES_LIMIT",
    "ClientLimits",
]

#: RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, reply code and
#: CRLF included.
REPLY_LINE = 512
#: The longest reply line the client reads, CRLF included, before it calls
#: the reply a protocol violation: eight times :data:`REPLY_LINE`, because
#: servers do send longer lines (rejection texts with URLs, long AUTH
#: lists), and Postfix's client reads lines of 2048 octets and more.
REPLY_LINE_LIMIT = 8 * REPLY_LINE
#: The most lines in one reply. RFC 5321 sets no number; an EHLO reply
#: listing every extension in use is about twenty lines.
REPLY_LINES_LIMIT = 100

#: RFC 5321 §4.5.3.2.1: waiting for the 220 greeting, 5 minutes.
GREETING_TIMEOUT = 5 * 60.0
#: RFC 5321 §4.5.3.2.2: waiting for the reply to MAIL, 5 minutes.
MAIL_TIMEOUT = 5 * 60.0
#: RFC 5321 §4.5.3.2.3: waiting for the reply to RCPT, 5 minutes.
RCPT_TIMEOUT = 5 * 60.0
#: RFC 5321 §4.5.3.2.4: waiting for the 354 to DATA, 2 minutes.
DATA_INITIATION_TIMEOUT = 2 * 60.0
#: RFC 5321 §4.5.3.2.5: each write of message data, 3 minutes. The client
#: also waits this long for the reply to a BDAT chunk that is not the last.
DATA_BLOCK_TIMEOUT = 3 * 60.0
#: RFC 5321 §4.5.3.2.6: waiting for the reply to the final dot (or to the
#: last BDAT chunk), 10 minutes.
DATA_TERMINATION_TIMEOUT = 10 * 60.0
#: Waiting for the reply to any other command (EHLO, RSET, STARTTLS, AUTH,
#: QUIT, ...). RFC 5321 names no value; this is the value of MAIL, as
#: Postfix's ``smtp_helo_timeout``.
COMMAND_TIMEOUT = 5 * 60.0

_POSITIVE = attrs.validators.gt(0.0)


@attrs.frozen
class ClientLimits:
    """
    The limits of one SMTP client session.

    The timeouts are in seconds. The core has no clock: an adapter reads
    them, through :attr:`ClientConnection.reply_timeout`, and closes the
    connection when one runs out.

    :ivar reply_line: the longest reply line read, CRLF included; at least
        :data:`REPLY_LINE` (RFC 5321 §4.5.3.1.5). A longer one is a protocol
        violation, reported as soon as that many octets have arrived
        without a line end.
    :ivar reply_lines: the most lines in one reply; one more is a protocol
        violation.
    :ivar greeting_timeout: RFC 5321 §4.5.3.2.1, the 220 greeting.
    :ivar mail_timeout: RFC 5321 §4.5.3.2.2, the reply to MAIL.
    :ivar rcpt_timeout: RFC 5321 §4.5.3.2.3, the reply to RCPT.
    :ivar data_initiation_timeout: RFC 5321 §4.5.3.2.4, the 354 to DATA.
    :ivar data_block_timeout: RFC 5321 §4.5.3.2.5, each write of message
        data, and the reply to a BDAT chunk that is not the last.
    :ivar data_termination_timeout: RFC 5321 §4.5.3.2.6, the reply to the
        final dot or to the last BDAT chunk.
    :ivar command_timeout: the reply to any other command.
    """

    reply_line: int = attrs.field(
        default=REPLY_LINE_LIMIT, validator=attrs.validators.ge(REPLY_LINE)
    )
    reply_lines: int = attrs.field(default=REPLY_LINES_LIMIT, validator=attrs.validators.ge(1))
    greeting_timeout: float = attrs.field(default=GREETING_TIMEOUT, validator=_POSITIVE)
    mail_timeout: float = attrs.field(default=MAIL_TIMEOUT, validator=_POSITIVE)
    rcpt_timeout: float = attrs.field(default=RCPT_TIMEOUT, validator=_POSITIVE)
    data_initiation_timeout: float = attrs.field(
        default=DATA_INITIATION_TIMEOUT, validator=_POSITIVE
    )
    data_block_timeout: float = attrs.field(default=DATA_BLOCK_TIMEOUT, validator=_POSITIVE)
    data_termination_timeout: float = attrs.field(
        default=DATA_TERMINATION_TIMEOUT, validator=_POSITIVE
    )
    command_timeout: float = attrs.field(default=COMMAND_TIMEOUT, validator=_POSITIVE)
