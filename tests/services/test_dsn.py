"""
The delivery status notification composer: reports rendered, read back
with the :mod:`email` package, field by field (RFC 3464, RFC 3461, RFC 6533,
RFC 3834, RFC 5322).
"""

from __future__ import annotations

import ast
import email
import email.policy
import email.utils
import importlib.util
import pathlib
import re
from email.message import EmailMessage
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailframe.address import NULL_PATH, Mailbox
from mailframe.envelope import BodyType, Envelope
from mailframe.reply import Reply
from mailframe.services import dsn
from mailframe.services.dsn import (
    CHUNK_SIZE,
    DeliveryReport,
    RecipientReport,
    dsn_body_type,
    render_dsn,
)

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "docs" / "_examples"
BOUNDARY = "01M8M1Q861G8AH1BVJ.8f3a9c27e1d4b605/mx.example.com"
SENDER = Mailbox("alice", "example.com")
BOB = Mailbox("bob", "example.org")
CAROL = Mailbox("carol", "example.net")
DAVE = Mailbox("dave", "example.com")
RECEIVED = 1_795_969_228.0
CREATED = RECEIVED + 4 * 3600
ATTEMPT = RECEIVED + 3600
UNTIL = RECEIVED + 5 * 86400

ORIGINAL = (
    b"Received: from client.example.com (client.example.com [192.0.2.9])\r\n"
    b"\tby mx.example.com with ESMTPS id 01M8M1Q861G8AH1BVJ\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>, Carol <carol@example.net>\r\n"
    b"Subject: Lunch on Friday\r\n"
    b"Message-ID: <lunch.1@example.com>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
)
HEADERS = ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n\r\n"

FAILED = RecipientReport(
    final_recipient=BOB,
    action="failed",
    status="5.1.1",
    original="rfc822;bob@example.org",
    remote_mta="mx.example.org",
    diagnostic=Reply(550, "5.1.1", "<bob@example.org>: Recipient address rejected"),
    last_attempt=ATTEMPT,
)
DELAYED = RecipientReport(
    final_recipient=CAROL,
    action="delayed",
    status="4.4.1",
    diagnostic=Reply(451, "4.4.1", "connect to mx.example.net: Connection timed out"),
    last_attempt=ATTEMPT,
    will_retry_until=UNTIL,
)
DELIVERED = RecipientReport(
    final_recipient=DAVE,
    action="delivered",
    status="2.0.0",
    diagnostic=Reply(250, "2.0.0", "delivered to Maildir"),
    last_attempt=ATTEMPT,
)
RELAYED = RecipientReport(
    final_recipient=BOB,
    action="relayed",
    status="2.0.0",
    remote_mta="mx.example.org",
    diagnostic=Reply(250, "2.0.0", "Ok: queued as 4XkQ2d"),
    last_attempt=ATTEMPT,
)


def make_envelope(**changes: Any) -> Envelope:
    envelope = Envelope(
        sender=SENDER, recipients=(BOB, CAROL, DAVE), received_at=RECEIVED, envid="QQ314159"
    )
    return attrs.evolve(envelope, **changes)


def make_report(*recipients: RecipientReport, **changes: Any) -> DeliveryReport:
    report = DeliveryReport(
        reporting_mta="mx.example.com",
        queue_id="01M8M1Q861G8AH1BVJ",
        envelope=make_envelope(),
        recipients=recipients or (FAILED,),
        created_at=CREATED,
        message_id="<01M8M1Q861G8AH1BVJ.5e1f@mx.example.com>",
        to=SENDER,
    )
    return attrs.evolve(report, **changes)


def render(
    report: DeliveryReport,
    original: bytes = ORIGINAL,
    full: bool = True,
    boundary: str = BOUNDARY,
) -> bytes:
    return b"".join(render_dsn(report, original, full, boundary))


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def subparts(message: EmailMessage) -> list[EmailMessage]:
    """The parts of a multipart, or the groups of a delivery-status part."""
    payload = message.get_payload()
    assert isinstance(payload, list)
    found = []
    for part in payload:
        assert isinstance(part, EmailMessage)
        found.append(part)
    return found


