"""
Wiring: load and check everything the daemon needs, then compose its services.

``prepare`` does every check that can fail before anything is opened (configuration, users file,
state directory, replay cache), so a mistake stops the daemon with one line and no half-started
state. ``Sig2knockService`` is the ``MultiService`` twistd runs.
"""

import os
from dataclasses import dataclass
from typing import Optional

from twisted.application.service import MultiService
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sig2knock import __version__
from sig2knock.config import Config, load_config
from sig2knock.replay import FILE_NAME, ReplayCache, ReplayCacheError
from sig2knock.users import Users, load_users


@dataclass
class Prepared:
    """
    What the daemon loaded at start: its configuration, its users and its replay cache.
    """

    config: Config
    users: Users
    replay_cache: ReplayCache


def ensure_state_dir(path: str) -> bool:
    """
    Create ``STATE_DIR`` (mode 0700) if needed and refuse one that others could write to. Return
    whether it was created now.
    """
    created = not os.path.exists(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        status = os.stat(path)
    except OSError as error:
        raise ReplayCacheError(f"STATE_DIR {path}: {error.strerror}") from None
    if status.st_mode & 0o022:
        raise ReplayCacheError(
            f"STATE_DIR {path}: writable by group or others; fix with: chmod 700 {path}"
        )
    return created


def prepare(config_path: str, interface: Optional[str], now: float) -> Prepared:
    """
    Load the configuration at ``config_path`` (``interface`` is the ``-i`` override), the users
    file and the replay cache. Raises ``ConfigError``, ``UsersError`` or ``ReplayCacheError``.
    """
    config = load_config(config_path, interface)
    users = load_users(config.users_file)
    first_start = ensure_state_dir(config.state_dir)
    replay_cache = ReplayCache(
        os.path.join(config.state_dir, FILE_NAME),
        config.max_clock_skew,
        now,
        first_start=first_start,
    )
    return Prepared(config, users, replay_cache)


class Sig2knockService(MultiService):
    """
    The daemon: logs what it runs with, and owns the replay cache for its lifetime.
    """

    log = Logger()

    def __init__(self, prepared: Prepared, reactor: IReactorTime) -> None:
        super().__init__()
        self.prepared = prepared
        self.reactor = reactor
        self._readyCall: Optional[IDelayedCall] = None

    def startService(self) -> None:
        """
        Log the configuration in force (never key material) and start the children.
        """
        config, users = self.prepared.config, self.prepared.users
        self.log.info(
            "sig2knock {version} starting with {config_path}: control port {port}/udp,"
            " forwarding to {forward_ip} port {forward_port}, {count} user(s) from {users_file}",
            version=__version__,
            config_path=config.path,
            port=config.udp_port,
            forward_ip=str(config.forward_to_ip),
            forward_port=config.forward_to_port,
            count=len(users),
            users_file=users.path,
        )
        if not users.entries:
            self.log.warn(
                "{users_file} has no users; add one with: sig2knockd_useradd --users-file"
                " {users_file} NAME",
                users_file=users.path,
            )
        super().startService()
        # Logged from the first turn of the reactor, once signal handlers are in place.
        self._readyCall = self.reactor.callLater(0, self._ready)

    def _ready(self) -> None:
        self._readyCall = None
        self.log.info("sig2knock ready")

    def stopService(self):  # type: ignore[no-untyped-def]
        """
        Stop the children, then close the replay cache (compacting it on disk).
        """
        if self._readyCall is not None and self._readyCall.active():
            self._readyCall.cancel()
        stopped = super().stopService()
        stopped.addBoth(self._closeReplayCache)
        return stopped

    def _closeReplayCache(self, result: object) -> object:
        self.prepared.replay_cache.close()
        return result
