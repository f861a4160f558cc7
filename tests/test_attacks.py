"""
Attacks on the real daemon in the namespace lab, against the security requirements of
DESIGN.md: replay (same server, after a restart, at another server with its own identity), spoofed
noise during a knock, floods of junk and of almost-valid messages, session-state exhaustion, and
clocks.

The attack programs are in ``tests/attack_tools.py`` (run by ``tests/attack_driver.py``); they
run inside the lab's namespaces and send only to lab addresses (198.18.0.0/15), bounded in packets
and in time. The daemon runs with ``FIREWALL = nftables`` and ``FIREWALL_POLICY = lockdown``.
Needs root; skipped otherwise.
"""

import errno
import glob
import os
import shutil
import time
from typing import Dict, List, Optional, Tuple

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sig2knock.protocol import wire
from tests import attack_driver as driver, attack_tools as tools, lab
from tests.lab import built_lab

RANGE = (40000, 40999)
SETTINGS = {
    "FIREWALL": "nftables",
    "FIREWALL_POLICY": "lockdown",
    "ASSIGN_PORT_RANGE": f"{RANGE[0]}-{RANGE[1]}",
    "SINGLECONN_PORTOPEN_TIME": "3",
}
# Extra addresses of the intruder: the sources of floods.
FLOOD_SOURCES = [f"198.18.0.{host}" for host in range(10, 20)]
SECOND_SERVER_IP = "198.18.0.9"
BOB_PASSWORD = "bob has a long passphrase too"
MIB = 1024
RSS_GROWTH_LIMIT_KIB = 64 * MIB
# Limit refusals the session table (or a rate limiter) may log under state exhaustion.
# A P1 with the client's default 4 knocks and no service name.
P1_SIZE = wire.MIN_KNOCK_REQUEST_SIZE + 2 * 3
LIMIT_REASONS = ("source-limit", "user-sources", "user-limit", "table-full", "rate-limited")


def why_not() -> Optional[str]:
    return lab.why_not_runnable() or (None if shutil.which("nft") else "nft is not installed")


class AttackLabMixin:
    """
    A fresh lab per test, with the echo service as the hidden service.
    """

    skip = why_not()

    def setUp(self) -> None:
        self.lab = built_lab(self)

    def start(self, users: Optional[Dict[str, str]] = None, **settings: str) -> None:
        self.lab.start_daemon({**SETTINGS, **settings}, users)

    def knocked_port(self, timeout: float = 5, **options) -> int:
        result = self.lab.knock(timeout=timeout, **options)
        self.assertEqual(
            result.returncode, 0, f"client failed: {result.stderr}\n--- daemon ---\n"
            f"{self.lab.log()[-5000:]}"
        )
        return int(result.stdout)

    def ports_in_range(self) -> List[int]:
        return [port for port in self.lab.listening_ports() if RANGE[0] <= port <= RANGE[1]]

    def assertDaemonAlive(self) -> None:
        self.assertIsNone(self.lab.daemon.poll(), f"the daemon died:\n{self.lab.log()[-3000:]}")


