"""
A mail service composed by hand, with the example components of acme.py
alongside the built-in ones.
"""

from __future__ import annotations

import random
from typing import Any

from acme import AliasRouter, SenderDomainBlock
from twisted.internet.endpoints import serverFromString

from mailframe.config import Config
from mailframe.core import Limits
from mailframe.policies import LocalRecipients, RelayControl
from mailframe.protocols.server import ServerSettings, SMTPServerFactory
from mailframe.routing import LocalRouter
from mailframe.services import MailService, QueueRunner
from mailframe.services.listener import ListeningService
from mailframe.stores import SpoolQueueStore
from mailframe.transports import MaildirTransport


def build_acme_service(config: Config, reactor: Any) -> MailService:
    """The service that *config* describes, with Acme's policy and aliases."""
    rng = random.SystemRandom()
    store = SpoolQueueStore(config.queue_dir, reactor, random=rng)
    domains = dict(config.local_domains)
    policies = [
        SenderDomainBlock(["spam.example"]),
        RelayControl(domains, config.relay_networks),
        LocalRecipients(domains, config.local_users),
    ]
    router = AliasRouter(
        {"team@localhost": ["alice@localhost", "bob@localhost"]},
        LocalRouter(domains),
    )
    transports = {"maildir": MaildirTransport(store, reactor)}
    runner = QueueRunner(store, router, transports, reactor, random=rng)
    settings = ServerSettings(
        hostname=config.hostname,
        limits=Limits(
            max_message_size=config.max_message_size,
            max_recipients=config.max_recipients,
        ),
        idle_timeout=config.idle_timeout,
        max_per_client=config.max_connections_per_client,
        limit_exemptions=config.connection_limit_exemptions,
    )
    listeners = []
    for description in config.listen:
        factory = SMTPServerFactory(
            settings, store, policies, reactor, on_queued=lambda _: runner.wake()
        )
        endpoint = serverFromString(reactor, description)
        listeners.append(ListeningService(endpoint, factory, description))
    return MailService(store, listeners, runner, grace=config.shutdown_grace,
                       stoppables=list(transports.values()))
