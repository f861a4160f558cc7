"""
The nftables backend's scripts (pure functions, tested for their exact text): the daemon's table
``inet sig2knock`` with its base rules for each policy, its grants as elements of the sets
``grants4`` and ``grants6`` (source address . TCP port) with a timeout, and for
``FORWARD_MODE = nat`` the maps that DNAT a grant's first connection. ``sig2knock.firewall
.nftables`` runs each as one ``nft -f`` transaction.
"""

import ipaddress
import re
from typing import Any, List, Optional, Set, Tuple

from sig2knock.firewall import POLICIES, FirewallError, FirewallSettings
from sig2knock.protocol.addresses import IPAddress, unmapped

FAMILY = "inet"
TABLE = "sig2knock"
CHAIN = "input"
SET4 = "grants4"
SET6 = "grants6"

# nft 1.0.6 refuses a timeout written as more than 8 digits of "ms" ("value too large"); a grant
# that long (over 27 hours) is a bug anyway, so it is refused before nft is asked.
MAX_TIMEOUT_MS = 99_999_999
# Taken off every grant's timeout, for the time between writing the script and nft's commit.
GRANT_MARGIN_MS = 50

_HEADER = (
    "# Owned by sig2knock: this table is replaced whole every time the daemon starts and\n"
    "# removed by 'sig2knockd --flush'; changes made by hand are lost.\n"
    "# Creating it empty first makes the delete succeed when it does not exist yet; the whole\n"
    "# script is one transaction, so nothing is ever half-installed.\n"
)


def _table() -> str:
    return f"{FAMILY} {TABLE}"


