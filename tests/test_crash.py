"""
Crash and restart, in the namespace lab, with ``FIREWALL_POLICY = lockdown`` on each firewall
backend: the daemon is killed with SIGKILL at each step of a session (after P1, in the middle of
the knock sequence, right after P3, during a proxied connection) and started again on the same
STATE_DIR. Whatever the step, no grant and no listener outlives its deadline (the kernel ends the
grants of a dead daemon, the new daemon replaces the rules whole), nothing of the old session can
be finished or replayed, the ruleset holds the daemon's rules exactly once, and a new knock works
end to end. Needs root; skipped with the reason otherwise.
"""

import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from typing import Optional, Sequence

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol import addresses, keys, wire
from sig2knock.protocol.kdf import KdfParams, derive_key
from tests import lab
from tests.lab import built_lab

ASSIGN_RANGE = (40000, 40999)
# How long a probe waits for a SYN's answer before it calls it dropped.
DROP_WAIT = 1.0

# Send one UDP datagram (hex) to host:port; with a wait, say whether anything came back
# ("answer" or "silence"), else print "sent".
SEND_DATAGRAM = textwrap.dedent(
    """
    import socket, sys
    host, port = sys.argv[1], int(sys.argv[2])
    data, wait = bytes.fromhex(sys.argv[3]), float(sys.argv[4])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.sendto(data, (host, port))
    if wait:
        udp.settimeout(wait)
        try:
            udp.recvfrom(65536)
            print("answer", flush=True)
        except socket.timeout:
            print("silence", flush=True)
        except OSError as error:
            print("error:" + type(error).__name__, flush=True)
    else:
        print("sent", flush=True)
    """
)

# Knock: one TCP SYN to each port (twice, like the client's retries); nothing waits for answers.
SEND_KNOCKS = textwrap.dedent(
    """
    import socket, sys, time
    host, ports = sys.argv[1], [int(p) for p in sys.argv[2].split(",")]
    for _ in range(2):
        sockets = []
        for port in ports:
            syn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            syn.setblocking(False)
            syn.connect_ex((host, port))
            sockets.append(syn)
            time.sleep(0.01)
        time.sleep(0.05)
        for syn in sockets:
            syn.close()
    print("knocked", flush=True)
    """
)

# A long-lived connection: connect, echo once, print "established:<echo>", then wait on the
# connection and say how it ended: "closed" (FIN), "reset", or "alive" after the wait.
HOLD_CONNECTION = textwrap.dedent(
    """
    import socket, sys
    host, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    try:
        held = socket.create_connection((host, port), timeout=3)
        held.sendall(b"hello")
        data = b""
        while len(data) < 5:
            chunk = held.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as error:
        print("failed:" + type(error).__name__, flush=True)
        sys.exit(0)
    print("established:" + data.decode(), flush=True)
    held.settimeout(wait)
    try:
        print("closed" if not held.recv(65536) else "data", flush=True)
    except ConnectionResetError:
        print("reset", flush=True)
    except socket.timeout:
        print("alive", flush=True)
    """
)


def user_key(server_key: str) -> wire.UserKey:
    """
    alice's key at the lab's server, derived the way the client derives it.
    """
    params = KdfParams.parse(lab.CHEAP_KDF)
    seed = derive_key(lab.PASSWORD, "alice", keys.parse_public_key(server_key), params)
    return wire.UserKey("alice", keys.private_from_seed(seed))


