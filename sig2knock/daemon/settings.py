"""
Reading and validating ``sig2knockd.conf``: the seed's ``KEY = VALUE`` format, its keys, and ours.

Everything is checked before the daemon opens anything. Each problem is a ``ConfigError`` whose text
is one line naming the file, the line number and the key.
"""

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple, Union

from sig2knock.daemon.text import one_line
from sig2knock.firewall import FirewallSettings, registry
from sig2knock.protocol.wire import MAX_KNOCKS
from sig2knock.protocol.addresses import unmapped

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

FIREWALL_POLICIES = ("ports", "lockdown")
FORWARD_MODES = ("proxy", "nat")
KNOCK_PROTOCOLS = ("tcp", "udp")
REQUIRED_KEYS = ("UDP_PORT", "FORWARD_TO_IP", "FORWARD_TO_PORT")
_INTERFACE_RE = re.compile(r"[^\s/:]{1,15}")


class ConfigError(Exception):
    """
    The configuration cannot be used. ``str()`` is one line: ``FILE:LINE: KEY: what is wrong``.
    """

    def __init__(self, path: str, line: Optional[int], key: Optional[str], message: str) -> None:
        super().__init__(path, line, key, message)
        self.path = path
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        return one_line(text)


class _BadValue(ValueError):
    """
    A value does not parse; the message says what was expected.
    """


def _integer(text: str, low: int, high: int, what: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", text):
        raise _BadValue(f"{text!r} is not {what} ({low}-{high})")
    value = int(text)
    if not low <= value <= high:
        raise _BadValue(f"{value} is out of range for {what} ({low}-{high})")
    return value


def _port(text: str) -> int:
    return _integer(text, 1, 65535, "a port number")


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,6})?", text):
            raise _BadValue(f"{text!r} is not a number of seconds")
        value = float(text)
        if not low <= value <= high:
            raise _BadValue(f"{text} seconds is out of range ({low:g}-{high:g})")
        return value

    return parse


