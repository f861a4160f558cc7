"""
Tests for sig2knock.daemon.status: the live view's entries and document over a real session
table on a Clock, the one-answer protocol and its credential check, and the service that
listens on ``STATE_DIR/status.sock`` (on a memory reactor, with real socket files at the path).
"""

import ipaddress
import json
import os
import shutil
import socket
import stat
import tempfile
import types
from typing import Any, Dict, List, Optional

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, Logger
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import status
from sig2knock.daemon.catalog import EVERY_USER, HiddenService
from sig2knock.daemon.packets import Knock
from sig2knock.daemon.session import Session, State
from sig2knock.daemon.sessions import SessionTable
from sig2knock.daemon.status import (
    FORMAT_VERSION,
    StatusFactory,
    StatusProtocol,
    StatusService,
    peer_uid,
    session_entry,
    socket_path,
    status_document,
    with_kernel_view,
)
from sig2knock.firewall import FirewallError
from sig2knock.protocol import addresses, wire
from sig2knock.test.common import FakeCapture, FakeGranter, live_settings


CLIENT = ipaddress.ip_address("198.18.0.2")
OTHER = ipaddress.ip_address("198.18.0.3")
CLIENT6 = ipaddress.ip_address("2001:db8::2")
SERVER = ipaddress.ip_address("198.18.0.1")
PORTS = (1111, 2222, 3333, 4444)
TCP = addresses.PROTO_TCP
START = 1000.0
CONFIG_PATH = "/etc/sig2knock/sig2knockd.conf"
GIT = HiddenService("git", ipaddress.ip_address("192.0.2.9"), 2222, 60.0, EVERY_USER)


def keyed(session_id: bytes) -> Any:
    """
    A P1's knock request for ``session_id`` and the keys its HPKE context would have given
    (stand-ins), as ``SessionTable.open`` takes them.
    """
    knock_request = wire.KnockRequest(session_id, 0, TCP, PORTS)
    return knock_request, wire.SessionKeys(
        session_id[:8], session_id[:12], b"c" * 32, b"g" * 32, b"d" * 16
    )


def daemon_config(forward_mode: str = "proxy") -> Any:
    """
    The two things of the daemon's configuration the live view tells: its path and mode.
    """
    return types.SimpleNamespace(path=CONFIG_PATH, forward_mode=forward_mode)


class TableMixin:
    """
    A real ``SessionTable`` on a ``Clock`` (at ``START``) with a fake granter (grants open 30 s,
    ports from 40001) and ``KNOCK_TIMEOUT`` 10 s.
    """

    forward_mode = "proxy"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.granter = FakeGranter(self.clock, open_time=30)
        self.table = SessionTable(
            self.clock,
            granter=self.granter,
            capture=FakeCapture,
            settings=live_settings(forward_mode=self.forward_mode),
        )

    def pending(self, source: Any, user: str, session_id: bytes, service: Any = None) -> Session:
        return self.table.open(source, user, *keyed(session_id), service=service)

    def granted(self, source: Any, user: str, session_id: bytes, service: Any = None) -> Session:
        session = self.pending(source, user, session_id, service)
        for port in PORTS:
            self.table.knock(Knock(source, SERVER, TCP, port))
        self.successResultOf(self.table.confirm(source, session_id[:8], session_id))
        return session


