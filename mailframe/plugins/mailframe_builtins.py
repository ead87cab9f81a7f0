"""
mailframe's own components, as plugins: found by the same
``getPlugins(IComponentMaker, mailframe.plugins)`` as everyone else's.
"""

from mailframe.policies.relay import relay_control_maker
from mailframe.policies.users import local_users_maker
from mailframe.routing.local import local_maker
from mailframe.stores.memory import memory_maker
from mailframe.stores.spool import spool_maker
from mailframe.transports.maildir import maildir_maker
from mailframe.transports.smtp import smtp_maker

__all__ = [
    "local_maker",
    "local_users_maker",
    "maildir_maker",
    "memory_maker",
    "relay_control_maker",
    "smtp_maker",
    "spool_maker",
]
