"""
Tests for sig2knock.daemon.service: the daemon wired from its parts, each a child service; what
it logs at start, its firewall at start and at stop, and the reload.
"""

import ipaddress
import os
from typing import List

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import firewall_service, service, startup
from sig2knock.daemon.admission import check_request
from sig2knock.daemon.capture import KnockCapture
from sig2knock.daemon.clock_watch import ClockWatch
from sig2knock.daemon.control_ports import ControlPortError, ControlPorts
from sig2knock.daemon.firewall_service import FirewallService
from sig2knock.daemon.grants import PortGranter
from sig2knock.daemon.refusals import RefusalSummary
from sig2knock.daemon.reload import LiveSettings
from sig2knock.daemon.replay import ReplayCache
from sig2knock.daemon.session import SessionRefused
from sig2knock.daemon.sessions import SessionTable
from sig2knock.daemon.status import StatusService
from sig2knock.firewall import FirewallError
from sig2knock.firewall.null import NoFirewall
from sig2knock.protocol import keys
from sig2knock.protocol.addresses import PROTO_TCP
from sig2knock.protocol.wire import KnockRequest
from sig2knock.test.common import SERVER_PUBLIC, StoppingReactor, write_config, write_users
from sig2knock.test.frames import FakeHandle
from sig2knock.test.test_firewall_service import WallClockFirewall


NOW = 1_800_000_000.0
CLIENT = ipaddress.ip_address("198.18.0.2")


class FakeAddressWatcher(Service):
    """
    Stands in for ``netif.AddressWatcher``: reports fixed addresses when started.
    """

    def __init__(self, reactor, interface, on_change) -> None:
        self.interface = interface
        self.on_change = on_change
        self.current = None
        self.opened = False

    def open(self) -> None:
        self.opened = True

    def startService(self) -> None:
        super().startService()
        self.current = frozenset({ipaddress.ip_address("127.0.0.1")})
        if self.on_change is not None:
            self.on_change(self.current)


class ScriptedFirewall(NoFirewall):
    """
    A firewall whose start the test controls.
    """

    name = "nftables"

    def __init__(self, starting: Deferred) -> None:
        self.starting = starting
        self.stops: List[str] = []

    def start(self) -> Deferred:
        return self.starting

    def stop(self) -> Deferred:
        self.stops.append("stop")
        return succeed(None)