def report_groups(data: bytes) -> list[EmailMessage]:
    """The groups of fields of the report part, as :mod:`email` reads them."""
    return subparts(subparts(parse(data))[1])


def parts(data: bytes, boundary: str = BOUNDARY) -> list[tuple[bytes, bytes]]:
    """Each body part of *data*, raw: its header section and its content."""
    delimiter = b"\r\n--" + boundary.encode()
    pieces = data.split(delimiter)
    assert pieces[-1] == b"--\r\n", "the close delimiter ends the message"
    found = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n")
        header, _, content = piece[2:].partition(b"\r\n\r\n")
        found.append((header + b"\r\n", content))
    return found


def fields(block: bytes) -> dict[str, str]:
    """The fields of one group of a delivery-status part, unfolded."""
    text = re.sub(r"\r\n(?=[ \t])", "", block.decode("utf-8"))
    result = {}
    for line in text.split("\r\n"):
        if line:
            name, _, value = line.partition(": ")
            assert name not in result
            result[name] = value
    return result


def status_groups(data: bytes, boundary: str = BOUNDARY) -> list[dict[str, str]]:
    """The groups of fields of the report part, read without :mod:`email`."""
    _, content = parts(data, boundary)[1]
    assert content.endswith(b"\r\n")
    return [fields(group + b"\r\n") for group in content[:-2].split(b"\r\n\r\n")]


# The message and its parts.


def test_multipart_report_structure() -> None:
    message = parse(render(make_report()))
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message.get_boundary() == BOUNDARY
    notice, status, original = message.iter_parts()
    assert notice.get_content_type() == "text/plain"
    assert notice.get_content_charset() == "utf-8"
    assert status.get_content_type() == "message/delivery-status"
    assert original.get_content_type() == "message/rfc822"
    assert len(list(message.iter_parts())) == 3


def test_header_fields() -> None:
    data = render(make_report())
    assert b'\r\nFrom: "Mail Delivery System" <MAILER-DAEMON@mx.example.com>\r\n' in (
        b"\r\n" + data
    )
    message = parse(data)
    [sender] = message["From"].addresses
    assert sender.display_name == "Mail Delivery System"
    assert sender.addr_spec == "MAILER-DAEMON@mx.example.com"
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Date"].datetime.timestamp() == CREATED
    assert message["Message-ID"] == "<01M8M1Q861G8AH1BVJ.5e1f@mx.example.com>"
    # RFC 3834 §5.
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    for name in ("From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted"):
        assert len(message.get_all(name, [])) == 1


def test_date_is_rfc5322_in_utc() -> None:
    data = render(make_report())
    [date] = re.findall(rb"^Date: (.*)\r$", data, re.MULTILINE)
    assert date == b"Sun, 29 Nov 2026 20:20:28 +0000"
    assert email.utils.parsedate_to_datetime(date.decode()).timestamp() == CREATED


@pytest.mark.parametrize(
    ("recipients", "subject"),
    [
        ((FAILED,), "Undelivered Mail Returned to Sender"),
        ((DELAYED,), "Delayed Mail (still being retried)"),
        ((DELIVERED,), "Successful Mail Delivery Report"),
        ((RELAYED,), "Successful Mail Delivery Report"),
        ((DELIVERED, RELAYED), "Successful Mail Delivery Report"),
        ((DELAYED, DELIVERED), "Delayed Mail (still being retried)"),
        ((DELIVERED, DELAYED, FAILED), "Undelivered Mail Returned to Sender"),
    ],
)
def test_subject_names_the_gravest_action(
    recipients: tuple[RecipientReport, ...], subject: str
) -> None:
    report = make_report(*recipients)
    assert report.subject == subject
    assert parse(render(report))["Subject"] == subject


def test_per_message_fields() -> None:
    message = parse(render(make_report(FAILED, DELAYED)))
    per_message, *per_recipient = subparts(subparts(message)[1])
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["Reporting-MTA"] == "dns; mx.example.com"
    assert per_message["X-Mailframe-Queue-ID"] == "01M8M1Q861G8AH1BVJ"
    assert per_message["X-Mailframe-Sender"] == "rfc822; alice@example.com"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == (
        RECEIVED
    )
    assert len(per_recipient) == 2


