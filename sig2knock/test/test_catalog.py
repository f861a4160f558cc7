"""
Tests for ``sig2knock.daemon.catalog``: the services of a configuration (its ``[service NAME]``
and ``[group NAME]`` sections, read by ``sig2knock.daemon.settings``), who may reach each, and
what a reload takes away.
"""

import ipaddress
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.catalog import EVERY_USER, Access, HiddenService
from sig2knock.daemon.session import SessionRefused
from sig2knock.test.common import ConfigErrorAssertions, parse_text, settings_text

SECTIONS = textwrap.dedent(
    """
    ALLOW = alice, @ops
    [service rdp]
    FORWARD_TO_IP = 192.168.0.112
    FORWARD_TO_PORT = 3389
    ALLOW = @windows
    SINGLECONN_PORTOPEN_TIME = 12

    [service db]
    # a comment inside a section
    FORWARD_TO_IP = 10.0.0.7
    FORWARD_TO_PORT = 5432
    ALLOW = dave

    [group windows]
    USERS = bob carol

    [group ops]
    USERS = carol
    """
)


def catalog(text: str = SECTIONS):  # type: ignore[no-untyped-def]
    return parse_text(settings_text() + text).catalog


class AccessTests(SynchronousTestCase):
    """
    ``ALLOW`` values: ``*``, user names and ``@group`` names.
    """

    def test_forms(self) -> None:
        self.assertEqual(Access.parse("*"), EVERY_USER)
        self.assertEqual(
            Access.parse("alice, bob @ops"),
            Access(False, frozenset({"alice", "bob"}), frozenset({"ops"})),
        )
        self.assertEqual(str(Access.parse("bob,alice,@ops")), "alice, bob, @ops")
        self.assertEqual(str(EVERY_USER), "every user")

    def test_refused(self) -> None:
        for text in ("", " , ", "* alice", "@", "@Ops", "-alice"):
            with self.subTest(text=text):
                self.assertRaises(ValueError, Access.parse, text)

    def test_admits(self) -> None:
        groups = {"ops": frozenset({"carol"})}
        access = Access.parse("alice @ops")
        self.assertEqual(
            [access.admits(user, groups) for user in ("alice", "carol", "bob")],
            [True, True, False],
        )
        self.assertTrue(EVERY_USER.admits("anyone", {}))


class CatalogTests(SynchronousTestCase):
    """
    A configuration's services: the default one of the top-level keys, and its sections.
    """

    def test_services(self) -> None:
        found = catalog()
        self.assertEqual(list(found.services), ["", "rdp", "db"])
        self.assertEqual(
            found.default,
            HiddenService("", ipaddress.ip_address("127.0.0.1"), 22, 30.0,
                          Access.parse("alice @ops")),
        )
        rdp = found.services["rdp"]
        self.assertEqual((str(rdp.forward_to_ip), rdp.forward_to_port, rdp.open_time, rdp.line),
                         ("192.168.0.112", 3389, 12.0, 6))
        self.assertEqual(found.services["db"].open_time, 30.0, "the top-level open time")
        self.assertEqual(found.groups, {"windows": frozenset({"bob", "carol"}),
                                        "ops": frozenset({"carol"})})

    def test_withoutSectionsEveryUserReachesTheDefaultOnly(self) -> None:
        found = parse_text(settings_text()).catalog
        self.assertEqual(list(found.services), [""])
        self.assertEqual(found.find("", "anyone").name, "")
        self.assertEqual(self.refusal(found, "rdp", "anyone"), "unknown-service")

    def refusal(self, found, name: str, user: str) -> str:  # type: ignore[no-untyped-def]
        return self.assertRaises(SessionRefused, found.find, name, user).reason

    def test_find(self) -> None:
        """
        Each user reaches exactly what ALLOW says; any other name, or a service not theirs, is
        refused, with a reason for the log.
        """
        found = catalog()
        reachable = {user: found.reachable_by(user) for user in ("alice", "bob", "carol", "dave")}
        self.assertEqual(reachable, {"alice": ["default"], "bob": ["rdp"],
                                     "carol": ["default", "rdp"], "dave": ["db"]})
        self.assertEqual(found.find("rdp", "bob").forward_to_port, 3389)
        self.assertEqual(self.refusal(found, "rdp", "alice"), "not-allowed")
        self.assertEqual(self.refusal(found, "", "bob"), "not-allowed")
        self.assertEqual(self.refusal(found, "ssh", "carol"), "unknown-service")
        error = self.assertRaises(SessionRefused, found.find, "db", "alice")
        self.assertEqual(error.detail, "alice may not reach service db (ALLOW)")

    def test_whereItIsWrittenIsNotWhatItIs(self) -> None:
        """
        The same services written on other lines (a comment added) are the same services: a
        reload that only moves them changes and ends nothing.
        """
        moved = catalog("\n# a new comment\n" + SECTIONS)
        self.assertEqual(moved, catalog())
        self.assertNotEqual(moved.services["rdp"].line, catalog().services["rdp"].line)
        self.assertIsNone(moved.withdrawn(catalog().services["rdp"], "bob"))

    def test_withdrawn(self) -> None:
        """
        After a reload: a session for a service that is gone, points elsewhere now, or no longer
        admits its user must end; the rest go on.
        """
        before = catalog()
        after = catalog(
            SECTIONS.replace("USERS = bob carol", "USERS = carol")
            .replace("FORWARD_TO_PORT = 5432", "FORWARD_TO_PORT = 5433")
            .replace("SINGLECONN_PORTOPEN_TIME = 12", "SINGLECONN_PORTOPEN_TIME = 20")
        )
        rdp, db = before.services["rdp"], before.services["db"]
        self.assertEqual(after.withdrawn(rdp, "bob"), "bob may no longer reach service rdp")
        self.assertIsNone(after.withdrawn(rdp, "carol"), "a new open time ends nothing")
        self.assertEqual(after.withdrawn(db, "dave"), "service db forwards elsewhere now")
        self.assertIsNone(after.withdrawn(before.default, "alice"))
        gone = catalog(SECTIONS.replace("[service db]", "[service pg]"))
        self.assertEqual(gone.withdrawn(db, "dave"), "service db was removed")


