"""
The iptables backend's rules, rendered as ``iptables-restore`` scripts and iptables arguments
(pure functions; ``sig2knock.firewall.iptables`` runs them): the filter chain ``SIG2KNOCK`` with
its base rules for each policy, a grant's rule with its ``--datestop``, and for
``FORWARD_MODE = nat`` the rules that DNAT a grant's one connection straight to the forward
target. Installing and removing a chain with its jump is one script, for either table.

In nat mode a grant is two rules in the daemon's chain ``SIG2KNOCK_NAT`` of the ``nat`` table,
jumped to from ``PREROUTING``: the first connection from the source to the port is DNAT'ed and
recorded in an ``xt_recent`` list of its own; any later one finds itself in that list and is left
alone, so the filter chain drops it (one connection, enforced by the kernel). The DNAT rule carries
the grant's ``--datestop``, so the kernel stops forwarding at the deadline even if the daemon is
killed. The filter chain lets DNAT'ed connections in by their original port, and with a loopback
target drops every other packet from outside to 127.0.0.0/8 (``route_localnet`` is on for it).
"""

import ipaddress
import math
import time
from typing import List, Tuple

from sig2knock.firewall import FirewallSettings
from sig2knock.protocol.addresses import IPAddress

NAT_CHAIN = "SIG2KNOCK_NAT"
NAT_JUMP = f"-A PREROUTING -j {NAT_CHAIN}"  # as ``iptables -t nat -S`` prints it
NAT_COMMENT = "sig2knock nat grant"


CHAIN = "SIG2KNOCK"
JUMP = f"-A INPUT -j {CHAIN}"  # our jump as ``iptables -S`` prints it
GRANT_COMMENT = "sig2knock grant"

# ICMP needed for IPv4 to keep working (path MTU discovery, traceroute, errors).
_ICMP4_TYPES = ("destination-unreachable", "time-exceeded", "parameter-problem")
# ICMPv6 without which IPv6 does not work at all (neighbour discovery, routers, PMTU, errors).
_ICMP6_TYPES = (
    "destination-unreachable",
    "packet-too-big",
    "time-exceeded",
    "parameter-problem",
    "router-advertisement",
    "neighbour-solicitation",
    "neighbour-advertisement",
    "redirect",
)

def _ports(settings: FirewallSettings) -> str:
    low, high = settings.port_range
    return str(low) if low == high else f"{low}:{high}"


def render_rules(settings: FirewallSettings, family: int) -> List[str]:
    """
    The base rules of the chain for ``settings`` and address ``family`` (4 or 6), as
    ``-A SIG2KNOCK ...`` lines in order.
    """
    if family not in (4, 6):
        raise ValueError(f"address family must be 4 or 6, not {family!r}")
    add = f"-A {CHAIN}"
    established = "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
    nat = nat_filter_rules(settings, family)
    if settings.policy == "ports":
        # Only the assigned range is gated; everything else falls off the end of the chain
        # (an implicit RETURN) into the host's own INPUT rules. DROP, not REJECT: no RST.
        ports = _ports(settings)
        return nat + [
            f"{add} -p tcp --dport {ports} {established}",
            f"{add} -p tcp --dport {ports} -j DROP",
        ]
    if settings.policy != "lockdown":
        raise ValueError(f"unknown firewall policy {settings.policy!r}")
    rules = nat + [f"{add} -i lo -j ACCEPT", f"{add} {established}"]
    # ICMP comes before the INVALID drop: conntrack leaves neighbour discovery untracked or
    # INVALID, and an error unrelated to any connection is INVALID too.
    if family == 4:
        rules += [f"{add} -p icmp --icmp-type {name} -j ACCEPT" for name in _ICMP4_TYPES]
    else:
        rules += [f"{add} -p ipv6-icmp --icmpv6-type {name} -j ACCEPT" for name in _ICMP6_TYPES]
    rules += [
        f"{add} -m conntrack --ctstate INVALID -j DROP",
        f"{add} -p udp --dport {settings.control_port} -j ACCEPT",
        # DHCP replies (the host may need its lease renewed while locked down).
        f"{add} -p udp --sport 67 --dport 68 -j ACCEPT"
        if family == 4
        else f"{add} -p udp --sport 547 --dport 546 -j ACCEPT",
        # Knocks are still seen: pcap taps packets before netfilter drops them.
        f"{add} -j DROP",
    ]
    return rules


def _install_script(
    table: str, hook: str, chain: str, stale_jumps: int, rules: List[str]
) -> str:
    """
    The ``iptables-restore --noflush`` script that (re)installs ``chain`` of ``table``: declares
    and so empties it, deletes ``stale_jumps`` leftover jumps to it from ``hook``, adds
    ``rules`` and the one jump at the top of ``hook``. One transaction: all or nothing.
    """
    lines = [f"*{table}", f":{chain} - [0:0]"]
    lines += [f"-D {hook} -j {chain}"] * stale_jumps
    lines += rules
    lines += [f"-I {hook} 1 -j {chain}", "COMMIT"]
    return "\n".join(lines) + "\n"


