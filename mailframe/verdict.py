"""
What a policy hook answers.

A :class:`Verdict` says what to do with the command that the hook saw. The
policies of a listener are asked in order: the first verdict that is not
:attr:`Action.CONTINUE` decides, except that headers asked for by any
verdict are all added.
"""

from __future__ import annotations

import enum

import attrs

from mailframe.reply import Reply

__all__ = ["Action", "Verdict"]


class Action(enum.Enum):
    """What a policy decided."""

    #: No opinion: ask the next policy. If every policy continues, the
    #: command is accepted.
    CONTINUE = "continue"
    #: Accept, and ask no further policy for this command.
    ACCEPT = "accept"
    #: Refuse with a 5xx reply.
    REJECT = "reject"
    #: Refuse with a 4xx reply.
    TEMPFAIL = "tempfail"
    #: Accept the message, and put it on hold in the queue (end of data).
    HOLD = "hold"
    #: Accept the message, and throw it away (end of data).
    DISCARD = "discard"

    # Members are singletons compared by identity; Enum's own hash
    # hashes the name in Python, on every dict and set lookup.
    __hash__ = object.__hash__


_DEFAULT_REPLIES = {
    Action.REJECT: Reply(550, "5.7.1", "Rejected by policy"),
    Action.TEMPFAIL: Reply(450, "4.7.1", "Temporarily rejected by policy"),
}


@attrs.frozen
class Verdict:
    """
    One policy answer.

    :ivar action: what to do.
    :ivar reply: the reply for REJECT (5xx) and TEMPFAIL (4xx); a default is
        used if ``None``.
    :ivar headers: header fields to add to the message, each a complete
        ``Name: value`` line without its line end.
    :ivar reason: a note for the log, and for the queue with HOLD.
    """

    action: Action = Action.CONTINUE
    reply: Reply | None = None
    headers: tuple[str, ...] = ()
    reason: str = ""

    def __attrs_post_init__(self) -> None:
        if self.reply is None:
            return
        if self.action is Action.REJECT and not self.reply.is_permanent:
            raise ValueError("a REJECT verdict needs a 5xx reply")
        if self.action is Action.TEMPFAIL and not self.reply.is_transient:
            raise ValueError("a TEMPFAIL verdict needs a 4xx reply")

    @property
    def effective_reply(self) -> Reply | None:
        """The refusal reply for REJECT and TEMPFAIL, else ``None``."""
        if self.reply is not None:
            return self.reply
        return _DEFAULT_REPLIES.get(self.action)

    @classmethod
    def reject(cls, code: int, status: str, text: str) -> Verdict:
        """A REJECT verdict with the given reply."""
        return cls(Action.REJECT, Reply(code, status, text))

    @classmethod
    def tempfail(cls, code: int, status: str, text: str) -> Verdict:
        """A TEMPFAIL verdict with the given reply."""
        return cls(Action.TEMPFAIL, Reply(code, status, text))

