"""
The iptables backend's settings under test and the exact chains they must give, shared by the
rendering tests and the backend's tests.
"""

import calendar
import ipaddress
from typing import List

from sig2knock.firewall import FirewallSettings


PORTS = FirewallSettings(control_port=1001, port_range=(40000, 40100), policy="ports")
LOCKDOWN = FirewallSettings(control_port=1001, port_range=(40000, 40100), policy="lockdown")
# 2030-01-02T03:04:05Z: the tests' clock, in seconds since the epoch
T0 = calendar.timegm((2030, 1, 2, 3, 4, 5))
ALICE4 = ipaddress.ip_address("192.0.2.7")
ALICE6 = ipaddress.ip_address("2001:db8::7")

PORTS_CHAIN = """\
*filter
:SIG2KNOCK - [0:0]
-A SIG2KNOCK -p tcp --dport 40000:40100 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A SIG2KNOCK -p tcp --dport 40000:40100 -j DROP
-I INPUT 1 -j SIG2KNOCK
COMMIT
"""

LOCKDOWN_CHAIN4 = """\
*filter
:SIG2KNOCK - [0:0]
-A SIG2KNOCK -i lo -j ACCEPT
-A SIG2KNOCK -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A SIG2KNOCK -p icmp --icmp-type destination-unreachable -j ACCEPT
-A SIG2KNOCK -p icmp --icmp-type time-exceeded -j ACCEPT
-A SIG2KNOCK -p icmp --icmp-type parameter-problem -j ACCEPT
-A SIG2KNOCK -m conntrack --ctstate INVALID -j DROP
-A SIG2KNOCK -p udp --dport 1001 -j ACCEPT
-A SIG2KNOCK -p udp --sport 67 --dport 68 -j ACCEPT
-A SIG2KNOCK -j DROP
-I INPUT 1 -j SIG2KNOCK
COMMIT
"""

LOCKDOWN_CHAIN6 = """\
*filter
:SIG2KNOCK - [0:0]
-A SIG2KNOCK -i lo -j ACCEPT
-A SIG2KNOCK -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type destination-unreachable -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type packet-too-big -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type time-exceeded -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type parameter-problem -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type router-advertisement -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type neighbour-solicitation -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type neighbour-advertisement -j ACCEPT
-A SIG2KNOCK -p ipv6-icmp --icmpv6-type redirect -j ACCEPT
-A SIG2KNOCK -m conntrack --ctstate INVALID -j DROP
-A SIG2KNOCK -p udp --dport 1001 -j ACCEPT
-A SIG2KNOCK -p udp --sport 547 --dport 546 -j ACCEPT
-A SIG2KNOCK -j DROP
-I INPUT 1 -j SIG2KNOCK
COMMIT
"""

LOOPBACK = (ipaddress.ip_address("127.0.0.1"), 22)
NAT_LOCKDOWN = FirewallSettings(1001, (40000, 40100), policy="lockdown", nat_to=LOOPBACK)
NAT_PORTS = FirewallSettings(1001, (40000, 40100), policy="ports", nat_to=LOOPBACK)
CLIENT = ipaddress.ip_address("198.18.0.2")


def grant_spec(address: str, port: int, stop: str) -> List[str]:
    """
    The rule specification of one grant of ``port`` to ``address`` until ``stop`` (a datestop).
    """
    prefix = "128" if ":" in address else "32"
    return [
        "-s",
        f"{address}/{prefix}",
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
        stop,
        "-m",
        "comment",
        "--comment",
        "sig2knock grant",
        "-j",
        "ACCEPT",
    ]
