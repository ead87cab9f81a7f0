"""Twisted adapters that drive the sans-I/O core over real transports."""

from mailframe.protocols._chain import ask_policies
from mailframe.protocols.server import SMTPServerFactory, SMTPServerProtocol

__all__ = ["SMTPServerFactory", "SMTPServerProtocol", "ask_policies"]
