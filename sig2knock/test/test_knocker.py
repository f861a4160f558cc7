"""
Tests for ``sig2knock.client.knocker``: the retry schedule, the exchange against a fake network
and clock, and a real exchange with a small UDP server on 127.0.0.1. Nothing leaves the
loopback interface. The command line is tested in ``test_scripts_client``.
"""

import errno
import itertools
import random
import socket
from typing import Any, List, Optional, Sequence, Tuple

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sig2knock.client.knocker import (
    KNOCK_PORT_MAX,
    KNOCK_PORT_MIN,
    ClientError,
    GrantResult,
    Knocker,
    UNREACHABLE_GRACE,
    RetrySchedule,
    choose_ports,
    resolve,
    user_key,
)
from sig2knock.protocol import addresses, wire
from sig2knock.protocol import keys
from sig2knock.protocol.wire import Confirm, KnockRequest
from sig2knock.test.common import (
    CHEAP_KDF,
    CONTROL_PORT,
    SERVER,
    SERVER_PUBLIC,
    SESSION,
    START,
    TARGET,
    USER,
    FakeNetwork,
    grant_bytes,
    grant_on_confirm,
    knocker,
)
from sig2knock.test.loopback_server import LoopbackServer


# Keys of a session that is not the client's (its P1 sealed the same way, by someone else).
OTHER_SESSION = wire.seal_request(
    KnockRequest(SESSION, 0, addresses.PROTO_TCP, (1,)),
    user_key("another password", "bob", CHEAP_KDF.format(), SERVER_PUBLIC),
    keys.private_from_seed(bytes(range(1, 33))).public_key(),
)[1]


def silent_server(network: FakeNetwork, address: Tuple[Any, ...], data: bytes) -> None:
    """
    A server that never answers.
    """


class FixedRandom(random.Random):
    """
    A random source whose ``sample`` returns the first ``k`` of given ports (and records what it
    was asked).
    """

    def __init__(self, ports: Sequence[int]) -> None:
        super().__init__(0)
        self.ports = tuple(ports)
        self.population: Optional[Sequence[int]] = None
        self.k: Optional[int] = None

    def sample(  # type: ignore[override]
        self, population: Sequence[int], k: int, **kwargs: Any
    ) -> List[int]:
        self.population = population
        self.k = k
        chosen = list(self.ports[:k])
        # choose_ports draws one port more than it needs: pad with ports not given.
        chosen += [port for port in population if port not in self.ports][: k - len(chosen)]
        return chosen


class RetryScheduleTests(SynchronousTestCase):
    """
    The wait for P3 starts at 2 ms and doubles up to 1 s.
    """

    def test_default(self) -> None:
        intervals = list(itertools.islice(RetrySchedule().intervals(), 12))
        expected = [0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 1.0, 1.0]
        self.assertEqual(len(intervals), len(expected))
        for got, want in zip(intervals, expected):
            self.assertAlmostEqual(got, want)

    def test_custom(self) -> None:
        schedule = RetrySchedule(first=1.0, factor=3.0, cap=5.0)
        self.assertEqual(list(itertools.islice(schedule.intervals(), 4)), [1.0, 3.0, 5.0, 5.0])


class ChoosePortsTests(SynchronousTestCase):
    """
    Knock ports are distinct, above 1023, and never the control port.
    """

    def test_distinctInRange(self) -> None:
        ports = choose_ports(random.Random(7), 64, 1001)
        self.assertEqual(len(set(ports)), 64)
        for port in ports:
            self.assertTrue(KNOCK_PORT_MIN <= port <= KNOCK_PORT_MAX)

    def test_excludesControlPort(self) -> None:
        """
        One port more than needed is drawn from 1024-65535; the control port is dropped when it
        was drawn, else the extra port is.
        """
        drawn = FixedRandom([5000, 2000, 3000])
        self.assertEqual(choose_ports(drawn, 2, 5000), (2000, 3000))
        self.assertEqual(drawn.k, 3)
        assert drawn.population is not None
        self.assertEqual((min(drawn.population), max(drawn.population)), (1024, 65535))
        self.assertEqual(len(drawn.population), KNOCK_PORT_MAX - KNOCK_PORT_MIN + 1)
        self.assertEqual(choose_ports(FixedRandom([2000, 3000, 4000]), 2, 5000), (2000, 3000))
        self.assertEqual(choose_ports(FixedRandom([2000, 5000, 4000]), 2, 5000), (2000, 4000))

    def test_countChecked(self) -> None:
        for count in (0, 65):
            self.assertRaises(ValueError, choose_ports, random.Random(), count, 1001)


