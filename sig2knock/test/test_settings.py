"""
Tests for sig2knock.daemon.settings: reading and validating sig2knockd.conf.
"""

import dataclasses
import ipaddress
import os
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import schema
from sig2knock.daemon.catalog import EVERY_USER, Catalog, HiddenService
from sig2knock.daemon.settings import Config, ConfigError, load_config, parse_config
from sig2knock.test.common import (
    CONFIG_PATH,
    EXAMPLE_CONFIG,
    ConfigErrorAssertions,
    parse_text,
    settings_text,
)
from sig2knock.test.properties import given, settings, st


DIRECTORY = "/etc/sig2knock"


class ExampleConfigTests(SynchronousTestCase):
    """
    The shipped ``etc/sig2knockd.conf`` is a valid configuration.
    """

    def test_exampleParses(self) -> None:
        parsed = load_config(EXAMPLE_CONFIG)
        self.assertEqual(parsed.udp_port, 1001)
        self.assertEqual(parsed.forward_to_ip, ipaddress.ip_address("127.0.0.1"))
        self.assertEqual(parsed.forward_to_port, 22)
        # What the machine has, not none: a grant without a firewall shows to any scanner.
        self.assertEqual(parsed.firewall, "auto")

    def test_examplePaths(self) -> None:
        """
        The example's users file is ``etc/user.txt`` and its state directory ``state/`` of the
        checkout.
        """
        parsed = load_config(EXAMPLE_CONFIG)
        directory = os.path.dirname(EXAMPLE_CONFIG)
        self.assertEqual(parsed.users_file, os.path.join(directory, "user.txt"))
        self.assertEqual(
            os.path.normpath(parsed.state_dir),
            os.path.join(os.path.dirname(directory), "state"),
        )


class DefaultsTests(SynchronousTestCase):
    """
    Only UDP_PORT, FORWARD_TO_IP and FORWARD_TO_PORT are required; every other key has the default
    the README documents.
    """

    def test_everyDefault(self) -> None:
        """
        Every field of Config (but the line record) has the documented value; a field added to
        Config without a default checked here fails this test.
        """
        parsed = parse_text(settings_text())
        values = {
            field.name: getattr(parsed, field.name)
            for field in dataclasses.fields(Config)
            if field.name != "lines"
        }
        self.assertEqual(
            values,
            {
                "path": CONFIG_PATH,
                "udp_port": 1001,
                "forward_to_ip": ipaddress.IPv4Address("127.0.0.1"),
                "forward_to_port": 22,
                "forward_mode": "proxy",
                "singleconn_portopen_time": 30.0,
                "interface": None,
                "pktfilter_interface": None,
                "interface_wait": 60.0,
                "users_file": os.path.join(DIRECTORY, "user.txt"),
                "firewall": "auto",
                "firewall_policy": "ports",
                "assign_port_range": (30000, 60999),
                "knock_proto": "tcp",
                "knock_count": 4,
                "knock_timeout": 10.0,
                "max_clock_skew": 60.0,
                "require_source_address": False,
                "listen_address": None,
                "state_dir": "/var/lib/sig2knock",
                "allow": EVERY_USER,
                "catalog": Catalog(
                    {"": HiddenService("", ipaddress.IPv4Address("127.0.0.1"), 22, 30.0,
                                       EVERY_USER)},
                    {},
                ),
            },
        )

    def test_linesRecorded(self) -> None:
        """
        The line of each key that was set is kept for later messages.
        """
        self.assertEqual(
            parse_text(settings_text()).lines,
            {"UDP_PORT": 1, "FORWARD_TO_IP": 2, "FORWARD_TO_PORT": 3},
        )

    def test_everyKeySet(self) -> None:
        """
        Every key, set to a value other than its default, reaches its Config field.
        """
        parsed = parse_text(
            settings_text(
                UDP_PORT="62201",
                FORWARD_TO_IP="2001:db8::22",
                FORWARD_TO_PORT="2222",
                SINGLECONN_PORTOPEN_TIME="12.5",
                PKTFILTER_INTERFACE="eth1",
                INTERFACE="eth0",
                USERS_FILE="/srv/keys/users",
                FIREWALL="NFTables",
                FIREWALL_POLICY="lockdown",
                ASSIGN_PORT_RANGE="40000 - 50000",
                KNOCK_PROTO="udp",
                KNOCK_COUNT="64",
                KNOCK_TIMEOUT="300",
                MAX_CLOCK_SKEW="3600",
                LISTEN_ADDRESS="192.0.2.10",
                STATE_DIR="/srv/state",
            )
        )
        self.assertEqual(parsed.udp_port, 62201)
        self.assertEqual(parsed.forward_to_ip, ipaddress.ip_address("2001:db8::22"))
        self.assertEqual(parsed.forward_to_port, 2222)
        self.assertEqual(parsed.singleconn_portopen_time, 12.5)
        self.assertEqual(parsed.pktfilter_interface, "eth1")
        self.assertEqual(parsed.interface, "eth0")
        self.assertEqual(parsed.users_file, "/srv/keys/users")
        self.assertEqual(parsed.firewall, "nftables")
        self.assertEqual(parsed.firewall_policy, "lockdown")
        self.assertEqual(parsed.assign_port_range, (40000, 50000))
        self.assertEqual(parsed.knock_proto, "udp")
        self.assertEqual(parsed.knock_count, 64)
        self.assertEqual(parsed.knock_timeout, 300.0)
        self.assertEqual(parsed.max_clock_skew, 3600.0)
        self.assertEqual(parsed.listen_address, ipaddress.ip_address("192.0.2.10"))
        self.assertEqual(parsed.state_dir, "/srv/state")


