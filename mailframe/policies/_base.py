"""A base for policies that care about only some hooks."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from mailframe.interfaces import IPolicy
from mailframe.verdict import Verdict

__all__ = ["PolicyBase"]

CONTINUE = Verdict()


@implementer(IPolicy)
class PolicyBase:
    """
    An :class:`~mailframe.interfaces.IPolicy` whose every hook continues;
    subclasses override the hooks they need.
    """

    def connect(self, client: Any) -> Any:
        return CONTINUE

    def helo(self, client: Any, name: str) -> Any:
        return CONTINUE

    def mail(self, client: Any, sender: Any, parameters: Any) -> Any:
        return CONTINUE

    def rcpt(self, client: Any, sender: Any, recipient: Any, parameters: Any) -> Any:
        return CONTINUE

    def end_of_data(self, envelope: Any, headers: bytes, message: Any) -> Any:
        return CONTINUE
