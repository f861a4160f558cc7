"""
Tests for sig2knock.daemon.control: the daemon answers only a valid P2 after a completed sequence,
sees a session relayed from a second address and ends it, and logs every refusal with its source
and reason.
"""

import ipaddress
import os
import types
from typing import Any, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sig2knock.daemon.control import ControlProtocol, rate_key
from sig2knock.daemon.control_ports import (
    CONTROL_READ_BYTES,
    ControlPortError,
    ControlPorts,
    control_ports,
)
from sig2knock.daemon.packets import Knock
from sig2knock.daemon.ratelimit import RateLimiter
from sig2knock.daemon.refusals import RefusalLog
from sig2knock.daemon.replay import ReplayCache
from sig2knock.daemon.sessions import SessionTable
from sig2knock.protocol import addresses, keys, wire
from sig2knock.protocol.wire import Confirm, KnockRequest, SessionKeys, UserKey
from sig2knock.test.common import FakeCapture, FakeGranter, live_settings
from sig2knock.test.test_replay import HeldWorker


NOW = 1_800_000_000.0
IDENTITY = types.SimpleNamespace(private=keys.private_from_seed(bytes(range(32))))
OTHER_SERVER = keys.private_from_seed(bytes(range(1, 33)))
ALICE = UserKey("alice", keys.private_from_seed(b"a" * 32))
BOB = UserKey("bob", keys.private_from_seed(b"b" * 32))
MALLORY = UserKey("mallory", keys.private_from_seed(b"m" * 32))
SERVER_ADDRESS = ipaddress.ip_address("198.18.0.1")
CLIENT = ("198.18.0.2", 40404)
CLIENT_ADDRESS = ipaddress.ip_address("198.18.0.2")
RELAY = ("198.18.9.9", 40404)
PORTS = (1111, 2222, 3333, 4444)
SESSION = b"S" * 16


def users(*known: UserKey) -> Any:
    """
    Stands for the daemon's ``Users``: their public keys by name.
    """
    by_name = {user.name: user.private.public_key() for user in known}
    return types.SimpleNamespace(public_key=by_name.get)


class DatagramTransport:
    """
    Records what the protocol sends.
    """

    def __init__(self) -> None:
        self.sent: List[Tuple[bytes, tuple]] = []

    def write(self, data: bytes, addr: tuple) -> None:
        self.sent.append((data, addr))