class SyntaxTests(SynchronousTestCase):
    """
    The seed's ``KEY = VALUE`` format: comments, blank lines, spaces and key case are free.
    """

    def test_commentsBlankLinesSpacesAndCase(self) -> None:
        parsed = parse_text(
            "# sig2knockd.conf\n"
            "\n"
            "   \n"
            "udp_port=1001\n"
            "  Forward_To_IP   =   127.0.0.1   # the hidden service\n"
            "\t# an indented comment\n"
            "forward_to_port= 22\t# sshd\n"
            "KNOCK_PROTO =udp\n"
        )
        self.assertEqual(parsed.udp_port, 1001)
        self.assertEqual(parsed.forward_to_ip, ipaddress.ip_address("127.0.0.1"))
        self.assertEqual(parsed.forward_to_port, 22)
        self.assertEqual(parsed.knock_proto, "udp")
        self.assertEqual(
            parsed.lines,
            {"UDP_PORT": 4, "FORWARD_TO_IP": 5, "FORWARD_TO_PORT": 7, "KNOCK_PROTO": 8},
        )

    def test_hashInsideValueKept(self) -> None:
        """
        A ``#`` not preceded by a space is part of the value, not a comment.
        """
        parsed = parse_text(settings_text(USERS_FILE="users#1.txt"))
        self.assertEqual(parsed.users_file, os.path.join(DIRECTORY, "users#1.txt"))

    def test_windowsLineEndings(self) -> None:
        parsed = parse_text(settings_text(KNOCK_COUNT="6").replace("\n", "\r\n"))
        self.assertEqual(parsed.knock_count, 6)

    def test_choicesAnyCase(self) -> None:
        parsed = parse_text(settings_text(FIREWALL="None", KNOCK_PROTO="TCP"))
        self.assertEqual((parsed.firewall, parsed.knock_proto), ("none", "tcp"))


class PathTests(SynchronousTestCase):
    """
    USERS_FILE and STATE_DIR are relative to the configuration file's directory.
    """

    def test_relativePathsBesideConfig(self) -> None:
        directory = os.path.abspath(self.mktemp())
        path = os.path.join(directory, "sig2knockd.conf")
        parsed = parse_config(settings_text(USERS_FILE="keys/users.txt", STATE_DIR="state"), path)
        self.assertEqual(parsed.users_file, os.path.join(directory, "keys", "users.txt"))
        self.assertEqual(parsed.state_dir, os.path.join(directory, "state"))

    def test_usersFileDefaultBesideConfig(self) -> None:
        directory = os.path.abspath(self.mktemp())
        path = os.path.join(directory, "sig2knockd.conf")
        parsed = parse_config(settings_text(), path)
        self.assertEqual(parsed.users_file, os.path.join(directory, "user.txt"))

    def test_absolutePathsKept(self) -> None:
        parsed = parse_text(settings_text(USERS_FILE="/srv/users", STATE_DIR="/srv/state"))
        self.assertEqual((parsed.users_file, parsed.state_dir), ("/srv/users", "/srv/state"))

    def test_relativeConfigPathGivesAbsolutePaths(self) -> None:
        """
        A configuration named by a relative path (``-c etc/sig2knockd.conf``) still gives absolute
        paths, taken from the working directory, so a later chdir does not move them.
        """
        parsed = parse_config(settings_text(STATE_DIR="state"), os.path.join("etc", "x.conf"))
        self.assertEqual(parsed.users_file, os.path.abspath(os.path.join("etc", "user.txt")))
        self.assertEqual(parsed.state_dir, os.path.abspath(os.path.join("etc", "state")))

    def test_loadConfigResolvesAgainstFile(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "sig2knockd.conf")
        with open(path, "w", encoding="utf-8") as config_file:
            config_file.write(settings_text(USERS_FILE="users"))
        expected = os.path.abspath(os.path.join(directory, "users"))
        self.assertEqual(load_config(path).users_file, expected)


