"""
The ``sig2knockc`` command as a user runs it, as a subprocess against a small server on
127.0.0.1: options and usage errors, password sources, the three ways to use a grant (print the
port, ``--exec``, ``--stdio``), and a lean import. Nothing leaves the loopback interface.
"""

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Any, Tuple

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol import addresses, wire
from sig2knock.scripts.client import command_line
from sig2knock.test.common import (
    CHEAP_KDF,
    PASSWORD,
    SERVER_KEY_TEXT,
    read_until_closed,
    run_module,
)
from sig2knock.test.loopback_server import LoopbackServer


CLIENT = "sig2knock.scripts.client"


class CommandLineTests(SynchronousTestCase):
    """
    ``sig2knockc`` as a subprocess: failure without a server, and the three ways to use a grant.
    """

    def password_file(self) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as password_file:
            password_file.write(PASSWORD + "\n")
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        return path

    def client(
        self, port: int, *arguments: str, stdin: str = PASSWORD + "\n"
    ) -> subprocess.CompletedProcess:
        return run_module(
            CLIENT,
            ["127.0.0.1", str(port), "--user", "alice", "--kdf", CHEAP_KDF.format(),
             "--server-key", SERVER_KEY_TEXT, *arguments],
            stdin=stdin,
        )

    def test_emptyPassword(self) -> None:
        result = self.client(1001, "--password-stdin", stdin="\n")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, "sig2knockc: the password is empty\n")

    def test_help(self) -> None:
        result = run_module(CLIENT, ["--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--knocks", result.stdout)

    def test_noServer(self) -> None:
        """
        No daemon on a free port (the host answers ICMP port unreachable): status 1 within
        about a second, not at the 10 s timeout, nothing on stdout, one line on stderr that
        says so.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        started = time.monotonic()
        result = self.client(port, "--password-stdin")
        elapsed = time.monotonic() - started
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertIn(f"nothing listens at 127.0.0.1 port {port}", result.stderr)
        self.assertIn("ICMP port unreachable", result.stderr)
        self.assertNotIn(PASSWORD, result.stderr)
        self.assertLess(elapsed, 9, "reported before the 10 s timeout")

    def test_silentServerTimesOutNamingTheCauses(self) -> None:
        """
        A server that receives but never answers (a wrong key): the timeout's message names
        the likely causes, the client's own options among them.
        """
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        result = self.client(port, "--password-stdin", "--timeout", "0.5")
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertIn(f"no answer from 127.0.0.1 port {port} within 0.5 s", result.stderr)
        for cause in ("password", "--server-key", "--kdf", "--knock-proto", "--knocks",
                      "KNOCK_COUNT", "MAX_CLOCK_SKEW", "--time-offset"):
            self.assertIn(cause, result.stderr)

    def test_timeOffset(self) -> None:
        """
        ``--time-offset`` moves the knock's timestamps: 30 s still passes the server's 60 s
        window, and the P1 carries the moved time; 120 s is out of it (the server is silent).
        """
        server = LoopbackServer(grant_port=45698)
        self.addCleanup(server.stop)
        started = time.time()
        ahead = self.client(server.port, "--password-stdin", "--time-offset", "30")
        self.assertEqual((ahead.returncode, ahead.stdout), (0, "45698\n"), ahead.stderr)
        stamped = server.requests[0].timestamp_ms / 1000
        self.assertTrue(started + 29 < stamped < time.time() + 31, stamped - started)
        too_far = self.client(server.port, "--password-stdin", "--time-offset", "-120",
                              "--timeout", "0.5")
        self.assertEqual(too_far.returncode, 1)
        self.assertIn("stale", " ".join(server.errors))

    def test_interrupted(self) -> None:
        """
        Ctrl-C while waiting for P3: a message, status 1, no traceback.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))  # a silent server
        process = subprocess.Popen(
            [sys.executable, "-m", CLIENT, "127.0.0.1", str(sock.getsockname()[1]), "-v"]
            + ["--user", "alice", "--kdf", CHEAP_KDF.format(), "--password-stdin"]
            + ["--server-key", SERVER_KEY_TEXT]
            + ["--knock-proto", "udp", "--timeout", "60"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        assert process.stdin is not None and process.stderr is not None
        process.stdin.write(PASSWORD + "\n")
        process.stdin.close()
        lines = [process.stderr.readline() for _ in range(4)]
        self.assertIn("P2 sent", lines[-1])
        process.send_signal(signal.SIGINT)
        process.wait(30)
        assert process.stdout is not None
        with process.stdout, process.stderr:
            stdout, stderr = process.stdout.read(), process.stderr.read()
        self.assertEqual(process.returncode, 1)
        self.assertEqual(stdout, "")
        self.assertIn("sig2knockc: interrupted", stderr)
        self.assertNotIn("Traceback", stderr)

    def test_printsPort(self) -> None:
        server = LoopbackServer(grant_port=45680)
        self.addCleanup(server.stop)
        result = self.client(server.port, "--password-stdin", "-v")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "45680\n")
        for fragment in ("key derived in", "P1 sent", "knocked tcp", "P2 sent", "P3 received"):
            self.assertIn(fragment, result.stderr)
        self.assertNotIn(PASSWORD, result.stderr)

    def test_quietWithoutVerbose(self) -> None:
        server = LoopbackServer(grant_port=45681)
        self.addCleanup(server.stop)
        result = self.client(
            server.port, "--password-stdin", "--knock-proto", "udp", "--knocks", "2"
        )
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "45681\n", ""))
        self.assertEqual([len(request.ports) for request in server.requests][:1], [2])
        self.assertEqual(server.requests[0].protocol, addresses.PROTO_UDP)

    def test_exec(self) -> None:
        server = LoopbackServer(grant_port=45682)
        self.addCleanup(server.stop)
        script = "import sys; print(sys.argv[1:]); sys.exit(3)"
        command = f"{sys.executable} -c '{script}' {{port}} {{host}}"
        result = self.client(server.port, "--password-stdin", "--exec", command)
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertEqual(result.stdout, "['45682', '127.0.0.1']\n")

    def stdio_through(self, serve: Any) -> Tuple[subprocess.CompletedProcess, LoopbackServer]:
        """
        ``sig2knockc --stdio`` with ``hello`` on its input, its grant's port a listener on
        127.0.0.1 whose one connection ``serve(connection)`` answers as the daemon's proxy
        would (in a thread).
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(20)

        def accept() -> None:
            connection, _ = listener.accept()
            with connection:
                serve(connection)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        server = LoopbackServer(grant_port=listener.getsockname()[1])
        self.addCleanup(server.stop)
        result = self.client(
            server.port, "--password-file", self.password_file(), "--stdio", stdin="hello"
        )
        thread.join(10)
        return result, server

    def test_stdio(self) -> None:
        received = []

        def echo(connection: socket.socket) -> None:
            # As the daemon's proxy: the door secret first, then the client's bytes.
            data = read_until_closed(connection)
            received.append(data)
            connection.sendall(b"echo:" + data[wire.DOOR_SIZE :])

        result, server = self.stdio_through(echo)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "echo:hello")
        self.assertTrue(server.requests[0].door, "--stdio offers the door secret in P1")
        self.assertEqual(received, [server.doors[0] + b"hello"])

    def test_stdioSaysWhenTheServiceIsDown(self) -> None:
        """
        The port was opened, but the connection ends before anything came back (the daemon
        could not reach the hidden service and reset it): exit 1 with a message, not 0.
        """

        def reset(connection: socket.socket) -> None:
            connection.recv(wire.DOOR_SIZE)  # as the daemon does: the door, then the service
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            # closed by the caller: a reset, as the daemon's proxy sends

        result, _ = self.stdio_through(reset)
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertIn("ended before anything came back: the hidden service is down",
                      result.stderr)

    def test_usageErrors(self) -> None:
        for arguments in (
            ["--knocks", "0"],
            ["--knocks", "65"],
            ["--exec", "ssh -p {port} {user}@{host}"],
            ["--exec", "ssh -p {port"],
            ["--exec", "ssh 'unbalanced"],
            ["--exec", ""],
            ["--exec", "ssh {0}"],
            ["--time-offset", "nan"],
            ["--time-offset", "1e9"],
        ):
            with self.subTest(arguments=arguments):
                result = run_module(CLIENT, ["host", "1001", *arguments])
                self.assertEqual(result.returncode, 2, result.stderr)

    def test_commandLine(self) -> None:
        self.assertEqual(
            command_line("ssh -p {port} 'me@{host}' -o 'A B'", 4242, "example.org"),
            ["ssh", "-p", "4242", "me@example.org", "-o", "A B"],
        )


class ClientCommandTests(SynchronousTestCase):
    """
    ``sig2knockc``'s command line: options, usage errors, password sources, and a lean import.
    """

    def test_help(self) -> None:
        result = run_module(CLIENT, ["--help"])
        self.assertEqual(result.returncode, 0)
        for option in (
            "--user",
            "--password-stdin",
            "--password-file",
            "--knock-proto",
            "--timeout",
            "--exec",
            "--stdio",
            "--verbose",
        ):
            self.assertIn(option, result.stdout)

    def test_usageErrorsExit2(self) -> None:
        for arguments in (
            [],
            ["host"],
            ["host", "1001"],  # no --server-key
            ["host", "notaport"],
            ["host", "70000"],
            ["host", "1001", "--timeout", "0"],
            ["host", "1001", "--knock-proto", "icmp"],
            ["host", "1001", "--user", "bad name"],
            ["host", "1001", "--exec", "x", "--stdio"],
            ["host", "1001", "--server-key", "AAAA"],
            ["host", "1001", "--server-key", "A" * 43 + "="],  # 32 zero bytes: unusable
            ["--keygen", "host"],
        ):
            with self.subTest(arguments=arguments):
                self.assertEqual(run_module(CLIENT, arguments).returncode, 2)

    def test_passwordFileOpenToOthersRefused(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as password_file:
            password_file.write(PASSWORD + "\n")
        os.chmod(path, 0o644)
        result = run_module(
            CLIENT,
            ["host", "1001", "--user", "alice", "--password-file", path,
             "--server-key", SERVER_KEY_TEXT],
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("chmod 600", result.stderr)
        self.assertNotIn(PASSWORD, result.stderr + result.stdout)

    def test_doesNotImportTwisted(self) -> None:
        """
        The client stays lean: importing it loads neither Twisted nor zope.interface.
        """
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, sig2knock.scripts.client;"
                " print(sorted(m for m in sys.modules if m.split('.')[0] in"
                " ('twisted', 'zope', 'pcapy')))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")
