"""
Mailboxes and paths against the grammar of RFC 5321 §4.1.2 and the UTF-8
extensions of RFC 6531 §3.3.
"""

from __future__ import annotations

import re

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailframe.address import (
    NULL_PATH,
    AddressError,
    Mailbox,
    decode_xtext,
    encode_xtext,
    is_domain,
    original_recipient,
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
    # Asked again, the kept answer; the other form of the same call too.
    assert is_domain(text, utf8) is result
    assert is_domain(text, utf8=utf8) is result


def test_is_domain_keeps_a_bounded_number_of_answers() -> None:
    for number in range(3000):
        assert is_domain(f"d{number}.example")
    assert not is_domain("a..b")
    assert is_domain.cache_info().currsize <= 1024


# -- xtext (RFC 3461 §4) ---------------------------------------------------------

#: RFC 3461 §4: xchar, and hexchar with upper-case digits.
CANONICAL_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")


@given(st.text(st.characters(exclude_categories=strategies.SURROGATES)))
def test_xtext_round_trip(text: str) -> None:
    encoded = encode_xtext(text)
    assert CANONICAL_XTEXT.match(encoded)
    assert decode_xtext(encoded) == text


@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E)))
def test_printable_ascii_is_encoded_only_where_it_must_be(text: str) -> None:
    encoded = encode_xtext(text)
    assert encoded == text.replace("+", "+2B").replace("=", "+3D")
    assert encode_xtext(decode_xtext(encoded)) == encoded


@pytest.mark.parametrize(
    ("xtext", "text"),
    [
        ("", ""),
        ("bob@example.com", "bob@example.com"),
        ("a+20b+2Bc+3Dd+C3+A9", "a b+c=d\u00e9"),
        # RFC 3461 asks for upper-case hex digits; lower case is read too.
        ("a+2bb", "a+b"),
        ("+0D+0A", "\r\n"),
    ],
)
def test_decode_xtext(xtext: str, text: str) -> None:
    assert decode_xtext(xtext) == text


@pytest.mark.parametrize("xtext", ["a+", "a+2", "a+2G", "a=b", "a b", "a\tb", "caf\u00e9", "+FF"])
def test_decode_xtext_refuses(xtext: str) -> None:
    with pytest.raises(ValueError):
        decode_xtext(xtext)


def test_encode_xtext_refuses_surrogates() -> None:
    with pytest.raises(ValueError):
        encode_xtext("\ud800")


@pytest.mark.parametrize(
    ("mailbox", "orcpt"),
    [
        (Mailbox("bob", "example.com"), "rfc822;bob@example.com"),
        (Mailbox("a b", "example.com"), 'rfc822;"a b"@example.com'),
        (Mailbox("postmaster", ""), "rfc822;postmaster"),
        # RFC 6533 §3: utf-8-addr-xtext, with "+", "=" and "\\" escaped too.
        (
            Mailbox("j\u00f6rg+a=b", "b\u00fccher.example"),
            "utf-8;j\\x{F6}rg\\x{2B}a\\x{3D}b@b\\x{FC}cher.example",
        ),
        (Mailbox("\U0001f600", "example.com"), "utf-8;\\x{1F600}@example.com"),
    ],
)
def test_original_recipient(mailbox: Mailbox, orcpt: str) -> None:
    assert original_recipient(mailbox) == orcpt
    assert orcpt.isascii() and orcpt.isprintable()


@given(strategies.mailboxes)
def test_original_recipient_is_printable_ascii(mailbox: Mailbox) -> None:
    """RFC 3461 §4.2: the original recipient address is printable US-ASCII."""
    orcpt = original_recipient(mailbox)
    assert re.fullmatch(r"(rfc822|utf-8);[\x20-\x7e]+", orcpt)
    assert decode_xtext(encode_xtext(orcpt)) == orcpt


def test_a_written_mailbox_equals_and_hashes_as_one_not_yet_written() -> None:
    """Its text is kept once made; equality and hash never see it."""
    written, fresh = Mailbox("a b", "example.com"), Mailbox("a b", "example.com")
    assert str(written) == '"a b"@example.com'
    assert written == fresh and hash(written) == hash(fresh)
    assert {written: 1}[fresh] == 1
    assert repr(written) == repr(fresh)


def test_a_changed_mailbox_is_written_anew() -> None:
    mailbox = Mailbox("a", "example.com")
    assert str(mailbox) == "a@example.com"
    changed = attrs.evolve(mailbox, domain="example.org")
    assert str(changed) == "a@example.org"
    assert changed != mailbox