class InterfaceTests(SynchronousTestCase, ConfigErrorAssertions):
    """
    The capture interface: ``-i`` beats INTERFACE, which beats the seed's PKTFILTER_INTERFACE.
    """

    BOTH = settings_text(INTERFACE="eth0", PKTFILTER_INTERFACE="eth1")

    def test_optionBeatsBothKeys(self) -> None:
        self.assertEqual(parse_text(self.BOTH, interface="wlan0").interface, "wlan0")

    def test_interfaceBeatsPktfilterInterface(self) -> None:
        parsed = parse_text(self.BOTH)
        self.assertEqual(parsed.interface, "eth0")
        self.assertEqual(parsed.pktfilter_interface, "eth1")

    def test_pktfilterInterfaceUsedAlone(self) -> None:
        self.assertEqual(parse_text(settings_text(PKTFILTER_INTERFACE="eth1")).interface, "eth1")

    def test_optionBeatsPktfilterInterface(self) -> None:
        parsed = parse_text(settings_text(PKTFILTER_INTERFACE="eth1"), interface="br-lan")
        self.assertEqual(parsed.interface, "br-lan")

    def test_invalidPktfilterInterfaceNotUsed(self) -> None:
        """
        A PKTFILTER_INTERFACE that is no Linux interface name (the seed allowed anything) is not
        taken as INTERFACE: capture falls back to the default-route interface.
        """
        for value in ("eth0 eth1", "eth0/1", "eth0:1", "a-very-long-interface"):
            with self.subTest(value=value):
                parsed = parse_text(settings_text(PKTFILTER_INTERFACE=value))
                self.assertEqual(parsed.pktfilter_interface, value)
                self.assertIsNone(parsed.interface)

    def test_longestInterfaceName(self) -> None:
        self.assertEqual(parse_text(settings_text(INTERFACE="e" * 15)).interface, "e" * 15)

    def test_badOptionInterface(self) -> None:
        for name in ("eth 0", "eth/0", "eth:0", "e" * 16, ""):
            with self.subTest(name=name):
                error = self.assertConfigError(self.BOTH, None, "INTERFACE", interface=name)
                self.assertIn("-i", str(error))

    def test_badInterfaceKey(self) -> None:
        self.assertConfigError(settings_text(INTERFACE="eth0/1"), 4, "INTERFACE")
        self.assertConfigError(settings_text(INTERFACE="e" * 16), 4, "INTERFACE")


