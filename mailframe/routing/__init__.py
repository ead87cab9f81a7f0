"""Built-in routers, and the DNS resolver and MX lookup they use."""

from mailframe.routing._dnserrors import DNSNameNotFound, DNSTemporaryError
from mailframe.routing.local import LocalRouter
from mailframe.routing.mx import (
    MXHost,
    NoMailHost,
    NoReachableHost,
    NullMX,
    RoutingLoop,
    resolve_mx,
)
from mailframe.routing.resolver import DNSResolver

__all__ = [
    "DNSNameNotFound",
    "DNSResolver",
    "DNSTemporaryError",
    "LocalRouter",
    "MXHost",
    "NoMailHost",
    "NoReachableHost",
    "NullMX",
    "RoutingLoop",
    "resolve_mx",
]
