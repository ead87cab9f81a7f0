"""
Holding every message: for a maintenance window, when mail should be
accepted and kept but not delivered yet, as Postfix's ``HOLD`` action does
for all mail. ``mailframe queue release`` lets it go.
"""

from __future__ import annotations

from typing import Any

from mailframe.components import ComponentMaker
from mailframe.policies._base import PolicyBase
from mailframe.verdict import Action, Verdict

__all__ = ["HOLD_REASON", "HoldAll", "hold_all_maker"]

#: Why a message is on hold, as ``mailframe queue list`` shows it.
HOLD_REASON = "every message is held (hold = true)"

_HOLD = Verdict(Action.HOLD, reason=HOLD_REASON)


class HoldAll(PolicyBase):
    """Puts every accepted message on hold at its end of data."""

    def end_of_data(self, envelope: Any, headers: bytes, message: Any) -> Verdict:
        return _HOLD


def _build(settings: Any, context: Any) -> HoldAll:
    return HoldAll()


#: The ``hold-all`` policy plugin; ``hold = true`` (``--hold``) adds it last.
hold_all_maker = ComponentMaker(
    kind="policy",
    name="hold-all",
    description="Accepts every message into hold, for a maintenance window",
    factory=_build,
)
