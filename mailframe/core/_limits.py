"""
The limits that bound every buffer of the server core, each named with the
RFC section it comes from.
"""

from __future__ import annotations

import attrs

__all__ = [
    "COMMAND_LINE",
    "DSN_MAIL_EXTRA",
    "DSN_RCPT_EXTRA",
    "ENVID_LENGTH",
    "ORCPT_LENGTH",
    "AUTH_MAIL_EXTRA",
    "SIZE_MAIL_EXTRA",
    "MIN_RECIPIENTS",
    "SASL_LINE",
    "Limits",
]

#: RFC 5321 §4.5.3.1.4: a command line is at most 512 octets, CRLF included.
COMMAND_LINE = 512
#: RFC 1870 §3: SIZE adds up to 26 octets to MAIL FROM.
SIZE_MAIL_EXTRA = 26
#: RFC 3461 §4: RET and ENVID add up to 100 octets to MAIL FROM.
DSN_MAIL_EXTRA = 100
#: RFC 3461 §4: NOTIFY and ORCPT add up to 500 octets to RCPT TO.
DSN_RCPT_EXTRA = 500
#: RFC 3461 §4.4: an ENVID value, as sent in xtext, is at most 100
#: characters.
ENVID_LENGTH = 100
#: RFC 3461 §4.2: an ORCPT value (address type, ";" and xtext) is at most
#: 500 characters.
ORCPT_LENGTH = 500
#: RFC 4954 §5: AUTH= adds up to 500 octets to MAIL FROM.
AUTH_MAIL_EXTRA = 500
#: RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients.
MIN_RECIPIENTS = 100
#: RFC 4954 §4: SASL responses can be much longer than commands; 12288
#: octets of base64 are enough for deployed mechanisms (the minimum of
#: Postfix's ``smtpd_sasl_response_limit``).
SASL_LINE = 12288
#: RFC 5321 §4.5.3.1.6: text lines are 1000 octets, but lines in message
#: data are accepted at any length; this only bounds how much of one
#: unterminated line is buffered before it is passed on.
DATA_CHUNK = 64 * 1024
#: The header section passed to end-of-data policies is capped at this size.
HEADER_CAPTURE = 64 * 1024


@attrs.frozen
class Limits:
    """
    The limits of one SMTP server session.

    :ivar max_message_size: the SIZE limit in octets (RFC 1870); 0 means none.
    :ivar max_recipients: recipients per transaction; at least 100
        (RFC 5321 §4.5.3.1.8). One more gets ``452 4.5.3``.
    :ivar max_errors: error replies after which the session ends with 421
        (Postfix's ``smtpd_hard_error_limit``). Refusals of a message at its
        end, and 452 to recipients beyond :attr:`max_recipients`, which the
        client is to send again later (RFC 5321 §4.5.3.1.10), do not count.
    :ivar max_hops: ``Received:`` fields after which a message is refused
        with ``554 5.4.6`` (RFC 5321 §6.3; Postfix's ``hopcount_limit``).
    :ivar command_line: the base command line length, CRLF included
        (RFC 5321 §4.5.3.1.4); advertised extensions add to it.
    :ivar sasl_line: the longest response to an AUTH challenge, CRLF
        excluded; at least 12288 (RFC 4954 §4). A longer one fails the
        AUTH command with ``500 5.5.6``.
    """

    max_message_size: int = attrs.field(default=10 * 1024 * 1024, validator=attrs.validators.ge(0))
    max_recipients: int = attrs.field(default=1000, validator=attrs.validators.ge(MIN_RECIPIENTS))
    max_errors: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    max_hops: int = attrs.field(default=50, validator=attrs.validators.ge(1))
    command_line: int = attrs.field(
        default=COMMAND_LINE, validator=attrs.validators.ge(COMMAND_LINE)
    )
    sasl_line: int = attrs.field(default=SASL_LINE, validator=attrs.validators.ge(SASL_LINE))
