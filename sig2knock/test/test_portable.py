"""
Tests for ``sig2knock.client.portable``: each branch, POSIX and Windows, on this machine (Windows is
simulated by patching ``portable.WINDOWS``; it cannot be run here), and the client's exchange
and ``--exec`` on top of them.
"""

import os
import signal
import stat
import sys
import types
from typing import Any, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.client import portable
from sig2knock.client.knocker import ClientError
from sig2knock.client.portable import (
    PrivateFileError,
    binary_stdio,
    command,
    config_home,
    have_terminal,
    read_private,
    write_private,
)
from sig2knock.scripts.client import run_command
from sig2knock.test.common import FakeNetwork, grant_on_confirm, knocker


SECRET = "a secret line\n"


class PrivateFilePosixTests(SynchronousTestCase):
    """
    On POSIX a secret's file must be a regular file of this user's, closed to group and others.
    """

    def setUp(self) -> None:
        self.patch(portable, "WINDOWS", False)
        self.warnings: List[str] = []
        self.path = os.path.abspath(self.mktemp())

    def write(self, mode: int) -> str:
        with open(self.path, "w", encoding="utf-8") as private:
            private.write(SECRET)
        os.chmod(self.path, mode)
        return self.path

    def test_privateFileRead(self) -> None:
        self.assertEqual(read_private(self.write(0o600), self.warnings.append), SECRET)
        self.assertEqual(self.warnings, [])

    def test_openFileRefused(self) -> None:
        for mode in (0o640, 0o604, 0o644, 0o660):
            with self.subTest(mode=oct(mode)):
                error = self.assertRaises(
                    PrivateFileError, read_private, self.write(mode), self.warnings.append
                )
                self.assertIn(f"mode {mode:04o}", str(error))
                self.assertIn(f"fix with: chmod 600 {self.path}", str(error))
                self.assertNotIn("secret line", str(error))

    def test_otherOwnerRefused(self) -> None:
        status = os.stat(self.write(0o600))
        other = os.stat_result(status[:4] + (os.geteuid() + 1,) + status[5:])
        problem = portable._posix_problem(self.path, other)
        self.assertIsNotNone(problem)
        self.assertIn("belongs to another user", problem)

    def test_notARegularFile(self) -> None:
        os.mkfifo(self.path, 0o600)
        # Opened without blocking for a writer, then refused.
        error = self.assertRaises(PrivateFileError, read_private, self.path, self.warnings.append)
        self.assertIn("not a regular file", str(error))

    def test_missingFilePassesThrough(self) -> None:
        self.assertRaises(FileNotFoundError, read_private, self.path, self.warnings.append)

    def test_writeIsPrivateAndAtomic(self) -> None:
        path = os.path.join(self.path, "sig2knock", "alice.key")
        write_private(path, "first\n")
        write_private(path, "second\n")
        with open(path, encoding="utf-8") as written:
            self.assertEqual(written.read(), "second\n")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["alice.key"], "no temporary file")


class PrivateFileWindowsTests(SynchronousTestCase):
    """
    On Windows mode bits mean nothing (files report 0666): a secret's file is accepted, with a
    warning unless it lies inside the user's profile folder, which only the user can read.
    """

    def setUp(self) -> None:
        self.patch(portable, "WINDOWS", True)
        self.profile = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.profile, "AppData"))
        self.patch(os, "environ", {"USERPROFILE": self.profile})
        self.warnings: List[str] = []

    def write(self, path: str) -> str:
        with open(path, "w", encoding="utf-8") as private:
            private.write(SECRET)
        os.chmod(path, 0o666)  # what Windows reports for any file
        return path

    def test_insideProfileAccepted(self) -> None:
        path = self.write(os.path.join(self.profile, "AppData", "password.txt"))
        self.assertEqual(read_private(path, self.warnings.append), SECRET)
        self.assertEqual(self.warnings, [])

    def test_profileComparedWithoutCase(self) -> None:
        path = self.write(os.path.join(self.profile, "AppData", "password.txt"))
        self.patch(os, "environ", {"USERPROFILE": self.profile.upper()})
        read_private(path, self.warnings.append)
        self.assertEqual(self.warnings, [])

    def test_outsideProfileWarned(self) -> None:
        path = self.write(os.path.abspath(self.mktemp()))
        self.assertEqual(read_private(path, self.warnings.append), SECRET)
        [warning] = self.warnings
        self.assertIn(f"cannot check who may read {path} on Windows", warning)
        self.assertIn(self.profile, warning)

    def test_noProfileWarned(self) -> None:
        self.patch(os, "environ", {})
        path = self.write(os.path.join(self.profile, "password.txt"))
        read_private(path, self.warnings.append)
        self.assertEqual(len(self.warnings), 1)