class ControlTestCase(SynchronousTestCase):
    """
    A control protocol over a real session table with a fake granter, and the client's side
    (P1 sealed to the test identity, P2 with its session's keys).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.events: List[dict] = []
        self.patch(ControlProtocol, "log", Logger(observer=self.events.append))
        self.patch(RefusalLog, "log", Logger(observer=self.events.append))
        self.session_events: List[dict] = []
        self.patch(SessionTable, "log", Logger(observer=self.session_events.append))
        self.granter = FakeGranter(self.clock)
        self.granter.next_port = 45677
        self.sessions = SessionTable(
            self.clock, granter=self.granter, capture=FakeCapture, settings=live_settings()
        )
        self.protocol = ControlProtocol(
            self.clock,
            identity=IDENTITY,
            users=lambda: users(ALICE),
            settings=self.sessions.settings,
            sessions=self.sessions,
            replay_cache=ReplayCache(None, 60, NOW),
            max_skew=60,
        )
        self.transport = DatagramTransport()
        self.protocol.makeConnection(self.transport)
        self.keys: Optional[SessionKeys] = None

    def p1(
        self,
        user: UserKey = ALICE,
        server: Any = None,
        when: float = NOW,
        session: bytes = SESSION,
        **fields: Any,
    ) -> bytes:
        fields.setdefault("client_address", CLIENT_ADDRESS)
        request = KnockRequest(session, wire.now_ms(when), addresses.PROTO_TCP, PORTS, **fields)
        server = IDENTITY.private if server is None else server
        data, self.keys = wire.seal_request(request, user, server.public_key())
        return data

    def p2(self, session: bytes = SESSION) -> bytes:
        assert self.keys is not None
        return wire.encode_confirm(Confirm(session, wire.now_ms(self.clock.seconds())), self.keys)

    def knock(self, source: Any = CLIENT_ADDRESS) -> None:
        for port in PORTS:
            self.sessions.knock(Knock(source, SERVER_ADDRESS, addresses.PROTO_TCP, port))

    def grants(self, expected_address: Any = CLIENT) -> List[wire.Grant]:
        received = []
        for data, addr in self.transport.sent:
            self.assertEqual(addr, expected_address)
            received.append(
                wire.decode_grant(data, self.keys, now=self.clock.seconds(), max_skew=60)
            )
        return received

    def refusals(self) -> List[str]:
        return [event["reason"] for event in self.events if "reason" in event]

    def exchange(self) -> None:
        self.protocol.datagramReceived(self.p1(), CLIENT)
        self.knock()
        self.protocol.datagramReceived(self.p2(), CLIENT)


class ControlProtocolTests(ControlTestCase):
    """
    P1 is never answered, a P2 after the sequence gets P3, junk and replays get silence.
    """

    def test_fullExchange(self) -> None:
        self.protocol.datagramReceived(self.p1(), CLIENT)
        self.assertEqual(self.transport.sent, [], "P1 must never be answered")
        self.knock()
        self.protocol.datagramReceived(self.p2(), CLIENT)
        (grant,) = self.grants()
        self.assertEqual((grant.session_id, grant.port), (SESSION, 45678))
        self.assertEqual(grant.deadline_ms, wire.now_ms(NOW + 30))
        self.assertEqual(grant.address, CLIENT_ADDRESS, "P3 says which address was granted")

    def test_doorRequiredTravelsInP3(self) -> None:
        """
        A P1 that says its client will show the door secret gives the grant that secret (from
        its HPKE context), and P3 tells the client the port requires it.
        """
        self.protocol.datagramReceived(self.p1(door=True), CLIENT)
        self.knock()
        self.protocol.datagramReceived(self.p2(), CLIENT)
        (grant,) = self.grants()
        self.assertTrue(grant.door_required)
        self.assertEqual(self.granter.doors, [self.keys.door])

    def test_noDoorUnlessAsked(self) -> None:
        self.exchange()
        (grant,) = self.grants()
        self.assertFalse(grant.door_required)
        self.assertEqual(self.granter.doors, [None])

    def test_repeatedConfirmSamePort(self) -> None:
        self.exchange()
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.assertEqual([grant.port for grant in self.grants()], [45678, 45678])

    def test_confirmWithoutKnocksSilent(self) -> None:
        self.protocol.datagramReceived(self.p1(), CLIENT)
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.clock.advance(11)
        self.assertEqual(self.transport.sent, [])
        self.assertIn("knock-timeout", self.refusals())

    def test_confirmWithoutRequestSilent(self) -> None:
        self.p1()  # the keys of a P1 the server never saw
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.assertEqual(self.transport.sent, [])
        self.assertEqual(self.refusals(), ["unknown-session"])

    def test_replayedDatagramSilent(self) -> None:
        """
        A copy of a P1 from its own address while its session lives (the client's next round)
        opens nothing and is no refusal: it is logged at debug level only. Once the session has
        ended, a copy is a replay, refused and reported.
        """
        p1 = self.p1()
        self.protocol.datagramReceived(p1, CLIENT)
        self.protocol.datagramReceived(p1, CLIENT)
        self.assertEqual(self.refusals(), [])
        self.assertEqual(self.sessions.pending_count(), 1, "a copy from its own address is harmless")
        (repeated,) = [e for e in self.events if e["log_format"].startswith("P1 repeated")]
        self.assertEqual(repeated["log_level"].name, "debug")
        self.assertEqual(self.transport.sent, [])
        self.knock()
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.granter.grants[-1].used.callback(None)  # the session ends with its connection
        self.protocol.datagramReceived(p1, CLIENT)
        self.assertEqual(self.refusals(), ["replay"])

    def test_replayedConfirmRefused(self) -> None:
        """
        A captured P2 sent again (from the client's own address) is refused as a replay; the
        client's own retry, a new P2, still gets the same port.
        """
        self.protocol.datagramReceived(self.p1(), CLIENT)
        self.knock()
        captured = self.p2()
        self.protocol.datagramReceived(captured, CLIENT)
        self.protocol.datagramReceived(captured, CLIENT)
        self.assertEqual(self.refusals(), ["replay"])
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.assertEqual([grant.port for grant in self.grants()], [45678, 45678])

    def test_refusals(self) -> None:
        """
        Junk, an unknown user, a P1 for another server, a changed one and a stale one are
        refused, logged with the source and reason, and never answered.
        """
        tampered = bytearray(self.p1(session=b"T" * 16))
        tampered[-1] ^= 1
        cases = [
            (b"", "size"),
            (b"\x00" * 80, "version"),
            (self.p1(user=MALLORY), "unknown-user"),
            (self.p1(server=OTHER_SERVER), "who"),
            (bytes(tampered), "auth"),
            (self.p1(when=NOW - 61), "stale"),
        ]
        for data, _ in cases:
            self.protocol.datagramReceived(data, CLIENT)
        self.assertEqual(self.refusals(), [reason for _, reason in cases])
        self.assertEqual(self.transport.sent, [])
        for event in self.events:
            self.assertEqual(event["source"], "198.18.0.2")
        self.assertEqual(sum(self.protocol.refusals.totals.values()), len(cases))

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
        flipped = bytearray(self.p1(session=b"F" * 16))
        flipped[-1] ^= 1
        for _ in range(5):
            self.protocol.datagramReceived(bytes(flipped), ("198.18.0.66", 5000))
        self.assertEqual(self.refusals(), ["auth", "auth"] + ["rate-limited"] * 3)
        self.exchange()
        self.assertEqual(len(self.grants()), 1)

    def test_perUserRateLimitAfterAuthentication(self) -> None:
        """
        One user sending from many addresses is limited as a user, once authenticated; other
        users are not affected, and nobody without the key can spend the user's allowance.
        """
        self.protocol.user_limiter = RateLimiter(
            self.clock, per_source_rate=1, per_source_burst=3, global_rate=None
        )
        self.sessions.max_sources_per_user = 100  # the rate, not the addresses, is tested here
        forged = bytearray(self.p1())
        forged[-1] ^= 1
        for n in range(10):
            self.protocol.datagramReceived(bytes(forged), (f"198.18.3.{n}", 5000))
        for n in range(5):
            self.protocol.datagramReceived(
                self.p1(session=bytes([n]) * 16, client_address=None), (f"198.18.4.{n}", 5000)
            )
        self.assertEqual(self.refusals().count("rate-limited"), 2)
        self.assertEqual(self.sessions.pending_count(), 3)

    def test_confirmsAreLimited(self) -> None:
        """
        A key holder cannot flood with fresh P2s of a live session (each would be remembered
        and answered): they count against the source's and the user's limits, and a session
        answers at most 32.
        """
        self.exchange()
        for _ in range(40):
            self.protocol.datagramReceived(self.p2(), CLIENT)
        self.assertEqual(len(self.transport.sent), 32)
        self.assertEqual(self.refusals().count("confirm-limit"), 9)
        self.protocol.user_limiter = RateLimiter(
            self.clock, per_source_rate=1, per_source_burst=2, global_rate=None
        )
        for _ in range(3):
            self.protocol.datagramReceived(self.p2(), CLIENT)
        self.assertEqual(self.refusals()[-1], "rate-limited")

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
            self.protocol.datagramReceived(captured, CLIENT)
        # Copies of a live session's P1 from its address (what a replay spoofing the client
        # looks like): no refusal, and none of them counted as the user's.
        self.assertEqual(self.refusals(), [])
        self.protocol.datagramReceived(self.p1(session=b"T" * 16), CLIENT)
        self.assertEqual(self.refusals(), [])
        self.assertEqual(self.sessions.pending_count(), 2)

    def test_returningSourceServedWhenFloodEmptiesGlobalBudget(self) -> None:
        """
        Valid-looking P1s from many addresses can empty the global budget; a source that
        authenticated before is still served, a new one waits its turn.
        """
        self.protocol.limiter = RateLimiter(
            self.clock, per_source_rate=10, per_source_burst=10, global_rate=1, global_burst=3
        )
        self.protocol.datagramReceived(self.p1(), CLIENT)  # alice knocked before
        flipped = bytearray(self.p1(session=b"F" * 16))
        flipped[-1] ^= 1
        for n in range(20):
            self.protocol.datagramReceived(bytes(flipped), (f"198.18.6.{n}", 5000))
        self.assertIn("rate-limited", self.refusals())
        before = len(self.refusals())
        self.protocol.datagramReceived(self.p1(session=b"R" * 16), CLIENT)
        self.assertEqual(len(self.refusals()), before, "the returning client was refused")
        self.protocol.datagramReceived(
            self.p1(session=b"N" * 16, client_address=None), ("198.18.7.1", 5000)
        )
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
            self.protocol.datagramReceived(b"\x01" * 214, ("198.18.0.66", 5000))
            self.protocol.datagramReceived(b"\x02\x02" + b"\x01" * 60, ("198.18.0.66", 5000))
        self.assertEqual(len(self.protocol.limiter), 0)

    def test_sessionRefusalLogged(self) -> None:
        request = KnockRequest(SESSION, wire.now_ms(NOW), addresses.PROTO_UDP, PORTS)
        data, _ = wire.seal_request(request, ALICE, IDENTITY.private.public_key())
        self.protocol.datagramReceived(data, CLIENT)
        self.assertEqual(self.refusals(), ["knock-protocol"])
        self.assertEqual(len(self.sessions), 0)

    def test_otherServiceRefused(self) -> None:
        self.protocol.datagramReceived(self.p1(service="rdp"), CLIENT)
        self.assertEqual(self.refusals(), ["unknown-service"])
        self.assertEqual(len(self.sessions), 0)

    def test_serviceForItsUsersOnly(self) -> None:
        """
        alice's P1 for a service only bob may reach gets what a wrong key gets: no answer and no
        session, its refusal logged with the reason; her P1 for the default service, and bob's
        for his service, open sessions for those services, which their grants lead to.
        """
        from sig2knock.test.common import parse_text, settings_text

        catalog = parse_text(
            settings_text() + "[service rdp]\nFORWARD_TO_IP = 198.19.0.2\n"
            "FORWARD_TO_PORT = 3389\nALLOW = bob\n"
        ).catalog
        self.sessions.settings.config.catalog = catalog
        self.protocol.users = lambda: users(ALICE, BOB)
        self.protocol.datagramReceived(self.p1(service="rdp"), CLIENT)
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.assertEqual(self.refusals(), ["not-allowed", "unknown-session"])
        self.assertEqual((len(self.sessions), self.transport.sent), (0, []))
        self.protocol.datagramReceived(self.p1(session=b"B" * 16, user=BOB, service="rdp"),
                                       CLIENT)
        self.knock()
        self.protocol.datagramReceived(self.p2(session=b"B" * 16), CLIENT)
        self.assertEqual([grant.port for grant in self.grants()], [45678])
        self.assertEqual(self.granter.services, [catalog.services["rdp"]])

    def test_stolenUsersFileOpensNoDoor(self) -> None:
        """
        A thief of the users file and of the server's public key holds alice's public key only:
        whatever key they seal with (a fresh one, or her public key's bytes taken as a secret),
        the request does not open as hers, and nothing is answered.
        """
        stolen = keys.public_bytes(ALICE.private)
        for guess in (keys.generate(), keys.private_from_seed(stolen)):
            self.protocol.datagramReceived(self.p1(user=UserKey("alice", guess)), CLIENT)
        self.assertEqual(self.refusals(), ["auth", "auth"])
        self.assertEqual((len(self.sessions), self.transport.sent), (0, []))

    def test_passwordKeyOfAnotherServerIsUseless(self) -> None:
        """
        The same name and password at another server give another key: a key (or a saved key
        file) made for that server opens nothing here.
        """
        from sig2knock.client.knocker import user_key
        from sig2knock.test.common import CHEAP_KDF

        here = user_key("the same password", "alice", CHEAP_KDF.format(),
                        keys.public_bytes(IDENTITY.private))
        there = user_key("the same password", "alice", CHEAP_KDF.format(),
                         keys.public_bytes(OTHER_SERVER))
        self.protocol.users = lambda: users(here)
        self.protocol.datagramReceived(self.p1(user=there), CLIENT)
        self.protocol.datagramReceived(self.p1(user=here, session=b"H" * 16), CLIENT)
        self.assertEqual(self.refusals(), ["auth"])
        self.assertEqual(self.sessions.pending_count(), 1)

    def test_usersReadAtEachMessage(self) -> None:
        """
        The users are those in force at each message: a reload reaches the channel.
        """
        current = [users(ALICE)]
        self.protocol.users = lambda: current[0]
        self.protocol.datagramReceived(self.p1(), CLIENT)
        current[0] = users()
        self.protocol.datagramReceived(self.p1(session=b"T" * 16), CLIENT)
        self.assertEqual(self.refusals(), ["unknown-user"])


class RelayTests(ControlTestCase):
    """
    An on-path host that re-sends a client's login from its own address gets nothing it can use:
    the client's own copy shows the session is relayed, and it ends, grant and all.
    """

    def relay_first(self) -> bytes:
        """
        The relay sends the client's P1, knocks and P2 from its own address before the client's
        own copies arrive; the grant goes to the relay's address.
        """
        p1 = self.p1(client_address=None)
        self.protocol.datagramReceived(p1, RELAY)
        self.knock(ipaddress.ip_address(RELAY[0]))
        p2 = self.p2()
        self.protocol.datagramReceived(p2, RELAY)
        (grant,) = self.granter.opened
        self.assertEqual(grant[0], ipaddress.ip_address(RELAY[0]))
        return p1

    def relay_warnings(self) -> List[dict]:
        return [e for e in self.session_events if e["log_format"].startswith("relay:")]

    def test_clientsCopyOfP1EndsTheRelayedGrant(self) -> None:
        p1 = self.relay_first()
        grant = self.granter.grants[-1]
        self.protocol.datagramReceived(p1, CLIENT)
        self.assertEqual(grant.closed, ["relayed"], "the relay's grant is closed at once")
        self.assertEqual(len(self.sessions), 0)
        (warning,) = self.relay_warnings()
        self.assertEqual((warning["source"], warning["other"]), (RELAY[0], CLIENT[0]))

    def test_clientsCopyOfP2EndsTheRelayedGrant(self) -> None:
        self.relay_first()
        grant = self.granter.grants[-1]
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.assertEqual(grant.closed, ["relayed"])
        self.assertEqual(self.refusals()[-1], "relay")
        self.assertEqual(len(self.transport.sent), 1, "only the relay's P3, which it cannot read")

    def test_relayThatUsedItsGrantIsStillLogged(self) -> None:
        """
        A relay fast enough to use its grant before the client's copy arrives cannot be stopped
        any more, but the copy still tells the operator.
        """
        p1 = self.relay_first()
        self.granter.grants[-1].used.callback(None)
        self.assertEqual(len(self.sessions), 0)
        self.protocol.datagramReceived(p1, CLIENT)
        (warning,) = self.relay_warnings()
        self.assertIn("(ended)", warning["log_format"])
        self.assertEqual((warning["source"], warning["other"]), (RELAY[0], CLIENT[0]))

    def test_copiesOfAProvenSessionAreRefusedAndItGoesOn(self) -> None:
        """
        When the P1 named its source as the client's address, copies of its P1 and P2 from
        elsewhere are a relay's: they are refused and logged, and the client still gets its
        port (an on-path relay cannot end a session it cannot use).
        """
        p1 = self.p1()  # names CLIENT_ADDRESS, and comes from it
        self.protocol.datagramReceived(p1, CLIENT)
        self.protocol.datagramReceived(p1, RELAY)
        self.knock()
        p2 = self.p2()
        self.protocol.datagramReceived(p2, RELAY)  # the relay's copy comes first
        self.assertEqual(self.refusals(), ["replay", "relay"])
        self.protocol.datagramReceived(p2, CLIENT)  # ... and does not make the client's a replay
        self.assertEqual([addr for _, addr in self.transport.sent], [CLIENT])
        self.assertEqual(len(self.relay_warnings()), 2)

    def test_noSecondPortAfterTheSessionEnded(self) -> None:
        """
        Once a session has ended (here: relayed), its id opens nothing again, whatever copy of
        its P1 comes later.
        """
        self.relay_first()
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.protocol.datagramReceived(self.p1(client_address=None), CLIENT)  # sealed again
        self.assertEqual(self.refusals()[-1], "session-ended")
        self.assertEqual(len(self.granter.opened), 1)

    def test_publicAddressThatIsNotTheSourceRefused(self) -> None:
        """
        A P1 that names a public address other than its source (the client is not behind NAT,
        so a relay sent it) is refused before any session.
        """
        self.protocol.datagramReceived(
            # A public address (only written into the message: nothing is sent anywhere).
            self.p1(client_address=ipaddress.ip_address("8.8.4.4")),
            RELAY,
        )
        self.assertEqual(self.refusals(), ["address-mismatch"])
        self.assertEqual(len(self.sessions), 0)

    def test_requireSourceAddress(self) -> None:
        """
        With REQUIRE_SOURCE_ADDRESS, a P1 must name its source exactly: a relayed one names the
        client's address, and one naming none is refused too.
        """
        self.sessions.settings.config.require_source_address = True
        self.protocol.datagramReceived(self.p1(), RELAY)
        self.protocol.datagramReceived(self.p1(session=b"T" * 16, client_address=None), CLIENT)
        self.assertEqual(self.refusals(), ["address-mismatch", "no-address"])
        self.protocol.datagramReceived(self.p1(session=b"U" * 16), CLIENT)
        self.assertEqual(self.sessions.pending_count(), 1)

    def test_refusedCopyDoesNotBurnTheClientsOwn(self) -> None:
        """
        The relay's copy of a P1, refused for its address, is not remembered: the client's own
        copy, arriving later, is not taken for a replay.
        """
        self.sessions.settings.config.require_source_address = True
        p1 = self.p1()
        self.protocol.datagramReceived(p1, RELAY)
        self.protocol.datagramReceived(p1, CLIENT)
        self.assertEqual(self.refusals(), ["address-mismatch"])
        self.assertEqual(self.sessions.pending_count(CLIENT_ADDRESS), 1)


class DurableFirstTests(ControlTestCase):
    """
    The replay cache writes in its own thread (here a held worker, its disk as slow as the test
    makes it). A session opens at once, so the knocks and the P2 sent right behind its P1 count,
    but nothing is granted before the P1's record is durable, and a P1 that could not be saved
    ends its session.
    """

    def setUp(self) -> None:
        super().setUp()
        directory = self.mktemp()
        os.makedirs(directory)
        self.worker = HeldWorker()
        self.protocol.replay_cache = ReplayCache(
            os.path.join(directory, "replay.cache"), 60, NOW, first_start=True,
            worker=self.worker,
        )
        self.addCleanup(self.protocol.replay_cache.close)
        self.addCleanup(self.worker.finish_all)

    def test_nothingGrantedBeforeTheP1IsDurable(self) -> None:
        """
        The knocks and the P2 are taken while the P1's record is written; the grant waits for
        it. The P2's nonce is kept in memory only (no session outlives the daemon): one write.
        """
        self.protocol.datagramReceived(self.p1(), CLIENT)
        self.assertEqual(self.sessions.watched, {CLIENT_ADDRESS}, "its knocks are watched")
        self.knock()
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.assertEqual((self.granter.opened, self.transport.sent), ([], []))
        self.worker.finish_one()  # the P1's record
        self.assertEqual(len(self.grants()), 1)
        self.assertEqual((self.worker.runs, self.worker.jobs), (1, []))
        self.protocol.datagramReceived(self.p2(), CLIENT)  # a repeated P2: the same port
        self.assertEqual(len(self.grants()), 2)

    def test_p1NotSavedEndsItsSession(self) -> None:
        """
        A P1 whose record cannot be written is refused (``cache-full``): its session ends, and
        a P2 sent meanwhile grants nothing. Once the disk has room, a copy of the same P1 opens
        the session.
        """
        real_fsync = os.fsync
        self.patch(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space")))
        p1 = self.p1()
        self.protocol.datagramReceived(p1, CLIENT)
        self.knock()
        self.protocol.datagramReceived(self.p2(), CLIENT)
        self.worker.finish_all()
        self.assertEqual(self.refusals(), ["cache-full", "cache-full"])
        self.assertEqual((len(self.sessions), self.granter.opened), (0, []))
        self.assertEqual(self.sessions.watched, frozenset(), "nothing watched any more")
        self.patch(os, "fsync", real_fsync)
        self.protocol.datagramReceived(p1, CLIENT)
        self.worker.finish_all()
        self.assertEqual(len(self.sessions), 1)

    def test_fullCacheRefusesBeforeAnySession(self) -> None:
        """
        A full cache refuses the P1 at once: no session opens, the source is not trusted.
        """
        self.protocol.replay_cache.capacity = 0
        self.protocol.datagramReceived(self.p1(), CLIENT)
        self.assertEqual(self.refusals(), ["cache-full"])
        self.assertEqual((len(self.sessions), self.sessions.watched), (0, frozenset()))
        self.assertEqual(dict(self.protocol.trusted), {})

    def test_unsavedResealedP1LeavesTheLiveSessionAlone(self) -> None:
        """
        A second P1 of a session that exists (sealed again, so not a copy: a conflict) opens
        nothing; its record not written is reported too, and the live session goes on.
        """
        self.protocol.datagramReceived(self.p1(), CLIENT)
        self.worker.finish_all()
        self.knock()
        self.patch(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space")))
        self.protocol.datagramReceived(self.p1(), CLIENT)  # sealed again: a new replay id
        self.worker.finish_all()
        self.assertEqual(self.refusals(), ["session-conflict", "cache-full"])
        self.assertEqual(len(self.sessions), 1, "the live session goes on")

    def test_clientsCopyWhileTheRelaysIsBeingSavedEndsTheSession(self) -> None:
        """
        The client's own copy of its P1 arrives while the relay's copy is still being saved:
        the relayed session ends at once, before anything could be granted.
        """
        p1 = self.p1(client_address=None)
        self.protocol.datagramReceived(p1, RELAY)
        self.protocol.datagramReceived(p1, CLIENT)
        self.assertEqual(self.refusals(), ["replay"])
        self.assertEqual(len(self.sessions), 0, "the relayed session ended")
        (warning,) = [e for e in self.session_events if e["log_format"].startswith("relay:")]
        self.assertEqual((warning["source"], warning["other"]), (RELAY[0], CLIENT[0]))
        self.worker.finish_all()
        self.assertEqual(self.granter.opened, [])


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
    ``control_ports`` builds the channel from the settings in force: the socket of UDP_PORT and
    the users of each message read from the live settings.
    """

    def channel(self, listen_address: object) -> Tuple[Any, Any]:
        clock = UdpRecordingClock()
        settings = live_settings(udp_port=1001, listen_address=listen_address, max_clock_skew=60.0)
        settings.users = users(ALICE)
        sessions = SessionTable(
            clock, granter=FakeGranter(clock), capture=FakeCapture, settings=settings
        )
        ports = control_ports(
            clock, settings, IDENTITY, sessions, ReplayCache(None, 60, NOW), RefusalLog()
        )
        ports.open()
        return clock, settings

    def test_listenAddress(self) -> None:
        clock, _ = self.channel(SERVER_ADDRESS)
        ((port, protocol, interface),) = clock.udp
        self.assertEqual((port, interface), (1001, "198.18.0.1"))
        self.assertIs(protocol.identity, IDENTITY)

    def test_liveUsers(self) -> None:
        clock, settings = self.channel(SERVER_ADDRESS)
        (_, protocol, _), = clock.udp
        self.assertIsNotNone(protocol.users().public_key("alice"))
        settings.users = users()
        self.assertIsNone(protocol.users().public_key("alice"))


class AddressFollowingTests(SynchronousTestCase):
    """
    Without LISTEN_ADDRESS, one socket per address of the host (so each answer leaves from the
    address its P1 came to), following the addresses the host gains and loses.
    """

    def test_oneSocketPerAddress(self) -> None:
        clock = UdpRecordingClock()
        found = frozenset(ipaddress.ip_address(a) for a in (
            "198.18.0.1", "198.18.0.9", "2001:2::1", "fe80::1", "127.0.0.1", "::1"))
        watchers: List[Any] = []

        def watch(reactor: Any, interface: Optional[str], on_change: Any) -> Service:
            self.assertIsNone(interface, "every interface's addresses")
            watchers.append(on_change)
            watcher = Service()
            watcher.open = lambda: None  # type: ignore[attr-defined]
            return watcher

        ports = ControlPorts(clock, 1001, None, DatagramProtocol, watch, lambda _: found)
        ports.open()
        self.assertEqual(sorted(interface for _, _, interface in clock.udp),
                         ["127.0.0.1", "198.18.0.1", "198.18.0.9", "2001:2::1", "::1"])
        self.assertEqual({port for port, _, _ in clock.udp}, {1001})
        (changed,) = watchers
        changed(found - {ipaddress.ip_address("198.18.0.9")}
                | {ipaddress.ip_address("198.18.0.10")})
        self.assertEqual(sorted(ports.listening), ["127.0.0.1", "198.18.0.1", "198.18.0.10",
                                                   "2001:2::1", "::1"])
        self.assertEqual(clock.udp[-1][2], "198.18.0.10")


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
        (listening,) = ports.listening.values()
        self.assertEqual(listening.maxThroughput, CONTROL_READ_BYTES)
        self.assertLess(CONTROL_READ_BYTES, 256 * 1024)
        self.assertGreaterEqual(CONTROL_READ_BYTES, 8 * 90)

    def test_portInUseRefusedInOneLine(self) -> None:
        first = self.ports()
        first.open()
        self.addCleanup(first.stopService)
        taken = first.listening["127.0.0.1"].getHost().port
        second = self.ports(taken)
        error = self.assertRaises(ControlPortError, second.open)
        self.assertIn(f"UDP_PORT {taken}: cannot listen on 127.0.0.1", str(error))
        self.assertIn("another sig2knockd", str(error))
        self.assertEqual(second.listening, {})

    async def test_stopCloses(self) -> None:
        ports = self.ports()
        ports.open()
        (listening,) = ports.listening.values()
        ports.startService()
        await ports.stopService()
        self.assertEqual(ports.listening, {})
        self.assertFalse(listening.connected)
