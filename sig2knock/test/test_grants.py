"""
Tests for sig2knock.daemon.grants: a grant opens a random free port in the range for the
knocking address alone, tells its owner when its one connection came, and closes its listener
and its firewall rule when its owner closes it; a firewall that refuses closes everything.
"""

import ipaddress
import random
from typing import Any, List, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.catalog import EVERY_USER, HiddenService
from sig2knock.daemon.grants import OpenGrant, PortGranter
from sig2knock.daemon.session import SessionRefused
from sig2knock.firewall import FirewallError
from sig2knock.test.common import connect, live_settings


CLIENT = ipaddress.ip_address("198.18.0.2")
CLIENT6 = ipaddress.ip_address("2001:db8::2")


class RecordingPort:
    """
    A listening port that records whether it was stopped.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopped = False

    def stopListening(self) -> None:
        self.stopped = True


class GranterReactor(MemoryReactorClock):
    """
    A memory reactor whose ``listenTCP`` refuses the ports in ``busy`` like a real one would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.busy: set = set()
        self.ports: List[RecordingPort] = []

    def listenTCP(self, port, factory, backlog=50, interface=""):  # type: ignore[no-untyped-def]
        if port in self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        self.tcpServers.append((port, factory, backlog, interface))
        recording = RecordingPort(port)
        self.ports.append(recording)
        return recording


class RecordingFirewall:
    """
    Stands for the daemon's ``FirewallService``: records grants and revokes, and can refuse
    (as the backend does, or as the service does before its rules are in place).
    """

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.refusal: Optional[SessionRefused] = None
        self.calls: List[tuple] = []
        self.targets: List[Any] = []
        self.pending: Optional[Deferred] = None

    def grant(self, source, port, deadline, target=None):  # type: ignore[no-untyped-def]
        self.calls.append(("grant", source, port, deadline))
        self.targets.append(target)
        if self.refusal is not None:
            return fail(self.refusal)
        if self.refuse:
            return fail(FirewallError("nft said no"))
        return self.pending if self.pending is not None else succeed(None)

    def revoke(self, source, port, target=None):  # type: ignore[no-untyped-def]
        self.calls.append(("revoke", source, port))
        self.targets.append(target)
        return succeed(None)

    def not_ready(self) -> Optional[SessionRefused]:
        if self.refusal is not None and self.refusal.reason == "firewall-not-ready":
            return self.refusal
        return None


