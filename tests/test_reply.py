"""Replies: built valid (RFC 5321 §4.2, RFC 3463), rendered and parsed back."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import assume, given

from mailframe.reply import Reply, ReplyError
from tests.core import strategies


def test_render() -> None:
    assert Reply(250, "2.0.0", "OK").render() == b"250 2.0.0 OK\r\n"
    assert Reply(250, "2.0.0", "OK").render(enhanced=False) == b"250 OK\r\n"
    assert Reply(220, None, "mx.example ESMTP").render() == b"220 mx.example ESMTP\r\n"
    assert Reply(250, None, ("mx.example", "SIZE 100", "PIPELINING")).render() == (
        b"250-mx.example\r\n250-SIZE 100\r\n250 PIPELINING\r\n"
    )
    # RFC 2034 §4: the status on every line.
    assert Reply(550, "5.7.1", "a\nb").render() == b"550-5.7.1 a\r\n550 5.7.1 b\r\n"


def test_render_empty_text() -> None:
    assert Reply(250).render() == b"250\r\n"
    assert Reply(250, "2.0.0", "").render() == b"250 2.0.0\r\n"
    assert Reply(250, None, ("", "")).render() == b"250-\r\n250\r\n"


def test_render_keeps_spaces() -> None:
    assert Reply(250, None, " a  ").render() == b"250  a  \r\n"


def test_render_utf8() -> None:
    assert Reply(550, "5.1.1", "caf\u00e9").render() == "550 5.1.1 caf\u00e9\r\n".encode()


def test_text_from_a_string() -> None:
    assert Reply(250, None, "a\nb").text == ("a", "b")
    assert Reply(250, None, "a\r\nb").text == ("a", "b")
    assert Reply(250, None, "").text == ("",)
    assert Reply(250, None, ["a", "b"]).text == ("a", "b")


@pytest.mark.parametrize(
    ("code", "status", "text"),
    [
        (199, None, "x"),
        (600, None, "x"),
        (250, "5.0.0", "x"),
        (550, "2.0.0", "x"),
        (250, "2.0", "x"),
        (250, "2.0.0 ", "x"),
        (250, "2.1000.0", "x"),
        (250, "2.\u0663.0", "x"),
        (250, None, ("a\rb",)),
        (250, None, ("a\nb",)),
    ],
)
def test_invalid(code: int, status: str | None, text: object) -> None:
    with pytest.raises(ValueError):
        Reply(code, status, text)  # type: ignore[arg-type]


def test_classes() -> None:
    assert Reply(354).is_positive
    assert Reply(450).is_transient and not Reply(450).is_positive
    assert Reply(550).is_permanent and not Reply(550).is_transient


def test_str() -> None:
    assert str(Reply(550, "5.1.1", ("No such", "user"))) == "550 5.1.1 No such / user"
    assert str(Reply(220, None, "hi")) == "220 hi"


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"250 OK\r\n", Reply(250, None, "OK")),
        (b"250 2.0.0 OK\r\n", Reply(250, "2.0.0", "OK")),
        (b"250\r\n", Reply(250, None, "")),
        (b"250 \r\n", Reply(250, None, "")),
        (b"250 2.1.5\r\n", Reply(250, "2.1.5", "")),
        (b"250-a\r\n250-b\r\n250 c\r\n", Reply(250, None, ("a", "b", "c"))),
        (b"550-5.7.1 a\r\n550 5.7.1 b\r\n", Reply(550, "5.7.1", ("a", "b"))),
        # A status that does not match the class is text.
        (b"550 2.0.0 odd\r\n", Reply(550, None, "2.0.0 odd")),
        # Lines without the status keep their text.
        (b"550-5.7.1 a\r\n550 b\r\n", Reply(550, "5.7.1", ("a", "b"))),
        (b"250 caf\xc3\xa9\r\n", Reply(250, None, "caf\u00e9")),
        (b"250 caf\xe9\r\n", Reply(250, None, "caf\ufffd")),
    ],
)
def test_parse(data: bytes, reply: Reply) -> None:
    assert Reply.parse(data) == reply


def test_parse_without_enhanced() -> None:
    assert Reply.parse(b"250 2.0.0 OK\r\n", enhanced=False) == Reply(250, None, "2.0.0 OK")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"250 OK",
        b"250 OK\n",
        b"25 OK\r\n",
        b"2500 OK\r\n",
        b"abc OK\r\n",
        b"150 OK\r\n",
        b"250-a\r\n",
        b"250 a\r\n250 b\r\n",
        b"250-a\r\n251 b\r\n",
        b"250 a\rb\r\n",
        b"250 a\nb\r\n",
        b"250_a\r\n",
    ],
)
def test_parse_refuses(data: bytes) -> None:
    with pytest.raises(ReplyError):
        Reply.parse(data)


@given(strategies.replies())
def test_render_parse_round_trip(reply: Reply) -> None:
    # With no status, text that starts like one would be read as one.
    assume(reply.status is not None or Reply.parse(reply.render()).status is None)
    assert Reply.parse(reply.render()) == reply


@given(strategies.replies())
def test_round_trip_without_enhanced(reply: Reply) -> None:
    plain = attrs.evolve(reply, status=None)
    assert Reply.parse(reply.render(enhanced=False), enhanced=False) == plain


@given(strategies.replies())
def test_render_shape(reply: Reply) -> None:
    """RFC 5321 §4.2.1: one CRLF line per text line, "-" on all but the last."""
    data = reply.render()
    assert data.endswith(b"\r\n")
    lines = data[:-2].split(b"\r\n")
    assert len(lines) == len(reply.text)
    for index, line in enumerate(lines):
        assert line[:3] == str(reply.code).encode()
        marker = line[3:4]
        if index < len(lines) - 1:
            assert marker == b"-"
        else:
            assert marker in (b" ", b"")
        if reply.status is not None:
            assert line[4:].split(b" ")[0] == reply.status.encode()
