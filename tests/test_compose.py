"""Tests for composing the mail service, and its open-file limit."""

from __future__ import annotations

import resource

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool

from mailframe import compose
from mailframe.config import Config
from mailframe.services.mta import MailService


def test_open_file_limit_is_raised_to_hard_and_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"now": (1024, 65536)}
    events: list[dict[str, object]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda kind: limits["now"])

    def setrlimit(kind: int, value: tuple[int, int]) -> None:
        limits["now"] = value

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    monkeypatch.setattr(compose.log, "observer", events.append)
    assert compose.raise_open_file_limit() == 65536
    assert limits["now"] == (65536, 65536)
    assert [e["limit"] for e in events] == [65536]


def test_connections_follow_the_open_file_limit() -> None:
    assert compose.connections_for(65536) == (65536 - compose.RESERVED_FDS) // 2
    assert compose.connections_for(10) == 16


class PoolReactor(MemoryReactorClock):
    def getThreadPool(self) -> ThreadPool:
        return ThreadPool()


def test_service_has_a_listener_per_endpoint(tmp_path: object) -> None:
    reactor = PoolReactor()
    config = Config(listen=("tcp:2600:interface=127.0.0.1", "tcp:2601:interface=127.0.0.1"),
                    queue_dir=str(tmp_path), hostname="mx.example.com")
    service = compose.build_mail_service(config, reactor, max_connections=50)
    assert isinstance(service, MailService)
    assert [s.description for s in service.listeners] == list(config.listen)
    for listener in service.listeners:
        assert listener.factory.settings.max_connections == 50
        assert listener.factory.settings.hostname == "mx.example.com"


@pytest.mark.parametrize("description", ["memory:alice:s3cret", "file:{passwd}"])
def test_checkers_accept_what_auth_gives(description: str, tmp_path: object) -> None:
    import pathlib

    from twisted.cred.credentials import UsernamePassword
    from twisted.cred.error import UnauthorizedLogin
    from twisted.internet.defer import maybeDeferred

    passwd = pathlib.Path(str(tmp_path)) / "passwd"
    passwd.write_text("alice:s3cret\n")
    checker = compose.make_checker(description.format(passwd=passwd))
    results: list[object] = []
    maybeDeferred(checker.requestAvatarId, UsernamePassword(b"alice", b"s3cret")).addBoth(
        results.append)
    maybeDeferred(checker.requestAvatarId, UsernamePassword(b"alice", b"wrong")).addBoth(
        results.append)
    assert results[0] in ("alice", b"alice")
    assert results[1].check(UnauthorizedLogin)  # type: ignore[attr-defined]


def test_hold_puts_every_message_on_hold_after_the_other_policies(tmp_path: object) -> None:
    from mailframe.policies.hold import HoldAll

    reactor = PoolReactor()
    config = Config(queue_dir=str(tmp_path), hostname="mx.example.com", hold=True)
    service = compose.build_mail_service(config, reactor, max_connections=50)
    [listener] = service.listeners
    chain = listener.factory.policies
    assert isinstance(chain[-1], HoldAll)
    assert not any(isinstance(p, HoldAll) for p in chain[:-1])
    plain = compose.build_mail_service(Config(queue_dir=str(tmp_path)), reactor)
    assert not any(isinstance(p, HoldAll) for p in plain.listeners[0].factory.policies)


def test_discard_store_needs_unsafe_store(tmp_path: object) -> None:
    from mailframe.errors import ConfigError
    from mailframe.stores.discard import DiscardQueueStore

    reactor = PoolReactor()
    with pytest.raises(ConfigError) as caught:
        compose.build_mail_service(Config(queue_dir=str(tmp_path), store="discard"), reactor)
    assert caught.value.key == "store"
    service = compose.build_mail_service(
        Config(queue_dir=str(tmp_path), store="discard", unsafe_store=True), reactor)
    assert isinstance(service.store, DiscardQueueStore)


def test_haproxy_listener_reads_the_header_itself(tmp_path: object) -> None:
    from mailframe.protocols.proxy import ProxyHeaderEndpoint, ProxyHeaderFactory
    from mailframe.protocols.server import SMTPServerFactory

    reactor = PoolReactor()
    config = Config(listen=("haproxy:tcp:2600:interface=127.0.0.1", "tcp:2601"),
                    queue_dir=str(tmp_path), hostname="mx.example.com")
    service = compose.build_mail_service(config, reactor, max_connections=50)
    behind, plain = service.listeners
    assert behind.description == "haproxy:tcp:2600:interface=127.0.0.1"
    # The service keeps the SMTP factory, so that stopping shuts it down
    # gracefully; only the endpoint knows about the header.
    assert isinstance(behind.factory, SMTPServerFactory)
    assert isinstance(behind.endpoint, ProxyHeaderEndpoint)
    assert not isinstance(plain.endpoint, ProxyHeaderEndpoint)
    behind.startService()
    plain.startService()
    (port, wrapper, _, interface), (other, factory, _, _) = reactor.tcpServers
    assert (port, interface, other) == (2600, "127.0.0.1", 2601)
    assert isinstance(wrapper, ProxyHeaderFactory)
    assert wrapper.wrapped_factory is behind.factory
    assert factory is plain.factory
