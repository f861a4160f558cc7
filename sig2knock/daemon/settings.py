"""
Reading and validating ``sig2knockd.conf``: the seed's ``KEY = VALUE`` format, with the keys of
``sig2knock.daemon.schema`` (the reload is ``sig2knock.daemon.reload``).

Everything is checked before the daemon opens anything. Each problem is a ``ConfigError`` whose text
is one line naming the file, the line number and the key.
"""

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from sig2knock.daemon import values
from sig2knock.daemon.catalog import Catalog, CatalogError, HiddenService
from sig2knock.daemon.schema import (
    BY_KEY,
    KNOWN_KEYS,
    REQUIRED,
    REQUIRED_KEYS,
    SCHEMA,
    SECTION_SCHEMAS,
)
from sig2knock.daemon.text import one_line
from sig2knock.firewall import FirewallSettings, registry
from sig2knock.protocol.names import DEFAULT_SERVICE, ServiceNameError, check_service_name


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
                                                   repr=False)),
       ("catalog", Any, dataclasses.field(default=None))],
    frozen=True,
)
Config.__module__ = __name__
Config.__doc__ = """
A validated configuration: ``path``, then an attribute per row of ``sig2knock.daemon.schema``
(``udp_port``, ``forward_to_ip``, ...), and ``lines``, the line each key was set on (for
messages about combinations), and ``catalog``, the services offered (``Catalog``: the default
one of the ``FORWARD_TO_*`` keys, the ``[service NAME]`` sections, the ``[group NAME]`` ones).
Paths are absolute; ``interface`` is ``None`` for "the interface of the default route";
``listen_address`` is ``None`` for every address (IPv4 and IPv6).
"""


def parse_config(text: str, path: str, interface: Optional[str] = None) -> Any:
    """
    Parse and validate the text of a configuration file read from ``path``.

    ``interface`` is the ``-i`` option, which overrides ``INTERFACE`` and ``PKTFILTER_INTERFACE``.
    Relative ``USERS_FILE`` and ``STATE_DIR`` are taken relative to the file's directory.
    """
    given: Dict[str, object] = {}
    lines: Dict[str, int] = {}
    sections: List[Section] = []
    # Split on newlines only (not splitlines()), so line numbers are the ones an editor shows.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append(_section_header(path, number, line, sections))
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip().upper(), value.strip()
        if not equals or not key:
            raise ConfigError(path, number, None, "expected a line of the form KEY = VALUE")
        if sections:
            sections[-1].take(path, number, key, value)
            continue
        row = BY_KEY.get(key)
        if row is None:
            raise ConfigError(
                path, number, key, f"unknown key (known keys: {', '.join(KNOWN_KEYS)})"
            )
        if key in lines:
            raise ConfigError(path, number, key, f"set again (first set on line {lines[key]})")
        given[row.attribute] = _parsed(path, number, row, value)
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
    config = dataclasses.replace(config, catalog=_catalog(config, sections))
    check_combinations(config)
    return config


def _parsed(path: str, number: int, row: Any, value: str) -> Any:
    if not value:
        raise ConfigError(path, number, row.key, "empty value (leave the key out for the default)")
    try:
        return row.parse(value)
    except values.BadValue as error:
        raise ConfigError(path, number, row.key, str(error)) from None


class Section:
    """
    A ``[service NAME]`` or ``[group NAME]`` section as read: its ``kind``, ``name``, the line
    of its header and its values (attribute -> value, with the line of each key).
    """

    def __init__(self, kind: str, name: str, line: int) -> None:
        self.kind, self.name, self.line = kind, name, line
        self.rows = {row.key: row for row in SECTION_SCHEMAS[kind]}
        self.values: Dict[str, Any] = {}
        self.lines: Dict[str, int] = {}

    @property
    def title(self) -> str:
        """
        Its header, as written: ``[service rdp]``.
        """
        return f"[{self.kind} {self.name}]"

    def take(self, path: str, number: int, key: str, value: str) -> None:
        """
        Read the line ``key = value`` of this section.
        """
        row = self.rows.get(key)
        if row is None:
            known = f"(its keys: {', '.join(self.rows)})"
            if key in BY_KEY:
                raise ConfigError(path, number, key, f"not a key of {self.title} {known}; the"
                                  " top-level keys go above the first [section]")
            raise ConfigError(path, number, key, f"unknown key in {self.title} {known}")
        if key in self.lines:
            raise ConfigError(path, number, key, f"set again in {self.title} (first set on"
                              f" line {self.lines[key]})")
        self.values[row.attribute] = _parsed(path, number, row, value)
        self.lines[key] = number

    def finish(self, path: str) -> Dict[str, Any]:
        """
        Its values, with the defaults of the keys left out; raises ``ConfigError`` for a missing
        required key.
        """
        for key, row in self.rows.items():
            if row.default is REQUIRED and key not in self.lines:
                raise ConfigError(path, self.line, key, f"required in {self.title}")
        return {row.attribute: self.values.get(row.attribute, row.default)
                for row in self.rows.values()}


