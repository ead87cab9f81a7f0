"""Built-in policies: relay control and local recipients."""

from mailframe.policies.relay import RelayControl
from mailframe.policies.users import LocalRecipients, local_mailbox_name

__all__ = ["LocalRecipients", "RelayControl", "local_mailbox_name"]
