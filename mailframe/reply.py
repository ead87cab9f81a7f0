"""
SMTP replies: a code, an enhanced status code and text.

A :class:`Reply` is valid once built: the code is a three-digit SMTP reply
code (RFC 5321 §4.2), and the enhanced status code, when present, has the
class digit that matches the code (RFC 3463 §2).

:meth:`Reply.render` writes a reply as it goes on the wire and
:meth:`Reply.parse` reads one back, so that
``Reply.parse(reply.render()) == reply``.
"""

from __future__ import annotations

import functools
import re

import attrs

__all__ = ["Reply", "ReplyError"]

# RFC 3463 §2: class "." subject "." detail, each of 1 to 3 ASCII digits.
_NUMBER = r"[0-9]{1,3}"
_STATUS = re.compile(rf"\A([245])\.{_NUMBER}\.{_NUMBER}\Z")
# RFC 5321 §4.2: Reply-code [ ("-" / SP) textstring ].
_LINE = re.compile(r"\A([2-5][0-9][0-9])(?:([ -])(.*))?\Z")
_STATUS_PREFIX = re.compile(rf"([245]\.{_NUMBER}\.{_NUMBER})(?: |\Z)")


class ReplyError(ValueError):
    """Bytes that :meth:`Reply.parse` was given are not one SMTP reply."""


def _check_code(instance: Reply, attribute: attrs.Attribute[int], value: int) -> None:
    if not 200 <= value <= 599:
        raise ValueError(f"reply code {value} is not in 200-599")


def _check_status(
    instance: Reply, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is None:
        return
    match = _STATUS.match(value)
    if match is None:
        raise ValueError(f"enhanced status code {value!r} is malformed")
    if match.group(1) != str(instance.code)[0]:
        raise ValueError(f"enhanced status {value} does not match the class of {instance.code}")


def _check_text(
    instance: Reply, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for line in value:
        if "\r" in line or "\n" in line:
            raise ValueError("reply text lines may not contain CR or LF")


def _text_lines(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.replace("\r\n", "\n").split("\n"))
    return tuple(value) or ("",)


@functools.lru_cache(maxsize=512)
def _render(code: int, status: str | None, text: tuple[str, ...]) -> bytes:
    # A server sends the same few replies over and over: each is rendered
    # once, and the cache's size bounds those that are not.
    last = len(text) - 1
    out = []
    for index, line in enumerate(text):
        sep = " " if index == last else "-"
        if status is not None:
            body = f"{status} {line}" if line else status
        else:
            body = line
        if body or sep == "-" or code == 334:
            # RFC 4954 §4: a SASL challenge is "334" SP [base64], so an
            # empty one keeps its space.
            out.append(f"{code}{sep}{body}\r\n")
        else:
            out.append(f"{code}\r\n")
    return "".join(out).encode("utf-8")


@attrs.frozen
class Reply:
    """
    One SMTP reply.

    :ivar code: the three-digit reply code.
    :ivar status: the RFC 3463 enhanced status code, such as ``"2.1.0"``, or
        ``None`` for replies that carry none (the greeting, HELO, EHLO).
    :ivar text: the lines of human-readable text; a ``str`` given here is
        split at newlines (LF or CRLF).
    """

    code: int = attrs.field(validator=_check_code)
    status: str | None = attrs.field(default=None, validator=_check_status)
    text: tuple[str, ...] = attrs.field(default=("",), converter=_text_lines, validator=_check_text)

    @property
    def is_positive(self) -> bool:
        """``True`` for 2xx and 3xx replies."""
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        """``True`` for 4xx replies."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """``True`` for 5xx replies."""
        return self.code >= 500

    def render(self, enhanced: bool = True) -> bytes:
        """
        The reply as it goes on the wire, CRLF-terminated, with continuation
        lines (RFC 5321 §4.2.1). The enhanced status code is put before the
        text of every line when *enhanced* is true (RFC 2034 §4).

        A line whose text is empty is written as the bare code (or code and
        status), since RFC 5321 §4.2 allows no space without text after it,
        except the SASL challenge ``334`` that RFC 4954 §4 writes with its
        space; any other text is written exactly, trailing spaces included.
        """
        return _render(self.code, self.status if enhanced else None, self.text)

    @classmethod
    def parse(cls, data: bytes, enhanced: bool = True) -> Reply:
        """
        Read one complete reply, as :meth:`render` writes it (RFC 5321 §4.2.1).

        Every line must carry the same code; all but the last have ``-``
        after it. Text that is not UTF-8 is kept with replacement
        characters.

        :param enhanced: look for an RFC 3463 status code at the start of the
            first line's text (RFC 2034 §4). When one is there and matches the
            class of the code, it becomes :attr:`status` and is taken off
            every line that starts with it.
        :raises ReplyError: if *data* is not one reply.
        """
        if not data.endswith(b"\r\n"):
            raise ReplyError(f"a reply ends with CRLF: {data!r}")
        lines = data[:-2].split(b"\r\n")
        code: int | None = None
        texts: list[str] = []
        for index, raw in enumerate(lines):
            if b"\r" in raw or b"\n" in raw:
                raise ReplyError(f"bare CR or LF in reply: {data!r}")
            match = _LINE.match(raw.decode("utf-8", errors="replace"))
            if match is None:
                raise ReplyError(f"malformed reply line: {raw!r}")
            line_code = int(match.group(1))
            if code is not None and line_code != code:
                raise ReplyError(f"reply lines disagree on the code: {data!r}")
            code = line_code
            continued = match.group(2) == "-"
            if continued == (index == len(lines) - 1):
                raise ReplyError(f"continuation marks do not end the reply: {data!r}")
            texts.append(match.group(3) or "")
        assert code is not None
        status: str | None = None
        if enhanced:
            found = _STATUS_PREFIX.match(texts[0])
            if found is not None and found.group(1)[0] == str(code)[0]:
                status = found.group(1)
                texts = [_strip_status(text, status) for text in texts]
        return cls(code, status, tuple(texts))

    def __str__(self) -> str:
        status = f" {self.status}" if self.status else ""
        return f"{self.code}{status} {' / '.join(self.text)}"


def _strip_status(text: str, status: str) -> str:
    if text == status:
        return ""
    if text.startswith(status + " "):
        return text[len(status) + 1 :]
    return text
