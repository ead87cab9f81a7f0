# mail.tac: mailframe inside a Twisted application of your own.
# Run it with  twistd -ny mail.tac
from acme import SenderDomainBlock
from twisted.application.internet import TimerService
from twisted.application.service import Application
from twisted.internet import reactor
from twisted.logger import Logger

from mailframe.compose import build_mail_service, connections_for, raise_open_file_limit
from mailframe.config import settings_from
from mailframe.envelope import EntryState

log = Logger(namespace="acme")

# The same keys as in a config file, checked the same way.
config = settings_from(
    {
        "hostname": "mx.example.com",
        "listen": ["tcp:2525:interface=127.0.0.1"],
        "local_domains": {"localhost": "Maildir", "example.com": "/var/mail/example.com"},
    }
)
application = Application("acme")

mail = build_mail_service(
    config,
    reactor,
    connections_for(raise_open_file_limit()),
    policies=[SenderDomainBlock(["spam.example"])],
)
mail.setServiceParent(application)
# If the queue cannot be recovered, nothing is served: stop, as twistd
# mailframe does.
mail.ready.addErrback(lambda _: reactor.stop())


# Another service of the same application: report the queue every minute.
def report_queue():
    def show(stats):
        log.info(
            "Queue: {deferred} deferred, {hold} on hold",
            deferred=stats[EntryState.DEFERRED],
            hold=stats[EntryState.HOLD],
        )

    return mail.store.stats().addCallback(show)


TimerService(60, report_queue).setServiceParent(application)
