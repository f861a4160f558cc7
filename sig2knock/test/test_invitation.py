"""
Tests for sig2knock.protocol.invitation: the ``sig2knock:`` line a server's admin hands a user.
"""

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.protocol.invitation import Invitation, InvitationError, parse_invitation
from sig2knock.test.common import CHEAP_KDF, SERVER_PUBLIC


class InvitationTests(SynchronousTestCase):
    """
    An invitation survives formatting and reading, for any host, and holds nothing secret.
    """

    def test_roundTrip(self) -> None:
        for host in ("server.example.org", "198.18.0.1", "2001:db8::1"):
            for kdf in (CHEAP_KDF, None):
                invitation = Invitation(host, 1001, SERVER_PUBLIC, "alice", kdf)
                text = invitation.format()
                self.assertTrue(text.startswith("sig2knock:"))
                self.assertNotIn("\n", text)
                self.assertEqual(parse_invitation("  " + text + "\n"), invitation)
        with_service = Invitation("h", 1001, SERVER_PUBLIC, "alice", None, "rdp")
        self.assertEqual(parse_invitation(with_service.format()).service, "rdp")
        self.assertEqual(parse_invitation(with_service._replace(service="").format()).service, "")

    def test_damagedRefused(self) -> None:
        good = Invitation("h", 1001, SERVER_PUBLIC, "alice", None).format()
        for bad, message in (
            ("alice:scrypt", "starts with 'sig2knock:'"),
            (good[:-5], "damaged"),
            ("sig2knock:" + "e30", "another version"),  # {}
            (good.replace("sig2knock:", "sig2knock:x"), "damaged"),
            (Invitation("h\r\n[x]", 1, SERVER_PUBLIC, "alice", None).format(), "not a host"),
        ):
            with self.subTest(text=bad):
                error = self.assertRaises(InvitationError, parse_invitation, bad)
                self.assertIn(message, str(error))
