"""
JSON forms of envelopes and queue entries, as the spool writes them in its
``.env`` files.

Reading is strict: anything that is not exactly what :func:`entry_to_json`
writes raises :class:`CorruptEntryError`, so a damaged file is quarantined
instead of being half understood.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from mailframe.address import NULL_PATH, AddressError, Mailbox, ReversePath
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
from mailframe.reply import Reply, ReplyError

__all__ = [
    "FORMAT_VERSION",
    "CorruptEntryError",
    "entry_from_json",
    "entry_to_json",
    "envelope_from_dict",
    "envelope_to_dict",
]

#: The version written in every entry; readers refuse newer ones.
FORMAT_VERSION = 2

_T = TypeVar("_T")

# One encoder for every entry: json.dumps with options makes a new one per
# call. ASCII output escapes any lone surrogate (as a HELO name decoded
# with surrogateescape may hold), which UTF-8 could not encode.
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


class CorruptEntryError(ValueError):
    """A serialised envelope or entry cannot be read."""


def envelope_to_dict(envelope: Envelope) -> dict[str, Any]:
    """The JSON-ready form of *envelope*; mailboxes as RFC 5321 writes them."""
    client = envelope.client
    return {
        "sender": envelope.sender.render(),
        "recipients": [r.render() for r in envelope.recipients],
        "body": envelope.body.value,
        "size": envelope.size,
        "smtputf8": envelope.smtputf8,
        "client": {
            "address": client.address,
            "port": client.port,
            "helo": client.helo,
            "esmtp": client.esmtp,
            "tls": client.tls,
            "authenticated_as": client.authenticated_as,
            "hostname": client.hostname,
            "listener": client.listener,
        },
        "received_at": envelope.received_at,
        "added_headers": list(envelope.added_headers),
        "auth": envelope.auth,
        "ret": envelope.ret,
        "envid": envelope.envid,
        "dsn": [
            {
                "recipient": mailbox.render(),
                "notify": None if options.notify is None else sorted(options.notify),
                "orcpt": options.orcpt,
            }
            for mailbox, options in envelope.dsn
        ],
    }


def envelope_from_dict(data: object) -> Envelope:
    """The envelope that :func:`envelope_to_dict` made *data* from."""
    fields = _mapping(data, "envelope")
    client = _mapping(fields.get("client"), "client")
    sender_text = _get(fields, "sender", str)
    size = fields.get("size")
    if size is not None and (type(size) is not int or size < 0):
        raise CorruptEntryError(f"bad size {size!r}")
    try:
        body = BodyType(_get(fields, "body", str))
    except ValueError as e:
        raise CorruptEntryError(str(e)) from e
    try:
        return Envelope(
            sender=_reverse_path(sender_text),
            recipients=tuple(_mailbox(r) for r in _list(fields, "recipients", str)),
            body=body,
            size=size,
            smtputf8=_get(fields, "smtputf8", bool),
            client=ClientInfo(
                address=_get(client, "address", str),
                port=_get(client, "port", int),
                helo=_get(client, "helo", str),
                esmtp=_get(client, "esmtp", bool),
                tls=_optional(client, "tls"),
                authenticated_as=_optional(client, "authenticated_as"),
                hostname=_optional(client, "hostname"),
                listener=_get(client, "listener", str),
            ),
            received_at=_time(fields, "received_at"),
            added_headers=tuple(_list(fields, "added_headers", str)),
            auth=_optional(fields, "auth"),
            ret=_ret(_optional(fields, "ret")),
            envid=_optional(fields, "envid"),
            dsn=tuple(_dsn(item) for item in _list(fields, "dsn", dict)),
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, CorruptEntryError):
            raise
        raise CorruptEntryError(f"bad envelope: {e}") from e


def entry_to_json(entry: QueueEntry) -> bytes:
    """
    *entry* as JSON bytes: its envelope and its queue state (state, each
    recipient's state, attempts, next attempt, reason and size). Leases are
    not written: they do not outlive the process that took them.
    """
    document = {
        "format": FORMAT_VERSION,
        "queue_id": entry.queue_id,
        "envelope": envelope_to_dict(entry.envelope),
        "state": entry.state.value,
        "recipients": [_recipient_to_dict(r) for r in entry.recipients],
        "attempts": entry.attempts,
        "next_attempt": entry.next_attempt,
        "reason": entry.reason,
        "size": entry.size,
        "warned": entry.warned,
    }
    return _ENCODER.encode(document).encode("ascii") + b"\n"


def entry_from_json(data: bytes, queue_id: str | None = None) -> QueueEntry:
    """
    The entry that :func:`entry_to_json` wrote.

    :param queue_id: when given, the entry must carry this id (the spool
        passes the file's name).
    :raises CorruptEntryError: if *data* is not such an entry.
    """
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        # RecursionError: arrays or objects nested too deep to decode.
        raise CorruptEntryError(f"not JSON: {e}") from e
    fields = _mapping(document, "entry")
    version = fields.get("format")
    if version != FORMAT_VERSION:
        raise CorruptEntryError(f"unknown format {version!r}")
    found_id = _get(fields, "queue_id", str)
    if queue_id is not None and found_id != queue_id:
        raise CorruptEntryError(f"entry {found_id!r} found under the id {queue_id!r}")
    recipients = [_recipient_from_dict(r) for r in _list(fields, "recipients", dict)]
    attempts = _get(fields, "attempts", int)
    size = _get(fields, "size", int)
    if attempts < 0 or size < 0:
        raise CorruptEntryError("negative attempts or size")
    return QueueEntry(
        queue_id=found_id,
        envelope=envelope_from_dict(fields.get("envelope")),
        state=_enum(EntryState, _get(fields, "state", str)),
        recipients=tuple(recipients),
        attempts=attempts,
        next_attempt=_time(fields, "next_attempt"),
        reason=_get(fields, "reason", str),
        size=size,
        warned=_get(fields, "warned", bool),
    )


def _recipient_to_dict(recipient: QueuedRecipient) -> dict[str, Any]:
    reply = recipient.reply
    return {
        "mailbox": recipient.mailbox.render(),
        "state": recipient.state.value,
        "attempts": recipient.attempts,
        "reply": None if reply is None else reply.render().decode("utf-8", "surrogateescape"),
        "remote": recipient.remote,
        "next_attempt": recipient.next_attempt,
        "report": recipient.report,
    }


_REPORTS = frozenset({"failed", "delivered", "relayed"})


def _recipient_from_dict(fields: Mapping[str, Any]) -> QueuedRecipient:
    attempts = _get(fields, "attempts", int)
    report = _optional(fields, "report")
    if attempts < 0 or (report is not None and report not in _REPORTS):
        raise CorruptEntryError(f"bad recipient {fields!r}")
    text = _optional(fields, "reply")
    try:
        reply = None if text is None else Reply.parse(text.encode("utf-8", "surrogateescape"))
    except ReplyError as e:
        raise CorruptEntryError(f"bad reply {text!r}: {e}") from e
    return QueuedRecipient(
        mailbox=_mailbox(_get(fields, "mailbox", str)),
        state=_enum(RecipientState, _get(fields, "state", str)),
        attempts=attempts,
        reply=reply,
        remote=_optional(fields, "remote"),
        next_attempt=_time(fields, "next_attempt"),
        report=report,
    )


def _ret(value: str | None) -> str | None:
    if value not in (None, "FULL", "HDRS"):
        raise CorruptEntryError(f"bad RET {value!r}")
    return value


def _dsn(fields: Mapping[str, Any]) -> tuple[Mailbox, DSNOptions]:
    notify = fields.get("notify")
    if notify is not None:
        words = _list(fields, "notify", str)
        if not words or not set(words) <= NOTIFY_KEYWORDS:
            raise CorruptEntryError(f"bad NOTIFY {words!r}")
        notify = frozenset(words)
    return _mailbox(_get(fields, "recipient", str)), DSNOptions(notify, _optional(fields, "orcpt"))


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise CorruptEntryError(f"{what} is not an object")
    return value


def _get(fields: Mapping[str, Any], key: str, kind: type[_T]) -> _T:
    value = fields.get(key)
    # type() and not isinstance(): JSON true is not the integer 1.
    if type(value) is not kind:
        raise CorruptEntryError(f"{key} is not a {kind.__name__}: {value!r}")
    return value


def _optional(fields: Mapping[str, Any], key: str) -> str | None:
    if fields.get(key) is None:
        return None
    return _get(fields, key, str)


def _list(fields: Mapping[str, Any], key: str, kind: type[_T]) -> list[_T]:
    values = _get(fields, key, list)
    for value in values:
        if type(value) is not kind:
            raise CorruptEntryError(f"{key} holds {value!r}, not a {kind.__name__}")
    return values


def _time(fields: Mapping[str, Any], key: str) -> float:
    value: Any = fields.get(key)
    if type(value) not in (int, float) or not math.isfinite(value):
        raise CorruptEntryError(f"{key} is not a time: {value!r}")
    return float(value)


_E = TypeVar("_E", EntryState, RecipientState)


def _enum(kind: type[_E], value: str) -> _E:
    try:
        return kind(value)
    except ValueError as e:
        raise CorruptEntryError(str(e)) from e


def _mailbox(text: str) -> Mailbox:
    # The UTF-8 grammar accepts every ASCII mailbox too (RFC 6531 §3.3).
    try:
        return Mailbox.parse(text, utf8=True)
    except AddressError as e:
        raise CorruptEntryError(str(e)) from e


def _reverse_path(text: str) -> ReversePath:
    return NULL_PATH if text == "" else _mailbox(text)
