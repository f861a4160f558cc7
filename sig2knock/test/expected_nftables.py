"""
The nftables backend's settings under test and the exact rulesets they must give, shared by the
rendering tests, the backend's tests and the kernel tests in tests/test_nftables.py.
"""

import ipaddress

from sig2knock.firewall import FirewallSettings


PORTS = FirewallSettings(control_port=1001, port_range=(40000, 49999))
LOCKDOWN = FirewallSettings(control_port=1001, port_range=(40000, 49999), policy="lockdown")
V4 = ipaddress.ip_address("198.18.0.2")
V6 = ipaddress.ip_address("2001:db8::2")

HEADER = (
    "# Owned by sig2knock: this table is replaced whole every time the daemon starts and\n"
    "# removed by 'sig2knockd --flush'; changes made by hand are lost.\n"
    "# Creating it empty first makes the delete succeed when it does not exist yet; the whole\n"
    "# script is one transaction, so nothing is ever half-installed.\n"
    "table inet sig2knock {}\n"
    "delete table inet sig2knock\n"
    "table inet sig2knock {\n"
    "\tset grants4 {\n"
    "\t\ttype ipv4_addr . inet_service; flags timeout;\n"
    "\t}\n"
    "\tset grants6 {\n"
    "\t\ttype ipv6_addr . inet_service; flags timeout;\n"
    "\t}\n"
)

PORTS_RULESET = HEADER + (
    "\tchain input {\n"
    "\t\ttype filter hook input priority filter - 10; policy accept;\n"
    "\t\ttcp dport 40000-49999 ct state established,related accept\n"
    "\t\ttcp dport 40000-49999 ip saddr . tcp dport @grants4 accept\n"
    "\t\ttcp dport 40000-49999 ip6 saddr . tcp dport @grants6 accept\n"
    "\t\t# drop, never reject: a scanner gets no RST, the port looks like nothing is there\n"
    "\t\ttcp dport 40000-49999 drop\n"
    "\t}\n"
    "}\n"
)

LOCKDOWN_RULESET = HEADER + (
    "\tchain input {\n"
    "\t\ttype filter hook input priority filter - 10; policy drop;\n"
    '\t\tiif "lo" accept\n'
    "\t\tct state established,related accept\n"
    "\t\tct state invalid drop\n"
    "\t\tudp dport 1001 accept\n"
    "\t\t# IPv6 does not work without neighbour discovery, router advertisements, MLD queries\n"
    "\t\t# (or a snooping switch stops forwarding our multicast) and path MTU discovery\n"
    "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, nd-redirect,"
    " mld-listener-query, packet-too-big, destination-unreachable, time-exceeded,"
    " parameter-problem } accept\n"
    "\t\t# ICMP errors about our own flows are 'related' already; these few cover the rest,\n"
    "\t\t# no echo: the host stays silent\n"
    "\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem } accept\n"
    "\t\t# DHCP replies: a server that gets its address by DHCP must keep it\n"
    "\t\tudp sport 67 udp dport 68 accept\n"
    "\t\tudp sport 547 udp dport 546 accept\n"
    "\t\tip saddr . tcp dport @grants4 accept\n"
    "\t\tip6 saddr . tcp dport @grants6 accept\n"
    "\t\t# everything else: the chain's policy drops it\n"
    "\t}\n"
    "}\n"
)

NAT_TO = (ipaddress.ip_address("127.0.0.1"), 22)
NAT_LOCKDOWN = FirewallSettings(1001, (40000, 49999), policy="lockdown", nat_to=NAT_TO)
