"""
Reloading on SIGHUP: which settings a running daemon can take over at once, and which wait for a
restart (they are bound to open sockets, the capture, the firewall rules or the replay cache).
"""

import dataclasses
from typing import List, Tuple

from sig2knock.daemon.settings import Config, check_combinations

# Key -> Config attribute, for the settings a reload cannot change.
RESTART_ONLY = {
    "UDP_PORT": "udp_port",
    "LISTEN_ADDRESS": "listen_address",
    "INTERFACE": "interface",
    "INTERFACE_WAIT": "interface_wait",
    "FIREWALL": "firewall",
    "FORWARD_MODE": "forward_mode",
    "FIREWALL_POLICY": "firewall_policy",
    "ASSIGN_PORT_RANGE": "assign_port_range",
    "KNOCK_PROTO": "knock_proto",
    "MAX_CLOCK_SKEW": "max_clock_skew",
    "STATE_DIR": "state_dir",
}
FORWARD_TARGET = {"FORWARD_TO_IP": "forward_to_ip", "FORWARD_TO_PORT": "forward_to_port"}
# Key -> Config attribute, for the settings a reload applies to new sessions at once.
LIVE = {
    "FORWARD_TO_IP": "forward_to_ip",
    "FORWARD_TO_PORT": "forward_to_port",
    "SINGLECONN_PORTOPEN_TIME": "singleconn_portopen_time",
    "KNOCK_COUNT": "knock_count",
    "KNOCK_TIMEOUT": "knock_timeout",
    "USERS_FILE": "users_file",
}


def merge(running: Config, loaded: Config) -> Tuple[Config, List[str], List[str]]:
    """
    The configuration to run with after a reload: ``loaded``, but with the restart-only settings
    of ``running``. Also returns the keys whose change applies now and those that wait for a
    restart. Raises ``ConfigError`` when the mix does not hold together.
    """
    restart_only = dict(RESTART_ONLY)
    if running.forward_mode == "nat":
        # The forward target is in the firewall's DNAT rules, set up at start.
        restart_only.update(FORWARD_TARGET)
    live = {key: attr for key, attr in LIVE.items() if key not in restart_only}
    applied = [key for key, attr in live.items() if getattr(running, attr) != getattr(loaded, attr)]
    pending = [
        key for key, attr in restart_only.items() if getattr(running, attr) != getattr(loaded, attr)
    ]
    kept = {attr: getattr(running, attr) for attr in restart_only.values()}
    merged = dataclasses.replace(loaded, **kept)
    # The mix of new and kept settings must hold together as a file would (say, a new
    # FORWARD_TO_PORT inside the ASSIGN_PORT_RANGE still in force).
    check_combinations(merged)
    return merged, applied, pending
