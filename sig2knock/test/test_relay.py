"""
Tests for ``sig2knock.client.relay``: ``--stdio``'s relay between standard input and output and
the assigned port's connection, over socket pairs and pipes.
"""

import os
import socket
import threading

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.client.knocker import GrantResult, resolve
from sig2knock.client.relay import connect, relay
from sig2knock.test.common import read_until_closed


class RelayTests(SynchronousTestCase):
    """
    ``relay`` copies both ways, half-closes at input EOF and ends when the socket closes.
    """

    def test_bothWays(self) -> None:
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        input_read, input_write = os.pipe()
        output_read, output_write = os.pipe()
        for fd in (input_read, output_read, output_write):
            self.addCleanup(os.close, fd)
        thread = threading.Thread(target=relay, args=(ours, input_read, output_write))
        thread.start()
        os.write(input_write, b"hello")
        os.close(input_write)
        self.assertEqual(read_until_closed(theirs), b"hello")
        theirs.sendall(b"world")
        theirs.close()
        thread.join(10)
        self.assertFalse(thread.is_alive())
        ours.close()
        self.assertEqual(os.read(output_read, 100), b"world")

    def test_inputErrorEndsTheRelay(self) -> None:
        """
        Standard input that cannot be read ends the relay with that error (the socket is shut
        down both ways) instead of waiting for an answer forever.
        """
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        unreadable = os.open(os.path.dirname(os.path.abspath(__file__)), os.O_RDONLY)
        self.addCleanup(os.close, unreadable)
        output_read, output_write = os.pipe()
        for fd in (output_read, output_write):
            self.addCleanup(os.close, fd)
        self.assertRaises(IsADirectoryError, relay, ours, unreadable, output_write)
        self.assertEqual(theirs.recv(100), b"", "the peer sees the end")

    def test_peerClosesFirst(self) -> None:
        """
        The service closes while standard input is still open (ssh's server ends the
        session): the relay is over, without an error.
        """
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        input_read, input_write = os.pipe()
        output_read, output_write = os.pipe()
        for fd in (input_read, input_write, output_read, output_write):
            self.addCleanup(os.close, fd)
        theirs.sendall(b"bye")
        theirs.close()
        self.assertEqual(relay(ours, input_read, output_write), 3, "bytes that came back")
        self.assertEqual(os.read(output_read, 100), b"bye")


class ConnectTests(SynchronousTestCase):
    """
    ``connect`` opens the assigned port without Nagle's delay (ssh's small writes go out at
    once), and says in one line when it cannot.
    """

    def test_noDelay(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        result = GrantResult(resolve("127.0.0.1", 1), listener.getsockname()[1], 0, b"", 1)
        sock = connect(result, 5)
        self.addCleanup(sock.close)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

    def test_doorShownFirstWhenRequired(self) -> None:
        """
        When P3 said the port requires it, the door secret is the connection's first bytes;
        otherwise nothing is sent before the user's own data.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(2)
        listener.settimeout(5)
        target, port = resolve("127.0.0.1", 1), listener.getsockname()[1]
        door = bytes(range(16))
        for required, expected in ((True, door + b"hi"), (False, b"hi")):
            result = GrantResult(target, port, 0, b"", 1, door=door, door_required=required)
            with connect(result, 5) as sock:
                sock.sendall(b"hi")
                sock.shutdown(socket.SHUT_WR)
                accepted, _ = listener.accept()
                with accepted:
                    self.assertEqual(read_until_closed(accepted), expected)