class CrashMixin:
    """
    The crash tests, run once per backend by the subclasses below (``backend`` is the FIREWALL
    value). Subclasses say what a clean ruleset and an empty grant set look like.
    """

    backend = ""

    def setUp(self) -> None:
        self.lab = built_lab(self)
        self.session_keys: Optional[wire.SessionKeys] = None

    # -- the daemon -----------------------------------------------------------------------------

    def start(self, open_time: str = "4") -> None:
        """
        Start the daemon (again: same directory, same STATE_DIR) and check it is ready.
        """
        self.lab.start_daemon(
            {
                "FIREWALL": self.backend,
                "FIREWALL_POLICY": "lockdown",
                "SINGLECONN_PORTOPEN_TIME": open_time,
                "ASSIGN_PORT_RANGE": f"{ASSIGN_RANGE[0]}-{ASSIGN_RANGE[1]}",
            }
        )
        self.assertIn("sig2knock ready", self.current_log())
        self.assertIn(f"firewall {self.backend}", self.current_log())

    def kill(self) -> None:
        """
        SIGKILL the daemon: no shutdown code runs.
        """
        self.lab.stop_daemon(signal.SIGKILL)
        self.assertEqual(self.lab.daemon.returncode, -signal.SIGKILL)

    def current_log(self) -> str:
        """
        What the running (or last) daemon logged, without its predecessors' lines.
        """
        return self.lab.log()[self.lab.daemon_log_start :]

    def wait_for_log(self, text: str, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.current_log():
                return
            time.sleep(0.02)
        self.fail(f"the daemon did not log {text!r} within {timeout}s:\n{self.current_log()}")

    def restart_and_check(self, open_time: str = "4") -> None:
        """
        After a kill: start again, check the ruleset is clean and holds no grant, no assigned
        port listens, and a new knock works end to end.
        """
        self.start(open_time)
        self.assertCleanRuleset()
        self.assertNoGrants()
        self.assertEqual(self.listeners_in_range(), [])
        port = self.knocked_port()
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
        # The restarted daemon added its rules once, not once more per grant.
        self.assertCleanRuleset()

    # -- the client side ------------------------------------------------------------------------

    def knocked_port(self) -> int:
        result = self.lab.knock()
        self.assertEqual(
            result.returncode, 0, f"{result.stderr}\n--- daemon ---\n{self.lab.log()}"
        )
        self.assertRegex(result.stdout, r"^[0-9]+\n$")
        return int(result.stdout)

    def send(self, message: wire.Confirm, wait: float = 0) -> str:
        """
        Seal the P2 ``message`` with the keys of the last P1 sent, and send it from the
        client's namespace; with ``wait``, say whether the server answered.
        """
        assert self.session_keys is not None
        return self.send_raw(wire.encode_confirm(message, self.session_keys), wait)

    def send_raw(self, datagram: bytes, wait: float = 0) -> str:
        result = self.lab.ns(
            "client",
            [sys.executable, "-c", SEND_DATAGRAM, lab.SERVER_IP, str(lab.CONTROL_PORT),
             datagram.hex(), str(wait)],
            timeout=wait + 30,
        )
        return result.stdout.strip()

    def send_p1(self, ports: Sequence[int]) -> bytes:
        """
        Send a P1 announcing ``ports`` (TCP knocks) and wait until the daemon accepted it;
        return the datagram (for replay) after storing its session id in ``self.session_id``.
        """
        self.session_id = wire.new_session_id()
        request = wire.KnockRequest(
            self.session_id, wire.now_ms(time.time()), addresses.PROTO_TCP, tuple(ports)
        )
        server = keys.import_public_key(keys.parse_public_key(self.lab.server_key))
        datagram, self.session_keys = wire.seal_request(
            request, user_key(self.lab.server_key), server
        )
        self.assertEqual(self.send_raw(datagram), "sent")
        self.wait_for_log("P1 accepted")
        # The capture filter is widened for the client right after; let it take effect.
        time.sleep(0.1)
        return datagram

    def send_knocks(self, ports: Sequence[int]) -> None:
        result = self.lab.ns(
            "client",
            [sys.executable, "-c", SEND_KNOCKS, lab.SERVER_IP, ",".join(map(str, ports))],
            timeout=30,
        )
        self.assertEqual(result.stdout.strip(), "knocked", result.stderr)

    def assertDropped(self, port: int) -> None:
        """
        A SYN from the client to ``port`` is dropped: no answer at all, not even a reset.
        """
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port, timeout=DROP_WAIT),
                         "timeout")

    def listeners_in_range(self):
        low, high = ASSIGN_RANGE
        return [port for port in self.lab.listening_ports() if low <= port <= high]

    # -- backend specifics ----------------------------------------------------------------------

    def assertCleanRuleset(self) -> None:
        raise NotImplementedError

    def assertNoGrants(self) -> None:
        raise NotImplementedError

    # -- the tests ------------------------------------------------------------------------------

    def test_craftedSessionWithoutCrash(self) -> None:
        """
        The control for the tests below: the crafted P1, knocks and P2 they send make a
        session that gets its P3 when nothing is killed.
        """
        self.start()
        ports = random.sample(range(2000, 29999), 4)
        self.send_p1(ports)
        self.send_knocks(ports)
        self.wait_for_log("knock sequence complete")
        confirm = wire.Confirm(self.session_id, wire.now_ms(time.time()))
        self.assertEqual(self.send(confirm, wait=2.0), "answer")
        self.wait_for_log("P3 sent")

    def test_killAfterP1(self) -> None:
        """
        Killed after an accepted P1: nothing was opened, nothing is after the restart, and the
        P1 cannot be replayed to the new daemon (its nonce was persisted before the kill).
        """
        self.start()
        ports = random.sample(range(2000, 29999), 4)
        p1 = self.send_p1(ports)
        self.assertEqual(self.listeners_in_range(), [])
        self.kill()
        self.restart_and_check()
        self.assertEqual(self.send_raw(p1, wait=1.0), "silence")
        self.wait_for_log(": replay")

    def test_killMidSequence(self) -> None:
        """
        Killed after P1 and two of four knocks: after the restart the session is gone, so the
        rest of the sequence and a valid P2 get nothing, and a new knock works.
        """
        self.start()
        ports = random.sample(range(2000, 29999), 4)
        self.send_p1(ports)
        self.send_knocks(ports[:2])
        time.sleep(0.2)
        self.assertNotIn("knock sequence complete", self.current_log())
        self.kill()
        self.start()
        self.assertNoGrants()
        # Finish the old session against the new daemon: the knocks mean nothing to it, and a
        # fresh, valid P2 for the old session id is refused in silence.
        self.send_knocks(ports[2:])
        confirm = wire.Confirm(self.session_id, wire.now_ms(time.time()))
        self.assertEqual(self.send(confirm, wait=1.0), "silence")
        self.wait_for_log("unknown-session")
        self.assertNotIn("P3 sent", self.current_log())
        self.assertNoGrants()
        self.assertEqual(self.listeners_in_range(), [])
        self.restart_and_check_after_running()

    def restart_and_check_after_running(self) -> None:
        """
        The end of ``restart_and_check`` for a daemon already restarted.
        """
        self.assertCleanRuleset()
        port = self.knocked_port()
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
        self.assertCleanRuleset()

    def test_killAfterP3(self) -> None:
        """
        Killed right after P3: the grant outlives the daemon only until its deadline (the
        kernel ends it), then the port is dropped; the restarted daemon has no listener on it
        and a new knock works.
        """
        self.start(open_time="4")
        started = time.monotonic()
        port = self.knocked_port()
        self.kill()
        if time.monotonic() - started < 3.0:
            # Still granted in the kernel, but nobody listens: the SYN meets a closed port.
            self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "refused")
        time.sleep(max(0.0, 4.5 - (time.monotonic() - started)))
        self.assertDropped(port)
        self.start(open_time="4")
        self.assertNotIn(port, self.lab.listening_ports())
        self.assertDropped(port)
        self.assertCleanRuleset()
        self.assertNoGrants()
        self.restart_and_check_after_running()

    def test_killBeforeDeadlineRestartRevokesGrant(self) -> None:
        """
        Killed right after P3 and started again before the grant's deadline: the new daemon
        replaces the rules whole, so the old grant is gone at once (dropped, not refused).
        """
        self.start(open_time="30")
        port = self.knocked_port()
        self.kill()
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "refused")
        self.start(open_time="30")
        self.assertDropped(port)
        self.assertNoGrants()
        self.assertNotIn(port, self.lab.listening_ports())
        self.restart_and_check_after_running()

    def test_killDuringProxiedSession(self) -> None:
        """
        Killed while a connection runs through the assigned port: the connection dies with the
        daemon (the forwarder lives in it), the port cannot be reached again after the restart
        without a new knock (dropped, although the grant's time is not over), and a new knock
        works.
        """
        self.start(open_time="30")
        port = self.knocked_port()
        holder = self.lab.start(
            "client",
            [sys.executable, "-c", HOLD_CONNECTION, lab.SERVER_IP, str(port), "20"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        self.assertEqual(holder.stdout.readline().strip(), "established:hello")
        self.assertIn("connection accepted", self.current_log())
        killed = time.monotonic()
        self.kill()
        ending, _ = holder.communicate(timeout=15)
        self.assertIn(ending.strip(), ("closed", "reset"))
        self.assertLess(time.monotonic() - killed, 5, "the connection must end with the daemon")
        self.start(open_time="30")
        self.assertDropped(port)
        self.assertNotIn(port, self.lab.listening_ports())
        self.assertNoGrants()
        self.restart_and_check_after_running()


def why_not(tool: str) -> Optional[str]:
    return lab.why_not_runnable() or (None if shutil.which(tool) else f"{tool} is not installed")


class NftablesCrashTests(CrashMixin, SynchronousTestCase):
    """
    Crash and restart with ``FIREWALL = nftables``.
    """

    backend = "nftables"
    skip = why_not("nft")

    def assertCleanRuleset(self) -> None:
        ruleset = self.lab.ns("server", ["nft", "list", "ruleset"]).stdout
        self.assertEqual(ruleset.count("table inet sig2knock"), 1, ruleset)
        self.assertEqual(ruleset.count("table "), 1, f"only the daemon's table:\n{ruleset}")

    def assertNoGrants(self) -> None:
        for name in ("grants4", "grants6"):
            listing = self.lab.ns("server", ["nft", "list", "set", "inet", "sig2knock", name])
            self.assertNotIn("elements", listing.stdout, listing.stdout)


class IptablesCrashTests(CrashMixin, SynchronousTestCase):
    """
    Crash and restart with ``FIREWALL = iptables``.
    """

    backend = "iptables"
    skip = why_not("iptables")

    def rules(self, tool: str) -> str:
        return self.lab.ns("server", [tool, "-w", "-S"]).stdout

    def assertCleanRuleset(self) -> None:
        for tool in ("iptables", "ip6tables"):
            rules = self.rules(tool)
            self.assertEqual(rules.count("-N SIG2KNOCK"), 1, rules)
            self.assertEqual(rules.count("-A INPUT -j SIG2KNOCK"), 1, rules)
            appended = [line for line in rules.splitlines() if line.startswith("-A INPUT ")]
            self.assertEqual(appended[:1], ["-A INPUT -j SIG2KNOCK"], "the jump comes first")
        ruleset = self.lab.ns("server", ["nft", "list", "ruleset"], check=False).stdout
        self.assertNotIn("table inet sig2knock", ruleset)

    def assertNoGrants(self) -> None:
        self.assertNotIn(lab.CLIENT_IP, self.rules("iptables"))
        self.assertNotIn(lab.CLIENT_IP6, self.rules("ip6tables"))