def _removal_script(
    table: str, hook: str, chain: str, stale_jumps: int, chain_exists: bool
) -> str:
    """
    The ``iptables-restore --noflush`` script that removes ``stale_jumps`` jumps from ``hook``
    and, when it exists, ``chain`` (emptied first).
    """
    lines = [f"*{table}"]
    if chain_exists:
        lines.append(f":{chain} - [0:0]")
    lines += [f"-D {hook} -j {chain}"] * stale_jumps
    if chain_exists:
        lines.append(f"-X {chain}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _count(listing: bytes, jump: str, chain: str) -> Tuple[int, bool]:
    """
    From an ``iptables -S`` listing: how many times ``jump`` is there, and whether ``chain``
    exists.
    """
    lines = [line.strip() for line in listing.decode("utf-8", "replace").splitlines()]
    return lines.count(jump), f"-N {chain}" in lines


def render_chain(settings: FirewallSettings, family: int, stale_jumps: int = 0) -> str:
    """
    The script that (re)installs ``SIG2KNOCK`` for ``family``, its base rules and its jump at the
    top of ``INPUT``, deleting ``stale_jumps`` leftover jumps.
    """
    return _install_script("filter", "INPUT", CHAIN, stale_jumps, render_rules(settings, family))


def render_flush(stale_jumps: int, chain_exists: bool) -> str:
    """
    The script that removes ``stale_jumps`` jumps to ``SIG2KNOCK`` and, when it exists, the chain.
    """
    return _removal_script("filter", "INPUT", CHAIN, stale_jumps, chain_exists)


def datestop(deadline: float) -> str:
    """
    The ``--datestop`` value that ends a grant by ``deadline`` (seconds since the epoch).

    ``xt_time`` compares whole UTC seconds and still matches *during* the datestop second
    (``stamp > date_stop`` is the test; measured with iptables 1.8.9), so the last second
    allowed is the one that ends at or before the deadline: ``floor(deadline) - 1``.
    """
    last = math.floor(deadline) - 1
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(last))


def render_grant_args(source: IPAddress, port: int, deadline: float) -> List[str]:
    """
    The rule specification (without ``-I``/``-D`` and chain) of the grant that lets ``source``
    open new TCP connections to ``port`` until ``deadline``.
    """
    address = ipaddress.ip_address(str(source))
    return [
        "-s",
        f"{address}/{address.max_prefixlen}",
        "-p",
        "tcp",
        "--dport",
        str(port),
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
        "-m",
        "time",
        "--datestop",
        datestop(deadline),
        "-m",
        "comment",
        "--comment",
        GRANT_COMMENT,
        "-j",
        "ACCEPT",
    ]


def count_filter_jumps(listing: bytes) -> Tuple[int, bool]:
    """
    From ``iptables -t filter -S``: how many of our jumps there are, and whether our chain
    exists.
    """
    return _count(listing, JUMP, CHAIN)


def recent_list(port: int) -> str:
    """
    The ``xt_recent`` list that remembers who used the grant of ``port``.
    """
    return f"sig2knock_{port}"


def nat_filter_rules(settings: FirewallSettings, family: int) -> List[str]:
    """
    The rules at the top of the filter chain ``SIG2KNOCK`` in nat mode, for ``family``.
    """
    if settings.nat_to is None or settings.nat_to[0].version != family:
        return []
    low, high = settings.port_range
    ports = str(low) if low == high else f"{low}:{high}"
    rules = []
    if settings.nat_loopback:
        rules.append(
            "-A SIG2KNOCK ! -i lo -d 127.0.0.0/8 -m conntrack ! --ctstate DNAT -j DROP"
        )
    rules.append(
        f"-A SIG2KNOCK -p tcp -m conntrack --ctstate DNAT --ctorigdstport {ports} -j ACCEPT"
    )
    return rules


def render_nat_chain(stale_jumps: int) -> str:
    """
    The script that (re)installs the nat chain (its rules are the grants) and its one jump.
    """
    return _install_script("nat", "PREROUTING", NAT_CHAIN, stale_jumps, [])


def render_nat_flush(stale_jumps: int, chain_exists: bool) -> str:
    """
    The script that removes the nat chain and its jumps.
    """
    return _removal_script("nat", "PREROUTING", NAT_CHAIN, stale_jumps, chain_exists)


def count_nat_jumps(listing: bytes) -> Tuple[int, bool]:
    """
    From ``iptables -t nat -S``: how many of our jumps there are, and whether our chain exists.
    """
    return _count(listing, NAT_JUMP, NAT_CHAIN)


def render_nat_grant_specs(
    source: IPAddress, port: int, datestop: str, target: Tuple[IPAddress, int]
) -> Tuple[List[str], List[str]]:
    """
    The two rule specifications of a nat grant, in chain order: the one that leaves a second
    connection alone, and the one that DNATs the first.
    """
    address = ipaddress.ip_address(str(source))
    match = ["-s", f"{address}/{address.max_prefixlen}", "-p", "tcp", "--dport", str(port)]
    recent = ["-m", "recent", "--name", recent_list(port)]
    once = match + recent + ["--rcheck", "--rsource", "-j", "RETURN"]
    host, target_port = target
    destination = f"[{host}]:{target_port}" if host.version == 6 else f"{host}:{target_port}"
    dnat = (
        match
        + ["-m", "time", "--datestop", datestop]
        + recent
        + ["--set", "--rsource", "-m", "comment", "--comment", NAT_COMMENT]
        + ["-j", "DNAT", "--to-destination", destination]
    )
    return once, dnat