_SECTION_RE = re.compile(r"\[\s*(\S+)\s+(\S+)\s*\]")


def _section_header(path: str, number: int, line: str, sections: List[Section]) -> Section:
    match = _SECTION_RE.fullmatch(line)
    if match is None or match.group(1).lower() not in SECTION_SCHEMAS:
        raise ConfigError(path, number, None, "expected a section header [service NAME] or"
                          " [group NAME]")
    kind, name = match.group(1).lower(), match.group(2)
    try:
        check_service_name(name)
    except ServiceNameError as error:
        raise ConfigError(path, number, None, f"[{kind} {name}]: {error}") from None
    for earlier in sections:
        if (earlier.kind, earlier.name) == (kind, name):
            raise ConfigError(path, number, None, f"[{kind} {name}] again (first on line"
                              f" {earlier.line})")
    return Section(kind, name, number)


def _catalog(config: Any, sections: List[Section]) -> Catalog:
    """
    The services and groups of ``config`` and its sections.
    """
    default = HiddenService(
        DEFAULT_SERVICE, config.forward_to_ip, config.forward_to_port,
        config.singleconn_portopen_time, config.allow,
    )
    named, groups = [], {}
    for section in sections:
        found = section.finish(config.path)
        if section.kind == "group":
            groups[section.name] = found["users"]
            continue
        open_time = found["open_time"]
        named.append(HiddenService(
            section.name, found["forward_to_ip"], found["forward_to_port"],
            config.singleconn_portopen_time if open_time is None else open_time,
            found["allow"], forward_mode=found["forward_mode"], line=section.line,
        ))
    try:
        return Catalog.build(default, named, groups)
    except CatalogError as error:
        line = error.line if error.line is not None else config.lines.get(error.key)
        raise ConfigError(config.path, line, error.key, error.message) from None


def check_combinations(config: Any) -> None:
    """
    Refuse settings that cannot work together; raises ``ConfigError`` naming the key.
    """
    low, high = config.assign_port_range

    def fail(key: str, message: str) -> None:
        raise ConfigError(config.path, config.lines.get(key), key, message)

    if low <= config.udp_port <= high:
        fail("UDP_PORT", f"{config.udp_port} lies inside ASSIGN_PORT_RANGE {low}-{high}")
    for service in _services(config):
        _check_service(config, service, fail)
    backend = registry.BACKENDS.get(config.firewall)  # None for auto
    if config.firewall_policy == "lockdown" and backend is not None and not backend.gates:
        fail("FIREWALL_POLICY", f"lockdown needs a firewall, but FIREWALL is {config.firewall}")


def _nat_services(config: Any) -> List[HiddenService]:
    return [service for service in _services(config) if service.nat_in(config)]


def _services(config: Any) -> List[HiddenService]:
    return list(config.catalog.services.values())


def _check_service(config: Any, service: HiddenService, fail: Any) -> None:
    """
    Refuse a service whose target cannot work with the other settings.
    """
    low, high = config.assign_port_range
    where = f"[service {service.name}] " if service.name else ""

    def refuse(key: str, message: str) -> None:
        if service.name:
            raise ConfigError(config.path, service.line, key, where + message)
        fail(key, message)

    address, port = service.target
    if address.is_loopback and low <= port <= high:
        refuse("FORWARD_TO_PORT", f"{port} on {address} lies inside ASSIGN_PORT_RANGE"
               f" {low}-{high}")
    if not service.nat_in(config):
        return
    backend = registry.BACKENDS.get(config.firewall)  # None for auto
    if backend is not None and not backend.nat:
        kernel = " or ".join(name for name, row in registry.BACKENDS.items() if row.nat)
        refuse("FORWARD_MODE", f"nat needs FIREWALL = {kernel}, not {config.firewall}")
    if address.version == 6 and address.is_loopback:
        refuse("FORWARD_MODE", "nat cannot forward to ::1 (the kernel routes no IPv6 loopback"
               " from outside); use FORWARD_MODE = proxy or another FORWARD_TO_IP")
    first, _ = _nat_services(config)[0].target
    if address.version != first.version:
        refuse("FORWARD_TO_IP", f"FORWARD_MODE = nat forwards one address family: {address} is"
               f" not IPv{first.version} like {first}, the first target in nat mode")


def firewall_settings(config: Any, interface: str) -> FirewallSettings:
    """
    What the firewall backend needs of ``config``, with the capture ``interface``: with
    services in nat mode, the first one's target (its address family is the kernel's) and the
    other ones' addresses.
    """
    nat = _nat_services(config)
    return FirewallSettings(
        control_port=config.udp_port,
        port_range=config.assign_port_range,
        policy=config.firewall_policy,
        interface=interface,
        nat_to=nat[0].target if nat else None,
        nat_also=tuple(service.forward_to_ip for service in nat[1:]),
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
