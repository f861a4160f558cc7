"""
Tests for sig2knock.daemon.control: the daemon answers only a valid P2 after a completed sequence,
and logs every refusal with its source and reason.
"""

import ipaddress
import types
from typing import List, Tuple

from twisted.application.service import Service
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sig2knock.daemon.control import (
    CONTROL_READ_BYTES,
    ControlPortError,
    ControlPorts,
    ControlProtocol,
    binding_check,
    control_ports,
    rate_key,
)
from sig2knock.daemon.packets import Knock
from sig2knock.daemon.ratelimit import RateLimiter
from sig2knock.daemon.refusals import RefusalLog
from sig2knock.daemon.replay import ReplayCache
from sig2knock.daemon.sessions import SessionTable
from sig2knock.protocol import addresses, wire
from sig2knock.protocol.wire import Binding, Confirm, KnockRequest, UserKey
from sig2knock.test.common import FakeCapture, FakeGranter, live_settings


NOW = 1_800_000_000.0
ALICE = UserKey("alice", bytes(range(32)))
MALLORY = UserKey("alice", bytes(range(1, 33)))
SERVER = Binding.of("198.18.0.1", 1001)
CLIENT = ("198.18.0.2", 40404)
CLIENT_ADDRESS = ipaddress.ip_address("198.18.0.2")
PORTS = (1111, 2222, 3333, 4444)
SESSION = b"S" * 16


class DatagramTransport:
    """
    Records what the protocol sends.
    """

    def __init__(self) -> None:
        self.sent: List[Tuple[bytes, tuple]] = []

    def write(self, data: bytes, addr: tuple) -> None:
        self.sent.append((data, addr))


