"""
The client wherever it installs: the client's own tests with the POSIX-only modules (``pwd``,
``grp``, ``fcntl``, ``termios``) made unimportable, and whole knocks with ``sig2knockc``'s
command line as it runs on Windows, simulated here (``portable.WINDOWS`` set, Windows'
``msvcrt`` stood in for) against a small server on 127.0.0.1. Each run also
checks what the client loaded: no Twisted, zope, pcapy or daemon module, and nothing POSIX-only.
"""

import os
import socket
import subprocess
import sys
import textwrap
import threading
from typing import Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.client.keyfile import default_key_path
from sig2knock.test.common import (
    CHEAP_KDF,
    IMPORT_ROOT,
    PASSWORD,
    SERVER_KEY_TEXT,
    SERVER_PUBLIC,
    read_until_closed,
)
from sig2knock.test.loopback_server import LoopbackServer


POSIX_ONLY = ("pwd", "grp", "fcntl", "termios")

# The client's tests: they import only the client's modules, so they run without Twisted's
# reactor and without the POSIX-only modules.
CLIENT_TESTS = (
    "sig2knock.test.test_addresses",
    "sig2knock.test.test_cipher",
    "sig2knock.test.test_files",
    "sig2knock.test.test_hpke",
    "sig2knock.test.test_invitation",
    "sig2knock.test.test_kdf",
    "sig2knock.test.test_keyfile",
    "sig2knock.test.test_keyline",
    "sig2knock.test.test_knocker",
    "sig2knock.test.test_portable",
    "sig2knock.test.test_relay",
    "sig2knock.test.test_scripts_client",
    "sig2knock.test.test_servers",
    "sig2knock.test.test_wire",
)

# Every module of the package that the client may load; the rest belong to the daemon. A new
# module the client needs is added here on purpose, never by a prefix.
CLIENT_MODULES = frozenset({
    "sig2knock",
    "sig2knock.client",
    "sig2knock.client.keyfile",
    "sig2knock.client.knocker",
    "sig2knock.client.portable",
    "sig2knock.client.relay",
    "sig2knock.client.servers",
    "sig2knock.protocol",
    "sig2knock.protocol.addresses",
    "sig2knock.protocol.cipher",
    "sig2knock.protocol.files",
    "sig2knock.protocol.invitation",
    "sig2knock.protocol.kdf",
    "sig2knock.protocol.keyline",
    "sig2knock.protocol.keys",
    "sig2knock.protocol.names",
    "sig2knock.protocol.wire",
    "sig2knock.scripts",
    "sig2knock.scripts.client",
})


def client_only(loaded: List[str]) -> List[str]:
    """
    The modules of ``loaded`` that the client must not load: any not in ``CLIENT_MODULES``.
    """
    return sorted(set(loaded) - CLIENT_MODULES)


# Runs in every Python process of a test, through PYTHONPATH: makes the POSIX-only modules
# unimportable and, with SIG2KNOCK_TEST_WINDOWS set, plays Windows for sig2knock.client.portable.
SITECUSTOMIZE = textwrap.dedent(
    f"""
    import os, sys, types
    for name in {POSIX_ONLY!r}:
        sys.modules[name] = None
    if os.environ.get("SIG2KNOCK_TEST_WINDOWS"):
        log = os.environ["SIG2KNOCK_TEST_WINDOWS"]

        def record(line):
            with open(log, "a") as calls:
                calls.write(line + "\\n")

        # subprocess takes the presence of msvcrt for Windows: let it look first.
        import subprocess
        msvcrt = types.ModuleType("msvcrt")
        # CreateProcess splits a command line itself (simplified here: white space outside
        # double quotes separates words, quotes go, backslashes stay).
        popen = subprocess.Popen

        def create_process(command, *args, **kwargs):
            if isinstance(command, str):
                record(f"command line {{command}}")
                words, word, quoted = [], "", False
                for character in command + " ":
                    if character == '"':
                        quoted = not quoted
                    elif character.isspace() and not quoted:
                        if word:
                            words.append(word)
                        word = ""
                    else:
                        word += character
                command = words
            return popen(command, *args, **kwargs)

        subprocess.Popen = create_process
        msvcrt.setmode = lambda fd, mode: record(f"setmode {{fd}} {{mode:#x}}")
        sys.modules["msvcrt"] = msvcrt
        import sig2knock.client.portable
        sig2knock.client.portable.WINDOWS = True
    """
)