class SessionEntryTests(TableMixin, SynchronousTestCase):
    """
    Each session as the live view shows it: who, from where, for which service, its state,
    port, the time left until its next end and whether its grant was used.
    """

    def test_pending(self) -> None:
        """
        A pending session has no port yet; its time left runs to its knock deadline.
        """
        session = self.pending(CLIENT, "alice", b"S" * 16)
        self.clock.advance(3)
        self.assertEqual(
            session_entry(session, self.clock.seconds(), nat=False),
            {
                "user": "alice",
                "source": "198.18.0.2",
                "service": "",
                "state": "pending",
                "port": None,
                "time_left": 7.0,
                "used": False,
            },
        )

    def test_beingGranted(self) -> None:
        """
        While its grant is being opened a session has neither port nor deadline.
        """
        self.granter.result = Deferred()
        session = self.pending(CLIENT, "alice", b"S" * 16)
        for port in PORTS:
            self.table.knock(Knock(CLIENT, SERVER, TCP, port))
        self.table.confirm(CLIENT, b"S" * 8, b"S" * 16)
        self.assertIs(session.state, State.GRANTING)
        entry = session_entry(session, self.clock.seconds(), nat=False)
        self.assertEqual(
            (entry["state"], entry["port"], entry["time_left"], entry["used"]),
            ("granting", None, None, False),
        )

    def test_grantedInProxyMode(self) -> None:
        """
        A granted session shows its assigned port and the time left of the grant's open time;
        in proxy mode the daemon sees the connection, so ``used`` is a plain no until then.
        """
        session = self.granted(CLIENT6, "alice", b"S" * 16)
        self.clock.advance(12)
        entry = session_entry(session, self.clock.seconds(), nat=False)
        self.assertEqual(
            entry,
            {
                "user": "alice",
                "source": "2001:db8::2",
                "service": "",
                "state": "granted",
                "port": 40001,
                "time_left": 18.0,
                "used": False,
            },
        )

    def test_grantedInNatMode(self) -> None:
        """
        In nat mode the kernel takes a grant's connection unseen: ``used`` is unknown (None).
        """
        session = self.granted(CLIENT, "alice", b"S" * 16)
        entry = session_entry(session, self.clock.seconds(), nat=True)
        self.assertEqual((entry["state"], entry["port"]), ("granted", 40001))
        self.assertIsNone(entry["used"])

    def test_pendingInNatMode(self) -> None:
        """
        Before its grant, a nat-mode session is plainly not used: only a grant's connection is
        unseen.
        """
        session = self.pending(CLIENT, "alice", b"S" * 16)
        self.assertIs(session_entry(session, self.clock.seconds(), nat=True)["used"], False)

    def test_used(self) -> None:
        """
        A used grant shows ``used``, its port, and the time left of its open time, although its
        session has ended.
        """
        session = self.granted(CLIENT, "alice", b"S" * 16)
        self.clock.advance(5)
        self.granter.grants[0].used.callback(None)
        self.assertIs(session.state, State.USED)
        self.assertEqual(
            session_entry(session, self.clock.seconds(), nat=False),
            {
                "user": "alice",
                "source": "198.18.0.2",
                "service": "",
                "state": "used",
                "port": 40001,
                "time_left": 25.0,
                "used": True,
            },
        )

    def test_timeLeftRounded(self) -> None:
        """
        The time left is in seconds, to a tenth.
        """
        session = self.pending(CLIENT, "alice", b"S" * 16)
        self.clock.advance(2.345)
        self.assertEqual(session_entry(session, self.clock.seconds(), nat=False)["time_left"],
                         7.7)

    def test_namedService(self) -> None:
        """
        A session for a named service shows its name; the default service is ``""``.
        """
        named = self.granted(CLIENT, "alice", b"S" * 16, service=GIT)
        default = self.pending(OTHER, "bob", b"T" * 16, service=self.table.settings.config
                               .catalog.default)
        now = self.clock.seconds()
        self.assertEqual(session_entry(named, now, nat=False)["service"], "git")
        self.assertEqual(session_entry(default, now, nat=False)["service"], "")


class RecentlyUsedTests(TableMixin, SynchronousTestCase):
    """
    A used grant is listed until its open time is over, then it is gone from the live view.
    """

    def test_usedListedUntilTheGrantsDeadline(self) -> None:
        session = self.granted(CLIENT, "alice", b"S" * 16)
        self.clock.advance(5)
        self.granter.grants[0].used.callback(None)
        self.assertEqual(self.table.live(), [])
        self.assertEqual(self.table.recently_used(), [session])
        self.clock.advance(24.5)
        document = status_document(self.table, daemon_config(), self.clock.seconds())
        self.assertEqual([(entry["state"], entry["time_left"]) for entry in
                          document["sessions"]], [("used", 0.5)])
        # Gone at the deadline itself, when the grant closes.
        self.clock.advance(0.5)
        self.assertEqual(self.clock.seconds(), self.granter.grants[0].deadline)
        self.assertEqual(self.table.recently_used(), [])
        document = status_document(self.table, daemon_config(), self.clock.seconds())
        self.assertEqual(document["sessions"], [])

    def test_stoppingForgetsThem(self) -> None:
        """
        A daemon that stops drops its used grants from the view too.
        """
        self.table.startService()
        self.granted(CLIENT, "alice", b"S" * 16)
        self.granter.grants[0].used.callback(None)
        self.table.stopService()
        self.assertEqual(self.table.recently_used(), [])


