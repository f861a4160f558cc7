"""
Reloading on SIGHUP: which settings a running daemon can take over at once, and which wait for a
restart (they are bound to open sockets, the capture, the firewall rules or the replay cache).
"""

import dataclasses
from typing import List, Tuple

from sig2knock.config import Config

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
    restart.
    """
    applied = [key for key, attr in LIVE.items() if getattr(running, attr) != getattr(loaded, attr)]
    pending = [
        key for key, attr in RESTART_ONLY.items() if getattr(running, attr) != getattr(loaded, attr)
    ]
    kept = {attr: getattr(running, attr) for attr in RESTART_ONLY.values()}
    return dataclasses.replace(loaded, **kept), applied, pending
