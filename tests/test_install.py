"""
What users install, tested as installed (as root): the wheel with ``[server]`` in a virtualenv of
its own, the client profile alone in another, and the Debian package, each used from outside
the checkout in the namespace lab.

``packaging/check-artifacts`` builds the artifacts, makes the virtualenvs and runs this module
with their places in ``SIG2KNOCK_SERVER_VENV``, ``SIG2KNOCK_CLIENT_VENV`` and ``SIG2KNOCK_DEB``
(CI does, after the README's test command); without them these tests skip, saying so.
"""

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import textwrap
import time
from typing import Dict, List, Optional, Set

from twisted.trial.unittest import SynchronousTestCase

from tests import lab
from tests.lab import Lab, read_unit

SERVER_VENV = os.environ.get("SIG2KNOCK_SERVER_VENV")
CLIENT_VENV = os.environ.get("SIG2KNOCK_CLIENT_VENV")
DEB = os.environ.get("SIG2KNOCK_DEB")
BUILT_BY = "packaging/check-artifacts builds and installs it and runs this test (CI does)"

# Where a package's files go; every one of sig2knock's has "sig2knock" in its path.
PACKAGE_TREES = ("/etc", "/opt", "/usr", "/var", "/srv")
UNIT = "/lib/systemd/system/sig2knockd.service"
CONFIG = "/etc/sig2knock/sig2knockd.conf"
USERS = "/etc/sig2knock/user.txt"


def why_not(variable: str, value: Optional[str]) -> Optional[str]:
    """
    Why a test of the artifact in ``variable`` cannot run here, or ``None``.
    """
    reason = lab.why_not_runnable()
    if reason is not None:
        return reason
    if not value:
        return f"{variable} is not set: {BUILT_BY}"
    return None


def outside_checkout(test: SynchronousTestCase) -> str:
    """
    A fresh working directory outside the checkout, writable by every user and sticky, like
    /tmp (what each user's tests make there stays theirs; the daemon's StrictModes check of the
    directories above a users file accepts a sticky one and no other open to all), removed
    afterwards.
    """
    directory = tempfile.mkdtemp(prefix="sig2knock-installed-")
    os.chmod(directory, 0o1777)
    test.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory


def knock_and_echo(test: SynchronousTestCase, the_lab: Lab, *extra: str) -> int:
    """
    Knock with the lab's client and reach the echo service through the port; return the port.
    """
    result = the_lab.knock(extra=extra)
    test.assertEqual(
        result.returncode, 0, f"client failed: {result.stderr}\n--- daemon ---\n{the_lab.log()}"
    )
    test.assertRegex(result.stdout, r"^[0-9]+\n$")
    port = int(result.stdout)
    test.assertEqual(the_lab.probe("client", lab.SERVER_IP, port), "echo:hello")
    return port


# Loaded by every Python process of the unit test run (through PYTHONPATH): an audit hook that
# writes down every program started whose name is one of the tools that make namespaces or
# change a firewall, however it is started (subprocess, os.exec*, posix_spawn, system), when it
# is the system's: stand-ins the tests write into their temporary directories (a pktctl that
# records its input) and paths that do not exist are not.
WATCH_TOOLS = textwrap.dedent(
    """
    import os, shutil, sys
    LOG = os.environ["SIG2KNOCK_TOOL_LOG"]
    HERE = os.getcwd()
    TOOLS = {"ip", "nft", "iptables", "ip6tables", "iptables-restore", "ip6tables-restore",
             "iptables-save", "ip6tables-save", "iptables-nft", "iptables-legacy", "pktctl",
             "unshare", "setpriv", "nsenter", "tc"}

    def program(event, args):
        if event == "os.system":
            return str(args[0]).split()[0] if str(args[0]).split() else ""
        if event == "subprocess.Popen":
            executable, argv = args[0], args[1]
            if executable is None:
                argv = [argv] if isinstance(argv, (str, bytes)) else list(argv)
                executable = argv[0] if argv else ""
            return executable
        return args[0]

    def hook(event, args):
        if event in ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system"):
            path = os.fsdecode(program(event, args) or "")
            name = os.path.basename(path)
            found = path if os.path.isabs(path) else shutil.which(path)
            if name in TOOLS and found and os.path.exists(found) and not found.startswith(HERE):
                with open(LOG, "a") as log:
                    log.write(f"{event}: {args!r}\\n")

    sys.addaudithook(hook)
    """
)