class StatusDocumentTests(TableMixin, SynchronousTestCase):
    """
    The document the daemon answers with: its version, process id, configuration, forward
    mode, the time, and every live session then every used grant still open.
    """

    def test_document(self) -> None:
        used = self.granted(CLIENT, "carol", b"U" * 16)
        self.granter.grants[0].used.callback(None)
        self.pending(OTHER, "bob", b"T" * 16)
        self.granted(CLIENT6, "alice", b"S" * 16, service=GIT)
        self.clock.advance(1.23456)
        document = status_document(self.table, daemon_config(), self.clock.seconds())
        self.assertEqual(
            {key: value for key, value in document.items() if key != "sessions"},
            {
                "version": FORMAT_VERSION,
                "pid": os.getpid(),
                "config": CONFIG_PATH,
                "forward_mode": "proxy",
                "time": 1001.235,
            },
        )
        self.assertEqual(
            [(entry["user"], entry["state"], entry["service"], entry["port"])
             for entry in document["sessions"]],
            [("bob", "pending", "", None), ("alice", "granted", "git", 40002),
             ("carol", "used", "", 40001)],
        )
        self.assertIs(used.state, State.USED)
        # What goes on the socket: JSON, unchanged by the trip.
        self.assertEqual(json.loads(json.dumps(document)), document)

    def test_formatVersion(self) -> None:
        """
        The first version of the document is 1 (``sig2knockd --status`` checks it).
        """
        self.assertEqual(FORMAT_VERSION, 1)
        document = status_document(self.table, daemon_config(), self.clock.seconds())
        self.assertEqual(document["version"], 1)

    def test_empty(self) -> None:
        document = status_document(self.table, daemon_config(), self.clock.seconds())
        self.assertEqual(document["sessions"], [])
        self.assertEqual(document["time"], START)


class NatDocumentTests(TableMixin, SynchronousTestCase):
    """
    In nat mode the document says so, and no grant's use is claimed either way.
    """

    forward_mode = "nat"

    def test_natDocument(self) -> None:
        self.granted(CLIENT, "alice", b"S" * 16)
        self.pending(OTHER, "bob", b"T" * 16)
        document = status_document(self.table, daemon_config("nat"), self.clock.seconds())
        self.assertEqual(document["forward_mode"], "nat")
        self.assertEqual(
            [(entry["state"], entry["used"]) for entry in document["sessions"]],
            [("granted", None), ("pending", False)],
        )


class FakeFirewall:
    """
    Stands for the firewall service's ``used_grants``: records each question and answers with
    ``answer`` (a Deferred, or the set of used grants).
    """

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: List[Any] = []

    def used_grants(self, grants: Any) -> Any:
        self.asked.append(list(grants))
        return self.answer


def nat_view() -> Dict[str, Any]:
    entries = [
        {"user": "alice", "source": "198.18.0.2", "port": 40001, "state": "granted",
         "time_left": 12.5, "used": None},
        {"user": "bob", "source": "2001:db8::2", "port": 40002, "state": "granted",
         "time_left": 3.0, "used": None},
        {"user": "carol", "source": "198.18.0.3", "port": None, "state": "pending",
         "time_left": 9.0, "used": False},
    ]
    return {"version": 1, "forward_mode": "nat", "sessions": entries}


