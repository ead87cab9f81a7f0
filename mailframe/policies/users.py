"""
Local recipients: which local parts of the local domains exist, and how a
local part becomes a mailbox directory.

The folding rule, applied before any lookup: a local part is folded to lower
case (``str.lower``), so ``John.Doe``, ``john.doe`` and ``JOHN.DOE`` are one
mailbox. ``postmaster`` in any case is always accepted for a local domain
(RFC 5321 §4.5.1), even if the users list lacks it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from mailframe.address import Mailbox
from mailframe.components import ComponentMaker
from mailframe.policies._base import CONTINUE, PolicyBase
from mailframe.policies._domains import domain_key
from mailframe.reply import Reply
from mailframe.verdict import Action, Verdict

__all__ = ["LocalRecipients", "load_users", "local_mailbox_name"]

# Letters, digits (any script), and these marks; no "/", "\\", "%", "!",
# "@", quotes, spaces or control characters; no leading dot; no "..".
_NAME = re.compile(r"(?:[^\W_]|[-_+=])(?:[^\W_]|[-_.+=])*\Z", re.UNICODE)


def local_mailbox_name(local_part: str) -> str | None:
    """
    The folded mailbox name for *local_part*, or ``None`` when it may not
    name a directory: it must start with a letter, digit, ``-``, ``_``,
    ``+`` or ``=``, hold only those and dots, and never ``..``. So ``/``,
    ``..``, NUL, control characters and a leading dot never reach the file
    system.
    """
    name = local_part.lower()
    if not name or len(name) > 255 or ".." in name or not _NAME.match(name):
        return None
    return name


def load_users(lines: Iterable[str]) -> frozenset[str]:
    """
    Read a users list: one local part per line; blank lines and lines
    starting with ``#`` are skipped.

    :raises ValueError: naming the line number of an unusable local part.
    """
    users = set()
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name = local_mailbox_name(text)
        if name is None:
            raise ValueError(f"line {number}: {text!r} is not a usable local part")
        users.add(name)
    return frozenset(users)


class LocalRecipients(PolicyBase):
    """
    Refuses unknown local recipients at RCPT with ``550 5.1.1``.

    :param domains: the local domains (a mapping of domain to Maildir root,
        or any iterable of domains).
    :param users: the known local parts, folded; ``None`` accepts every
        local part that can name a mailbox.
    """

    def __init__(self, domains: Mapping[str, Any] | Iterable[str],
                 users: frozenset[str] | None = None) -> None:
        self.domains = frozenset(domain_key(d) for d in domains)
        self.users = users

    def rcpt(self, client: Any, sender: Any, recipient: Any, parameters: Any) -> Verdict:
        assert isinstance(recipient, Mailbox)
        if recipient.domain and domain_key(recipient.domain) not in self.domains:
            return CONTINUE
        if recipient.is_postmaster:
            return CONTINUE
        name = local_mailbox_name(recipient.local_part)
        if name is None or (self.users is not None and name not in self.users):
            return Verdict(
                Action.REJECT,
                Reply(550, "5.1.1", f"<{recipient}>: Recipient address rejected:"
                      " User unknown in local recipient table"),
                reason="unknown user",
            )
        return CONTINUE


def _build_local_users(settings: Any, context: Any) -> LocalRecipients:
    config = context.config
    return LocalRecipients(dict(config.local_domains), config.local_users)


#: The ``local-users`` policy plugin: unknown local recipients get 550 at
#: RCPT.
local_users_maker = ComponentMaker(
    kind="policy",
    name="local-users",
    description="Refuses unknown users of the local domains at RCPT (550 5.1.1)",
    factory=_build_local_users,
)
