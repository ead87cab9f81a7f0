"""
The JSON forms of envelopes and queue entries: round trips, and strict
refusal of anything damaged.
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
    BodyType,
    ClientInfo,
    EntryState,
    Envelope,
    QueueEntry,
    RecipientState,
)
from mailframe.stores._serialize import (
    CorruptEntryError,
    entry_from_json,
    entry_to_json,
    envelope_from_dict,
    envelope_to_dict,
)
from tests.core.strategies import mailboxes

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
)

entries = st.builds(
    QueueEntry,
    queue_id=st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=20),
    envelope=envelopes,
    state=st.sampled_from(EntryState),
    recipients=st.lists(st.tuples(mailboxes, st.sampled_from(RecipientState)), max_size=5).map(
        tuple
    ),
    attempts=st.integers(0, 10_000),
    next_attempt=times,
    reason=st.text(),
    size=st.integers(0, 2**53),
)


@given(envelopes)
def test_envelope_round_trip(envelope: Envelope) -> None:
    data = json.loads(json.dumps(envelope_to_dict(envelope)))
    assert envelope_from_dict(data) == envelope


@given(entries)
def test_entry_round_trip(entry: QueueEntry) -> None:
    data = entry_to_json(entry)
    assert entry_from_json(data) == entry
    assert entry_from_json(data, entry.queue_id) == entry


def sample() -> QueueEntry:
    rcpt = Mailbox("rcpt", "example.com")
    return QueueEntry(
        queue_id="01ABC",
        envelope=Envelope(Mailbox("sender", "example.org"), (rcpt,), received_at=12.5),
        state=EntryState.DEFERRED,
        recipients=((rcpt, RecipientState.PENDING),),
        attempts=2,
        next_attempt=1000.0,
        reason="451 4.4.1 later",
        size=42,
    )


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
    entry = attrs.evolve(sample(), envelope=envelope, recipients=((utf8, RecipientState.FAILED),))
    assert entry_from_json(entry_to_json(entry)) == entry


def mutate(path: tuple[str, ...], value: object) -> bytes:
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
        entry_to_json(sample())[:-20],
        mutate(("format",), 2),
        mutate(("format",), KeyError),
        mutate(("queue_id",), 7),
        mutate(("state",), "lost"),
        mutate(("attempts",), True),
        mutate(("attempts",), -1),
        mutate(("attempts",), 1.5),
        mutate(("size",), None),
        mutate(("next_attempt",), "soon"),
        mutate(("next_attempt",), 1e400),
        mutate(("recipients",), [["rcpt@example.com"]]),
        mutate(("recipients",), [["rcpt@example.com", "gone"]]),
        mutate(("recipients",), [["not a mailbox", "pending"]]),
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
    assert entry_from_json(json.dumps(document).encode()) == sample()


def test_nan_is_never_written() -> None:
    entry = attrs.evolve(sample(), next_attempt=float("nan"))
    with pytest.raises(ValueError):
        entry_to_json(entry)