def test_per_message_fields_in_rfc3464_order() -> None:
    per_message = status_groups(render(make_report()))[0]
    assert list(per_message) == [
        "Original-Envelope-Id",
        "Reporting-MTA",
        "X-Mailframe-Queue-ID",
        "X-Mailframe-Sender",
        "Arrival-Date",
    ]


def test_no_envelope_id_without_envid() -> None:
    report = make_report(envelope=make_envelope(envid=None))
    per_message = report_groups(render(report))[0]
    assert "Original-Envelope-Id" not in per_message
    assert per_message["Reporting-MTA"] == "dns; mx.example.com"


def test_envelope_id_is_kept_exactly() -> None:
    # RFC 3464 §2.2.1: case and spelling preserved; the decoded value, not
    # its xtext (RFC 3461 §4.4).
    report = make_report(envelope=make_envelope(envid="Ab+c=D/42"))
    assert status_groups(render(report))[0]["Original-Envelope-Id"] == "Ab+c=D/42"


def test_envelope_id_cannot_inject_fields() -> None:
    report = make_report(envelope=make_envelope(envid="x\r\nBcc: eve@example.net"))
    data = render(report)
    assert b"\r\nBcc:" not in data
    assert status_groups(data)[0]["Original-Envelope-Id"] == (
        "x\\x{D}\\x{A}Bcc: eve@example.net"
    )


def test_controls_are_escaped_in_utf8_reports() -> None:
    reply = Reply(550, "5.0.0", "bell\x07 and next line\x85 end")
    report = utf8_report()
    report = attrs.evolve(report, recipients=(attrs.evolve(FAILED, diagnostic=reply),))
    block = status_groups(render(report))[1]
    assert block["Diagnostic-Code"] == "smtp; 550 5.0.0 bell\\x{7} and next line\\x{85} end"


def test_no_sender_field_for_the_null_sender() -> None:
    report = make_report(envelope=make_envelope(sender=NULL_PATH), to=Mailbox("postmaster", ""))
    per_message = status_groups(render(report))[0]
    assert "X-Mailframe-Sender" not in per_message


def test_failed_recipient_fields() -> None:
    message = parse(render(make_report(FAILED)))
    [block] = subparts(subparts(message)[1])[1:]
    assert block["Original-Recipient"] == "rfc822; bob@example.org"
    assert block["Final-Recipient"] == "rfc822; bob@example.org"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; mx.example.org"
    assert block["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected"
    )
    assert email.utils.parsedate_to_datetime(block["Last-Attempt-Date"]).timestamp() == ATTEMPT
    assert "Will-Retry-Until" not in block


def test_per_recipient_fields_in_rfc3464_order() -> None:
    block = status_groups(render(make_report(FAILED)))[1]
    assert list(block) == [
        "Original-Recipient",
        "Final-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Diagnostic-Code",
        "Last-Attempt-Date",
    ]


def test_delayed_recipient_fields() -> None:
    message = parse(render(make_report(DELAYED)))
    [block] = subparts(subparts(message)[1])[1:]
    assert block["Final-Recipient"] == "rfc822; carol@example.net"
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.4.1"
    assert "Original-Recipient" not in block
    assert "Remote-MTA" not in block
    assert email.utils.parsedate_to_datetime(block["Will-Retry-Until"]).timestamp() == UNTIL


def test_will_retry_until_only_for_delayed() -> None:
    # RFC 3464 §2.3.9: the field is for "delayed" reports.
    failed = attrs.evolve(FAILED, will_retry_until=UNTIL)
    block = status_groups(render(make_report(failed)))[1]
    assert "Will-Retry-Until" not in block