class KernelViewTests(TableMixin, SynchronousTestCase):
    """
    In nat mode ``with_kernel_view`` asks the firewall which grants the kernel saw used, and
    fills in ``used``; when the firewall cannot tell, it stays unknown.
    """

    forward_mode = "nat"

    def setUp(self) -> None:
        super().setUp()
        self.events: List[Dict[str, Any]] = []
        self.patch(status, "log", Logger(observer=self.events.append))

    def used(self, document: Dict[str, Any]) -> List[Any]:
        return [(entry["user"], entry["used"]) for entry in document["sessions"]]

    def test_filledIn(self) -> None:
        firewall = FakeFirewall(succeed({(ipaddress.ip_address("2001:db8::2"), 40002)}))
        document = self.successResultOf(with_kernel_view(nat_view(), firewall))
        self.assertEqual(firewall.asked, [[(ipaddress.ip_address("198.18.0.2"), 40001),
                                           (ipaddress.ip_address("2001:db8::2"), 40002)]])
        self.assertEqual(self.used(document),
                         [("alice", False), ("bob", True), ("carol", False)])
        self.assertEqual(self.events, [])

    def test_lastMomentsStayUnknown(self) -> None:
        """
        A grant about to end may have left the kernel's set by its own timeout (a little before
        the daemon's deadline): the kernel is not asked about it, and it stays unknown.
        """
        view = nat_view()
        view["sessions"][1]["time_left"] = 0.1
        firewall = FakeFirewall(succeed(set()))
        document = self.successResultOf(with_kernel_view(view, firewall))
        self.assertEqual(firewall.asked, [[(ipaddress.ip_address("198.18.0.2"), 40001)]])
        self.assertEqual(self.used(document),
                         [("alice", False), ("bob", None), ("carol", False)])

    def test_later(self) -> None:
        """
        The view waits for the firewall's answer (its tool runs on its own).
        """
        answer: Deferred = Deferred()
        viewing = with_kernel_view(nat_view(), FakeFirewall(answer))
        self.assertNoResult(viewing)
        answer.callback(set())
        self.assertEqual(self.used(self.successResultOf(viewing)),
                         [("alice", False), ("bob", False), ("carol", False)])

    def test_firewallCannotTell(self) -> None:
        """
        A firewall that cannot say leaves the unknown ones unknown, and a warning says why;
        the view is still given.
        """
        firewall = FakeFirewall(fail(FirewallError("iptables cannot tell")))
        document = self.successResultOf(with_kernel_view(nat_view(), firewall))
        self.assertEqual(self.used(document),
                         [("alice", None), ("bob", None), ("carol", False)])
        [event] = self.events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("iptables cannot tell", event["error"])

    def test_firewallRaises(self) -> None:
        """
        A firewall whose question raises at once is handled the same way.
        """
        class Broken:
            def used_grants(self, grants: Any) -> Any:
                raise FirewallError("no tool")

        document = self.successResultOf(with_kernel_view(nat_view(), Broken()))
        self.assertEqual(self.used(document)[:2], [("alice", None), ("bob", None)])
        self.assertEqual(len(self.events), 1)

    def test_nothingUnknown(self) -> None:
        """
        When every use is known (proxy mode), the firewall is not asked.
        """
        document = {"version": 1, "sessions": [{"source": "198.18.0.2", "port": 40001,
                                                "used": False}]}
        firewall = FakeFirewall(None)
        self.assertIs(self.successResultOf(with_kernel_view(document, firewall)), document)
        self.assertEqual(firewall.asked, [])

    def test_fromTheTable(self) -> None:
        """
        The document of a nat-mode table, with the kernel's answer, shows the grant used.
        """
        self.granted(CLIENT, "alice", b"S" * 16)
        document = status_document(self.table, daemon_config("nat"), self.clock.seconds())
        firewall = FakeFirewall(succeed({(CLIENT, 40001)}))
        document = self.successResultOf(with_kernel_view(document, firewall))
        self.assertEqual([(entry["state"], entry["port"], entry["used"])
                          for entry in document["sessions"]], [("granted", 40001, True)])


class SocketPathTests(SynchronousTestCase):
    def test_inStateDir(self) -> None:
        self.assertEqual(socket_path("/var/lib/sig2knock"), "/var/lib/sig2knock/status.sock")