def _choice(choices: Tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise _BadValue(f"{text!r} is not one of: {', '.join(choices)}")
        return text.lower()

    return parse


def _address(text: str) -> IPAddress:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _BadValue(f"{text!r} is not an IPv4 or IPv6 address") from None
    # ::ffff:a.b.c.d reaches a.b.c.d: judge it (loopback, unspecified) as the IPv4 address.
    return unmapped(address)


def _forward_address(text: str) -> IPAddress:
    address = _address(text)
    if address.is_unspecified or address.is_multicast:
        raise _BadValue(f"cannot forward to {address}: give the service's own address")
    return address


def _listen_address(text: str) -> IPAddress:
    address = _address(text)
    if address.is_multicast:
        raise _BadValue(f"cannot listen on the multicast address {address}")
    return address


def _port_range(text: str) -> Tuple[int, int]:
    match = re.fullmatch(r"([0-9]+)\s*-\s*([0-9]+)", text)
    if match is None:
        raise _BadValue(f"{text!r} is not a port range like 30000-60999")
    low, high = _port(match.group(1)), _port(match.group(2))
    if low > high:
        raise _BadValue(f"the range {low}-{high} is empty (the first port must be the lower)")
    return low, high


def _is_interface_name(text: str) -> bool:
    # Linux: at most 15 bytes, no white space, '/' or ':', and not "." or "..".
    return (
        _INTERFACE_RE.fullmatch(text) is not None
        and len(text.encode("utf-8")) <= 15
        and text not in (".", "..")
    )


def _interface(text: str) -> str:
    if not _is_interface_name(text):
        raise _BadValue(f"{text!r} is not an interface name")
    return text


def _text(text: str) -> str:
    return text


def _path(text: str) -> str:
    if "\x00" in text:
        raise _BadValue("a path cannot contain a NUL character")
    return text


@dataclass(frozen=True)
class Config:
    """
    A validated configuration. Paths are absolute; ``interface`` is ``None`` for "the interface of
    the default route"; ``listen_address`` is ``None`` for every address (IPv4 and IPv6).
    """

    path: str
    udp_port: int
    forward_to_ip: IPAddress
    forward_to_port: int
    forward_mode: str = "proxy"
    singleconn_portopen_time: float = 30.0
    interface: Optional[str] = None
    pktfilter_interface: Optional[str] = None
    interface_wait: float = 60.0
    users_file: str = ""
    firewall: str = "auto"
    firewall_policy: str = "ports"
    assign_port_range: Tuple[int, int] = (30000, 60999)
    knock_proto: str = "tcp"
    knock_count: int = 4
    knock_timeout: float = 10.0
    max_clock_skew: float = 60.0
    listen_address: Optional[IPAddress] = None
    state_dir: str = "/var/lib/sig2knock"
    # Where each key was set, for messages about combinations: key -> line number.
    lines: Dict[str, int] = field(default_factory=dict, compare=False, repr=False)


# Key -> (Config attribute, parser). Order is the README's order.
_KEYS: Dict[str, Tuple[str, Callable[[str], object]]] = {
    "UDP_PORT": ("udp_port", _port),
    "FORWARD_TO_IP": ("forward_to_ip", _forward_address),
    "FORWARD_TO_PORT": ("forward_to_port", _port),
    "FORWARD_MODE": ("forward_mode", _choice(FORWARD_MODES)),
    "SINGLECONN_PORTOPEN_TIME": ("singleconn_portopen_time", _seconds(1, 86400)),
    "PKTFILTER_INTERFACE": ("pktfilter_interface", _text),
    "INTERFACE": ("interface", _interface),
    "INTERFACE_WAIT": ("interface_wait", _seconds(0, 3600)),
    "USERS_FILE": ("users_file", _path),
    "FIREWALL": ("firewall", _choice(registry.CHOICES)),
    "FIREWALL_POLICY": ("firewall_policy", _choice(FIREWALL_POLICIES)),
    "ASSIGN_PORT_RANGE": ("assign_port_range", _port_range),
    "KNOCK_PROTO": ("knock_proto", _choice(KNOCK_PROTOCOLS)),
    "KNOCK_COUNT": ("knock_count", lambda text: _integer(text, 1, MAX_KNOCKS, "a knock count")),
    "KNOCK_TIMEOUT": ("knock_timeout", _seconds(1, 300)),
    "MAX_CLOCK_SKEW": ("max_clock_skew", _seconds(1, 3600)),
    "LISTEN_ADDRESS": ("listen_address", _listen_address),
    "STATE_DIR": ("state_dir", _path),
}
KNOWN_KEYS = tuple(_KEYS)


def parse_config(text: str, path: str, interface: Optional[str] = None) -> Config:
    """
    Parse and validate the text of a configuration file read from ``path``.

    ``interface`` is the ``-i`` option, which overrides ``INTERFACE`` and ``PKTFILTER_INTERFACE``.
    Relative ``USERS_FILE`` and ``STATE_DIR`` are taken relative to the file's directory.
    """
    values: Dict[str, object] = {}
    lines: Dict[str, int] = {}
    # Split on newlines only (not splitlines()), so line numbers are the ones an editor shows.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip().upper(), value.strip()
        if not equals or not key:
            raise ConfigError(path, number, None, "expected a line of the form KEY = VALUE")
        if key not in _KEYS:
            raise ConfigError(
                path, number, key, f"unknown key (known keys: {', '.join(KNOWN_KEYS)})"
            )
        if key in lines:
            raise ConfigError(path, number, key, f"set again (first set on line {lines[key]})")
        if not value:
            raise ConfigError(path, number, key, "empty value (leave the key out for the default)")
        attribute, parse = _KEYS[key]
        try:
            values[attribute] = parse(value)
        except _BadValue as error:
            raise ConfigError(path, number, key, str(error)) from None
        lines[key] = number

    for key in REQUIRED_KEYS:
        if key not in lines:
            raise ConfigError(path, None, key, "required key is missing")

    if interface is not None:
        try:
            values["interface"] = _interface(interface)
        except _BadValue as error:
            raise ConfigError(path, None, "INTERFACE", f"-i {error}") from None
    elif "interface" not in values and "pktfilter_interface" in values:
        pktfilter_interface = values["pktfilter_interface"]
        assert isinstance(pktfilter_interface, str)
        if _is_interface_name(pktfilter_interface):
            values["interface"] = pktfilter_interface

    directory = os.path.dirname(os.path.abspath(path))
    users_file = values.get("users_file") or "user.txt"
    assert isinstance(users_file, str)
    values["users_file"] = os.path.normpath(os.path.join(directory, users_file))
    if "state_dir" in values:
        state_dir = values["state_dir"]
        assert isinstance(state_dir, str)
        values["state_dir"] = os.path.normpath(os.path.join(directory, state_dir))

    config = Config(path=path, lines=lines, **values)  # type: ignore[arg-type]
    check_combinations(config)
    return config


def check_combinations(config: Config) -> None:
    """
    Refuse settings that cannot work together; raises ``ConfigError`` naming the key.
    """
    low, high = config.assign_port_range

    def fail(key: str, message: str) -> None:
        raise ConfigError(config.path, config.lines.get(key), key, message)

    if low <= config.udp_port <= high:
        fail("UDP_PORT", f"{config.udp_port} lies inside ASSIGN_PORT_RANGE {low}-{high}")
    if config.forward_to_ip.is_loopback and low <= config.forward_to_port <= high:
        fail(
            "FORWARD_TO_PORT",
            f"{config.forward_to_port} on {config.forward_to_ip} lies inside"
            f" ASSIGN_PORT_RANGE {low}-{high}",
        )
    backend = registry.BACKENDS.get(config.firewall)  # None for auto
    if config.firewall_policy == "lockdown" and backend is not None and not backend.gates:
        fail("FIREWALL_POLICY", f"lockdown needs a firewall, but FIREWALL is {config.firewall}")
    if config.forward_mode == "nat" and backend is not None and not backend.nat:
        kernel = " or ".join(name for name, row in registry.BACKENDS.items() if row.nat)
        fail("FORWARD_MODE", f"nat needs FIREWALL = {kernel}, not {config.firewall}")
    nat_loopback6 = config.forward_to_ip.version == 6 and config.forward_to_ip.is_loopback
    if config.forward_mode == "nat" and nat_loopback6:
        fail("FORWARD_MODE", "nat cannot forward to ::1 (the kernel routes no IPv6 loopback"
             " from outside); use FORWARD_MODE = proxy or another FORWARD_TO_IP")


def firewall_settings(config: Config, interface: str) -> FirewallSettings:
    """
    What the firewall backend needs of ``config``, with the capture ``interface``.
    """
    return FirewallSettings(
        control_port=config.udp_port,
        port_range=config.assign_port_range,
        policy=config.firewall_policy,
        interface=interface,
        nat_to=(
            (config.forward_to_ip, config.forward_to_port)
            if config.forward_mode == "nat"
            else None
        ),
    )


def load_config(path: str, interface: Optional[str] = None) -> Config:
    """
    Read and validate the configuration file at ``path``; see ``parse_config``.
    """
    try:
        with open(path, encoding="utf-8") as source:
            text = source.read()
    except FileNotFoundError:
        raise ConfigError(path, None, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(path, None, None, f"cannot read it: {reason}") from None
    return parse_config(text, path, interface)


REPOSITORY_CONFIG = os.path.join("etc", "sig2knockd.conf")
SYSTEM_CONFIG = "/etc/sig2knock/sig2knockd.conf"


def default_config_path() -> str:
    """
    ``etc/sig2knockd.conf`` when run from the top of a sig2knock checkout, otherwise the system
    path ``/etc/sig2knock/sig2knockd.conf``.
    """
    in_checkout = os.path.isfile(REPOSITORY_CONFIG) and os.path.isfile(
        os.path.join("twisted", "plugins", "sig2knock_plugin.py")
    )
    return REPOSITORY_CONFIG if in_checkout else SYSTEM_CONFIG
