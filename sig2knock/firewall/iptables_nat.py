"""
``FORWARD_MODE = nat`` for the iptables backend: the rules that DNAT a grant's one connection
straight to the forward target, rendered as iptables arguments (pure functions; the backend in
``sig2knock.firewall.iptables`` runs them).

A grant is two rules in the daemon's chain ``SIG2KNOCK_NAT`` of the ``nat`` table, jumped to from
``PREROUTING``: the first connection from the source to the port is DNAT'ed and recorded in an
``xt_recent`` list of its own; any later one finds itself in that list and is left alone, so the
filter chain drops it (one connection, enforced by the kernel). The DNAT rule carries the grant's
``--datestop``, so the kernel stops forwarding at the deadline even if the daemon is killed. The
filter chain lets DNAT'ed connections in by their original port, and with a loopback target
drops every other packet from outside to 127.0.0.0/8 (``route_localnet`` is on for it).
"""

import ipaddress
from typing import List, Tuple

from sig2knock.firewall import FirewallSettings
from sig2knock.protocol.addresses import IPAddress

NAT_CHAIN = "SIG2KNOCK_NAT"
NAT_JUMP = f"-A PREROUTING -j {NAT_CHAIN}"  # as ``iptables -t nat -S`` prints it
NAT_COMMENT = "sig2knock nat grant"


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
    if settings.nat_to[0].is_loopback:
        rules.append(
            "-A SIG2KNOCK ! -i lo -d 127.0.0.0/8 -m conntrack ! --ctstate DNAT -j DROP"
        )
    rules.append(
        f"-A SIG2KNOCK -p tcp -m conntrack --ctstate DNAT --ctorigdstport {ports} -j ACCEPT"
    )
    return rules


def render_nat_chain(stale_jumps: int) -> str:
    """
    The ``iptables-restore --noflush`` script that (re)installs the nat chain and its one jump.
    """
    lines = ["*nat", f":{NAT_CHAIN} - [0:0]"]
    lines += [f"-D PREROUTING -j {NAT_CHAIN}"] * stale_jumps
    lines += [f"-I PREROUTING 1 -j {NAT_CHAIN}", "COMMIT"]
    return "\n".join(lines) + "\n"


def render_nat_flush(stale_jumps: int, chain_exists: bool) -> str:
    """
    The script that removes the nat chain and its jumps.
    """
    lines = ["*nat"]
    if chain_exists:
        lines.append(f":{NAT_CHAIN} - [0:0]")
    lines += [f"-D PREROUTING -j {NAT_CHAIN}"] * stale_jumps
    if chain_exists:
        lines.append(f"-X {NAT_CHAIN}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def count_nat_jumps(listing: bytes) -> Tuple[int, bool]:
    """
    From ``iptables -t nat -S``: how many of our jumps there are, and whether our chain exists.
    """
    lines = [line.strip() for line in listing.decode("utf-8", "replace").splitlines()]
    return lines.count(NAT_JUMP), f"-N {NAT_CHAIN}" in lines


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