class Handle:
    """
    A transport whose handle is a real socket, as a UNIX server transport's is.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


class PeerUidTests(SynchronousTestCase):
    """
    ``peer_uid`` tells who is at the other end of a UNIX socket, or ``None``.
    """

    def test_connectedUnixSocket(self) -> None:
        one, two = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(one.close)
        self.addCleanup(two.close)
        self.assertEqual(peer_uid(Handle(one)), os.getuid())

    def test_noHandle(self) -> None:
        """
        A transport without a socket says nobody: ``None`` (and the protocol refuses it).
        """
        self.assertIsNone(peer_uid(StringTransport()))

    def test_closedSocket(self) -> None:
        """
        A socket the system cannot ask (closed) gives ``None``, not an exception.
        """
        one, two = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        two.close()
        one.close()
        self.assertIsNone(peer_uid(Handle(one)))


class StatusProtocolTests(SynchronousTestCase):
    """
    Each connection gets one answer, the JSON document and a newline, then is closed; only
    root and the daemon's user get it.
    """

    OWN_UID = 4321

    def setUp(self) -> None:
        self.events: List[Dict[str, Any]] = []
        self.patch(StatusProtocol, "log", Logger(observer=self.events.append))
        self.asked = 0
        self.uid: Optional[int] = 0
        self.factory = StatusFactory(
            self.document, peer_uid=lambda transport: self.uid, own_uid=self.OWN_UID
        )

    def document(self) -> Dict[str, Any]:
        self.asked += 1
        return {"version": 1, "sessions": [{"user": "alice"}], "asked": self.asked}

    def ask(self, uid: Optional[int]) -> StringTransport:
        self.uid = uid
        protocol = self.factory.buildProtocol(UNIXAddress(None))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return transport

    def assertAnswered(self, transport: StringTransport) -> Dict[str, Any]:
        answer = transport.value()
        self.assertTrue(answer.endswith(b"\n"), answer)
        self.assertEqual(answer.count(b"\n"), 1, answer)
        self.assertTrue(transport.disconnecting, "the connection stays open")
        return json.loads(answer)

    def test_root(self) -> None:
        transport = self.ask(0)
        self.assertEqual(self.assertAnswered(transport),
                         {"version": 1, "sessions": [{"user": "alice"}], "asked": 1})
        self.assertEqual(self.events, [])

    def test_daemonsUser(self) -> None:
        transport = self.ask(self.OWN_UID)
        self.assertEqual(self.assertAnswered(transport)["sessions"], [{"user": "alice"}])

    def test_othersGetNothing(self) -> None:
        """
        Another user, or a peer the system does not name, gets nothing and is disconnected;
        the daemon logs a warning naming the uid, and the view is not even made.
        """
        for uid in (1000, self.OWN_UID + 1, None):
            transport = self.ask(uid)
            self.assertEqual(transport.value(), b"")
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.asked, 0)
        self.assertEqual([event["uid"] for event in self.events], [1000, self.OWN_UID + 1, None])
        self.assertEqual({event["log_level"] for event in self.events}, {LogLevel.warn})

    def test_freshViewEachTime(self) -> None:
        """
        Each question is answered with the view as it is then, not a copy of an earlier one.
        """
        self.assertEqual(self.assertAnswered(self.ask(0))["asked"], 1)
        self.assertEqual(self.assertAnswered(self.ask(0))["asked"], 2)

    def test_readsNothing(self) -> None:
        """
        What a client sends changes nothing: the answer was written at once.
        """
        protocol = self.factory.buildProtocol(UNIXAddress(None))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(self.assertAnswered(transport)["asked"], 1)

    def test_documentLater(self) -> None:
        """
        A view that takes time (a Deferred: the kernel is asked in nat mode) is written when it
        comes, then the connection is closed.
        """
        later: Deferred = Deferred()
        self.factory.document = lambda: later
        transport = self.ask(0)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        later.callback({"version": 1, "sessions": []})
        self.assertEqual(self.assertAnswered(transport), {"version": 1, "sessions": []})

    def test_askerGoneBeforeTheView(self) -> None:
        """
        An asker that hung up while the view was being made gets nothing written.
        """
        later: Deferred = Deferred()
        self.factory.document = lambda: later
        self.uid = 0
        protocol = self.factory.buildProtocol(UNIXAddress(None))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.connectionLost(None)
        later.callback({"version": 1, "sessions": []})
        self.assertEqual(transport.value(), b"")

    def test_documentFails(self) -> None:
        """
        A view that cannot be made is logged with its traceback, and the asker is disconnected
        without an answer (rather than left waiting).
        """
        def broken() -> Dict[str, Any]:
            raise ZeroDivisionError("no view")

        self.factory.document = broken
        transport = self.ask(0)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        [event] = self.events
        self.assertEqual(event["log_level"], LogLevel.critical)
        self.assertTrue(event["log_failure"].check(ZeroDivisionError))

    def test_defaults(self) -> None:
        """
        By default the factory asks the system who connects, and the daemon's user is the one
        it runs as.
        """
        factory = StatusFactory(dict)
        self.assertIs(factory.peer_uid, peer_uid)
        self.assertEqual(factory.own_uid, os.getuid())


class RecordingPort:
    """
    A listening port that records being stopped.
    """

    def __init__(self) -> None:
        self.stopped = 0

    def stopListening(self) -> None:
        self.stopped += 1


class RecordingReactor(MemoryReactorClock):
    """
    A memory reactor whose UNIX ports record ``stopListening``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: List[RecordingPort] = []

    def listenUNIX(self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666,
                   wantPID: int = 0) -> RecordingPort:
        super().listenUNIX(address, factory, backlog, mode, wantPID)
        port = RecordingPort()
        self.ports.append(port)
        return port