class ReplayTests(AttackLabMixin, SynchronousTestCase):
    """
    Datagrams captured from a real knock, re-sent with the client's own source address and port
    (spoofed from the intruder through a raw socket), get nothing: not at the same server, not
    after it restarts, not at another server (it has its own identity). The knocks are UDP, so
    that the control experiment can send a whole login the same spoofed way.
    """

    def capture_knock(self) -> Tuple[List[Dict], int]:
        """
        Capture the control datagrams of one real knock; return them and the granted port (not
        used yet: ``use_grant`` does that).
        """
        path = os.path.join(self.lab.directory, "p1p2.jsonl")
        capture = driver.Background(self.lab, "server", "capture", {
            "interface": "br0",
            "filter": f"udp and src host {lab.CLIENT_IP} and dst port {lab.CONTROL_PORT}",
            "out": path, "seconds": 30, "max": 1000,
        })
        port = self.knocked_port(extra=["--knock-proto", "udp"])
        time.sleep(0.2)
        capture.stop()
        capture.result()
        datagrams = driver.read_capture(path)
        sizes = {len(bytes.fromhex(d["payload"])) for d in datagrams}
        self.assertIn(P1_SIZE, sizes, "a P1 (4 knocks) was captured")
        self.assertIn(wire.CONFIRM_SIZE, sizes, "a P2 was captured")
        # Only the control datagrams: the knocks are replayed by no one.
        return [d for d in datagrams if d["dport"] == lab.CONTROL_PORT], port

    def use_grant(self, port: int) -> None:
        """
        The client's one connection through ``port``; then its listener is gone.
        """
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
        self.assertTrue(driver.wait_for(lambda: port not in self.ports_in_range(), 5))

    def replay(self, datagrams: List[Dict], reason: str, destination: str = lab.SERVER_IP,
               payload=lambda data: data, p2_reason: str = "", repeated_p1: bool = False) -> None:
        """
        Re-send ``datagrams`` from the intruder, spoofing their original source, to
        ``destination``; assert nothing answers and every one is refused with ``reason`` (the
        P2s with ``p2_reason`` when given: once a session has ended, its P2s name no session).
        With ``repeated_p1`` the session still lives, and a copy of its P1 from its own
        address is taken for the client's next round: dropped with a debug line, ``P1
        repeated``, not reported as a refusal.
        """
        before_ports = set(self.ports_in_range())
        offset = len(self.lab.log())
        source_ports = sorted({d["sport"] for d in datagrams})
        listener = driver.Background(self.lab, "client", "listen", {
            "address": lab.CLIENT_IP, "ports": source_ports, "seconds": 2.0,
        })
        answers_path = os.path.join(self.lab.directory, f"answers-{offset}.jsonl")
        sniffer = driver.Background(self.lab, "client", "capture", {
            "interface": "eth0", "filter": "udp and not dst host 255.255.255.255",
            "out": answers_path, "seconds": 10, "max": 1000,
        })
        packets = [
            {**d, "dst": destination,
             "payload": payload(bytes.fromhex(d["payload"])).hex()}
            for d in datagrams
        ]
        sent = driver.run_tool(self.lab, "intruder", "rawsend", {"packets": packets,
                                                                "interval": 0.002})
        self.assertEqual(sent["sent"], len(datagrams))
        received = listener.result()["received"]
        sniffer.stop()
        sniffer.result()
        # Replies to the spoofed source would land in the client's namespace.
        answers = [a for a in driver.read_capture(answers_path) if a["src"] != lab.CLIENT_IP]
        self.assertEqual(received, [], "a replayed datagram was answered")
        self.assertEqual(answers, [], "UDP reached the client's address during the replay")
        reasons = {reason, p2_reason or reason}

        def refused() -> int:
            log = driver.log_since(self.lab, offset)
            repeated = log.count("] P1 repeated: ") if repeated_p1 else 0
            return repeated + sum(driver.refusal_count(log, one) for one in reasons)

        # Past its share of the minute's detailed lines, a source's refusals are counted in the
        # summary at the end of the minute: waited for only then.
        self.assertTrue(
            driver.wait_for(lambda: refused() >= len(datagrams), 65),
            f"expected {len(datagrams)} {sorted(reasons)} refusals:\n"
            f"{driver.log_since(self.lab, offset)[-4000:]}",
        )
        log = driver.log_since(self.lab, offset)
        for step in ("P1 accepted", "knock sequence complete", "granted", "P3 sent"):
            self.assertNotIn(step, log)
        self.assertFalse(set(self.ports_in_range()) - before_ports, "a new port was opened")
        print(f"\nreplayed {len(datagrams)} datagrams to {destination}: "
              f"{refused()} refused {sorted(reasons)}, 0 answered")

    def fresh_login_is_answered(self, datagrams: List[Dict]) -> None:
        """
        The control experiment: the same spoofed path, carrying a fresh login of alice's (a P1
        sealed here with her key, its UDP knocks and its P2), does get its P3 at the client's
        address, so the silence of a replay is the replay cache's doing, not the harness's.
        """
        from sig2knock.protocol import wire

        captured = datagrams[0]
        alice = tools.lab_key("alice", lab.PASSWORD, self.lab.server_key)
        p1, request, session_keys = tools.sealed_p1(
            "alice", alice, self.lab.server_key, protocol=17
        )
        p2 = wire.encode_confirm(wire.Confirm(request.session_id, wire.now_ms(time.time())),
                                 session_keys)
        spoofed = {"src": lab.CLIENT_IP, "sport": captured["sport"], "dst": lab.SERVER_IP}
        packets = (
            [{**spoofed, "dport": lab.CONTROL_PORT, "payload": p1.hex()}]
            + [{**spoofed, "dport": port, "payload": "00"} for port in request.ports]
            + [{**spoofed, "dport": lab.CONTROL_PORT, "payload": p2.hex()}]
        )
        listener = driver.Background(self.lab, "client", "listen", {
            "address": lab.CLIENT_IP, "ports": [captured["sport"]], "seconds": 1.5,
        })
        driver.run_tool(self.lab, "intruder", "rawsend", {"packets": packets, "interval": 0.05})
        received = listener.result()["received"]
        self.assertEqual([r["size"] for r in received], [wire.GRANT_SIZE],
                         "the control experiment got no P3: the harness sees nothing")

    def test_replayRefusedNowAfterRestartAndElsewhere(self) -> None:
        self.start(SINGLECONN_PORTOPEN_TIME="10", KNOCK_PROTO="udp")
        datagrams, port = self.capture_knock()
        # At once, while the session is still remembered (its grant not used yet, it answers a
        # new P2 with the same port): only the replay cache stands in the way.
        self.replay(datagrams, "replay", repeated_p1=True)
        self.fresh_login_is_answered(datagrams)
        self.use_grant(port)
        # Once used, the session is forgotten: its P1s are replays, its P2s name no session.
        self.replay(datagrams, "replay", p2_reason="unknown-session")
        self.assertDaemonAlive()

        # After a clean restart on the same STATE_DIR: the cache was persisted.
        self.lab.stop_daemon()
        self.start(KNOCK_PROTO="udp")
        self.replay(datagrams, "replay", p2_reason="unknown-session")

        # At a second server with its own identity (and the same user and password): its key
        # opens none of them, and the P2s name no session of its own.
        self.lab.stop_daemon()
        self.lab.ns("server", ["ip", "addr", "add", f"{SECOND_SERVER_IP}/24", "dev", "br0"])
        self.start(LISTEN_ADDRESS=SECOND_SERVER_IP, STATE_DIR="state-second", KNOCK_PROTO="udp")
        p1s = [d for d in datagrams if len(d["payload"]) == 2 * P1_SIZE]
        p2s = [d for d in datagrams if len(d["payload"]) == 2 * 62]
        self.replay(p1s, "who", destination=SECOND_SERVER_IP)
        self.replay(p2s, "unknown-session", destination=SECOND_SERVER_IP)
        self.assertDaemonAlive()


    def test_startWithTheClockBehindReopensNothing(self) -> None:
        """
        A login captured; a restart with the clock an hour behind (no RTC, a restored snapshot)
        that loads the replay cache and writes it back at its stop; a start with the clock
        right again: the login's datagrams are still refused as replays.
        """
        libraries = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
        if not libraries:
            raise SkipTest("libfaketime is not installed (Debian's faketime; .ci/run installs it)")
        self.start(KNOCK_PROTO="udp")
        datagrams, port = self.capture_knock()
        self.use_grant(port)
        self.lab.stop_daemon()
        # env, not the faketime wrapper: the daemon keeps its pid, so stopping it stops it.
        behind = ["env", f"LD_PRELOAD={libraries[0]}", "FAKETIME=-1h"]
        self.lab.start_daemon({**SETTINGS, "KNOCK_PROTO": "udp"}, prefix=behind)
        self.assertIn(time.strftime("%Y-%m-%dT%H", time.gmtime(time.time() - 3600)),
                      self.lab.log()[-300:], "the daemon's clock is an hour behind")
        self.lab.stop_daemon()
        self.start(KNOCK_PROTO="udp")
        self.replay(datagrams, "replay", p2_reason="unknown-session")
        self.assertDaemonAlive()

    def test_fullStateDirectoryLosesNothing(self) -> None:
        """
        ``STATE_DIR`` on a small tmpfs that fills up during the run: logins still saved are
        let in, the compaction that finds no room is logged and keeps the old file; after the
        disk is freed and the daemon killed and started again, no login accepted before is
        replayable.
        """
        state = os.path.join(self.lab.directory, "state")
        os.makedirs(state, mode=0o700)
        lab.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", state])
        self.addCleanup(lab.run, ["umount", "-l", state], check=False)
        self.start(KNOCK_PROTO="udp", SINGLECONN_PORTOPEN_TIME="10")
        before, port = self.capture_knock()
        self.use_grant(port)
        filler = os.path.join(state, "filler")
        with open(filler, "wb", buffering=0) as out:
            try:
                while True:
                    out.write(b"\0" * 4096)
            except OSError as error:
                self.assertEqual(error.errno, errno.ENOSPC)
        during, port = self.capture_knock()  # its records fit the cache file's last page
        self.use_grant(port)
        self.lab.stop_daemon()  # the compaction at stop finds no room
        self.assertIn("cannot compact the replay cache at stop", self.lab.log())
        os.unlink(filler)
        self.start(KNOCK_PROTO="udp")
        self.replay(before + during, "replay", p2_reason="unknown-session")
        self.assertDaemonAlive()


