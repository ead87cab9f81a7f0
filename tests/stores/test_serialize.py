"""
The JSON forms of envelopes and queue entries (format 2): round trips, and
strict refusal of anything damaged.
"""

from __future__ import annotations

import json
import string

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailframe.address import NULL_PATH, Mailbox
from mailframe.envelope import (
    NOTIFY_KEYWORDS,
    BodyType,
    ClientInfo,
    DSNOptions,
    EntryState,
    Envelope,
    QueuedRecipient,
    QueueEntry,
    RecipientState,
)
from mailframe.reply import Reply
from mailframe.stores._serialize import (
    FORMAT_VERSION,
    CorruptEntryError,
    entry_from_json,
    entry_to_json,
    envelope_from_dict,
    envelope_to_dict,
)
from tests.core.strategies import mailboxes, replies

times = st.floats(allow_nan=False, allow_infinity=False)
optional_text = st.none() | st.text()

client_infos = st.builds(
    ClientInfo,
    address=st.text(),
    port=st.integers(0, 65535),
    helo=st.text(),
    esmtp=st.booleans(),
    tls=optional_text,
    authenticated_as=optional_text,
    hostname=optional_text,
    listener=st.text(),
)

dsn_options = st.builds(
    DSNOptions,
    notify=st.none() | st.frozensets(st.sampled_from(sorted(NOTIFY_KEYWORDS)), min_size=1),
    orcpt=st.none() | st.text() | mailboxes.map(lambda m: f"rfc822;{m}"),
)

envelopes = st.builds(
    Envelope,
    sender=st.just(NULL_PATH) | mailboxes,
    recipients=st.lists(mailboxes, max_size=5).map(tuple),
    body=st.sampled_from(BodyType),
    size=st.none() | st.integers(0, 2**53),
    smtputf8=st.booleans(),
    client=client_infos,
    received_at=times,
    added_headers=st.lists(st.text(), max_size=3).map(tuple),
    auth=st.none() | st.just("<>") | mailboxes.map(str),
    ret=st.sampled_from([None, "FULL", "HDRS"]),
    envid=optional_text,
    dsn=st.lists(st.tuples(mailboxes, dsn_options), max_size=3).map(tuple),
)

#: Replies as the spool keeps them: as they go on the wire, which gives the
#: same reply back unless one without an enhanced status has text that
#: starts with one (such a reply renders to the same bytes either way).
wire_replies = replies().filter(lambda reply: Reply.parse(reply.render()) == reply)

queued_recipients = st.builds(
    QueuedRecipient,
    mailbox=mailboxes,
    state=st.sampled_from(RecipientState),
    attempts=st.integers(0, 10_000),
    reply=st.none() | wire_replies,
    remote=optional_text,
    next_attempt=times,
    report=st.sampled_from([None, "failed", "delivered", "relayed"]),
)

entries = st.builds(
    QueueEntry,
    queue_id=st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=20),
    envelope=envelopes,
    state=st.sampled_from(EntryState),
    recipients=st.lists(queued_recipients, max_size=5).map(tuple),
    attempts=st.integers(0, 10_000),
    next_attempt=times,
    reason=st.text(),
    size=st.integers(0, 2**53),
    warned=st.booleans(),
)


@given(envelopes)
def test_envelope_round_trip(envelope: Envelope) -> None:
    data = json.loads(json.dumps(envelope_to_dict(envelope)))
    assert envelope_from_dict(data) == envelope


@given(entries)
def test_entry_round_trip(entry: QueueEntry) -> None:
    data = entry_to_json(entry)
    # ASCII, one line, as the spool writes it into a file.
    data.decode("ascii")
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert entry_from_json(data) == entry
    assert entry_from_json(data, entry.queue_id) == entry


RCPT = Mailbox("rcpt", "example.com")
OTHER = Mailbox("other", "example.net")


