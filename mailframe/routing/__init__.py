"""Built-in routers."""

from mailframe.routing.local import LocalRouter

__all__ = ["LocalRouter"]
