"""
Mailboxes and paths against the grammar of RFC 5321 §4.1.2 and the UTF-8
extensions of RFC 6531 §3.3.
"""

from __future__ import annotations

import pytest
from hypothesis import given

from mailframe.address import (
    NULL_PATH,
    AddressError,
    Mailbox,
    is_domain,
    parse_forward_path,
    parse_reverse_path,
)
from tests.core import strategies


@given(strategies.mailboxes)
def test_parse_render_round_trip(mailbox: Mailbox) -> None:
    assert Mailbox.parse(mailbox.render(), utf8=not mailbox.is_ascii) == mailbox


@given(strategies.ascii_mailboxes)
def test_ascii_mailboxes_parse_without_utf8(mailbox: Mailbox) -> None:
    assert mailbox.is_ascii
    assert Mailbox.parse(mailbox.render()) == mailbox


@given(strategies.mailboxes)
def test_paths_round_trip(mailbox: Mailbox) -> None:
    utf8 = not mailbox.is_ascii
    assert parse_forward_path(f"<{mailbox.render()}>", utf8) == mailbox
    assert parse_forward_path(f"<@relay.example,@b.example:{mailbox.render()}>", utf8) == mailbox
    if mailbox.domain:
        assert parse_reverse_path(f"<{mailbox.render()}>", utf8) == mailbox


@pytest.mark.parametrize(
    ("text", "mailbox"),
    [
        ("user@example.com", Mailbox("user", "example.com")),
        ("first.last@sub.example.com", Mailbox("first.last", "sub.example.com")),
        ("!#$%&'*+/=?^_`{|}~-@x.example", Mailbox("!#$%&'*+/=?^_`{|}~-", "x.example")),
        ('"a b"@example.com', Mailbox("a b", "example.com")),
        ('"a\\"b\\\\c"@example.com', Mailbox('a"b\\c', "example.com")),
        ('"a@b"@example.com', Mailbox("a@b", "example.com")),
        ('""@example.com', Mailbox("", "example.com")),
        ('"plain"@example.com', Mailbox("plain", "example.com")),
        ("user@[192.0.2.1]", Mailbox("user", "[192.0.2.1]")),
        ("user@[IPv6:2001:db8::1]", Mailbox("user", "[IPv6:2001:db8::1]")),
        ('user@[x-tag:a@b>c"d]', Mailbox("user", '[x-tag:a@b>c"d]')),
        ("postmaster", Mailbox("postmaster", "")),
        ("PostMaster", Mailbox("PostMaster", "")),
        ("l" * 200 + "@" + ".".join(["d" * 63] * 4), Mailbox("l" * 200, ".".join(["d" * 63] * 4))),
    ],
)
def test_parse(text: str, mailbox: Mailbox) -> None:
    assert Mailbox.parse(text) == mailbox


@pytest.mark.parametrize(
    "text",
    [
        "",
        "user",
        "user@",
        "@example.com",
        "a@b@example.com",
        ".user@example.com",
        "user.@example.com",
        "us..er@example.com",
        "us er@example.com",
        '"unterminated@example.com',
        '"bad\\"@example.com',
        '"tab\there"@example.com',
        "user@example.com.",
        "user@-example.com",
        "user@example-.com",
        "user@exa_mple.com",
        "user@[192.0.2.256]",
        "user@[IPv6:2001:db8::1%eth0]",
        "user@[IPv6:not-an-address]",
        "user@[]",
        "j\u00f6rg@example.com",
        "user@b\u00fccher.example",
    ],
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(AddressError):
        Mailbox.parse(text)


def test_utf8() -> None:
    mailbox = Mailbox.parse("j\u00f6rg@b\u00fccher.example", utf8=True)
    assert mailbox == Mailbox("j\u00f6rg", "b\u00fccher.example")
    assert not mailbox.is_ascii
    assert Mailbox.parse('"j\u00f6 rg"@example.com', utf8=True).local_part == "j\u00f6 rg"


@pytest.mark.parametrize(
    ("local", "domain"),
    [
        ("user", ""),
        ("tab\there", "example.com"),
        ("nul\x00", "example.com"),
        ("user", "not a domain"),
        ("user", "example.com."),
        ("surrogate\ud800", "example.com"),
    ],
)
def test_mailbox_is_valid_when_built(local: str, domain: str) -> None:
    with pytest.raises(AddressError):
        Mailbox(local, domain)


def test_render_quotes_only_when_needed() -> None:
    assert Mailbox("a.b", "example.com").render() == "a.b@example.com"
    assert Mailbox("a b", "example.com").render() == '"a b"@example.com'
    assert Mailbox('a"b\\', "example.com").render() == '"a\\"b\\\\"@example.com'
    assert Mailbox(".a", "example.com").render() == '".a"@example.com'
    assert Mailbox("", "example.com").render() == '""@example.com'
    assert str(Mailbox("postmaster", "")) == "postmaster"


def test_postmaster() -> None:
    assert Mailbox("PostMaster", "example.com").is_postmaster
    assert Mailbox("postmaster", "").is_postmaster
    assert not Mailbox("postmasters", "example.com").is_postmaster


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<>", NULL_PATH),
        ("<user@example.com>", Mailbox("user", "example.com")),
        ("<@a.example,@b.example:user@c.example>", Mailbox("user", "c.example")),
    ],
)
def test_reverse_path(text: str, expected: object) -> None:
    assert parse_reverse_path(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "user@example.com",
        "<user@example.com",
        "<postmaster>",
        "<@a.example:>",
        "<@a.example>",
        "<@:user@example.com>",
        "<@a.example,b.example:user@c.example>",
        "<@[192.0.2.1]:user@c.example>",
    ],
)
def test_reverse_path_refuses(text: str) -> None:
    with pytest.raises(AddressError):
        parse_reverse_path(text)


def test_forward_path() -> None:
    assert parse_forward_path("<Postmaster>") == Mailbox("Postmaster", "")
    assert parse_forward_path("<@x.example:postmaster>") == Mailbox("postmaster", "")
    with pytest.raises(AddressError):
        parse_forward_path("<>")


def test_null_path() -> None:
    assert NULL_PATH.render() == ""
    assert str(NULL_PATH) == ""


@pytest.mark.parametrize(
    ("text", "utf8", "result"),
    [
        ("example.com", False, True),
        ("a", False, True),
        ("1.2.3.4", False, True),
        ("xn--bcher-kva.example", False, True),
        ("b\u00fccher.example", False, False),
        ("b\u00fccher.example", True, True),
        ("", False, False),
        ("a..b", False, False),
        ("-a.example", False, False),
        ("a-.example", False, False),
        ("a_b.example", False, False),
    ],
)
def test_is_domain(text: str, utf8: bool, result: bool) -> None:
    assert is_domain(text, utf8) is result
