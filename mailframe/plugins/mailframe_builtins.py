"""
mailframe's own components, as plugins: found by the same
``getPlugins(IComponentMaker, mailframe.plugins)`` as everyone else's.
"""

from mailframe.policies.dnsbl import dnsbl_maker
from mailframe.policies.hold import hold_all_maker
from mailframe.policies.limits import limits_maker
from mailframe.policies.relay import relay_control_maker
from mailframe.policies.users import local_users_maker
from mailframe.policies.validate import validate_maker
from mailframe.routing.chain import chain_maker
from mailframe.routing.local import local_maker
from mailframe.routing.routers import mx_maker, smarthost_maker
from mailframe.routing.table import table_maker
from mailframe.stores.discard import discard_maker
from mailframe.stores.memory import memory_maker
from mailframe.stores.postgres import postgres_maker
from mailframe.stores.spool import spool_maker
from mailframe.transports.lmtp import lmtp_maker
from mailframe.transports.maildir import maildir_maker
from mailframe.transports.pipe import pipe_maker
from mailframe.transports.smtp import smtp_maker

__all__ = [
    "chain_maker",
    "discard_maker",
    "dnsbl_maker",
    "hold_all_maker",
    "limits_maker",
    "lmtp_maker",
    "local_maker",
    "local_users_maker",
    "maildir_maker",
    "memory_maker",
    "mx_maker",
    "pipe_maker",
    "postgres_maker",
    "relay_control_maker",
    "smarthost_maker",
    "smtp_maker",
    "spool_maker",
    "table_maker",
    "validate_maker",
]
