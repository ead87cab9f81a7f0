"""
SMTP replies: a code, an enhanced status code and text.

A :class:`Reply` is valid once built: the code is a three-digit SMTP reply
code (RFC 5321 §4.2), and the enhanced status code, when present, has the
class digit that matches the code (RFC 3463 §2).
"""

from __future__ import annotations

import re

import attrs

__all__ = ["Reply"]

_STATUS = re.compile(r"\A([245])\.(\d{1,3})\.(\d{1,3})\Z")


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
        raise ValueError(
            f"enhanced status {value} does not match the class of {instance.code}"
        )


def _check_text(
    instance: Reply, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for line in value:
        if "\r" in line or "\n" in line:
            raise ValueError("reply text lines may not contain CR or LF")


def _text_lines(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split("\n")) if value else ("",)
    return tuple(value) or ("",)


@attrs.frozen
class Reply:
    """
    One SMTP reply.

    :ivar code: the three-digit reply code.
    :ivar status: the RFC 3463 enhanced status code, such as ``"2.1.0"``, or
        ``None`` for replies that carry none (the greeting, HELO, EHLO).
    :ivar text: the lines of human-readable text; a ``str`` given here is
        split at newlines.
    """

    code: int = attrs.field(validator=_check_code)
    status: str | None = attrs.field(default=None, validator=_check_status)
    text: tuple[str, ...] = attrs.field(
        default=("",), converter=_text_lines, validator=_check_text
    )

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
        """
        prefix = f"{self.status} " if enhanced and self.status else ""
        last = len(self.text) - 1
        out = []
        for index, line in enumerate(self.text):
            sep = " " if index == last else "-"
            out.append(f"{self.code}{sep}{prefix}{line}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        status = f" {self.status}" if self.status else ""
        return f"{self.code}{status} {' / '.join(self.text)}"
