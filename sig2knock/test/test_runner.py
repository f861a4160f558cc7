"""
Tests for sig2knock.firewall.runner: firewall tools run through the reactor, and every way they
fail becomes one FirewallError.
"""

import sys

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from sig2knock.firewall import FirewallError
from sig2knock.firewall.runner import find_tool, run_tool


class RunToolTests(TestCase):
    """
    Firewall tools run through the reactor; every way they fail becomes one ``FirewallError``.
    """

    def test_outputAndStdin(self) -> None:
        cat = find_tool("cat")
        done = run_tool(reactor, [cat], stdin=b"table inet sig2knock {}\n")
        done.addCallback(self.assertEqual, b"table inet sig2knock {}\n")
        return done

    def test_failureCarriesStderr(self) -> None:
        script = "import sys; sys.stderr.write('Error: No such file or directory\\n'); sys.exit(1)"
        done = run_tool(reactor, [sys.executable, "-c", script])
        failed = self.assertFailure(done, FirewallError)
        failed.addCallback(
            lambda error: self.assertIn("exit status 1: Error: No such file", str(error))
        )
        return failed

    def test_timeLimit(self) -> None:
        done = run_tool(reactor, [find_tool("sleep"), "30"], timeout=0.2)
        failed = self.assertFailure(done, FirewallError)
        failed.addCallback(lambda error: self.assertIn("time limit", str(error)))
        return failed

    def test_missingTool(self) -> None:
        self.assertIsNone(find_tool("no-such-firewall-tool"))
        self.assertRaises(FirewallError, run_tool, reactor, ["/nonexistent/nft", "-f", "-"])