def sample() -> QueueEntry:
    envelope = Envelope(
        Mailbox("sender", "example.org"),
        (RCPT, OTHER),
        received_at=12.5,
        ret="HDRS",
        envid="id+2B1",
        dsn=((RCPT, DSNOptions(frozenset({"SUCCESS", "DELAY"}), "rfc822;rcpt@example.com")),),
    )
    return QueueEntry(
        queue_id="01ABC",
        envelope=envelope,
        state=EntryState.DEFERRED,
        recipients=(
            QueuedRecipient(
                RCPT,
                RecipientState.PENDING,
                attempts=2,
                reply=Reply(451, "4.4.1", ("later", "really")),
                remote="mx.example.com",
                next_attempt=1000.0,
            ),
            QueuedRecipient(
                OTHER,
                RecipientState.BOUNCED,
                attempts=1,
                reply=Reply(550, "5.1.1", "no such user"),
                report="failed",
            ),
        ),
        attempts=2,
        next_attempt=1000.0,
        reason="451 4.4.1 later",
        size=42,
        warned=True,
    )


def test_the_format() -> None:
    """What the spool's files hold, field by field."""
    document = json.loads(entry_to_json(sample()))
    assert document["format"] == FORMAT_VERSION == 2
    assert document["warned"] is True
    assert document["recipients"] == [
        {
            "mailbox": "rcpt@example.com",
            "state": "pending",
            "attempts": 2,
            "reply": "451-4.4.1 later\r\n451 4.4.1 really\r\n",
            "remote": "mx.example.com",
            "next_attempt": 1000.0,
            "report": None,
        },
        {
            "mailbox": "other@example.net",
            "state": "bounced",
            "attempts": 1,
            "reply": "550 5.1.1 no such user\r\n",
            "remote": None,
            "next_attempt": 0.0,
            "report": "failed",
        },
    ]
    envelope = document["envelope"]
    assert (envelope["ret"], envelope["envid"]) == ("HDRS", "id+2B1")
    assert envelope["dsn"] == [
        {"recipient": "rcpt@example.com", "notify": ["DELAY", "SUCCESS"],
         "orcpt": "rfc822;rcpt@example.com"},
    ]
    assert entry_from_json(entry_to_json(sample())) == sample()


def test_notify_absent_and_never() -> None:
    """No NOTIFY (``None``) and NOTIFY=NEVER are different things."""
    dsn = (
        (RCPT, DSNOptions(None, "rfc822;x@example.com")),
        (OTHER, DSNOptions(frozenset({"NEVER"}))),
    )
    entry = attrs.evolve(sample(), envelope=attrs.evolve(sample().envelope, dsn=dsn))
    back = entry_from_json(entry_to_json(entry))
    assert back.envelope.dsn_options(RCPT).notify is None
    assert back.envelope.dsn_options(OTHER).notify == frozenset({"NEVER"})
    assert back == entry


def test_null_sender_is_empty_string() -> None:
    entry = attrs.evolve(sample(), envelope=attrs.evolve(sample().envelope, sender=NULL_PATH))
    document = json.loads(entry_to_json(entry))
    assert document["envelope"]["sender"] == ""
    assert entry_from_json(entry_to_json(entry)).envelope.sender is NULL_PATH


def test_surrogates_survive() -> None:
    # A HELO name decoded with surrogateescape holds lone surrogates.
    client = ClientInfo(helo="bad\udcff name")
    entry = attrs.evolve(sample(), envelope=attrs.evolve(sample().envelope, client=client))
    data = entry_to_json(entry)
    data.decode("ascii")
    assert entry_from_json(data) == entry


def test_quoted_and_utf8_mailboxes() -> None:
    odd = Mailbox('john "the" smith@home', "example.com")
    utf8 = Mailbox("jürgen", "bücher.example")
    envelope = Envelope(odd, (utf8, Mailbox("postmaster", "")), smtputf8=True)
    recipients = (QueuedRecipient(utf8, RecipientState.BOUNCED, report="failed"),)
    entry = attrs.evolve(sample(), envelope=envelope, recipients=recipients)
    assert entry_from_json(entry_to_json(entry)) == entry


