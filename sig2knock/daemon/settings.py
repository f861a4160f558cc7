"""
Reading and validating ``sig2knockd.conf``: the seed's ``KEY = VALUE`` format, with the keys of
``sig2knock.daemon.schema`` (the reload is ``sig2knock.daemon.reload``).

Everything is checked before the daemon opens anything. Each problem is a ``ConfigError`` whose text
is one line naming the file, the line number and the key.
"""

import dataclasses
import os
import re
from typing import Any, Dict, Optional, Tuple

from sig2knock.daemon import values
from sig2knock.daemon.schema import BY_KEY, KNOWN_KEYS, REQUIRED, REQUIRED_KEYS, SCHEMA
from sig2knock.daemon.text import one_line
from sig2knock.firewall import FirewallSettings, registry


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


def _field(row: Any) -> Tuple[str, Any, Any]:
    if row.default is REQUIRED:
        return (row.attribute, Any)
    return (row.attribute, Any, dataclasses.field(default=row.default))


_fields = [_field(row) for row in SCHEMA]
# Required keys first: dataclass fields with defaults cannot come before those without.
_fields.sort(key=len)
Config = dataclasses.make_dataclass(
    "Config",
    [("path", str)]
    + _fields
    + [("lines", Dict[str, int], dataclasses.field(default_factory=dict, compare=False,
                                                   repr=False))],
    frozen=True,
)
Config.__module__ = __name__
Config.__doc__ = """
A validated configuration: ``path``, then an attribute per row of ``sig2knock.daemon.schema``
(``udp_port``, ``forward_to_ip``, ...), and ``lines``, the line each key was set on (for
messages about combinations). Paths are absolute; ``interface`` is ``None`` for "the interface
of the default route"; ``listen_address`` is ``None`` for every address (IPv4 and IPv6).
"""


def parse_config(text: str, path: str, interface: Optional[str] = None) -> Any:
    """
    Parse and validate the text of a configuration file read from ``path``.

    ``interface`` is the ``-i`` option, which overrides ``INTERFACE`` and ``PKTFILTER_INTERFACE``.
    Relative ``USERS_FILE`` and ``STATE_DIR`` are taken relative to the file's directory.
    """
    given: Dict[str, object] = {}
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
        row = BY_KEY.get(key)
        if row is None:
            raise ConfigError(
                path, number, key, f"unknown key (known keys: {', '.join(KNOWN_KEYS)})"
            )
        if key in lines:
            raise ConfigError(path, number, key, f"set again (first set on line {lines[key]})")
        if not value:
            raise ConfigError(path, number, key, "empty value (leave the key out for the default)")
        try:
            given[row.attribute] = row.parse(value)
        except values.BadValue as error:
            raise ConfigError(path, number, key, str(error)) from None
        lines[key] = number

    for key in REQUIRED_KEYS:
        if key not in lines:
            raise ConfigError(path, None, key, "required key is missing")

    if interface is not None:
        try:
            given["interface"] = values.interface(interface)
        except values.BadValue as error:
            raise ConfigError(path, None, "INTERFACE", f"-i {error}") from None
    elif "interface" not in given and "pktfilter_interface" in given:
        pktfilter_interface = given["pktfilter_interface"]
        assert isinstance(pktfilter_interface, str)
        if values.is_interface_name(pktfilter_interface):
            given["interface"] = pktfilter_interface

    directory = os.path.dirname(os.path.abspath(path))
    for attribute in ("users_file", "state_dir"):
        relative = given.get(attribute, BY_KEY[attribute.upper()].default)
        assert isinstance(relative, str)
        given[attribute] = os.path.normpath(os.path.join(directory, relative))

    config = Config(path=path, lines=lines, **given)
    check_combinations(config)
    return config


def check_combinations(config: Any) -> None:
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


def firewall_settings(config: Any, interface: str) -> FirewallSettings:
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


def load_config(path: str, interface: Optional[str] = None) -> Any:
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
    ``etc/sig2knockd.conf`` when run from the top of the sig2knock checkout this code itself
    comes from (the Quick start's editable install), otherwise the system path
    ``/etc/sig2knock/sig2knockd.conf``. An installed daemon never takes the configuration of a
    checkout it merely runs in: root running it from someone else's checkout would run on their
    settings.
    """
    in_checkout = os.path.isfile(REPOSITORY_CONFIG) and os.path.isfile(
        os.path.join("twisted", "plugins", "sig2knock_plugin.py")
    )
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # sig2knock/
    if in_checkout and _same_file(package, "sig2knock"):
        return REPOSITORY_CONFIG
    return SYSTEM_CONFIG


def _same_file(one: str, other: str) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False