class ErrorTests(SynchronousTestCase, ConfigErrorAssertions):
    """
    Each problem is a ConfigError whose text is one line naming the file, the line and the key.
    """

    def test_unknownKey(self) -> None:
        error = self.assertConfigError(settings_text(COLOUR="blue"), 4, "COLOUR")
        self.assertIn("unknown key", str(error))

    def test_unknownLowerCaseKeyNamedUpper(self) -> None:
        self.assertConfigError(settings_text() + "knock_ports = 1,2,3\n", 4, "KNOCK_PORTS")

    def test_missingRequiredKey(self) -> None:
        """
        A missing required key has no line to name; the message names the file and the key.
        """
        for key in schema.REQUIRED_KEYS:
            with self.subTest(key=key):
                error = self.assertConfigError(settings_text(**{key: None}), None, key)
                self.assertIn("missing", str(error))

    def test_emptyFile(self) -> None:
        self.assertConfigError("", None, "UDP_PORT")

    def test_emptyValue(self) -> None:
        """
        ``KEY =`` (also with only a comment after it) is an error, not the default.
        """
        self.assertConfigError(settings_text() + "STATE_DIR =\n", 4, "STATE_DIR")
        self.assertConfigError(settings_text(UDP_PORT="  # none"), 1, "UDP_PORT")

    def test_lineWithoutEquals(self) -> None:
        error = self.assertConfigError("UDP_PORT 1001\n", 1, None)
        self.assertIn("KEY = VALUE", str(error))
        self.assertConfigError(settings_text() + "= 5\n", 4, None)

    def test_keySetTwiceNamesBothLines(self) -> None:
        text = settings_text() + "# again\n\nudp_port = 1002\n"
        error = self.assertConfigError(text, 6, "UDP_PORT")
        self.assertRegex(str(error)[len(CONFIG_PATH):], r"\b1\b")

    def test_keySetTwiceSameValue(self) -> None:
        self.assertConfigError(settings_text() + "FORWARD_TO_PORT = 22\n", 4, "FORWARD_TO_PORT")

    def test_udpPortInsideAssignedRange(self) -> None:
        for udp_port in ("30000", "45000", "60999"):
            with self.subTest(udp_port=udp_port):
                error = self.assertConfigError(settings_text(UDP_PORT=udp_port), 1, "UDP_PORT")
                self.assertIn("ASSIGN_PORT_RANGE", str(error))
        self.assertConfigError(settings_text(ASSIGN_PORT_RANGE="1000-2000"), 1, "UDP_PORT")

    def test_udpPortBesideAssignedRange(self) -> None:
        for udp_port in (29999, 61000):
            with self.subTest(udp_port=udp_port):
                parsed = parse_text(settings_text(UDP_PORT=str(udp_port)))
                self.assertEqual(parsed.udp_port, udp_port)

    def test_loopbackForwardPortInsideAssignedRange(self) -> None:
        for address in ("127.0.0.1", "127.0.1.1", "::1"):
            with self.subTest(address=address):
                text = settings_text(FORWARD_TO_IP=address, FORWARD_TO_PORT="40000")
                error = self.assertConfigError(text, 3, "FORWARD_TO_PORT")
                self.assertIn("ASSIGN_PORT_RANGE", str(error))

    def test_ipv4MappedLoopbackForwardPortInsideAssignedRange(self) -> None:
        """
        ``::ffff:127.0.0.1`` is IPv4 loopback reached over an IPv6 socket; its port inside
        ASSIGN_PORT_RANGE clashes the same way as on ``127.0.0.1``.
        """
        text = settings_text(FORWARD_TO_IP="::ffff:127.0.0.1", FORWARD_TO_PORT="40000")
        self.assertConfigError(text, 3, "FORWARD_TO_PORT")

    def test_remoteForwardPortInsideAssignedRangeAccepted(self) -> None:
        """
        The assigned ports are this host's: a service on another host may use one of their numbers.
        """
        parsed = parse_text(settings_text(FORWARD_TO_IP="192.0.2.22", FORWARD_TO_PORT="40000"))
        self.assertEqual(parsed.forward_to_port, 40000)

    def test_lockdownWithoutFirewall(self) -> None:
        text = settings_text(FIREWALL="none", FIREWALL_POLICY="lockdown")
        error = self.assertConfigError(text, 5, "FIREWALL_POLICY")
        self.assertIn("FIREWALL", str(error)[len(CONFIG_PATH) + len(":5: FIREWALL_POLICY: "):])

    def test_lockdownWithFirewallAccepted(self) -> None:
        for firewall in ("auto", "nftables", "iptables", "pktfilter"):
            with self.subTest(firewall=firewall):
                text = settings_text(FIREWALL=firewall, FIREWALL_POLICY="lockdown")
                self.assertEqual(parse_text(text).firewall_policy, "lockdown")

    def test_natNeedsNftables(self) -> None:
        for firewall in ("pktfilter", "none"):
            with self.subTest(firewall=firewall):
                text = settings_text(FIREWALL=firewall, FORWARD_MODE="nat")
                error = self.assertConfigError(text, 5, "FORWARD_MODE")
                self.assertIn("nftables or iptables", str(error))
        for firewall in ("auto", "nftables", "iptables"):
            text = settings_text(FIREWALL=firewall, FORWARD_MODE="nat")
            self.assertEqual(parse_text(text).forward_mode, "nat")

    def test_natCannotReachIPv6Loopback(self) -> None:
        text = settings_text(FORWARD_TO_IP="::1", FIREWALL="nftables", FORWARD_MODE="nat")
        error = self.assertConfigError(text, 5, "FORWARD_MODE")
        self.assertIn("proxy", str(error))


