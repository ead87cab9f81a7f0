"""
How queue store operations fail.
"""

from __future__ import annotations

from mailframe.envelope import QueueEntry

__all__ = [
    "EntryStateError",
    "LeaseLost",
    "NoSuchEntry",
    "StoreUnavailable",
    "check_recipients",
]


class NoSuchEntry(KeyError):
    """There is no queue entry with this id (it may have been delivered)."""


class LeaseLost(Exception):
    """
    The lease on a claimed entry has expired (or was never taken), so
    another runner may claim the entry: stop delivering it.
    """


class EntryStateError(ValueError):
    """The entry's state does not allow this, such as releasing an entry not on hold."""


class StoreUnavailable(Exception):
    """
    The store cannot be used now: its database cannot be reached, or is not
    what this mailframe needs. The message says which, and what to do.
    """


def check_recipients(stored: QueueEntry, given: QueueEntry) -> None:
    """
    Refuse a record whose recipients are not those of the stored entry.

    :raises ValueError: if they differ, in number, order or address.
    """
    if tuple(r.mailbox for r in given.recipients) != tuple(
        r.mailbox for r in stored.recipients
    ):
        raise ValueError(f"the recipients recorded are not those of {stored.queue_id}")
