"""
The daemon without full root, in the namespace lab: run as an unprivileged uid holding only the
capabilities it needs (``setpriv`` from util-linux, ambient capabilities, the way the systemd unit
``etc/sig2knockd.service`` runs it), with its files prepared the way an admin would. With
CAP_NET_RAW and CAP_NET_ADMIN a whole knock works behind nftables lockdown; without CAP_NET_RAW,
CAP_NET_ADMIN or CAP_NET_BIND_SERVICE (for a control port below 1024) it refuses to start with one
line saying what is missing. Also checks the systemd unit. Needs root to set this up; skipped with
the reason otherwise.
"""

import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sig2knock.protocol import keys
from tests import lab
from tests.lab import Lab, read_unit

# nobody: setpriv takes numeric ids, and the daemon needs no entry in /etc/passwd.
UID = 65534
GID = 65534
# At or above 1024, so binding it needs no CAP_NET_BIND_SERVICE; outside ASSIGN_PORT_RANGE.
HIGH_CONTROL_PORT = 20001
UNIT = os.path.join(lab.REPOSITORY, "etc", "sig2knockd.service")
# How long a probe waits for a SYN's answer before it calls it dropped.
DROP_WAIT = 1.0


def why_not_runnable() -> Optional[str]:
    reason = lab.why_not_runnable()
    if reason is not None:
        return reason
    for tool in ("setpriv", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (setpriv is in util-linux, nft in nftables)"
    return None


# A server's public key, for users lines that no daemon of these tests opens.
ANY_SERVER = keys.format_public_key(keys.public_bytes(keys.generate()))


class UnprivilegedLab(Lab):
    """
    The lab, with the daemon run as ``UID`` holding only the capabilities it is given.
    """

    def prepare_files(self, settings: Dict[str, str], state_dir_exists: bool = False) -> str:
        """
        Write the configuration and users file and hand them over as an admin would: the
        directory and the configuration readable by all (0755, 0644), the users file owned by
        the daemon's uid and mode 0600. STATE_DIR is ``lib/sig2knock``, in a ``lib`` owned by
        the uid; with ``state_dir_exists`` it is created empty beforehand, owned by the uid and
        mode 0700 (what systemd's ``StateDirectory=`` does before the first start), otherwise
        ``sig2knockd --init``, run as the uid, creates it with the server's identity. Return the
        configuration's path.
        """
        os.chmod(self.directory, 0o755)
        parent = os.path.join(self.directory, "lib")
        os.makedirs(parent, mode=0o755, exist_ok=True)
        os.chown(parent, UID, GID)
        if state_dir_exists:
            state = self.state_dir()
            os.makedirs(state, mode=0o700, exist_ok=True)
            os.chown(state, UID, GID)
            os.chmod(state, 0o700)
        # The identity made as the admin is told to: sig2knockd --init as the daemon's user
        # (which creates STATE_DIR when it is not there yet).
        config = self.write_server_files(
            {"STATE_DIR": "lib/sig2knock", **settings},
            {"alice": lab.PASSWORD},
            run_as=["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--"],
        )
        users = os.path.join(self.directory, "user.txt")
        os.chown(users, UID, GID)
        os.chmod(users, 0o600)
        return config

    def state_dir(self) -> str:
        return os.path.join(self.directory, "lib", "sig2knock")

    def unprivileged(self, capabilities: Sequence[str], command: Sequence[str]) -> List[str]:
        """
        ``command`` run as ``UID`` with no groups and only ``capabilities`` (names such as
        ``net_raw``), raised into the inheritable and ambient sets so they survive the exec
        of the daemon and of the nft it runs.
        """
        caps = ",".join(f"+{name}" for name in capabilities) or "-all"
        return [
            "setpriv",
            f"--reuid={UID}",
            f"--regid={GID}",
            "--clear-groups",
            f"--inh-caps={caps}",
            f"--ambient-caps={caps}",
            "--",
            *command,
        ]

    def start_unprivileged(
        self,
        capabilities: Sequence[str],
        settings: Dict[str, str],
        wait: bool = True,
        state_dir_exists: bool = False,
        writable_tunables: Optional[Sequence[str]] = None,
    ) -> subprocess.Popen:
        """
        Start ``twistd -n sig2knock`` as ``UID`` with ``capabilities``; with ``wait``, until
        it logs that it is ready (its output goes to ``daemon_log``). With
        ``writable_tunables`` it runs with /proc/sys read-only but for those paths (see
        ``kernel_tunables_protected``).
        """
        config = self.prepare_files(settings, state_dir_exists)
        return self.start_command(
            capabilities,
            [os.path.join(lab.BIN, "twistd"), "-n", "--pidfile=", "sig2knock", "--config", config],
            wait,
            writable_tunables,
        )

    def start_command(
        self,
        capabilities: Sequence[str],
        command: Sequence[str],
        wait: bool = True,
        writable_tunables: Optional[Sequence[str]] = None,
    ) -> subprocess.Popen:
        self.daemon_log_start = len(self.log())
        command = self.unprivileged(capabilities, command)
        if writable_tunables is not None:
            command = kernel_tunables_protected(writable_tunables, command)
        with open(self.daemon_log, "a", encoding="utf-8") as log:
            self.daemon = self.start(
                "server",
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        if not wait:
            return self.daemon
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "sig2knock ready" in self.log()[self.daemon_log_start :]:
                return self.daemon
            if self.daemon.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the unprivileged daemon did not start:\n{self.log()}")

    def knock_port(self, control_port: int, timeout: float = 5) -> subprocess.CompletedProcess:
        """
        ``sig2knockc`` from the client to ``control_port`` (``Lab.knock`` knocks the lab's
        default control port).
        """
        command = [
            os.path.join(lab.BIN, "sig2knockc"),
            lab.SERVER_IP,
            str(control_port),
            "--user",
            "alice",
            "--password-stdin",
            "--kdf",
            lab.CHEAP_KDF,
            "--server-key",
            self.server_key,
            "--timeout",
            str(timeout),
        ]
        return self.ns(
            "client", command, check=False, input=lab.PASSWORD + "\n", timeout=timeout + 30
        )


# What systemd's ProtectKernelTunables=yes does to /proc/sys (a read-only bind mount in the
# service's own mount namespace), with the service's ReadWritePaths= under it bound read-write
# again on top; the paths and the command follow the script.
PROTECT_TUNABLES = """
set -e
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
while [ "$1" != "--" ]; do
    mount --bind "$1" "$1"
    mount -o remount,bind,rw "$1"
    shift
done
shift
exec "$@"
"""


def kernel_tunables_protected(writable: Sequence[str], command: Sequence[str]) -> List[str]:
    """
    ``command`` in a mount namespace of its own where /proc/sys is read-only except for the
    paths ``writable``: the part of the unit's ``ProtectKernelTunables=yes`` (with its
    ``ReadWritePaths=``) that the daemon meets. (The lab has no systemd to run the unit itself.)
    """
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", PROTECT_TUNABLES,
            "protect-tunables", *writable, "--", *command]


def unit_writable_tunables() -> List[str]:
    """
    The paths under /proc/sys the unit's ``ReadWritePaths=`` makes writable again (a ``-``
    prefix, "ignore if missing", dropped).
    """
    paths = read_unit(UNIT).get("Service", "ReadWritePaths").split()
    return [path.lstrip("-") for path in paths if path.lstrip("-").startswith("/proc/sys/")]


def nat_to_loopback() -> Dict[str, str]:
    """
    ``FORWARD_MODE = nat`` to the echo service on 127.0.0.1: the daemon turns on
    ``route_localnet`` on the capture interface, a kernel tunable.
    """
    return {**lockdown(), "FORWARD_MODE": "nat"}


def lockdown(control_port: int = HIGH_CONTROL_PORT) -> Dict[str, str]:
    return {
        "UDP_PORT": str(control_port),
        "FIREWALL": "nftables",
        "FIREWALL_POLICY": "lockdown",
        "SINGLECONN_PORTOPEN_TIME": "5",
    }


class UnprivilegedDaemonTests(SynchronousTestCase):
    """
    The daemon as an unprivileged uid with exactly the capabilities the unit gives it.
    """

    skip = why_not_runnable()

    def setUp(self) -> None:
        self.lab = UnprivilegedLab()
        self.addCleanup(self.lab.close)
        self.lab.build()
        self.lab.start_echo_service()

    def daemon_output(self) -> str:
        return self.lab.log()[self.lab.daemon_log_start :]

    def assertKnockWorks(self, control_port: int) -> None:
        result = self.lab.knock_port(control_port)
        self.assertEqual(
            result.returncode, 0, f"{result.stderr}\n--- daemon ---\n{self.daemon_output()}"
        )
        port = int(result.stdout)
        self.assertEqual(self.lab.probe("client", lab.SERVER_IP, port), "echo:hello")

    def assertRefusesToStart(self, capabilities: Sequence[str], settings: Dict[str, str],
                             command: Optional[Sequence[str]] = None,
                             writable_tunables: Optional[Sequence[str]] = None) -> str:
        """
        The daemon, started with ``capabilities`` (and ``writable_tunables``, see
        ``start_unprivileged``), ends with exit status 1; return its output.
        """
        if command is None:
            daemon = self.lab.start_unprivileged(
                capabilities, settings, wait=False, writable_tunables=writable_tunables
            )
        else:
            self.lab.prepare_files(settings)
            daemon = self.lab.start_command(
                capabilities, command, wait=False, writable_tunables=writable_tunables
            )
        status = daemon.wait(timeout=30)
        output = self.daemon_output()
        self.assertEqual(status, 1, output)
        self.assertNotIn("sig2knock ready", output)
        return output

    def test_knockWithNetRawAndNetAdmin(self) -> None:
        """
        As nobody with CAP_NET_RAW (capture) and CAP_NET_ADMIN (nft) only, on a control port
        above 1023: the rules go in, the host is locked down, and a whole knock works.
        """
        daemon = self.lab.start_unprivileged(["net_raw", "net_admin"], lockdown())
        status = self.lab.ns("server", ["cat", f"/proc/{daemon.pid}/status"]).stdout
        self.assertIn(f"Uid:\t{UID}\t{UID}\t{UID}\t{UID}", status)
        # Exactly CAP_NET_RAW (13) and CAP_NET_ADMIN (12) are in effect.
        self.assertIn(f"CapEff:\t{(1 << 12 | 1 << 13):016x}", status)
        self.assertIn("firewall nftables", self.daemon_output())
        ruleset = self.lab.ns("server", ["nft", "list", "ruleset"]).stdout
        self.assertEqual(ruleset.count("table inet sig2knock"), 1, ruleset)
        self.assertEqual(
            self.lab.probe("intruder", lab.SERVER_IP, lab.SERVICE_PORT, timeout=DROP_WAIT),
            "timeout",
        )
        self.assertKnockWorks(HIGH_CONTROL_PORT)
        # The daemon created its STATE_DIR (0700) and the replay cache in it, as its own uid.
        state = self.lab.state_dir()
        status = os.stat(state)
        self.assertEqual((status.st_uid, status.st_mode & 0o777), (UID, 0o700))
        self.assertEqual(sorted(os.listdir(state)),
                         ["identity.key", "replay.cache", "started", "status.sock"])
        self.assertEqual(os.stat(os.path.join(state, "replay.cache")).st_uid, UID)
        # The live view's socket is the uid's, 0600; the daemon's own user may ask it.
        socket_status = os.stat(os.path.join(state, "status.sock"))
        self.assertTrue(stat.S_ISSOCK(socket_status.st_mode))
        self.assertEqual((socket_status.st_uid, socket_status.st_mode & 0o777), (UID, 0o600))
        config = os.path.join(self.lab.directory, "sig2knockd.conf")
        asked = self.lab.ns("server", self.lab.unprivileged(
            [], [os.path.join(lab.BIN, "sig2knockd"), "--status", "-c", config]), check=False)
        self.assertEqual(asked.returncode, 0, asked.stderr)
        self.assertIn("daemon pid", asked.stdout)

    def test_knockWithNetRawAndNetAdminIptables(self) -> None:
        """
        The same with ``FIREWALL = iptables``: iptables-restore runs with the inherited
        CAP_NET_ADMIN too.
        """
        if shutil.which("iptables") is None:
            raise SkipTest("iptables is not installed")
        self.lab.start_unprivileged(
            ["net_raw", "net_admin"], {**lockdown(), "FIREWALL": "iptables"}
        )
        self.assertIn("firewall iptables", self.daemon_output())
        rules = self.lab.ns("server", ["iptables", "-w", "-S", "INPUT"]).stdout
        self.assertEqual(rules.count("-j SIG2KNOCK"), 1, rules)
        self.assertKnockWorks(HIGH_CONTROL_PORT)

    def test_natToLoopbackUnderTheUnitsKernelProtection(self) -> None:
        """
        ``FORWARD_MODE = nat`` to 127.0.0.1 needs ``route_localnet``, under /proc/sys, which
        the unit's ``ProtectKernelTunables=yes`` makes read-only: its ``ReadWritePaths=``
        reopens the interface settings, so the daemon starts and a whole knock works.
        """
        writable = unit_writable_tunables()
        self.assertEqual(writable, ["/proc/sys/net/ipv4/conf"])
        self.lab.start_unprivileged(
            ["net_raw", "net_admin"], nat_to_loopback(), writable_tunables=writable
        )
        self.assertIn("route_localnet = 1 on br0", self.daemon_output())
        self.assertKnockWorks(HIGH_CONTROL_PORT)

    def test_natToLoopbackWithAllTunablesReadOnly(self) -> None:
        """
        Without that exception (the unit as it was) the daemon cannot turn ``route_localnet``
        on, and refuses to start, saying so in one line: the sandbox of the test above bites.
        """
        config = os.path.join(self.lab.directory, "sig2knockd.conf")
        output = self.assertRefusesToStart(
            ["net_raw", "net_admin"], nat_to_loopback(),
            [os.path.join(lab.BIN, "sig2knockd"), "-c", config], writable_tunables=[],
        )
        self.assertIn("route_localnet", output)
        self.assertIn("Read-only file system", output)

    def test_firstStartInPreparedStateDir(self) -> None:
        """
        The first start in an empty STATE_DIR made beforehand (systemd's ``StateDirectory=``
        creates /var/lib/sig2knock before the unit's first start; an admin may run ``install
        -d``) is a first start: there is no lost replay cache to make up for, so a knock works
        at once.
        """
        self.lab.start_unprivileged(["net_raw", "net_admin"], lockdown(), state_dir_exists=True)
        self.assertKnockWorks(HIGH_CONTROL_PORT)


    def test_noNetRawRefusesToStart(self) -> None:
        """
        Without CAP_NET_RAW the capture cannot be opened: one line that names CAP_NET_RAW,
        exit status 1, nothing installed in the firewall.
        """
        output = self.assertRefusesToStart(["net_admin"], lockdown())
        lines = [line for line in output.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, output)
        self.assertTrue(lines[0].startswith("sig2knockd: "), output)
        self.assertIn("CAP_NET_RAW", lines[0])
        ruleset = self.lab.ns("server", ["nft", "list", "ruleset"]).stdout
        self.assertNotIn("sig2knock", ruleset)

    def test_noNetAdminRefusesToStart(self) -> None:
        """
        Without CAP_NET_ADMIN nft cannot install the rules: ``sig2knockd`` (the unit's command)
        logs why and exits with status 1; nothing is left open.
        """
        config = os.path.join(self.lab.directory, "sig2knockd.conf")
        output = self.assertRefusesToStart(
            ["net_raw"], lockdown(), [os.path.join(lab.BIN, "sig2knockd"), "-c", config]
        )
        self.assertIn("cannot install the firewall rules", output)
        ruleset = self.lab.ns("server", ["nft", "list", "ruleset"]).stdout
        self.assertNotIn("sig2knock", ruleset)

    def test_lowControlPortNeedsNetBindService(self) -> None:
        """
        UDP_PORT 1001 (the seed's) is below 1024: without CAP_NET_BIND_SERVICE the daemon says
        it cannot listen there, in one line, with exit status 1; with it (as the unit gives),
        a whole knock works.
        """
        output = self.assertRefusesToStart(["net_raw", "net_admin"], lockdown(lab.CONTROL_PORT))
        lines = [line for line in output.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, output)
        self.assertIn(f"UDP_PORT {lab.CONTROL_PORT}", lines[0])
        self.lab.start_unprivileged(
            ["net_raw", "net_admin", "net_bind_service"], lockdown(lab.CONTROL_PORT)
        )
        self.assertKnockWorks(lab.CONTROL_PORT)


class AdminWorkflowTests(SynchronousTestCase):
    """
    What docs/running.md tells an admin to do with a users file owned by the service user:
    add users and check the configuration.
    """

    skip = why_not_runnable()

    def setUp(self) -> None:
        # Not under _trial_temp, whose parents the service user may not be allowed to search.
        self.directory = tempfile.mkdtemp(prefix="sig2knock-admin-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        os.chmod(self.directory, 0o755)
        self.config = os.path.join(self.directory, "sig2knockd.conf")
        with open(self.config, "w", encoding="utf-8") as config:
            config.write(
                "UDP_PORT = 1001\nFORWARD_TO_IP = 127.0.0.1\nFORWARD_TO_PORT = 22\n"
                "INTERFACE = lo\nUSERS_FILE = user.txt\n"
            )
        os.chmod(self.config, 0o644)
        self.users = os.path.join(self.directory, "user.txt")
        with open(os.open(self.users, os.O_WRONLY | os.O_CREAT, 0o600), "w"):
            pass
        os.chown(self.users, UID, GID)

    def run_as(self, uid: Optional[int], command: Sequence[str], stdin: str = ""):
        if uid is not None:
            command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
                       *command]
        return subprocess.run(list(command), input=stdin, capture_output=True, text=True,
                              timeout=60)

    def add_user(self, uid: Optional[int]):
        return self.run_as(
            uid,
            [os.path.join(lab.BIN, "sig2knockd_useradd"), "--password-stdin", "--kdf",
             lab.CHEAP_KDF, "--allow-weak-kdf", "--users-file", self.users, "--server-key",
             ANY_SERVER, "alice"],
            lab.PASSWORD + "\n",
        )

    def assertUsersFileIntact(self) -> None:
        status = os.stat(self.users)
        self.assertEqual((status.st_uid, status.st_mode & 0o777), (UID, 0o600))

    def test_serviceUserAddsAndChecks(self) -> None:
        """
        As the service user (``runuser -u sig2knock --`` in the docs), ``sig2knockd_useradd``
        appends to the users file and ``sig2knockd --check-config`` accepts it.
        """
        added = self.add_user(UID)
        self.assertEqual(added.returncode, 0, added.stderr)
        self.assertUsersFileIntact()
        checked = self.run_as(UID, [os.path.join(lab.BIN, "sig2knockd"), "--check-config",
                                    "-c", self.config])
        self.assertEqual(checked.returncode, 0, checked.stderr)
        self.assertIn("1 user(s)", checked.stdout)

    def test_rootAddsToServiceUsersFile(self) -> None:
        """
        root adds a user to the service user's 0600 users file; owner and mode stay.
        """
        added = self.add_user(None)
        self.assertEqual(added.returncode, 0, added.stderr)
        self.assertUsersFileIntact()

    def test_rootsFileReadThroughTheServiceGroup(self) -> None:
        """
        A users file root owns and the service group reads (root:GROUP 0640): root adds a user
        to it, owner, group and mode stay, and the service user's ``--check-config`` accepts it;
        the daemon can read it and cannot rewrite it. Readable by others too, it is refused.
        """
        os.chown(self.users, 0, GID)
        os.chmod(self.users, 0o640)
        added = self.add_user(None)
        self.assertEqual(added.returncode, 0, added.stderr)
        status = os.stat(self.users)
        self.assertEqual((status.st_uid, status.st_gid, status.st_mode & 0o777), (0, GID, 0o640))
        check = [os.path.join(lab.BIN, "sig2knockd"), "--check-config", "-c", self.config]
        checked = self.run_as(UID, check)
        self.assertEqual(checked.returncode, 0, checked.stderr)
        self.assertIn("1 user(s)", checked.stdout)
        self.assertNotEqual(
            self.run_as(UID, ["sh", "-c", f"echo >> {self.users}"]).returncode, 0,
            "the service user cannot write to it",
        )
        os.chmod(self.users, 0o644)
        refused = self.run_as(UID, check)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("owned by root, but the daemon runs as nobody", refused.stderr)
        self.assertIn("chmod 640", refused.stderr)

    def test_rootRefusesASymlinkedUsersFile(self) -> None:
        """
        The service user replaces its users file with a link to a file of root's: root's
        ``sig2knockd_useradd`` refuses it and writes nothing there.
        """
        victim = os.path.join(self.directory, "roots-file")
        with open(victim, "w", encoding="utf-8") as out:
            out.write("root's own\n")
        os.remove(self.users)
        os.symlink(victim, self.users)
        added = self.add_user(None)
        self.assertEqual(added.returncode, 1, added.stderr)
        self.assertIn("a symbolic link", added.stderr)
        with open(victim, encoding="utf-8") as unchanged:
            self.assertEqual(unchanged.read(), "root's own\n")



# -- the systemd unit -----------------------------------------------------------------------------

REQUIRED = {
    "Unit": {
        "After": "network-online.target time-sync.target",
        "Wants": "network-online.target",
    },
    "Service": {
        "ExecStart": "/usr/local/bin/sig2knockd -c /etc/sig2knock/sig2knockd.conf",
        "User": "sig2knock",
        "Group": "sig2knock",
        "AmbientCapabilities": "CAP_NET_RAW CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_RAW CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/sig2knock -/proc/sys/net/ipv4/conf",
        "StateDirectory": "sig2knock",
        "StateDirectoryMode": "0700",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        "RestartSec": "2",
        "KillSignal": "SIGTERM",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_PACKET AF_UNIX",
    },
    "Install": {
        "WantedBy": "multi-user.target",
    },
}


class SystemdUnitTests(SynchronousTestCase):
    """
    ``etc/sig2knockd.service`` has the settings docs/running.md promises, and systemd accepts it.
    """

    def test_requiredSettings(self) -> None:
        unit = read_unit(UNIT)
        for section, settings in REQUIRED.items():
            self.assertTrue(unit.has_section(section), f"[{section}] is missing")
            for key, value in settings.items():
                self.assertEqual(unit.get(section, key, fallback=None), value, f"{section}.{key}")

    def test_capabilitiesMatchWhatTheDaemonNeeds(self) -> None:
        """
        The bounding set holds exactly the ambient capabilities: nothing the daemon could gain
        beyond them.
        """
        unit = read_unit(UNIT)
        ambient = set(unit.get("Service", "AmbientCapabilities").split())
        bounding = set(unit.get("Service", "CapabilityBoundingSet").split())
        self.assertEqual(ambient, bounding)
        self.assertEqual(ambient, {"CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"})

    def analyze(self, *arguments: str, text: Optional[str] = None) -> subprocess.CompletedProcess:
        """
        ``systemd-analyze ARGUMENTS UNIT`` on a copy of the unit (or ``text``) whose ExecStart
        points at this checkout's ``sig2knockd``, since verify insists the program exists.
        """
        if text is None:
            with open(UNIT, encoding="utf-8") as unit:
                text = unit.read()
        directory = self.mktemp()
        os.makedirs(directory)
        copy = os.path.join(directory, "sig2knockd.service")
        with open(copy, "w", encoding="utf-8") as out:
            out.write(
                text.replace("/usr/local/bin/sig2knockd", os.path.join(lab.BIN, "sig2knockd"))
            )
        return subprocess.run(
            ["systemd-analyze", *arguments, copy], capture_output=True, text=True, timeout=60
        )

    def complaints(self, result: subprocess.CompletedProcess) -> List[str]:
        # Complaints about units other than ours (the host's own, e.g. in a container) are not
        # this test's business.
        return [line for line in result.stderr.splitlines() if "sig2knockd.service" in line]

    def test_systemdAnalyzeVerify(self) -> None:
        """
        ``systemd-analyze verify`` finds nothing wrong with the unit (and does complain about a
        misspelt key, so silence means something).
        """
        result = self.analyze("verify", "--man=no")
        self.assertEqual(self.complaints(result), [], result.stderr)
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(UNIT, encoding="utf-8") as unit:
            broken = unit.read().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomme=yes")
        self.assertNotEqual(self.complaints(self.analyze("verify", "--man=no", text=broken)), [])

    def test_systemdAnalyzeSecurity(self) -> None:
        """
        ``systemd-analyze security --offline`` rates the unit's sandbox: it must stay in the
        "OK" band (exposure below 5 of 10; it is about 2.4 with systemd 252).
        """
        result = self.analyze("security", "--offline=yes", "--no-pager")
        if "--offline" in result.stderr and result.returncode != 0:
            raise SkipTest(f"this systemd-analyze has no offline security check: {result.stderr}")
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
        self.assertIsNotNone(match, result.stdout + result.stderr)
        self.assertLess(float(match.group(1)), 5.0, result.stdout)

    if shutil.which("systemd-analyze") is None:
        test_systemdAnalyzeVerify.skip = (  # type: ignore[attr-defined]
            "systemd-analyze is not installed; test_requiredSettings checks the keys"
        )
        test_systemdAnalyzeSecurity.skip = test_systemdAnalyzeVerify.skip  # type: ignore
