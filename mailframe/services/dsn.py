"""
Delivery status notifications: the report that tells a sender what became
of a message (RFC 3464), built from values and written as bytes.

A :class:`DeliveryReport` says which recipients of one queued message the
report is about, and what happened to each (a :class:`RecipientReport`).
:func:`render_dsn` writes it as a complete message, ready for the queue:
a ``multipart/report`` (RFC 6522) of three parts,

1. a ``text/plain`` notice for people;
2. a ``message/delivery-status`` report for programs: the fields about the
   message, then one block of fields for each recipient (RFC 3464 §2);
3. the original message (``message/rfc822``), or only its header section
   (``text/rfc822-headers``), as the caller decides from RET (RFC 3461
   §4.3) and the size cap.

A report about a message that was sent with SMTPUTF8, or that goes to a
non-ASCII address, takes the forms of RFC 6533: ``message/global-delivery-status``,
``message/global`` or ``message/global-headers``, and header fields in
UTF-8 (RFC 6532). It must then travel with SMTPUTF8 itself
(:attr:`DeliveryReport.smtputf8`).

Nothing here does I/O or keeps time: the caller gives the times, the
boundary and the original, and writes what :func:`render_dsn` yields.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Iterable, Iterator

import attrs

from mailframe.address import Mailbox
from mailframe.envelope import BodyType, Envelope
from mailframe.reply import Reply

__all__ = [
    "ACTIONS",
    "CHUNK_SIZE",
    "DeliveryReport",
    "RecipientReport",
    "dsn_body_type",
    "render_dsn",
]

#: The most octets in one chunk that :func:`render_dsn` yields. The original
#: is copied in slices of this size, never joined with the rest.
CHUNK_SIZE = 64 * 1024

#: The RFC 3464 §2.3.3 actions that a report can give, in the order the
#: notice lists them: failures first.
ACTIONS = ("failed", "delayed", "delivered", "relayed")

#: RFC 3464 §2.3.4: the status is an RFC 3463 enhanced status code.
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
#: RFC 2046 §5.1.1: bchars, 1 to 70 of them. Spaces, which the grammar
#: allows inside a boundary, are not accepted here.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=?-]{1,70}\Z")
#: RFC 5322 §3.6.4: msg-id is "<" id-left "@" id-right ">"; only its shape
#: is checked here, enough to keep it one token in one header field.
_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>\Z")
#: An MTA name: printable ASCII (an IDN in its A-label form), without the
#: characters that would end it inside a field or an address.
_MTA_NAME = re.compile(r"[\x21-\x7e]+\Z")
_NOT_IN_MTA_NAME = frozenset(';<>()"@,[]\\')
#: Line ends of the original, bare or not; all become CRLF.
_LINE_END = re.compile(rb"\r\n|\r|\n")
#: RFC 5322 §2.1.1: lines SHOULD be at most 78 characters; fields are
#: folded at spaces to stay within it where the words allow.
_FOLD_AT = 78
#: RFC 5322 §2.1.1: lines MUST be at most 998 octets; a word longer than
#: this is split, so that no line of a field or of the notice can exceed
#: the limit.
_LONGEST_WORD = 900
#: RFC 6533 §3: QCHAR, what utf-8-addr-xtext writes as itself.
_QCHAR = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]")

_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
}


def _check_action(
    instance: RecipientReport, attribute: attrs.Attribute[str], value: str
) -> None:
    if value not in ACTIONS:
        raise ValueError(f"action {value!r} is not one of {', '.join(ACTIONS)}")


def _check_status(
    instance: RecipientReport, attribute: attrs.Attribute[str], value: str
) -> None:
    if not _STATUS.match(value):
        raise ValueError(f"status {value!r} is not an enhanced status code such as 5.1.1")


@attrs.frozen
class RecipientReport:
    """
    What happened to one recipient, as the report gives it (RFC 3464 §2.3).

    :ivar final_recipient: the recipient that delivery was attempted for
        (``Final-Recipient``).
    :ivar action: ``"failed"``, ``"delayed"``, ``"delivered"`` (final
        delivery) or ``"relayed"`` (to a next hop that sends no reports).
    :ivar status: the RFC 3463 enhanced status code, such as ``"5.1.1"``.
        A recipient that failed because its time in the queue ran out keeps
        the ``4.x.x`` status of its last attempt, as Postfix does.
    :ivar original: the ORCPT of its RCPT as the envelope stores it,
        address type and address, such as ``"rfc822;bob@example.com"``
        (``Original-Recipient``); ``None`` when RCPT gave none.
    :ivar remote_mta: the host name (or address) of the server that gave
        :attr:`diagnostic` (``Remote-MTA``), or ``None``.
    :ivar diagnostic: the reply that decided the action
        (``Diagnostic-Code: smtp; 550 5.1.1 ...``), or ``None``.
    :ivar last_attempt: POSIX time of the last delivery attempt
        (``Last-Attempt-Date``), or ``None``.
    :ivar will_retry_until: for ``"delayed"``, the POSIX time when the
        queue gives up on the recipient (``Will-Retry-Until``); ignored for
        the other actions (RFC 3464 §2.3.9).
    """

    final_recipient: Mailbox
    action: str = attrs.field(validator=_check_action)
    status: str = attrs.field(validator=_check_status)
    original: str | None = None
    remote_mta: str | None = None
    diagnostic: Reply | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None


def _check_mta(instance: DeliveryReport, attribute: attrs.Attribute[str], value: str) -> None:
    if not _MTA_NAME.match(value) or _NOT_IN_MTA_NAME.intersection(value):
        raise ValueError(f"reporting MTA {value!r} is not an ASCII host name")


def _check_recipients(
    instance: DeliveryReport,
    attribute: attrs.Attribute[tuple[RecipientReport, ...]],
    value: tuple[RecipientReport, ...],
) -> None:
    if not value:
        raise ValueError("a delivery report is about at least one recipient")


def _check_message_id(
    instance: DeliveryReport, attribute: attrs.Attribute[str], value: str
) -> None:
    if not _MESSAGE_ID.match(value):
        raise ValueError(f"message id {value!r} is not of the form <left@right>")


@attrs.frozen
class DeliveryReport:
    """
    One delivery status notification about one queued message.

    :ivar reporting_mta: the name of this MTA (``Reporting-MTA: dns; ...``,
        and the domain of the ``MAILER-DAEMON`` it comes from).
    :ivar queue_id: the queue id of the original (``X-Mailframe-Queue-ID``).
    :ivar envelope: the envelope of the original: its sender, arrival
        time, ENVID and SMTPUTF8 are reported.
    :ivar recipients: the recipients the report is about, in order; at
        least one.
    :ivar created_at: POSIX time the report is made (``Date:``).
    :ivar message_id: the report's ``Message-ID:``, with its angle
        brackets: ``"<...@...>"``.
    :ivar to: who the report goes to: the original sender, or a postmaster.
    """

    reporting_mta: str = attrs.field(validator=_check_mta)
    queue_id: str
    envelope: Envelope
    recipients: tuple[RecipientReport, ...] = attrs.field(validator=_check_recipients)
    created_at: float
    message_id: str = attrs.field(validator=_check_message_id)
    to: Mailbox

    @property
    def smtputf8(self) -> bool:
        """
        Whether the report takes the internationalized forms of RFC 6533
        and must be sent with SMTPUTF8: the original was sent with it, or
        :attr:`to` is not ASCII.
        """
        return self.envelope.smtputf8 or not self.to.is_ascii

    @property
    def subject(self) -> str:
        """The ``Subject:``, after the gravest action reported: failures first."""
        return _SUBJECTS[self._actions()[0]]

    def _actions(self) -> list[str]:
        present = {r.action for r in self.recipients}
        return [action for action in ACTIONS if action in present]


def render_dsn(
    report: DeliveryReport, original: bytes, full: bool, boundary: str
) -> Iterator[bytes]:
    """
    The complete notification, header section and body, as byte chunks to
    be written one after another.

    Every line ends with CRLF, the original's too: its line ends, bare LF
    and bare CR included, are written as CRLF, and one is added at its end
    if it has none. No chunk is larger than :data:`CHUNK_SIZE`, and the
    original is never copied into one buffer with the rest.

    :param original: what to return of the original message: the whole of
        it when *full*, else its header section. The caller bounds it: RET
        (RFC 3461 §4.3) and the size cap decide.
    :param full: whether *original* is the whole message
        (``message/rfc822``) or its header section (``text/rfc822-headers``).
    :param boundary: the MIME boundary, chosen at random by the caller
        (RFC 2046 §5.1.1: 1 to 70 characters, here without spaces).
    :raises ValueError: at once, before any chunk, if *boundary* is
        malformed, or occurs in the original or in the report: a random
        boundary of enough length never does, so this is checked rather
        than worked around.
    """
    if not _BOUNDARY.match(boundary):
        raise ValueError(f"boundary {boundary!r} is not 1 to 70 MIME bchars")
    utf8 = report.smtputf8
    notice = _notice(report, full)
    status = _delivery_status(report, utf8)
    delimiter = boundary.encode("ascii")
    if delimiter in original or boundary in notice or any(boundary in f for f in status):
        raise ValueError(f"boundary {boundary!r} occurs in the report or the original")
    return _render(report, original, full, boundary, notice, status)


def _render(
    report: DeliveryReport,
    original: bytes,
    full: bool,
    boundary: str,
    notice: str,
    status: list[str],
) -> Iterator[bytes]:
    """The chunks of :func:`render_dsn`, once its arguments are checked."""
    utf8 = report.smtputf8
    notice_8bit = not notice.isascii()
    status_8bit = not all(block.isascii() for block in status)
    original_8bit = not original.isascii()
    eight_bit = notice_8bit or status_8bit or original_8bit

    head = [
        _field("From", f'"Mail Delivery System" <MAILER-DAEMON@{report.reporting_mta}>'),
        _field("To", _clean(report.to.render(), utf8)),
        _field("Subject", report.subject),
        _field("Date", _date(report.created_at)),
        _field("Message-ID", report.message_id),
        # RFC 3834 §5: a report is an automatic response; responders must
        # not answer it.
        _field("Auto-Submitted", "auto-replied"),
        _field("MIME-Version", "1.0"),
        _field(
            "Content-Type",
            "multipart/report; report-type=delivery-status;",
            f'boundary="{boundary}"',
        ),
    ]
    if eight_bit:
        # RFC 2045 §6.4: a multipart is labelled with the widest encoding
        # of its parts.
        head.append(_field("Content-Transfer-Encoding", "8bit"))
    head.append("\r\nThis is a MIME-encapsulated delivery status notification.\r\n")
    head.append(f"\r\n--{boundary}\r\n")
    head.append(_field("Content-Description", "Notification"))
    head.append(_field("Content-Type", "text/plain; charset=utf-8"))
    if notice_8bit:
        head.append(_field("Content-Transfer-Encoding", "8bit"))
    head.append("\r\n")
    head.append(notice)

    body = [f"\r\n--{boundary}\r\n"]
    body.append(_field("Content-Description", "Delivery report"))
    # RFC 6533 §4: the report about an internationalized message.
    body.append(
        _field(
            "Content-Type",
            "message/global-delivery-status" if utf8 else "message/delivery-status",
        )
    )
    if status_8bit:
        body.append(_field("Content-Transfer-Encoding", "8bit"))
    body.append("\r\n")
    # RFC 3464 §2.1: the per-message fields, then each recipient's, the
    # groups separated by empty lines.
    for index, block in enumerate(status):
        body.append("\r\n" + block if index else block)

    body.append(f"\r\n--{boundary}\r\n")
    if full:
        body.append(_field("Content-Description", "Original message"))
        content_type = "message/global" if utf8 else "message/rfc822"
    else:
        body.append(_field("Content-Description", "Original message header section"))
        content_type = "message/global-headers" if utf8 else "text/rfc822-headers"
    # RFC 6533 §4: an internationalized original is returned as
    # message/global (RFC 6532 §3.7) or message/global-headers.
    body.append(_field("Content-Type", content_type))
    if original_8bit:
        # RFC 2046 §5.2.1: a message/rfc822 is 7bit, 8bit or binary, never
        # encoded; 8-bit data is labelled.
        body.append(_field("Content-Transfer-Encoding", "8bit"))
    body.append("\r\n")

    yield from _coalesce(head)
    yield from _coalesce(body)
    yield from _crlf_slices(original)
    yield f"\r\n--{boundary}--\r\n".encode("ascii")


def dsn_body_type(report: DeliveryReport, original: bytes, full: bool) -> BodyType:
    """
    The ``BODY=`` to send the notification with (RFC 6152):
    ``8BITMIME`` when the original or the report has 8-bit data, else
    ``7BIT``. *original* and *full* are those given to :func:`render_dsn`.
    """
    if not original.isascii() or not _notice(report, full).isascii():
        return BodyType.EIGHT_BIT_MIME
    if not all(block.isascii() for block in _delivery_status(report, report.smtputf8)):
        return BodyType.EIGHT_BIT_MIME
    return BodyType.SEVEN_BIT


def _coalesce(pieces: Iterable[str]) -> Iterator[bytes]:
    """*pieces* in UTF-8, joined into chunks of at most :data:`CHUNK_SIZE`."""
    pending: list[bytes] = []
    size = 0
    for piece in pieces:
        data = piece.encode("utf-8")
        if size + len(data) > CHUNK_SIZE and pending:
            yield b"".join(pending)
            pending, size = [], 0
        while len(data) > CHUNK_SIZE:
            yield data[:CHUNK_SIZE]
            data = data[CHUNK_SIZE:]
        pending.append(data)
        size += len(data)
    if pending:
        yield b"".join(pending)


def _crlf_slices(original: bytes) -> Iterator[bytes]:
    """
    *original* in slices of at most :data:`CHUNK_SIZE`, with every line
    end as CRLF, and ending with CRLF unless it is empty.
    """
    start = 0
    end_of_data = len(original)
    while start < end_of_data:
        end = min(start + CHUNK_SIZE, end_of_data)
        if end < end_of_data and original[end - 1 : end] == b"\r" and end - 1 > start:
            # Keep a CR with the LF that may follow it in the next slice.
            end -= 1
        piece = _LINE_END.sub(b"\r\n", original[start:end])
        # Bare line ends grow by an octet each; slice again if needed.
        for offset in range(0, len(piece), CHUNK_SIZE):
            yield piece[offset : offset + CHUNK_SIZE]
        start = end
    if original and not original.endswith((b"\r\n", b"\n", b"\r")):
        yield b"\r\n"


def _date(when: float) -> str:
    """*when* as an RFC 5322 §3.3 date-time, in UTC."""
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return email.utils.format_datetime(moment)


def _escape(char: str) -> str:
    # RFC 6533 §3 EmbeddedUnicodeChar: "\x{" HEXPOINT "}".
    return f"\\x{{{ord(char):X}}}"


def _clean(text: str, utf8: bool) -> str:
    """
    *text* made safe for a field value or a line of the notice: controls
    (CR and LF among them, and the C1 controls), and non-ASCII characters
    unless *utf8*, are written as ``\\x{HEX}`` (the RFC 6533 §3 embedded
    form).
    """
    out = []
    for char in text:
        point = ord(char)
        if point < 0x20 or 0x7F <= point <= 0x9F or 0xD800 <= point <= 0xDFFF:
            out.append(_escape(char))
        elif point > 0x7F and not utf8:
            out.append(_escape(char))
        else:
            out.append(char)
    return "".join(out)


def _utf8_addr_xtext(address: str) -> str:
    """*address* as RFC 6533 §3 utf-8-addr-xtext: ASCII only."""
    return "".join(char if _QCHAR.match(char) else _escape(char) for char in address)


def _address(mailbox: Mailbox, utf8: bool) -> str:
    """
    An address field value: ``rfc822; addr`` for an ASCII mailbox (RFC
    3464 §2.3.2), else ``utf-8; addr`` (RFC 6533 §3), with the address as
    it is when the report may carry UTF-8, else as utf-8-addr-xtext.
    """
    rendered = mailbox.render()
    if mailbox.is_ascii:
        return f"rfc822; {rendered}"
    if utf8:
        return f"utf-8; {_clean(rendered, True)}"
    return f"utf-8; {_utf8_addr_xtext(rendered)}"


def _original_recipient(value: str, utf8: bool) -> str:
    """An ORCPT as stored, ``type;address``, as a field value: ``type; address``."""
    kind, semicolon, address = value.partition(";")
    if not semicolon:
        kind, address = "rfc822", value
    kind = kind.strip().lower() or "rfc822"
    # Without SMTPUTF8, a utf-8 address given as utf-8-addr-unitext becomes
    # utf-8-addr-xtext (RFC 6533 §3): its non-ASCII characters escaped.
    return f"{_clean(kind, False)}; {_clean(address.strip(), utf8)}"


def _diagnostic(reply: Reply, utf8: bool) -> list[str]:
    """
    The value of ``Diagnostic-Code`` (RFC 3464 §2.3.6): ``smtp;`` and the
    reply as it was given, each of its lines on a line of the field.
    """
    lines = reply.render().decode("utf-8").split("\r\n")[:-1]
    lines = [_clean(line, utf8) for line in lines]
    return [f"smtp; {lines[0]}", *lines[1:]]


def _pieces(text: str) -> list[str]:
    """
    *text* cut into pieces of at most _LONGEST_WORD octets in UTF-8 (a
    character takes at most four).
    """
    size = _LONGEST_WORD if text.isascii() else _LONGEST_WORD // 4
    return [text[start : start + size] for start in range(0, len(text), size)] or [""]


def _words(text: str) -> Iterator[str]:
    """The words of *text* split at single spaces, none longer than _LONGEST_WORD octets."""
    for word in text.split(" "):
        yield from _pieces(word)


def _field(name: str, *pieces: str) -> str:
    """
    One header field, CRLF-terminated: ``name:`` and each of *pieces* on a
    line of its own, a long piece folded at its spaces (RFC 5322 §2.2.3).
    A line is broken only before a space that is followed by a word, so no
    line is only white space.
    """
    lines = [f"{name}:"]
    has_words = [False]
    for index, piece in enumerate(pieces):
        if index:
            lines.append("")
            has_words.append(False)
        for word in _words(piece):
            segment = " " + word
            if has_words[-1] and word and len(lines[-1]) + len(segment) > _FOLD_AT:
                lines.append(segment)
                has_words.append(True)
            else:
                lines[-1] += segment
                has_words[-1] = has_words[-1] or bool(word)
    return "\r\n".join(lines) + "\r\n"


def _delivery_status(report: DeliveryReport, utf8: bool) -> list[str]:
    """
    The groups of fields of the ``message/delivery-status`` part (RFC 3464
    §2.2 and §2.3), each CRLF-terminated: the per-message fields, then one
    group for each recipient.
    """
    envelope = report.envelope
    message = []
    if envelope.envid is not None:
        # RFC 3461 §4.4 and §6.3: the ENVID, decoded from xtext; RFC 3464
        # §2.2.1: preserved exactly. It is printable ASCII (RFC 3461 §4.4);
        # anything else is escaped.
        message.append(_field("Original-Envelope-Id", _clean(envelope.envid, False)))
    message.append(_field("Reporting-MTA", f"dns; {report.reporting_mta}"))
    message.append(_field("X-Mailframe-Queue-ID", _clean(report.queue_id, False)))
    if isinstance(envelope.sender, Mailbox):
        message.append(_field("X-Mailframe-Sender", _address(envelope.sender, utf8)))
    message.append(_field("Arrival-Date", _date(envelope.received_at)))
    groups = ["".join(message)]
    for recipient in report.recipients:
        fields = []
        if recipient.original is not None:
            fields.append(
                _field("Original-Recipient", _original_recipient(recipient.original, utf8))
            )
        fields.append(_field("Final-Recipient", _address(recipient.final_recipient, utf8)))
        fields.append(_field("Action", recipient.action))
        fields.append(_field("Status", recipient.status))
        if recipient.remote_mta is not None:
            fields.append(_field("Remote-MTA", f"dns; {_clean(recipient.remote_mta, utf8)}"))
        if recipient.diagnostic is not None:
            fields.append(_field("Diagnostic-Code", *_diagnostic(recipient.diagnostic, utf8)))
        if recipient.last_attempt is not None:
            fields.append(_field("Last-Attempt-Date", _date(recipient.last_attempt)))
        if recipient.action == "delayed" and recipient.will_retry_until is not None:
            fields.append(_field("Will-Retry-Until", _date(recipient.will_retry_until)))
        groups.append("".join(fields))
    return groups


_INTRO = {
    "failed": "could not be delivered to the recipients below, and the mail"
    " system has stopped trying.",
    "delayed": "has not been delivered yet to the recipients below. The mail"
    " system goes on trying until the time given for each, so you do not"
    " need to send the message again. You will hear again only if it"
    " fails for good.",
    "delivered": "was delivered to the mailboxes of the recipients below.",
    "relayed": "was passed on to the mail systems of the recipients below."
    " Those systems do not send delivery reports, so this is the last"
    " report about these recipients.",
}

#: RFC 6533 §3 EmbeddedUnicodeChar, as a utf-8 ORCPT may carry it.
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


def _wrap(text: str, width: int = 72) -> list[str]:
    """*text* in lines of at most *width* characters where the words allow."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _notice(report: DeliveryReport, full: bool) -> str:
    """
    The ``text/plain`` part: what happened, for people. CRLF-terminated,
    and UTF-8 wherever an address or a reply is (the part is labelled so).
    """
    envelope = report.envelope
    if report.to == envelope.sender:
        subject = "Your message"
    elif isinstance(envelope.sender, Mailbox):
        subject = f"The message from <{_clean(envelope.sender.render(), True)}>"
    else:
        subject = "The message from the null sender <>"
    lines = [
        f"This is the mail system at {report.reporting_mta}.",
        "",
        *_wrap(f"This is a report about {subject[0].lower()}{subject[1:]} that arrived here"),
        f"on {_date(envelope.received_at)} with queue id {_clean(report.queue_id, False)}.",
    ]
    for action in report._actions():
        lines.append("")
        lines.extend(_wrap(f"{subject} {_INTRO[action]}"))
        for recipient in report.recipients:
            if recipient.action == action:
                lines.append("")
                lines.extend(_recipient_notice(recipient))
    lines.append("")
    if full:
        lines.append("The message is attached below this report.")
    else:
        lines.append("The header section of the message is attached below this report.")
    return "".join(line + "\r\n" for line in lines)