def test_delivered_and_relayed_recipient_fields() -> None:
    message = parse(render(make_report(DELIVERED, RELAYED)))
    delivered, relayed = subparts(subparts(message)[1])[1:]
    assert delivered["Action"] == "delivered"
    assert delivered["Status"] == "2.0.0"
    assert delivered["Final-Recipient"] == "rfc822; dave@example.com"
    assert "Remote-MTA" not in delivered
    assert delivered["Diagnostic-Code"] == "smtp; 250 2.0.0 delivered to Maildir"
    assert relayed["Action"] == "relayed"
    assert relayed["Remote-MTA"] == "dns; mx.example.org"


def test_minimal_recipient_fields() -> None:
    bare = RecipientReport(BOB, "failed", "5.0.0")
    block = status_groups(render(make_report(bare)))[1]
    assert block == {"Final-Recipient": "rfc822; bob@example.org", "Action": "failed",
                     "Status": "5.0.0"}


def test_recipients_in_order() -> None:
    message = parse(render(make_report(DELIVERED, FAILED, DELAYED)))
    blocks = subparts(subparts(message)[1])[1:]
    assert [b["Action"] for b in blocks] == ["delivered", "failed", "delayed"]


def test_original_recipient_from_orcpt() -> None:
    expanded = attrs.evolve(
        FAILED, final_recipient=Mailbox("bob.smith", "example.org"),
        original="rfc822;bob@example.org",
    )
    block = status_groups(render(make_report(expanded)))[1]
    assert block["Original-Recipient"] == "rfc822; bob@example.org"
    assert block["Final-Recipient"] == "rfc822; bob.smith@example.org"


@pytest.mark.parametrize(
    ("stored", "written"),
    [
        ("rfc822;bob@example.org", "rfc822; bob@example.org"),
        ("RFC822; bob@example.org", "rfc822; bob@example.org"),
        ("bob@example.org", "rfc822; bob@example.org"),
        ("utf-8;d\\x{F6}rte@example.org", "utf-8; d\\x{F6}rte@example.org"),
        # Without SMTPUTF8 the report is ASCII: RFC 6533 §3 utf-8-addr-xtext.
        ("utf-8;d\u00f6rte@example.org", "utf-8; d\\x{F6}rte@example.org"),
        ("x400;/G=Bob/S=Smith/", "x400; /G=Bob/S=Smith/"),
    ],
)
def test_original_recipient_forms(stored: str, written: str) -> None:
    report = make_report(attrs.evolve(FAILED, original=stored))
    assert status_groups(render(report))[1]["Original-Recipient"] == written


def test_multi_line_diagnostic_is_folded() -> None:
    reply = Reply(550, "5.1.1", (
        "The email account that you tried to reach does not exist. Please try",
        "double-checking the recipient's email address for typos or",
        "unnecessary spaces.",
    ))
    data = render(make_report(attrs.evolve(FAILED, diagnostic=reply)))
    raw = parts(data)[1][1].decode()
    start = raw.index("Diagnostic-Code:")
    lines = raw[start:].split("\r\n")
    assert lines[0] == (
        "Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach"
    )
    assert lines[1] == " does not exist. Please try"
    # Each line of the reply begins a line of the field.
    assert " 550-5.1.1 double-checking the recipient's email address for typos or" in lines
    assert " 550 5.1.1 unnecessary spaces." in lines
    block = report_groups(data)[1]
    assert block["Diagnostic-Code"] == (
        "smtp; 550-5.1.1 The email account that you tried to reach does not exist."
        " Please try 550-5.1.1 double-checking the recipient's email address for"
        " typos or 550 5.1.1 unnecessary spaces."
    )


def test_long_lines_are_folded() -> None:
    reply = Reply(550, "5.7.1", " ".join(["word"] * 300) + " " + "x" * 1500)
    data = render(make_report(attrs.evolve(FAILED, diagnostic=reply)))
    _, content = parts(data)[1]
    for line in content.split(b"\r\n"):
        assert len(line) <= 998
        if b"xxx" not in line:
            assert len(line) <= 78


@pytest.mark.parametrize("smtputf8", [False, True])
def test_no_line_is_too_long(smtputf8: bool) -> None:
    # RFC 5322 §2.1.1: 998 octets, in the report part and in the notice,
    # however long a word of the reply is, in whatever script.
    reply = Reply(550, "5.7.1", ("\u20ac" * 2000, "y" * 3000))
    report = make_report(
        attrs.evolve(FAILED, diagnostic=reply), envelope=make_envelope(smtputf8=smtputf8)
    )
    data = render(report, HEADERS, full=False)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    parse(data)


