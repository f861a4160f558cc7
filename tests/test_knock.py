"""
The whole knock, end to end, in the namespace lab: the real daemon (``twistd -n sig2knock``) and
the real client (``sig2knockc``), with ``FIREWALL = none`` (the assigned-port listener is the
gate). Needs root; skipped with the reason otherwise.
"""

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from tests import lab
from tests.lab import built_lab


class KnockTests(SynchronousTestCase):
    """
    A user knocks, reaches the hidden service on the server's 127.0.0.1, and nobody else does.
    """

    skip = lab.why_not_runnable()

    def setUp(self) -> None:
        self.lab = built_lab(self)

    def knocked_port(self, **options) -> int:
        result = self.lab.knock(**options)
        why = f"client failed: {result.stderr}\n--- daemon ---\n{self.lab.log()}"
        self.assertEqual(result.returncode, 0, why)
        self.assertRegex(result.stdout, r"^[0-9]+\n$", "stdout must be exactly the port")
        return int(result.stdout)

    def test_knockReachesHiddenService(self) -> None:
        self.lab.start_daemon({"SINGLECONN_PORTOPEN_TIME": "5"})
        port = self.knocked_port()
        self.assertTrue(30000 <= port <= 60999)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
        log = self.lab.log()
        for step in ("P1 accepted", "knock sequence complete", "granted", "P3 sent",
                     "connection accepted"):
            self.assertIn(step, log)
        self.assertNotIn(lab.PASSWORD, log)

    def test_intruderGetsNothingAndGrantSurvives(self) -> None:
        self.lab.start_daemon({"SINGLECONN_PORTOPEN_TIME": "10"})
        port = self.knocked_port()
        self.assertIn(self.lab.probe("intruder", lab.SERVER_IP, port), ("closed", "refused"))
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
        self.assertIn("refused", self.lab.log())

    def test_secondConnectionRefused(self) -> None:
        self.lab.start_daemon()
        port = self.knocked_port()
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "refused")

    def test_unusedPortClosesAfterOpenTime(self) -> None:
        self.lab.start_daemon({"SINGLECONN_PORTOPEN_TIME": "2"})
        port = self.knocked_port()
        self.assertIn(port, self.lab.listening_ports())
        time.sleep(2.5)
        self.assertNotIn(port, self.lab.listening_ports())
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "refused")

    def test_establishedConnectionOutlivesOpenTime(self) -> None:
        self.lab.start_daemon({"SINGLECONN_PORTOPEN_TIME": "1"})
        port = self.knocked_port()
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port, hold=2), "echo:hello")

    def test_wrongPasswordGetsNoPort(self) -> None:
        self.lab.start_daemon()
        result = self.lab.knock(password="not the password at all", timeout=1.5)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertIn("no answer", result.stderr)
        # Another password is another key pair: the request does not open as alice's.
        self.assertIn(": auth (user alice)", self.lab.log())
        self.assertNotIn("P3 sent", self.lab.log())

    def test_unknownUserGetsNoPort(self) -> None:
        self.lab.start_daemon()
        result = self.lab.knock(user="mallory", timeout=1.5)
        self.assertEqual(result.returncode, 1)
        self.assertIn(": unknown-user (user mallory)", self.lab.log())

    def test_ipv6Knock(self) -> None:
        self.lab.start_daemon()
        port = self.knocked_port(server=lab.SERVER_IP6)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP6, port), "echo:hello")

    def test_serverWithTwoAddressesAnswersFromTheOneKnockedOn(self) -> None:
        """
        A server with a second address on the same interface, knocked on at that address: P3
        comes from it (the client takes answers only from the address it sent to), and the
        grant is reached there. A second address added while the daemon runs works too.
        """
        second, third = "198.18.0.9", "198.18.0.10"
        self.lab.ns("server", ["ip", "addr", "add", f"{second}/24", "dev", "br0"])
        self.lab.start_daemon()
        port = self.knocked_port(server=second)
        self.assertEqual(self.lab.probe("client", second, port), "echo:hello")
        self.lab.ns("server", ["ip", "addr", "add", f"{third}/24", "dev", "br0"])
        deadline = time.monotonic() + 5
        while third not in self.lab.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = self.knocked_port(server=third)
        self.assertEqual(self.lab.probe("client", third, port), "echo:hello")

    def test_interfaceByNumberAsTheSeedRunsIt(self) -> None:
        """
        ``sig2knockd -i N``, N the capture interface's number in ``--list-interfaces`` (the
        seed's ``sig2knockd -i 1``): the daemon captures there, and a knock gets in.
        """
        listed = self.lab.ns("server", [os.path.join(lab.BIN, "sig2knockd"), "--list-interfaces"])
        (number,) = [line.split(".", 1)[0] for line in listed.stdout.splitlines()
                     if line.split(" ", 1)[0].split(".", 1)[1] == "br0"]
        self.lab.start_daemon({"INTERFACE": "lo"}, sig2knockd=True, arguments=["-i", number])
        self.assertIn("knocks captured on br0", self.lab.log())
        port = self.knocked_port()
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")

    def test_udpKnocks(self) -> None:
        self.lab.start_daemon({"KNOCK_PROTO": "udp"})
        port = self.knocked_port(extra=["--knock-proto", "udp"])
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")

    def test_stdioRelay(self) -> None:
        """
        ``sig2knockc --stdio`` is what ssh's ProxyCommand runs: standard input reaches the
        hidden service and its answer comes back on standard output.
        """
        self.lab.start_daemon()
        command = (
            f"printf '%s\\n' '{lab.PASSWORD}' > {self.lab.directory}/password && "
            f"chmod 600 {self.lab.directory}/password && "
            f"printf 'through stdio' | {lab.BIN}/sig2knockc --stdio {lab.SERVER_IP}"
            f" {lab.CONTROL_PORT} --user alice --password-file {self.lab.directory}/password"
            f" --kdf {lab.CHEAP_KDF} --server-key {self.lab.server_key} --timeout 5"
        )
        output = self.lab.ns("client", ["sh", "-c", command], check=False, timeout=30)
        self.assertEqual(output.stdout, "through stdio", output.stderr)