def trial_summary(output: str) -> str:
    """
    trial's last line: ``PASSED (successes=N)`` or ``FAILED (...)``.
    """
    lines = [line for line in output.splitlines() if re.match(r"^(PASSED|FAILED) \(", line)]
    return lines[-1] if lines else ""


class WheelTests(SynchronousTestCase):
    """
    The wheel installed with ``[server]`` (and ``[test]``) into a virtualenv outside the
    checkout: its unit tests pass as root and as any user, and its commands knock end to end.
    """

    skip = why_not("SIG2KNOCK_SERVER_VENV", SERVER_VENV)

    def bin(self) -> str:
        assert SERVER_VENV is not None
        return os.path.join(SERVER_VENV, "bin")

    def test_installedFromTheWheel(self) -> None:
        """
        The package is the wheel's, not the checkout's (no editable install, no path entry).
        """
        done = lab.run(
            [os.path.join(self.bin(), "python"), "-c",
             "import sig2knock, sig2knock.firewall.nftables, twisted.plugins.sig2knock_plugin;"
             " print(sig2knock.__file__)"],
            cwd=outside_checkout(self),
        )
        self.assertTrue(done.stdout.startswith(SERVER_VENV), done.stdout)
        self.assertNotIn(lab.REPOSITORY, done.stdout)

    def run_unit_tests(self, as_nobody: bool) -> str:
        """
        ``trial sig2knock`` from the installed virtualenv, in a directory outside the checkout:
        it passes, skips nothing and starts none of the namespace or firewall tools.
        """
        directory = outside_checkout(self)
        site = os.path.join(directory, "site")
        os.makedirs(site)
        with open(os.path.join(site, "sitecustomize.py"), "w", encoding="utf-8") as module:
            module.write(WATCH_TOOLS)
        log = os.path.join(directory, "tools.log")
        with open(log, "w"):
            os.chmod(log, 0o666)
        command = [os.path.join(self.bin(), "trial"), "sig2knock"]
        if as_nobody:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                       *command]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": directory, "LANG": "C.UTF-8",
               "PYTHONPATH": site, "SIG2KNOCK_TOOL_LOG": log}
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=1800, cwd=directory, env=env
        )
        summary = trial_summary(done.stdout)
        self.assertEqual(done.returncode, 0, done.stdout[-5000:] + done.stderr[-2000:])
        self.assertRegex(summary, r"^PASSED \(successes=\d+\)$", "no test skipped or failed")
        with open(log, encoding="utf-8") as started:
            self.assertEqual(
                started.read(), "", "the unit tests started a namespace or firewall tool"
            )
        return summary

    def test_unitTestsAsRootChangeNothing(self) -> None:
        """
        ``trial sig2knock`` of the installed package passes as root without skipping anything,
        and creates no namespace and changes no firewall while it runs.
        """
        def state() -> Dict[str, str]:
            return {
                "namespaces": lab.run(["ip", "netns", "list"]).stdout,
                "nftables": lab.run(["nft", "list", "ruleset"]).stdout,
                "iptables": lab.run(["iptables-save"], check=False).stdout.count("\n-A "),
            }

        before = state()
        self.run_unit_tests(as_nobody=False)
        self.assertEqual(state(), before)

    def test_unitTestsAsNobody(self) -> None:
        """
        ``trial sig2knock`` of the installed package passes as an unprivileged user, skipping
        nothing.
        """
        self.run_unit_tests(as_nobody=True)

    def test_knockWithInstalledCommands(self) -> None:
        """
        The installed ``twistd -n sig2knock`` (the plugin from the wheel) and ``sig2knockd``,
        users made with the installed ``sig2knockd_useradd``, knocked with the installed
        ``sig2knockc``: a port, and the hidden service through it; the installed
        ``sig2knockd --status`` shows the used grant.
        """
        for use_sig2knockd in (False, True):
            with self.subTest(sig2knockd=use_sig2knockd):
                the_lab = Lab(server_bin=self.bin(), client_bin=self.bin())
                self.addCleanup(the_lab.close)
                the_lab.build()
                the_lab.start_echo_service()
                the_lab.start_daemon({"FIREWALL": "nftables"}, sig2knockd=use_sig2knockd)
                port = knock_and_echo(self, the_lab)
                view = the_lab.daemon_command("--status", "--json")
                self.assertEqual(view.returncode, 0, view.stderr)
                self.assertEqual([(entry["port"], entry["used"]) for entry in
                                  json.loads(view.stdout)["sessions"]], [(port, True)])
                the_lab.close()