# The notice for people.


def notice_text(data: bytes) -> str:
    notice = subparts(parse(data))[0]
    content = notice.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def test_notice_explains_each_recipient() -> None:
    text = notice_text(render(make_report(FAILED, DELAYED, DELIVERED, RELAYED)))
    assert text.startswith("This is the mail system at mx.example.com.\n")
    assert "This is a report about your message that arrived here\non Sun, 29 Nov 2026" in text
    assert "could not be delivered" in text
    assert "<bob@example.org>: failed (status 5.1.1)" in text
    assert "Remote server: mx.example.org" in text
    assert "550 5.1.1 <bob@example.org>: Recipient address rejected" in text
    assert "<carol@example.net>: delayed (status 4.4.1)" in text
    assert "Will be retried until: Fri, 04 Dec 2026 16:20:28 +0000" in text
    assert "you do not need to send the message again" in " ".join(text.split())
    assert "<dave@example.com>: delivered (status 2.0.0)" in text
    assert "do not send delivery reports" in text
    assert text.index("failed (status") < text.index("delayed (status")
    assert text.index("delayed (status") < text.index("delivered (status")
    assert text.rstrip().endswith("The message is attached below this report.")


def test_notice_lines_are_short() -> None:
    text = notice_text(render(make_report(FAILED, DELAYED)))
    for line in text.splitlines():
        if not line.startswith("        "):  # reply lines are quoted as given
            assert len(line) <= 72, line


def test_notice_for_headers_only() -> None:
    text = notice_text(render(make_report(), HEADERS, full=False))
    assert "The header section of the message is attached" in text


def test_notice_names_the_sender_to_someone_else() -> None:
    report = make_report(to=Mailbox("postmaster", "example.com"))
    text = notice_text(render(report))
    assert "The message from <alice@example.com> could not be delivered" in text
    assert "This is a report about the message from <alice@example.com>" in text
    bounce = make_report(envelope=make_envelope(sender=NULL_PATH), to=Mailbox("postmaster", ""))
    assert "null sender" in notice_text(render(bounce))


def test_notice_shows_original_recipient_when_different() -> None:
    expanded = attrs.evolve(FAILED, final_recipient=Mailbox("bob.smith", "example.org"))
    text = notice_text(render(make_report(expanded)))
    assert "Originally addressed to: <bob@example.org>" in text
    assert "Originally addressed to" not in notice_text(render(make_report(FAILED)))


# The original.


def test_full_original_is_attached_as_it_was() -> None:
    data = render(make_report(), ORIGINAL, full=True)
    header, content = parts(data)[2]
    assert b"Content-Type: message/rfc822\r\n" in header
    assert content == ORIGINAL
    attached = subparts(subparts(parse(data))[2])[0]
    assert attached["Subject"] == "Lunch on Friday"
    assert attached["Message-ID"] == "<lunch.1@example.com>"
    assert attached.get_content() == "Shall we meet at noon?\r\n"