class StatusServiceTests(SynchronousTestCase):
    """
    The service listens on the socket path (mode 0600) while the daemon runs, replaces a socket
    a dead daemon left, and leaves alone anything else at the path, saying why.
    """

    def setUp(self) -> None:
        # Short: AF_UNIX paths are limited to 107 bytes.
        self.directory = tempfile.mkdtemp(prefix="s2k")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = socket_path(self.directory)
        self.events: List[Dict[str, Any]] = []
        self.patch(StatusService, "log", Logger(observer=self.events.append))
        self.reactor = RecordingReactor()
        self.factory = StatusFactory(dict)
        self.service = StatusService(self.reactor, self.path, self.factory)

    def errors(self) -> List[Dict[str, Any]]:
        return [event for event in self.events if event["log_level"] is LogLevel.error]

    def assertNotListening(self, *fragments: str) -> None:
        self.assertEqual(self.reactor.unixServers, [])
        self.assertIsNone(self.service.port)
        [error] = self.errors()
        self.assertEqual(error["path"], self.path)
        for fragment in fragments:
            self.assertIn(fragment, error["error"])
        # The daemon goes on without the live view.
        self.assertTrue(self.service.running)

    def test_listens(self) -> None:
        self.service.startService()
        self.assertEqual(self.reactor.unixServers, [(self.path, self.factory, 8, 0o600, 0)])
        self.assertIs(self.service.port, self.reactor.ports[0])
        self.assertEqual(self.errors(), [])

    def test_staleSocketReplaced(self) -> None:
        """
        A socket file nobody answers on (a daemon that died left it) is removed, then listened
        on anew.
        """
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.path)
        stale.close()
        self.assertTrue(stat.S_ISSOCK(os.lstat(self.path).st_mode))
        self.service.startService()
        self.assertFalse(os.path.lexists(self.path))
        self.assertEqual(self.reactor.unixServers, [(self.path, self.factory, 8, 0o600, 0)])
        self.assertEqual(self.errors(), [])

    def test_regularFileLeftAlone(self) -> None:
        with open(self.path, "w", encoding="utf-8") as other:
            other.write("not ours\n")
        self.service.startService()
        with open(self.path, encoding="utf-8") as other:
            self.assertEqual(other.read(), "not ours\n")
        self.assertNotListening("is not a socket")

    def test_directoryLeftAlone(self) -> None:
        os.mkdir(self.path)
        self.service.startService()
        self.assertTrue(os.path.isdir(self.path))
        self.assertNotListening("is not a socket")

    def test_runningDaemonLeftAlone(self) -> None:
        """
        A socket another process answers on (a second daemon on the same ``STATE_DIR``) is
        neither removed nor taken over.
        """
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(other.close)
        other.bind(self.path)
        other.listen(8)
        self.service.startService()
        self.assertNotListening("another daemon answers on it")
        # Still the other daemon's socket: it can be reached there.
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(client.close)
        client.settimeout(5)
        client.connect(self.path)

    def test_busyDaemonLeftAlone(self) -> None:
        """
        A running daemon whose listen queue is full refuses the probe with another error than
        "connection refused": its socket is not taken for a dead daemon's.
        """
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(other.close)
        other.bind(self.path)
        other.listen(0)
        queued = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(queued.close)
        queued.setblocking(False)
        try:
            queued.connect(self.path)
        except BlockingIOError:
            pass
        self.service.startService()
        self.assertNotListening("cannot tell whether another daemon answers on it")
        self.assertTrue(stat.S_ISSOCK(os.lstat(self.path).st_mode))

    def test_cannotListen(self) -> None:
        """
        A reactor that cannot listen (``CannotListenError``) is said, with its reason; the
        daemon goes on.
        """
        from twisted.internet.error import CannotListenError

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise CannotListenError(self.path, 0, OSError(13, "Permission denied"))

        self.reactor.listenUNIX = refuse  # type: ignore[method-assign]
        self.service.startService()
        self.assertIsNone(self.service.port)
        [error] = self.errors()
        self.assertIn("Permission denied", error["error"])

    def test_stopServiceStopsListening(self) -> None:
        self.service.startService()
        stopping = self.service.stopService()
        self.successResultOf(stopping)
        self.assertEqual(self.reactor.ports[0].stopped, 1)
        self.assertIsNone(self.service.port)
        self.assertFalse(self.service.running)
        # Stopping again stops nothing more.
        self.assertIsNone(self.service.stopService())
        self.assertEqual(self.reactor.ports[0].stopped, 1)

    def test_stopWithoutListening(self) -> None:
        """
        A service that could not listen stops without error.
        """
        with open(self.path, "w", encoding="utf-8"):
            pass
        self.service.startService()
        self.assertIsNone(self.service.stopService())
        self.assertFalse(self.service.running)

