"""
Public fakes, contract test suites and an SMTP session runner, for testing
mailframe components without sockets, disks or real time.

Each contract of :mod:`mailframe.interfaces` has an in-memory reference
implementation here:

- :class:`RecordingPolicy` (:class:`~mailframe.interfaces.IPolicy`);
- :class:`StaticRouter` (:class:`~mailframe.interfaces.IRouter`);
- :class:`RecordingTransport`
  (:class:`~mailframe.interfaces.IDeliveryTransport`);
- :class:`MemoryQueueStore` (:class:`~mailframe.interfaces.IQueueStore`);
- :class:`MemoryResolver` (:class:`~mailframe.interfaces.IResolver`), a
  DNS in dictionaries;
- :class:`FakeComponentMaker`
  (:class:`~mailframe.interfaces.IComponentMaker`).

Each also has a contract suite: a mixin of ``test_*`` methods to combine
with :class:`twisted.trial.unittest.SynchronousTestCase` or
:class:`twisted.trial.unittest.TestCase` for your own implementation::

    class MyRouterTests(RouterContract, SynchronousTestCase):
        def make_router(self):
            return MyRouter()

        def sample_recipient(self):
            return Mailbox("alice", "example.com")

:func:`run_transcript` runs an SMTP session through mailframe's server,
built with the policies and the store of your choice, and returns a
:class:`Transcript` of the replies and the messages queued::

    transcript = run_transcript(
        ["EHLO client.example", ("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>")],
        [MyPolicy()],
    )
    assert transcript.reply_to("RCPT").code == 550

The chapter "Testing plugins with mailframe.testing" of the user guide
shows them at work.
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
from mailframe.testing._transcript import (
    Exchange,
    Transcript,
    TranscriptStalled,
    run_transcript,
)

__all__ = [
    "ComponentMakerContract",
    "Exchange",
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
    "Transcript",
    "TranscriptStalled",
    "TransportContract",
    "envelope",
    "run_transcript",
]