class ClientOnlyTests(SynchronousTestCase):
    """
    ``pip install sig2knock``, the client profile alone: no Twisted, no pcapy-ng, no zope, and
    it knocks (with ``--stdio`` too) on a daemon installed from the wheel.
    """

    skip = why_not("SIG2KNOCK_CLIENT_VENV", CLIENT_VENV) or why_not(
        "SIG2KNOCK_SERVER_VENV", SERVER_VENV
    )

    def test_onlyThePackageAndPycryptodome(self) -> None:
        assert CLIENT_VENV is not None
        python = os.path.join(CLIENT_VENV, "bin", "python")
        listed = lab.run([python, "-m", "pip", "list", "--format=freeze"]).stdout
        names = {line.split("==")[0].lower() for line in listed.splitlines()}
        self.assertEqual(names - {"pip", "setuptools", "wheel"}, {"sig2knock", "pycryptodome"})
        # (twisted/plugins/sig2knock_plugin.py is in every wheel, so "twisted" alone imports as
        # an empty namespace package; Twisted itself must not be there.)
        for module in ("twisted.internet", "pcapy", "zope.interface"):
            done = lab.run([python, "-c", f"import {module}"], check=False)
            self.assertNotEqual(done.returncode, 0, f"{module} is importable")
        self.assertFalse(os.path.exists(os.path.join(CLIENT_VENV, "bin", "twistd")))
        # Every console script of the package is installed, the daemon's too: it says what
        # it lacks, in one line.
        done = lab.run([os.path.join(CLIENT_VENV, "bin", "sig2knockd"), "--check-config"],
                       check=False)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(done.stderr.count("\n"), 1, done.stderr)
        self.assertIn("pip install 'sig2knock[server]'", done.stderr)

    def test_knocks(self) -> None:
        assert CLIENT_VENV is not None and SERVER_VENV is not None
        the_lab = Lab(
            server_bin=os.path.join(SERVER_VENV, "bin"),
            client_bin=os.path.join(CLIENT_VENV, "bin"),
        )
        self.addCleanup(the_lab.close)
        the_lab.build()
        the_lab.start_echo_service()
        the_lab.start_daemon()
        knock_and_echo(self, the_lab)
        # --stdio, as ssh's ProxyCommand runs it (the password comes from a file then).
        password_file = os.path.join(the_lab.directory, "password")
        with open(os.open(password_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as out:
            out.write(lab.PASSWORD + "\n")
        command = [
            os.path.join(CLIENT_VENV, "bin", "sig2knockc"), lab.SERVER_IP, str(lab.CONTROL_PORT),
            "--user", "alice", "--kdf", lab.CHEAP_KDF, "--password-file", password_file,
            "--server-key", the_lab.server_key, "--stdio",
        ]
        done = the_lab.ns("client", command, check=False, input="through stdio", timeout=60)
        self.assertEqual((done.returncode, done.stdout), (0, "through stdio"), done.stderr)


def sig2knock_paths() -> Set[str]:
    """
    Every path under the trees packages install to whose name holds ``sig2knock``.
    """
    found = lab.run(["find", *PACKAGE_TREES, "-xdev", "-name", "*sig2knock*"], check=False)
    return set(found.stdout.split())


def unit_command(unit_path: str) -> List[str]:
    """
    The unit's ``ExecStart`` run the way systemd would run it, with ``setpriv``: as its
    ``User``/``Group`` with no other groups, holding its ambient capabilities and no others
    (``CapabilityBoundingSet``), with ``NoNewPrivileges``.
    """
    unit = read_unit(unit_path)
    service = unit["Service"]
    ambient = [name.lower().replace("cap_", "") for name in service["AmbientCapabilities"].split()]
    bounding = [name.lower().replace("cap_", "") for name in
                service["CapabilityBoundingSet"].split()]
    caps = ",".join(f"+{name}" for name in ambient)
    command = [
        "setpriv",
        f"--reuid={service['User']}",
        f"--regid={service['Group']}",
        "--clear-groups",
        f"--inh-caps={caps}",
        f"--ambient-caps={caps}",
        "--bounding-set=-all," + ",".join(f"+{name}" for name in bounding),
    ]
    if service.get("NoNewPrivileges") == "yes":
        command.append("--no-new-privs")
    return command + ["--", *shlex.split(service["ExecStart"])]


class DebianPackageTests(SynchronousTestCase):
    """
    The .deb installed with ``apt-get install``, its daemon run as its unit runs it and knocked
    from a namespace; then removed (the rules go, the configuration stays) and purged (nothing
    of it is left: no file, no user, no firewall table).
    """

    skip = why_not("SIG2KNOCK_DEB", DEB)

    def apt_get(self, *arguments: str, namespace: Optional[str] = None) -> str:
        command = ["apt-get", "-y", "-q", *arguments]
        if namespace is not None:
            command = ["ip", "netns", "exec", namespace, *command]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        return lab.run(command, timeout=600, env=env).stdout

    def assertInstalled(self, fresh: bool = True) -> None:
        for path, kind in (
            ("/usr/sbin/sig2knockd", "x"), ("/usr/sbin/sig2knockd_useradd", "x"),
            ("/usr/bin/sig2knockc", "x"), (UNIT, "f"), ("/usr/share/doc/sig2knock", "d"),
        ):
            with self.subTest(path=path):
                self.assertTrue(
                    os.access(path, os.X_OK) if kind == "x" else
                    os.path.isfile(path) if kind == "f" else os.path.isdir(path)
                )
        for page in ("sig2knockd.8", "sig2knockc.1", "sig2knockd_useradd.8",
                     "sig2knockd.conf.5"):
            name, section = page.rsplit(".", 1)
            self.assertTrue(os.path.isfile(f"/usr/share/man/man{section}/{page}.gz"), page)
        conffiles = lab.run(["dpkg-query", "-W", "-f=${Conffiles}", "sig2knock"]).stdout
        self.assertIn(CONFIG, conffiles)
        if fresh:
            # The system defaults, as the daemon reads them.
            settings = lab.run([
                "/opt/sig2knock/bin/python", "-c",
                "from sig2knock.daemon.settings import load_config; c = load_config("
                f"'{CONFIG}'); print(c.state_dir, c.firewall, c.users_file)",
            ]).stdout.split()
            self.assertEqual(settings, ["/var/lib/sig2knock", "auto", USERS])
        user = pwd.getpwnam("sig2knock")
        self.assertEqual((user.pw_dir, user.pw_shell), ("/var/lib/sig2knock", "/usr/sbin/nologin"))
        users = os.stat(USERS)
        self.assertEqual((users.st_uid, stat.S_IMODE(users.st_mode)), (user.pw_uid, 0o600))
        if fresh:
            self.assertEqual(users.st_size, 0)
        state = os.stat("/var/lib/sig2knock")
        self.assertEqual((state.st_uid, stat.S_IMODE(state.st_mode)), (user.pw_uid, 0o700))
        self.assertEqual(read_unit(UNIT)["Service"]["ExecStart"],
                         f"/usr/sbin/sig2knockd -c {CONFIG}")
        # Installed, not enabled: nothing links it into a target.
        self.assertEqual(lab.run(["find", "/etc/systemd", "-name", "sig2knockd*"]).stdout, "")
        cache = lab.run(["find", "/opt/sig2knock", "-name", "dropin.cache"]).stdout
        self.assertIn("twisted/plugins/dropin.cache", cache, "the plugin cache is built")
        self.assertNotEqual(lab.run(["find", "/opt/sig2knock", "-name", "*.pyc"]).stdout, "",
                            "byte-code is compiled at installation")

    def test_installRunRemovePurge(self) -> None:
        assert DEB is not None
        before = sig2knock_paths()
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        self.addCleanup(lab.run, ["apt-get", "-y", "-q", "purge", "sig2knock"], check=False,
                        timeout=600, env=env)
        self.apt_get("install", os.path.abspath(DEB))
        self.assertInstalled()

        the_lab = Lab(server_bin="/usr/sbin", client_bin="/usr/bin")
        self.addCleanup(the_lab.close)
        the_lab.build()
        the_lab.start_echo_service()
        # The lab's settings in the packaged files, the way an admin would edit them.
        with open(CONFIG, "w", encoding="utf-8") as config:
            config.write(
                f"UDP_PORT = {lab.CONTROL_PORT}\nFORWARD_TO_IP = 127.0.0.1\n"
                f"FORWARD_TO_PORT = {lab.SERVICE_PORT}\nINTERFACE = br0\nFIREWALL = nftables\n"
                "FIREWALL_POLICY = lockdown\n"
            )
        # The package made the server's identity; useradd derives alice's key for it.
        identity = lab.run(["/usr/sbin/sig2knockd", "--show-identity", "-c", CONFIG])
        the_lab.server_key = identity.stdout.split()[0]
        lab.run(["/usr/sbin/sig2knockd_useradd", "-c", CONFIG, "--users-file", USERS,
                 "--password-stdin", "--kdf", lab.CHEAP_KDF, "--allow-weak-kdf", "alice"],
                input=lab.PASSWORD + "\n")
        self.assertEqual(os.stat(USERS).st_uid, pwd.getpwnam("sig2knock").pw_uid)

        command = unit_command(UNIT)
        with open(the_lab.daemon_log, "a", encoding="utf-8") as log:
            daemon = the_lab.start("server", command, stdout=log, stderr=subprocess.STDOUT,
                                   cwd="/")
        deadline = time.monotonic() + 30
        while "sig2knock ready" not in the_lab.log() and daemon.poll() is None:
            self.assertLess(time.monotonic(), deadline, the_lab.log())
            time.sleep(0.05)
        self.assertIn("sig2knock ready", the_lab.log())
        status = the_lab.ns("server", ["cat", f"/proc/{daemon.pid}/status"]).stdout
        uid = pwd.getpwnam("sig2knock").pw_uid
        self.assertIn(f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}", status)
        knock_and_echo(self, the_lab)
        self.assertEqual(sorted(os.listdir("/var/lib/sig2knock")),
                         ["identity.key", "replay.cache", "started", "status.sock"])
        # root asks the daemon (running as its own user) for the live view.
        view = the_lab.ns("server", ["/usr/sbin/sig2knockd", "--status", "--json", "-c", CONFIG])
        self.assertEqual([(entry["user"], entry["state"]) for entry in
                          json.loads(view.stdout)["sessions"]], [("alice", "used")])
        self.assertEqual(os.stat("/var/lib/sig2knock/identity.key").st_uid, uid)
        daemon.send_signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(timeout=30), -signal.SIGTERM, the_lab.log())
        self.assertIn("table inet sig2knock",
                      the_lab.ns("server", ["nft", "list", "tables"]).stdout,
                      "a stopped daemon keeps the host closed")

        # An upgrade (the same package again) keeps the users and the edited configuration,
        # does not stop a running daemon beforehand and restarts it afterwards (try-restart:
        # only if it runs), and builds the byte-code and the plugin cache again.
        with open(CONFIG, encoding="utf-8") as config:
            edited = config.read()
        with open(USERS, encoding="utf-8") as users:
            enrolled = users.read()
        self.apt_get("-o", "Dpkg::Options::=--force-confold", "install", "--reinstall",
                     os.path.abspath(DEB))
        with open(CONFIG, encoding="utf-8") as config:
            self.assertEqual(config.read(), edited)
        with open(USERS, encoding="utf-8") as users:
            self.assertEqual(users.read(), enrolled)
        self.assertInstalled(fresh=False)
        scripts = os.path.join(the_lab.directory, "control")
        lab.run(["dpkg-deb", "--control", os.path.abspath(DEB), scripts])
        with open(os.path.join(scripts, "postinst"), encoding="utf-8") as postinst:
            self.assertIn("try-restart", postinst.read())
        preinst = os.path.join(scripts, "preinst")
        if os.path.exists(preinst):
            with open(preinst, encoding="utf-8") as text:
                self.assertNotIn("stop", text.read())

        # Removal (inside the server's namespace, whose firewall the daemon used): the rules
        # go, the edited configuration stays, and so do the user and the state.
        self.apt_get("remove", "sig2knock", namespace=the_lab.namespaces["server"])
        self.assertNotIn("sig2knock", the_lab.ns("server", ["nft", "list", "tables"]).stdout)
        self.assertTrue(os.path.isfile(CONFIG))
        self.assertFalse(os.path.exists("/opt/sig2knock"))
        self.assertFalse(os.path.exists("/usr/sbin/sig2knockd"))
        pwd.getpwnam("sig2knock")

        self.apt_get("purge", "sig2knock", namespace=the_lab.namespaces["server"])
        self.assertEqual(sorted(sig2knock_paths() - before), [])
        self.assertRaises(KeyError, pwd.getpwnam, "sig2knock")
        self.assertRaises(KeyError, grp.getgrnam, "sig2knock")
        self.assertNotIn("sig2knock", the_lab.ns("server", ["nft", "list", "ruleset"]).stdout)
