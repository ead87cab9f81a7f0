"""Comparing domains: in any case, and internationalized ones by A-label."""

from __future__ import annotations

import idna

__all__ = ["domain_key"]


def domain_key(domain: str) -> str:
    """
    The form in which two domains compare equal: lower case, with every
    U-label turned into its A-label (RFC 5890), so that ``Bücher.example``
    and ``xn--bcher-kva.example`` are one domain (RFC 6531 §3.2). An
    address literal, or a name IDNA refuses, is only lower-cased.
    """
    lowered = domain.lower()
    if lowered.isascii():
        return lowered
    try:
        return idna.encode(lowered, uts46=True).decode("ascii")
    except idna.IDNAError:
        return lowered
