"""
The real libnftables (``sig2knock.firewall.libnftables``) driving ``NftablesFirewall``, as root:
each test makes a network namespace that only the runner's worker thread enters, so nothing
reaches the namespace the tests run in; checked with the real nft run in that namespace.
"""

import ctypes
import ipaddress
import os
import re
import subprocess
from typing import Any, List, Optional, Tuple

from twisted.internet import reactor as globalReactor
from twisted.trial.unittest import TestCase

from sig2knock.firewall import FirewallError, FirewallSettings
from sig2knock.firewall.libnftables import SONAME, LibnftablesRunner, load_library
from sig2knock.firewall.nftables import NftablesFirewall
from sig2knock.firewall.nftables_rules import render_grant, render_ruleset
from sig2knock.firewall.runner import find_tool
from tests.lab import nft_in, scratch_namespace

ARGV = ["/usr/sbin/nft", "-f", "-"]

CLONE_NEWNET = 0x40000000
PORTS = FirewallSettings(control_port=1001, port_range=(40000, 49999))
V4 = ipaddress.ip_address("198.18.0.2")


def _realSkip() -> Optional[str]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (a network namespace, and CAP_SYS_ADMIN to enter it)"
    if load_library()[0] is None:
        return f"needs libnftables ({SONAME}, Debian package libnftables1)"
    for tool in ("ip", "nft"):
        if find_tool(tool) is None:
            return f"needs {tool} (iproute2, nftables) to make and inspect the namespace"
    return None


class NamespacedRunner(LibnftablesRunner):
    """
    The real runner whose worker thread enters the network namespace ``namespace`` before it
    makes the context, so nothing it does reaches the namespace the tests run in. Only that
    thread moves (setns changes the calling thread alone); if it cannot, no context is made.
    """

    def __init__(self, library: Any, namespace: str) -> None:
        super().__init__(library)
        self.namespace = namespace

    def _open(self) -> int:
        path = f"/run/netns/{self.namespace}"
        libc = ctypes.CDLL(None, use_errno=True)
        descriptor = os.open(path, os.O_RDONLY)
        try:
            if libc.setns(descriptor, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns failed")
        finally:
            os.close(descriptor)
        if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(path).st_ino:
            raise OSError("the worker thread is not in the test's namespace")
        return super()._open()


class RealLibraryTests(TestCase):
    """
    The real libnftables driving ``NftablesFirewall`` in a network namespace created for each
    test and deleted after it, checked with the real nft run in that namespace.
    """

    skip = _realSkip()
    timeout = 30

    def setUp(self) -> None:
        self.namespace = scratch_namespace(self, "s2klib")
        library, name = load_library()
        self.runner = NamespacedRunner(library, self.namespace)
        self.addCleanup(self.runner.close)
        self.firewall = NftablesFirewall(globalReactor, PORTS, run=self.runner)

    def nft(self, *arguments: str, stdin: str = "") -> subprocess.CompletedProcess:
        """
        Run the nft tool in the test's namespace.
        """
        done = nft_in(self.namespace, *arguments, stdin=stdin)
        if done.returncode != 0:
            self.fail(f"nft {' '.join(arguments)}: {done.returncode}: {done.stderr}")
        return done

    def timeouts(self) -> List[Tuple[str, int, str]]:
        listing = self.nft("list", "set", "inet", "sig2knock", "grants4").stdout
        found = re.findall(r"([0-9.]+) \. (\d+) timeout ([0-9dhms]+)", listing)
        return [(address, int(port), time) for address, port, time in found]

    async def test_wholeLife(self) -> None:
        """
        Start, grant, grant again (nft's "File exists", then the replacement with the new
        timeout), revoke, stop and flush all work in-process, in the namespace only.
        """
        await self.firewall.start()
        self.assertIn("policy accept;", self.nft("list", "table", "inet", "sig2knock").stdout)
        await self.firewall.grant(V4, 45678, globalReactor.seconds() + 600)
        await self.firewall.grant(V4, 45678, globalReactor.seconds() + 60)
        [(address, port, timeout)] = self.timeouts()
        self.assertEqual((address, port), ("198.18.0.2", 45678))
        self.assertTrue(timeout.startswith("59s") or timeout == "1m", timeout)
        await self.firewall.revoke(V4, 45678)
        self.assertEqual(self.timeouts(), [])
        await self.firewall.grant(V4, 45679, globalReactor.seconds() + 60)
        await self.firewall.stop()
        self.assertEqual(self.timeouts(), [])
        await self.firewall.flush()
        self.assertEqual(self.nft("list", "ruleset").stdout, "")

    async def test_errorTextIsNfts(self) -> None:
        """
        The library's refusal reads like nft's own: "File exists" for an element created twice.
        """
        await self.runner(globalReactor, ARGV, stdin=render_ruleset(PORTS).encode())
        grant = render_grant(V4, 45678, 60000).encode()
        await self.runner(globalReactor, ARGV, stdin=grant)
        with self.assertRaises(FirewallError) as caught:
            await self.runner(globalReactor, ARGV, stdin=grant)
        self.assertIn("Error: Could not process rule: File exists", str(caught.exception))

    async def test_output(self) -> None:
        """
        ``list`` commands answer with nft's listing.
        """
        await self.firewall.start()
        listing = await self.runner(globalReactor, ARGV, stdin=b"list table inet sig2knock\n")
        self.assertEqual(listing.decode(), self.nft("list", "table", "inet", "sig2knock").stdout)

    async def test_changesByOthersAreSeen(self) -> None:
        """
        The long-lived context sees changes made behind its back: a table deleted by another
        process makes the grant fail (fail closed), and one put back makes it work again.
        """
        await self.firewall.start()
        await self.firewall.grant(V4, 45678, globalReactor.seconds() + 60)
        self.nft("delete", "table", "inet", "sig2knock")
        with self.assertRaises(FirewallError) as caught:
            await self.firewall.grant(V4, 45679, globalReactor.seconds() + 60)
        self.assertIn("No such file or directory", str(caught.exception))
        self.nft("-f", "-", stdin=render_ruleset(PORTS))
        await self.firewall.grant(V4, 45679, globalReactor.seconds() + 60)
        self.assertEqual([(a, p) for a, p, _ in self.timeouts()], [("198.18.0.2", 45679)])