# sig2knockc's main, then a line on stderr naming what the process loaded.
RUN_CLIENT = textwrap.dedent(
    """
    import sys
    from sig2knock.scripts import client
    status = client.main(sys.argv[1:])
    loaded = sorted(
        name for name in sys.modules
        if sys.modules[name] is not None
        and name.split(".")[0] in ("sig2knock", "twisted", "zope", "pcapy")
    )
    sys.stdout.flush()
    sys.stderr.write("LOADED " + " ".join(loaded) + "\\n")
    raise SystemExit(status)
    """
)


class PlatformRun:
    """
    Python processes run from ``directory``: with ``SITECUSTOMIZE`` on their path (POSIX-only
    modules unimportable, and with ``windows`` Windows played), or with ``plain`` as they are.
    """

    def __init__(self, directory: str, windows: bool, plain: bool = False) -> None:
        self.directory = directory
        site = os.path.join(directory, "site")
        os.makedirs(site, exist_ok=True)
        if not plain:
            with open(os.path.join(site, "sitecustomize.py"), "w", encoding="utf-8") as module:
                module.write(SITECUSTOMIZE)
        self.calls = os.path.join(directory, "windows-calls.log")
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [site, IMPORT_ROOT] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else [])
        )
        self.env.pop("XDG_CONFIG_HOME", None)
        self.env["HOME"] = os.path.join(directory, "home")
        if windows:
            self.env["SIG2KNOCK_TEST_WINDOWS"] = self.calls
            self.env["USERPROFILE"] = os.path.join(directory, "profile")
            self.env["APPDATA"] = os.path.join(directory, "profile", "AppData", "Roaming")
            os.makedirs(self.env["APPDATA"], exist_ok=True)

    def python(
        self, arguments: List[str], stdin: bytes = b"", timeout: float = 120
    ) -> "subprocess.CompletedProcess[bytes]":
        """
        Run this Python with ``arguments``, feeding ``stdin``; output as bytes, untranslated.
        """
        return subprocess.run(
            [sys.executable, *arguments],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            cwd=self.directory,
            env=self.env,
        )

    def client(
        self, port: int, *arguments: str, stdin: str = ""
    ) -> Tuple[int, str, str, List[str]]:
        """
        ``sig2knockc 127.0.0.1 PORT --user alice ARGUMENTS``: its status, output, error output
        (without the report of loaded modules) and the modules it loaded. The output is
        decoded without translating line ends.
        """
        done = self.python(
            ["-c", RUN_CLIENT, "127.0.0.1", str(port), "--user", "alice", "--kdf",
             CHEAP_KDF.format(), "--server-key", SERVER_KEY_TEXT, "--timeout", "10",
             *arguments],
            stdin=stdin.encode(),
        )
        lines = done.stderr.decode().splitlines(keepends=True)
        assert lines and lines[-1].startswith("LOADED "), done.stderr
        return done.returncode, done.stdout.decode(), "".join(lines[:-1]), lines[-1].split()[1:]

    def windows_calls(self) -> List[str]:
        try:
            with open(self.calls, encoding="utf-8") as calls:
                return calls.read().splitlines()
        except FileNotFoundError:
            return []


class ClientTestsWithoutPosixModulesTests(SynchronousTestCase):
    """
    The client's own tests pass with ``pwd``, ``grp``, ``fcntl`` and ``termios`` unimportable,
    in the test process and in every client it starts, as on Windows.
    """

    def test_clientTestsPass(self) -> None:
        run = PlatformRun(os.path.abspath(self.mktemp()), windows=False)
        done = run.python(["-m", "unittest", *CLIENT_TESTS], timeout=600)
        report = done.stderr.decode()
        self.assertEqual(done.returncode, 0, report[-4000:])
        summary = [line for line in report.splitlines() if line.startswith("Ran ")]
        self.assertTrue(summary and int(summary[-1].split()[1]) > 100, report[-2000:])