class NoiseTests(AttackLabMixin, SynchronousTestCase):
    """
    Spoofed noise from the client's own address (extra SYNs and datagrams to random ports)
    during a real knock does not break the knock.
    """

    def knock_through_noise(self, protocol: str) -> None:
        self.start(KNOCK_PROTO=protocol)
        noise = driver.Background(self.lab, "client", "noise", {
            "target": lab.SERVER_IP, "count": 20000, "seconds": 2.0,
            "protocols": ["tcp", "udp"], "exclude": [lab.CONTROL_PORT], "seed": 1,
            # Not the assigned ports: the noise comes from the client's own stack, so a SYN to
            # the granted port completes a handshake and uses the one connection up, which is
            # the grant working as specified, not the noise breaking the knock.
            "exclude_ranges": [list(RANGE)],
        })
        started = time.monotonic()
        port = self.knocked_port(extra=["--knock-proto", protocol])
        elapsed = time.monotonic() - started
        self.assertTrue(noise.running(), "the noise ended before the knock did")
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
        sent = noise.result()
        rate = sent["sent"] / sent["elapsed"]
        print(f"\n{protocol} knock through noise: {elapsed:.2f} s; noise {sent},"
              f" {rate:.0f} packets/s, about {rate * elapsed:.0f} while sig2knockc ran")
        self.assertGreater(sent["sent"], 2000)
        self.assertDaemonAlive()

    def test_tcpKnockThroughNoise(self) -> None:
        self.knock_through_noise("tcp")

    def test_udpKnockThroughNoise(self) -> None:
        self.knock_through_noise("udp")