def test_headers_only() -> None:
    data = render(make_report(), HEADERS, full=False)
    header, content = parts(data)[2]
    assert b"Content-Type: text/rfc822-headers\r\n" in header
    assert content == HEADERS
    part = subparts(parse(data))[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert "Subject: Lunch on Friday" in part.get_content()
    assert b"Shall we meet" not in data


def test_original_without_final_line_end_gets_one() -> None:
    data = render(make_report(), b"Subject: x\r\n\r\nno end")
    assert parts(data)[2][1] == b"Subject: x\r\n\r\nno end\r\n"


def test_empty_original() -> None:
    data = render(make_report(), b"", full=False)
    assert parts(data)[2][1] == b""
    parse(data)


def test_line_ends_of_the_original_become_crlf() -> None:
    original = b"Subject: mixed\n\rX: y\r\n\r\nbare LF\nbare CR\rCRLF\r\n"
    data = render(make_report(), original)
    assert parts(data)[2][1] == (
        b"Subject: mixed\r\n\r\nX: y\r\n\r\nbare LF\r\nbare CR\r\nCRLF\r\n"
    )


def test_crlf_split_between_slices_stays_one_line_end() -> None:
    original = b"Subject: big\r\n\r\n" + b"a" * (CHUNK_SIZE - 17) + b"\r\nend\r\n"
    assert original[CHUNK_SIZE - 1 : CHUNK_SIZE + 1] == b"\r\n"
    data = render(make_report(), original)
    assert parts(data)[2][1] == original


def test_eight_bit_original() -> None:
    original = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode() + b"\xff\r\n"
    data = render(make_report(), original)
    message = parse(data)
    assert message["Content-Transfer-Encoding"] == "8bit"
    header, content = parts(data)[2]
    assert b"Content-Transfer-Encoding: 8bit\r\n" in header
    assert content == original
    assert dsn_body_type(make_report(), original, True) is BodyType.EIGHT_BIT_MIME


def test_seven_bit_report() -> None:
    data = render(make_report())
    assert data.isascii()
    assert b"Content-Transfer-Encoding" not in data
    assert dsn_body_type(make_report(), ORIGINAL, True) is BodyType.SEVEN_BIT


def test_utf8_reply_text_makes_the_notice_8bit() -> None:
    reply = Reply(550, "5.1.1", "Unbekannter Empf\u00e4nger")
    report = make_report(attrs.evolve(FAILED, diagnostic=reply))
    data = render(report)
    message = parse(data)
    assert subparts(message)[0]["Content-Transfer-Encoding"] == "8bit"
    assert "Empf\u00e4nger" in notice_text(data)
    # The report part of a message without SMTPUTF8 stays ASCII.
    assert parts(data)[1][1].isascii()
    assert status_groups(data)[1]["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 Unbekannter Empf\\x{E4}nger"
    )
    assert dsn_body_type(report, ORIGINAL, True) is BodyType.EIGHT_BIT_MIME


# SMTPUTF8 (RFC 6533).

DOERTE = Mailbox("d\u00f6rte", "b\u00fccher.example")
ALVARO = Mailbox("\u00e1lvaro", "example.com")


def utf8_report() -> DeliveryReport:
    failed = attrs.evolve(
        FAILED, final_recipient=DOERTE, original="utf-8;d\\x{F6}rte@b\\x{FC}cher.example",
        diagnostic=Reply(550, "5.1.1", "Unbekannter Empf\u00e4nger"),
    )
    envelope = make_envelope(sender=ALVARO, recipients=(DOERTE,), smtputf8=True)
    return make_report(failed, envelope=envelope, to=ALVARO)


UTF8_ORIGINAL = (
    "From: \u00c1lvaro <\u00e1lvaro@example.com>\r\n"
    "To: d\u00f6rte@b\u00fccher.example\r\n"
    "Subject: Gr\u00fc\u00dfe\r\n"
    "\r\n"
    "Hallo!\r\n"
).encode()


def test_smtputf8_full_forms() -> None:
    report = utf8_report()
    assert report.smtputf8
    data = render(report, UTF8_ORIGINAL, full=True)
    message = parse(data)
    notice, status, original = message.iter_parts()
    assert message.get_param("report-type") == "delivery-status"
    assert notice.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/global-delivery-status"
    assert original.get_content_type() == "message/global"
    assert parts(data)[2][1] == UTF8_ORIGINAL
    # RFC 6532: the header is UTF-8.
    assert "To: \u00e1lvaro@example.com\r\n".encode() in data
    assert message["To"] == "\u00e1lvaro@example.com"


def test_smtputf8_headers_only() -> None:
    headers = UTF8_ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    data = render(utf8_report(), headers, full=False)
    original = subparts(parse(data))[2]
    assert original.get_content_type() == "message/global-headers"
    assert parts(data)[2][1] == headers


def test_smtputf8_recipient_fields() -> None:
    data = render(utf8_report(), UTF8_ORIGINAL)
    per_message, block = status_groups(data)
    assert per_message["X-Mailframe-Sender"] == "utf-8; \u00e1lvaro@example.com"
    # RFC 6533 §3: the utf-8 address type, in UTF-8.
    assert block["Final-Recipient"] == "utf-8; d\u00f6rte@b\u00fccher.example"
    assert block["Original-Recipient"] == "utf-8; d\\x{F6}rte@b\\x{FC}cher.example"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 Unbekannter Empf\u00e4nger"
    assert b"message/global-delivery-status\r\nContent-Transfer-Encoding: 8bit\r\n" in data


def test_smtputf8_ascii_addresses_keep_rfc822() -> None:
    report = make_report(envelope=make_envelope(smtputf8=True))
    block = status_groups(render(report))[1]
    assert block["Final-Recipient"] == "rfc822; bob@example.org"


def test_non_ascii_recipient_without_smtputf8_is_xtext() -> None:
    # A router may expand an ASCII recipient into a non-ASCII one: the
    # report stays ASCII, with RFC 6533 §3 utf-8-addr-xtext.
    report = make_report(attrs.evolve(FAILED, final_recipient=DOERTE))
    assert not report.smtputf8
    data = render(report)
    assert subparts(parse(data))[1].get_content_type() == "message/delivery-status"
    block = status_groups(data)[1]
    assert block["Final-Recipient"] == "utf-8; d\\x{F6}rte@b\\x{FC}cher.example"
    assert parts(data)[1][1].isascii()


def test_xtext_escapes_specials() -> None:
    odd = Mailbox("a+b=c\\d \u00e9", "example.org")
    report = make_report(attrs.evolve(FAILED, final_recipient=odd))
    block = status_groups(render(report))[1]
    assert block["Final-Recipient"] == (
        "utf-8; \"a\\x{2B}b\\x{3D}c\\x{5C}\\x{5C}d\\x{20}\\x{E9}\"@example.org"
    )


def test_non_ascii_to_takes_the_utf8_forms() -> None:
    report = make_report(to=ALVARO)
    assert report.smtputf8
    data = render(report)
    assert subparts(parse(data))[1].get_content_type() == "message/global-delivery-status"


# Line ends and chunks.


def test_crlf_everywhere() -> None:
    original = b"Subject: x\n\nbare\rline ends\n"
    for report in (make_report(FAILED, DELAYED, DELIVERED, RELAYED), utf8_report()):
        data = render(report, original)
        assert data.endswith(b"\r\n")
        stripped = data.replace(b"\r\n", b"")
        assert b"\r" not in stripped
        assert b"\n" not in stripped


def test_chunks_are_bounded() -> None:
    # Bare line ends grow when made CRLF: the chunks still stay bounded.
    original = b"Subject: big\n\n" + b"line\n" * (CHUNK_SIZE // 2)
    many = tuple(
        attrs.evolve(FAILED, final_recipient=Mailbox(f"user{n}", "example.org"))
        for n in range(2000)
    )
    chunks = list(render_dsn(make_report(*many), original, True, BOUNDARY))
    assert max(len(chunk) for chunk in chunks) <= CHUNK_SIZE
    assert len(chunks) > 4
    data = b"".join(chunks)
    assert len(status_groups(data)) == 2001
    assert parts(data)[2][1] == original.replace(b"\n", b"\r\n")


def test_original_is_yielded_apart() -> None:
    original = b"Subject: apart\r\n\r\n" + b"x" * (CHUNK_SIZE + 10) + b"\r\n"
    chunks = list(render_dsn(make_report(), original, True, BOUNDARY))
    first = next(index for index, chunk in enumerate(chunks) if chunk.startswith(b"Subject:"))
    # Everything before the original is in chunks of its own...
    assert b"Subject: apart" not in b"".join(chunks[:first])
    # ... the original follows in slices, and the close delimiter after it.
    assert b"".join(chunks[first:-1]) == original
    assert chunks[-1] == b"\r\n--" + BOUNDARY.encode() + b"--\r\n"


# Boundaries and validation.


def test_boundary_in_the_original_is_refused() -> None:
    original = ORIGINAL + b"--" + BOUNDARY.encode() + b"\r\n"
    # At once, before any chunk is asked for: the caller has written nothing.
    with pytest.raises(ValueError, match="occurs"):
        render_dsn(make_report(), original, True, BOUNDARY)


def test_boundary_in_the_report_is_refused() -> None:
    reply = Reply(550, "5.0.0", f"--{BOUNDARY}")
    with pytest.raises(ValueError, match="occurs"):
        render_dsn(make_report(attrs.evolve(FAILED, diagnostic=reply)), ORIGINAL, True, BOUNDARY)


@pytest.mark.parametrize("boundary", ["", "a" * 71, "has space", "quote\"", "caf\u00e9"])
def test_malformed_boundary_is_refused(boundary: str) -> None:
    with pytest.raises(ValueError, match="boundary"):
        render(make_report(), boundary=boundary)


def test_longest_boundary() -> None:
    boundary = "b" * 70
    assert parse(render(make_report(), boundary=boundary)).get_boundary() == boundary


def test_recipient_report_is_validated() -> None:
    with pytest.raises(ValueError, match="action"):
        RecipientReport(BOB, "bounced", "5.0.0")
    with pytest.raises(ValueError, match="status"):
        RecipientReport(BOB, "failed", "550")
    with pytest.raises(ValueError, match="status"):
        RecipientReport(BOB, "failed", "6.0.0")


def test_delivery_report_is_validated() -> None:
    with pytest.raises(ValueError, match="at least one"):
        attrs.evolve(make_report(), recipients=())
    with pytest.raises(ValueError, match="message id"):
        attrs.evolve(make_report(), message_id="no-brackets@example.com")
    for name in ("mx example", "mx.b\u00fccher.example", "mx>", ""):
        with pytest.raises(ValueError, match="reporting MTA"):
            attrs.evolve(make_report(), reporting_mta=name)
    attrs.evolve(make_report(), reporting_mta="mx.xn--bcher-kva.example")


def test_guide_samples_are_current() -> None:
    """The sample notifications in the bounces guide are what the composer writes."""
    spec = importlib.util.spec_from_file_location("sample_dsn", EXAMPLES / "sample_dsn.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, make in module.SAMPLES.items():
        data = make()
        parse(data)
        shown = (EXAMPLES / name).read_bytes()
        assert shown == data.replace(b"\r\n", b"\n"), (
            f"{name} is stale: run python docs/_examples/sample_dsn.py"
        )


def test_module_is_pure() -> None:
    """Values in, bytes out: no reactor, no Twisted, no zope."""
    tree = ast.parse(pathlib.Path(dsn.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {name for name in imported if name.split(".")[0] in ("twisted", "zope")}


# Properties.

_lines = st.lists(
    st.binary(max_size=80).map(lambda line: line.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=30,
)


@given(_lines, st.booleans())
def test_any_crlf_original_survives(lines: list[bytes], full: bool) -> None:
    original = b"".join(line + b"\r\n" for line in lines)
    data = render(make_report(), original, full=full)
    assert parts(data)[2][1] == original
    stripped = data.replace(b"\r\n", b"")
    assert b"\r" not in stripped and b"\n" not in stripped


@given(st.binary(max_size=300))
def test_any_original_comes_back_with_crlf(original: bytes) -> None:
    data = render(make_report(), original)
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", original)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert parts(data)[2][1] == expected


_reply_text = st.lists(
    st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=120), min_size=1,
    max_size=4,
)


@given(_reply_text, st.booleans())
def test_any_diagnostic_reads_back(text: list[str], smtputf8: bool) -> None:
    reply = Reply(550, "5.0.0", tuple(text))
    report = make_report(
        attrs.evolve(FAILED, diagnostic=reply), envelope=make_envelope(smtputf8=smtputf8)
    )
    data = render(report)
    lines = reply.render().decode().split("\r\n")[:-1]
    expected = "smtp; " + " ".join(lines)
    if not smtputf8:
        expected = "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in expected)
    assert status_groups(data)[1]["Diagnostic-Code"] == expected
    parse(data)
