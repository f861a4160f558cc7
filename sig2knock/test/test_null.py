"""
Tests for sig2knock.firewall.null: FIREWALL = none changes nothing and always succeeds.
"""


from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sig2knock.firewall import IFirewall
from sig2knock.firewall.null import NoFirewall


class NoFirewallTests(SynchronousTestCase):
    """
    ``FIREWALL = none`` changes nothing and always succeeds.
    """

    def test_interface(self) -> None:
        backend = NoFirewall()
        self.assertTrue(verifyObject(IFirewall, backend))
        for call in (backend.start, backend.stop, backend.flush):
            self.successResultOf(call())
        self.successResultOf(backend.grant(None, 40000, 1_800_000_000.0))
        self.successResultOf(backend.revoke(None, 40000))