def _readable_original(value: str) -> str:
    """The address of an ORCPT as stored, its RFC 6533 escapes undone."""
    kind, semicolon, address = value.partition(";")
    address = address.strip() if semicolon else value.strip()
    if kind.strip().lower() == "utf-8":

        def unescape(match: re.Match[str]) -> str:
            point = int(match.group(1), 16)
            return chr(point) if point <= 0x10FFFF else match.group()

        address = _EMBEDDED.sub(unescape, address)
    return address


def _recipient_notice(recipient: RecipientReport) -> list[str]:
    """The lines of the notice about one recipient."""
    address = recipient.final_recipient.render()
    lines = [f"<{_clean(address, True)}>: {recipient.action} (status {recipient.status})"]
    if recipient.original is not None:
        original = _readable_original(recipient.original)
        if original.lower() != address.lower():
            lines.append(f"    Originally addressed to: <{_clean(original, True)}>")
    if recipient.remote_mta is not None:
        lines.append(f"    Remote server: {_clean(recipient.remote_mta, True)}")
    if recipient.diagnostic is not None:
        who = "It" if recipient.remote_mta is not None else "The mail system"
        lines.append(f"    {who} said:")
        for line in recipient.diagnostic.render().decode("utf-8").split("\r\n")[:-1]:
            # Quoted as given, but no line of the part longer than RFC 5322
            # §2.1.1 allows.
            lines.extend(f"        {piece}" for piece in _pieces(_clean(line, True)))
    if recipient.last_attempt is not None:
        lines.append(f"    Last attempt: {_date(recipient.last_attempt)}")
    if recipient.action == "delayed" and recipient.will_retry_until is not None:
        lines.append(f"    Will be retried until: {_date(recipient.will_retry_until)}")
    return lines