class ResolveTests(SynchronousTestCase):
    """
    The first getaddrinfo result is the target; failures are a ``ClientError``.
    """

    def test_ipv4(self) -> None:
        target = resolve("127.0.0.1", 1001)
        self.assertEqual(
            (target.family, target.address, target.port), (socket.AF_INET, "127.0.0.1", 1001)
        )
        self.assertEqual(target.sockaddr_for(2000), ("127.0.0.1", 2000))

    def test_ipv6FirstResult(self) -> None:
        def getaddrinfo(*args: Any) -> List[Any]:
            return [
                (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("2001:db8::1", 1001, 0, 3)),
                (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.1", 1001)),
            ]

        target = resolve("example", 1001, getaddrinfo)
        self.assertEqual(str(target), "example (2001:db8::1) port 1001")
        self.assertEqual(target.family, socket.AF_INET6)
        self.assertEqual(target.sockaddr_for(2000), ("2001:db8::1", 2000, 0, 3))

    def test_addressesNeedNoLookup(self) -> None:
        def getaddrinfo(*args: Any) -> List[Any]:
            raise AssertionError("looked up")

        target = resolve("2001:db8::7", 1001, getaddrinfo)
        self.assertEqual(
            (target.family, target.address, target.sockaddr),
            (socket.AF_INET6, "2001:db8::7", ("2001:db8::7", 1001, 0, 0)),
        )
        self.assertEqual(target.sockaddr_for(2000), ("2001:db8::7", 2000, 0, 0))
        self.assertEqual(str(target), "2001:db8::7 port 1001")
        target = resolve("192.0.2.9", 1001, getaddrinfo)
        self.assertEqual((target.family, target.sockaddr), (socket.AF_INET, ("192.0.2.9", 1001)))

    def test_zonedAddressIsLookedUp(self) -> None:
        asked = []

        def getaddrinfo(*args: Any) -> List[Any]:
            asked.append(args[0])
            return [(socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("fe80::1", 1001, 0, 2))]

        target = resolve("fe80::1%eth0", 1001, getaddrinfo)
        self.assertEqual(asked, ["fe80::1%eth0"])
        self.assertEqual(target.sockaddr, ("fe80::1", 1001, 0, 2))

    def test_failure(self) -> None:
        def getaddrinfo(*args: Any) -> List[Any]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        error = self.assertRaises(ClientError, resolve, "nowhere.invalid", 1001, getaddrinfo)
        self.assertEqual(str(error), "cannot resolve nowhere.invalid: Name or service not known")


class KnockerTests(SynchronousTestCase):
    """
    The exchange against a fake network: rounds, retries, what is ignored, and the timeout.
    """

    def assertClosed(self, network: FakeNetwork) -> None:
        for sock in network.sockets:
            self.assertTrue(sock.closed)

    def test_firstRound(self) -> None:
        network = FakeNetwork(grant_on_confirm(1, port=40001))
        result = knocker(network).run()
        self.assertIsInstance(result, GrantResult)
        self.assertEqual((result.port, result.rounds, result.session_id), (40001, 1, SESSION))
        self.assertEqual(result.deadline_ms, wire.now_ms(START + 10))
        p1, p2 = network.control_messages()
        self.assertIsInstance(p1.message, KnockRequest)
        self.assertIsInstance(p2.message, Confirm)
        self.assertEqual(p1.message.session_id, SESSION)
        self.assertEqual(p2.message.session_id, SESSION)
        self.assertEqual(p1.message.protocol, addresses.PROTO_TCP)
        ports = p1.message.ports
        self.assertEqual(len(ports), 4)
        self.assertNotIn(CONTROL_PORT, ports)
        # P1, then each knock in order as a TCP connect, then P2.
        self.assertEqual([entry[0] for entry in network.sent], ["udp"] + ["tcp"] * 4 + ["udp"])
        self.assertEqual(network.knocks(), [("tcp", port) for port in ports])
        for _, sock, _, _ in network.sent[1:5]:
            self.assertEqual(sock.kind, socket.SOCK_STREAM)
            self.assertFalse(sock.blocking)
        self.assertClosed(network)

    def test_knocksPauseAfterRequest(self) -> None:
        """
        Each round's knocks follow its P1 after ``knock_pause`` (the server's time to start
        capturing them); P2 follows the knocks at once.
        """
        network = FakeNetwork(grant_on_confirm(2))
        schedule = RetrySchedule(first=0.01, knock_pause=0.0015)
        knocker(network, schedule=schedule).run()
        kinds = [entry[0] for entry in network.sent]
        self.assertEqual(kinds, (["udp"] + ["tcp"] * 4 + ["udp"]) * 2)
        for start in (0, 6):
            p1, knocks, p2 = (
                network.sent_at[start],
                network.sent_at[start + 1 : start + 5],
                network.sent_at[start + 5],
            )
            self.assertEqual(set(knocks), {p1 + 0.0015})
            self.assertEqual(p2, p1 + 0.0015)
        self.assertAlmostEqual(network.sent_at[6] - network.sent_at[0], 0.0015 + 0.01, places=6)

    def test_defaultPause(self) -> None:
        self.assertEqual(RetrySchedule().knock_pause, 0.0015)

    def test_grantAfterThirdRound(self) -> None:
        """
        Rounds repeat after 10 ms, then 20 ms; each repeats the same P1 (the server drops the
        copies it has), the same knocks, and a fresh P2 of the same session.
        """
        network = FakeNetwork(grant_on_confirm(3, port=40002))
        result = knocker(network).run()
        self.assertEqual((result.port, result.rounds), (40002, 3))
        messages = network.control_messages()
        self.assertEqual(
            [type(received.message) for received in messages],
            [KnockRequest, Confirm] * 3,
        )
        self.assertEqual(len({received.nonce for received in messages}), 4)
        self.assertEqual({received.message.session_id for received in messages}, {SESSION})
        self.assertEqual(len({received.keys for received in messages}), 1)
        requests = [received.message for received in messages[::2]]
        self.assertEqual(len(set(requests)), 1)
        confirms = [received.message for received in messages[1::2]]
        self.assertEqual(
            [confirm.timestamp_ms - wire.now_ms(START) for confirm in confirms], [0, 10, 30]
        )
        self.assertEqual(network.knocks(), [("tcp", port) for port in requests[0].ports] * 3)
        self.assertAlmostEqual(network.clock.now - START, 0.031, places=5)
        self.assertClosed(network)

    def test_udpKnocks(self) -> None:
        network = FakeNetwork(grant_on_confirm(1))
        knocker(network, protocol=addresses.PROTO_UDP, knocks=6).run()
        p1 = network.control_messages()[0].message
        self.assertEqual(p1.protocol, addresses.PROTO_UDP)
        self.assertEqual(network.knocks(), [("udp", port) for port in p1.ports])
        control = network.sent[0][1]
        for _, sock, _, data in network.sent[1:7]:
            self.assertEqual(len(data), 1)
            self.assertEqual(sock.kind, socket.SOCK_DGRAM)
            self.assertIsNot(sock, control)
        self.assertClosed(network)

    def test_injectedPorts(self) -> None:
        network = FakeNetwork(grant_on_confirm(1))
        Knocker(
            USER,
            TARGET,
            SERVER_PUBLIC,
            clock=network.clock,
            monotonic=network.clock,
            socket_factory=network.socket,
            rng=FixedRandom([3000, 2000, 4000]),
            knocks=3,
        ).run()
        self.assertEqual(network.knocks(), [("tcp", 3000), ("tcp", 2000), ("tcp", 4000)])

    def test_ignoresOtherDatagrams(self) -> None:
        """
        Garbage, a P3 of another session id, a P3 from another source, one sealed with another
        session's keys, and an ICMP error reported by recvfrom are all skipped.
        """
        network = FakeNetwork(silent_server)
        now = START
        network.deliver(0.001, b"garbage")
        network.deliver(0.001, b"\x02" * 88)
        network.deliver(
            0.002, lambda: grant_bytes(b"\x00" * 16, now, network.session_keys(), 1111)
        )
        network.deliver(0.002, network.grant_later(SESSION, now, 2222), source=(SERVER, 1002))
        network.deliver(0.002, network.grant_later(SESSION, now, 3333), source=("192.0.2.8", 1001))
        network.deliver(0.003, grant_bytes(SESSION, now, OTHER_SESSION, 4444))
        network.deliver(0.004, ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
        network.deliver(0.004, OSError(errno.EHOSTUNREACH, "unreachable"))
        network.deliver(0.005, network.grant_later(SESSION, now, 6666))
        result = knocker(network).run()
        self.assertEqual((result.port, result.rounds), (6666, 1))
        self.assertEqual(network.inbox, [])

    def test_staleGrantIgnored(self) -> None:
        network = FakeNetwork(silent_server)
        network.deliver(0.001, network.grant_later(SESSION, START - 301, 1111))
        network.deliver(0.012, network.grant_later(SESSION, START, 2222))
        result = knocker(network).run()
        self.assertEqual((result.port, result.rounds), (2222, 2))

    def test_lateGrantOfEarlierRoundAccepted(self) -> None:
        network = FakeNetwork(silent_server)
        network.deliver(0.025, network.grant_later(SESSION, START, 2222))
        self.assertEqual(knocker(network).run().rounds, 2)

    def test_sendErrorsIgnored(self) -> None:
        network = FakeNetwork(silent_server)
        network.send_error = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        network.deliver(0.005, network.grant_later(SESSION, START, 6666))
        self.assertEqual(knocker(network, protocol=addresses.PROTO_UDP).run().port, 6666)

    def test_closedPortReportedWithinASecond(self) -> None:
        """
        The server's host answers ICMP port unreachable (no daemon): the client goes on for
        ``UNREACHABLE_GRACE`` (a daemon being restarted still gets its chance), then says that
        nothing listens there, long before its timeout.
        """
        network = FakeNetwork(silent_server)
        for at in (0.001, 0.02, 0.3, 0.9):
            network.deliver(at, ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
        error = self.assertRaises(ClientError, knocker(network, timeout=10.0).run)
        self.assertIn(f"nothing listens at {SERVER} port {CONTROL_PORT}", str(error))
        self.assertIn("ICMP port unreachable", str(error))
        elapsed = network.clock.now - START
        self.assertTrue(UNREACHABLE_GRACE <= elapsed < UNREACHABLE_GRACE + 1.1, elapsed)
        senders = {sock for kind, sock, address, _ in network.sent
                   if kind == "udp" and address == TARGET.sockaddr}
        self.assertEqual([sock.peer for sock in senders], [TARGET.sockaddr],
                         "the control socket is connected, so ICMP errors reach it")

    def test_restartedDaemonWithinTheGraceIsReached(self) -> None:
        network = FakeNetwork(silent_server)
        network.deliver(0.001, ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
        network.deliver(0.5, network.grant_later(SESSION, START, 7777))
        self.assertEqual(knocker(network).run().port, 7777)

    def test_timeout(self) -> None:
        """
        Without P3 the client gives up at the timeout, having retried on the schedule.
        """
        network = FakeNetwork(silent_server)
        reports: List[str] = []
        error = self.assertRaises(
            ClientError, knocker(network, timeout=1.0, report=reports.append).run
        )
        self.assertIn(f"no answer from {SERVER} port {CONTROL_PORT} within 1 s", str(error))
        self.assertIn("wrong user, password, key or --server-key", str(error))
        self.assertAlmostEqual(network.clock.now - START, 1.0, places=5)
        # 10+20+40+80+160+320 ms, then the 7th round's wait is cut short by the timeout.
        self.assertEqual(len(network.control_messages()), 14)
        self.assertEqual(len(reports), 21)
        self.assertClosed(network)

    def test_requestNamesTheClientsAddress(self) -> None:
        """
        P1 carries the address the client sends from, as its socket sees it.
        """
        network = FakeNetwork(grant_on_confirm(1))
        result = knocker(network).run()
        p1 = network.control_messages()[0].message
        self.assertEqual(str(p1.client_address), "192.0.2.50")
        self.assertEqual(str(result.client_address), "192.0.2.50")

    def test_doorOfferedOnRequest(self) -> None:
        """
        With ``door`` (``--stdio``) P1 says the client will show the door secret; the result
        carries the session's secret, and P3's word on whether the port requires it.
        """
        for door in (False, True):
            network = FakeNetwork(grant_on_confirm(1))
            result = knocker(network, door=door).run()
            self.assertEqual(network.control_messages()[0].message.door, door)
            self.assertEqual(len(result.door), 16)
            self.assertFalse(result.door_required, "this P3 did not ask for it")

    def test_addressLeftOutOnRequest(self) -> None:
        network = FakeNetwork(grant_on_confirm(1))
        knocker(network, send_address=False).run()
        self.assertIsNone(network.control_messages()[0].message.client_address)

    def test_unknownAddressLeftOut(self) -> None:
        network = FakeNetwork(grant_on_confirm(1))
        network.local_address = "not an address"
        knocker(network).run()
        self.assertIsNone(network.control_messages()[0].message.client_address)

    def test_relayedGrantIsSeen(self) -> None:
        """
        A P3 granting another address than the client's own public one marks the result
        relayed (the command then refuses to use it); behind NAT it cannot be told.
        """
        import ipaddress

        for own, granted, relayed in (
            ("8.8.4.4", "8.8.4.4", False),
            ("8.8.4.4", "9.9.9.9", True),
            ("192.168.1.2", "9.9.9.9", False),
        ):
            with self.subTest(own=own, granted=granted):
                network = FakeNetwork(silent_server)
                network.local_address = own
                network.deliver(0.001, lambda: wire.encode_grant(
                    wire.Grant(SESSION, wire.now_ms(START), 4000, wire.now_ms(START + 9),
                               ipaddress.ip_address(granted)),
                    network.session_keys(),
                ))
                result = knocker(network).run()
                self.assertEqual(result.relayed, relayed)
                self.assertEqual(str(result.granted_address), granted)

    def test_reports(self) -> None:
        network = FakeNetwork(grant_on_confirm(1, port=40001))
        reports: List[str] = []
        knocker(network, report=reports.append).run()
        self.assertEqual(len(reports), 4)
        self.assertIn("P1 sent", reports[0])
        self.assertIn("knocked tcp", reports[1])
        self.assertIn("P2 sent", reports[2])
        self.assertIn("P3 received: port 40001", reports[3])


class LoopbackTests(SynchronousTestCase):
    """
    The real client code path against a small server on 127.0.0.1.
    """

    def test_udpKnocks(self) -> None:
        server = LoopbackServer(grant_port=45678, knock_ports=4)
        self.addCleanup(server.stop)
        target = resolve("127.0.0.1", server.port)
        rng = FixedRandom(server.knock_ports)
        result = Knocker(USER, target, SERVER_PUBLIC, protocol=addresses.PROTO_UDP, timeout=5.0, rng=rng).run()
        self.assertEqual(result.port, 45678)
        self.assertEqual(server.errors, [])
        self.assertEqual(server.requests[0].ports, tuple(server.knock_ports))
        # The server polls its sockets in turn, so it cannot tell their order (the fake-socket
        # tests check that); it must have seen each of them.
        self.assertEqual(set(server.seen_knocks), set(server.knock_ports))

    def test_ipv6(self) -> None:
        try:
            server = LoopbackServer(grant_port=45677, knock_ports=2, host="::1")
        except OSError as error:
            raise SkipTest(f"no IPv6 loopback: {error}")
        self.addCleanup(server.stop)
        target = resolve("::1", server.port)
        self.assertEqual(target.family, socket.AF_INET6)
        rng = FixedRandom(server.knock_ports)
        result = Knocker(USER, target, SERVER_PUBLIC, protocol=addresses.PROTO_UDP, knocks=2, rng=rng).run()
        self.assertEqual(result.port, 45677)
        self.assertEqual(set(server.seen_knocks), set(server.knock_ports))

    def test_tcpKnocks(self) -> None:
        """
        TCP knocks go to ports bound here but not listening, so they meet a reset.
        """
        closed = []
        for _ in range(4):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            self.addCleanup(sock.close)
            closed.append(sock.getsockname()[1])
        server = LoopbackServer(grant_port=45679)
        self.addCleanup(server.stop)
        result = Knocker(
            USER,
            resolve("127.0.0.1", server.port),
            SERVER_PUBLIC,
            timeout=5.0,
            rng=FixedRandom(closed),
        ).run()
        self.assertEqual(result.port, 45679)
