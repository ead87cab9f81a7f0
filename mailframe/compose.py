"""
Composing a mail service from a :class:`~mailframe.config.Config`: the one
place where the parts are chosen and wired together.

Embed mailframe in a larger Twisted application with::

    config = settings_from({"hostname": "mx.example.com", "listen": ["tcp:2525"]})
    service = build_mail_service(config, reactor)
    service.setServiceParent(application)

:func:`~mailframe.config.settings_from` checks every value the way a config
file is checked.
"""

from __future__ import annotations

import random as _random
import resource
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.cred import strcred
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from mailframe.config import ComponentContext, Config
from mailframe.core import Limits
from mailframe.errors import ConfigError
from mailframe.interfaces import IDeliveryTransport, IPolicy, IRecipientValidator
from mailframe.protocols._tls import ServerTLS
from mailframe.protocols.proxy import ProxyHeaderEndpoint, split_proxy
from mailframe.protocols.server import (
    AuthFailures,
    ConnectionCounts,
    ServerSettings,
    SMTPServerFactory,
)
from mailframe.registry import Components, Registry, discover
from mailframe.routing import DNSResolver
from mailframe.services import MailService, QueueRunner
from mailframe.services.listener import ListeningService
from mailframe.services.workers import AcceptBalance, AdoptedEndpoint, SessionBoard

__all__ = ["build_mail_service", "connections_for", "make_checker", "raise_open_file_limit"]

log = Logger()

#: File descriptors kept back from sessions: the spool, logs, the thread
#: pool and the listeners.
RESERVED_FDS = 64


