"""
The twistd plugin of mailframe. It names :mod:`mailframe.tap` as a string, so
that listing plugins imports nothing of mailframe.
"""

from twisted.application.service import ServiceMaker

mailframe = ServiceMaker(
    "mailframe",
    "mailframe.tap",
    "A pluggable mail transfer agent (SMTP server, queue and delivery)",
    "mailframe",
)