class FloodTests(AttackLabMixin, SynchronousTestCase):
    """
    Tens of thousands of junk and almost-valid datagrams from ten addresses: none answered, the
    daemon stays alive and small, and a real knock succeeds during and after the flood.
    """

    def templates(self) -> List[str]:
        server = self.lab.server_key
        alice = tools.lab_key("alice", lab.PASSWORD, server)
        stranger = tools.lab_key("mallory", "mallory is not in the users file", server)
        made = []
        for name, key in (("alice", alice), ("mallory", stranger)):
            for _ in range(8):
                made.append(tools.make_p1(name, key, server))
                made.append(tools.make_p2(name, key, server))
        return [data.hex() for data in made]

    def test_floodIsSilentAndDoesNotStopAKnock(self) -> None:
        self.start()
        driver.add_addresses(self.lab, "intruder", "eth0", FLOOD_SOURCES)
        sniff_path = os.path.join(self.lab.directory, "intruder-in.jsonl")
        sniffer = driver.Background(self.lab, "intruder", "capture", {
            "interface": "eth0", "filter": f"udp and src host {lab.SERVER_IP}",
            "out": sniff_path, "seconds": 60, "max": 1000,
        })
        templates = self.templates()
        pid = self.lab.daemon.pid
        before = driver.rss_kib(pid)
        sampler = driver.RssSampler(pid)
        sampler.start()
        floods = [
            driver.Background(self.lab, "intruder", "flood", {
                "target": [lab.SERVER_IP, lab.CONTROL_PORT], "sources": FLOOD_SOURCES[i::2],
                "count": 20000, "pace": 6.0, "seconds": 12.0, "seed": i,
                "templates": templates,
                "mix": {"junk": 4, "shaped": 2, "flip": 4},
            })
            for i in range(2)
        ]
        time.sleep(1.0)
        started = time.monotonic()
        port = self.knocked_port(timeout=10)
        during = time.monotonic() - started
        still_flooding = all(flood.running() for flood in floods)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
        results = [flood.result(timeout=60) for flood in floods]
        peak = sampler.stop()
        time.sleep(0.5)
        after_flood = driver.rss_kib(pid)
        self.assertDaemonAlive()
        started = time.monotonic()
        port = self.knocked_port()
        after = time.monotonic() - started
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
        sniffer.stop()
        sniffer.result()
        # A clean stop logs the last summary of refusals (the daemon logs only the first few of
        # each minute one by one).
        self.lab.stop_daemon()

        sent = sum(r["sent"] for r in results)
        kinds = ", ".join(
            f"{kind}={sum(r['by_kind'][kind] for r in results)}" for kind in results[0]["by_kind"]
        )
        log = self.lab.log()
        print(
            f"\nflood: {sent} datagrams from {len(FLOOD_SOURCES)} addresses in"
            f" {max(r['elapsed'] for r in results):.1f} s"
            f" ({kinds}),"
            f" send errors {sum(r['errors'] for r in results)}"
            f"\ndaemon VmRSS: before {before} KiB, peak {peak} KiB, after {after_flood} KiB"
            f" (growth {after_flood - before} KiB, peak growth {peak - before} KiB,"
            f" {sampler.samples} samples)"
            f"\nknock during the flood: {during:.2f} s (flood still running: {still_flooding});"
            f" after: {after:.2f} s"
            f"\nrefusals logged: "
            + ", ".join(f"{reason}={driver.refusal_count(log, reason)}"
                        for reason in ("size", "version", "type", "who", "unknown-user",
                                       "unknown-session", "rate-limited", "auth", "malformed",
                                       "replay"))
        )
        self.assertGreaterEqual(sent, 30000)
        self.assertTrue(still_flooding, "the knock did not happen during the flood")
        for result in results:
            self.assertEqual(result["answered"], [], "a flood datagram was answered")
        self.assertEqual(driver.read_capture(sniff_path), [], "the server sent UDP to the intruder")
        self.assertLess(peak - before, RSS_GROWTH_LIMIT_KIB)
        self.assertLess(after_flood - before, RSS_GROWTH_LIMIT_KIB)


