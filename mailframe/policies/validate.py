"""
Refusing at RCPT what the router would refuse.

A router that knows from local data alone (tables, aliases, user lists)
that a recipient cannot be delivered provides
:class:`~mailframe.interfaces.IRecipientValidator`. The ``router-check``
policy asks it at each RCPT, so that such a recipient is refused there,
with the router's own reply, instead of being accepted and bounced later
(RFC 5321 §3.3: a server that knows a recipient is undeliverable says so
at RCPT). The validator never looks anything up in DNS, so RCPT stays
fast and a DNS outage refuses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from mailframe.address import Mailbox
from mailframe.components import ComponentMaker
from mailframe.interfaces import IRecipientValidator
from mailframe.policies._base import CONTINUE, PolicyBase
from mailframe.reply import Reply
from mailframe.verdict import Action, Verdict

__all__ = ["RouterCheck", "validate_maker"]


class RouterCheck(PolicyBase):
    """
    Refuses at RCPT each recipient that *router* refuses.

    The router's :meth:`~mailframe.interfaces.IRecipientValidator.validate`
    reply becomes the verdict: a 5xx reply a REJECT, a 4xx reply a
    TEMPFAIL; ``None`` continues to the next policy. A router that does
    not provide :class:`~mailframe.interfaces.IRecipientValidator` refuses
    nothing, and this policy always continues. A validator that fails
    becomes one ``451 4.3.0`` for that RCPT, as any policy failure does.

    :param router: the router that routes the accepted mail.
    """

    def __init__(self, router: Any) -> None:
        self.router = router
        self.validator = router if IRecipientValidator.providedBy(router) else None

    def rcpt(self, client: Any, sender: Any, recipient: Any, parameters: Any) -> Any:
        if self.validator is None:
            return CONTINUE
        d: Deferred[Reply | None] = maybeDeferred(self.validator.validate, recipient)
        return d.addCallback(_verdict, recipient)


def _verdict(reply: Reply | None, recipient: Mailbox) -> Verdict:
    if reply is None:
        return CONTINUE
    if reply.is_permanent:
        return Verdict(Action.REJECT, reply, reason="refused by the router")
    if reply.is_transient:
        return Verdict(Action.TEMPFAIL, reply, reason="deferred by the router")
    raise ValueError(f"the router's validator answered {reply} for <{recipient}>,"
                     " which refuses nothing; it answers None to accept")


def _build_router_check(settings: Mapping[str, Any], context: Any) -> RouterCheck:
    return RouterCheck(context.component("router", context.config.router))


#: The ``router-check`` policy plugin: refuses at RCPT what the configured
#: router (``router`` in the config file) refuses from local data.
validate_maker = ComponentMaker(
    kind="policy",
    name="router-check",
    description="Refuses at RCPT the recipients that the router refuses from local data",
    factory=_build_router_check,
)
