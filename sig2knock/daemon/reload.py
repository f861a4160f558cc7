"""
The reload (SIGHUP): ``LiveSettings``, the settings in force in one place, and ``merge``, which
decides what of a configuration read again applies now and what waits for a restart.
"""

import dataclasses
from typing import Any, List, Optional, Tuple

from twisted.logger import Logger

from sig2knock.daemon.catalog import Catalog, HiddenService
from sig2knock.daemon.schema import LIVE_UNLESS_NAT, RESTART, SCHEMA
from sig2knock.daemon.settings import ConfigError, check_combinations, load_config
from sig2knock.daemon.users import UsersError, load_users
from sig2knock.protocol.names import DEFAULT_SERVICE


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
        # The configuration the daemon started with: its firewall's base rules are that one's.
        self.started_with = config

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
            config, applied, pending = merge(self.config, loaded, self.started_with)
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


def merge(
    running: Any, loaded: Any, started_with: Any = None
) -> Tuple[Any, List[str], List[str]]:
    """
    The configuration to run with after a reload: ``loaded``, but with the settings a reload
    cannot change (``RESTART`` rows) kept from ``running``, and the targets of services in
    ``FORWARD_MODE = nat`` that the kernel's base rules (those of ``started_with``, the
    configuration the daemon started with; default ``running``) cannot serve (``nat_fits``).
    Also returns the keys (and services) whose change applies now and those that wait for a
    restart. Raises ``ConfigError`` when the mix does not hold together.
    """
    catalog, waiting = _nat_catalog(
        started_with if started_with is not None else running, running, loaded
    )
    kept = {RESTART} | ({LIVE_UNLESS_NAT} if DEFAULT_SERVICE in waiting else set())
    changed = [
        row for row in SCHEMA if getattr(running, row.attribute) != getattr(loaded, row.attribute)
    ]
    applied = [row.key for row in changed if row.reload not in kept]
    pending = [row.key for row in changed if row.reload in kept]
    restart_only = {
        row.attribute: getattr(running, row.attribute) for row in SCHEMA if row.reload in kept
    }
    if running.catalog != catalog:
        applied.append("services")
    pending += [f"service {name}" for name in waiting if name != DEFAULT_SERVICE]
    merged = dataclasses.replace(loaded, catalog=catalog, **restart_only)
    # The mix of new and kept settings must hold together as a file would (say, a new
    # FORWARD_TO_PORT inside the ASSIGN_PORT_RANGE still in force).
    check_combinations(merged)
    return merged, applied, pending


def nat_fits(started_with: Any, running: Any, service: HiddenService) -> bool:
    """
    Whether the kernel's base rules installed for ``started_with`` can serve ``service`` under
    the gateway's ``FORWARD_MODE`` of ``running``: a service in proxy mode always; one in nat
    mode if they have nat rules for its target's address family, and a loopback target only if
    they guard loopback.
    """
    if not service.nat_in(running):
        return True
    installed = started_with.catalog.nat_targets(started_with)
    if not installed:
        return False
    address = service.forward_to_ip
    if address.version != installed[0][0].version:
        return False
    return not address.is_loopback or any(target.is_loopback for target, _ in installed)


def _nat_catalog(started_with: Any, running: Any, loaded: Any) -> Tuple[Catalog, List[str]]:
    """
    ``loaded``'s services: each as loaded if the base rules of ``started_with`` can serve it,
    else with its target and mode in ``running`` (and its new ``ALLOW`` and open time), or left
    out when it is new; and the names of those whose target waits for a restart.
    """
    services, waiting = {}, []
    for name, service in loaded.catalog.services.items():
        if nat_fits(started_with, running, service):
            services[name] = service
            continue
        waiting.append(name)
        before = running.catalog.services.get(name)
        if before is not None:
            services[name] = dataclasses.replace(
                service, forward_to_ip=before.forward_to_ip,
                forward_to_port=before.forward_to_port, forward_mode=before.forward_mode,
            )
    return Catalog(services, loaded.catalog.groups), waiting