def mutate(path: tuple[str | int, ...], value: object) -> bytes:
    document = json.loads(entry_to_json(sample()))
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[]",
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"format": 2, "queue_id": ' + b"[" * 100_000,
        entry_to_json(sample())[:-20],
        mutate(("format",), 1),
        mutate(("format",), 3),
        mutate(("format",), KeyError),
        mutate(("queue_id",), 7),
        mutate(("state",), "lost"),
        mutate(("state",), "queued"),
        mutate(("attempts",), True),
        mutate(("attempts",), -1),
        mutate(("attempts",), 1.5),
        mutate(("size",), None),
        mutate(("next_attempt",), "soon"),
        mutate(("next_attempt",), 1e400),
        mutate(("reason",), None),
        mutate(("warned",), KeyError),
        mutate(("warned",), 1),
        mutate(("recipients",), [["rcpt@example.com", "pending"]]),
        mutate(("recipients",), "rcpt@example.com"),
        mutate(("recipients", 0, "mailbox"), "not a mailbox"),
        mutate(("recipients", 0, "mailbox"), KeyError),
        mutate(("recipients", 0, "state"), "failed"),
        mutate(("recipients", 0, "attempts"), -1),
        mutate(("recipients", 0, "attempts"), None),
        mutate(("recipients", 0, "reply"), "999 what\r\n"),
        mutate(("recipients", 0, "reply"), "451 no line end"),
        mutate(("recipients", 0, "reply"), 451),
        mutate(("recipients", 0, "remote"), 1),
        mutate(("recipients", 0, "next_attempt"), None),
        mutate(("recipients", 1, "report"), "bounced"),
        mutate(("recipients", 1, "report"), True),
        mutate(("envelope",), None),
        mutate(("envelope", "sender"), "no-at-sign"),
        mutate(("envelope", "sender"), None),
        mutate(("envelope", "recipients"), "rcpt@example.com"),
        mutate(("envelope", "recipients"), [1]),
        mutate(("envelope", "body"), "9BIT"),
        mutate(("envelope", "size"), -5),
        mutate(("envelope", "size"), "big"),
        mutate(("envelope", "smtputf8"), 1),
        mutate(("envelope", "client"), []),
        mutate(("envelope", "client", "port"), "25"),
        mutate(("envelope", "client", "port"), False),
        mutate(("envelope", "client", "tls"), 1),
        mutate(("envelope", "client", "helo"), KeyError),
        mutate(("envelope", "received_at"), None),
        mutate(("envelope", "added_headers"), ["X: 1", 2]),
        mutate(("envelope", "ret"), "NONE"),
        mutate(("envelope", "ret"), "full"),
        mutate(("envelope", "envid"), 5),
        mutate(("envelope", "dsn"), KeyError),
        mutate(("envelope", "dsn"), {"recipient": "rcpt@example.com"}),
        mutate(("envelope", "dsn", 0, "recipient"), "nobody"),
        mutate(("envelope", "dsn", 0, "notify"), []),
        mutate(("envelope", "dsn", 0, "notify"), ["SOMETIMES"]),
        mutate(("envelope", "dsn", 0, "notify"), "SUCCESS"),
        mutate(("envelope", "dsn", 0, "orcpt"), ["rfc822;rcpt@example.com"]),
    ],
)
def test_damage_is_refused(data: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        entry_from_json(data)


def test_id_must_match_file_name() -> None:
    with pytest.raises(CorruptEntryError):
        entry_from_json(entry_to_json(sample()), "OTHER")


def test_unknown_keys_are_ignored() -> None:
    document = json.loads(entry_to_json(sample()))
    document["future"] = {"anything": 1}
    document["envelope"]["client"]["future"] = True
    document["recipients"][0]["future"] = []
    assert entry_from_json(json.dumps(document).encode()) == sample()


def test_nan_is_never_written() -> None:
    entry = attrs.evolve(sample(), next_attempt=float("nan"))
    with pytest.raises(ValueError):
        entry_to_json(entry)