class PortGranterTests(SynchronousTestCase):
    """
    Grants open a random free port in the range and close it after one connection or on time.
    """

    def setUp(self) -> None:
        self.reactor = GranterReactor()
        self.reactor.advance(1000)
        self.firewall = RecordingFirewall()
        self.events: List[dict] = []
        self.patch(OpenGrant, "log", Logger(observer=self.events.append))
        self.granter = self.make()

    def make(self, **settings) -> PortGranter:  # type: ignore[no-untyped-def]
        return PortGranter(
            self.reactor,
            live_settings(assign_port_range=(40000, 40009), **settings),
            self.firewall,
            chooser=random.Random(7),
        )

    def open(self, source=CLIENT) -> OpenGrant:  # type: ignore[no-untyped-def]
        return self.successResultOf(self.granter.open(source, "alice"))

    def closed_why(self) -> List[str]:
        return [event["why"] for event in self.events if "why" in event]

    def test_grantListensInRange(self) -> None:
        grant = self.open()
        self.assertTrue(40000 <= grant.port <= 40009)
        self.assertEqual(grant.deadline, 1030)
        ((port, factory, _backlog, interface),) = self.reactor.tcpServers
        self.assertEqual((port, interface), (grant.port, "0.0.0.0"))
        self.assertEqual(factory.source, CLIENT)
        self.assertEqual((factory.host, factory.port), ("127.0.0.1", 22))

    def test_ipv6ClientListensOnIPv6(self) -> None:
        self.open(CLIENT6)
        self.assertEqual(self.reactor.tcpServers[0][3], "::")

    def test_busyPortSkipped(self) -> None:
        self.reactor.busy = set(range(40000, 40009))
        grant = self.open()
        self.assertEqual(grant.port, 40009)

    def test_fullRangeRefused(self) -> None:
        self.reactor.busy = set(range(40000, 40010))
        failure = self.failureResultOf(self.granter.open(CLIENT, "alice"), SessionRefused)
        self.assertEqual(failure.value.reason, "no-free-port")
        self.assertTrue(failure.value.severe, "a full range is for the operator to look into")

    def test_portsNeverShared(self) -> None:
        ports = {self.open().port for _ in range(10)}
        self.assertEqual(len(ports), 10)

    def test_unusedPortClosesWhenExpired(self) -> None:
        """
        The granter sets no timer: the grant's owner expires it at its deadline (the session
        table's tests time that), which stops its listener.
        """
        grant = self.open()
        (listening,) = self.reactor.ports
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(30)
        self.assertFalse(listening.stopped)
        grant.expire()
        self.assertTrue(listening.stopped)
        self.assertEqual(self.granter.open_grants, {})
        self.assertEqual(self.closed_why(), ["unused, open time over"])
        grant.close("again")  # closing twice does nothing
        self.assertEqual(self.closed_why(), ["unused, open time over"])

    def test_firstConnectionClosesListener(self) -> None:
        grant = self.open()
        (listening,) = self.reactor.ports
        factory = self.reactor.tcpServers[0][1]
        connect(factory, "198.18.0.99")
        self.assertFalse(listening.stopped, "an intruder must not use the grant up")
        connect(factory, "198.18.0.2")
        self.assertTrue(listening.stopped)
        self.assertNotIn(grant.port, self.granter.open_grants)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.closed_why(), ["used"])

    def test_usedGrantReported(self) -> None:
        """
        The grant's one connection fires its ``used`` (an intruder's does not), so the session
        table can forget the session.
        """
        used: List[object] = []
        grant = self.open()
        grant.used.addCallback(used.append)
        factory = self.reactor.tcpServers[0][1]
        connect(factory, "198.18.0.99")
        self.assertEqual(used, [])
        connect(factory, "198.18.0.2")
        self.assertEqual(used, [None])

    def test_firewallOpensAndClosesTheGrant(self) -> None:
        firewall = self.firewall
        grant = self.open()
        self.assertEqual(firewall.calls, [("grant", CLIENT, grant.port, 1030)])
        factory = self.reactor.tcpServers[0][1]
        connect(factory, "198.18.0.2")
        self.assertEqual(firewall.calls[-1], ("revoke", CLIENT, grant.port))

    def test_firewallRevokesUnusedGrant(self) -> None:
        firewall = self.firewall
        grant = self.open()
        self.reactor.advance(30)
        grant.expire()
        self.assertEqual(firewall.calls[-1], ("revoke", CLIENT, grant.port))

    def test_firewallRefusalClosesEverything(self) -> None:
        """
        Fail closed: a grant the firewall refuses refuses the session, and the listener opened
        for it is closed again.
        """
        self.firewall.refuse = True
        failure = self.failureResultOf(self.granter.open(CLIENT, "alice"), SessionRefused)
        self.assertEqual(failure.value.reason, "firewall")
        self.assertTrue(failure.value.severe, "the operator must look into it")
        self.assertIn("nft said no", failure.value.detail)
        (listening,) = self.reactor.ports
        self.assertTrue(listening.stopped)
        self.assertEqual(self.granter.open_grants, {})
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual([call[0] for call in self.firewall.calls], ["grant"],
                         "nothing to revoke of a grant the firewall did not add")

    def test_notReadyFirewallRefusalKeepsItsReason(self) -> None:
        self.firewall.refusal = SessionRefused("firewall-not-ready", "not yet")
        failure = self.failureResultOf(self.granter.open(CLIENT, "alice"), SessionRefused)
        self.assertEqual(failure.value.reason, "firewall-not-ready")
        self.assertEqual(self.granter.open_grants, {})
        self.assertEqual(self.reactor.tcpServers, [], "no listener before the rules are in place")
        self.assertEqual(self.firewall.calls, [])

    def test_grantLogSaysTheOpenTimeOfItsDeadline(self) -> None:
        """
        The "granted" line names the open time the grant's deadline was set with, even when a
        reload changed SINGLECONN_PORTOPEN_TIME while the firewall was still opening it.
        """
        events: List[dict] = []
        self.patch(PortGranter, "log", Logger(observer=events.append))
        self.firewall.pending = Deferred()
        opening = self.granter.open(CLIENT, "alice")
        config = self.granter.settings.config
        self.granter.settings.replace(
            type(config)(**{**vars(config), "singleconn_portopen_time": 5.0}), None
        )
        self.firewall.pending.callback(None)
        grant = self.successResultOf(opening)
        self.assertEqual(grant.deadline, 1030)
        (granted,) = [event for event in events if "open_time" in event]
        self.assertEqual(granted["open_time"], 30.0)

    def test_closedWhileFirewallOpening(self) -> None:
        firewall = self.firewall
        firewall.pending = Deferred()
        opening = self.granter.open(CLIENT, "alice")
        closing = self.granter.stopService()
        self.assertNoResult(closing)  # a clean stop waits for the grant being opened
        firewall.pending.callback(None)
        self.successResultOf(closing)
        self.failureResultOf(opening, SessionRefused)
        self.assertEqual(firewall.calls[-1][0], "revoke")

    def test_natModeOpensNoListener(self) -> None:
        """
        FORWARD_MODE = nat: the firewall DNATs the grant, the daemon listens on nothing, and the
        grant is revoked when its time is over.
        """
        firewall = self.firewall
        self.granter = self.make(forward_mode="nat")
        grant = self.open()
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(firewall.calls, [("grant", CLIENT, grant.port, 1030)])
        self.reactor.advance(30)
        grant.expire()
        self.assertEqual(firewall.calls[-1], ("revoke", CLIENT, grant.port))
        self.assertEqual(self.granter.open_grants, {})
        self.assertEqual(self.closed_why(), ["open time over"])

    def test_namedServicesTargetAndOpenTime(self) -> None:
        """
        A grant for a named service forwards to that service's target (in proxy mode the
        listener connects there, and the firewall gets no target; in nat mode the firewall is
        told it, for grant and revoke) and stays open for that service's own open time.
        """
        inner = HiddenService("inner", ipaddress.ip_address("198.19.0.2"), 3389, 12.0,
                              EVERY_USER)
        grant = self.successResultOf(self.granter.open(CLIENT, "bob", None, inner))
        self.assertEqual(grant.deadline, 1012)
        ((_, factory, _, _),) = self.reactor.tcpServers
        self.assertEqual((factory.host, factory.port), ("198.19.0.2", 3389))
        self.assertEqual(self.firewall.targets, [None])
        self.granter = self.make(forward_mode="nat")
        grant = self.successResultOf(self.granter.open(CLIENT, "bob", None, inner))
        grant.close("test")
        self.assertEqual(self.firewall.calls[-2:],
                         [("grant", CLIENT, grant.port, 1012), ("revoke", CLIENT, grant.port)])
        self.assertEqual(self.firewall.targets[-2:], [inner.target, inner.target])

    def test_eachServiceItsOwnMode(self) -> None:
        """
        A service's own FORWARD_MODE wins over the gateway's: on a proxy gateway a nat service's
        grant gets no listener and goes to the kernel with its target; on a nat gateway a proxy
        service's grant gets a listener (with the door) and no target.
        """
        address = ipaddress.ip_address("198.19.0.2")
        in_kernel = HiddenService("db", address, 5432, 30.0, EVERY_USER, forward_mode="nat")
        proxied = HiddenService("rdp", address, 3389, 30.0, EVERY_USER, forward_mode="proxy")
        grant = self.successResultOf(self.granter.open(CLIENT, "bob", b"d" * 16, in_kernel))
        self.assertEqual((self.reactor.tcpServers, grant.door_required), ([], False))
        self.assertEqual(self.firewall.targets, [in_kernel.target])
        self.granter = self.make(forward_mode="nat")
        grant = self.successResultOf(self.granter.open(CLIENT, "bob", b"d" * 16, proxied))
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.assertTrue(grant.door_required)
        self.assertEqual(self.firewall.targets[-1], None)

    def test_doorInProxyModeOnly(self) -> None:
        """
        A session's door secret reaches the proxy of its grant, which then requires it (and P3
        says so); in nat mode the kernel forwards the connection, so nothing requires it.
        """
        door = bytes(16)
        grant = self.successResultOf(self.granter.open(CLIENT, "alice", door))
        self.assertTrue(grant.door_required)
        ((_, factory, _, _),) = self.reactor.tcpServers
        self.assertEqual((factory.door, factory.granted_port), (door, grant.port))
        self.assertFalse(self.open().door_required, "no secret, no door")
        self.granter = self.make(forward_mode="nat")
        self.assertFalse(self.successResultOf(self.granter.open(CLIENT, "alice", door))
                         .door_required)

    def test_stopClosesAll(self) -> None:
        self.open()
        self.open()
        self.successResultOf(self.granter.stopService())
        self.assertTrue(all(port.stopped for port in self.reactor.ports))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
