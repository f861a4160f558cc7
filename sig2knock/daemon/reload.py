"""
The reload (SIGHUP): ``LiveSettings``, the settings in force in one place, and ``merge``, which
decides what of a configuration read again applies now and what waits for a restart.
"""

import dataclasses
from typing import Any, List, Optional, Tuple

from twisted.logger import Logger

from sig2knock.daemon.schema import LIVE_UNLESS_NAT, RESTART, SCHEMA
from sig2knock.daemon.settings import ConfigError, check_combinations, load_config
from sig2knock.daemon.users import UsersError, load_users


class LiveSettings:
    """
    The settings in force, in one place: the configuration (``config``) and the users
    (``users``). Components read them whenever they need a setting or a key, so that a reload
    (``reload``, or ``replace``) reaches them all at once.
    """

    log = Logger()

    def __init__(self, config: Any, users: Any) -> None:
        self.config = config
        self.users = users

    def replace(self, config: Any, users: Any) -> None:
        """
        Put ``config`` and ``users`` in force.
        """
        self.config = config
        self.users = users

    def reload(self, interface_override: Optional[str] = None) -> List[str]:
        """
        Read the configuration and its users file again (SIGHUP; ``interface_override`` is the
        ``-i`` the daemon was started with). A file with an error is refused with one log line
        and the settings in force stay; settings a reload cannot change wait for a restart
        (``merge``), and the log says which. Returns the users the reload took away (removed,
        or with another key), whose sessions must end.
        """
        try:
            loaded = load_config(self.config.path, interface_override)
            users = load_users(loaded.users_file)
            config, applied, pending = merge(self.config, loaded)
        except (ConfigError, UsersError) as error:
            self.log.error(
                "reload refused, still running on the previous configuration: {error}",
                error=str(error),
            )
            return []
        withdrawn = self.users.withdrawn(users)
        self.replace(config, users)
        self.log.info(
            "reloaded {config_path}: {count} user(s); changed now: {applied}; waiting for a"
            " restart: {pending}",
            config_path=config.path,
            count=len(users),
            applied=", ".join(applied) or "nothing",
            pending=", ".join(pending) or "nothing",
        )
        return withdrawn


def merge(running: Any, loaded: Any) -> Tuple[Any, List[str], List[str]]:
    """
    The configuration to run with after a reload: ``loaded``, but with the settings a reload
    cannot change (``RESTART`` rows, and ``LIVE_UNLESS_NAT`` ones with ``FORWARD_MODE = nat``)
    kept from ``running``. Also returns the keys whose change applies now and those that wait
    for a restart. Raises ``ConfigError`` when the mix does not hold together.
    """
    kept = {RESTART} | ({LIVE_UNLESS_NAT} if running.forward_mode == "nat" else set())
    changed = [
        row for row in SCHEMA if getattr(running, row.attribute) != getattr(loaded, row.attribute)
    ]
    applied = [row.key for row in changed if row.reload not in kept]
    pending = [row.key for row in changed if row.reload in kept]
    restart_only = {
        row.attribute: getattr(running, row.attribute) for row in SCHEMA if row.reload in kept
    }
    merged = dataclasses.replace(loaded, **restart_only)
    # The mix of new and kept settings must hold together as a file would (say, a new
    # FORWARD_TO_PORT inside the ASSIGN_PORT_RANGE still in force).
    check_combinations(merged)
    return merged, applied, pending
