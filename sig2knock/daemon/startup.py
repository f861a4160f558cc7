"""
Start-up: load and check everything the daemon needs before anything is opened (configuration,
capture interface, users file, state directory, replay cache), so a mistake stops the daemon with
one line and no half-started state.
"""

import os
from dataclasses import dataclass
from typing import Optional

from sig2knock.daemon import interfaces, netif
from sig2knock.daemon.blocking import IBlockingWorker
from sig2knock.daemon.identity import IdentityError, ServerIdentity, ensure_identity
from sig2knock.daemon.preflight import state_dir_problem
from sig2knock.daemon.replay import FILE_NAME, ReplayCache, ReplayCacheError
from sig2knock.daemon.settings import Config, ConfigError, load_config
from sig2knock.daemon.users import Users, load_users


@dataclass
class Prepared:
    """
    What the daemon loaded at start: its configuration, its users, its identity and its replay
    cache.
    ``config`` and ``users`` stay as they were at start: after a reload the settings in force
    are the service's ``LiveSettings``, never these.
    """

    config: Config
    users: Users
    replay_cache: ReplayCache
    interface: str
    identity: ServerIdentity
    # The -i option, which a reload must apply again.
    interface_override: Optional[str] = None


def ensure_state_dir(path: str, for_its_owner: bool = False) -> bool:
    """
    Create ``STATE_DIR`` (mode 0700) if needed and refuse one that others could write to. Return
    whether this is a first start: the directory was created now, or prepared empty for the
    daemon (systemd's ``StateDirectory=``, ``install -d``). One that holds only the identity is
    not: ``sig2knockd --init`` writes an empty replay cache beside it, so the identity alone
    means the cache was removed, and messages sealed to that identity could be replayed.
    ``for_its_owner``: root prepares it for the daemon's user who owns it (``--init``).
    """
    try:
        created = not os.path.exists(path) or not os.listdir(path)
    except OSError:
        created = False
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as error:
        raise ReplayCacheError(f"STATE_DIR {path}: {error.strerror}") from None
    problem = state_dir_problem(path, for_its_owner=for_its_owner)
    if problem is not None:
        raise ReplayCacheError(problem)
    return created


def prepare(
    config_path: str,
    interface: Optional[str],
    now: float,
    worker: Optional[IBlockingWorker] = None,
) -> Prepared:
    """
    Load the configuration at ``config_path`` (``interface`` is the ``-i`` override), resolve the
    capture interface, load the users file, the server's identity (made on a first start) and
    the replay cache (its writes run by ``worker``: the daemon's own thread). Raises
    ``ConfigError``, ``UsersError``, ``IdentityError`` or
    ``ReplayCacheError``.
    """
    config = load_config(config_path, interface)
    capture_interface = resolve_interface(config)
    users = load_users(config.users_file)
    first_start = ensure_state_dir(config.state_dir)
    if first_start and len(users):
        # Users were enrolled for an identity, which an empty STATE_DIR no longer has: it was
        # lost (emptied, removed, a volume not mounted), and a new one would lock them all out.
        raise IdentityError(
            f"STATE_DIR {config.state_dir} is empty, but {config.users_file} has"
            f" {len(users)} user(s), enrolled for the server identity that was there: restore"
            f" STATE_DIR from a backup (or mount it); to start over, run sig2knockd --init and"
            f" enrol the users again (clients then need the new --server-key)"
        )
    identity = ensure_identity(config.state_dir, first_start)
    replay_cache = ReplayCache(
        os.path.join(config.state_dir, FILE_NAME),
        config.max_clock_skew,
        now,
        first_start=first_start,
        worker=worker,
    )
    # A second file, so that a replay cache deleted on its own is seen as lost, not as a first
    # start (only an empty or new STATE_DIR is one).
    marker = os.path.join(config.state_dir, STARTED_MARKER)
    if not os.path.exists(marker):
        try:
            # Created, never followed: a link planted there stops the start instead.
            created = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(created, "w", encoding="utf-8") as started:
                started.write("sig2knock has run with this STATE_DIR; see docs/PROTOCOL.md\n")
        except OSError as error:
            raise ReplayCacheError(f"STATE_DIR {config.state_dir}: {error.strerror}") from None
    return Prepared(config, users, replay_cache, capture_interface, identity, interface)


STARTED_MARKER = "started"


class InterfaceNotReady(ConfigError):
    """
    The capture interface is not there yet (or there is no default route yet): at boot the
    daemon waits ``wait`` seconds (``INTERFACE_WAIT``) for it before this is an error.
    """

    def __init__(
        self, path: str, line: Optional[int], key: Optional[str], message: str, wait: float
    ) -> None:
        super().__init__(path, line, key, message)
        self.wait = wait


def resolve_interface(config: Config) -> str:
    """
    The capture interface: ``INTERFACE`` (or ``-i``, or ``PKTFILTER_INTERFACE``), else the
    interface of the default route. A number that names no interface is the interface of that
    number in the capture library's list (``sig2knockd --list-interfaces``, as the seed's
    ``-i 1``). Raises ``ConfigError`` naming it when it does not exist.
    """
    line = config.lines.get("INTERFACE", config.lines.get("PKTFILTER_INTERFACE"))
    if config.interface is None:
        try:
            return netif.default_route_interface()
        except netif.InterfaceError as error:
            raise InterfaceNotReady(
                config.path, None, "INTERFACE", f"{error}; set INTERFACE", config.interface_wait
            ) from None
    if not netif.interface_exists(config.interface):
        try:
            numbered = interfaces.by_number(config.interface)
        except LookupError as error:
            raise ConfigError(config.path, line, "INTERFACE", str(error)) from None
        except Exception as error:  # the capture library could not list them
            raise ConfigError(config.path, line, "INTERFACE", f"{config.interface}: {error}")
        if numbered is not None:
            return numbered
        raise InterfaceNotReady(
            config.path,
            line,
            "INTERFACE",
            f"{config.interface}: no such network interface",
            config.interface_wait,
        )
    return config.interface
