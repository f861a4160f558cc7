"""
Tests for sig2knock.daemon.values: each value type of sig2knockd.conf, its accepted forms and
limits, and its errors, read through a configuration file so that each error names the file,
the line and the key.
"""

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.test.common import ConfigErrorAssertions, parse_text, settings_text


class ValueTests(SynchronousTestCase, ConfigErrorAssertions):
    """
    Numbers, ports, seconds, addresses, port ranges and choices: what each accepts and refuses.
    """

    def test_badNumber(self) -> None:
        for value in ("abc", "10o1", "-5", "1.5", "0x16", "1 001", "1234567"):
            with self.subTest(value=value):
                self.assertConfigError(settings_text(UDP_PORT=value), 1, "UDP_PORT")
        self.assertConfigError(settings_text(KNOCK_COUNT="four"), 4, "KNOCK_COUNT")
        self.assertConfigError(settings_text(KNOCK_TIMEOUT="ten"), 4, "KNOCK_TIMEOUT")

    def test_portOutOfRange(self) -> None:
        error = self.assertConfigError(settings_text(UDP_PORT="0"), 1, "UDP_PORT")
        self.assertIn("out of range", str(error))
        error = self.assertConfigError(settings_text(FORWARD_TO_PORT="65536"), 3, "FORWARD_TO_PORT")
        self.assertIn("out of range", str(error))

    def test_portLimitsAccepted(self) -> None:
        parsed = parse_text(settings_text(UDP_PORT="65535", FORWARD_TO_PORT="1"))
        self.assertEqual((parsed.udp_port, parsed.forward_to_port), (65535, 1))

    def test_badAddress(self) -> None:
        for value in ("127.0.0.256", "localhost", "1.2.3", "2001:db8::g"):
            with self.subTest(value=value):
                self.assertConfigError(settings_text(FORWARD_TO_IP=value), 2, "FORWARD_TO_IP")
        self.assertConfigError(settings_text(LISTEN_ADDRESS="example.org"), 4, "LISTEN_ADDRESS")

    def test_unspecifiedForwardAddress(self) -> None:
        for value in ("0.0.0.0", "::"):
            with self.subTest(value=value):
                self.assertConfigError(settings_text(FORWARD_TO_IP=value), 2, "FORWARD_TO_IP")

    def test_multicastAddresses(self) -> None:
        self.assertConfigError(settings_text(FORWARD_TO_IP="224.0.0.1"), 2, "FORWARD_TO_IP")
        self.assertConfigError(settings_text(LISTEN_ADDRESS="ff02::1"), 4, "LISTEN_ADDRESS")

    def test_unspecifiedListenAddressAccepted(self) -> None:
        parsed = parse_text(settings_text(LISTEN_ADDRESS="::"))
        self.assertEqual(parsed.listen_address, ipaddress.ip_address("::"))

    def test_badPortRange(self) -> None:
        for value in ("5-3", "abc", "30000", "0-100", "30000-65536", "1-2-3"):
            with self.subTest(value=value):
                text = settings_text(ASSIGN_PORT_RANGE=value)
                self.assertConfigError(text, 4, "ASSIGN_PORT_RANGE")

    def test_singlePortRangeAccepted(self) -> None:
        parsed = parse_text(settings_text(ASSIGN_PORT_RANGE="40000-40000"))
        self.assertEqual(parsed.assign_port_range, (40000, 40000))

    def test_badChoice(self) -> None:
        error = self.assertConfigError(settings_text(FIREWALL="ufw"), 4, "FIREWALL")
        self.assertIn("nftables", str(error))
        self.assertConfigError(settings_text(FIREWALL_POLICY="open"), 4, "FIREWALL_POLICY")
        self.assertConfigError(settings_text(KNOCK_PROTO="icmp"), 4, "KNOCK_PROTO")

    def test_knockCountOutOfRange(self) -> None:
        for value in ("0", "65"):
            with self.subTest(value=value):
                self.assertConfigError(settings_text(KNOCK_COUNT=value), 4, "KNOCK_COUNT")

    def test_knockCountLimitsAccepted(self) -> None:
        for value in (1, 64):
            with self.subTest(value=value):
                parsed = parse_text(settings_text(KNOCK_COUNT=str(value)))
                self.assertEqual(parsed.knock_count, value)

    def test_secondsOutOfRange(self) -> None:
        for key, value in (
            ("KNOCK_TIMEOUT", "0"),
            ("KNOCK_TIMEOUT", "300.5"),
            ("MAX_CLOCK_SKEW", "5000"),
            ("MAX_CLOCK_SKEW", "0.5"),
            ("SINGLECONN_PORTOPEN_TIME", "0"),
            ("SINGLECONN_PORTOPEN_TIME", "86401"),
        ):
            with self.subTest(key=key, value=value):
                error = self.assertConfigError(settings_text(**{key: value}), 4, key)
                self.assertIn("out of range", str(error))

    def test_fractionalSecondsAccepted(self) -> None:
        self.assertEqual(parse_text(settings_text(KNOCK_TIMEOUT="2.5")).knock_timeout, 2.5)