class ExhaustionTests(AttackLabMixin, SynchronousTestCase):
    """
    P1s as fast as possible, from ten addresses under keys of users not in the users file, and
    valid ones from bob at one address, fill no table that alice needs: she still gets in,
    promptly. (P1s under alice's own key from elsewhere would be alice herself: whoever holds
    her key spends her per-user allowance.)
    """

    def test_sessionFloodsLeaveRoomForAlice(self) -> None:
        self.start(users={"alice": lab.PASSWORD, "bob": BOB_PASSWORD})
        driver.add_addresses(self.lab, "intruder", "eth0", FLOOD_SOURCES)
        server = self.lab.server_key
        bob = tools.lab_key("bob", BOB_PASSWORD, server)
        strangers = [
            {"name": name,
             "key": tools.lab_key(name, f"{name} is not in the users file", server).hex()}
            for name in ("carol", "dave", "erin")
        ]
        pid = self.lab.daemon.pid
        before = driver.rss_kib(pid)
        sampler = driver.RssSampler(pid)
        sampler.start()
        offset = len(self.lab.log())
        floods = [
            driver.Background(self.lab, "intruder", "flood", {
                "target": [lab.SERVER_IP, lab.CONTROL_PORT], "sources": FLOOD_SOURCES,
                "count": 60000, "seconds": 4.0, "seed": 7,
                "keys": strangers, "server_key": server,
                "mix": {"p1": 1},
            }),
            driver.Background(self.lab, "intruder", "flood", {
                "target": [lab.SERVER_IP, lab.CONTROL_PORT], "sources": [lab.INTRUDER_IP],
                "count": 60000, "seconds": 4.0, "seed": 8,
                "keys": [{"name": "bob", "key": bob.hex()}], "server_key": server,
                "mix": {"p1": 1},
            }),
        ]
        time.sleep(2.0)
        started = time.monotonic()
        port = self.knocked_port(timeout=10)  # sig2knockc's default timeout
        during = time.monotonic() - started
        still_flooding = all(flood.running() for flood in floods)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
        results = [flood.result(timeout=60) for flood in floods]
        peak = sampler.stop()
        started = time.monotonic()
        port = self.knocked_port(timeout=10)
        after = time.monotonic() - started
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
        self.assertDaemonAlive()
        self.lab.stop_daemon()  # logs the last summary of refusals

        log = driver.log_since(self.lab, offset)
        limits = {reason: driver.refusal_count(log, reason) for reason in LIMIT_REASONS}
        accepted = log.count("P1 accepted")
        print(
            f"\nsession flood: {results[0]['sent']} P1s from {len(FLOOD_SOURCES)} addresses"
            f" (unknown keys) and {results[1]['sent']} of bob's from one address,"
            f" in {max(r['elapsed'] for r in results):.1f} s"
            f"\nlogged: P1 accepted={accepted}, "
            + ", ".join(f"{reason}={driver.refusal_count(log, reason)}"
                        for reason in ("unknown-user", "replay", "cache-full"))
            + f", limits={limits}"
            f"\ndaemon VmRSS: before {before} KiB, peak {peak} KiB"
            f"\nalice during the flood: {during:.2f} s (flood still running: {still_flooding});"
            f" after: {after:.2f} s"
        )
        for result in results:
            self.assertEqual(result["answered"], [], "a P1 was answered")
        self.assertTrue(any(limits.values()), f"no limit refusal logged: {log[-3000:]}")
        self.assertTrue(still_flooding, "alice's knock did not happen during the flood")

    def test_oneUserFromManyAddressesCannotLockOthersOut(self) -> None:
        """
        Bob spreads valid P1s over 140 addresses, at most ten from each (inside the per-address
        limits: 8 pending sessions, 20 datagrams a second), and so holds more pending sessions
        than the whole table has room for. Alice must still get in promptly, as fast as without
        him: one key must not be able to take every session slot (an IPv6 host has addresses to
        spare, and any user, or anyone who stole one user's key, can do this).
        """
        self.start(users={"alice": lab.PASSWORD, "bob": BOB_PASSWORD})
        sources = [f"198.18.0.{host}" for host in range(20, 160)]
        driver.add_addresses(self.lab, "intruder", "eth0", sources)
        bob = tools.lab_key("bob", BOB_PASSWORD, self.lab.server_key)
        offset = len(self.lab.log())
        flood = driver.Background(self.lab, "intruder", "flood", {
            "target": [lab.SERVER_IP, lab.CONTROL_PORT], "sources": sources,
            "count": 1400, "pace": 2.8, "seconds": 5.0, "seed": 9, "linger": 0.1,
            "keys": [{"name": "bob", "key": bob.hex()}], "mix": {"p1": 1},
            "server_key": self.lab.server_key,
        })
        sent = flood.result(timeout=60)
        # Bob's first sessions expire KNOCK_TIMEOUT (10 s) after they opened; alice knocks
        # well before that, for 3 s (she needs 0.1-0.4 s without bob, even under the floods of
        # the other tests).
        started = time.monotonic()
        result = self.lab.knock(timeout=3)
        elapsed = time.monotonic() - started
        self.assertDaemonAlive()
        self.lab.stop_daemon()  # logs the last summary of refusals
        log = driver.log_since(self.lab, offset)
        print(
            f"\nbob: {sent['sent']} P1s from {len(sources)} addresses in {sent['elapsed']:.1f} s;"
            f" P1 accepted={log.count('P1 accepted')}, "
            + ", ".join(f"{reason}={driver.refusal_count(log, reason)}"
                        for reason in LIMIT_REASONS + ("cache-full",))
            + f"\nalice: exit {result.returncode} after {elapsed:.2f} s"
        )
        self.assertEqual(sent["answered"], [])
        self.assertEqual(
            result.returncode, 0,
            "alice was locked out: one other user's pending sessions (spread over many"
            " addresses) filled the session table"
            f" (table-full={driver.refusal_count(log, 'table-full')})"
            f"; client said: {result.stderr.strip()}",
        )