def raise_open_file_limit() -> int:
    """
    Raise the soft open-file limit to the hard limit, log it, and return the
    new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    log.info("Open-file limit is {limit}", limit=soft)
    return soft


def make_checker(description: str) -> Any:
    """
    The :mod:`twisted.cred` checker that *description* names (``file:PATH``,
    ``memory:user:password``, or a checker plugin's own string).

    AUTH gives the checker its username and password as UTF-8 bytes, as
    ``file:`` expects; the ``memory:`` checker keeps them as text, so its
    entries are encoded to match.
    """
    checker = strcred.makeChecker(description)
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {
            _utf8(name): _utf8(password) for name, password in checker.users.items()
        }
    return checker


def _utf8(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def connections_for(open_files: int) -> int:
    """
    How many sessions fit in *open_files* descriptors: each session holds its
    socket and, while receiving a message, one spool file.
    """
    return max(16, (open_files - RESERVED_FDS) // 2)


def build_mail_service(
    config: Config,
    reactor: Any,
    max_connections: int | None = None,
    policies: Sequence[IPolicy] = (),
    registry: Registry | None = None,
    *,
    worker: str | None = None,
    sockets: Sequence[int] = (),
    board: int | None = None,
) -> MailService:
    """
    The whole mail service that *config* describes, on *reactor*, built
    from the plugins it names.

    :param max_connections: sessions at once when the config leaves it open;
        by default as many as the open-file limit allows.
    :param policies: policies of your own, asked after those of the config.
    :param registry: the plugins to build from; by default those that
        :func:`~mailframe.registry.discover` finds.
    :param worker: the slot of this process when it is one of the worker
        processes of ``--workers`` (see :mod:`mailframe.services.workers`).
    :param sockets: a worker's inherited listening sockets, one for each
        listener in order; the listeners adopt them instead of binding.
    :param board: a worker's inherited
        :class:`~mailframe.services.workers.SessionBoard`, by which the
        workers spread the sessions among them.
    :raises ConfigError: when a plugin is missing, failed to import, is
        given bad settings, or cannot be built; the error names it.
    """
    if registry is None:
        registry = discover()
    if registry.problems:
        problem = registry.problems[0]
        log.error("Plugin module {module} failed: {detail}", module=problem.module,
                  detail=problem.detail or problem.message)
        raise ConfigError("plugins", f"plugin module {problem.module} failed to load:"
                                     f" {problem.message}")
    rng = _random.SystemRandom()
    if config.max_connections is not None:
        max_connections = config.max_connections
    if max_connections is None:
        max_connections = connections_for(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    tls = ServerTLS(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
    resolver = DNSResolver(reactor, nameservers=list(config.nameservers) or None, random=rng)
    components = Components(config, registry, ComponentContext(
        reactor=reactor, random=rng, resolver=resolver, tls=tls,
        log=Logger(namespace="mailframe.plugins"), worker=worker,
    ))
    components.check()
    maker = registry.maker("store", config.store)
    if not getattr(maker, "durable", True):
        if not config.unsafe_store:
            raise ConfigError("store", f"the {config.store} store loses queued mail when the"
                                       " process stops; start it with --unsafe-store"
                                       " (unsafe_store = true) if that is what you want",
                              config.line_of("store"))
        log.warn("The {store} store is not durable: queued mail is lost when mailframe"
                 " stops", store=config.store)
    if config.workers > 1 and not getattr(maker, "shared", False):
        # Each worker would recover the whole store, taking back what its
        # siblings are delivering: a store must say that it can be shared.
        raise ConfigError("workers", f"the {config.store} store cannot be shared by worker"
                                     " processes (its plugin does not declare shared=True)",
                          config.line_of("workers"))
    store = components.get("store", config.store)
    components.context = attrs.evolve(components.context, store=store)
    router = components.get("router", config.router)
    transports: dict[str, IDeliveryTransport] = {
        name: components.get("transport", name) for name in config.transports
    }
    # Relay control is built per listener below, with the listener's networks.
    shared = [components.get("policy", name) for name in config.policies
              if name != "relay-control"]
    if IRecipientValidator.providedBy(router) and "router-check" not in config.policies:
        # What the router's own tables would refuse is refused at RCPT.
        shared.append(components.get("policy", "router-check"))
    last: list[IPolicy] = []
    if config.hold and "hold-all" not in config.policies:
        # Asked last of all, so that every other policy may still refuse.
        last.append(components.get("policy", "hold-all"))
    runner = QueueRunner(
        store, router, transports, reactor,
        schedule=config.retry_schedule,
        random=rng,
        max_lifetime=config.max_queue_lifetime,
        delay_warning=config.delay_warning,
        hostname=config.hostname,
        bounce_size_limit=config.bounce_size_limit,
        double_bounce_recipient=config.double_bounce_recipient,
    )
    checker = make_checker(config.auth_checker) if config.auth_checker else None
    counts = ConnectionCounts()
    failures = AuthFailures(reactor, config.max_auth_failures, config.auth_failure_delay)
    listeners = []
    names: dict[str, int] = {}
    balance = None
    if sockets and board is not None and worker is not None and worker.isdigit():
        sessions = SessionBoard(board)
        if 0 < int(worker) <= sessions.slots:
            balance = AcceptBalance(sessions, int(worker) - 1, lambda: counts.total, reactor)
    effective = config.effective_listeners()
    if sockets and len(sockets) != len(effective):
        raise ValueError(f"{len(sockets)} inherited sockets for {len(effective)} listeners")
    for index, listener in enumerate(effective):
        # Relay control comes first on every listener, with its own networks.
        chain: list[IPolicy] = [
            components.build("policy", "relay-control", listener=listener),
            *shared,
            *policies,
            *last,
        ]
        size = listener.max_message_size
        recipients = listener.max_recipients
        limits = Limits(
            max_message_size=config.max_message_size if size is None else size,
            max_recipients=config.max_recipients if recipients is None else recipients,
        )
        names[listener.name] = names.get(listener.name, 0) + 1
        number = names[listener.name]
        settings = ServerSettings(
            hostname=config.hostname,
            limits=limits,
            idle_timeout=config.idle_timeout,
            max_connections=max_connections,
            max_per_client=config.max_connections_per_client,
            limit_exemptions=config.connection_limit_exemptions,
            name=listener.name if number == 1 else f"{listener.name}{number}",
            tls=tls if listener.starttls is not False else None,
            require_tls=listener.require_tls,
            auth=listener.auth,
            auth_without_tls=listener.auth_without_tls,
            checker=checker if listener.auth != "none" else None,
        )
        factory = SMTPServerFactory(
            settings, store, chain, reactor, on_queued=lambda _: runner.wake(), counts=counts,
            auth_failures=failures,
        )
        # mailframe reads the PROXY header itself: Twisted's haproxy: parser
        # would start the session on the proxy's address. A worker adopts
        # the socket its supervisor bound, and wraps it the same way.
        behind_proxy, description = split_proxy(listener.endpoint)
        endpoint = (AdoptedEndpoint(reactor, sockets[index], balance) if sockets
                    else serverFromString(reactor, description))
        if behind_proxy:
            endpoint = ProxyHeaderEndpoint(endpoint, reactor,
                                           max_connections=max_connections)
        listeners.append(ListeningService(endpoint, factory, listener.endpoint))
    parts = [*transports.values(), router, *shared, store]
    stoppables = [p for p in parts if callable(getattr(p, "stop", None))]
    reloadables = [p for p in parts if callable(getattr(p, "reload", None))]
    return MailService(store, listeners, runner, grace=config.shutdown_grace, tls=tls,
                       stoppables=_unique(stoppables), reloadables=_unique(reloadables))


def _unique(parts: Sequence[Any]) -> list[Any]:
    seen: list[Any] = []
    for part in parts:
        if not any(part is other for other in seen):
            seen.append(part)
    return seen
