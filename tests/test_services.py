"""
Several hidden services on one gateway, each for the users allowed to reach it, in the namespace
lab with an inner host behind the server (a gateway in front of another machine): the default
service on the server's own 127.0.0.1, and the service ``inner`` on the inner host, for the group
``ops`` alone. Every promise of one service holds for each: only the knocking address, one
connection, proxy and nat; a user who may not reach a service gets silence, as with a wrong key;
a reload that takes access away closes the grant; and ``sig2knockd --status`` shows what the
kernel's rules hold.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any, Dict, Set, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests import lab
from tests.lab import built_lab

BOB = "bob's long password"
USERS = {"alice": lab.PASSWORD, "bob": BOB}
SECTIONS = f"""
    [service inner]
    FORWARD_TO_IP = {lab.INNER_IP}
    FORWARD_TO_PORT = {lab.INNER_PORT}
    ALLOW = @ops

    [group ops]
    USERS = bob
"""
DROP_WAIT = 1.0
REFUSED_TIMEOUT = 1.5


class ServicesMixin:
    """
    The two services with the firewall ``backend`` of the subclass.
    """

    backend = ""

    def setUp(self) -> None:
        self.lab = built_lab(self)
        self.lab.add_inner_host()

    def start(self, mode: str = "proxy", sections: str = SECTIONS, **settings: str) -> None:
        self.lab.start_daemon(
            {
                "FIREWALL": self.backend,
                "FIREWALL_POLICY": "lockdown",
                "FORWARD_MODE": mode,
                "ASSIGN_PORT_RANGE": "40000-40999",
                **settings,
            },
            USERS,
            sections=sections,
        )

    def knock(self, user: str = "alice", service: str = "", **options: Any) -> Any:
        extra = ["--service", service] if service else []
        return self.lab.knock(user=user, password=USERS[user], extra=extra, **options)

    def granted_port(self, user: str = "alice", service: str = "") -> int:
        result = self.knock(user, service)
        self.assertEqual(result.returncode, 0, f"{result.stderr}\n--- daemon ---\n{self.lab.log()}")
        return int(result.stdout)

    def assertRefusedInSilence(self, user: str, service: str, reason: str) -> None:
        before = self.lab.log().count(reason)
        result = self.knock(user, service, timeout=REFUSED_TIMEOUT)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn("no answer", result.stderr)
        self.assertGreater(self.lab.log().count(reason), before, self.lab.log())

    def assertDropped(self, role: str, port: int) -> None:
        self.assertEqual(self.lab.probe(role, lab.SERVER_IP, port, timeout=DROP_WAIT), "timeout")

    def hangup_and_wait(self, marker: str) -> None:
        self.assertTrue(self.lab.hangup_and_wait(marker), self.lab.log())

    def status(self, *arguments: str) -> subprocess.CompletedProcess:
        return self.lab.daemon_command("--status", *arguments)

    def test_eachServiceForItsUsers(self) -> None:
        """
        alice reaches the default service, bob the inner host's; each grant takes one
        connection from its own address only. alice asking for ``inner``, and bob for a service
        that does not exist, get no answer at all, and the log says why.
        """
        self.start()
        alice = self.granted_port("alice")
        bob = self.granted_port("bob", "inner")
        self.assertDropped("intruder", bob)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, alice), "echo:hello")
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, bob), "echo:inner:hello")
        self.assertDropped("client", bob)
        self.assertRefusedInSilence("alice", "inner", "not-allowed")
        self.assertIn("alice may not reach service inner (ALLOW)", self.lab.log())

    def test_natToTheInnerHost(self) -> None:
        """
        In nat mode the kernel forwards each grant's one connection to its own service: the
        inner host's, and the server's loopback one, side by side; the live view learns from
        the kernel which grant was used. A service the gateway does not offer gets no answer.
        """
        self.start("nat")
        bob = self.granted_port("bob", "inner")
        alice = self.granted_port("alice")
        self.assertDropped("intruder", bob)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, bob), "echo:inner:hello")
        # The kernel took bob's connection unseen; the live view asks it which grant was used.
        used = {entry["port"]: (entry["state"], entry["used"])
                for entry in self.status_json()["sessions"]}
        self.assertEqual(used, {bob: ("granted", True), alice: ("granted", False)},
                         self.lab.log()[-2000:])
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, alice), "echo:hello")
        self.assertDropped("client", bob)
        self.assertDropped("client", alice)
        self.assertRefusedInSilence("bob", "nosuch", "unknown-service")

    def test_oneServiceInTheKernelOneProxied(self) -> None:
        """
        A service's own ``FORWARD_MODE``: on a proxy gateway the inner host's service is
        forwarded by the kernel (no listener for bob's port) while alice's default service is
        proxied by the daemon (a listener for hers); each takes one connection, and the live
        view knows both were used.
        """
        self.start("proxy", sections=SECTIONS.replace(
            "ALLOW = @ops", "ALLOW = @ops\n    FORWARD_MODE = nat"))
        bob = self.granted_port("bob", "inner")
        alice = self.granted_port("alice")
        listening = self.lab.listening_ports()
        self.assertNotIn(bob, listening)
        self.assertIn(alice, listening)
        self.assertDropped("intruder", bob)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, bob), "echo:inner:hello")
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, alice), "echo:hello")
        self.assertDropped("client", bob)
        self.assertDropped("client", alice)
        used = {entry["port"]: (entry["state"], entry["used"])
                for entry in self.status_json()["sessions"]}
        self.assertEqual(used, {bob: ("granted", True), alice: ("used", True)},
                         self.lab.log()[-2000:])

    def test_eachServiceItsOwnOpenTimeInTheKernel(self) -> None:
        """
        Each grant ends at its own service's open time, in the kernel, with no daemon left to
        revoke it: after SIGKILL, bob's two-second grant to the inner host is dropped while
        alice's thirty-second one to the default service still leads there (nat mode).
        """
        self.start("nat", sections=SECTIONS.replace(
            "ALLOW = @ops", "ALLOW = @ops\n    SINGLECONN_PORTOPEN_TIME = 2"))
        bob = self.granted_port("bob", "inner")
        alice = self.granted_port("alice")
        self.lab.stop_daemon(signal.SIGKILL)
        time.sleep(2.5)
        self.assertDropped("client", bob)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, alice), "echo:hello")

    def test_reloadTakesAccessAway(self) -> None:
        """
        bob leaves the group while his grant to ``inner`` is open: the reload closes it, his
        next knock for ``inner`` is refused, and alice's grant to the default service stays.
        """
        self.start()
        bob = self.granted_port("bob", "inner")
        alice = self.granted_port("alice")
        self.lab.write_server_files(
            {"FIREWALL": self.backend, "FIREWALL_POLICY": "lockdown",
             "ASSIGN_PORT_RANGE": "40000-40999"},
            USERS,
            sections=SECTIONS.replace("USERS = bob", "USERS = carol"),
        )
        self.hangup_and_wait("reloaded")
        self.assertIn("ended: bob may no longer reach service inner", self.lab.log())
        self.assertDropped("client", bob)
        self.assertRefusedInSilence("bob", "inner", "not-allowed")
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, alice), "echo:hello")

    def test_statusMatchesTheKernel(self) -> None:
        """
        ``sig2knockd --status --json`` lists both open grants with their user, source, service,
        port and time left; the kernel's rules hold exactly those; once alice's grant is used the
        view says so and the kernel holds bob's alone. The table says the same for people.
        """
        self.start()
        alice = self.granted_port("alice")
        bob = self.granted_port("bob", "inner")
        view = self.status_json()
        entries = {entry["port"]: entry for entry in view["sessions"]}
        self.assertEqual(set(entries), {alice, bob})
        self.assertEqual(
            [(entries[port]["user"], entries[port]["service"], entries[port]["state"],
              entries[port]["source"], entries[port]["used"]) for port in (alice, bob)],
            [("alice", "", "granted", lab.CLIENT_IP, False),
             ("bob", "inner", "granted", lab.CLIENT_IP, False)],
        )
        self.assertTrue(all(0 < entry["time_left"] <= 30 for entry in entries.values()))
        self.assertEqual(self.kernel_grants(), {(lab.CLIENT_IP, alice), (lab.CLIENT_IP, bob)})
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, alice), "echo:hello")
        entries = {entry["port"]: entry for entry in self.status_json()["sessions"]}
        self.assertEqual((entries[alice]["state"], entries[alice]["used"]), ("used", True))
        self.assertEqual(self.kernel_grants(), {(lab.CLIENT_IP, bob)})
        table = self.status()
        self.assertEqual(table.returncode, 0, table.stderr)
        lines = table.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["USER", "SOURCE", "SERVICE", "STATE", "PORT", "LEFT",
                                            "USED"])
        self.assertIn(["bob", lab.CLIENT_IP, "inner", "granted", str(bob)],
                      [line.split()[:5] for line in lines[1:]])
        self.assertIn("2 session(s): 1 granted, 1 used", table.stdout)

    def status_json(self) -> Dict[str, Any]:
        answer = self.status("--json")
        self.assertEqual(answer.returncode, 0, answer.stderr)
        return json.loads(answer.stdout)

    def kernel_grants(self) -> Set[Tuple[str, int]]:
        raise NotImplementedError


class NftablesServicesTests(ServicesMixin, SynchronousTestCase):
    """
    The services with nftables: grants are elements of the set ``grants4``.
    """

    backend = "nftables"
    skip = lab.why_not_runnable() or (None if shutil.which("nft") else "nft is not installed")

    def kernel_grants(self) -> Set[Tuple[str, int]]:
        listing = self.lab.ns("server", ["nft", "-j", "list", "set", "inet", "sig2knock",
                                         "grants4"])
        found: Set[Tuple[str, int]] = set()
        for item in json.loads(listing.stdout)["nftables"]:
            for element in item.get("set", {}).get("elem", []):
                value = element.get("elem", {}).get("val", element)
                address, port = value["concat"]
                found.add((address, port))
        return found

    def test_statusWithoutDaemonAndForOthers(self) -> None:
        """
        With no daemon running, ``--status`` says so and fails; a user who is neither root nor
        the daemon's cannot ask a running one.
        """
        self.lab.write_server_files({"FIREWALL": self.backend}, USERS, sections=SECTIONS)
        answer = self.status()
        self.assertEqual(answer.returncode, 1)
        self.assertIn("no daemon is running", answer.stderr)
        self.start()
        self.granted_port("alice")
        # The configuration readable by all, as /etc/sig2knock's is; STATE_DIR stays 0700.
        os.chmod(self.lab.directory, 0o755)
        config = f"{self.lab.directory}/sig2knockd.conf"
        other = self.lab.ns("server", ["setpriv", "--reuid=nobody", "--regid=nogroup",
                                       "--clear-groups", f"{lab.BIN}/sig2knockd", "--status",
                                       "-c", config], check=False)
        self.assertEqual(other.returncode, 1, other.stdout)
        self.assertIn("permission denied", other.stderr)
        self.assertNotIn("alice", other.stdout + other.stderr)


class IptablesServicesTests(ServicesMixin, SynchronousTestCase):
    """
    The services with iptables: grants are rules of the chain ``SIG2KNOCK``.
    """

    backend = "iptables"
    skip = lab.why_not_runnable() or (
        None if shutil.which("iptables") else "iptables is not installed"
    )

    def kernel_grants(self) -> Set[Tuple[str, int]]:
        listing = self.lab.ns("server", ["iptables", "-S", "SIG2KNOCK"]).stdout
        found: Set[Tuple[str, int]] = set()
        for line in listing.splitlines():
            match = re.search(r"-s (\S+)/32 .*--dport (\d+) .*-j ACCEPT", line)
            if match and "--datestop" in line:
                found.add((match.group(1), int(match.group(2))))
        return found

