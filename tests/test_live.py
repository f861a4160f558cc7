"""
The daemon's real capture, as root: ``open_live_handle`` on real interfaces, and ``sig2knockd``
in the foreground on loopback until SIGTERM. Opening a capture needs CAP_NET_RAW, so these are
not unit tests (``sig2knock/test/test_capture.py`` drives the reader around a fake handle).
"""

import os
import signal
import stat
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.capture import CaptureError, InterfaceNotUp, open_live_handle
from sig2knock.test.common import write_config
from tests import lab

DAEMON = "sig2knock.scripts.daemon"


class LiveHandleTests(SynchronousTestCase):
    """
    Opening a real interface gives a non-blocking handle, or a message an operator can act on.
    """

    skip = lab.why_not_runnable()

    def test_noSuchInterface(self) -> None:
        error = self.assertRaises(CaptureError, open_live_handle, "nosuchif0")
        self.assertEqual(str(error), "interface nosuchif0: no such device")
        self.assertIsInstance(error, InterfaceNotUp, "a missing interface is waited for at boot")

    def test_liveLoopback(self) -> None:
        handle = open_live_handle("lo")
        self.addCleanup(handle.close)
        self.assertEqual(handle.datalink(), 1)
        self.assertGreaterEqual(handle.getfd(), 0)
        self.assertEqual(handle.dispatch(10, lambda header, data: None), 0)  # non-blocking


class ForegroundDaemonTests(SynchronousTestCase):
    """
    ``sig2knockd`` runs in the foreground on loopback until SIGTERM.
    """

    skip = lab.why_not_runnable()

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def test_runsUntilTerminated(self) -> None:
        """
        The daemon starts in the foreground, logs its configuration, keeps its replay cache
        private, and shuts down cleanly on SIGTERM (twistd then ends by that signal, which
        systemd counts as a clean exit).
        """
        path = write_config(self.directory)
        process = subprocess.Popen(
            [sys.executable, "-m", DAEMON, "-c", path],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "sig2knock ready" in line:
                break
        self.assertIn("control port 1001/udp", "".join(lines))
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
        self.assertEqual(process.returncode, -signal.SIGTERM, "".join(lines) + rest)
        self.assertIn("Server Shut Down.", rest)
        cache = os.path.join(self.directory, "state", "replay.cache")
        self.assertEqual(stat.S_IMODE(os.stat(cache).st_mode), 0o600)
        self.assertNotIn("Traceback", rest)