def _check_port(port: Any, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise FirewallError(f"nftables: {what} {port!r} is not a port number (1-65535)")
    return port


def _address(source: Any) -> IPAddress:
    """
    ``source`` as an address nft reads: no IPv6 zone, IPv4-mapped IPv6 folded to IPv4 (such
    packets reach the input hook as IPv4).
    """
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        raise FirewallError(f"nftables: {source!r} is not an IP address") from None
    address = unmapped(address)
    if isinstance(address, ipaddress.IPv6Address):
        return ipaddress.IPv6Address(address.packed)  # without its zone
    return address


def _element(source: Any, port: int) -> Tuple[str, str]:
    """
    The set and the key for ``source`` and ``port``: ``("grants4", "198.18.0.2 . 45678")``.
    """
    address = _address(source)
    port = _check_port(port, "port")
    return (SET4 if address.version == 4 else SET6), f"{address} . {port}"


def _check_settings(settings: FirewallSettings) -> None:
    if settings.policy not in POLICIES:
        raise FirewallError(
            f"nftables: unknown policy {settings.policy!r} (expected one of {', '.join(POLICIES)})"
        )
    _check_port(settings.control_port, "control port")
    low, high = settings.port_range
    _check_port(low, "lowest assigned port")
    _check_port(high, "highest assigned port")
    if low > high:
        raise FirewallError(f"nftables: empty port range {low}-{high}")


# FORWARD_MODE = nat: the maps from a grant to the forward target, the conntrack mark of the
# connections the daemon DNAT'ed, and the prerouting chain that does it.
NAT4 = "forward4"
NAT6 = "forward6"
NAT_CHAIN = "prerouting"
NAT_MARK = "0x53324b00"


def _nat_rules(settings: FirewallSettings) -> List[str]:
    """
    The prerouting rules of nat mode: the first new connection of a grant that has a map entry
    deletes the grant (one connection, enforced by the kernel), marks the connection and DNATs it
    to the entry's target.
    """
    assert settings.nat_to is not None
    target, _ = settings.nat_to
    # Only grants with a map entry are forwarded in the kernel: the others (services in proxy
    # mode) go on to the input chain and the daemon's listener.
    if target.version == 4:
        return [
            f"ct state new ip saddr . tcp dport @{NAT4} ip saddr . tcp dport @{SET4}"
            f" delete @{SET4} {{ ip saddr . tcp dport }}"
            f" ct mark set {NAT_MARK} dnat ip to ip saddr . tcp dport map @{NAT4}"
        ]
    return [
        f"ct state new ip6 saddr . tcp dport @{NAT6} ip6 saddr . tcp dport @{SET6}"
        f" delete @{SET6} {{ ip6 saddr . tcp dport }}"
        f" ct mark set {NAT_MARK} dnat ip6 to ip6 saddr . tcp dport map @{NAT6}"
    ]


def _nat_input_rules(settings: FirewallSettings) -> List[str]:
    """
    The input rules of nat mode: connections the daemon DNAT'ed are let in; with a loopback
    target, nothing else from outside may reach 127.0.0.0/8 (route_localnet is on for it).
    """
    assert settings.nat_to is not None
    rules = []
    if settings.nat_loopback:
        rules += [
            "# route_localnet lets the DNAT'ed grants reach 127.0.0.1; nothing else from outside",
            f'iif != "lo" ip daddr 127.0.0.0/8 ct mark != {NAT_MARK} drop',
        ]
    rules.append(f"ct status dnat ct mark {NAT_MARK} accept")
    return rules


def render_ruleset(settings: FirewallSettings) -> str:
    """
    The ``nft -f`` script that replaces the daemon's table atomically (after a crash too).

    Policy ``ports``: only the assigned port range is gated; everything else is left to the
    host's other rules. Policy ``lockdown``: the input chain drops everything that is not
    loopback, an established flow, the control port, the ICMP and DHCP a host needs, or a grant.
    Knocks still reach the daemon: pcap sees packets before the input hook.
    """
    _check_settings(settings)
    low, high = settings.port_range
    ports = f"{low}-{high}"
    nat_input = _nat_input_rules(settings) if settings.nat_to is not None else []
    if settings.policy == "ports":
        policy = "accept"
        rules = nat_input + [
            f"tcp dport {ports} ct state established,related accept",
            f"tcp dport {ports} ip saddr . tcp dport @{SET4} accept",
            f"tcp dport {ports} ip6 saddr . tcp dport @{SET6} accept",
            "# drop, never reject: a scanner gets no RST, the port looks like nothing is there",
            f"tcp dport {ports} drop",
        ]
    else:
        policy = "drop"
        rules = nat_input + [
            'iif "lo" accept',
            "ct state established,related accept",
            "ct state invalid drop",
            f"udp dport {settings.control_port} accept",
            "# IPv6 does not work without neighbour discovery, router advertisements, MLD queries",
            "# (or a snooping switch stops forwarding our multicast) and path MTU discovery",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, nd-redirect,"
            " mld-listener-query, packet-too-big, destination-unreachable, time-exceeded,"
            " parameter-problem } accept",
            "# ICMP errors about our own flows are 'related' already; these few cover the rest,",
            "# no echo: the host stays silent",
            "icmp type { destination-unreachable, time-exceeded, parameter-problem } accept",
            "# DHCP replies: a server that gets its address by DHCP must keep it",
            "udp sport 67 udp dport 68 accept",
            "udp sport 547 udp dport 546 accept",
            f"ip saddr . tcp dport @{SET4} accept",
            f"ip6 saddr . tcp dport @{SET6} accept",
            "# everything else: the chain's policy drops it",
        ]
    # In nat mode the kernel deletes a grant at its first connection: the sets are dynamic.
    flags = "dynamic, timeout" if settings.nat_to is not None else "timeout"
    lines = [
        _HEADER.rstrip("\n"),
        f"table {_table()} {{}}",
        f"delete table {_table()}",
        f"table {_table()} {{",
        f"\tset {SET4} {{",
        f"\t\ttype ipv4_addr . inet_service; flags {flags};",
        "\t}",
        f"\tset {SET6} {{",
        f"\t\ttype ipv6_addr . inet_service; flags {flags};",
        "\t}",
    ]
    if settings.nat_to is not None:
        lines += [
            f"\tmap {NAT4} {{",
            "\t\ttype ipv4_addr . inet_service : ipv4_addr . inet_service; flags timeout;",
            "\t}",
            f"\tmap {NAT6} {{",
            "\t\ttype ipv6_addr . inet_service : ipv6_addr . inet_service; flags timeout;",
            "\t}",
            f"\tchain {NAT_CHAIN} {{",
            "\t\ttype nat hook prerouting priority dstnat - 10; policy accept;",
        ]
        lines.extend(f"\t\t{rule}" for rule in _nat_rules(settings))
        lines.append("\t}")
    lines += [
        f"\tchain {CHAIN} {{",
        f"\t\ttype filter hook input priority filter - 10; policy {policy};",
    ]
    lines.extend(f"\t\t{rule}" for rule in rules)
    lines.extend(["\t}", "}"])
    return "\n".join(lines) + "\n"


def render_grant(
    source: IPAddress,
    port: int,
    timeout_ms: int,
    nat_to: Optional[Tuple[IPAddress, int]] = None,
) -> str:
    """
    The script that lets ``source`` reach TCP ``port`` for ``timeout_ms`` milliseconds (whole
    milliseconds, rounded down by the caller; at least 1: nft reads a zero timeout as "never
    expires", so a grant whose deadline is past is refused). ``create`` fails when the element
    exists (it would keep its old timeout): then ``render_replace_grant`` is run instead.
    """
    _check_timeout(timeout_ms)
    name, key = _element(source, port)
    script = ""
    if nat_to is not None:
        map_name, value = _nat_value(source, nat_to)
        script += (
            f"create element {_table()} {map_name}"
            f" {{ {key} timeout {timeout_ms}ms : {value} }}\n"
        )
    return script + f"create element {_table()} {name} {{ {key} timeout {timeout_ms}ms }}\n"


def _check_timeout(timeout_ms: Any) -> None:
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int):
        raise FirewallError(f"nftables: timeout {timeout_ms!r} is not a whole number of ms")
    if timeout_ms < 1:
        raise FirewallError(f"nftables: grant deadline already past ({timeout_ms} ms); not opened")
    if timeout_ms > MAX_TIMEOUT_MS:
        raise FirewallError(
            f"nftables: grant of {timeout_ms} ms is longer than {MAX_TIMEOUT_MS} ms; not opened"
        )


