"""
Queue stores: where messages wait between the SMTP server and delivery.

- :class:`SpoolQueueStore`, the default: durable files in a directory, with
  group commit of directory ``fsync``\\ s and every ``fsync`` off the reactor
  thread.
- :class:`MemoryQueueStore`: the same rules without durability, for tests.
- :class:`~mailframe.stores.postgres.PostgresQueueStore`: durable in a
  PostgreSQL database that several nodes share (it needs the ``postgres``
  extra: ``pip install 'mailframe[postgres]'``).

All implement :class:`~mailframe.interfaces.IQueueStore` and pass the
contract suite :class:`mailframe.testing.QueueStoreContract`.
"""

from mailframe.stores._errors import EntryStateError, LeaseLost, NoSuchEntry, StoreUnavailable
from mailframe.stores._ids import QUEUE_ID_LENGTH, RandomSource, new_queue_id
from mailframe.stores._serialize import CorruptEntryError
from mailframe.stores.memory import MemoryQueueStore
from mailframe.stores.spool import DEFAULT_MIN_FREE, SpoolQueueStore

__all__ = [
    "DEFAULT_MIN_FREE",
    "QUEUE_ID_LENGTH",
    "CorruptEntryError",
    "EntryStateError",
    "LeaseLost",
    "MemoryQueueStore",
    "NoSuchEntry",
    "RandomSource",
    "SpoolQueueStore",
    "StoreUnavailable",
    "new_queue_id",
]
