"""
The hidden services a gateway offers, and who may reach each: the default service (the seed's
``FORWARD_TO_IP``/``FORWARD_TO_PORT``, with ``ALLOW``) and the named ones of the configuration's
``[service NAME]`` sections, with the ``[group NAME]`` sections their ``ALLOW`` lists name.

``Catalog.find`` is what the control channel asks of an authentic P1: the service it names, if
the server offers it and its user may reach it; otherwise a ``SessionRefused`` that is logged and
never answered, exactly like a wrong key. ``Catalog.withdrawn`` says, after a reload, which live
sessions the new configuration took away.
"""

import dataclasses
import re
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from sig2knock.daemon.session import SessionRefused
from sig2knock.protocol.addresses import IPAddress
from sig2knock.protocol.kdf import KdfError, check_user_name
from sig2knock.protocol.names import (
    DEFAULT_LABEL,
    DEFAULT_SERVICE,
    ServiceNameError,
    check_service_name,
)

EVERYONE = "*"
GROUP_MARK = "@"
_SEPARATORS = re.compile(r"[\s,]+")


class CatalogError(ValueError):
    """
    The services or groups do not hold together; ``line`` is where (or ``None``), ``key`` the
    key concerned.
    """

    def __init__(self, line: Optional[int], key: str, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.key = key
        self.message = message


def _words(text: str) -> List[str]:
    return [word for word in _SEPARATORS.split(text.strip()) if word]


class Access(NamedTuple):
    """
    Who may reach a service: ``everyone`` (``*``: every user of the users file), or the
    ``users`` and the members of the ``groups`` named.
    """

    everyone: bool = False
    users: FrozenSet[str] = frozenset()
    groups: FrozenSet[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> "Access":
        """
        An ``ALLOW`` value: ``*``, or user names and ``@group`` names separated by spaces or
        commas. Raises ``ValueError`` saying what is wrong.
        """
        words = _words(text)
        if not words:
            raise ValueError("name the users who may reach it: user names, @groups, or *")
        if EVERYONE in words:
            if len(words) > 1:
                raise ValueError("* is every user already: give it alone")
            return cls(everyone=True)
        users, groups = set(), set()
        for word in words:
            if word.startswith(GROUP_MARK):
                groups.add(check_group_name(word[1:]))
            else:
                try:
                    users.add(check_user_name(word))
                except KdfError as error:
                    raise ValueError(str(error)) from None
        return cls(False, frozenset(users), frozenset(groups))

    def admits(self, user: str, groups: Mapping[str, FrozenSet[str]]) -> bool:
        """
        Whether ``user`` may reach the service, with ``groups`` the members of each group.
        """
        if self.everyone or user in self.users:
            return True
        return any(user in groups.get(group, frozenset()) for group in self.groups)

    def __str__(self) -> str:
        if self.everyone:
            return "every user"
        names = sorted(self.users) + [GROUP_MARK + group for group in sorted(self.groups)]
        return ", ".join(names)


EVERY_USER = Access(everyone=True)


def check_group_name(name: str) -> str:
    """
    Return ``name`` if it can name a group (like a service name), else raise ``ValueError``.
    """
    try:
        return check_service_name(name)
    except ServiceNameError:
        raise ValueError(
            f"group name {name!r} is not valid: use 1-32 lower-case letters, digits and _ . -"
        ) from None


def parse_users(text: str) -> FrozenSet[str]:
    """
    A group's ``USERS`` value: user names separated by spaces or commas.
    """
    words = _words(text)
    if not words:
        raise ValueError("name the group's users")
    try:
        return frozenset(check_user_name(word) for word in words)
    except KdfError as error:
        raise ValueError(str(error)) from None


@dataclasses.dataclass(frozen=True)
class HiddenService:
    """
    One service the gateway forwards to: its ``name`` (``""`` for the default one), the forward
    target ``forward_to_ip``:``forward_to_port`` (on this host or another), the seconds its
    assigned port waits for the one connection (``open_time``), who may reach it (``allow``),
    how it is forwarded (``forward_mode``: ``proxy``, ``nat``, or ``None`` for the gateway's
    ``FORWARD_MODE``: ``mode_in``), and the line its definition starts on (``None`` for the
    default service; not part of what the service is, so a reload that only moves it changes
    nothing).
    """

    name: str
    forward_to_ip: IPAddress
    forward_to_port: int
    open_time: float
    allow: Access
    forward_mode: Optional[str] = None
    line: Optional[int] = dataclasses.field(default=None, compare=False)

    def mode_in(self, config: Any) -> str:
        """
        How it is forwarded under ``config``: its own ``FORWARD_MODE``, else the gateway's.
        """
        return self.forward_mode or str(config.forward_mode)

    def nat_in(self, config: Any) -> bool:
        """
        Whether the kernel forwards its grants under ``config`` (``FORWARD_MODE = nat``).
        """
        return self.mode_in(config) == "nat"

    @property
    def target(self) -> Tuple[IPAddress, int]:
        """
        Where its connections go: (address, port).
        """
        return (self.forward_to_ip, self.forward_to_port)

    @property
    def label(self) -> str:
        """
        Its name for people: the name, or ``default``.
        """
        return self.name or DEFAULT_LABEL


class Catalog(NamedTuple):
    """
    The services by name (the default one under ``""``) and the groups by name (their users).
    """

    services: Dict[str, HiddenService]
    groups: Dict[str, FrozenSet[str]]

    @classmethod
    def build(
        cls,
        default: HiddenService,
        named: Iterable[HiddenService],
        groups: Mapping[str, FrozenSet[str]],
    ) -> "Catalog":
        """
        The catalog of the ``default`` service, the ``named`` ones and ``groups``; raises
        ``CatalogError`` when an ``ALLOW`` names a group that is not defined.
        """
        services = {DEFAULT_SERVICE: default}
        for service in named:
            services[service.name] = service
        for service in services.values():
            for group in sorted(service.allow.groups - set(groups)):
                raise CatalogError(
                    service.line, "ALLOW",
                    f"no group {group!r} (define it in a [group {group}] section)",
                )
        return cls(services, dict(groups))

    @property
    def default(self) -> HiddenService:
        """
        The default service (the top-level ``FORWARD_TO_*`` keys).
        """
        return self.services[DEFAULT_SERVICE]

    def find(self, name: str, user: str) -> HiddenService:
        """
        The service ``name`` for ``user``; raises ``SessionRefused`` (``unknown-service`` or
        ``not-allowed``) when it is not offered, or not to them.
        """
        service = self.services.get(name)
        if service is None:
            raise SessionRefused("unknown-service", f"service {name!r} is not offered")
        if not service.allow.admits(user, self.groups):
            raise SessionRefused(
                "not-allowed", f"{user} may not reach service {service.label} (ALLOW)"
            )
        return service

    def withdrawn(self, service: HiddenService, user: str) -> Optional[str]:
        """
        Why a live session of ``user`` for ``service`` (as it was when the session opened) must
        end under this catalog, or ``None`` when it may go on: the service is gone, forwards
        elsewhere now, or no longer admits the user.
        """
        current = self.services.get(service.name)
        if current is None:
            return f"service {service.label} was removed"
        if current.target != service.target or current.forward_mode != service.forward_mode:
            return f"service {service.label} forwards elsewhere now"
        if not current.allow.admits(user, self.groups):
            return f"{user} may no longer reach service {service.label}"
        return None

    def reachable_by(self, user: str) -> List[str]:
        """
        The labels of the services ``user`` may reach, in the order of the configuration.
        """
        return [
            service.label
            for service in self.services.values()
            if service.allow.admits(user, self.groups)
        ]

    def nat_targets(self, config: Any) -> List[Tuple[IPAddress, int]]:
        """
        The targets the kernel forwards to under ``config`` (of the services in nat mode), the
        default service's first.
        """
        return [service.target for service in self.services.values() if service.nat_in(config)]
