"""
How queue store operations fail.
"""

from __future__ import annotations

__all__ = ["EntryStateError", "LeaseLost", "NoSuchEntry"]


class NoSuchEntry(KeyError):
    """There is no queue entry with this id (it may have been delivered)."""


class LeaseLost(Exception):
    """
    The lease on a claimed entry has expired (or was never taken), so
    another runner may claim the entry: stop delivering it.
    """


class EntryStateError(ValueError):
    """The entry's state does not allow this, such as releasing an entry not on hold."""
