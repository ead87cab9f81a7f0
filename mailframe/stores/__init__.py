"""
Queue stores: where messages wait between the SMTP server and delivery.

- :class:`SpoolQueueStore`, the default: durable files in a directory, with
  group commit of directory ``fsync``\\ s and every ``fsync`` off the reactor
  thread.
- :class:`MemoryQueueStore`: the same rules without durability, for tests.

Both implement :class:`~mailframe.interfaces.IQueueStore` and pass the
contract suite :class:`mailframe.testing.QueueStoreContract`.
"""

from mailframe.stores._errors import EntryStateError, LeaseLost, NoSuchEntry
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
    "new_queue_id",
]