def render_replace_grant(
    source: IPAddress,
    port: int,
    timeout_ms: int,
    nat_to: Optional[Tuple[IPAddress, int]] = None,
) -> str:
    """
    ``render_grant`` for when an element for the same address and port exists already (its
    ``create`` failed): it is replaced, not kept with its own timeout: ``add`` (a no-op if it
    exists), ``delete``, then ``add`` with the new timeout. A delete makes the kernel wait for
    a grace period, so this costs some 15 ms where a ``create`` costs 3: it is the fallback.
    """
    _check_timeout(timeout_ms)
    name, key = _element(source, port)
    script = ""
    if nat_to is not None:
        map_name, value = _nat_value(source, nat_to)
        script += _removal(map_name, key, f" : {value}")
        script += (
            f"add element {_table()} {map_name} {{ {key} timeout {timeout_ms}ms : {value} }}\n"
        )
    script += _removal(name, key)
    return script + f"add element {_table()} {name} {{ {key} timeout {timeout_ms}ms }}\n"


def _nat_value(source: IPAddress, nat_to: Tuple[IPAddress, int]) -> Tuple[str, str]:
    """
    The nat map for ``source``'s family and the target as its value; the target must be of
    the same family (the kernel translates no IPv6 connection to IPv4).
    """
    target, target_port = nat_to
    if _address(source).version != target.version:
        raise FirewallError(
            f"nftables: FORWARD_MODE = nat cannot forward an IPv{_address(source).version}"
            f" client to {target}; use FORWARD_MODE = proxy for both families"
        )
    return (NAT4 if target.version == 4 else NAT6), f"{target} . {target_port}"


def render_revoke(
    source: IPAddress, port: int, nat_to: Optional[Tuple[IPAddress, int]] = None
) -> str:
    """
    The script that removes the grant of ``source`` to ``port`` and nothing else. Deleting an
    element that is not there (it expired) makes nft fail, so it is first added with a 1 ms
    timeout (a no-op when it exists): the pair succeeds either way, in one transaction.
    """
    name, key = _element(source, port)
    script = _removal(name, key)
    if nat_to is not None:
        map_name, value = _nat_value(source, nat_to)
        script += _removal(map_name, key, f" : {value}")
    return script


def _removal(name: str, key: str, value: str = "") -> str:
    """
    The two lines that remove ``key`` from the set or map ``name`` whether it is there or not:
    added with a 1 ms timeout (a no-op when it exists), then deleted. ``value`` is a map's
    `` : VALUE``.
    """
    return (
        f"add element {_table()} {name} {{ {key} timeout 1ms{value} }}\n"
        f"delete element {_table()} {name} {{ {key} }}\n"
    )


def render_listing() -> str:
    """
    The script that lists the daemon's table (created empty first, so that a missing table
    lists as empty rather than failing).
    """
    return f"table {_table()} {{}}\nlist table {_table()}\n"


_ELEMENT_RE = re.compile(r"([0-9a-fA-F.:]+) \. ([0-9]+)")


def parse_grant_listing(output: str) -> Set[Tuple[IPAddress, int]]:
    """
    The (source, port) elements of the grant sets in ``nft``'s listing of the daemon's table
    (``render_listing``; the maps' elements are not grants).
    """
    found: Set[Tuple[IPAddress, int]] = set()
    inside = False
    for line in output.splitlines():
        stripped = line.strip()
        if stripped in (f"set {SET4} {{", f"set {SET6} {{"):
            inside = True
        elif inside and stripped == "}":
            inside = False
        elif inside:
            for address, port in _ELEMENT_RE.findall(stripped):
                try:
                    found.add((ipaddress.ip_address(address), int(port)))
                except ValueError:
                    continue
    return found


def render_flush() -> str:
    """
    The script that removes the daemon's table; succeeds when it is already gone.
    """
    return f"table {_table()} {{}}\ndelete table {_table()}\n"


def render_stop(settings: Optional[FirewallSettings] = None) -> str:
    """
    The script that removes every grant and keeps the base rules (the host stays closed).
    """
    script = f"flush set {_table()} {SET4}\nflush set {_table()} {SET6}\n"
    if settings is not None and settings.nat_to is not None:
        script += f"flush map {_table()} {NAT4}\nflush map {_table()} {NAT6}\n"
    return script
