"""
Tests for sig2knock.daemon.status_query and ``sig2knockd --status [--json]``: asking a daemon's
socket (a real AF_UNIX socket answered from a thread, by the daemon's own protocol where it
matters), the table for people, and the command's exit statuses and messages.
"""

import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional

from twisted.scripts import twistd
from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import status_query
from sig2knock.daemon.status import StatusFactory, socket_path
from sig2knock.daemon.status_query import (
    COLUMNS,
    StatusError,
    ask,
    format_table,
    status_command,
)
from sig2knock.scripts.daemon import main
from sig2knock.test.common import write_config


def entry(**values: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = {
        "user": "alice", "source": "198.18.0.2", "service": "", "state": "pending",
        "port": None, "time_left": 7.0, "used": False,
    }
    base.update(values)
    return base


def view(*entries: Dict[str, Any], forward_mode: str = "proxy") -> Dict[str, Any]:
    """
    A live view as a daemon (pid 4242, its configuration at ``/etc/s2k.conf``) answers it.
    """
    return {
        "version": 1, "pid": 4242, "config": "/etc/s2k.conf", "forward_mode": forward_mode,
        "time": 1700000000.5, "sessions": list(entries),
    }


DOCUMENT = view(
    entry(),
    entry(user="bob", source="2001:db8::2", service="git", state="granted", port=40001,
          time_left=18.0),
    entry(user="carol", state="used", port=40002, time_left=25.0, used=True),
)


class SocketTransport:
    """
    A transport over a real accepted socket, for the daemon's ``StatusProtocol``: its handle is
    the socket (the credentials are the system's), what it writes is sent at once.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def loseConnection(self) -> None:
        self.sock.close()


class Daemon:
    """
    A listening AF_UNIX socket at ``STATE_DIR/status.sock`` whose first connection is given to
    ``answer`` (with the accepted socket) on a thread, then closed.
    """

    def __init__(self, case: SynchronousTestCase, state_dir: str,
                 answer: Callable[[socket.socket], None]) -> None:
        self.answer = answer
        self.error: Optional[BaseException] = None
        self.done = threading.Event()  # set by the test: a held answer may end
        self.asked = threading.Event()  # a connection came
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(socket_path(state_dir))
        self.listener.listen(1)
        self.listener.settimeout(10)  # a test that never connects does not hang the thread
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        case.addCleanup(self.stop)

    def serve(self) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError as error:
            self.error = error
            return
        self.asked.set()
        try:
            self.answer(connection)
        except OSError:
            pass  # the client went away first (an answer too long)
        finally:
            connection.close()

    def stop(self) -> None:
        self.done.set()
        if self.thread.is_alive() and not self.asked.is_set():
            # Nobody asked: wake the thread's accept, so that it ends now.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as poke:
                poke.connect(self.listener.getsockname())
                self.thread.join(10)
        self.thread.join(10)
        self.listener.close()


def answer_with(data: bytes) -> Callable[[socket.socket], None]:
    return lambda connection: connection.sendall(data)


def the_daemon(document: Dict[str, Any], peer: Any = None) -> Callable[[socket.socket], None]:
    """
    The daemon's own answer (``StatusProtocol``) with ``document``; the peer's uid asked of the
    system unless ``peer`` says otherwise.
    """
    kwargs = {} if peer is None else {"peer_uid": peer}
    factory = StatusFactory(lambda: document, **kwargs)

    def answer(connection: socket.socket) -> None:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(SocketTransport(connection))

    return answer


class StateDirMixin:
    def setUp(self) -> None:
        # Short: AF_UNIX paths are limited to 107 bytes.
        self.directory = tempfile.mkdtemp(prefix="s2k")
        self.addCleanup(shutil.rmtree, self.directory, True)


class AskTests(StateDirMixin, SynchronousTestCase):
    """
    ``ask`` returns the daemon's document, or raises ``StatusError`` with one line saying why
    there is none.
    """

    def assertStatusError(self, *fragments: str, timeout: float = 5.0) -> str:
        error = self.assertRaises(StatusError, ask, self.directory, timeout)
        message = str(error)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_theDaemonsAnswer(self) -> None:
        """
        The daemon's own protocol, checking this process's real credentials, answers with the
        document, which ``ask`` returns as it was.
        """
        Daemon(self, self.directory, the_daemon(DOCUMENT))
        self.assertEqual(ask(self.directory), DOCUMENT)

    def test_nothingAtThePath(self) -> None:
        message = self.assertStatusError(socket_path(self.directory))
        self.assertTrue(message.startswith("no daemon is running"), message)

    def test_socketOfADeadDaemon(self) -> None:
        """
        A socket file nobody listens on (a daemon that died) is no daemon either.
        """
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(socket_path(self.directory))
        stale.close()
        message = self.assertStatusError(socket_path(self.directory))
        self.assertTrue(message.startswith("no daemon is running"), message)

    def test_closedWithoutAnswer(self) -> None:
        """
        A daemon that closes without a word refused the asker: the message says who may ask.
        """
        Daemon(self, self.directory, answer_with(b""))
        self.assertStatusError("did not answer", "only root and the daemon's user may ask")

    def test_refusedByTheDaemon(self) -> None:
        """
        The daemon's protocol, for a peer that is neither root nor its user, answers nothing:
        the asker learns who may ask.
        """
        Daemon(self, self.directory, the_daemon(DOCUMENT, peer=lambda transport: 54321))
        self.assertStatusError("only root and the daemon's user may ask")

    def test_otherVersion(self) -> None:
        other = dict(DOCUMENT, version=2)
        Daemon(self, self.directory, answer_with(json.dumps(other).encode() + b"\n"))
        self.assertStatusError("another version of the live view")

    def test_notADocument(self) -> None:
        """
        JSON that is not an object has no version either.
        """
        Daemon(self, self.directory, answer_with(b"[1, 2]\n"))
        self.assertStatusError("another version of the live view")

    def test_notJSON(self) -> None:
        Daemon(self, self.directory, answer_with(b"HTTP/1.0 200 OK\r\n\r\n"))
        self.assertStatusError("is not a live view")

    def test_notUTF8(self) -> None:
        Daemon(self, self.directory, answer_with(b"\xff\xfe{\n"))
        self.assertStatusError("is not a live view")

    def test_answerInPieces(self) -> None:
        """
        An answer that comes in several writes is read to its end.
        """
        data = json.dumps(DOCUMENT).encode()

        def answer(connection: socket.socket) -> None:
            for start in range(0, len(data), 7):
                connection.sendall(data[start:start + 7])

        Daemon(self, self.directory, answer)
        self.assertEqual(ask(self.directory), DOCUMENT)

    def test_tooLong(self) -> None:
        self.patch(status_query, "MAX_ANSWER", 64)
        Daemon(self, self.directory, answer_with(b" " * 200))
        self.assertStatusError("too long")

    def test_noAnswerInTime(self) -> None:
        """
        A daemon that accepts and says nothing is given up on after the timeout.
        """
        daemon = Daemon(self, self.directory, lambda connection: daemon.done.wait(10))
        self.assertStatusError("did not answer in 0.2s", timeout=0.2)


class FormatTableTests(SynchronousTestCase):
    """
    The table for people: a heading, a line per session, a summary line.
    """

    def test_table(self) -> None:
        self.assertEqual(
            format_table(DOCUMENT),
            "USER   SOURCE       SERVICE  STATE    PORT   LEFT  USED\n"
            "alice  198.18.0.2   default  pending  -      7s    -\n"
            "bob    2001:db8::2  git      granted  40001  18s   no\n"
            "carol  198.18.0.2   default  used     40002  25s   yes\n"
            "3 session(s): 1 granted, 1 pending, 1 used; daemon pid 4242, /etc/s2k.conf,"
            " FORWARD_MODE proxy\n",
        )

    def test_heading(self) -> None:
        self.assertEqual(format_table(DOCUMENT).splitlines()[0].split(), list(COLUMNS))
        self.assertEqual(COLUMNS, ("USER", "SOURCE", "SERVICE", "STATE", "PORT", "LEFT", "USED"))

    def test_columnsAligned(self) -> None:
        """
        Every cell starts where its heading does, whatever the widths of the others.
        """
        document = view(entry(user="a-rather-long-name", source="2001:db8:ffff::1234"),
                        entry(user="b", state="granted", port=5, time_left=None))
        lines = format_table(document).splitlines()
        heading = lines[0]
        for line, cells in zip(lines[1:3], (
            ["a-rather-long-name", "2001:db8:ffff::1234", "default", "pending", "-", "7s", "-"],
            ["b", "198.18.0.2", "default", "granted", "5", "-", "no"],
        )):
            for column, cell in zip(COLUMNS, cells):
                start = heading.index(column)
                self.assertEqual(line[start:start + len(cell)], cell, (line, column))

    def test_natUnknownUse(self) -> None:
        """
        A grant's use nobody could tell (nat mode, the firewall could not say) is ``?``, with a
        footnote.
        """
        document = view(entry(state="granted", port=40001, time_left=29.6, used=None),
                        forward_mode="nat")
        lines = format_table(document).splitlines()
        self.assertEqual(lines[1].split(),
                         ["alice", "198.18.0.2", "default", "granted", "40001", "30s", "?"])
        # A footnote says why.
        self.assertTrue(lines[-1].startswith("USED ?: "), lines[-1])
        self.assertIn("kernel", lines[-1])
        self.assertEqual(
            lines[-2],
            "1 session(s): 1 granted; daemon pid 4242, /etc/s2k.conf, FORWARD_MODE nat",
        )

    def test_noFootnoteWhenUseKnown(self) -> None:
        self.assertNotIn("USED ?", format_table(DOCUMENT))
        nat = view(entry(state="granted", port=40001, used=True), forward_mode="nat")
        self.assertNotIn("USED ?", format_table(nat))
        self.assertEqual(format_table(nat).splitlines()[1].split()[-1], "yes")

    def test_empty(self) -> None:
        """
        No session: no heading, only the summary.
        """
        self.assertEqual(
            format_table(view()),
            "0 session(s); daemon pid 4242, /etc/s2k.conf, FORWARD_MODE proxy\n",
        )

    def test_counts(self) -> None:
        document = view(entry(), entry(user="bob"), entry(state="granting", time_left=None))
        self.assertEqual(format_table(document).splitlines()[-1].split(";")[0],
                         "3 session(s): 1 granting, 2 pending")


class CommandMixin(StateDirMixin):
    """
    A configuration written by ``write_config`` (its ``STATE_DIR`` beside it); standard output
    and error captured.
    """

    def setUp(self) -> None:
        super().setUp()
        self.config = write_config(self.directory)
        self.state_dir = os.path.join(self.directory, "state")
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        self.written: List[str] = []

    def assertNoDaemon(self) -> None:
        self.assertEqual(
            self.stderr.getvalue(),
            f"sig2knockd: no daemon is running: nothing answers on"
            f" {socket_path(self.state_dir)} (STATE_DIR of {self.config})\n",
        )


class StatusCommandTests(CommandMixin, SynchronousTestCase):
    """
    ``status_command`` asks the daemon of a configuration and writes its view, or says in one
    line on standard error why there is none and returns 1.
    """

    def test_noDaemon(self) -> None:
        self.assertEqual(status_command(self.config, False, self.written.append), 1)
        self.assertEqual(self.written, [])
        self.assertNoDaemon()

    def test_noDaemonJSON(self) -> None:
        """
        With ``--json`` too, no daemon is an error, never an empty document.
        """
        self.assertEqual(status_command(self.config, True, self.written.append), 1)
        self.assertEqual(self.written, [])
        self.assertNoDaemon()

    def test_table(self) -> None:
        Daemon(self, self.state_dir, the_daemon(DOCUMENT))
        self.assertEqual(status_command(self.config, False, self.written.append), 0)
        self.assertEqual("".join(self.written), format_table(DOCUMENT))
        self.assertEqual(self.stderr.getvalue(), "")

    def test_json(self) -> None:
        Daemon(self, self.state_dir, the_daemon(DOCUMENT))
        self.assertEqual(status_command(self.config, True, self.written.append), 0)
        output = "".join(self.written)
        self.assertTrue(output.endswith("}\n"), output)
        self.assertEqual(json.loads(output), DOCUMENT)

    def test_badConfig(self) -> None:
        missing = os.path.join(self.directory, "missing.conf")
        self.assertEqual(status_command(missing, False, self.written.append), 1)
        self.assertEqual(self.written, [])
        self.assertEqual(self.stderr.getvalue(), f"sig2knockd: {missing}: no such file\n")


class MainStatusTests(CommandMixin, SynchronousTestCase):
    """
    ``sig2knockd --status [--json]`` as ``main`` dispatches it.
    """

    def setUp(self) -> None:
        super().setUp()
        # Should main fall through to running the daemon, the test fails instead of hanging.
        self.patch(sys, "argv", list(sys.argv))
        self.patch(twistd, "run", self.daemonRun)

    def daemonRun(self) -> None:
        raise AssertionError(f"main ran the daemon: {sys.argv}")

    def test_jsonWithoutStatus(self) -> None:
        """
        ``--json`` alone is a usage error (exit status 2), before anything is asked.
        """
        daemon = Daemon(self, self.state_dir, the_daemon(DOCUMENT))
        error = self.assertRaises(SystemExit, main, ["--json", "-c", self.config])
        self.assertEqual(error.code, 2)
        self.assertIn("--json goes with --status", self.stderr.getvalue())
        self.assertEqual(self.stdout.getvalue(), "")
        self.assertFalse(daemon.asked.is_set())

    def test_noDaemon(self) -> None:
        self.assertEqual(main(["--status", "-c", self.config]), 1)
        self.assertEqual(self.stdout.getvalue(), "")
        self.assertNoDaemon()

    def test_table(self) -> None:
        Daemon(self, self.state_dir, the_daemon(DOCUMENT))
        self.assertEqual(main(["--status", "-c", self.config]), 0)
        self.assertEqual(self.stdout.getvalue(), format_table(DOCUMENT))

    def test_json(self) -> None:
        Daemon(self, self.state_dir, the_daemon(DOCUMENT))
        self.assertEqual(main(["--status", "--json", "-c", self.config]), 0)
        self.assertEqual(json.loads(self.stdout.getvalue()), DOCUMENT)
