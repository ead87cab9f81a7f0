# acme.tac: run with  twistd -ny acme.tac
from twisted.application.service import Application
from twisted.internet import reactor

from acme_service import build_acme_service
from mailframe.config import settings_from

config = settings_from({"hostname": "mx.example.com"})
application = Application("acme-mail")
build_acme_service(config, reactor).setServiceParent(application)
