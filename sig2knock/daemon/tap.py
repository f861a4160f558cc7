"""
The twistd plugin's options and service maker: ``twistd -n sig2knock --config FILE [-i IFACE]``.
"""

import sys
import time
from typing import Any, Callable, Optional

from twisted.application.service import IService
from twisted.python import usage

from sig2knock.daemon.blocking import ThreadWorker
from sig2knock.daemon.capture import CaptureError, InterfaceNotUp
from sig2knock.daemon.control_ports import ControlPortError
from sig2knock.daemon.identity import IdentityError
from sig2knock.daemon.netif import InterfaceError
from sig2knock.daemon.replay import ReplayCacheError
from sig2knock.daemon.service import Sig2knockService
from sig2knock.daemon.settings import ConfigError, default_config_path
from sig2knock.daemon.startup import InterfaceNotReady, prepare
from sig2knock.daemon.users import UsersError
from sig2knock.firewall import FirewallError

STARTUP_ERRORS = (
    ConfigError,
    UsersError,
    ReplayCacheError,
    IdentityError,
    CaptureError,
    ControlPortError,
    InterfaceError,
    FirewallError,
)


class Options(usage.Options):
    """
    Command-line options of the ``sig2knock`` twistd plugin.
    """

    synopsis = "[--config FILE] [-i IFACE]"
    longdesc = (
        "Run the sig2knock port-knocking daemon. It reads its settings from the configuration"
        " file (KEY = VALUE lines, see the README) and its users from USERS_FILE, which must be"
        " owned by the daemon's user and closed to group and others (chmod 600). Every problem"
        " in either stops the daemon before anything is opened, with one line naming the file,"
        " the line and the key. Add users with sig2knockd_useradd."
    )
    def opt_version(self) -> None:
        """
        Display sig2knock's version (and Twisted's) and exit.
        """
        from twisted import copyright

        from sig2knock import __version__

        print(f"sig2knock {__version__} (Twisted {copyright.version})")
        sys.exit(0)

    optParameters = [
        [
            "config",
            "c",
            default_config_path(),
            "Configuration file (default: etc/sig2knockd.conf at the top of the checkout this"
            " code runs from, else /etc/sig2knock/sig2knockd.conf).",
        ],
        [
            "interface",
            "i",
            None,
            "Capture interface; overrides INTERFACE and PKTFILTER_INTERFACE in the file.",
        ],
    ]


def makeService(options: Any, reactor: Optional[Any] = None) -> IService:
    """
    Build the daemon's ``MultiService`` from the plugin's options.

    A configuration, users file, state, capture or control port problem is written to stderr as
    one line and ends the process with exit status 1, before twistd starts anything.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    try:
        return open_daemon(options["config"], options["interface"], reactor)
    except STARTUP_ERRORS as error:
        sys.stderr.write(f"sig2knockd: {error}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


def open_daemon(
    config_path: str,
    interface: Optional[str],
    reactor: Any,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Sig2knockService:
    """
    Load everything and open the capture handle and the control port, before twistd starts
    anything, so a missing capability or a port in use stops the daemon with one line.

    At boot the capture interface may not exist or be up yet: that is waited for, up to
    ``INTERFACE_WAIT`` seconds, checking once a second (the reactor is not running yet, so the
    wait blocks nothing).
    """
    started = monotonic()
    announced = False
    while True:
        prepared = None
        try:
            prepared = prepare(
                config_path,
                interface,
                reactor.seconds(),
                worker=ThreadWorker(reactor, "sig2knock-replay-cache"),
            )
            daemon = Sig2knockService(prepared, reactor)
            daemon.open()
            return daemon
        except (InterfaceNotReady, InterfaceNotUp) as error:
            if prepared is not None:
                prepared.replay_cache.close()
            if isinstance(error, InterfaceNotReady):
                wait = error.wait
            else:
                assert prepared is not None  # the capture opens after everything is loaded
                wait = prepared.config.interface_wait
            if monotonic() - started >= wait:
                raise
            if not announced:
                sys.stderr.write(f"sig2knockd: waiting up to {wait:g}s: {error}\n")
                sys.stderr.flush()
                announced = True
            sleep(1.0)
        except BaseException:
            if prepared is not None:  # nothing else is open: the daemon undid its own part
                prepared.replay_cache.close()
            raise
