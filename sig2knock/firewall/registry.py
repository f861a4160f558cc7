"""
Which backend runs: ``FIREWALL`` from the configuration, ``auto`` being what this host has.
"""

from typing import Any, Tuple

from sig2knock.daemon.settings import Config
from sig2knock.firewall import FirewallError, FirewallSettings, IFirewall


def tool_available(name: str) -> bool:
    """
    Whether this host has the tool of backend ``name`` (``nftables`` or ``iptables``).
    """
    if name == "nftables":
        from sig2knock.firewall.nftables import NftablesFirewall

        return NftablesFirewall.available()
    if name == "iptables":
        from sig2knock.firewall.iptables import IptablesFirewall

        return IptablesFirewall.available()
    return False


def resolve_name(config: Config) -> Tuple[str, str]:
    """
    The backend's name for ``config`` and why it was chosen (for the start-up log). ``auto``
    takes nftables, then iptables, else none. Raises ``FirewallError`` when ``lockdown`` would
    end up with no firewall.
    """
    if config.firewall != "auto":
        return config.firewall, "FIREWALL"
    if tool_available("nftables"):
        return "nftables", "FIREWALL = auto: nft found"
    if tool_available("iptables"):
        return "iptables", "FIREWALL = auto: iptables found, no nft"
    if config.firewall_policy == "lockdown":
        raise FirewallError(
            "FIREWALL_POLICY = lockdown needs a firewall, and FIREWALL = auto found neither nft"
            " nor iptables; install nftables"
        )
    return "none", "FIREWALL = auto: neither nft nor iptables found"


def build_firewall(name: str, config: Config, interface: str, reactor: Any) -> IFirewall:
    """
    The backend ``name`` set up for ``config`` and the capture ``interface``.
    """
    settings = FirewallSettings(
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
    if name == "nftables":
        from sig2knock.firewall.nftables import NftablesFirewall

        return NftablesFirewall(reactor, settings)
    if name == "iptables":
        from sig2knock.firewall.iptables import IptablesFirewall

        return IptablesFirewall(reactor, settings)
    if name == "pktfilter":
        from sig2knock.firewall.pktfilter import PktFilterFirewall

        return PktFilterFirewall(reactor, settings)
    from sig2knock.firewall.null import NoFirewall

    return NoFirewall()
