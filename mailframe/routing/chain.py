"""
The ``chain`` router: several routers asked in order, the first that
decides a recipient routes it.

A router *decides* a recipient when its
:meth:`~mailframe.interfaces.IRouter.route` answers a non-empty list; an
empty list means "not mine", and the next router is asked. A router that
fails (raises, or its Deferred fails) ends the routing of that recipient
with the failure, which the queue runner takes as transient: a later
router is never asked in its place, since it might send the mail where it
must not go. When no router decides, the recipient is refused with
:data:`NO_ROUTE`, ``550 5.4.4``.

The chain is an :class:`~mailframe.interfaces.IRecipientValidator` too, so
that what it would refuse from local data is refused at RCPT. Its
:meth:`ChainRouter.validate` walks the routers in the same order, without
routing anything:

1. A router that provides :class:`IPartialRouter` and does not decide the
   recipient (its :meth:`~IPartialRouter.decides` is false) is skipped.
2. The first router that is not skipped answers for the chain: its own
   :meth:`~mailframe.interfaces.IRecipientValidator.validate` when it
   provides :class:`~mailframe.interfaces.IRecipientValidator`, and
   otherwise "accept". A router that does not provide
   :class:`IPartialRouter` is taken to decide every recipient, as the
   ``mx``, ``smarthost`` and ``local`` routers (and a chain) do.
3. When every router is skipped, the recipient is refused with
   :data:`NO_ROUTE`, as routing would refuse it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import Interface, implementer

from mailframe.address import Mailbox
from mailframe.components import ComponentMaker, Setting, SettingError
from mailframe.envelope import Route
from mailframe.interfaces import IRecipientValidator, IRouter
from mailframe.reply import Reply

__all__ = [
    "NO_ROUTE_STATUS",
    "ChainRouter",
    "IPartialRouter",
    "chain_maker",
    "no_route",
]

RouteTriple = tuple[Mailbox, Mailbox, Route]

#: The enhanced status of a recipient that no router decides: "Unable to
#: route" (RFC 3463 §3.5, X.4.4), permanent since the routers' data, not
#: the network, has no place for it.
NO_ROUTE_STATUS = "5.4.4"


def no_route(recipient: Mailbox) -> Reply:
    """
    The refusal of *recipient* when no router decides it: ``550 5.4.4``,
    550 being a reply that RCPT may give (RFC 5321 §4.3.2).
    """
    return Reply(550, NO_ROUTE_STATUS, f"<{recipient}>: Recipient address rejected:"
                 " no route to this recipient")


class IPartialRouter(Interface):
    """
    A router that routes only some recipients, and answers an empty list
    for the others, and that can tell which from local data alone. A
    :class:`ChainRouter` asks it before asking its
    :class:`~mailframe.interfaces.IRecipientValidator`, so that a router
    later in the chain checks the recipients this one leaves to it.
    """

    def decides(recipient: Any) -> Any:
        """
        Whether :meth:`~mailframe.interfaces.IRouter.route` routes
        *recipient* (answers a non-empty list): a ``bool``, or a Deferred
        firing with one. It never looks anything up in DNS.

        :param recipient: a :class:`~mailframe.address.Mailbox`.
        """


@implementer(IRouter, IRecipientValidator)
class ChainRouter:
    """
    Asks *routers* in order; the first that decides a recipient routes it.

    :param routers: the routers, each an
        :class:`~mailframe.interfaces.IRouter`; any may answer with a
        Deferred that fires later.
    :raises ValueError: when *routers* is empty.
    """

    def __init__(self, routers: Iterable[Any]) -> None:
        self.routers: tuple[Any, ...] = tuple(routers)
        if not self.routers:
            raise ValueError("a chain needs at least one router")

    def route(self, envelope: Any, recipient: Mailbox) -> Deferred[list[RouteTriple]]:
        return Deferred.fromCoroutine(self._route(envelope, recipient))

    async def _route(self, envelope: Any, recipient: Mailbox) -> list[RouteTriple]:
        for router in self.routers:
            routed: Sequence[RouteTriple] = await maybeDeferred(
                router.route, envelope, recipient)
            if routed:
                return list(routed)
        reply = no_route(recipient)
        return [(recipient, recipient, Route("reject", reject=reply))]

    def validate(self, recipient: Mailbox) -> Deferred[Reply | None]:
        """See the module's description: the first router that decides answers."""
        return Deferred.fromCoroutine(self._validate(recipient))

    async def _validate(self, recipient: Mailbox) -> Reply | None:
        for router in self.routers:
            if IPartialRouter.providedBy(router):
                decides: bool = await maybeDeferred(router.decides, recipient)
                if not decides:
                    continue
            if IRecipientValidator.providedBy(router):
                reply: Reply | None = await maybeDeferred(router.validate, recipient)
                return reply
            return None
        return no_route(recipient)

    def reload(self) -> None:
        """
        Reload every chained router that can reload (such as a ``table``
        router, on SIGHUP): call its ``reload()``.
        """
        for router in self.routers:
            reload: Callable[[], object] | None = getattr(router, "reload", None)
            if callable(reload):
                reload()


def _build_chain(settings: Mapping[str, Any], context: Any) -> ChainRouter:
    names: tuple[str, ...] = settings["routers"]
    if not names:
        raise SettingError("routers", "name at least one router")
    if chain_maker.name in names:
        raise SettingError("routers", "a chain cannot hold the chain router itself")
    return ChainRouter(context.component("router", name) for name in names)


#: The ``chain`` router plugin: the routers named in ``routers``, asked in
#: order.
chain_maker = ComponentMaker(
    kind="router",
    name="chain",
    description="Several routers asked in order; the first that decides a recipient routes it",
    factory=_build_chain,
    schema={
        "routers": Setting(
            "strings", None,
            'The routers to ask, by plugin name, in order, such as ["table", "local"].',
            required=True,
        ),
    },
)