class ClockTests(AttackLabMixin, SynchronousTestCase):
    """
    Messages stamped outside MAX_CLOCK_SKEW are refused in silence, and a client with a wrong
    clock says the clock may be the cause.
    """

    def test_staleAndFutureP1Refused(self) -> None:
        self.start(MAX_CLOCK_SKEW="30")
        server = self.lab.server_key
        alice = tools.lab_key("alice", lab.PASSWORD, server)
        offset = len(self.lab.log())
        now = time.time()
        payloads = [
            tools.make_p1("alice", alice, server, timestamp=now - 60),
            tools.make_p1("alice", alice, server, timestamp=now + 60),
        ]
        result = driver.run_tool(self.lab, "client", "sendwait", {
            "source": [lab.CLIENT_IP, 0], "target": [lab.SERVER_IP, lab.CONTROL_PORT],
            "payloads": [p.hex() for p in payloads], "wait": 1.0,
        })
        self.assertEqual(result["answers"], 0)
        log = driver.log_since(self.lab, offset)
        self.assertEqual(driver.refusal_count(log, "stale"), 1, log)
        self.assertEqual(driver.refusal_count(log, "future"), 1, log)
        self.assertNotIn("P1 accepted", log)
        # A fresh, valid P1 is accepted, and answered with silence too.
        fresh = tools.make_p1("alice", alice, server)
        result = driver.run_tool(self.lab, "client", "sendwait", {
            "source": [lab.CLIENT_IP, 0], "target": [lab.SERVER_IP, lab.CONTROL_PORT],
            "payloads": [fresh.hex()], "wait": 1.0,
        })
        self.assertEqual(result["answers"], 0)
        self.assertIn("P1 accepted", driver.log_since(self.lab, offset))

    def test_clientWithWrongClockBlamesTheClock(self) -> None:
        if shutil.which("faketime") is None:
            raise SkipTest("the faketime command is not installed (Debian: apt-get install"
                                " faketime); cannot run sig2knockc with a wrong clock")
        self.start()
        command = [
            "faketime", "-f", "-600s", os.path.join(lab.BIN, "sig2knockc"), lab.SERVER_IP,
            str(lab.CONTROL_PORT), "--user", "alice", "--password-stdin", "--kdf",
            lab.CHEAP_KDF, "--server-key", self.lab.server_key, "--timeout", "2",
        ]
        result = self.lab.ns("client", command, check=False, input=lab.PASSWORD + "\n",
                             timeout=30)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertIn("clock", result.stderr)
        self.assertIn("stale", self.lab.log())
