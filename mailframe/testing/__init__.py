"""
Public fakes and contract test suites, for testing mailframe components
without sockets, disks or real time.

Each contract of :mod:`mailframe.interfaces` has an in-memory reference
implementation here, and a contract suite: a mixin of ``test_*`` methods to
combine with :class:`twisted.trial.unittest.TestCase` (or any
:class:`unittest.TestCase`) for your own implementation::

    class MyRouterTests(RouterContract, SynchronousTestCase):
        def make_router(self):
            return MyRouter()

        def sample_recipient(self):
            return Mailbox("alice", "example.com")
"""

from mailframe.stores.memory import MemoryQueueStore
from mailframe.testing._contracts import (
    ComponentMakerContract,
    PolicyContract,
    ResolverContract,
    RouterContract,
    TransportContract,
)
from mailframe.testing._fakes import (
    FakeComponentMaker,
    MemoryResolver,
    RecordingPolicy,
    RecordingTransport,
    StaticRouter,
    envelope,
)
from mailframe.testing._store_contract import QueueStoreContract

__all__ = [
    "ComponentMakerContract",
    "FakeComponentMaker",
    "MemoryQueueStore",
    "MemoryResolver",
    "PolicyContract",
    "QueueStoreContract",
    "RecordingPolicy",
    "RecordingTransport",
    "ResolverContract",
    "RouterContract",
    "StaticRouter",
    "TransportContract",
    "envelope",
]