class SectionErrorTests(SynchronousTestCase, ConfigErrorAssertions):
    """
    Sections that cannot be used are refused with the file, the line and the key.
    """

    def assertSectionError(self, sections: str, line, key, text: str) -> None:  # type: ignore
        error = self.assertConfigError(settings_text() + textwrap.dedent(sections), line, key)
        self.assertIn(text, str(error))

    def test_headers(self) -> None:
        self.assertSectionError("[server rdp]\n", 4, None, "[service NAME] or [group NAME]")
        self.assertSectionError("[service]\n", 4, None, "[service NAME] or [group NAME]")
        self.assertSectionError("[service RDP]\nFORWARD_TO_IP = 10.0.0.1\n", 4, None,
                                "service name 'RDP' is not valid")
        self.assertSectionError(
            "[group a]\nUSERS = x\n[group a]\nUSERS = y\n", 6, None, "again (first on line 4)"
        )
        self.assertSectionError("[service default]\n", 4, None,
                                "'default' is the default service's name")

    def test_keys(self) -> None:
        self.assertSectionError("[service rdp]\nFORWARD_TO_PORT = 3389\nALLOW = *\n", 4,
                                "FORWARD_TO_IP", "required in [service rdp]")
        self.assertSectionError("[service rdp]\nKNOCK_COUNT = 5\n", 5, "KNOCK_COUNT",
                                "the top-level keys go above the first [section]")
        self.assertSectionError("[group ops]\nALLOW = *\n", 5, "ALLOW",
                                "not a key of [group ops] (its keys: USERS)")
        self.assertSectionError("[group ops]\nMEMBERS = a\n", 5, "MEMBERS",
                                "unknown key in [group ops] (its keys: USERS)")
        self.assertSectionError("[service rdp]\nFORWARD_TO_PORT = 1\nFORWARD_TO_PORT = 2\n", 6,
                                "FORWARD_TO_PORT", "set again in [service rdp]")
        self.assertSectionError("[service rdp]\nFORWARD_TO_PORT = 0\n", 5, "FORWARD_TO_PORT",
                                "out of range")
        self.assertSectionError("[group ops]\nUSERS = a ..b\n", 5, "USERS",
                                "user name '..b' is not valid")

    def test_serviceInNatModeOnAProxyGateway(self) -> None:
        """
        A service may have its own FORWARD_MODE: the kernel's nat rules are then installed for
        its target alone (the default service stays proxied); nat needs a firewall that can.
        """
        from sig2knock.daemon.settings import firewall_settings

        nat_service = ("[service db]\nFORWARD_TO_IP = 10.0.0.7\nFORWARD_TO_PORT = 5432\n"
                       "ALLOW = *\nFORWARD_MODE = nat\n")
        config = parse_text(settings_text(FIREWALL="nftables") + nat_service)
        self.assertEqual([service.mode_in(config) for service in config.catalog.services.values()],
                         ["proxy", "nat"])
        settings = firewall_settings(config, "eth0")
        self.assertEqual((str(settings.nat_to[0]), settings.nat_to[1], settings.nat_also),
                         ("10.0.0.7", 5432, ()))
        self.assertFalse(settings.nat_loopback)
        self.assertIsNone(firewall_settings(parse_text(settings_text()), "eth0").nat_to)
        error = self.assertConfigError(settings_text(FIREWALL="none") + nat_service, 5,
                                       "FORWARD_MODE")
        self.assertIn("[service db] nat needs FIREWALL", str(error))

    def test_unknownGroup(self) -> None:
        self.assertSectionError(
            "[service rdp]\nFORWARD_TO_IP = 10.0.0.1\nFORWARD_TO_PORT = 3389\nALLOW = @ops\n",
            4, "ALLOW", "no group 'ops' (define it in a [group ops] section)",
        )
        error = self.assertConfigError(settings_text(ALLOW="@ops"), 4, "ALLOW")
        self.assertIn("no group 'ops'", str(error))

    def test_targets(self) -> None:
        """
        A service's target is checked like the default one's: a loopback port inside the
        assigned range, and in nat mode ::1 or another address family than the default's.
        """
        self.assertSectionError(
            "[service web]\nFORWARD_TO_IP = 127.0.0.1\nFORWARD_TO_PORT = 40000\nALLOW = *\n",
            4, "FORWARD_TO_PORT", "[service web] 40000 on 127.0.0.1 lies inside ASSIGN_PORT_RANGE",
        )
        nat = settings_text(FIREWALL="nftables", FORWARD_MODE="nat")
        for address, key, text in (("::1", "FORWARD_MODE", "nat cannot forward to ::1"),
                                   ("2001:db8::5", "FORWARD_TO_IP", "one address family")):
            with self.subTest(address=address):
                error = self.assertConfigError(
                    nat + f"[service web]\nFORWARD_TO_IP = {address}\nFORWARD_TO_PORT = 80\n"
                    "ALLOW = *\n", 6, key,
                )
                self.assertIn(text, str(error))