class ConfigHomeTests(SynchronousTestCase):
    """
    The client's files: XDG_CONFIG_HOME, else %APPDATA% on Windows, else ~/.config.
    """

    def test_xdgFirst(self) -> None:
        for windows in (False, True):
            self.patch(portable, "WINDOWS", windows)
            self.patch(os, "environ", {"XDG_CONFIG_HOME": "/x", "APPDATA": "/a", "HOME": "/h"})
            self.assertEqual(config_home(), os.path.join("/x", "sig2knock"))

    def test_appDataOnWindows(self) -> None:
        self.patch(portable, "WINDOWS", True)
        self.patch(os, "environ", {"APPDATA": "/a", "HOME": "/h"})
        self.assertEqual(config_home(), os.path.join("/a", "sig2knock"))

    def test_homeElsewhere(self) -> None:
        self.patch(portable, "WINDOWS", False)
        self.patch(os, "environ", {"APPDATA": "/a", "HOME": "/h"})
        self.assertEqual(config_home(), os.path.join("/h", ".config", "sig2knock"))


class TerminalTests(SynchronousTestCase):
    """
    A console to prompt on: ``/dev/tty`` on POSIX, ``CONIN$`` on Windows.
    """

    def opened(self, windows: bool, fails: bool) -> Tuple[bool, List[str]]:
        names: List[str] = []

        def fake_open(name: str, *args: Any, **kwargs: Any) -> Any:
            names.append(name)
            if fails:
                raise OSError("no console")
            return open(os.devnull, "rb")

        self.patch(portable, "WINDOWS", windows)
        # A module global named open shadows the builtin for portable's code only.
        portable.open = fake_open  # type: ignore[attr-defined]
        try:
            return have_terminal(), names
        finally:
            del portable.open  # type: ignore[attr-defined]

    def test_branches(self) -> None:
        self.assertEqual(self.opened(False, False), (True, ["/dev/tty"]))
        self.assertEqual(self.opened(True, False), (True, ["CONIN$"]))
        self.assertEqual(self.opened(True, True), (False, ["CONIN$"]))


class FakeMsvcrt(types.ModuleType):
    """
    Stands for Windows' ``msvcrt``: records ``setmode`` calls.
    """

    def __init__(self) -> None:
        super().__init__("msvcrt")
        self.calls: List[Tuple[int, int]] = []

    def setmode(self, descriptor: int, mode: int) -> int:
        self.calls.append((descriptor, mode))
        return mode


class BinaryStdioTests(SynchronousTestCase):
    """
    Windows' C runtime translates newlines on standard descriptors unless told not to.
    """

    def test_windowsSetsBinaryMode(self) -> None:
        msvcrt = FakeMsvcrt()
        self.patch(sys, "modules", {**sys.modules, "msvcrt": msvcrt})
        self.patch(portable, "WINDOWS", True)
        binary_stdio(0, 1)
        self.assertEqual(msvcrt.calls, [(0, 0x8000), (1, 0x8000)])

    def test_posixNothing(self) -> None:
        self.patch(portable, "WINDOWS", False)
        self.patch(sys, "modules", {**sys.modules, "msvcrt": None})  # importing would fail
        binary_stdio(0, 1)


