"""
Asking a list of policies in order.

The chain stays synchronous while every policy answers synchronously, so the
common case costs no Deferred at all; the first Deferred makes the rest of
the chain asynchronous.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from mailframe.verdict import Action, Verdict

__all__ = ["ask_policies"]

_DECISIVE = frozenset({Action.ACCEPT, Action.REJECT, Action.TEMPFAIL, Action.HOLD,
                       Action.DISCARD})
#: What a chain in which no policy decided or said anything comes to.
_NO_DECISION = Verdict(Action.CONTINUE)


def _combine(
    policies: Sequence[Any], index: int, hook: str, args: tuple[Any, ...],
    headers: list[str], reason: list[str],
) -> Verdict | Deferred[Verdict]:
    while index < len(policies):
        result = getattr(policies[index], hook)(*args)
        index += 1
        if isinstance(result, Deferred):
            def resume(verdict: Verdict, index: int = index) -> Verdict | Deferred[Verdict]:
                return _step(verdict, policies, index, hook, args, headers, reason)
            return result.addCallback(resume)
        outcome = _fold(result, headers, reason)
        if outcome is not None:
            return outcome
    if not headers and not reason:
        return _NO_DECISION
    return Verdict(Action.CONTINUE, headers=tuple(headers), reason="; ".join(reason))


def _step(
    verdict: Verdict, policies: Sequence[Any], index: int, hook: str,
    args: tuple[Any, ...], headers: list[str], reason: list[str],
) -> Verdict | Deferred[Verdict]:
    outcome = _fold(verdict, headers, reason)
    if outcome is not None:
        return outcome
    return _combine(policies, index, hook, args, headers, reason)


def _fold(verdict: object, headers: list[str], reason: list[str]) -> Verdict | None:
    if not isinstance(verdict, Verdict):
        raise TypeError(f"a policy hook returned {verdict!r}, not a Verdict")
    headers.extend(verdict.headers)
    if verdict.reason:
        reason.append(verdict.reason)
    if verdict.action in _DECISIVE:
        return Verdict(verdict.action, verdict.reply, tuple(headers), "; ".join(reason))
    return None


def ask_policies(
    policies: Sequence[Any], hook: str, *args: Any
) -> Verdict | Deferred[Verdict]:
    """
    Ask each policy's *hook* in order until one decides.

    :return: the deciding verdict (with the headers of every verdict asked),
        or a CONTINUE verdict if none decided; a Deferred if any policy
        answered with one. A policy that raises makes the call raise, or the
        Deferred fail.
    """
    return _combine(policies, 0, hook, args, [], [])