class WindowsClientTests(SynchronousTestCase):
    """
    ``sig2knockc`` as it runs on Windows (simulated): a knock, ``--password-file``,
    ``--save-key``, ``--exec`` and ``--stdio``, loading nothing of the daemon's.
    """

    def setUp(self) -> None:
        self.run = PlatformRun(os.path.abspath(self.mktemp()), windows=True)

    def server(self, grant_port: int) -> LoopbackServer:
        server = LoopbackServer(grant_port=grant_port)
        self.addCleanup(server.stop)
        return server

    def assertClientOnly(self, loaded: List[str]) -> None:
        self.assertEqual(client_only(loaded), [])

    def password_file(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "password.txt")
        with open(path, "w", encoding="utf-8") as password_file:
            password_file.write(PASSWORD + "\r\n")  # as Notepad saves it
        os.chmod(path, 0o666)  # what Windows reports for every file
        return path

    def test_knockPrintsPort(self) -> None:
        server = self.server(45690)
        status, out, err, loaded = self.run.client(server.port, "--password-stdin",
                                                   stdin=PASSWORD + "\n")
        self.assertEqual((status, out, err), (0, "45690\n", ""))
        self.assertClientOnly(loaded)

    def test_passwordFileInProfile(self) -> None:
        """
        A password file in the profile folder is used without a word; mode bits are not
        judged (Windows reports 0666); elsewhere it is used with a warning.
        """
        server = self.server(45691)
        inside = self.password_file(os.path.join(self.run.env["USERPROFILE"], "Documents"))
        status, out, err, _ = self.run.client(server.port, "--password-file", inside)
        self.assertEqual((status, out, err), (0, "45691\n", ""))
        outside = self.password_file(os.path.join(self.run.directory, "elsewhere"))
        status, out, err, _ = self.run.client(server.port, "--password-file", outside)
        self.assertEqual((status, out), (0, "45691\n"))
        self.assertIn(f"cannot check who may read {outside} on Windows", err)

    def test_saveKeyInAppData(self) -> None:
        server = self.server(45692)
        status, out, err, loaded = self.run.client(
            server.port, "--save-key", "--password-stdin", "-v", stdin=PASSWORD + "\n"
        )
        name = os.path.basename(default_key_path("alice", SERVER_PUBLIC))
        path = os.path.join(self.run.env["APPDATA"], "sig2knock", name)
        self.assertEqual((status, out), (0, "45692\n"), err)
        self.assertIn(f"key saved to {path}", err)
        self.assertTrue(os.path.isfile(path))
        status, out, err, _ = self.run.client(server.port, "-v")
        self.assertEqual((status, out), (0, "45692\n"), err)
        self.assertIn(f"key read from {path}", err)
        self.assertNotIn("warning", err)
        self.assertClientOnly(loaded)

    def test_execWaitsAndExitsWithStatus(self) -> None:
        server = self.server(45693)
        script = "import sys; print('ran', sys.argv[1:]); sys.exit(5)"
        status, out, err, loaded = self.run.client(
            server.port, "--password-stdin", "--exec",
            f"{sys.executable} -c \"{script}\" {{port}} {{host}}", stdin=PASSWORD + "\n",
        )
        self.assertEqual((status, out), (5, "ran ['45693', '127.0.0.1']\n"), err)
        self.assertClientOnly(loaded)
        # Handed to Windows as one command line, not split by POSIX rules.
        self.assertIn(f'command line {sys.executable} -c "{script}" 45693 127.0.0.1',
                      self.run.windows_calls())

    def test_stdioRelaysInBinary(self) -> None:
        """
        ``--stdio`` relays bytes both ways without ``select`` on standard input, with the
        standard descriptors switched to binary mode.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(30)
        received: Dict[str, Optional[bytes]] = {"data": None}

        def echo() -> None:
            # As the daemon's proxy: the door secret first (16 bytes), then the client's bytes.
            connection, _ = listener.accept()
            with connection:
                received["data"] = read_until_closed(connection)[16:]
                connection.sendall(b"echo:" + received["data"])

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        server = self.server(listener.getsockname()[1])
        password = self.password_file(os.path.join(self.run.env["USERPROFILE"], "Documents"))
        status, out, err, loaded = self.run.client(
            server.port, "--password-file", password, "--stdio", stdin="line one\r\nline two\n"
        )
        thread.join(10)
        self.assertEqual((status, out), (0, "echo:line one\r\nline two\n"), err)
        self.assertEqual(received["data"], b"line one\r\nline two\n")
        self.assertIn("setmode 0 0x8000", self.run.windows_calls())
        self.assertIn("setmode 1 0x8000", self.run.windows_calls())
        self.assertClientOnly(loaded)


class PosixClientImportsTests(SynchronousTestCase):
    """
    On POSIX, as it is (nothing blocked), importing and running ``sig2knockc`` loads no Twisted,
    zope, pcapy or daemon module either, whichever way the grant is used.
    """

    def test_clientOnly(self) -> None:
        run = PlatformRun(os.path.abspath(self.mktemp()), windows=False, plain=True)
        server = LoopbackServer(grant_port=45694)
        self.addCleanup(server.stop)
        script = "import sys; sys.exit(0)"
        for extra in ([], ["--exec", f"{sys.executable} -c '{script}'"], ["--save-key"]):
            with self.subTest(extra=extra):
                status, out, err, loaded = run.client(
                    server.port, "--password-stdin", *extra, stdin=PASSWORD + "\n"
                )
                self.assertEqual(status, 0, err)
                self.assertEqual(client_only(loaded), [])