class UdpResetTests(SynchronousTestCase):
    """
    Windows reports an ICMP port unreachable (a closed port, a server that is down) as
    WSAECONNRESET on the next ``recvfrom`` (the seed's "recv() failed"): the exchange reads on.
    """

    def test_resetBeforeGrantLosesNothing(self) -> None:
        """
        WSAECONNRESETs (ICMP errors about earlier datagrams) just before P3: P3 is still read,
        in the same round.
        """
        network = FakeNetwork(grant_on_confirm(1, port=40009))
        for delay in (0.0002, 0.0004, 0.0006):
            network.deliver(delay, ConnectionResetError(10054, "WSAECONNRESET"))
        result = knocker(network).run()
        self.assertEqual((result.port, result.rounds), (40009, 1))


class FakeChild:
    """
    Stands for a ``Popen``: ``wait`` first sends this process each of ``signals`` (as ``kill``
    or a terminal would), then gives ``status``; ``send_signal`` records what was passed on.
    """

    def __init__(self, status: int, signals: Tuple[int, ...] = ()) -> None:
        self.status = status
        self.signals = signals
        self.passed_on: List[int] = []

    def wait(self) -> int:
        for signum in self.signals:
            os.kill(os.getpid(), signum)
        return self.status

    def send_signal(self, signum: int) -> None:
        self.passed_on.append(signum)


class RunCommandTests(SynchronousTestCase):
    """
    ``--exec`` waits for its command and exits with its status, the same way everywhere, and
    does not leave it running behind when the client is told to stop.
    """

    def test_status(self) -> None:
        for status, expected in ((0, 0), (3, 3), (-signal.SIGTERM, 128 + signal.SIGTERM)):
            with self.subTest(status=status):
                self.assertEqual(run_command(["x"], lambda words: FakeChild(status)), expected)

    def test_signalsPassedOn(self) -> None:
        """
        SIGTERM and SIGHUP sent to the client go to the command (which decides when to end);
        Ctrl-C's SIGINT, which the terminal sends the command itself, ends neither; the
        client's own handlers are back afterwards.
        """
        before = signal.getsignal(signal.SIGTERM)
        child = FakeChild(0, (signal.SIGTERM, signal.SIGHUP, signal.SIGINT))
        self.assertEqual(run_command(["ssh"], lambda words: child), 0)
        self.assertEqual(child.passed_on, [signal.SIGTERM, signal.SIGHUP])
        self.assertIs(signal.getsignal(signal.SIGTERM), before)

    def test_realChild(self) -> None:
        self.assertEqual(run_command([sys.executable, "-c", "raise SystemExit(7)"]), 7)
        killed = run_command([sys.executable, "-c", "import os; os.kill(os.getpid(), 15)"])
        self.assertEqual(killed, 128 + 15)

    def test_missingProgram(self) -> None:
        error = self.assertRaises(ClientError, run_command, ["/nonexistent/ssh", "-p", "1"])
        self.assertIn("cannot run /nonexistent/ssh", str(error))


class CommandTests(SynchronousTestCase):
    """
    ``--exec``'s COMMAND: split like a shell on POSIX, left to Windows' own rules there.
    """

    def test_posixWords(self) -> None:
        self.patch(portable, "WINDOWS", False)
        self.assertEqual(
            command("ssh -p {port} 'me@{host}' -o 'A B'", 4242, "example.org"),
            ["ssh", "-p", "4242", "me@example.org", "-o", "A B"],
        )

    def test_windowsKeepsBackslashes(self) -> None:
        self.patch(portable, "WINDOWS", True)
        template = r'"C:\Program Files\OpenSSH\ssh.exe" -p {port} me@{host}'
        self.assertEqual(
            command(template, 4242, "example.org"),
            r'"C:\Program Files\OpenSSH\ssh.exe" -p 4242 me@example.org',
        )
        self.assertRaises(KeyError, command, "ssh {user}@{host}", 1, "h")
        self.assertRaises(ValueError, command, "ssh -p {port", 1, "h")