class LoadConfigTests(SynchronousTestCase):
    """
    load_config reads the file and turns reading problems into ConfigError.
    """

    def test_missingFile(self) -> None:
        path = os.path.abspath(self.mktemp())
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn(path, str(error))
        self.assertIn("no such file", str(error))
        self.assertNotIn("\n", str(error))

    def test_notUtf8(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "sig2knockd.conf")
        with open(path, "wb") as config_file:
            config_file.write(settings_text().encode("ascii") + b"# caf\xe9\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn(path, str(error))
        self.assertNotIn("\n", str(error))

    def test_directory(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        error = self.assertRaises(ConfigError, load_config, directory)
        self.assertIn(directory, str(error))

    def test_interfaceOption(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "sig2knockd.conf")
        with open(path, "w", encoding="utf-8") as config_file:
            config_file.write(settings_text(INTERFACE="eth0"))
        self.assertEqual(load_config(path, "eth9").interface, "eth9")
        self.assertRaises(ConfigError, load_config, path, "eth 9")


# Values likely to get past the first checks of some key, and so to reach later code.
INTERESTING_VALUES = st.sampled_from(
    [
        "1001", "22", "0", "65535", "65536", "30000", "60999", "40000", "1-65535", "5-3",
        "30000-60999", "127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::", "fe80::1%eth0",
        "ff02::1", "none", "lockdown", "ports", "auto", "udp", "tcp", "64", "65", "0.5", "3600",
        "86400.000001", "eth0", "eth 0", "e" * 16, "user.txt", "/abs", "../rel", "#", "x # y",
    ]
)
VALUES = st.one_of(
    INTERESTING_VALUES,
    st.from_regex(r"[0-9]{1,7}(\.[0-9]{1,7})?", fullmatch=True),
    st.from_regex(r"[0-9]{1,6} ?- ?[0-9]{1,6}", fullmatch=True),
    st.text(),
)
KEYS = st.one_of(
    st.sampled_from(schema.KNOWN_KEYS),
    st.sampled_from(schema.KNOWN_KEYS).map(str.lower),
    st.text(max_size=20),
)
LINES = st.one_of(
    st.builds(
        lambda key, equals, value: f"{key}{equals}{value}",
        KEYS,
        st.sampled_from(["=", " = ", "= ", "\t=\t", " "]),
        VALUES,
    ),
    st.sampled_from(
        ["", "# comment", "UDP_PORT = 1001", "FORWARD_TO_IP = 127.0.0.1", "FORWARD_TO_PORT = 22"]
    ),
)


class PropertyTests(SynchronousTestCase):
    """
    Whatever the text, parse_config returns a Config or raises a one-line ConfigError.
    """

    def check(self, text: str, interface: Optional[str] = None) -> None:
        try:
            parsed = parse_config(text, CONFIG_PATH, interface)
        except ConfigError as error:
            self.assertNotIn("\n", str(error))
            self.assertNotIn("\r", str(error))
        else:
            self.assertIsInstance(parsed, Config)
            self.assertTrue(os.path.isabs(parsed.users_file))
            self.assertTrue(os.path.isabs(parsed.state_dir))
            low, high = parsed.assign_port_range
            self.assertFalse(low <= parsed.udp_port <= high)

    @given(st.text())
    @settings(max_examples=2000, deadline=None)
    def test_randomText(self, text: str) -> None:
        self.check(text)

    @given(
        st.lists(LINES, max_size=25),
        st.sampled_from(["\n", "\r\n"]),
        st.one_of(st.none(), st.sampled_from(["eth0", "eth 0", ""]), st.text(max_size=20)),
    )
    @settings(max_examples=2000, deadline=None)
    def test_randomKnownKeyLines(self, lines, newline, interface) -> None:
        self.check(newline.join(lines), interface)
