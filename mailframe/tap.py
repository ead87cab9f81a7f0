"""
``twistd mailframe``: the command-line options and the service they make.

With no options it runs the defaults: listen on 127.0.0.1:2525, queue in
``./mailframe-queue``, deliver mail for ``localhost`` into
``./Maildir/<local-part>/``, and relay for loopback clients only.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from mailframe.config import Config, load_config, settings_from
from mailframe.errors import ConfigError

__all__ = ["Options", "makeService"]


#: Config keys whose command-line option is named otherwise.
_OPTION_NAMES = {
    "nameservers": "--nameserver",
    "local_domains": "--local-domain",
    "relay_networks": "--relay-network",
    "auth_checker": "--auth",
}


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the mailframe mail transfer agent. Options given here override"
        " the same settings of the --config file."
    )
    optFlags: ClassVar[list[list[str | None]]] = [
        ["hold", None, "Put every accepted message on hold (for a maintenance window)."],
        ["unsafe-store", None,
         "Allow a queue store that loses mail when the process stops (store = memory)."],
    ]

    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", None, "A TOML config file."],
        ["hostname", None, None, "The server's name (default: this host's name)."],
        ["queue-dir", None, None, "Where the queue lives (default: ./mailframe-queue)."],
        ["local-users", None, None, "A file of known local users, one local part per line."],
        ["max-message-size", None, None, "The message size limit in octets."],
        ["max-recipients", None, None, "Recipients per message (at least 100)."],
        ["tls-cert", None, None, "A PEM certificate chain: offer STARTTLS on every listener."],
        ["tls-key", None, None, "The PEM private key of --tls-cert."],
        ["auth", None, None, "The AUTH checker: a twisted.cred string such as file:PATH."],
        ["smarthost", None, None, "HOST:PORT: relay all mail for other domains through it."],
        ["smtp-port", None, None, "The port of MX hosts (default 25)."],
        ["retry-schedule", None, None,
         "Comma-separated retry intervals; the last repeats (default 5m,10m,20m,40m,67m)."],
        ["store", None, None,
         "The queue store plugin (default spool; memory and discard need --unsafe-store)."],
        ["max-queue-lifetime", None, None,
         "How long a message may wait before it bounces (default 5d)."],
        ["delay-warning", None, None,
         "Tell the sender once after this delay, such as 4h; 0 never (default 4h)."],
        ["workers", None, None,
         "Worker processes that share the listeners and the queue (default 1)."],
        ["worker", None, None,
         "Internal: run as worker SLOT:FD[,FD...]@BOARD of a --workers supervisor."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["local-domain"] = []
        self["relay-network"] = []
        self["submission"] = []
        self["nameserver"] = []

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # Kept, so that a supervisor starts its workers with the same options.
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_listen(self, endpoint: str) -> None:
        """An endpoint to listen on (repeatable; default tcp:2525:interface=127.0.0.1)."""
        self["listen"].append(endpoint)

    def opt_local_domain(self, value: str) -> None:
        """DOMAIN=DIR: mail for DOMAIN goes to DIR/<local-part>/ (repeatable)."""
        self["local-domain"].append(value)

    def opt_relay_network(self, value: str) -> None:
        """A network (CIDR) that may relay, or none (repeatable; default loopback)."""
        self["relay-network"].append(value)

    def opt_submission(self, endpoint: str) -> None:
        """A submission listener (RFC 6409): STARTTLS, then AUTH, then MAIL (repeatable)."""
        self["submission"].append(endpoint)

    def opt_nameserver(self, value: str) -> None:
        """A DNS server, ADDRESS or ADDRESS:PORT (repeatable; default: the system's)."""
        self["nameserver"].append(value)

    def postOptions(self) -> None:
        values: dict[str, Any] = {}
        for key, option in (("listen", "listen"), ("local_domains", "local-domain"),
                            ("relay_networks", "relay-network"), ("submission", "submission"),
                            ("nameservers", "nameserver")):
            if self[option]:
                values[key] = self[option]
        for option in ("hostname", "queue-dir", "local-users", "max-message-size",
                       "max-recipients", "tls-cert", "tls-key", "smarthost", "smtp-port",
                       "retry-schedule", "max-queue-lifetime", "delay-warning", "store",
                       "workers"):
            if self[option] is not None:
                values[option.replace("-", "_")] = self[option]
        if self["auth"] is not None:
            values["auth_checker"] = self["auth"]
        if self["unsafe-store"]:
            values["unsafe_store"] = True
        if self["hold"]:
            values["hold"] = True
        try:
            base = load_config(self["config"]) if self["config"] else Config()
            self.config = settings_from(values, base)
            _check_plugins(self.config)
        except ConfigError as error:
            name = error.key if error.line else _OPTION_NAMES.get(
                error.key, "--" + error.key.replace("_", "-"))
            where = f" in {self['config']}, line {error.line}" if error.line else ""
            raise usage.UsageError(f"{name}{where}: {error.message}") from None
        if self["worker"] is not None:
            self.worker = _worker_option(self["worker"])


#: ``SLOT:FD,FD,...@BOARD``: a worker's slot, its inherited listening
#: sockets, and the supervisor's session board.
_WORKER = re.compile(r"(\d{1,4}):(\d+(?:,\d+)*)@(\d+)\Z")
#: What a worker runs: twistd, as the ``twistd`` script does, in a session
#: of its own (see :func:`worker_command`).
# A worker ignores SIGHUP until twistd installs its own handler (the
# supervisor passes every SIGHUP on, also to a worker still starting).
_TWISTD = ("import os, signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); os.setsid();"
           " from twisted.scripts.twistd import run; run()")


def _worker_option(value: str) -> tuple[str, list[int], int]:
    match = _WORKER.match(value)
    if match is None:
        raise usage.UsageError(f"--worker: SLOT:FD[,FD...]@BOARD, not {value!r}")
    fds = [int(fd) for fd in match.group(2).split(",")]
    return match.group(1), fds, int(match.group(3))


def logs_to_stdout(argv: Sequence[str]) -> bool:
    """
    Whether twistd, run with *argv*, writes its log to standard output:
    ``--logfile=-``, or ``--nodaemon`` with no other log destination.
    Any doubt says no.
    """
    try:
        end = list(argv).index("mailframe")
    except ValueError:
        return False
    options = list(argv[1:end])
    if any(o == "--syslog" or o.startswith("--logger") for o in options):
        return False
    logfile = None
    for index, option in enumerate(options):
        if option.startswith("--logfile="):
            logfile = option.split("=", 1)[1]
        elif option in ("--logfile", "-l") and index + 1 < len(options):
            logfile = options[index + 1]
        elif option.startswith("-l") and not option.startswith("--"):
            logfile = option[2:]
    if logfile is not None:
        return logfile == "-"
    return "-n" in options or "--nodaemon" in options


def worker_command(argv: Sequence[str], share_output: bool = False) -> Any:
    """
    The command of a worker: this Python running ``twistd`` in the
    foreground with the ``mailframe`` options *argv*, and ``--worker``.
    ``-P`` keeps the current directory off the module path. With
    *share_output*, the worker writes its log to the standard output it
    shares with the supervisor, each line marked with its slot.

    Each worker starts a session of its own (``setsid``): a signal to the
    supervisor's terminal or process group (Ctrl-C, a service manager's
    SIGTERM) reaches the supervisor alone, which stops the workers in
    order; and where the kernel schedules by session (Linux's autogroups),
    each worker gets a share of the CPU of its own, as a separately started
    server would.
    """

    log = ("--logger=mailframe.services.workers.worker_log_observer" if share_output
           else "--logfile=-")

    def command(slot: str, fds: Sequence[int], board: int) -> list[str]:
        return [sys.executable, "-P", "-c", _TWISTD, "--nodaemon", "--pidfile=",
                log, "mailframe", *argv,
                "--worker", f"{slot}:{','.join(map(str, fds))}@{board}"]

    return command


def _check_plugins(config: Config) -> None:
    """
    Check the plugins that *config* selects, and their settings, now: an
    error found here is printed as a usage error, where one found while
    the service is made would come after a traceback from twistd. A
    plugin module that fails to load is left for the service to report.

    :raises ConfigError: naming the key and its line.
    """
    from mailframe.config import ComponentContext
    from mailframe.registry import Components, discover

    registry = discover()
    if not registry.problems:
        Components(config, registry, ComponentContext(reactor=None, random=None)).check()


def makeService(options: Options) -> IService:
    """The mail service that *options* describe, on the global reactor."""
    from twisted.internet import reactor

    from mailframe.compose import build_mail_service, connections_for, raise_open_file_limit
    from mailframe.services.workers import ParentWatch, WorkerSupervisor

    config = options.config
    worker = getattr(options, "worker", None)
    limit = raise_open_file_limit()
    try:
        service = build_mail_service(
            config, reactor, connections_for(limit),
            worker=worker[0] if worker else None, sockets=worker[1] if worker else (),
            board=worker[2] if worker else None,
        )
        if worker is None and config.workers > 1:
            # The service above checked the whole config here, once; the
            # supervisor recovers its queue store before the workers start.
            # Where the supervisor logs to its standard output, so do the
            # workers, each itself: no line passes through the supervisor.
            shared = logs_to_stdout(sys.argv)
            supervisor = WorkerSupervisor(
                reactor, [listener.endpoint for listener in config.effective_listeners()],
                config.workers, worker_command(options.argv, shared), store=service.store,
                grace=config.shutdown_grace, share_output=shared,
            )
            supervisor.ready.addErrback(lambda _: _stop_failed(reactor))
            signal.signal(signal.SIGHUP,
                          lambda number, frame: reactor.callFromThread(  # type: ignore[attr-defined]
                              supervisor.signal_workers, "HUP"))
            return supervisor
    except ConfigError as error:
        where = f" in {options['config']}, line {error.line}" if error.line else ""
        raise usage.UsageError(f"{error.key}{where}: {error.message}") from None
    except ValueError as error:
        raise usage.UsageError(str(error)) from None
    if worker is not None:

        def orphaned() -> None:
            from twisted.internet.error import ReactorNotRunning

            try:
                reactor.stop()
            except ReactorNotRunning:
                pass  # stopping already

        ParentWatch(reactor, orphaned)
    service.ready.addErrback(lambda _: _stop_failed(reactor))
    # SIGHUP reloads the certificates (twistd leaves the signal to us).
    signal.signal(signal.SIGHUP,
                  lambda number, frame: reactor.callFromThread(  # type: ignore[attr-defined]
                      service.reload))
    return service


#: The exit status of ``twistd mailframe`` when the service could not start.
START_FAILED = 1


def _stop_failed(reactor: Any) -> None:
    """
    The service could not start (its queue store could not recover, or a
    listener could not listen; the reason is logged): stop, and exit with
    :data:`START_FAILED`, since twistd itself exits 0 after a stop.
    """

    def exit_failed() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(START_FAILED)

    reactor.addSystemEventTrigger("after", "shutdown", exit_failed)
    reactor.stop()