class ServiceTests(SynchronousTestCase):
    """
    The service logs what it runs with, never key material, and closes the replay cache.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.events = []
        logger = Logger(observer=self.events.append)
        self.patch(service.Sig2knockService, "log", logger)
        self.patch(FirewallService, "log", logger)

    def daemon(self) -> service.Sig2knockService:
        prepared = startup.prepare(write_config(self.directory), None, NOW)
        return service.Sig2knockService(
            prepared, MemoryReactorClock(), watch_addresses=FakeAddressWatcher
        )

    def test_startLogsConfiguration(self) -> None:
        daemon = self.daemon()
        daemon.startService()
        self.addCleanup(daemon.stopService)
        event, weak, no_firewall = self.events
        self.assertIn("no firewall", no_firewall["log_format"])
        # The tests' users file is made with a cheap KDF: the start says so, naming them.
        self.assertEqual((weak["log_level"].name, weak["names"]), ("warn", "alice"))
        self.assertIn("below the default cost", weak["log_format"])
        daemon.reactor.advance(0)
        self.assertEqual(self.events[-1]["log_format"], "sig2knock ready")
        self.assertEqual(event["port"], 1001)
        self.assertEqual(event["count"], 1)
        self.assertEqual(event["identity"], daemon.prepared.identity.fingerprint)
        secret = daemon.prepared.identity.private.seed.hex()
        for logged in self.events:
            self.assertNotIn(secret, repr(logged))

    def test_warnsWithoutUsers(self) -> None:
        write_users(os.path.join(self.directory, "user.txt"), {})
        daemon = self.daemon()
        daemon.startService()
        self.addCleanup(daemon.stopService)
        self.assertEqual([e["log_level"].name for e in self.events], ["info", "warn", "warn"])
        self.assertIn("sig2knockd_useradd", self.events[1]["log_format"])

    def test_stopClosesReplayCache(self) -> None:
        daemon = self.daemon()
        daemon.startService()
        self.successResultOf(daemon.stopService())
        self.assertFalse(daemon.prepared.replay_cache.file.is_open)

    def test_partsAreChildServicesInDataPathOrder(self) -> None:
        """
        Every part is a child service, started in the order of the data path and stopped in
        the reverse order (the replay cache closes last).
        """
        daemon = self.daemon()
        self.addCleanup(daemon.prepared.replay_cache.close)
        kinds = [type(child) for child in daemon]
        self.assertEqual(kinds, [ReplayCache, FirewallService, PortGranter, KnockCapture,
                                 SessionTable, ControlPorts, StatusService, RefusalSummary])
        self.assertIs(daemon.sessions.capture, list(daemon)[3])
        with_wall_clock_grants = service.Sig2knockService(
            daemon.prepared, MemoryReactorClock(), watch_addresses=FakeAddressWatcher,
            firewall=WallClockFirewall(),
        )
        parts = list(with_wall_clock_grants)
        self.assertIsInstance(parts[2], ClockWatch, "iptables' grants need the clock watched")
        self.assertEqual(parts[2].stepped_back, with_wall_clock_grants.firewall.clock_stepped_back)
        # The watcher of the capture interface's addresses belongs to the capture.
        ((capture_watcher,),) = [list(daemon.sessions.capture)]
        self.assertEqual(capture_watcher.interface, daemon.prepared.interface)
        self.assertEqual(capture_watcher.on_change, daemon.sessions.capture.set_destinations)
        self.assertEqual(daemon.sessions.granter, daemon.granter)

    def test_failedOpenLeavesNothingOpen(self) -> None:
        """
        When the control port cannot be bound, the capture handle opened before it is closed
        again.
        """
        handle = FakeHandle()
        prepared = startup.prepare(write_config(self.directory), None, NOW)
        self.addCleanup(prepared.replay_cache.close)
        daemon = service.Sig2knockService(
            prepared,
            MemoryReactorClock(),
            open_handle=lambda interface: handle,
            watch_addresses=FakeAddressWatcher,
        )

        def refuse() -> None:
            raise ControlPortError("UDP_PORT 1001: cannot listen on ::: in use")

        self.patch(daemon.control, "open", refuse)
        self.assertRaises(ControlPortError, daemon.open)
        self.assertTrue(handle.closed)
        self.assertEqual(daemon.reactor.getReaders(), [])

    def test_controlOpensWithTheServersIdentity(self) -> None:
        """
        The control protocol opens P1s with the identity loaded at start, and reads the users
        in force.
        """
        daemon = self.daemon()
        self.addCleanup(daemon.prepared.replay_cache.close)
        protocol = daemon.control.protocol()
        self.assertIs(protocol.identity, daemon.prepared.identity)
        self.assertEqual(keys.public_bytes(protocol.identity.private), SERVER_PUBLIC)
        self.assertIs(protocol.users(), daemon.settings.users)


class ServiceFirewallTests(SynchronousTestCase):
    """
    The daemon grants nothing before its rules are in place, and stops when they cannot be.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.prepared = startup.prepare(write_config(directory), None, NOW)
        self.addCleanup(self.prepared.replay_cache.close)
        self.reactor = StoppingReactor()
        self.patch(firewall_service, "start_failures", [])
        self.events: List[dict] = []
        logger = Logger(observer=self.events.append)
        self.patch(service.Sig2knockService, "log", logger)
        self.patch(FirewallService, "log", logger)

    def daemon(self, starting: Deferred) -> service.Sig2knockService:
        return service.Sig2knockService(
            self.prepared,
            self.reactor,
            watch_addresses=FakeAddressWatcher,
            firewall=ScriptedFirewall(starting),
        )

    def test_noGrantBeforeRulesInPlace(self) -> None:
        starting: Deferred = Deferred()
        daemon = self.daemon(starting)
        daemon.startService()
        failure = self.failureResultOf(
            daemon.granter.open(ipaddress.ip_address("127.0.0.1"), "alice"), SessionRefused
        )
        self.assertEqual(failure.value.reason, "firewall-not-ready")
        starting.callback(None)
        self.assertTrue(daemon.firewall.ready)
        self.reactor.clock.advance(0)
        self.assertEqual(self.events[-1]["log_format"], "sig2knock ready")

    def test_failedRulesStopTheDaemon(self) -> None:
        daemon = self.daemon(fail(FirewallError("nft: not found; install nftables")))
        daemon.startService()
        self.assertEqual(self.reactor.stopped, 1)
        self.assertEqual(firewall_service.start_failures, ["nft: not found; install nftables"])
        self.assertFalse(daemon.firewall.ready)
        self.reactor.clock.advance(0)
        self.assertNotIn("sig2knock ready", [e["log_format"] for e in self.events])
        self.successResultOf(daemon.stopService())
        self.assertEqual(daemon.firewall.firewall.stops, [],
                         "rules never installed: nothing to stop")

    def test_cleanStopRemovesGrants(self) -> None:
        daemon = self.daemon(succeed(None))
        daemon.startService()
        self.successResultOf(daemon.stopService())
        self.assertEqual(daemon.firewall.firewall.stops, ["stop"])

    def test_stopBeforeReadyIsSaidCancelsIt(self) -> None:
        """
        A daemon stopped between its rules standing and the next reactor turn never says
        "ready", and leaves no timer behind.
        """
        daemon = self.daemon(succeed(None))
        daemon.startService()
        self.successResultOf(daemon.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(0)
        self.assertNotIn("sig2knock ready", [e["log_format"] for e in self.events])

    def test_failedStopOfAPartIsLoggedAndTheRestStops(self) -> None:
        """
        A part whose stop fails is logged with its name and traceback; every other part still
        stops, and the daemon's stop completes.
        """
        daemon = self.daemon(succeed(None))
        daemon.startService()
        self.patch(daemon.granter, "stopService", lambda: fail(RuntimeError("stuck")))
        self.successResultOf(daemon.stopService())
        (failed,) = [e for e in self.events if e.get("log_failure")]
        self.assertEqual(failed["part"], "PortGranter")
        self.assertTrue(failed["log_failure"].check(RuntimeError))
        self.assertEqual(daemon.firewall.firewall.stops, ["stop"])
        self.assertFalse(daemon.prepared.replay_cache.running)


class ServiceReloadTests(SynchronousTestCase):
    """
    ``Sig2knockService.reload`` on real files.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.config_path = write_config(self.directory)
        prepared = startup.prepare(self.config_path, None, NOW)
        self.daemon = service.Sig2knockService(
            prepared, MemoryReactorClock(), watch_addresses=FakeAddressWatcher
        )
        self.events: List[dict] = []
        self.patch(LiveSettings, "log", Logger(observer=self.events.append))
        self.addCleanup(self.daemon.prepared.replay_cache.close)

    def test_newUsersAndSettingsApply(self) -> None:
        write_users(
            os.path.join(self.directory, "user.txt"),
            {"alice": "alice's password", "bob": "bob's password"},
        )
        write_config(self.directory, {"KNOCK_COUNT": "6", "SINGLECONN_PORTOPEN_TIME": "5"})
        self.daemon.reload()
        self.assertEqual(sorted(self.daemon.settings.users.names()), ["alice", "bob"])
        # One settings object: the session table and the granter read the new values.
        self.assertIs(self.daemon.sessions.settings, self.daemon.settings)
        self.assertIs(self.daemon.granter.settings, self.daemon.settings)
        self.assertEqual(self.daemon.settings.config.knock_count, 6)
        self.assertEqual(self.daemon.settings.config.singleconn_portopen_time, 5)
        self.assertIn("KNOCK_COUNT", self.events[-1]["applied"])
        # The next P1 is held to the new count: four knocks are refused now.
        protocol = self.daemon.control.protocol()
        self.assertIs(protocol.settings, self.daemon.settings)
        request = KnockRequest(b"S" * 16, 0, PROTO_TCP, (1111, 2222, 3333, 4444))
        error = self.assertRaises(
            SessionRefused, check_request, protocol.settings.config, CLIENT, "alice", request
        )
        self.assertEqual(error.reason, "knock-count")
        check_request(
            protocol.settings.config, CLIENT, "alice", request._replace(ports=tuple(range(1, 7)))
        )

    def test_usersTakenAwayLoseTheirSessions(self) -> None:
        """
        A reload that removes a user, or gives one another key, ends their sessions (the
        session table's ``end_users``); a user added or kept as they were loses nothing.
        """
        ended: List[List[str]] = []
        self.patch(self.daemon.sessions, "end_users", lambda users: ended.append(sorted(users)))
        users = os.path.join(self.directory, "user.txt")
        write_users(users, {"alice": "alice's password", "bob": "bob's password"})
        self.daemon.reload()
        write_users(users, {"alice": "alice's new password", "carol": "carol's password"})
        self.daemon.reload()
        write_config(self.directory, {"KNOCK_COUNT": "many"})  # refused: nothing taken away
        self.daemon.reload()
        self.assertEqual(ended, [["alice", "bob"]])

    def test_servicesTakenAwayEndTheirSessions(self) -> None:
        """
        A reload that removes a service, points it elsewhere or closes it to a user ends the
        sessions it took away, with their grants; the others go on.
        """
        path = os.path.join(self.directory, "sig2knockd.conf")

        def with_sections(sections: str) -> None:
            write_config(self.directory)
            with open(path, "a", encoding="utf-8") as config_file:
                config_file.write(sections)

        sections = (
            "[service rdp]\nFORWARD_TO_IP = 198.19.0.2\nFORWARD_TO_PORT = 3389\nALLOW = alice\n"
            "[service db]\nFORWARD_TO_IP = 198.19.0.3\nFORWARD_TO_PORT = 5432\nALLOW = *\n"
        )
        session_events: List[dict] = []
        self.patch(SessionTable, "log", Logger(observer=session_events.append))
        with_sections(sections)
        self.daemon.reload()
        catalog = self.daemon.settings.config.catalog
        sessions = self.daemon.sessions
        for number, name in enumerate(("", "rdp", "db")):
            request = KnockRequest(bytes([65 + number]) * 16, 0, PROTO_TCP, (1, 2, 3, 4))
            sessions.open(CLIENT, "alice", request, service=catalog.services[name])
        with_sections(sections.replace("ALLOW = alice", "ALLOW = bob"))
        self.daemon.reload()
        self.assertEqual([session.service.label for session in sessions.live()],
                         ["default", "db"])
        with_sections("")
        self.daemon.reload()
        self.assertEqual([session.service.label for session in sessions.live()], ["default"])
        ended = [event for event in session_events if "reason" in event]
        self.assertEqual([event["reason"] for event in ended],
                         ["alice may no longer reach service rdp", "service db was removed"])

    def test_brokenFileKeepsTheRunningConfiguration(self) -> None:
        write_config(self.directory, {"KNOCK_COUNT": "many"})
        self.daemon.reload()
        self.assertEqual(self.daemon.settings.config.knock_count, 4)
        self.assertEqual(self.daemon.settings.users.names(), ["alice"])
        (event,) = self.events
        self.assertEqual(event["log_level"].name, "error")
        self.assertIn("KNOCK_COUNT", event["error"])

    def test_openUsersFileRefused(self) -> None:
        os.chmod(os.path.join(self.directory, "user.txt"), 0o644)
        self.daemon.reload()
        self.assertEqual(self.daemon.settings.users.names(), ["alice"])
        self.assertIn("chmod 600", self.events[-1]["error"])

    def test_restartOnlyChangeWaits(self) -> None:
        write_config(self.directory, {"UDP_PORT": "2002"})
        self.daemon.reload()
        self.assertEqual(self.daemon.settings.config.udp_port, 1001)
        self.assertEqual(self.events[-1]["pending"], "UDP_PORT")