class ControlProtocolTests(SynchronousTestCase):
    """
    P1 is never answered, a P2 after the sequence gets P3, junk and replays get silence.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.events: List[dict] = []
        self.patch(ControlProtocol, "log", Logger(observer=self.events.append))
        self.patch(RefusalLog, "log", Logger(observer=self.events.append))
        self.patch(SessionTable, "log", Logger(observer=lambda event: None))
        granter = FakeGranter(self.clock)
        granter.next_port = 45677
        self.sessions = SessionTable(
            self.clock, granter=granter, capture=FakeCapture, settings=live_settings()
        )
        self.protocol = ControlProtocol(
            self.clock,
            keys=lambda: {ALICE.key_id: ALICE},
            accepts=binding_check(1001, lambda: frozenset({SERVER.address})),
            sessions=self.sessions,
            replay_cache=ReplayCache(None, 60, NOW),
            max_skew=60,
        )
        self.transport = DatagramTransport()
        self.protocol.makeConnection(self.transport)

    def p1(self, user: UserKey = ALICE, binding: Binding = SERVER, when: float = NOW) -> bytes:
        request = KnockRequest(SESSION, wire.now_ms(when), addresses.PROTO_TCP, PORTS)
        return wire.encode(request, user, binding)

    def p2(self, user: UserKey = ALICE, binding: Binding = SERVER) -> bytes:
        return wire.encode(Confirm(SESSION, wire.now_ms(self.clock.seconds())), user, binding)

    def knock(self) -> None:
        for port in PORTS:
            self.sessions.knock(Knock(CLIENT_ADDRESS, SERVER.address, addresses.PROTO_TCP, port))

    def grants(self) -> List[wire.Grant]:
        received = []
        for data, addr in self.transport.sent:
            self.assertEqual(addr, CLIENT)
            decoded = wire.decode(
                data,
                keys={ALICE.key_id: ALICE},
                bindings=(SERVER,),
                expect=(wire.TYPE_GRANT,),
                now=self.clock.seconds(),
                max_skew=60,
            )
            received.append(decoded.message)
        return received

    def refusals(self) -> List[str]:
        return [event["reason"] for event in self.events if "reason" in event]

    def test_fullExchange(self) -> None:
        self.protocol.datagramReceived(self.p1(), CLIENT)
        self.assertEqual(self.transport.sent, [], "P1 must never be answered")
        self.knock()
        self.protocol.datagramReceived(self.p2(), CLIENT)
        (grant,) = self.grants()
        self.assertEqual((grant.session_id, grant.port), (SESSION, 45678))
        self.assertEqual(grant.deadline_ms, wire.now_ms(NOW + 30))

    def test_repeatedConfirmSamePort(self) -> None:
        self.protocol.datagramReceived(self.p1(), CLIENT)
        self.knock()
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.assertEqual([grant.port for grant in self.grants()], [45678, 45678])

    def test_confirmWithoutKnocksSilent(self) -> None:
        self.protocol.datagramReceived(self.p1(), CLIENT)
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.clock.advance(11)
        self.assertEqual(self.transport.sent, [])
        self.assertIn("knock-timeout", self.refusals())

    def test_confirmWithoutRequestSilent(self) -> None:
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.assertEqual(self.transport.sent, [])
        self.assertEqual(self.refusals(), ["unknown-session"])

    def test_replayedDatagramSilent(self) -> None:
        p1 = self.p1()
        self.protocol.datagramReceived(p1, CLIENT)
        self.protocol.datagramReceived(p1, CLIENT)
        self.assertEqual(self.refusals(), ["replay"])

    def test_refusals(self) -> None:
        """
        Junk, wrong key, wrong server binding and stale messages are refused, logged with the
        source and reason, and never answered.
        """
        cases = [
            (b"", "size"),
            (b"\x00" * 80, "version"),
            (self.p1(user=MALLORY), "unknown-key"),
            (self.p1(binding=Binding.of("198.18.0.77", 1001)), "binding"),
            (self.p1(binding=Binding.of("198.18.0.1", 1002)), "binding"),
            (self.p1(when=NOW - 61), "stale"),
        ]
        for data, _ in cases:
            self.protocol.datagramReceived(data, CLIENT)
        self.assertEqual(self.refusals(), [reason for _, reason in cases])
        self.assertEqual(self.transport.sent, [])
        for event in self.events:
            self.assertEqual(event["source"], "198.18.0.2")
            self.assertNotIn(ALICE.key.hex(), repr(event))
        self.assertEqual(sum(self.protocol.refusals.totals.values()), len(cases))

    def test_tamperedSilent(self) -> None:
        p1 = bytearray(self.p1())
        p1[-1] ^= 1
        self.protocol.datagramReceived(bytes(p1), CLIENT)
        self.assertEqual(self.refusals(), ["auth"])

    def test_mappedSourceIsIPv4Session(self) -> None:
        mapped = ("::ffff:198.18.0.2", 40404, 0, 0)
        self.protocol.datagramReceived(self.p1(), mapped)
        self.knock()
        self.protocol.datagramReceived(self.p2(), mapped)
        self.assertEqual(len(self.transport.sent), 1)
        self.assertEqual(self.transport.sent[0][1], mapped)

    def test_rateLimitBeforeCrypto(self) -> None:
        """
        Past its rate limit a source's datagrams are refused before any decryption; other
        sources are served.
        """
        self.protocol.limiter = RateLimiter(
            self.clock, per_source_rate=1, per_source_burst=2, global_rate=100, global_burst=100
        )
        flipped = bytearray(self.p1())
        flipped[-1] ^= 1
        for _ in range(5):
            self.protocol.datagramReceived(bytes(flipped), ("198.18.0.66", 5000))
        self.assertEqual(self.refusals(), ["auth", "auth"] + ["rate-limited"] * 3)
        self.protocol.datagramReceived(self.p1(), CLIENT)
        self.knock()
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.assertEqual(len(self.grants()), 1)

    def test_perUserRateLimitAfterAuthentication(self) -> None:
        """
        One user sending from many addresses is limited as a user, once authenticated; other
        users are not affected, and nobody without the key can spend the user's allowance.
        """
        self.protocol.user_limiter = RateLimiter(
            self.clock, per_source_rate=1, per_source_burst=3, global_rate=None
        )
        forged = bytearray(self.p1())
        forged[-1] ^= 1
        for n in range(10):
            self.protocol.datagramReceived(bytes(forged), (f"198.18.3.{n}", 5000))
        for n in range(5):
            request = KnockRequest(bytes([n]) * 16, wire.now_ms(NOW), addresses.PROTO_TCP, PORTS)
            self.protocol.datagramReceived(
                wire.encode(request, ALICE, SERVER), (f"198.18.4.{n}", 5000)
            )
        self.assertEqual(self.refusals().count("rate-limited"), 2)
        self.assertEqual(self.sessions.pending_count(), 3)

    def test_replaysDoNotSpendTheUsersAllowance(self) -> None:
        """
        Someone replaying a user's captured message cannot lock that user out: replays are
        refused before the per-user limit counts them.
        """
        self.protocol.user_limiter = RateLimiter(
            self.clock, per_source_rate=1, per_source_burst=2, global_rate=None
        )
        captured = self.p1()
        self.protocol.datagramReceived(captured, CLIENT)
        for n in range(50):
            self.protocol.datagramReceived(captured, (f"198.18.5.{n}", 5000))
        self.assertEqual(set(self.refusals()), {"replay"})
        request = KnockRequest(b"T" * 16, wire.now_ms(NOW), addresses.PROTO_TCP, PORTS)
        self.protocol.datagramReceived(wire.encode(request, ALICE, SERVER), CLIENT)
        self.assertEqual(set(self.refusals()), {"replay"})
        self.assertEqual(self.sessions.pending_count(), 2)

    def test_returningSourceServedWhenFloodEmptiesGlobalBudget(self) -> None:
        """
        Datagrams with a known key id from many addresses can empty the global budget; a source
        that authenticated before is still served, a new one waits its turn.
        """
        self.protocol.limiter = RateLimiter(
            self.clock, per_source_rate=10, per_source_burst=10, global_rate=1, global_burst=3
        )
        self.protocol.datagramReceived(self.p1(), CLIENT)  # alice knocked before
        flipped = bytearray(self.p1())
        flipped[-1] ^= 1
        for n in range(20):
            self.protocol.datagramReceived(bytes(flipped), (f"198.18.6.{n}", 5000))
        self.assertIn("rate-limited", self.refusals())
        before = len(self.refusals())
        request = KnockRequest(b"R" * 16, wire.now_ms(NOW), addresses.PROTO_TCP, PORTS)
        self.protocol.datagramReceived(wire.encode(request, ALICE, SERVER), CLIENT)
        self.assertEqual(len(self.refusals()), before, "the returning client was refused")
        request = KnockRequest(b"N" * 16, wire.now_ms(NOW), addresses.PROTO_TCP, PORTS)
        self.protocol.datagramReceived(wire.encode(request, ALICE, SERVER), ("198.18.7.1", 5000))
        self.assertEqual(self.refusals()[-1], "rate-limited")

    def test_ipv6SourcesCountPerSlash64(self) -> None:
        one = ipaddress.ip_address("2001:2::1")
        same = ipaddress.ip_address("2001:2::ffff:1")
        other = ipaddress.ip_address("2001:2:0:1::1")
        self.assertEqual(rate_key(one), rate_key(same))
        self.assertNotEqual(rate_key(one), rate_key(other))
        self.assertEqual(rate_key(CLIENT_ADDRESS), CLIENT_ADDRESS)

    def test_junkNeverReachesTheLimiter(self) -> None:
        for _ in range(100):
            self.protocol.datagramReceived(b"\x01" * 90, ("198.18.0.66", 5000))
        self.assertEqual(len(self.protocol.limiter), 0)

    def test_sessionRefusalLogged(self) -> None:
        request = KnockRequest(SESSION, wire.now_ms(NOW), addresses.PROTO_UDP, PORTS)
        self.protocol.datagramReceived(wire.encode(request, ALICE, SERVER), CLIENT)
        self.assertEqual(self.refusals(), ["knock-protocol"])
        self.assertEqual(len(self.sessions), 0)


class BindingCheckTests(SynchronousTestCase):
    """
    The server answers for its own addresses and control port only, as they are now.
    """

    def test_addressesReadEachTime(self) -> None:
        addresses = {SERVER.address}
        accepts = binding_check(1001, lambda: frozenset(addresses))
        self.assertTrue(accepts(SERVER))
        self.assertFalse(accepts(Binding.of("198.18.0.1", 1002)))
        addresses.clear()
        self.assertFalse(accepts(SERVER))


class UdpRecordingClock(Clock):
    """
    A clock that records ``listenUDP(port, protocol, interface)`` calls instead of binding.
    """

    def __init__(self) -> None:
        super().__init__()
        self.udp: List[Tuple[int, DatagramProtocol, str]] = []

    def listenUDP(self, port: int, protocol: DatagramProtocol, interface: str = "") -> object:
        self.udp.append((port, protocol, interface))
        return types.SimpleNamespace(stopListening=lambda: None, getHandle=lambda: None)


class ControlChannelTests(SynchronousTestCase):
    """
    ``control_ports`` builds the channel from the settings in force: the socket of UDP_PORT,
    the bindings it answers for, and the users of each message read from the live settings.
    """

    def channel(self, listen_address: object, hosts: List[object]) -> Tuple[object, object]:
        """
        The channel built with a stand-in watcher of the host's addresses: its ``current`` are
        ``hosts`` as they are when read.
        """

        class HostWatcher(Service):
            def __init__(self, reactor: object, interface: object, on_change: object) -> None:
                assert (interface, on_change) == (None, None), "the host's, with no callback"

            def open(self) -> None:
                pass

            @property
            def current(self) -> frozenset:
                return frozenset(hosts)

        clock = UdpRecordingClock()
        settings = live_settings(udp_port=1001, listen_address=listen_address, max_clock_skew=60.0)
        settings.users = types.SimpleNamespace(by_key_id={ALICE.key_id: ALICE})
        sessions = SessionTable(
            clock, granter=FakeGranter(clock), capture=FakeCapture, settings=settings
        )
        replay_cache = ReplayCache(None, 60, NOW)
        ports = control_ports(clock, settings, sessions, replay_cache, HostWatcher, RefusalLog())
        ports.open()
        watchers = [type(child) for child in ports]
        self.assertEqual(watchers, [] if listen_address else [HostWatcher],
                         "the control ports own the watcher they need")
        return clock, settings

    def test_listenAddress(self) -> None:
        """
        With LISTEN_ADDRESS, one socket there, answering for that address alone.
        """
        clock, _ = self.channel(SERVER.address, [ipaddress.ip_address("198.18.0.9")])
        ((port, protocol, interface),) = clock.udp
        self.assertEqual((port, interface), (1001, "198.18.0.1"))
        self.assertTrue(protocol.accepts(SERVER))
        self.assertFalse(protocol.accepts(Binding.of("198.18.0.9", 1001)))
        self.assertFalse(protocol.accepts(Binding.of("198.18.0.1", 1002)))

    def test_hostAddresses(self) -> None:
        """
        Without it, every address, answering for the host's addresses as they are at each
        message; the users are those in force at each message (a reload reaches the channel).
        """
        hosts = [SERVER.address]
        clock, settings = self.channel(None, hosts)
        port, protocol, interface = clock.udp[0]
        self.assertEqual((port, interface), (1001, "::"))
        self.assertTrue(protocol.accepts(SERVER))
        hosts.clear()
        self.assertFalse(protocol.accepts(SERVER))
        self.assertEqual(protocol.keys(), {ALICE.key_id: ALICE})
        settings.users = types.SimpleNamespace(by_key_id={})
        self.assertEqual(protocol.keys(), {})


class ControlPortsTests(TestCase):
    """
    The control sockets: opened before twistd starts, each reading a bounded amount per reactor
    turn (so a burst of control messages cannot hold back the capture, and every pending knock,
    for long), closed when the service stops.
    """

    def ports(self, port: int = 0, address: str = "127.0.0.1") -> ControlPorts:
        from twisted.internet import reactor

        protocols: List[DatagramProtocol] = []

        def protocol() -> DatagramProtocol:
            protocols.append(DatagramProtocol())
            return protocols[-1]

        return ControlPorts(reactor, port, ipaddress.ip_address(address), protocol)

    def test_boundedRead(self) -> None:
        ports = self.ports()
        ports.open()
        self.addCleanup(ports.stopService)
        (listening,) = ports.listening
        self.assertEqual(listening.maxThroughput, CONTROL_READ_BYTES)
        self.assertLess(CONTROL_READ_BYTES, 256 * 1024)
        self.assertGreaterEqual(CONTROL_READ_BYTES, 8 * 90)

    def test_portInUseRefusedInOneLine(self) -> None:
        first = self.ports()
        first.open()
        self.addCleanup(first.stopService)
        taken = first.listening[0].getHost().port
        second = self.ports(taken)
        error = self.assertRaises(ControlPortError, second.open)
        self.assertIn(f"UDP_PORT {taken}: cannot listen on 127.0.0.1", str(error))
        self.assertIn("another sig2knockd", str(error))
        self.assertEqual(second.listening, [])

    async def test_stopCloses(self) -> None:
        ports = self.ports()
        ports.open()
        (listening,) = ports.listening
        ports.startService()
        await ports.stopService()
        self.assertEqual(ports.listening, [])
        self.assertFalse(listening.connected)
